//! `Abort`: a cancellation token that remembers the first reason it fired for.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uploader::RunState;

/// Why a cycle stopped early.
#[derive(Debug, Clone)]
pub enum AbortReason {
    /// SIGINT or SIGTERM.
    Signal(&'static str),
    /// `limits.max_pause` exceeded.
    MaxPause(Duration),
    /// `limits.max_replay_backlog` exceeded (bytes, limit).
    Backlog(u64, u64),
    /// The lease could not be renewed: another command may take the replica over.
    LeaseLost(String),
    /// The replica restarted or replay moved: the snapshot is gone.
    SnapshotLost(String),
    /// Commits on the primary wait for the paused replica (a synchronous standby).
    PrimaryBlocked(String),
    /// The primary is down or superseded (a failover): nothing more is written on it.
    Failover(String),
}

impl AbortReason {
    /// The run state this abort leads to.
    pub fn run_state(&self) -> RunState {
        match self {
            AbortReason::Signal(_) => RunState::Cancelled,
            AbortReason::SnapshotLost(_) => RunState::Invalid,
            _ => RunState::Aborted,
        }
    }
}

impl std::fmt::Display for AbortReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AbortReason::Signal(s) => write!(f, "cancelled by {s}"),
            AbortReason::MaxPause(d) => {
                write!(f, "pause exceeded limits.max_pause ({}s)", d.as_secs())
            }
            AbortReason::Backlog(b, l) => write!(
                f,
                "replay backlog {} exceeded limits.max_replay_backlog ({})",
                crate::units::human_bytes(*b),
                crate::units::human_bytes(*l)
            ),
            AbortReason::LeaseLost(e) => write!(f, "lease on the primary lost: {e}"),
            AbortReason::SnapshotLost(e) => write!(f, "snapshot no longer valid: {e}"),
            AbortReason::PrimaryBlocked(e) => write!(f, "pause given up: {e}"),
            AbortReason::Failover(e) => write!(f, "failover: {e}"),
        }
    }
}

/// A cancellation token that remembers the first reason it was cancelled for.
#[derive(Clone, Default)]
pub struct Abort {
    token: CancellationToken,
    reason: Arc<OnceLock<AbortReason>>,
    /// A failover reason came, first or not: nothing more is written on the primary.
    failover: Arc<std::sync::atomic::AtomicBool>,
}

impl Abort {
    /// An abort whose token is also cancelled (with no reason) when `parent` is.
    pub fn under(parent: &CancellationToken) -> Abort {
        Abort {
            token: parent.child_token(),
            reason: Arc::default(),
            failover: Arc::default(),
        }
    }
    /// Stopped for a failover: nothing more may be written on the primary in use.
    pub fn for_failover(&self) -> bool {
        self.failover.load(std::sync::atomic::Ordering::SeqCst)
    }
    /// Cancel, recording `reason` if it is the first.
    pub fn trigger(&self, reason: AbortReason) {
        if matches!(reason, AbortReason::Failover(_)) {
            self.failover
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let first = self.reason.set(reason.clone()).is_ok();
        // Cancel first: nothing (not even logging) may stand between a reason and the stop.
        self.token.cancel();
        if first {
            tracing::warn!(%reason, "aborting the cycle");
        }
    }
    /// The first reason, if cancelled.
    pub fn reason(&self) -> Option<&AbortReason> {
        self.reason.get()
    }
    /// The token tasks watch.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}
