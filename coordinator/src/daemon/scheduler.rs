//! The scheduler: every tick, while this daemon leads, claim the slots that are due,
//! then start the claimed work on free replicas — tasks that fall due together on one
//! replica sharing one cycle (one pause), cycles on several replicas at once.
//!
//! What it must never do, and how it doesn't:
//! - run a slot twice: slots are claimed under a unique key on the primary
//!   ([`schedule::claim`]), and only by the leader;
//! - overlap two runs of a task: a task claimed or in flight here is not considered,
//!   and the claim refuses a task that has a `running` run anywhere;
//! - miss a slot because the replicas are busy: a slot is claimed when it falls due,
//!   and its work waits (in memory) for a free replica; only slots that fell due while
//!   no daemon led are "missed" (`daemon.catch_up`);
//! - let one failure stop the rest: each cycle is its own tokio task; its error is
//!   recorded on its slots (consecutive failures, last error) and the schedule goes
//!   on. A task the pre-checks refuse fails the whole cycle before its pause: the other
//!   tasks run again at once without it, and it keeps to cycles of its own until it
//!   succeeds (or the config is reloaded);
//! - leave a replica paused: the cycle resumes on every path; on shutdown every cycle
//!   in flight is aborted at once (not after the scheduler's tick) and awaited.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_postgres::Client;

use crate::abort::{Abort, AbortReason};
use crate::config::{Config, ReplicaConfig};
use crate::cycle::{self, RunSummary};
use crate::error_text::OneLine;
use crate::schedule::{self, Schedule, SlotOutcome};
use crate::{db, pool};

/// How often the scheduler looks at the clock.
const TICK: Duration = Duration::from_secs(1);
/// How late a slot may be claimed and still count as on time (not missed).
const ON_TIME: Duration = Duration::from_secs(5);
/// After the pool refused every replica, or a claim was refused, wait this long.
const RETRY: Duration = Duration::from_secs(5);
/// The longest recording one slot's outcome may take.
const STORE_LIMIT: Duration = Duration::from_secs(5);

/// What one cycle runs: tasks (by name), or one dump.
#[derive(Debug, Clone)]
pub(crate) enum Job {
    Tasks(Vec<String>),
    Dump(String),
}

impl std::fmt::Display for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Tasks(t) => write!(f, "tasks {}", t.join(", ")),
            Job::Dump(d) => write!(f, "dump {d}"),
        }
    }
}

impl Job {
    fn names(&self) -> Vec<String> {
        match self {
            Job::Tasks(t) => t.clone(),
            Job::Dump(d) => vec![d.clone()],
        }
    }
}

/// A claimed slot: the task's (or dump's) name and the scheduled time.
type Slot = (String, DateTime<Utc>);
/// The last slot of a task and when its run started.
type LastRun = Option<(DateTime<Utc>, DateTime<Utc>)>;

/// Claimed work: the replica it is pinned to, what it runs, its slots.
#[derive(Debug, Clone)]
struct Claimed {
    pin: Option<String>,
    job: Job,
    slots: Vec<Slot>,
}

/// A cycle in flight.
struct InFlight {
    replica: String,
    work: Claimed,
}

/// A cycle that ended.
struct Finished {
    id: u64,
    result: Result<RunSummary, String>,
    elapsed: Duration,
}

/// Something due now: its name, its slot, its pin.
struct Due {
    name: String,
    slot: DateTime<Utc>,
    replica: Option<String>,
    dump: bool,
}

