//! The scheduler: every tick, while this daemon leads, claim the slots that are due
//! and run them, tasks that fall due together on one replica sharing one cycle (one
//! pause), cycles on several free replicas at once.
//!
//! What it must never do, and how it doesn't:
//! - run a slot twice: slots are claimed under a unique key on the primary
//!   ([`schedule::claim`]), and only by the leader;
//! - overlap two runs of a task: a task in flight here is not considered, and the
//!   claim refuses a task that has a `running` run anywhere;
//! - let one failure stop the rest: each cycle is its own tokio task; its error is
//!   recorded on its slots (consecutive failures, last error) and the schedule goes on;
//! - leave a replica paused: the cycle resumes on every path, and on shutdown every
//!   cycle in flight is aborted and awaited.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::abort::{Abort, AbortReason};
use crate::config::{Config, ReplicaConfig};
use crate::cycle::{self, RunSummary};
use crate::error_text::OneLine;
use crate::schedule::{self, Schedule, SlotOutcome};
use crate::{db, pool};

/// How often the scheduler looks at the clock.
const TICK: Duration = Duration::from_secs(1);
/// How late a slot may be taken and still count as on time (not missed).
const ON_TIME: Duration = Duration::from_secs(5);
/// After no replica could be chosen, wait this long before looking again.
const BLOCKED_RETRY: Duration = Duration::from_secs(5);

