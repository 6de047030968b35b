//! Automatic failover (`failover.automatic = true`): the daemon watches the primary and,
//! when it is really gone, promotes a replica through the same path as
//! `pgmaint promote` (never `--force`), or follows the one another pgmaint promoted.
//!
//! A failed look only starts the check. The primary counts as down only when
//! [`crate::failover::promote::failover`] finds, for `failover.primary_down_after`,
//! that every connection attempt to the server in use fails (a server that answers at
//! all, even with an error, is alive), that no replica's WAL receiver hears from a
//! primary, and that `failover.witness_command` (if any) does not vouch for it. Exactly
//! one promoter: it holds the failover lock (a session advisory lock) on every replica
//! it reaches, the candidate included; a daemon that finds a lock taken tries again at
//! its next look, and one that finds (after the same down check) a replica already out
//! of recovery and fenced by no promotion follows it instead of promoting. The
//! candidate rule is deterministic (most WAL received, then unpaused, then
//! `failover_priority`, then name), so daemons that see the same state choose the same
//! replica.
//!
//! Once the down check passed, the daemon's work against the old primary stops (the
//! `work` token: scheduler, cycles, upload worker, leader lease); if no promotion
//! follows, the term starts again against the same primary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Dsn};
use crate::error_text::OneLine;
use crate::failover::promote::{self, NotPromoting};
use crate::failover::servers::{self as p, HostSeen};
use crate::failover::{journal, primary};
use crate::metrics::DaemonStats;

/// What the failover watch remembers across terms.
#[derive(Debug, Default)]
pub(crate) struct Memory {
    /// A replica asked to promote whose promotion was not seen to finish: never
    /// another candidate, never a second pg_promote, while it may become the primary.
    pub promoting: Option<String>,
    /// Failover attempts refused in a row, and when the next may start.
    pub refused: u32,
    pub next_attempt: Option<Instant>,
}

/// How the watch ended its term.
pub(crate) enum WatchEnd {
    /// This replica is the primary now: go on with it.
    Switch(String),
    /// Start the term again, against the same primary (the work stopped for a
    /// failover that did not happen).
    Again,
    /// Stop the daemon (exit 1): why.
    Stop(String),
}

/// What the watch works with.
pub(crate) struct Watch {
    /// The config of the term (its `primary` is the server in use).
    pub cfg: Arc<Config>,
    /// The latest config: a reload may turn `failover.automatic` off.
    pub latest: watch::Receiver<Arc<Config>>,
    pub stats: Arc<DaemonStats>,
    /// Ends the term.
    pub term: CancellationToken,
    /// The work against the primary in use.
    pub work: CancellationToken,
    /// The daemon started without reaching the primary: once it answers, start again
    /// the normal way (schema check, recovery of dead runs).
    pub degraded: bool,
    /// Kept across terms.
    pub memory: Arc<std::sync::Mutex<Memory>>,
}

/// A full look at every server (fences recorded on the replicas) every this many looks.
const SURVEY_EVERY: u32 = 5;

/// Watch the primary in use every `failover.check_interval` until the term ends.
pub(crate) async fn watch(w: Watch) -> Option<WatchEnd> {
    let every = w.cfg.failover.check_interval;
    let mut down_since: Option<Instant> = None;
    for look in 0u32.. {
        if look > 0 {
            tokio::select! {
                _ = w.term.cancelled() => return None,
                _ = tokio::time::sleep(every) => {}
            }
        }
        let seen = look_at_primary(&w.cfg, look % SURVEY_EVERY == 0).await;
        let up = matches!(seen, HostSeen::Primary(_) | HostSeen::Answers(_));
        w.stats.primary_seen(matches!(seen, HostSeen::Primary(_)));
        let promoting = w.memory.lock().expect("memory").promoting.clone();
        if up {
            if let Some(end) = answers_again(&w, promoting, down_since.take().is_some()) {
                return Some(end);
            }
            continue;
        }
        if down_since.is_none() {
            tracing::warn!(
                "the primary in use: {}; checking whether it is down",
                describe(&seen)
            );
            down_since = Some(Instant::now());
        }
        if !w.latest.borrow().failover.automatic {
            tracing::warn!(
                "the primary does not answer; failover.automatic is off (reloaded): no failover"
            );
            if w.work.is_cancelled() && promoting.is_none() {
                return Some(WatchEnd::Again);
            }
            continue;
        }
        let next = w.memory.lock().expect("memory").next_attempt;
        if next.is_some_and(|t| Instant::now() < t) {
            continue;
        }
        let since = down_since.expect("set above");
        match attempt(&w, since).await {
            Attempt::Switch(name) => return Some(WatchEnd::Switch(name)),
            Attempt::Busy => {}
            Attempt::NoFailover => {
                // Each refusal waits longer before the next try (up to 64 looks), across
                // terms: a fence is not run every primary_down_after.
                let mut m = w.memory.lock().expect("memory");
                m.refused += 1;
                m.next_attempt = Some(Instant::now() + every * 2u32.pow(m.refused.min(6)));
                drop(m);
                down_since = None;
                if w.work.is_cancelled() {
                    return Some(WatchEnd::Again);
                }
            }
        }
    }
    None
}