pub(crate) struct Scheduler {
    config: watch::Receiver<Arc<Config>>,
    leads: watch::Receiver<bool>,
    leads_open: bool,
    holder: String,
    primary: Option<Client>,
    /// The primary's clock less ours (slots and run starts are in its time).
    skew: chrono::Duration,
    /// Last slot and its start, per task or dump name (read from the primary once,
    /// then kept as this leader claims).
    last: HashMap<String, LastRun>,
    /// Claimed work waiting for a free replica.
    pending: Vec<Claimed>,
    running: HashMap<u64, InFlight>,
    tokio_ids: HashMap<tokio::task::Id, u64>,
    /// Names claimed or in flight here.
    busy_names: HashSet<String>,
    cycles: JoinSet<Finished>,
    next_id: u64,
    /// The pool refused every replica: not asked again before this.
    pool_retry_at: Option<Instant>,
    /// A claim was refused (a run of the task is still going): not asked again before.
    claim_retry_at: HashMap<String, Instant>,
    last_recovery: Option<Instant>,
    /// Tasks the pre-checks refused: each runs in a cycle of its own until it succeeds.
    solo: HashSet<String>,
    /// Cancelled on shutdown or at the end of the daemon's term (with a failover's
    /// reason when the primary was found down or superseded): aborts every cycle.
    work: Abort,
    /// Recording a slot's outcome failed (the primary gone).
    store_failed: bool,
}

impl Scheduler {
    pub(crate) fn new(
        config: watch::Receiver<Arc<Config>>,
        leads: watch::Receiver<bool>,
        holder: String,
    ) -> Self {
        Scheduler {
            config,
            leads,
            leads_open: true,
            holder,
            primary: None,
            skew: chrono::Duration::zero(),
            last: HashMap::new(),
            pending: Vec::new(),
            running: HashMap::new(),
            tokio_ids: HashMap::new(),
            busy_names: HashSet::new(),
            cycles: JoinSet::new(),
            next_id: 0,
            pool_retry_at: None,
            claim_retry_at: HashMap::new(),
            last_recovery: None,
            solo: HashSet::new(),
            work: Abort::default(),
            store_failed: false,
        }
    }

    /// Schedule until `term`; then (the cycles in flight were aborted by `term`
    /// itself) wait for them, recording how their slots ended.
    pub(crate) async fn run(mut self, work: Abort) {
        let term = work.token().clone();
        self.work = work;
        loop {
            tokio::select! {
                biased;
                _ = term.cancelled() => break,
                Some(done) = self.cycles.join_next_with_id(), if !self.cycles.is_empty() => {
                    self.finished(done).await;
                    continue;
                }
                changed = self.leads.changed(), if self.leads_open => {
                    match changed {
                        // A new term as leader: what another leader claimed is on the primary.
                        Ok(()) if *self.leads.borrow() => self.last.clear(),
                        // Claimed work not started yet is not this daemon's to start any
                        // more: the next leader runs the next slots.
                        Ok(()) => {
                            for work in std::mem::take(&mut self.pending) {
                                self.record_all(&work.slots, "the daemon lost the scheduler's leadership before a replica was free").await;
                            }
                        }
                        Err(_) => self.leads_open = false,
                    }
                }
                _ = tokio::time::sleep(TICK) => {}
            }
            if self.leads_open && *self.leads.borrow() {
                // Not cancelled half-way: a tick holds claimed work in hand.
                if let Err(e) = self.tick().await {
                    tracing::warn!("scheduler: {}", e.one_line());
                    self.primary = None;
                }
            }
        }
        for work in std::mem::take(&mut self.pending) {
            self.record_all(&work.slots, "the daemon stopped before a replica was free")
                .await;
        }
        while let Some(done) = self.cycles.join_next_with_id().await {
            self.finished(done).await;
        }
    }

    async fn client(&mut self) -> anyhow::Result<&Client> {
        if self.primary.as_ref().is_none_or(|c| c.is_closed()) {
            let cfg = self.config.borrow().clone();
            let client = db::connect(&cfg.primary, "pgmaint-daemon").await?;
            let now: DateTime<Utc> = client.query_one("SELECT now()", &[]).await?.get(0);
            self.skew = now - Utc::now();
            self.primary = Some(client);
        }
        Ok(self.primary.as_ref().expect("connected"))
    }