/// What one cycle runs: tasks (by name), or one dump.
#[derive(Debug, Clone)]
pub(crate) enum Job {
    Tasks(Vec<String>),
    Dump(String),
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
/// Due work for one cycle: the replica it is pinned to, what it runs, its slots.
type Group = (Option<String>, Job, Vec<Slot>);

/// A cycle in flight.
struct InFlight {
    replica: String,
    abort: Abort,
}

/// A cycle that ended: what it ran, for which slots, and how.
struct Finished {
    id: u64,
    job: Job,
    slots: Vec<Slot>,
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
    holder: String,
    primary: Option<Client>,
    /// Last slot and its start, per task or dump name (read from the primary once,
    /// then kept as this leader claims).
    last: HashMap<String, LastRun>,
    running: HashMap<u64, InFlight>,
    busy_names: HashSet<String>,
    cycles: JoinSet<Finished>,
    next_id: u64,
    blocked_until: Option<Instant>,
    last_recovery: Option<Instant>,
    /// Claimed slots of tasks whose shared cycle failed before it ran anything (a task
    /// refused by the pre-checks fails the whole cycle): each runs again alone, so
    /// one broken task does not cost the others their slot.
    alone: Vec<Slot>,
    /// Tasks whose cycle alone also failed before the pause: they keep to cycles of
    /// their own until one succeeds (or the config is reloaded).
    solo: HashSet<String>,
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
            holder,
            primary: None,
            last: HashMap::new(),
            running: HashMap::new(),
            busy_names: HashSet::new(),
            cycles: JoinSet::new(),
            next_id: 0,
            blocked_until: None,
            last_recovery: None,
            alone: Vec::new(),
            solo: HashSet::new(),
        }
    }

    /// Schedule until `shutdown`; then abort the cycles in flight and wait for them
    /// (each resumes its replica), recording how their slots ended.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(done) = self.cycles.join_next(), if !self.cycles.is_empty() => {
                    self.finished(done).await;
                    continue;
                }
                changed = self.leads.changed() => {
                    if changed.is_ok() && *self.leads.borrow() {
                        // A new term: what another leader claimed meanwhile is on the primary.
                        self.last.clear();
                    }
                }
                _ = tokio::time::sleep(TICK) => {}
            }
            if *self.leads.borrow() {
                if let Err(e) = self.tick().await {
                    tracing::warn!("scheduler: {}", e.one_line());
                    self.primary = None;
                }
            }
        }
        for f in self.running.values() {
            f.abort.trigger(AbortReason::Signal("SIGTERM"));
        }
        while let Some(done) = self.cycles.join_next().await {
            self.finished(done).await;
        }
    }

    async fn client(&mut self) -> anyhow::Result<&Client> {
        if self.primary.as_ref().is_none_or(|c| c.is_closed()) {
            let cfg = self.config.borrow().clone();
            self.primary = Some(db::connect(&cfg.primary, "pgmaint-daemon").await?);
        }
        Ok(self.primary.as_ref().expect("connected"))
    }

    /// One look at the clock: recover dead runs now and then, then start what is due.
    async fn tick(&mut self) -> anyhow::Result<()> {
        if self.config.has_changed().unwrap_or(false) {
            // A reload may have fixed a broken task: let it share cycles again.
            self.solo.clear();
        }
        let cfg = self.config.borrow_and_update().clone();
        self.recover_now_and_then(&cfg).await;
        if self.blocked_until.is_some_and(|b| Instant::now() < b) {
            return Ok(());
        }
        self.start_alone(&cfg).await?;
        let due = self.due(&cfg).await?;
        for (pin, job, slots) in group(due, &self.solo) {
            let Some(replica) = self.pick(&cfg, pin.as_deref()).await? else {
                return Ok(());
            };
            let claimed = self.claim(&job, slots).await?;
            if claimed.is_empty() {
                continue;
            }
            let job = match job {
                Job::Tasks(_) => Job::Tasks(claimed.iter().map(|(n, _)| n.clone()).collect()),
                dump => dump,
            };
            self.start(&cfg, replica, job, claimed);
        }
        Ok(())
    }

    /// Start the tasks to run alone, each on a free replica (claimed already).
    async fn start_alone(&mut self, cfg: &Arc<Config>) -> anyhow::Result<()> {
        while let Some((name, slot)) = self.alone.pop() {
            let pin = cfg
                .tasks
                .iter()
                .find(|t| t.name == name)
                .and_then(|t| t.replica.clone());
            let Some(replica) = self.pick(cfg, pin.as_deref()).await? else {
                self.alone.push((name, slot));
                return Ok(());
            };
            self.start(
                cfg,
                replica,
                Job::Tasks(vec![name.clone()]),
                vec![(name, slot)],
            );
        }
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

    /// Every scheduled task and dump that is due now and not in flight here.
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
        let now = Utc::now();
        for (name, sched, pin, dump) in scheduled {
            if self.busy_names.contains(name) {
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
        if free.is_empty() {
            return Ok(None);
        }
        let views = pool::look(cfg, self.client().await?, &free).await?;
        // Replicas busy here are about to be paused: never count them as unpaused.
        let choice = pool::choose(&views, cfg.limits.max_replay_backlog, cfg.keep_unpaused());
        if choice.chosen.is_none() {
            self.blocked_until = Some(Instant::now() + BLOCKED_RETRY);
            let why: Vec<String> = choice
                .skipped
                .iter()
                .map(|(n, w)| format!("{n}: {w}"))
                .collect();
            tracing::info!(
                "due work waits: no replica can be paused now ({})",
                why.join("; ")
            );
        }
        Ok(choice.chosen)
    }

    /// Claim each slot of `job`; those claimed, with when (another daemon or a run
    /// still going may have them).
    async fn claim(&mut self, job: &Job, slots: Vec<Slot>) -> anyhow::Result<Vec<Slot>> {
        let holder = self.holder.clone();
        let mut claimed = Vec::new();
        for (name, slot) in slots {
            match schedule::claim(self.client().await?, &name, slot, &holder).await? {
                Some(at) => {
                    self.last.insert(name.clone(), Some((slot, at)));
                    claimed.push((name, slot));
                }
                None => {
                    // Claimed elsewhere, or a run of it still going: read it again next time.
                    tracing::debug!(task = %name, %slot, "slot not claimed");
                    self.last.remove(&name);
                }
            }
        }
        if !claimed.is_empty() {
            tracing::info!(
                job = ?job,
                slots = ?claimed.iter().map(|(n, s)| format!("{n}@{s}")).collect::<Vec<_>>(),
                "claimed due slot(s)"
            );
        }
        Ok(claimed)
    }

    fn start(&mut self, cfg: &Arc<Config>, replica: String, job: Job, slots: Vec<Slot>) {
        let id = self.next_id;
        self.next_id += 1;
        let abort = Abort::default();
        self.busy_names.extend(job.names());
        self.running.insert(
            id,
            InFlight {
                replica: replica.clone(),
                abort: abort.clone(),
            },
        );
        let cfg = cfg.clone();
        self.cycles.spawn(async move {
            let started = Instant::now();
            let result = run_job(&cfg, &replica, &job, abort)
                .await
                .map_err(|e| e.one_line());
            Finished {
                id,
                job,
                slots,
                result,
                elapsed: started.elapsed(),
            }
        });
    }

    /// Record how a cycle's slots ended; free its names and replica.
    async fn finished(&mut self, done: Result<Finished, tokio::task::JoinError>) {
        let done = match done {
            Ok(d) => d,
            Err(e) => {
                // A panic inside the cycle: its own guard resumed the replica.
                tracing::error!("a scheduled cycle panicked: {e}");
                return;
            }
        };
        self.running.remove(&done.id);
        if let (Some(e), Job::Tasks(names)) = (failed_before_the_pause(&done.result), &done.job) {
            if names.len() == 1 {
                self.solo.insert(names[0].clone());
            } else {
                tracing::warn!("a shared cycle of {names:?} failed before it paused ({e}): each task runs again alone");
                // Still busy: not due again before it ran.
                self.alone.extend(done.slots);
                return;
            }
        }
        for name in done.job.names() {
            self.busy_names.remove(&name);
        }
        for (name, slot) in &done.slots {
            let outcome = slot_outcome(name, &done.result, done.elapsed);
            if outcome.succeeded {
                self.solo.remove(name);
                tracing::info!(task = %name, %slot, seconds = outcome.seconds, "scheduled run succeeded");
            } else {
                tracing::warn!(task = %name, %slot, "scheduled run failed: {}", outcome.error.as_deref().unwrap_or("?"));
            }
            let recorded = match self.client().await {
                Ok(c) => schedule::record(c, name, *slot, &outcome)
                    .await
                    .map_err(anyhow::Error::from),
                Err(e) => Err(e),
            };
            if let Err(e) = recorded {
                tracing::warn!(task = %name, "could not record the slot's outcome: {}", e.one_line());
                self.primary = None;
            }
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
/// share one cycle), each dump on its own.
fn group(due: Vec<Due>, solo: &HashSet<String>) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for d in due {
        if d.dump || solo.contains(&d.name) {
            let job = match d.dump {
                true => Job::Dump(d.name.clone()),
                false => Job::Tasks(vec![d.name.clone()]),
            };
            groups.push((d.replica, job, vec![(d.name, d.slot)]));
            continue;
        }
        match groups
            .iter_mut()
            .find(|(pin, job, _)| matches!(job, Job::Tasks(_)) && *pin == d.replica)
        {
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

/// The error of a cycle that failed before it paused (a task refused by the
/// pre-checks fails the whole cycle), if it did.
fn failed_before_the_pause(result: &Result<RunSummary, String>) -> Option<String> {
    match result {
        Err(e) => Some(e.clone()),
        Ok(s)
            if s.state != uploader::RunState::Succeeded
                && s.paused_at.is_none()
                && s.tasks.is_empty() =>
        {
            Some(s.error.clone().unwrap_or_else(|| s.state.to_string()))
        }
        Ok(_) => None,
    }
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
    let task_ok = match report {
        Some(t) => t.status == "completed",
        // A dump has no task reports: the run speaks for it.
        None => true,
    };
    // Another task of the cycle failing is not this task's failure.
    let succeeded = summary.state == uploader::RunState::Succeeded
        && task_ok
        && (report.is_some() || summary.ok());
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
