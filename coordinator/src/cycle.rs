//! One maintenance cycle: pause → scan → queue → resume.
//!
//! [`run`] reads top to bottom in the order of the design: lease, pre-checks, pause,
//! snapshot, tasks, validity check, results and manifest, queue, resume. Everything
//! after the pause request runs inside [`Cycle::paused_work`], and whatever that returns
//! (success, error, abort or panic), [`Cycle::close_and_resume`] runs next.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use serde::Serialize;
use snapshot_runner::{
    ManifestTask, ResultManifest, ScanContext, SnapshotInfo, TaskReport, TaskStatus,
};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use uploader::{RunState, UploadRequest};

use crate::abort::{Abort, AbortReason};
use crate::config::{Config, ReplicaConfig, TaskConfig};
use crate::dump::{self, DumpSpec};
use crate::error_text::{with_reason, OneLine};
use crate::errors::ErrorClass;
use crate::lease::{self, HeartbeatHandle, PauseLease, PoolGuard, RunOutcome};
use crate::replica::{PauseOwnership, PauseState, ReplicaControl, ResumeOutcome};
use crate::watchdog::Watchdog;
use crate::{db, schema, UsageError};

/// How many times to retry a pause that landed while replayed WAL held an
/// AccessExclusiveLock on a relation a task reads.
const PAUSE_ATTEMPTS: u32 = 5;

/// How long aborted work may take to stop before the cycle resumes replay regardless.
const ABORT_GRACE: Duration = Duration::from_secs(10);

/// What a cycle does while the replica is paused.
pub enum Work<'a> {
    /// Scan tasks; their results are queued for upload.
    Tasks(&'a [&'a TaskConfig]),
    /// A consistent `pg_dump -Fd -j N` of the frozen replica.
    Dump(DumpSpec),
}

impl Work<'_> {
    fn purpose(&self) -> &'static str {
        match self {
            Work::Tasks(_) => "run",
            Work::Dump(_) => "dump",
        }
    }
    fn names(&self) -> Vec<String> {
        match self {
            Work::Tasks(tasks) => tasks.iter().map(|t| t.name.clone()).collect(),
            // A named dump's runs carry its name: runs of one `[[dumps]]` entry never
            // overlap (the daemon's claim checks it).
            Work::Dump(spec) => vec![spec
                .named
                .as_ref()
                .map_or_else(|| "dump".to_string(), |n| n.name.clone())],
        }
    }
}

/// A task checked against the replica's catalog, and its soft_timeout.
type PreparedWithTimeout = (snapshot_runner::PreparedTask, Option<Duration>);

/// The work, checked before the pause.
enum Prepared {
    Tasks(Vec<PreparedWithTimeout>),
    /// The pg_dump binary to run.
    Dump(PathBuf),
}

/// What a cycle did, for printing and for `--json`.
#[derive(Debug, Serialize)]
pub struct RunSummary {
    /// Run id.
    pub run_id: i64,
    /// Replica name.
    pub replica: String,
    /// Final state of the run.
    pub state: RunState,
    /// The snapshot, if the pause was confirmed.
    pub snapshot: Option<SnapshotInfo>,
    /// When the pause was confirmed.
    pub paused_at: Option<DateTime<Utc>>,
    /// When replay was resumed.
    pub resumed_at: Option<DateTime<Utc>>,
    /// receive − replay at resume, in bytes.
    pub backlog_at_resume: Option<i64>,
    /// Per-task results.
    pub tasks: Vec<ManifestTask>,
    /// Seconds per task.
    pub task_seconds: Vec<f64>,
    /// Upload task ids queued on the primary.
    pub queued: Vec<i64>,
    /// Where the results are (for a dump: the dump directory).
    pub results_dir: Option<PathBuf>,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// Whose problem the error is (the operator's input: exit code 2).
    #[serde(skip)]
    pub error_class: ErrorClass,
    /// The task the pre-checks refused (a table or column gone), which failed the
    /// whole cycle before its pause.
    #[serde(skip)]
    pub refused_task: Option<String>,
}

/// A task refused by the pre-checks against the replica's catalog: the operator's
/// input (its source is a [`UsageError`]), and the task it is about.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct TaskRefused {
    /// The task's name.
    pub task: String,
    /// The refusal.
    #[source]
    pub source: UsageError,
}

impl RunSummary {
    /// True if the cycle succeeded and every task has results.
    pub fn ok(&self) -> bool {
        self.state == RunState::Succeeded && self.error.is_none()
    }
}

struct Cycle<'a> {
    cfg: &'a Config,
    work: Work<'a>,
    primary: Client,
    replica: ReplicaControl,
    lease: PauseLease,
    abort: Abort,
    run_dir: PathBuf,
    /// Set just before the pause is requested: from then on, resume is due.
    pause: Option<PauseOwnership>,
    snapshot: Option<SnapshotInfo>,
    paused_at: Option<DateTime<Utc>>,
    reports: Vec<TaskReport>,
    queued: Vec<i64>,
    /// Stop the watchdog, and the max_pause deadline armed when the pause was
    /// requested; set while the replica may be paused.
    watchdog: Vec<CancellationToken>,
}

