//! A task's parallel workers, run to the end together.

use crate::ScanError;

/// Run a task's parallel workers to the end. A failing worker cancels `stop`, so its
/// siblings stop too; the results are folded by [`join_worker_results`].
pub(crate) async fn run_workers<W>(
    stop: &tokio_util::sync::CancellationToken,
    workers: W,
) -> Result<bool, ScanError>
where
    W: IntoIterator,
    W::Item: std::future::Future<Output = Result<bool, ScanError>>,
{
    let guarded = workers.into_iter().map(|w| async move {
        let r = w.await;
        if r.is_err() {
            stop.cancel();
        }
        r
    });
    join_worker_results(futures_util::future::join_all(guarded).await)
}

/// Fold the results of a task's parallel workers: `Ok(true)` if any was cut short by the
/// soft deadline. A real error wins over the `Cancelled` of the siblings it stopped.
fn join_worker_results(results: Vec<Result<bool, ScanError>>) -> Result<bool, ScanError> {
    let mut partial = false;
    let mut cancelled = false;
    for r in results {
        match r {
            Ok(cut) => partial |= cut,
            Err(ScanError::Cancelled) => cancelled = true,
            Err(e) => return Err(e),
        }
    }
    if cancelled {
        return Err(ScanError::Cancelled);
    }
    Ok(partial)
}
