//! A slot: claims one task at a time, applies it while heartbeating its lease, and
//! records how it ended. A worker runs several slots, each on connections of its own.
//!
//! The connection to the primary may break mid-apply. The apply transaction then rolls
//! back on the server, and the slot records the failed attempt once it is back (an
//! "orphan"), so that the attempt counts and the task is retried with backoff.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::queue::{self, Beat, Claimed};
use crate::reconnect::{sleep_unless_stopped, Primary, Reconnect};
use crate::wake::Wake;
use crate::{apply, CommitGuard, ResultsHost, UploadError, UploadState};

/// How long the parts of a worker keep at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerMode {
    /// `--once`: apply what is runnable now (and what becomes runnable as
    /// prerequisites complete), then stop; give up on a primary that stays
    /// unreachable for the worker's `once_reconnect_limit`.
    Drain,
    /// Wait for work until stopped, reconnecting for as long as it takes.
    Serve,
}

/// What a worker (or one slot) did.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct DrainStats {
    /// Tasks applied.
    pub completed: u64,
    /// Tasks failed for good.
    pub failed: u64,
    /// Tasks put back to wait for a retry.
    pub retried: u64,
    /// Tasks stopped by an operator's cancel.
    pub cancelled: u64,
    /// Of the tasks counted in `completed`: swaps and merges completed without applying
    /// anything, because another run had already materialized a newer snapshot.
    pub superseded: u64,
    /// Rows applied.
    pub rows: u64,
}

impl std::ops::AddAssign for DrainStats {
    fn add_assign(&mut self, other: DrainStats) {
        self.completed += other.completed;
        self.failed += other.failed;
        self.retried += other.retried;
        self.cancelled += other.cancelled;
        self.superseded += other.superseded;
        self.rows += other.rows;
    }
}

/// What a slot needs from its worker's settings.
#[derive(Clone)]
pub(crate) struct SlotSettings {
    pub primary: Primary,
    pub results_dir: PathBuf,
    /// Whose tasks the slot claims.
    pub host: ResultsHost,
    pub lease: Duration,
    pub lock_timeout: Duration,
    pub poll_interval: Duration,
    pub shutdown_grace: Duration,
    pub guard: Option<Arc<dyn CommitGuard>>,
}

/// The connections of one slot: the apply transaction runs on `apply`; claims,
/// heartbeats and failure records go through `side`.
struct Conns {
    apply: Client,
    side: Client,
    /// Prepared on `side` (claim, heartbeat).
    side_stmts: queue::Statements,
    /// Prepared on `apply` (complete).
    apply_stmts: queue::Statements,
}

impl Conns {
    fn closed(&self) -> bool {
        self.apply.is_closed() || self.side.is_closed()
    }
}

/// How one task in hand ended.
enum Outcome {
    /// Completed: rows applied, and whether it was superseded (nothing applied).
    Applied(i64, bool),
    Failed(UploadError),
    /// The connection to the primary broke mid-apply: record the failure once back.
    Orphaned(UploadError),
    /// Shutdown came and the task did not finish in time: released.
    Released,
}

/// What the claim found.
enum Claim {
    Task(Claimed),
    /// Nothing runnable, and the slot drains: done.
    Drained,
    /// Nothing this time (waited for a wake-up or a poll, or the claim failed).
    Again,
}

/// One slot of a worker. Start it with [`Slot::run`]; get them from
/// [`crate::Worker::slots`].
pub struct Slot {
    n: usize,
    /// `<worker id>/<n>`: recorded on the tasks it runs, and the fencing identity.
    me: String,
    settings: SlotSettings,
    mode: WorkerMode,
    wake: Wake,
    reconnect: Reconnect,
    conns: Option<Conns>,
    /// A task whose apply died with the connection, to record once reconnected.
    orphan: Option<(Claimed, UploadError)>,
    stats: DrainStats,
}

impl Slot {
    pub(crate) fn new(
        n: usize,
        worker_id: &str,
        settings: SlotSettings,
        mode: WorkerMode,
        wake: Wake,
        reconnect: Reconnect,
    ) -> Self {
        Slot {
            n,
            me: format!("{worker_id}/{n}"),
            settings,
            mode,
            wake,
            reconnect,
            conns: None,
            orphan: None,
            stats: DrainStats::default(),
        }
    }

