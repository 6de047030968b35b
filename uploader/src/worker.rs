//! The upload worker: N slots that claim and apply tasks, woken by NOTIFY and by a
//! poll, surviving restarts of the primary, stopping gracefully on request.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client};
use tokio_util::sync::CancellationToken;

use crate::queue::{self, Beat, Claimed};
use crate::{apply, UploadError};

/// Applies queued uploads on the primary.
pub struct Worker {
    primary: tokio_postgres::Config,
    results_dir: PathBuf,
    id: String,
    /// Lease of a claimed task; renewed every third of it while the apply runs.
    pub lease: Duration,
    /// `lock_timeout` of an apply transaction.
    pub lock_timeout: Duration,
    /// Tasks applied at once (each slot has its own connections).
    pub slots: usize,
    /// Poll interval, in case a NOTIFY is missed (and to rescue expired leases).
    pub poll_interval: Duration,
    /// On shutdown, how long the task in hand may take to finish before it is
    /// cancelled and released for another worker.
    pub shutdown_grace: Duration,
    /// Longest wait between reconnection attempts to the primary.
    pub reconnect_max: Duration,
    /// `--once` only: give up after the primary has been unreachable this long.
    pub once_reconnect_limit: Duration,
}

/// What a worker did.
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

/// How long a slot waits before reconnecting: doubling, capped, with jitter.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Backoff {
            next: Duration::from_millis(200),
            max,
        }
    }
    fn wait(&mut self) -> Duration {
        let d = self.next.mul_f64(0.5 + rand::random::<f64>());
        self.next = (self.next * 2).min(self.max);
        d.min(self.max)
    }
    fn reset(&mut self) {
        self.next = Duration::from_millis(200);
    }
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

