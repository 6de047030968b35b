//! The upload worker: its settings, and how its parts run together.
//!
//! The parts, each a service of its own that runs until its stop token is cancelled:
//! - the [`Listener`] LISTENs on the queue's channel and wakes idle slots;
//! - the [`Rescuer`] hands back, every interval, tasks whose lease expired;
//! - each [`Slot`] claims a task, applies it while heartbeating its lease, and records
//!   how it ended.
//!
//! [`Worker::run`] and [`Worker::drain`] compose them. Another process (a daemon next
//! to its scheduler) can compose them itself from [`Worker::listener`],
//! [`Worker::rescuer`] and [`Worker::slots`], under its own token.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::listener::Listener;
use crate::reconnect::{Primary, Reconnect};
use crate::rescuer::Rescuer;
use crate::slot::{DrainStats, Slot, SlotSettings, WorkerMode};
use crate::wake::Wake;
use crate::{CommitGuard, ResultsHost, UploadError};

/// Applies queued uploads on the primary.
pub struct Worker {
    primary: Primary,
    results_dir: PathBuf,
    id: String,
    /// The host whose `results.dir` this worker reads (`results.host`): it claims the
    /// tasks of that host and those queued on shared storage (NULL host).
    /// [`ResultsHost::Shared`] (`results.shared = true`): it claims every task.
    /// Default: the machine's host name.
    pub host: ResultsHost,
    /// Lease of a claimed task; renewed every third of it while the apply runs.
    pub lease: Duration,
    /// `lock_timeout` of an apply transaction.
    pub lock_timeout: Duration,
    /// Tasks applied at once (each slot has its own connections).
    pub slots: usize,
    /// How long an idle slot waits for a NOTIFY before it looks for work anyway (in
    /// case one was missed); also the rescuer's interval.
    pub poll_interval: Duration,
    /// On shutdown, how long the task in hand may take to finish before it is
    /// cancelled and released for another worker.
    pub shutdown_grace: Duration,
    /// Longest wait between reconnection attempts to the primary.
    pub reconnect_max: Duration,
    /// `--once` only: give up after the primary has been unreachable this long.
    pub once_reconnect_limit: Duration,
    /// Asked before every claim and every commit (see [`crate::CommitGuard`]).
    pub guard: Option<Arc<dyn CommitGuard>>,
}