    /// Claim, apply and record tasks until `stop` is cancelled (or, draining, until
    /// nothing is runnable). On `stop`, the task in hand may finish within the
    /// shutdown grace; after that it is rolled back and released.
    ///
    /// Fails only when draining and the primary stays unreachable too long.
    pub async fn run(mut self, stop: CancellationToken) -> Result<DrainStats, UploadError> {
        while !stop.is_cancelled() {
            if !self.connected(&stop).await? {
                continue;
            }
            if !self.record_orphan().await {
                continue;
            }
            match self.claim(&stop).await {
                Claim::Task(task) => self.apply_and_record(task, &stop).await,
                Claim::Drained => break,
                Claim::Again => {}
            }
        }
        Ok(self.stats)
    }

    /// Make sure the slot has live connections, reconnecting with backoff. False when
    /// not connected this time (it waited, or `stop` came).
    async fn connected(&mut self, stop: &CancellationToken) -> Result<bool, UploadError> {
        if self.conns.as_ref().is_some_and(|c| !c.closed()) {
            return Ok(true);
        }
        self.conns = None;
        match self.connect().await {
            Ok(c) => {
                if self.reconnect.succeeded() {
                    tracing::info!(slot = self.n, "reconnected to the primary");
                }
                self.conns = Some(c);
                Ok(true)
            }
            Err(e) => {
                let Some(wait) = self.reconnect.failed() else {
                    return Err(e);
                };
                tracing::warn!(slot = self.n, error = %e, retry_in = ?wait, "primary unreachable");
                sleep_unless_stopped(wait, stop).await;
                Ok(false)
            }
        }
    }

    async fn connect(&self) -> Result<Conns, UploadError> {
        let primary = &self.settings.primary;
        let apply = primary.connect(&format!("{}", self.n)).await?;
        // Every lock wait of an apply is bounded; set once per session, not per task.
        apply
            .batch_execute(&format!(
                "SET lock_timeout = {}",
                self.settings.lock_timeout.as_millis().max(1)
            ))
            .await
            .map_err(UploadError::db("setting lock_timeout"))?;
        let side = primary.connect(&format!("{}-side", self.n)).await?;
        let side_stmts = queue::Statements::prepare(&side).await?;
        let apply_stmts = queue::Statements::prepare(&apply).await?;
        Ok(Conns {
            apply,
            side,
            side_stmts,
            apply_stmts,
        })
    }

    /// Record the failed attempt of a task whose apply died with the connection. False
    /// if the connection is gone again (the orphan is kept for next time).
    async fn record_orphan(&mut self) -> bool {
        match self.orphan.take() {
            Some((task, e)) => self.record_failure(task, e).await,
            None => true,
        }
    }

