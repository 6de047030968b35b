//! How idle slots learn that there may be work: the listener wakes them on every NOTIFY
//! (and after each reconnect, in case one was missed), the rescuer after it re-queued
//! tasks. A slot also polls, so a lost wake-up costs at most one poll interval.

use std::sync::Arc;

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// Wakes every slot that waits for work. Clones share one signal.
#[derive(Debug, Clone, Default)]
pub struct Wake(Arc<Notify>);

impl Wake {
    /// A signal no one has waited on yet.
    pub fn new() -> Self {
        Wake::default()
    }

    /// Wake every slot waiting now. A slot that is busy does not need it: it claims
    /// again as soon as its task is done.
    pub fn wake_all(&self) {
        self.0.notify_waiters();
    }

    /// A wake-up to wait for. Enable it before looking for work, so that a wake-up
    /// between the look and the wait is not lost.
    pub(crate) fn notified(&self) -> Notified<'_> {
        self.0.notified()
    }
}