    /// One look at the clock: recover dead runs now and then, claim what is due, start
    /// what is claimed.
    async fn tick(&mut self) -> anyhow::Result<()> {
        if self.config.has_changed().unwrap_or(false) {
            // A reload may have fixed a refused task: let it share cycles again.
            self.solo.clear();
        }
        let cfg = self.config.borrow_and_update().clone();
        self.recover_now_and_then(&cfg).await;
        let due = self.due(&cfg).await?;
        for (pin, job, slots) in group(due, &self.solo) {
            let claimed = self.claim(slots).await?;
            if claimed.is_empty() {
                continue;
            }
            let job = match job {
                Job::Tasks(_) => Job::Tasks(claimed.iter().map(|(n, _)| n.clone()).collect()),
                dump => dump,
            };
            tracing::info!(job = %job, slots = %claimed.iter().map(|(n, s)| format!("{n}@{s}")).collect::<Vec<_>>().join(", "), "claimed due slot(s)");
            self.busy_names.extend(job.names());
            self.pending.push(Claimed {
                pin,
                job,
                slots: claimed,
            });
        }
        self.start_pending(&cfg).await
    }

    /// Start each piece of claimed work whose replica is free; the rest waits.
    async fn start_pending(&mut self, cfg: &Arc<Config>) -> anyhow::Result<()> {
        let mut waiting = Vec::new();
        let mut work = std::mem::take(&mut self.pending).into_iter();
        while let Some(w) = work.next() {
            match self.pick(cfg, w.pin.as_deref()).await {
                Ok(Some(replica)) => self.start(cfg, replica, w),
                Ok(None) => waiting.push(w),
                Err(e) => {
                    waiting.push(w);
                    waiting.extend(work);
                    self.pending = waiting;
                    return Err(e);
                }
            }
        }
        self.pending = waiting;
        Ok(())
    }

