//! Retrying a startup step (connect, migrate, provision) with logged backoff until it succeeds,
//! fails for good, or shutdown is asked for.

use std::error::Error;
use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// Runs `op` until it succeeds or fails with an error that `is_transient` calls permanent,
/// sleeping between attempts with exponential backoff and jitter (100 ms to 5 s) and logging one
/// warning per failure that names `what`. Returns `None` if `shutdown` came first.
pub(crate) async fn until_ready<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    is_transient: impl Fn(&E) -> bool,
    mut op: F,
) -> Option<Result<T, E>>
where
    E: Error + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build();
    let mut failures = 0u32;
    loop {
        let result = tokio::select! {
            biased;
            () = shutdown.cancelled() => return None,
            result = op() => result,
        };
        match result {
            Ok(value) => {
                if failures > 0 {
                    tracing::info!("{what}: succeeded after {failures} failed attempts");
                }
                return Some(Ok(value));
            }
            Err(error) if is_transient(&error) => {
                failures += 1;
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(
                    "{what} failed: {}; retrying in {delay:.1?}",
                    crate::report::describe(&error)
                );
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(delay) => {}
                }
            }
            Err(error) => return Some(Err(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Failure(&'static str);

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_and_stops_on_permanent_ones() {
        let shutdown = CancellationToken::new();
        let mut calls = 0;
        let result = until_ready(
            "test",
            &shutdown,
            |e: &Failure| e.0 == "transient",
            || {
                calls += 1;
                let n = calls;
                async move {
                    if n < 3 {
                        Err(Failure("transient"))
                    } else {
                        Ok(n)
                    }
                }
            },
        )
        .await;
        assert!(matches!(result, Some(Ok(3))));

        let result: Option<Result<(), Failure>> = until_ready(
            "test",
            &shutdown,
            |_| false,
            || async { Err(Failure("permanent")) },
        )
        .await;
        assert!(matches!(result, Some(Err(Failure("permanent")))));

        shutdown.cancel();
        let result: Option<Result<(), Failure>> = until_ready(
            "test",
            &shutdown,
            |_| true,
            || async { Err(Failure("down")) },
        )
        .await;
        assert!(result.is_none());
    }
}
