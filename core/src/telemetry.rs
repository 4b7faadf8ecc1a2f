//! Logging set-up for the Lambda functions: JSON lines on stdout (CloudWatch Logs adds the
//! time), level from `TIDEMARK_LOG` (default `info`).

/// Installs the global subscriber; call once at start-up.
pub fn init_lambda_logging() {
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .without_time()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TIDEMARK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}