    /// Replicas left paused by dead runs (a daemon killed in a scan) are resumed once
    /// their lease expired, as every pgmaint command does in passing.
    async fn recover_now_and_then(&mut self, cfg: &Config) {
        let every = (cfg.limits.lease / 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
        if self.last_recovery.is_some_and(|l| l.elapsed() < every) {
            return;
        }
        self.last_recovery = Some(Instant::now());
        crate::commands::recover::recover_in_passing(cfg).await;
    }

    /// Every scheduled task and dump that is due now and not claimed or in flight here.
    async fn due(&mut self, cfg: &Config) -> anyhow::Result<Vec<Due>> {
        let tasks = cfg
            .tasks
            .iter()
            .filter_map(|t| Some((&t.name, t.schedule.as_ref()?, &t.replica, false)));
        let dumps = cfg
            .dumps
            .iter()
            .filter_map(|d| Some((&d.name, d.schedule.as_ref()?, &d.replica, true)));
        let scheduled: Vec<(&String, &Schedule, &Option<String>, bool)> =
            tasks.chain(dumps).collect();
        let mut due = Vec::new();
        for (name, sched, pin, dump) in scheduled {
            if self.busy_names.contains(name)
                || self
                    .claim_retry_at
                    .get(name)
                    .is_some_and(|t| Instant::now() < *t)
            {
                continue;
            }
            let last = match self.last.get(name) {
                Some(l) => *l,
                None => {
                    let l = schedule::last_slot(self.client().await?, name).await?;
                    self.last.insert(name.clone(), l);
                    l
                }
            };
            let now = Utc::now() + self.skew;
            let (slot, start) = (last.map(|l| l.0), last.map(|l| l.1));
            if let Some(slot) = schedule::due(sched, slot, start, now, cfg.daemon.catch_up, ON_TIME)
            {
                due.push(Due {
                    name: name.clone(),
                    slot,
                    replica: pin.clone(),
                    dump,
                });
            }
        }
        Ok(due)
    }

    /// The replica for a cycle: the pinned one if it is not busy here (the cycle's
    /// own checks say if it cannot be paused), else the pool's choice among replicas
    /// not busy here. `None` when none is free now: busy here (the next cycle to end
    /// frees one), or refused by the pool (looked at again after a while).
    async fn pick(&mut self, cfg: &Config, pin: Option<&str>) -> anyhow::Result<Option<String>> {
        let busy: HashSet<&str> = self.running.values().map(|f| f.replica.as_str()).collect();
        let free: Vec<&ReplicaConfig> = cfg
            .replicas
            .iter()
            .filter(|r| pin.is_none_or(|p| p == r.name) && !busy.contains(r.name.as_str()))
            .collect();
        if pin.is_some() || cfg.replicas.len() == 1 {
            return Ok(free.first().map(|r| r.name.clone()));
        }
        if free.is_empty() || self.pool_retry_at.is_some_and(|t| Instant::now() < t) {
            return Ok(None);
        }
        let views = pool::look(cfg, self.client().await?, &free).await?;
        // Replicas busy here are about to be paused: they are not among `free`, so the
        // pool never counts them as unpaused failover candidates.
        let choice = pool::choose(&views, cfg.limits.max_replay_backlog, cfg.keep_unpaused());
        if choice.chosen.is_none() {
            self.pool_retry_at = Some(Instant::now() + RETRY);
            let why: Vec<String> = choice
                .skipped
                .iter()
                .map(|(n, w)| format!("{n}: {w}"))
                .collect();
            tracing::info!(
                "claimed work waits: no replica can be paused now ({})",
                why.join("; ")
            );
        }
        Ok(choice.chosen)
    }

    /// Claim each slot; those claimed (another daemon, or a run still going, may have
    /// the others). On an error, what was claimed already waits for a replica.
    async fn claim(&mut self, slots: Vec<Slot>) -> anyhow::Result<Vec<Slot>> {
        let holder = self.holder.clone();
        let mut claimed = Vec::new();
        for (name, slot) in slots {
            let answer = match self.client().await {
                Ok(c) => schedule::claim(c, &name, slot, &holder)
                    .await
                    .map_err(anyhow::Error::from),
                Err(e) => Err(e),
            };
            match answer {
                Ok(Some(at)) => {
                    self.last.insert(name.clone(), Some((slot, at)));
                    claimed.push((name, slot));
                }
                Ok(None) => {
                    // Claimed elsewhere, or a run of it still going: read it again later.
                    tracing::debug!(task = %name, %slot, "slot not claimed");
                    self.last.remove(&name);
                    self.claim_retry_at.insert(name, Instant::now() + RETRY);
                }
                Err(e) if claimed.is_empty() => return Err(e),
                Err(e) => {
                    tracing::warn!("scheduler: claiming {name}: {}", e.one_line());
                    break;
                }
            }
        }
        Ok(claimed)
    }

    fn start(&mut self, cfg: &Arc<Config>, replica: String, work: Claimed) {
        let id = self.next_id;
        self.next_id += 1;
        let abort = Abort::default();
        // Shutdown aborts the cycle at once, whatever the scheduler is doing.
        let (stopping, stop) = (self.work.clone(), abort.clone());
        let stopper = tokio::spawn(async move {
            stopping.token().cancelled().await;
            // A failover's reason, or else the shutdown's.
            stop.trigger(
                stopping
                    .reason()
                    .cloned()
                    .unwrap_or(AbortReason::Signal("SIGTERM")),
            );
        });
        let (cfg, job, name) = (cfg.clone(), work.job.clone(), replica.clone());
        let handle = self.cycles.spawn(async move {
            let started = Instant::now();
            let result = run_job(&cfg, &name, &job, abort)
                .await
                .map_err(|e| e.one_line());
            stopper.abort();
            Finished {
                id,
                result,
                elapsed: started.elapsed(),
            }
        });
        self.tokio_ids.insert(handle.id(), id);
        self.running.insert(id, InFlight { replica, work });
    }

    /// Record how a cycle's slots ended; free its names and replica.
    async fn finished(
        &mut self,
        done: Result<(tokio::task::Id, Finished), tokio::task::JoinError>,
    ) {
        let (tokio_id, finished) = match done {
            Ok((tid, f)) => (tid, Ok(f)),
            Err(e) => (e.id(), Err(format!("the cycle panicked: {e}"))),
        };
        let Some(id) = self.tokio_ids.remove(&tokio_id) else {
            return;
        };
        let Some(flight) = self.running.remove(&id) else {
            return;
        };
        let (result, elapsed) = match finished {
            Ok(f) => {
                debug_assert_eq!(f.id, id);
                (f.result, f.elapsed)
            }
            // The cycle's own guard resumed the replica, or a later recover will.
            Err(why) => (Err(why), Duration::ZERO),
        };
        let work = flight.work;
        if let Some(refused) = refused_task(&result) {
            self.solo.insert(refused.clone());
            if let Job::Tasks(names) = &work.job {
                if names.len() > 1 {
                    self.run_the_others_again(&work, &refused);
                }
            }
            let slot: Vec<Slot> = work
                .slots
                .iter()
                .filter(|(n, _)| *n == refused)
                .cloned()
                .collect();
            self.record(&slot, &result, elapsed).await;
            return;
        }
        self.record(&work.slots, &result, elapsed).await;
    }

    /// The tasks of a shared cycle other than `refused` (which failed it before its
    /// pause) run again at once, for the same slots.
    fn run_the_others_again(&mut self, work: &Claimed, refused: &str) {
        let slots: Vec<Slot> = work
            .slots
            .iter()
            .filter(|(n, _)| n != refused)
            .cloned()
            .collect();
        tracing::warn!(
            task = %refused,
            "the pre-checks refused task {refused}, which failed its shared cycle before the pause: the other \
             task(s) run again without it, and it keeps to cycles of its own until it succeeds"
        );
        self.pending.push(Claimed {
            pin: work.pin.clone(),
            job: Job::Tasks(slots.iter().map(|(n, _)| n.clone()).collect()),
            slots,
        });
    }

    /// Record the outcome of `slots` from their cycle's result; free their names.
    async fn record(
        &mut self,
        slots: &[Slot],
        result: &Result<RunSummary, String>,
        elapsed: Duration,
    ) {
        for (name, slot) in slots {
            self.busy_names.remove(name);
            let outcome = slot_outcome(name, result, elapsed);
            if outcome.succeeded {
                self.solo.remove(name);
                tracing::info!(task = %name, %slot, seconds = outcome.seconds, "scheduled run succeeded");
            } else {
                tracing::warn!(task = %name, %slot, "scheduled run failed: {}", outcome.error.as_deref().unwrap_or("?"));
            }
            self.store(name, *slot, &outcome).await;
        }
    }

    /// Record `slots` as failed with `why` (never started).
    async fn record_all(&mut self, slots: &[Slot], why: &str) {
        self.record(slots, &Err(why.to_string()), Duration::ZERO)
            .await;
    }

    async fn store(&mut self, name: &str, slot: DateTime<Utc>, outcome: &SlotOutcome) {
        // The primary was found down or superseded: nothing more is written on it (it
        // may be a former primary that came back). The slot stays claimed, unfinished.
        if self.work.for_failover() {
            tracing::warn!(task = %name, %slot, "slot's outcome not recorded: the primary it was claimed on is down or superseded (a failover)");
            return;
        }
        // Ending with a dead primary: one failure is enough, the rest are not tried.
        if self.work.token().is_cancelled() && self.store_failed {
            tracing::warn!(task = %name, %slot, "slot's outcome not recorded (the primary does not answer)");
            return;
        }
        let recorded = tokio::time::timeout(STORE_LIMIT, async {
            match self.client().await {
                Ok(c) => schedule::record(c, name, slot, outcome)
                    .await
                    .map_err(anyhow::Error::from),
                Err(e) => Err(e),
            }
        })
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "no answer within {}s",
                STORE_LIMIT.as_secs()
            ))
        });
        self.store_failed = recorded.is_err();
        if let Err(e) = recorded {
            tracing::warn!(task = %name, "could not record the slot's outcome: {}", e.one_line());
            self.primary = None;
        }
    }
}