/// Run one cycle against `replica`. Returns a summary whatever happened after the
/// lease was taken; errors before that (bad config, unreachable servers, a replica in
/// use) are returned as errors.
pub async fn run(
    cfg: &Config,
    replica_cfg: &ReplicaConfig,
    work: Work<'_>,
    abort: Abort,
) -> Result<RunSummary> {
    // An abort before the pause (a shutdown while the pre-checks wait on a server that
    // hangs) ends the cycle at once: nothing is paused yet.
    let (mut cycle, heartbeat) = tokio::select! {
        started = Cycle::start(cfg, replica_cfg, work, abort.clone()) => started?,
        _ = abort.token().cancelled() => anyhow::bail!(
            "{} before the cycle started (nothing paused)",
            abort.reason().map(|r| r.to_string()).unwrap_or_else(|| "cancelled".into())
        ),
    };
    let outcome = cycle.paused_work_within_grace().await;
    cycle.notice_a_restart(&outcome).await;
    // On every path: close the scan sessions, then resume replay if the pause is ours.
    let resume = cycle.close_and_resume().await;

    let (state, error, error_class) = judge(&outcome, abort.reason(), &cycle.reports);
    let refused_task = outcome
        .as_ref()
        .err()
        .and_then(|e| e.downcast_ref::<TaskRefused>())
        .map(|r| r.task.clone());
    let resumed = ResumeRecord::of(&resume, &replica_cfg.name);
    if resumed.at.is_some() {
        tracing::info!(
            run_id = cycle.lease.run_id,
            backlog = resumed.backlog,
            "replay resumed"
        );
    }
    let mut error = match (error, resumed.error) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    };
    let results_dir = cycle.finish_dump(state, &mut error);
    if let Work::Dump(spec) = &cycle.work {
        // After the manifest (which lists pg_dump's files only).
        spec.mark_owned(cycle.lease.run_id);
    }
    // The run is over (a dump's files hashed too): stop renewing, record the end.
    heartbeat.stop().await;
    let outcome = RunOutcome {
        run_id: cycle.lease.run_id,
        state,
        error,
        resumed: resumed.at.zip(resumed.backlog),
        finished_at: Utc::now(),
        holder: lease::holder(),
    };
    cycle.record_or_keep_end(&outcome, resumed.release).await;
    let mut summary = cycle.summary(outcome, results_dir, error_class);
    summary.refused_task = refused_task;
    Ok(summary)
}

/// The run's state and error, from what the work returned and why it was aborted.
fn judge(
    outcome: &Result<()>,
    aborted: Option<&AbortReason>,
    reports: &[TaskReport],
) -> (RunState, Option<String>, ErrorClass) {
    match (outcome, aborted) {
        (Ok(()), _) => (
            RunState::Succeeded,
            failed_tasks(reports),
            ErrorClass::Runtime,
        ),
        (Err(e), Some(reason)) => (
            reason.run_state(),
            Some(with_reason(reason, e)),
            ErrorClass::Runtime,
        ),
        (Err(e), None) => (RunState::Failed, Some(e.one_line()), ErrorClass::of(e)),
    }
}

/// What the resume means for the run's record.
struct ResumeRecord {
    /// When pgmaint resumed its pause.
    at: Option<DateTime<Utc>>,
    /// receive − replay then.
    backlog: Option<i64>,
    /// False when the resume failed: the lease is kept, so that once it expires the
    /// next command (or `pgmaint recover`) retries.
    release: bool,
    error: Option<String>,
}

impl ResumeRecord {
    fn of(resume: &Result<Option<(ResumeOutcome, i64)>>, replica: &str) -> ResumeRecord {
        match resume {
            Ok(Some((ResumeOutcome::Resumed, backlog))) => ResumeRecord {
                at: Some(Utc::now()),
                backlog: Some(*backlog),
                release: true,
                error: None,
            },
            // Not ours to resume (logged where decided), or never paused.
            Ok(_) => ResumeRecord {
                at: None,
                backlog: None,
                release: true,
                error: None,
            },
            Err(e) => ResumeRecord {
                at: None,
                backlog: None,
                release: false,
                error: Some(format!(
                    "could not resume replay on {replica}: {}; run `pgmaint recover`",
                    e.one_line()
                )),
            },
        }
    }
}

/// Inside the transaction that records a run's outcome: mark it succeeded, if it is
/// still running (a recover may have dropped it after its lease was lost). Whether it
/// was.
async fn mark_succeeded(
    tx: &tokio_postgres::Transaction<'_>,
    run_id: i64,
    results: &std::path::Path,
) -> Result<bool> {
    let updated = tx
        .execute(
            "UPDATE pgmaint.runs SET state = $3, finished_at = now(), results_dir = $2
              WHERE id = $1 AND state = $4",
            &[
                &run_id,
                &results.display().to_string(),
                &RunState::Succeeded.as_str(),
                &RunState::Running.as_str(),
            ],
        )
        .await?;
    Ok(updated == 1)
}

fn no_longer_running(run_id: i64) -> anyhow::Error {
    anyhow!("run {run_id} is no longer running on the primary (dropped after a lost lease?); nothing recorded")
}

/// Did `e` end the session (the server shut down or restarted, the socket broke)?
/// Then a new session may well succeed.
fn connection_lost(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<tokio_postgres::Error>())
        .any(|pg| {
            pg.is_closed()
                || pg.code().is_some_and(|c| {
                    let c = c.code();
                    c.starts_with("08") || c.starts_with("57P")
                })
                || std::error::Error::source(pg).is_some_and(|s| s.is::<std::io::Error>())
        })
}