impl Worker {
    /// A worker for the primary at `primary`, reading files under `results_dir`.
    pub fn new(primary: tokio_postgres::Config, results_dir: PathBuf) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        Worker {
            primary,
            results_dir,
            id: format!("{host}:{}", std::process::id()),
            lease: Duration::from_secs(60),
            lock_timeout: Duration::from_secs(5),
            slots: 2,
            poll_interval: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            reconnect_max: Duration::from_secs(30),
            once_reconnect_limit: Duration::from_secs(60),
        }
    }

    /// This worker's id; slot `n` records `<id>/<n>` on the tasks it runs.
    pub fn id(&self) -> &str {
        &self.id
    }

    async fn connect(&self, role: &str) -> Result<Client, UploadError> {
        let mut config = self.primary.clone();
        config.application_name(format!("pgmaint-uploader-{role}"));
        snapshot_runner::connect(&config)
            .await
            .map_err(UploadError::db("connecting to the primary"))
    }

    /// Apply every task that is runnable now (including what becomes runnable as
    /// prerequisites complete), then return. Rescues expired leases first.
    pub async fn drain(&self) -> Result<DrainStats, UploadError> {
        self.run_slots(true, CancellationToken::new()).await
    }

    /// Run until `shutdown` is cancelled: wait for work (NOTIFY or poll), apply it,
    /// rescue expired leases, reconnect when the primary goes away.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<DrainStats, UploadError> {
        self.run_slots(false, shutdown).await
    }

    async fn run_slots(
        &self,
        once: bool,
        shutdown: CancellationToken,
    ) -> Result<DrainStats, UploadError> {
        let wake = Arc::new(Notify::new());
        let stats = Arc::new(Mutex::new(DrainStats::default()));
        let last_rescue = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let listener_stop = CancellationToken::new();
        let listener = (!once).then(|| self.listen(wake.clone(), listener_stop.clone()));
        let slots = (0..self.slots.max(1)).map(|n| {
            self.slot(
                n,
                once,
                shutdown.clone(),
                wake.clone(),
                stats.clone(),
                last_rescue.clone(),
                started,
            )
        });
        // The listener runs alongside the slots and stops when they are all done.
        let slots_done = async {
            let results = futures_util::future::join_all(slots).await;
            listener_stop.cancel();
            results
        };
        let listening = async {
            if let Some(l) = listener {
                l.await;
            }
        };
        let (results, ()) = tokio::join!(slots_done, listening);
        let stats = *stats.lock().expect("stats lock");
        for r in results {
            r?;
        }
        Ok(stats)
    }

    /// LISTEN on the queue's channel and wake the slots on every notification (and on
    /// every reconnect, in case one was missed while disconnected).
    async fn listen(&self, wake: Arc<Notify>, stop: CancellationToken) {
        {
            let mut backoff = Backoff::new(self.reconnect_max);
            loop {
                let mut config = self.primary.clone();
                config.application_name("pgmaint-uploader-listen");
                if config.get_connect_timeout().is_none() {
                    config.connect_timeout(Duration::from_secs(10));
                }
                let connected = tokio::select! {
                    c = config.connect(snapshot_runner::tls::connector()) => c,
                    _ = stop.cancelled() => return,
                };
                match connected {
                    Ok((client, mut conn)) => {
                        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                        let driver = tokio::spawn(async move {
                            let mut messages =
                                futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                            while let Some(m) = messages.next().await {
                                match m {
                                    Ok(AsyncMessage::Notification(_)) => {
                                        let _ = tx.send(());
                                    }
                                    Ok(_) => {}
                                    Err(_) => break,
                                }
                            }
                        });
                        if client
                            .batch_execute(&format!("LISTEN {}", queue::CHANNEL))
                            .await
                            .is_ok()
                        {
                            backoff.reset();
                            wake.notify_waiters();
                            loop {
                                tokio::select! {
                                    m = rx.recv() => match m {
                                        Some(()) => wake.notify_waiters(),
                                        None => break,
                                    },
                                    _ = stop.cancelled() => { driver.abort(); return; }
                                }
                            }
                        }
                        driver.abort();
                        tracing::debug!("lost the LISTEN connection; reconnecting");
                    }
                    Err(e) => tracing::debug!(error = %e, "LISTEN connection failed"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff.wait()) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn slot(
        &self,
        n: usize,
        once: bool,
        shutdown: CancellationToken,
        wake: Arc<Notify>,
        stats: Arc<Mutex<DrainStats>>,
        last_rescue: Arc<AtomicU64>,
        started: Instant,
    ) -> Result<(), UploadError> {
        let me = format!("{}/{n}", self.id);
        let mut conns: Option<Conns> = None;
        let mut backoff = Backoff::new(self.reconnect_max);
        let mut unreachable_since: Option<Instant> = None;
        let mut orphan: Option<(Claimed, UploadError)> = None;
        let mut rescued_once = false;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            // (Re)connect, with backoff, for as long as it takes.
            if conns.as_ref().is_none_or(Conns::closed) {
                conns = None;
                match self.connect_slot(n).await {
                    Ok(c) => {
                        if unreachable_since.take().is_some() {
                            tracing::info!(slot = n, "reconnected to the primary");
                        }
                        backoff.reset();
                        conns = Some(c);
                    }
                    Err(e) => {
                        let since = *unreachable_since.get_or_insert_with(Instant::now);
                        if once && since.elapsed() >= self.once_reconnect_limit {
                            return Err(e);
                        }
                        let wait = backoff.wait();
                        tracing::warn!(slot = n, error = %e, retry_in = ?wait, "primary unreachable");
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = shutdown.cancelled() => return Ok(()),
                        }
                        continue;
                    }
                }
            }
            let c = conns.as_mut().expect("connected above");

            // A task whose apply died with the connection: record the attempt.
            if let Some((task, e)) = orphan.take() {
                match queue::fail(&c.side, &task, &me, &e).await {
                    Ok(state) => self.count_failure(&stats, &task, &e, state),
                    Err(e2) if e2.is_closed() => {
                        orphan = Some((task, e));
                        continue;
                    }
                    Err(e2) => {
                        tracing::error!(task = task.id, error = %e2, "could not record a failed attempt")
                    }
                }
            }

            // Rescue expired leases: at start, then about once per poll interval per process.
            let now_ms = started.elapsed().as_millis() as u64 + 1;
            let last = last_rescue.load(Ordering::Relaxed);
            let due = !rescued_once
                || now_ms.saturating_sub(last) >= self.poll_interval.as_millis() as u64;
            if due
                && last_rescue
                    .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                rescued_once = true;
                match queue::rescue(&c.side).await {
                    Ok(r) if r.requeued + r.failed > 0 => {
                        tracing::info!(
                            requeued = r.requeued,
                            failed = r.failed,
                            "rescued tasks whose lease expired"
                        )
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "rescue failed");
                        if e.is_closed() {
                            continue;
                        }
                    }
                }
            }
            rescued_once = true;

            // Arm the wake-up before looking, so a NOTIFY between the claim and the
            // wait is not lost.
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let task = match queue::claim(&c.side, &c.side_stmts.claim, &me, self.lease).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(slot = n, error = %e, "claim failed");
                    if !e.is_closed() {
                        tokio::select! {
                            _ = tokio::time::sleep(backoff.wait()) => {}
                            _ = shutdown.cancelled() => return Ok(()),
                        }
                    }
                    continue;
                }
            };
            let Some(task) = task else {
                if once {
                    return Ok(());
                }
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(self.poll_interval) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
                continue;
            };
            tracing::debug!(slot = n, task = task.id, attempt = task.attempt, "claimed");
            match self.run_task(c, &task, &me, &shutdown).await {
                Outcome::Applied(rows, superseded) => {
                    let mut s = stats.lock().expect("stats lock");
                    s.completed += 1;
                    s.rows += rows as u64;
                    if superseded {
                        s.superseded += 1;
                        tracing::info!(task = task.id, run = task.run_id, name = %task.task_name, kind = %task.kind,
                                       "completed as superseded: nothing applied");
                    } else {
                        tracing::info!(task = task.id, run = task.run_id, name = %task.task_name, kind = %task.kind, rows, "applied");
                    }
                }
                Outcome::Released => {
                    tracing::info!(task = task.id, "released on shutdown");
                    return Ok(());
                }
                Outcome::Orphaned(e) => {
                    tracing::warn!(task = task.id, error = %e, "lost the primary during an apply; will record and retry");
                    orphan = Some((task, e));
                    conns = None;
                }
                Outcome::Failed(UploadError::Fenced(id)) => {
                    tracing::warn!(
                        task = id,
                        "lease lost before completion; the apply was rolled back"
                    );
                    // The apply may have been stopped mid-statement: start afresh.
                    conns = None;
                }
                Outcome::Failed(UploadError::Cancelled(id)) => {
                    match queue::mark_cancelled(&c.side, &task, &me).await {
                        Ok(()) => stats.lock().expect("stats lock").cancelled += 1,
                        Err(e) => {
                            tracing::error!(task = id, error = %e, "could not record the cancellation")
                        }
                    }
                    tracing::info!(
                        task = id,
                        "cancelled by an operator; the apply was rolled back"
                    );
                    conns = None;
                }
                Outcome::Failed(e) => match queue::fail(&c.side, &task, &me, &e).await {
                    Ok(state) => self.count_failure(&stats, &task, &e, state),
                    Err(e2) if e2.is_closed() => {
                        orphan = Some((task, e));
                        conns = None;
                    }
                    Err(e2) => {
                        tracing::error!(task = task.id, error = %e2, "could not record a failed attempt")
                    }
                },
            }
        }
    }

    fn count_failure(
        &self,
        stats: &Mutex<DrainStats>,
        task: &Claimed,
        e: &UploadError,
        state: Option<&'static str>,
    ) {
        let mut s = stats.lock().expect("stats lock");
        match state {
            Some("failed") => {
                s.failed += 1;
                tracing::error!(task = task.id, run = task.run_id, name = %task.task_name, error = %e, "upload failed for good");
            }
            Some(_) => {
                s.retried += 1;
                tracing::warn!(task = task.id, run = task.run_id, name = %task.task_name, error = %e, attempt = task.attempt, "upload failed; will retry");
            }
            None => {
                tracing::warn!(task = task.id, error = %e, "upload failed, and the task was no longer ours")
            }
        }
    }

    async fn connect_slot(&self, n: usize) -> Result<Conns, UploadError> {
        let apply = self.connect(&format!("{n}")).await?;
        // Every lock wait of an apply is bounded; set once per session, not per task.
        apply
            .batch_execute(&format!(
                "SET lock_timeout = {}",
                self.lock_timeout.as_millis().max(1)
            ))
            .await
            .map_err(UploadError::db("setting lock_timeout"))?;
        let side = self.connect(&format!("{n}-side")).await?;
        let side_stmts = queue::Statements::prepare(&side).await?;
        let apply_stmts = queue::Statements::prepare(&apply).await?;
        Ok(Conns {
            apply,
            side,
            side_stmts,
            apply_stmts,
        })
    }

    /// Apply one task while heartbeating its lease. A lost lease or a cancel request
    /// stops the apply at once (the server-side statement is cancelled and the
    /// transaction rolls back). On shutdown the apply may finish within
    /// `shutdown_grace`; after that it is stopped and the task released.
    async fn run_task(
        &self,
        c: &mut Conns,
        task: &Claimed,
        me: &str,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let cancel = c.apply.cancel_token();
        let side = &c.side;
        let heartbeat_stmt = &c.side_stmts.heartbeat;
        let apply = self.apply(&mut c.apply, &c.apply_stmts.complete, task, me);
        tokio::pin!(apply);
        let beat_every = self.lease / 3;
        let heartbeat = async {
            loop {
                tokio::time::sleep(beat_every).await;
                match queue::heartbeat(side, heartbeat_stmt, task, me, self.lease).await {
                    Ok(Beat::Held) => {}
                    Ok(b) => return b,
                    Err(e) => tracing::warn!(task = task.id, error = %e, "heartbeat failed"),
                }
            }
        };
        tokio::pin!(heartbeat);
        let grace = async {
            shutdown.cancelled().await;
            tracing::info!(task = task.id, grace = ?self.shutdown_grace, "shutting down: letting the task in hand finish");
            tokio::time::sleep(self.shutdown_grace).await;
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
        let _ = cancel.cancel_query(snapshot_runner::tls::connector()).await;
        let r = tokio::time::timeout(Duration::from_secs(10), &mut apply).await;
        match (stop, r) {
            // It committed before the cancel landed.
            (_, Ok(Ok((rows, superseded)))) => Outcome::Applied(rows, superseded),
            (Some(Beat::CancelRequested), _) => Outcome::Failed(UploadError::Cancelled(task.id)),
            (Some(_), _) => Outcome::Failed(UploadError::Fenced(task.id)),
            (None, _) => match queue::release(side, task, me).await {
                Ok(_) => Outcome::Released,
                Err(e) => {
                    tracing::warn!(task = task.id, error = %e, "could not release the task; its lease will expire");
                    Outcome::Released
                }
            },
        }
    }

    /// One task, in one transaction: check, load, complete (fenced). Returns the rows
    /// applied, and whether the task was superseded (completed, nothing applied).
    async fn apply(
        &self,
        client: &mut Client,
        complete_stmt: &tokio_postgres::Statement,
        task: &Claimed,
        me: &str,
    ) -> Result<(i64, bool), UploadError> {
        let tx = client
            .transaction()
            .await
            .map_err(UploadError::db("starting the apply"))?;
        // lock_timeout is set once for the apply connection's session (connect_slot).
        let ctx = apply::Ctx {
            task,
            results_dir: &self.results_dir,
            lock_timeout: self.lock_timeout,
        };
        let applied = apply::apply_task(&tx, &ctx).await?;
        queue::complete(
            &tx,
            complete_stmt,
            task,
            me,
            applied.rows,
            applied.note.as_deref(),
        )
        .await?;
        tx.commit()
            .await
            .map_err(UploadError::db("committing the apply"))?;
        if let Some(t) = applied.exclusive_since {
            // Operators (and scripts/bench) read this line: how long readers of the
            // target waited for the swap.
            tracing::info!(
                task = task.id,
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
