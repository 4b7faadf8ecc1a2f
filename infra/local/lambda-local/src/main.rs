//! `tidemark-lambda-local`: a development tool that runs a Lambda function binary locally behind
//! a Lambda Runtime API on 127.0.0.1, fed by a Kinesis stream as Lambda's event source mapping
//! would (batches per shard, batchItemFailures, bisect on error, retries, parents before
//! children), or by an event file. With AWS_ENDPOINT_URL pointing at a local emulator, no AWS is
//! needed. Not part of the deployed worker.

mod lambda_local;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Run a Lambda function binary locally, fed by a Kinesis stream as Lambda's event source
/// mapping would (batches per shard, batchItemFailures, bisect on error, retries, parents
/// before children). With AWS_ENDPOINT_URL pointing at a local emulator, no AWS is needed.
#[derive(Parser)]
#[command(name = "tidemark-lambda-local", version)]
struct LambdaLocalArgs {
    /// The function binary (e.g. target/release/kinesis-ingest); it gets this process's
    /// environment (TIDEMARK_*, AWS_*) plus the Lambda runtime variables.
    #[arg(long)]
    function: PathBuf,
    /// The Kinesis stream name.
    #[arg(long, required_unless_present = "event")]
    stream: Option<String>,
    /// Instead of a stream: invoke the function with this event file (JSON) and print the
    /// init and invocation times, like `cargo lambda invoke`.
    #[arg(long, conflicts_with = "stream")]
    event: Option<PathBuf>,
    /// With --event: invoke this many times, each as another shard (so every invocation does
    /// the full work instead of skipping a replay).
    #[arg(long, default_value_t = 1, requires = "event")]
    repeat: u32,
    /// Records per invocation (Lambda: BatchSize).
    #[arg(long, default_value_t = 100)]
    batch_size: i32,
    /// Retries of a failed batch before it goes to --on-failure (MaximumRetryAttempts).
    #[arg(long, default_value_t = 3)]
    max_retries: u32,
    /// Do not split a failing batch in two (BisectBatchOnFunctionError off).
    #[arg(long)]
    no_bisect: bool,
    /// Ignore batchItemFailures in responses (FunctionResponseTypes without ReportBatchItemFailures).
    #[arg(long)]
    no_batch_item_failures: bool,
    /// Directory for the metadata of batches that exhausted their retries.
    #[arg(long)]
    on_failure: Option<PathBuf>,
    /// Seconds an invocation may take before the process is killed (Timeout).
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    /// Exit once every shard is drained instead of polling until Ctrl-C.
    #[arg(long)]
    until_drained: bool,
    /// Chaos testing: kill the function process at a random instant in this fraction of
    /// invocations (0..1), as a crash or timeout would.
    #[arg(long, default_value_t = 0.0, hide = true)]
    chaos_kill_rate: f64,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TIDEMARK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match lambda_local(LambdaLocalArgs::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn lambda_local(args: LambdaLocalArgs) -> anyhow::Result<ExitCode> {
    use lambda_local::{esm, runtime_api::LocalFunction};
    let mut function = LocalFunction::start(
        args.function.clone(),
        Duration::from_secs(args.timeout_secs),
    )
    .await?;
    function.chaos_kill_rate = args.chaos_kill_rate;
    if let Some(event) = &args.event {
        let report = lambda_local::invoke_file(&mut function, event, args.repeat).await;
        function.stop().await;
        println!("{}", serde_json::to_string(&report?)?);
        return Ok(ExitCode::SUCCESS);
    }
    let Some(stream) = &args.stream else {
        anyhow::bail!("--stream or --event is required");
    };
    let stream = tidemark_core::source::kinesis::client::KinesisStream::open(stream).await?;
    let mapping = esm::Mapping {
        batch_size: args.batch_size,
        bisect_on_error: !args.no_bisect,
        max_retries: args.max_retries,
        report_batch_item_failures: !args.no_batch_item_failures,
        on_failure: args.on_failure.clone(),
        until_drained: args.until_drained,
    };
    let summary = esm::run(
        &stream,
        &mut function,
        &mapping,
        tidemark_core::runtime::shutdown_signal(),
    )
    .await;
    function.stop().await;
    let summary = summary?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(ExitCode::SUCCESS)
}