/// Run one cycle of `job` on `replica`.
async fn run_job(
    cfg: &Config,
    replica: &str,
    job: &Job,
    abort: Abort,
) -> anyhow::Result<RunSummary> {
    let replica = cfg.replica(Some(replica))?;
    match job {
        Job::Tasks(names) => {
            let tasks = cfg.select_tasks(names)?;
            cycle::run(cfg, replica, cycle::Work::Tasks(&tasks), abort).await
        }
        Job::Dump(name) => {
            let dump = cfg.dump(name)?;
            crate::commands::dump::run_named(cfg, dump, replica, abort).await
        }
    }
}

/// Due work in cycles: the due tasks by the replica they are pinned to (unpinned ones
/// share one cycle), each dump and each `solo` task on its own.
fn group(due: Vec<Due>, solo: &HashSet<String>) -> Vec<(Option<String>, Job, Vec<Slot>)> {
    let mut groups: Vec<(Option<String>, Job, Vec<Slot>)> = Vec::new();
    for d in due {
        if d.dump || solo.contains(&d.name) {
            let job = match d.dump {
                true => Job::Dump(d.name.clone()),
                false => Job::Tasks(vec![d.name.clone()]),
            };
            groups.push((d.replica, job, vec![(d.name, d.slot)]));
            continue;
        }
        let shared = groups.iter_mut().find(|(pin, job, _)| {
            matches!(job, Job::Tasks(n) if !solo.contains(&n[0])) && *pin == d.replica
        });
        match shared {
            Some((_, Job::Tasks(names), slots)) => {
                names.push(d.name.clone());
                slots.push((d.name, d.slot));
            }
            _ => groups.push((
                d.replica,
                Job::Tasks(vec![d.name.clone()]),
                vec![(d.name, d.slot)],
            )),
        }
    }
    groups
}