/// Tasks that did not do their job: failed ones, and a materialize cut short by its
/// soft_timeout (a partial result never replaces the target, so nothing is uploaded:
/// the operator must hear of it, not only the manifest).
fn failed_tasks(reports: &[TaskReport]) -> Option<String> {
    let failed: Vec<String> = reports
        .iter()
        .filter_map(|r| {
            let why = r.error.as_deref().unwrap_or(r.status.as_str());
            if !r.status.has_results() {
                Some(format!("task {} failed: {why}", r.name))
            } else if r.status == TaskStatus::Partial && r.kind == "materialize" {
                Some(format!("task {} uploaded nothing: {why}", r.name))
            } else {
                None
            }
        })
        .collect();
    (!failed.is_empty()).then(|| failed.join("; "))
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown".into())
}

impl<'a> Cycle<'a> {
    /// Connect, check that the replica belongs to the primary, recover what a dead run
    /// left, take the lease and start renewing it.
    async fn start(
        cfg: &'a Config,
        replica_cfg: &ReplicaConfig,
        work: Work<'a>,
        abort: Abort,
    ) -> Result<(Cycle<'a>, HeartbeatHandle)> {
        let mut primary = db::connect_at_start(&cfg.primary, "pgmaint").await?;
        schema::require_current(&primary).await?;
        let replica = ReplicaControl::connect(replica_cfg)
            .await
            .map_err(db::ConnectError::at_start)?;
        // A role that may not pause, resume or watch replay is refused before anything
        // is recorded, naming the grant (never "not streaming": a hidden WAL receiver
        // status is a missing privilege).
        crate::privileges::refuse_missing_on_replica(replica.client(), &replica_cfg.name).await?;
        // A run that died may have left this replica paused: resume it before anything
        // else (recover_expired logs what it did; it resumes only a pause it can prove
        // was that run's, so it is safe even on a replica that turns out not to belong).
        lease::recover_expired(&mut primary, replica_cfg, &cfg.results_dir).await?;
        // Before anything is recorded: results of another cluster must never reach this one.
        replica.check_belongs_to(&primary, &cfg.primary).await?;
        // Never the pause that leaves too few failover candidates ready, whoever chose
        // the replica (the pool, --replica, a pinned task).
        crate::pool::check_keep_unpaused(cfg, &primary, replica_cfg).await?;
        let lease = PauseLease::acquire(
            &mut primary,
            &replica_cfg.name,
            work.purpose(),
            &work.names(),
            cfg.limits.lease,
            &PoolGuard {
                candidates: cfg
                    .replicas
                    .iter()
                    .filter(|r| r.failover_priority > 0)
                    .map(|r| r.name.clone())
                    .collect(),
                keep: cfg.keep_unpaused(),
            },
        )
        .await?;
        let heartbeat = lease.spawn_heartbeat(cfg.primary.clone(), abort.clone());
        let run_id = lease.run_id;
        tracing::info!(run_id, replica = %replica_cfg.name, "run started");
        let cycle = Cycle {
            cfg,
            work,
            primary,
            replica,
            lease,
            abort,
            run_dir: cfg.results_dir.join(run_id.to_string()),
            pause: None,
            snapshot: None,
            paused_at: None,
            reports: Vec::new(),
            queued: Vec::new(),
            watchdog: Vec::new(),
        };
        Ok((cycle, heartbeat))
    }

    /// [`Cycle::paused_work`], a panic in it turned into an error. Once aborted
    /// (signal, limits, lost lease), the work gets ABORT_GRACE to wind down; then it is
    /// dropped wherever it hangs (a stalled primary, a hung file read), so that
    /// limits.max_pause bounds the pause whatever else goes wrong.
    async fn paused_work_within_grace(&mut self) -> Result<()> {
        let abort = self.abort.clone();
        let outcome = tokio::select! {
            r = AssertUnwindSafe(self.paused_work()).catch_unwind() => match r {
                Ok(r) => r,
                Err(panic) => Err(anyhow!("internal error (panic): {}", panic_message(&panic))),
            },
            _ = async {
                abort.token().cancelled().await;
                tokio::time::sleep(ABORT_GRACE).await;
            } => Err(anyhow!("the work did not stop within {}s of the abort; resuming replay anyway", ABORT_GRACE.as_secs())),
        };
        for w in self.watchdog.drain(..) {
            w.cancel();
        }
        outcome
    }

    /// A failure after the pause request may be a restart of the replica in disguise
    /// (a session terminated mid-query before the watchdog saw it): then the snapshot is
    /// lost, whatever the error said.
    async fn notice_a_restart(&mut self, outcome: &Result<()>) {
        let (Err(e), None, Some(own)) = (outcome, self.abort.reason(), &self.pause) else {
            return;
        };
        if let Some(resumed) = e.downcast_ref::<crate::replica::ResumedByOther>() {
            self.abort
                .trigger(AbortReason::SnapshotLost(resumed.to_string()));
            return;
        }
        let started = own.postmaster_start;
        let state = tokio::time::timeout(Duration::from_secs(15), self.replica.fresh_state()).await;
        if let Ok(Ok(st)) = state {
            if st.postmaster_start != started {
                self.abort.trigger(AbortReason::SnapshotLost(format!(
                    "replica {} restarted at {} during the run (its pause was lost)",
                    self.replica.name(),
                    st.postmaster_start
                )));
            } else if st.pause_state == PauseState::NotPaused && self.paused_at.is_some() {
                // A scan cancelled by the replay conflicts of a foreign resume can fail
                // before the watchdog's next look: the cause is the lost snapshot.
                self.abort.trigger(AbortReason::SnapshotLost(format!(
                    "replica {}: replay was resumed by another process during the pause",
                    self.replica.name()
                )));
            }
        }
    }

