//! Cleaning up from `Drop`, which runs inside the test's runtime.

use std::future::Future;

/// Runs `work` to completion on a thread with a runtime of its own, and waits for it.
///
/// `Drop` runs inside the test's runtime, which cannot block on itself, and the test's clients
/// are driven by that runtime: cleanup needs fresh connections on another one. Cleanup is best
/// effort: when no runtime can be built, nothing is done.
pub(crate) fn block_on_thread<F>(work: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let cleanup = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(work);
    });
    let _ = cleanup.join();
}