/// The task the pre-checks refused, which failed its cycle before the pause.
fn refused_task(result: &Result<RunSummary, String>) -> Option<String> {
    result.as_ref().ok().and_then(|s| s.refused_task.clone())
}

/// How the slot of task `name` ended, from its cycle's summary.
fn slot_outcome(name: &str, result: &Result<RunSummary, String>, elapsed: Duration) -> SlotOutcome {
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            return SlotOutcome {
                run_id: None,
                succeeded: false,
                error: Some(e.clone()),
                findings: None,
                seconds: elapsed.as_secs_f64(),
            }
        }
    };
    let task = summary.tasks.iter().position(|t| t.name == name);
    let seconds = task
        .and_then(|i| summary.task_seconds.get(i).copied())
        .unwrap_or(elapsed.as_secs_f64());
    let report = task.map(|i| &summary.tasks[i]);
    // Another task of the cycle failing is not this task's failure; a dump has no task
    // reports, and the run speaks for it.
    let succeeded = match report {
        Some(t) => summary.state == uploader::RunState::Succeeded && t.status == "completed",
        None => summary.ok(),
    };
    let error = (!succeeded).then(|| {
        report
            .and_then(|t| t.error.clone())
            .or_else(|| {
                (report.is_some_and(|t| t.status == "partial"))
                    .then(|| "stopped by its soft_timeout: partial results".to_string())
            })
            .or_else(|| summary.error.clone())
            .unwrap_or_else(|| format!("run {}: {}", summary.run_id, summary.state))
    });
    SlotOutcome {
        run_id: Some(summary.run_id),
        succeeded,
        error,
        findings: report.map(|t| t.findings as i64),
        seconds,
    }
}