    /// Claim the next runnable task. With none, wait for a wake-up, a poll or `stop`
    /// (or, draining, say so).
    async fn claim(&mut self, stop: &CancellationToken) -> Claim {
        if let Err(why) = self.guarded().await {
            tracing::warn!(slot = self.n, "not claiming: {why}");
            if self.mode == WorkerMode::Drain {
                return Claim::Drained;
            }
            sleep_unless_stopped(self.settings.poll_interval, stop).await;
            return Claim::Again;
        }
        let c = self.conns.as_ref().expect("connected before claiming");
        // Arm the wake-up before looking, so a NOTIFY between the claim and the wait
        // is not lost.
        let notified = self.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let claimed = queue::claim(
            &c.side,
            &c.side_stmts.claim,
            &self.me,
            self.settings.lease,
            &self.settings.host,
        )
        .await;
        match claimed {
            Ok(Some(task)) => Claim::Task(task),
            Ok(None) if self.mode == WorkerMode::Drain => Claim::Drained,
            Ok(None) => {
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(self.settings.poll_interval) => {}
                    _ = stop.cancelled() => {}
                }
                Claim::Again
            }
            Err(e) => {
                tracing::warn!(slot = self.n, error = %e, "claim failed");
                if !e.is_closed() {
                    sleep_unless_stopped(self.reconnect.backoff.wait(), stop).await;
                }
                Claim::Again
            }
        }
    }

    /// Apply a claimed task and record how it ended.
    async fn apply_and_record(&mut self, task: Claimed, stop: &CancellationToken) {
        tracing::debug!(
            slot = self.n,
            upload_task_id = task.id,
            attempt = task.attempt,
            "claimed"
        );
        let mut conns = self.conns.take().expect("connected before applying");
        let outcome = self.run_task(&mut conns, &task, stop).await;
        self.conns = Some(conns);
        match outcome {
            Outcome::Applied(rows, superseded) => self.count_applied(&task, rows, superseded),
            Outcome::Released => tracing::info!(upload_task_id = task.id, "released on shutdown"),
            Outcome::Orphaned(e) => {
                tracing::warn!(upload_task_id = task.id, error = %e, "lost the primary during an apply; will record and retry");
                self.orphan = Some((task, e));
                self.conns = None;
            }
            Outcome::Failed(UploadError::Fenced(id)) => {
                tracing::warn!(
                    upload_task_id = id,
                    "lease lost before completion; the apply was rolled back"
                );
                // The apply may have been stopped mid-statement: start afresh.
                self.conns = None;
            }
            Outcome::Failed(UploadError::Superseded(why)) => {
                // Rolled back; nothing more is written on this server (not even the
                // failure): the task's lease runs out, and the new primary's worker
                // applies it.
                tracing::warn!(
                    upload_task_id = task.id,
                    "apply rolled back, not committed: {why}"
                );
                self.conns = None;
            }
            Outcome::Failed(UploadError::Cancelled(id)) => {
                self.record_cancelled(&task, id).await;
                self.conns = None;
            }
            Outcome::Failed(e) => {
                if !self.record_failure(task, e).await {
                    self.conns = None;
                }
            }
        }
    }

    fn count_applied(&mut self, task: &Claimed, rows: i64, superseded: bool) {
        let s = &mut self.stats;
        s.completed += 1;
        s.rows += rows as u64;
        if superseded {
            s.superseded += 1;
            tracing::info!(upload_task_id = task.id, run_id = task.run_id, task = %task.task_name, kind = %task.kind,
                           "completed as superseded: nothing applied");
        } else {
            tracing::info!(upload_task_id = task.id, run_id = task.run_id, task = %task.task_name, kind = %task.kind, rows, "applied");
        }
    }

    async fn record_cancelled(&mut self, task: &Claimed, id: i64) {
        let side = &self.conns.as_ref().expect("connected").side;
        match queue::mark_cancelled(side, task, &self.me).await {
            Ok(()) => self.stats.cancelled += 1,
            Err(e) => {
                tracing::error!(upload_task_id = id, error = %e, "could not record the cancellation")
            }
        }
        tracing::info!(
            upload_task_id = id,
            "cancelled by an operator; the apply was rolled back"
        );
    }

    /// Record a failed attempt: back to waiting, or failed for good. False if the
    /// connection broke first: the task is kept as an orphan, to record once back.
    async fn record_failure(&mut self, task: Claimed, e: UploadError) -> bool {
        let side = &self.conns.as_ref().expect("connected").side;
        match queue::fail(side, &task, &self.me, &e).await {
            Ok(state) => {
                self.count_failure(&task, &e, state);
                true
            }
            Err(e2) if e2.is_closed() => {
                self.orphan = Some((task, e));
                false
            }
            Err(e2) => {
                tracing::error!(upload_task_id = task.id, error = %e2, "could not record a failed attempt");
                true
            }
        }
    }

    fn count_failure(&mut self, task: &Claimed, e: &UploadError, state: Option<UploadState>) {
        match state {
            Some(UploadState::Failed) => {
                self.stats.failed += 1;
                tracing::error!(upload_task_id = task.id, run_id = task.run_id, task = %task.task_name, error = %e, "upload failed for good");
            }
            Some(_) => {
                self.stats.retried += 1;
                tracing::warn!(upload_task_id = task.id, run_id = task.run_id, task = %task.task_name, error = %e, attempt = task.attempt, "upload failed; will retry");
            }
            None => {
                tracing::warn!(upload_task_id = task.id, error = %e, "upload failed, and the task was no longer ours")
            }
        }
    }

    /// Apply one task while heartbeating its lease. A lost lease or a cancel request
    /// stops the apply at once (the server-side statement is cancelled and the
    /// transaction rolls back). On shutdown the apply may finish within
    /// `shutdown_grace`; after that it is stopped and the task released.
    async fn run_task(
        &self,
        c: &mut Conns,
        task: &Claimed,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let (me, lease, grace) = (
            self.me.as_str(),
            self.settings.lease,
            self.settings.shutdown_grace,
        );
        let cancel = self.settings.primary.cancel_token(&c.apply);
        let side = &c.side;
        let heartbeat_stmt = &c.side_stmts.heartbeat;
        let apply = self.apply(&mut c.apply, &c.apply_stmts.complete, task);
        tokio::pin!(apply);
        let heartbeat = async {
            loop {
                tokio::time::sleep(lease / 3).await;
                match queue::heartbeat(side, heartbeat_stmt, task, me, lease).await {
                    Ok(Beat::Held) => {}
                    Ok(b) => return b,
                    Err(e) => {
                        tracing::warn!(upload_task_id = task.id, error = %e, "heartbeat failed")
                    }
                }
            }
        };
        tokio::pin!(heartbeat);
        let grace = async {
            shutdown.cancelled().await;
            tracing::info!(upload_task_id = task.id, grace = ?grace, "shutting down: letting the task in hand finish");
            tokio::time::sleep(grace).await;
        };
        tokio::pin!(grace);
        let stop = tokio::select! {
            r = &mut apply => return match r {
                Ok((rows, superseded)) => Outcome::Applied(rows, superseded),
                Err(e) if e.is_closed() => Outcome::Orphaned(e),
                Err(e) => Outcome::Failed(e),
            },
            b = &mut heartbeat => Some(b),
            _ = &mut grace => None,
        };
        // Stop the server-side statement, then let the apply future see the error so
        // its transaction is rolled back on a live connection.
        snapshot_runner::connection::cancel_query(&cancel).await;
        let r = tokio::time::timeout(Duration::from_secs(10), &mut apply).await;
        match (stop, r) {
            // It committed before the cancel landed.
            (_, Ok(Ok((rows, superseded)))) => Outcome::Applied(rows, superseded),
            (Some(Beat::CancelRequested), _) => Outcome::Failed(UploadError::Cancelled(task.id)),
            (Some(_), _) => Outcome::Failed(UploadError::Fenced(task.id)),
            (None, _) => match queue::release(side, task, me).await {
                Ok(_) => Outcome::Released,
                Err(e) => {
                    tracing::warn!(upload_task_id = task.id, error = %e, "could not release the task; its lease will expire");
                    Outcome::Released
                }
            },
        }
    }

    /// The commit guard's answer (none: always right).
    async fn guarded(&self) -> Result<(), String> {
        match &self.settings.guard {
            Some(g) => g.check().await,
            None => Ok(()),
        }
    }

    /// One task, in one transaction: check, load, complete (fenced). Returns the rows
    /// applied, and whether the task was superseded (completed, nothing applied).
    async fn apply(
        &self,
        client: &mut Client,
        complete_stmt: &tokio_postgres::Statement,
        task: &Claimed,
    ) -> Result<(i64, bool), UploadError> {
        let tx = client
            .transaction()
            .await
            .map_err(UploadError::db("starting the apply"))?;
        // lock_timeout is set once for the apply connection's session (connect).
        let ctx = apply::Ctx {
            task,
            results_dir: &self.settings.results_dir,
            lock_timeout: self.settings.lock_timeout,
        };
        let applied = apply::apply_task(&tx, &ctx).await?;
        queue::complete(
            &tx,
            complete_stmt,
            task,
            &self.me,
            applied.rows,
            applied.note.as_deref(),
        )
        .await?;
        // The last moment before the commit: is this server still the primary?
        self.guarded().await.map_err(UploadError::Superseded)?;
        tx.commit()
            .await
            .map_err(UploadError::db("committing the apply"))?;
        if let Some(t) = applied.exclusive_since {
            // Operators (and scripts/bench) read this line: how long readers of the
            // target waited for the swap.
            tracing::info!(
                upload_task_id = task.id,
                lock_ms = format!("{:.2}", t.elapsed().as_secs_f64() * 1000.0),
                "swap: exclusive lock held"
            );
        }
        if applied.drop_after {
            crate::swap::drop_old_tables(client).await;
        }
        Ok((applied.rows, applied.note.is_some()))
    }
}
