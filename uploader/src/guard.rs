//! The commit guard: a check, supplied by the caller, that the primary is still the
//! primary. The uploader knows nothing of failover; the coordinator's guard asks the
//! other configured servers whether one of them took over (a newer timeline) or is
//! being promoted. The slots ask it before every claim and right before every apply
//! commits: a superseded primary gets no claim and no commit from this worker.

use futures_util::future::BoxFuture;

/// Says whether writing on the primary is still right.
pub trait CommitGuard: Send + Sync + 'static {
    /// `Err(why)` when the primary in use must not be written any more.
    fn check(&self) -> BoxFuture<'_, Result<(), String>>;
}