impl Worker {
    /// A worker for the primary at `primary`, reading files under `results_dir`.
    pub fn new(primary: snapshot_runner::connection::Config, results_dir: PathBuf) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        Worker {
            primary: Primary::new(primary),
            results_dir,
            id: format!("{host}:{}", std::process::id()),
            host: ResultsHost::Named(host),
            lease: Duration::from_secs(60),
            lock_timeout: Duration::from_secs(5),
            slots: 2,
            poll_interval: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            reconnect_max: Duration::from_secs(30),
            once_reconnect_limit: Duration::from_secs(60),
            guard: None,
        }
    }

    /// This worker's id; slot `n` records `<id>/<n>` on the tasks it runs.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Apply every task that is runnable now (including what becomes runnable as
    /// prerequisites complete), then return. Rescues expired leases first. Tasks of
    /// other hosts are left waiting (see [`crate::waiting_for_other_hosts`]).
    pub async fn drain(&self) -> Result<DrainStats, UploadError> {
        let wake = Wake::new();
        let mut rescuer = self.rescuer(&wake, WorkerMode::Drain);
        // Stops the rescuer once the slots have drained the queue.
        let drained = CancellationToken::new();
        // Expired leases first: this drain then also applies the tasks of dead workers.
        rescuer.pass(&drained).await?;
        let slots = run_slots(self.slots(&wake, WorkerMode::Drain), drained.clone());
        let slots = async {
            let stats = slots.await;
            drained.cancel();
            stats
        };
        let (rescued, stats) = tokio::join!(rescuer.run(drained.clone()), slots);
        if let Err(e) = rescued {
            // The slots' own connections decide whether the drain failed.
            tracing::warn!(error = %e, "rescuer gave up");
        }
        stats
    }

    /// Run until `shutdown` is cancelled: wait for work (NOTIFY or poll), apply it,
    /// rescue expired leases, reconnect when the primary goes away. The task in hand
    /// may finish within `shutdown_grace` after `shutdown`.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<DrainStats, UploadError> {
        let wake = Wake::new();
        let listening = self.listener(&wake).run(shutdown.clone());
        let rescuing = self.rescuer(&wake, WorkerMode::Serve).run(shutdown.clone());
        let applying = run_slots(self.slots(&wake, WorkerMode::Serve), shutdown);
        let ((), rescued, stats) = tokio::join!(listening, rescuing, applying);
        rescued?;
        stats
    }

    /// The listener that wakes `wake`'s slots on every NOTIFY.
    pub fn listener(&self, wake: &Wake) -> Listener {
        Listener::new(self.primary.clone(), wake.clone(), self.reconnect_max)
    }

    /// A rescuer that runs every `poll_interval` and wakes `wake`'s slots when it
    /// re-queued tasks. Draining, it gives up on a primary unreachable for
    /// `once_reconnect_limit`.
    pub fn rescuer(&self, wake: &Wake, mode: WorkerMode) -> Rescuer {
        Rescuer::new(
            self.primary.clone(),
            wake.clone(),
            self.poll_interval,
            self.reconnect(mode),
        )
    }

    /// The worker's `slots` slots, woken by `wake`.
    pub fn slots(&self, wake: &Wake, mode: WorkerMode) -> Vec<Slot> {
        let settings = SlotSettings {
            primary: self.primary.clone(),
            results_dir: self.results_dir.clone(),
            host: self.host.clone(),
            lease: self.lease,
            lock_timeout: self.lock_timeout,
            poll_interval: self.poll_interval,
            shutdown_grace: self.shutdown_grace,
            guard: self.guard.clone(),
        };
        (0..self.slots.max(1))
            .map(|n| {
                Slot::new(
                    n,
                    &self.id,
                    settings.clone(),
                    mode,
                    wake.clone(),
                    self.reconnect(mode),
                )
            })
            .collect()
    }

    fn reconnect(&self, mode: WorkerMode) -> Reconnect {
        let give_up_after = match mode {
            WorkerMode::Drain => Some(self.once_reconnect_limit),
            WorkerMode::Serve => None,
        };
        Reconnect::new(self.reconnect_max, give_up_after)
    }
}

/// Run `slots` until `stop` (or until they have drained the queue); what they did in
/// all. Fails if one of them failed, once all have ended.
pub async fn run_slots(
    slots: Vec<Slot>,
    stop: CancellationToken,
) -> Result<DrainStats, UploadError> {
    let results =
        futures_util::future::join_all(slots.into_iter().map(|s| s.run(stop.clone()))).await;
    let mut total = DrainStats::default();
    for r in results {
        total += r?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daemon spawns the parts on its runtime: they must be `Send + 'static`.
    #[test]
    fn the_parts_can_be_spawned_by_another_process() {
        fn spawnable<F: std::future::Future + Send + 'static>(_: F) {}
        let worker = Worker::new(
            "host=127.0.0.1 user=postgres".parse().unwrap(),
            "/tmp".into(),
        );
        let wake = Wake::new();
        let stop = CancellationToken::new();
        spawnable(worker.listener(&wake).run(stop.clone()));
        spawnable(worker.rescuer(&wake, WorkerMode::Serve).run(stop.clone()));
        for slot in worker.slots(&wake, WorkerMode::Serve) {
            spawnable(slot.run(stop.clone()));
        }
        spawnable(run_slots(
            worker.slots(&wake, WorkerMode::Drain),
            stop.clone(),
        ));
    }

    #[test]
    fn slots_are_numbered_and_there_is_at_least_one() {
        let mut worker = Worker::new("host=127.0.0.1".parse().unwrap(), "/tmp".into());
        worker.slots = 0;
        assert_eq!(worker.slots(&Wake::new(), WorkerMode::Drain).len(), 1);
        worker.slots = 3;
        assert_eq!(worker.slots(&Wake::new(), WorkerMode::Serve).len(), 3);
    }

    #[test]
    fn stats_add_up() {
        let mut a = DrainStats {
            completed: 1,
            failed: 2,
            retried: 3,
            cancelled: 4,
            superseded: 5,
            rows: 6,
        };
        a += a;
        assert_eq!(
            (
                a.completed,
                a.failed,
                a.retried,
                a.cancelled,
                a.superseded,
                a.rows
            ),
            (2, 4, 6, 8, 10, 12)
        );
    }
}
