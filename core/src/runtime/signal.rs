//! Process signals as a shutdown request.

use tokio::sync::watch;

/// Turns SIGTERM / Ctrl-C (or a test's `TIDEMARK_STOP_AT`) into a shutdown request; a second
/// signal exits at once.
pub fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        for n in 0..2 {
            #[cfg(unix)]
            let sigterm = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let sigterm = std::future::pending::<()>();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = sigterm => {},
                _ = crate::failpoint::stop_requested() => {},
            }
            if n == 0 {
                tracing::info!(
                    "stop requested: flushing, committing and exiting (signal again to abort)"
                );
                let _ = tx.send(true);
            } else {
                eprintln!("aborted: the next run resumes from the last committed position");
                std::process::exit(130);
            }
        }
    });
    rx
}