    /// For a dump: its manifest once replay runs again (hashing the files is not worth
    /// a longer pause), or an INVALID mark on a failed one. Where the results are.
    fn finish_dump(&self, state: RunState, error: &mut Option<String>) -> Option<PathBuf> {
        let results_dir = self.snapshot.as_ref().map(|_| self.run_dir.clone());
        let (Work::Dump(spec), Some(snapshot)) = (&self.work, &self.snapshot) else {
            return results_dir;
        };
        if state == RunState::Succeeded {
            let manifest = ResultManifest {
                run_id: self.lease.run_id,
                replica: self.replica.name().to_string(),
                snapshot: snapshot.clone(),
                started_at: self.paused_at.unwrap_or_else(Utc::now),
                finished_at: Utc::now(),
                valid: true,
                tasks: Vec::new(),
            };
            let elapsed = self
                .paused_at
                .map(|p| (Utc::now() - p).to_std().unwrap_or_default())
                .unwrap_or_default();
            if let Err(e) = dump::write_manifest(&spec.out, manifest, elapsed, spec.mode) {
                *error = Some(format!(
                    "dump written, but its manifest was not: {}",
                    e.one_line()
                ));
            }
            return Some(spec.out.clone());
        }
        if let Some(why) = error {
            // Paused, so --out passed its checks (it was absent or empty): whatever
            // pg_dump left there is not a dump of one snapshot. Say so where it lies.
            dump::mark_invalid(&spec.out, why, spec.mode);
        }
        results_dir
    }

    /// Record the end on the primary; failing that, keep it in the run directory, from
    /// where the command that later recovers the expired lease records it.
    async fn record_or_keep_end(&mut self, outcome: &RunOutcome, release: bool) {
        // Aborted by a failover: the primary is down or superseded, and nothing more is
        // written on it (a former primary that came back must not get the record). The
        // promotion drops the run on the new primary; its outcome stays in the run
        // directory.
        let recorded = if self.abort.for_failover() {
            Err(anyhow!(
                "the primary is down or superseded (a failover): the run is dropped on the new primary"
            ))
        } else {
            self.record_end(outcome, release).await
        };
        let Err(e) = recorded else {
            return;
        };
        let kept = match (
            outcome.state,
            outcome.write(&self.run_dir, self.cfg.results_mode),
        ) {
            // A success is on the primary already (with its uploads); only the lease is left.
            (RunState::Succeeded, _) => String::new(),
            (_, Ok(path)) => format!(
                "; kept in {}, recorded by the next pgmaint command",
                path.display()
            ),
            (_, Err(w)) => format!(
                "; could not keep it in the run directory either: {}",
                w.one_line()
            ),
        };
        tracing::error!(run_id = self.lease.run_id, error = %e.one_line(), "could not record the end of the run on the primary{kept}");
    }

    /// What the cycle did, for printing.
    fn summary(
        &self,
        outcome: RunOutcome,
        results_dir: Option<PathBuf>,
        error_class: ErrorClass,
    ) -> RunSummary {
        RunSummary {
            run_id: outcome.run_id,
            replica: self.replica.name().to_string(),
            state: outcome.state,
            snapshot: self.snapshot.clone(),
            paused_at: self.paused_at,
            resumed_at: outcome.resumed.map(|r| r.0),
            backlog_at_resume: outcome.resumed.map(|r| r.1),
            tasks: self.reports.iter().map(TaskReport::to_manifest).collect(),
            task_seconds: self
                .reports
                .iter()
                .map(|r| r.elapsed.as_secs_f64())
                .collect(),
            queued: self.queued.clone(),
            results_dir,
            error: outcome.error,
            error_class,
            refused_task: None,
        }
    }