/// The primary in use answers: how the term goes on (`None`: as it is).
fn answers_again(w: &Watch, promoting: Option<String>, was_down: bool) -> Option<WatchEnd> {
    if let Some(name) = promoting {
        return Some(WatchEnd::Stop(format!(
            "the old primary answers while replica {name} was asked to promote: two servers may take \
             writes; see to it by hand (pgmaint status, then pgmaint promote or pg_rewind)"
        )));
    }
    if w.degraded {
        return Some(WatchEnd::Stop(
            "the primary answers now: restarting the daemon to start against it".into(),
        ));
    }
    let mut m = w.memory.lock().expect("memory");
    (m.refused, m.next_attempt) = (0, None);
    if w.work.is_cancelled() {
        tracing::info!("the primary answers again: the work against it starts again");
        return Some(WatchEnd::Again);
    }
    if was_down {
        tracing::info!("the primary answers again");
    }
    None
}

/// The server in use as one look sees it; with `survey`, fenced by what any replica
/// records too (a promotion made by another pgmaint).
async fn look_at_primary(cfg: &Config, survey: bool) -> HostSeen {
    let patience = cfg
        .failover
        .check_interval
        .clamp(Duration::from_secs(1), Duration::from_secs(5));
    let mut promotions = journal::read_local(&cfg.results_dir).unwrap_or_default();
    if survey {
        for s in p::probe_replicas(cfg).await {
            if let Ok((c, _)) = &s.state {
                promotions.extend(journal::read_on(c).await);
            }
        }
    }
    p::probe_host(&cfg.primary, &promotions, patience).await
}

fn describe(seen: &HostSeen) -> String {
    match seen {
        HostSeen::Down(why) => format!("no connection ({why})"),
        HostSeen::Standby => "it is in recovery (a standby now)".into(),
        HostSeen::Fenced(why) => format!("it is {why}"),
        HostSeen::Primary(what) | HostSeen::Answers(what) => what.clone(),
    }
}

enum Attempt {
    Switch(String),
    /// Another pgmaint holds a failover lock: look again at the next look.
    Busy,
    NoFailover,
}

/// One failover attempt: promote a replica, or follow the one that is a primary
/// already (both only after the down check).
async fn attempt(w: &Watch, since: Instant) -> Attempt {
    // The latest config (a reload may have changed the replicas); its primary is the
    // term's (a reload keeps the server in use).
    let latest = w.latest.borrow().clone();
    let cfg = &*latest;
    tracing::warn!(
        "failover: is the primary down? checking for failover.primary_down_after ({}s)",
        cfg.failover.primary_down_after.as_secs_f64()
    );
    let promoting = w.memory.lock().expect("memory").promoting.clone();
    let result = promote::failover(
        cfg,
        None,
        false,
        &w.term,
        Some(&w.work),
        promoting.as_deref(),
    )
    .await;
    let secs = || Some(since.elapsed().as_secs_f64());
    match result {
        Ok(report) => {
            tracing::warn!(
                new_primary = %report.new_primary,
                timeline = report.timeline,
                seconds = report.seconds.total,
                "failover: replica {} promoted; the daemon goes on with it as the primary",
                report.new_primary
            );
            for f in &report.replicas {
                tracing::info!(replica = %f.name, state = ?f.state, "failover: {}", f.detail);
            }
            if !report.record_errors.is_empty() {
                tracing::error!(
                    "failover: the promotion could not be recorded {}: until it is, pgmaint may not recognise the old \
                     primary as fenced",
                    report.record_errors.join("; ")
                );
            }
            w.stats.failover("promoted", secs());
            *w.memory.lock().expect("memory") = Memory::default();
            Attempt::Switch(report.new_primary)
        }
        Err(e) => match e.downcast_ref::<NotPromoting>() {
            Some(NotPromoting::LockBusy(_)) => {
                tracing::info!("failover: {}; looking again", e.one_line());
                Attempt::Busy
            }
            Some(NotPromoting::OtherPrimary(name, _)) => {
                tracing::warn!(
                    new_primary = %name,
                    "failover: followed: replica {name} is the primary now (promoted by another pgmaint or by hand); \
                     the daemon goes on with it"
                );
                w.stats.failover("followed", secs());
                *w.memory.lock().expect("memory") = Memory::default();
                Attempt::Switch(name.clone())
            }
            Some(NotPromoting::Unfinished(name, why)) => {
                // pg_promote was sent: the promotion may still finish. The next attempts
                // wait for this replica (never another candidate, never a second
                // pg_promote), and do the rest of the failover once it is the primary.
                let first = w
                    .memory
                    .lock()
                    .expect("memory")
                    .promoting
                    .replace(name.clone())
                    .is_none();
                if first {
                    tracing::error!(replica = %name, "failover: the promotion did not finish: {why}");
                    w.stats.failover("failed", None);
                } else {
                    tracing::warn!(replica = %name, "failover: waiting for the promotion to finish: {why}");
                }
                Attempt::Busy
            }
            Some(NotPromoting::FenceFailed(why)) => {
                tracing::error!("failover aborted: {why}");
                w.stats.failover("fence_failed", None);
                Attempt::NoFailover
            }
            None => {
                let msg = e.one_line();
                let result = if msg.contains("nothing changed") {
                    "refused"
                } else {
                    "failed"
                };
                tracing::warn!(result, "no failover: {msg}");
                w.stats.failover(result, None);
                Attempt::NoFailover
            }
        },
    }
}

/// `cfg` with replica `name` as the primary, and without it among the replicas.
pub(crate) fn switched(cfg: &Config, name: &str) -> Option<Config> {
    let mut new = cfg.clone();
    let i = new.replicas.iter().position(|r| r.name == name)?;
    let promoted = new.replicas.remove(i);
    new.primary = Dsn {
        config: promoted.dsn.config.clone(),
        field: format!("replicas[{i}].dsn (replica {name}, promoted)"),
    };
    tracing::debug!(primary = %primary::address(&new.primary), "switched");
    Some(new)
}