    /// Record the end of the run on the primary, reconnecting as needed, for up to a
    /// lease (at least 10 s). Each attempt is bounded: a stalled primary hangs it.
    async fn record_end(&mut self, outcome: &RunOutcome, release: bool) -> Result<()> {
        let deadline = Instant::now()
            + self
                .cfg
                .limits
                .lease
                .clamp(Duration::from_secs(10), Duration::from_secs(60));
        let mut fresh = false;
        loop {
            let attempt = async {
                if fresh || self.primary.is_closed() {
                    self.primary = db::connect(&self.cfg.primary, "pgmaint").await?;
                }
                self.lease
                    .finish(
                        &mut self.primary,
                        outcome.state,
                        outcome.error.as_deref(),
                        outcome.resumed,
                        release,
                    )
                    .await
            };
            let result = match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(r) => r,
                Err(_) => Err(anyhow!("the primary did not answer within 5s")),
            };
            match result {
                Ok(()) => return Ok(()),
                // A failover came meanwhile: the old primary gets nothing more.
                Err(e) if self.abort.for_failover() => return Err(e),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!(
                        "primary ({})",
                        db::describe(&self.cfg.primary.config)
                    )))
                }
                Err(e) => {
                    tracing::warn!(run_id = self.lease.run_id, error = %e.one_line(), "recording the end of the run failed; retrying");
                    // A hung call may still sit on this session: start a new one.
                    fresh = true;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    fn scan_context(&self) -> ScanContext {
        let mut ctx = ScanContext::new(
            self.replica.config.dsn.config.clone(),
            self.run_dir.clone(),
            self.lease.run_id,
        );
        ctx.lock_timeout = self.cfg.scan.lock_timeout;
        ctx.batch_rows = self.cfg.scan.batch_rows;
        ctx.results_mode = self.cfg.results_mode;
        ctx.cancel = self.abort.token().clone();
        ctx.progress =
            snapshot_runner::progress::ProgressMode::detect(self.cfg.scan.progress_interval);
        ctx
    }

    /// Everything from the task checks to the queued uploads. Once it sets
    /// `self.pause`, the caller resumes replay whatever this returns.
    async fn paused_work(&mut self) -> Result<()> {
        let ctx = self.scan_context();

        // 1. Check the tasks against the catalog (or the dump's output and pg_dump), and
        //    create the run directory, before pausing: a typo or a full disk never
        //    costs a pause.
        if let Work::Dump(spec) = &mut self.work {
            // A named dump's own new subdirectory, named by the run id: before the
            // checks, which want the dump's directory empty.
            spec.claim_run_dir(&self.primary, self.lease.run_id).await?;
        }
        let prepared = self.prepare(&ctx).await?;
        self.create_dirs()?;

        // 2. Pre-checks: in recovery, streaming, 'not paused', not a remote_apply sync
        //    standby, backlog under the limit.
        self.replica
            .precheck(&self.primary, self.cfg.limits.max_replay_backlog)
            .await?;
        if let Some(reason) = self.abort.reason() {
            bail!("{reason}");
        }

        // 3. Pause and wait for 'paused'; record the snapshot. A dump reads every
        //    relation; tasks read theirs.
        let relations: Option<Vec<(String, String)>> = match &prepared {
            Prepared::Tasks(tasks) => Some(tasks.iter().flat_map(|(p, _)| p.relations()).collect()),
            Prepared::Dump(_) => None,
        };
        // limits.max_pause counts from the request, and holds even if a call to the
        // primary hangs before the watchdog starts (recording the snapshot, say).
        let pause_started = Instant::now();
        self.watchdog.push(crate::watchdog::arm_deadline(
            self.abort.clone(),
            pause_started + self.cfg.limits.max_pause,
            self.cfg.limits.max_pause,
        ));
        self.pause_confirmed(relations.as_deref()).await?;
        let snapshot = self.snapshot.clone().expect("set by pause_confirmed");

        // 4. Run the tasks (or the dump). The watchdog guards the pause limits from now
        //    until the caller resumes replay: through the scans, and through the calls
        //    to the primary after them, which may hang too.
        let watchdog = Watchdog {
            replica: self.replica.name().to_string(),
            replica_dsn: self.replica.config.dsn.clone(),
            primary_dsn: self.cfg.primary.clone(),
            snapshot: snapshot.clone(),
            identity: self.replica.walreceiver_identity().await?,
            limits: self.cfg.limits.clone(),
        };
        self.watchdog
            .push(watchdog.spawn(self.abort.clone(), pause_started));
        let tasks = match prepared {
            Prepared::Dump(pg_dump) => return self.dump(&ctx, &pg_dump, &snapshot).await,
            Prepared::Tasks(tasks) => tasks,
        };
        self.run_tasks(&ctx, &tasks).await?;
        let scans_ended = Utc::now();

        // 5. Is the snapshot still the one we paused at?
        let moved = match self.abort.reason() {
            Some(AbortReason::SnapshotLost(why)) => Some(why.clone()),
            Some(reason) => bail!("{reason}"),
            None => self.replica.snapshot_moved(&snapshot).await,
        };

        // 6. Results and manifest (an invalid run's manifest says so).
        let manifest = ResultManifest {
            run_id: self.lease.run_id,
            replica: self.replica.name().to_string(),
            snapshot: snapshot.clone(),
            started_at: self.paused_at.unwrap_or(scans_ended),
            finished_at: scans_ended,
            valid: moved.is_none(),
            tasks: self.reports.iter().map(TaskReport::to_manifest).collect(),
        };
        manifest.write(&self.run_dir, self.cfg.results_mode)?;
        if let Some(why) = moved {
            self.abort.trigger(AbortReason::SnapshotLost(why.clone()));
            bail!("results discarded, nothing queued");
        }

        // 7. In one transaction on the primary: record the run, queue its uploads.
        self.queue_uploads().await
    }

    /// Step 1, once the checks passed: the run directory (and `results.dir` if it is
    /// missing), and a `dump --out` directory that does not exist yet, all of
    /// `results.mode`.
    fn create_dirs(&self) -> Result<()> {
        let mode = self.cfg.results_mode;
        mode.create_dir_all(&self.cfg.results_dir)
            .with_context(|| format!("results.dir {}", self.cfg.results_dir.display()))?;
        mode.create_dir(&self.run_dir)
            .with_context(|| format!("creating the run directory {}", self.run_dir.display()))?;
        if let Work::Dump(spec) = &self.work {
            spec.create_out()?;
        }
        Ok(())
    }

    /// Step 1: the tasks checked against the replica's catalog (and materialize
    /// targets against the primary's), or the dump's output directory checked and its
    /// pg_dump found.
    async fn prepare(&self, ctx: &ScanContext) -> Result<Prepared> {
        let tasks = match &self.work {
            Work::Tasks(tasks) => tasks,
            Work::Dump(spec) => {
                spec.check_out()?;
                // pg_dump's leader and its -j workers, and the watchdog.
                let (wanted, free) = (spec.jobs as i64 + 2, self.replica.free_connections().await?);
                if wanted > free {
                    return Err(anyhow!(UsageError(format!(
                        "--jobs {}: pg_dump needs {} sessions on replica {} and pgmaint's watchdog one more, but \
                         it has {free} free connection(s) (max_connections less those in use); lower --jobs",
                        spec.jobs,
                        spec.jobs + 1,
                        self.replica.name()
                    ))));
                }
                let major = self.replica.server_major().await?;
                return Ok(Prepared::Dump(dump::find_pg_dump(spec, major)?));
            }
        };
        let mut prepared = Vec::new();
        for t in tasks.iter() {
            let p = snapshot_runner::prepare(&t.name, &t.spec, ctx)
                .await
                .map_err(|e| match e {
                    e if e.is_config() => anyhow!(TaskRefused {
                        task: t.name.clone(),
                        source: UsageError(e.to_string()),
                    }),
                    e => anyhow!(e).context(format!("checking task {}", t.name)),
                })?;
            prepared.push((p, t.soft_timeout));
        }
        self.check_room(tasks, &prepared).await?;
        // A target the uploader cannot apply into must not cost a pause either.
        let targets: Vec<crate::targets::TaskTarget> = tasks
            .iter()
            .zip(&prepared)
            .filter_map(|(t, (p, _))| {
                crate::targets::TaskTarget::of(t)
                    .map(|target| target.with_columns(p.result_columns()))
            })
            .collect();
        if let Err((task, why)) = crate::targets::refuse_unusable(&self.primary, &targets).await? {
            return Err(anyhow!(TaskRefused {
                task,
                source: UsageError(why),
            }));
        }
        Ok(Prepared::Tasks(prepared))
    }

    /// Step 4 for a dump: pg_dump of the paused replica, its snapshot checked after,
    /// recorded on the primary.
    async fn dump(
        &mut self,
        ctx: &ScanContext,
        pg_dump: &std::path::Path,
        snapshot: &SnapshotInfo,
    ) -> Result<()> {
        let Work::Dump(spec) = &self.work else {
            unreachable!("a dump's work is a dump")
        };
        let dumped = dump::run_pg_dump(
            pg_dump,
            &self.replica.config.dsn.config,
            spec,
            &ctx.application_name(),
            self.cfg.scan.lock_timeout,
            self.cfg.scan.progress_interval,
            self.abort.token(),
        )
        .await;
        if let Some(reason) = self.abort.reason() {
            bail!("{reason}");
        }
        dumped?;
        if let Some(why) = self.replica.snapshot_moved(snapshot).await {
            self.abort.trigger(AbortReason::SnapshotLost(why));
            bail!("the dump is not of one snapshot; discard it");
        }
        let out = spec.out.clone();
        let tx = self.primary.transaction().await?;
        if !mark_succeeded(&tx, self.lease.run_id, &out).await? {
            return Err(no_longer_running(self.lease.run_id));
        }
        tx.commit().await.context("recording the dump")
    }

    /// Step 4 for tasks: each in turn, from where its previous valid run stopped,
    /// until all ran or the cycle is aborted.
    async fn run_tasks(&mut self, ctx: &ScanContext, tasks: &[PreparedWithTimeout]) -> Result<()> {
        let cursors = self.task_cursors().await?;
        for (task, soft_timeout) in tasks {
            if self.abort.reason().is_some() {
                break;
            }
            let cursor = cursors.get(&task.name).map(String::as_str);
            tracing::debug!(run_id = self.lease.run_id, task = %task.name, "task started");
            let report = task
                .run(ctx, soft_timeout.map(|d| Instant::now() + d), cursor)
                .await;
            tracing::info!(run_id = self.lease.run_id, task = %report.name, status = %report.status.as_str(), rows = report.rows_scanned,
                           findings = report.findings, secs = report.elapsed.as_secs_f64(), "task finished");
            self.reports.push(report);
        }
        Ok(())
    }

    /// What would fail only once paused, refused before: two tasks writing one file,
    /// and a task wanting more sessions than the replica has free (the watchdog and
    /// the control session need theirs too).
    async fn check_room(
        &self,
        tasks: &[&TaskConfig],
        prepared: &[PreparedWithTimeout],
    ) -> Result<()> {
        let mut writers: std::collections::BTreeMap<String, &str> = Default::default();
        for (p, _) in prepared {
            for file in p.file_names() {
                if let Some(other) = writers.insert(file.clone(), &p.name) {
                    return Err(anyhow!(UsageError(format!(
                        "tasks {other:?} and {:?} would both write {file} in the run directory: rename one of them",
                        p.name
                    ))));
                }
            }
        }
        let free = self.replica.free_connections().await?;
        for t in tasks {
            let wanted = t.spec.sessions() as i64;
            // One more for the watchdog, opened once paused.
            if wanted + 1 > free {
                return Err(anyhow!(UsageError(format!(
                    "task {:?}: parallelism = {wanted} needs {wanted} sessions on replica {}, which has {free} \
                     free connection(s) (max_connections less those in use), one of them for pgmaint's watchdog; \
                     lower parallelism",
                    t.name,
                    self.replica.name()
                ))));
            }
        }
        Ok(())
    }

    /// Request the pause, wait for `paused`, make sure the replayed WAL holds no
    /// AccessExclusiveLock on a relation we read (else resume and try again later), and
    /// record the snapshot.
    async fn pause_confirmed(&mut self, relations: Option<&[(String, String)]>) -> Result<()> {
        for attempt in 1..=PAUSE_ATTEMPTS {
            let before = self.replica.state().await?;
            // Replay ran since the pre-checks (or between attempts): PostgreSQL may have
            // paused by itself meanwhile (a recovery target, a parameter mismatch), or
            // someone else did. Such a pause is never ours.
            if !(before.in_recovery && before.pause_state == PauseState::NotPaused) {
                bail!(
                    "replica {} became '{}' (in recovery: {}) {}: not pgmaint's to pause; left as it is",
                    self.replica.name(),
                    before.pause_state,
                    before.in_recovery,
                    if attempt == 1 {
                        "just before pgmaint paused it"
                    } else {
                        "between pause attempts"
                    }
                );
            }
            // Recorded on the primary *before* the request: a run that dies from here
            // on left a pause that `recover` can prove is its own.
            self.lease
                .mark_pause_requested(&self.primary, before.postmaster_start)
                .await?;
            self.pause = Some(PauseOwnership {
                postmaster_start: before.postmaster_start,
                snapshot_lsn: None,
            });
            tracing::debug!(run_id = self.lease.run_id, replica = %self.replica.name(), attempt, "pause requested");
            self.replica.pause(self.cfg.limits.pause_timeout).await?;
            let locked = self.replica.startup_locks(relations).await?;
            if locked.is_empty() {
                let snap = self.replica.snapshot().await?;
                if snap.postmaster_start != before.postmaster_start {
                    bail!("replica {} restarted while pausing", self.replica.name());
                }
                self.lease.record_snapshot(&self.primary, &snap).await?;
                self.pause.as_mut().expect("set above").snapshot_lsn = Some(snap.lsn.clone());
                self.paused_at = Some(Utc::now());
                tracing::info!(run_id = self.lease.run_id, replica = %self.replica.name(), lsn = %snap.lsn, "replay paused");
                self.snapshot = Some(snap);
                return Ok(());
            }
            tracing::warn!(run_id = self.lease.run_id, attempt, locked = ?locked, "replayed WAL holds AccessExclusiveLock at the pause point; resuming to retry");
            // If this resume fails, `self.pause` still says the pause is ours: the caller
            // tries again, and keeps the lease (for `recover`) if that fails too.
            let own = self.pause.clone().expect("set above");
            self.replica.resume_if_owned(&own).await?;
            self.pause = None;
            // Should this process die before the next attempt, `recover` must not
            // take a pause it then finds for one of ours.
            self.lease.clear_pause_request(&self.primary).await?;
            if attempt == PAUSE_ATTEMPTS {
                bail!(
                    "relation(s) {} locked AccessExclusive by replayed WAL at every pause point ({PAUSE_ATTEMPTS} tries); try later",
                    locked.join(", ")
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2 * attempt as u64)) => {}
                _ = self.abort.token().cancelled() => bail!("cancelled while waiting to pause"),
            }
        }
        unreachable!("the loop returns or bails")
    }

    /// Where each task's previous valid run stopped, from the primary.
    async fn task_cursors(&self) -> Result<std::collections::HashMap<String, String>> {
        let names = self.work.names();
        let rows = self
            .primary
            .query(
                "SELECT task_name, cursor FROM pgmaint.task_cursors WHERE task_name = ANY($1)",
                &[&names],
            )
            .await
            .context("reading task cursors")?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Mark the run succeeded, queue its uploads and move the task cursors, in one
    /// transaction: all of it happens or none does.
    async fn queue_uploads(&mut self) -> Result<()> {
        let run_id = self.lease.run_id;
        let mut uploads: Vec<UploadRequest> = Vec::new();
        for r in self.reports.iter().filter(|r| r.status.has_results()) {
            let (Some(file), Some(plan)) = (&r.file, &r.apply) else {
                continue;
            };
            uploads.push(UploadRequest {
                task_name: r.name.clone(),
                plan: plan.clone(),
                file: format!("{run_id}/{}", file.name),
                manifest: format!("{run_id}/{}", snapshot_runner::results::MANIFEST_FILE),
                file_md5: file.md5.clone(),
                file_size: file.size as i64,
                host: self.cfg.upload_host(),
            });
        }
        // The snapshot is verified and the replica still paused: a primary that
        // restarted just now must not cost a valid run. Reconnect and try again; a
        // commit whose acknowledgement was lost is recognised by the run's state
        // (commit_run).
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            let error = match self.commit_run(&uploads).await {
                Ok(queued) => {
                    tracing::debug!(run_id, upload_task_ids = ?queued, "uploads queued");
                    self.queued = queued;
                    return Ok(());
                }
                Err(e) => e,
            };
            let retry = Instant::now() < give_up
                && self.abort.reason().is_none()
                && (self.primary.is_closed() || connection_lost(&error));
            if !retry {
                return Err(error.context(format!(
                    "the snapshot was verified, but run {run_id} and its uploads could not be recorded on the \
                     primary ({}); nothing was queued",
                    db::describe(&self.cfg.primary.config)
                )));
            }
            tracing::warn!(run_id, error = %error.one_line(), "the primary's session broke while queueing; reconnecting");
            tokio::time::sleep(Duration::from_secs(1)).await;
            match db::connect(&self.cfg.primary, "pgmaint").await {
                Ok(c) => self.primary = c,
                Err(e) => tracing::warn!(run_id, error = %e, "reconnecting to the primary failed"),
            }
        }
    }

    /// In one transaction: mark the run succeeded, queue its uploads, move the task
    /// cursors. The ids of the queued uploads.
    async fn commit_run(&mut self, uploads: &[UploadRequest]) -> Result<Vec<i64>> {
        let run_id = self.lease.run_id;
        let tx = self.primary.transaction().await?;
        if !mark_succeeded(&tx, run_id, &self.run_dir).await? {
            drop(tx);
            // A retry may find that the attempt whose answer was lost committed after
            // all (the UPDATE above waited for it): then the uploads are queued.
            let state = self
                .primary
                .query_one("SELECT state FROM pgmaint.runs WHERE id = $1", &[&run_id])
                .await?;
            if RunState::parse(state.get(0)) != Some(RunState::Succeeded) {
                return Err(no_longer_running(run_id));
            }
            let ids = self
                .primary
                .query(
                    "SELECT id FROM pgmaint.upload_tasks WHERE run_id = $1 ORDER BY id",
                    &[&run_id],
                )
                .await?;
            return Ok(ids.iter().map(|r| r.get(0)).collect());
        }
        let queued =
            uploader::enqueue(&tx, run_id, uploads, self.cfg.uploader.max_attempts).await?;
        for r in self.reports.iter().filter(|r| r.status.has_results()) {
            if let Some(cursor) = &r.cursor {
                tx.execute(
                    "INSERT INTO pgmaint.task_cursors (task_name, cursor, run_id) VALUES ($1, $2, $3)
                     ON CONFLICT (task_name) DO UPDATE SET cursor = $2, run_id = $3, updated_at = now()",
                    &[&r.name, cursor, &run_id],
                )
                .await
                .context("moving the task cursor")?;
            }
        }
        tx.commit()
            .await
            .context("committing the run and its uploads")?;
        Ok(queued)
    }

    /// Has another command taken the replica over (our lease lost, the run dropped by a
    /// `recover`, perhaps a new run paused it, possibly at the same LSN)? Then its pause
    /// is not ours to resume. If the primary cannot tell us within a few seconds, we
    /// assume not: a replica left paused is the worse failure, and `resume_if_owned`
    /// still checks the start time and LSN.
    async fn taken_over(&self) -> Option<String> {
        let run_id = self.lease.run_id;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&run_id];
        let query = self.primary.query_one(
            "SELECT r.state, (SELECT l.run_id FROM pgmaint.replica_leases l WHERE l.replica = r.replica)
               FROM pgmaint.runs r WHERE r.id = $1",
            &params,
        );
        let row = tokio::time::timeout(Duration::from_secs(5), query)
            .await
            .ok()?
            .ok()?;
        let (state, holder): (&str, Option<i64>) = (row.get(0), row.get(1));
        if RunState::parse(state) == Some(RunState::Dropped) {
            return Some(format!(
                "run {} was dropped by a recover after its lease expired",
                self.lease.run_id
            ));
        }
        match holder {
            Some(other) if other != self.lease.run_id => {
                Some(format!("run {other} holds the replica's lease now"))
            }
            _ => None,
        }
    }

    /// Close every scan session, then resume replay if the pause is ours. Returns the
    /// outcome and the backlog at resume, or `None` if no pause was ever requested.
    async fn close_and_resume(&mut self) -> Result<Option<(ResumeOutcome, i64)>> {
        let Some(own) = self.pause.clone() else {
            return Ok(None);
        };
        if let Some(other) = self.taken_over().await {
            tracing::warn!(
                replica = %self.replica.name(),
                "not resuming replay: {other}"
            );
            return Ok(Some((ResumeOutcome::NotOurs, 0)));
        }
        let app = snapshot_runner::scan_application_name(self.lease.run_id);
        // Bounded: closing sessions must not delay the resume for long.
        match tokio::time::timeout(Duration::from_secs(15), self.replica.close_sessions(&app)).await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e.one_line(), "could not check for open scan sessions")
            }
            Err(_) => tracing::warn!("gave up waiting for scan sessions to close"),
        }
        let (outcome, st) = self.replica.resume_if_owned(&own).await?;
        if outcome != ResumeOutcome::Resumed {
            tracing::warn!(
                ?outcome,
                replica = %self.replica.name(),
                "did not resume replay: the pause was not ours"
            );
        }
        Ok(Some((outcome, st.backlog_bytes)))
    }
}
