//! Automatic failover (`failover.automatic = true`): the daemon's watch on the primary.
//!
//! Every `failover.check_interval` the watch surveys the primary in use and every
//! configured replica ([`primary::survey_within`]), and decides, in this order:
//! - a promotion recorded on this host and not finished: finish it (the daemon was
//!   killed half-way through one);
//! - a configured replica out of recovery on a newer timeline that descends from the
//!   primary's: it is the primary now (promoted by another pgmaint, or by hand). The
//!   work against the old primary stops at once, the promotion is completed, and the
//!   daemon goes on with the new primary;
//! - the primary in use confirmed (up, and no server supersedes it): the work goes on,
//!   or starts again if a failover that did not happen stopped it — but not while
//!   another pgmaint holds a failover lock on a replica;
//! - the primary does not answer, is a standby, or is fenced: the failover check
//!   ([`super::promote::failover`]): promote a replica (never `--force`) or follow.
//!
//! A failed look only starts the check. The primary counts as down only when every
//! connection attempt to it fails for `failover.primary_down_after` (a server that
//! answers at all is alive), no replica's WAL receiver hears from a primary, and
//! `failover.witness_command` does not vouch for it. Exactly one promoter: the failover
//! lock on every replica. A daemon refused the lock stops its work against the primary
//! (it is not confirmed while someone is failing over) and looks again.
//!
//! The work (`work`: the scheduler, the cycles, the upload worker, the leader lease)
//! stops with [`AbortReason::Failover`] once the primary is found down or superseded:
//! nothing is written on the old primary after that (cycles keep their outcome in
//! their run directory; the completed promotion drops their runs on the new primary).
//! A shutdown ends the watch wherever it is: every step of a promotion is recorded
//! first, so the next start completes it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::abort::{Abort, AbortReason};
use crate::config::{Config, Dsn};
use crate::error_text::OneLine;
use crate::failover::journal;
use crate::failover::primary::{self, Found};
use crate::failover::promote::{self, NotPromoting};
use crate::failover::report::How;
use crate::failover::servers::{self as p, HostSeen};
use crate::metrics::DaemonStats;

/// What the failover watch remembers across terms.
#[derive(Debug, Default)]
pub(crate) struct Memory {
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
    pub work: Abort,
    /// The daemon started without reaching the primary: once it answers, start again
    /// the normal way (schema check, recovery of dead runs).
    pub degraded: bool,
    /// Kept across terms.
    pub memory: Arc<std::sync::Mutex<Memory>>,
    /// This daemon's id (`host:pid:random`): the journal's and the lock's `by`.
    pub holder: String,
}

/// What one look saw.
enum Look {
    /// The primary in use is up and no server supersedes it.
    Confirmed,
    /// It answers, refusing the session (starting up, too many clients…): alive, not
    /// confirmed.
    Alive(String),
    /// A configured replica is the primary now.
    Promoted(String),
    /// The primary in use is not usable: why (down, a standby, fenced).
    NotPrimary(String),
    /// Stop the daemon: why (two servers take writes, the journal cannot be read).
    Broken(String),
}

/// Watch the primary in use every `failover.check_interval` until the term ends.
pub(crate) async fn watch(w: Watch) -> Option<WatchEnd> {
    tokio::select! {
        _ = w.term.cancelled() => None,
        end = watch_looks(&w) => end,
    }
}

async fn watch_looks(w: &Watch) -> Option<WatchEnd> {
    let every = w.cfg.failover.check_interval;
    let mut down_since: Option<Instant> = None;
    let mut said_locked = false;
    for n in 0u32.. {
        if n > 0 {
            tokio::time::sleep(every).await;
        }
        // A promotion this host recorded and did not finish comes first (unless a
        // reload turned failover.automatic off: then `pgmaint promote` finishes it).
        if w.latest.borrow().failover.automatic
            && matches!(journal::unfinished(&w.cfg.results_dir), Ok(Some(_)))
        {
            stop_work(w, "a promotion recorded on this host is unfinished");
            match attempt(w, Instant::now()).await {
                Attempt::Switch(name) => return Some(WatchEnd::Switch(name)),
                Attempt::Busy | Attempt::NoFailover => continue,
            }
        }
        let look = look(w).await;
        w.stats.primary_seen(matches!(look, Look::Confirmed));
        match look {
            Look::Broken(why) => return Some(WatchEnd::Stop(why)),
            Look::Confirmed => {
                if down_since.take().is_some() {
                    tracing::info!("the primary answers again");
                }
                if w.degraded {
                    return Some(WatchEnd::Stop(
                        "the primary answers now: restarting the daemon to start against it".into(),
                    ));
                }
                *w.memory.lock().expect("memory") = Memory::default();
                if w.work.token().is_cancelled() {
                    if let Some(holder) = failover_under_way(&w.cfg).await {
                        if !said_locked {
                            tracing::warn!(
                                "the primary answers, but {holder}: the work against it waits until that failover ends"
                            );
                            said_locked = true;
                        }
                        continue;
                    }
                    tracing::info!("the primary is confirmed: the work against it starts again");
                    return Some(WatchEnd::Again);
                }
            }
            Look::Alive(what) => {
                // Not down, not confirmed either: the work that runs goes on, the work
                // that stopped waits.
                if down_since.take().is_some() {
                    tracing::info!("the primary answers again ({what})");
                }
            }
            Look::Promoted(name) => {
                stop_work(w, &format!("replica {name} is the primary now"));
                match attempt(w, down_since.unwrap_or_else(Instant::now)).await {
                    Attempt::Switch(name) => return Some(WatchEnd::Switch(name)),
                    Attempt::Busy | Attempt::NoFailover => continue,
                }
            }
            Look::NotPrimary(what) => {
                if down_since.is_none() {
                    tracing::warn!("the primary in use: {what}; checking whether it is down");
                    down_since = Some(Instant::now());
                }
                if !w.latest.borrow().failover.automatic {
                    tracing::warn!(
                        "the primary does not answer; failover.automatic is off (reloaded): no failover"
                    );
                    continue;
                }
                let next = w.memory.lock().expect("memory").next_attempt;
                if next.is_some_and(|t| Instant::now() < t) {
                    continue;
                }
                match attempt(w, down_since.expect("set above")).await {
                    Attempt::Switch(name) => return Some(WatchEnd::Switch(name)),
                    Attempt::Busy => {}
                    Attempt::NoFailover => {
                        // Each refusal waits longer before the next try (up to 64 looks),
                        // across terms: a fence is not run every primary_down_after.
                        let mut m = w.memory.lock().expect("memory");
                        m.refused += 1;
                        m.next_attempt = Some(Instant::now() + every * 2u32.pow(m.refused.min(6)));
                        drop(m);
                        down_since = None;
                    }
                }
            }
        }
    }
    None
}

/// Stop the work against the primary in use (once; the first reason stays).
fn stop_work(w: &Watch, why: &str) {
    if !w.work.token().is_cancelled() {
        tracing::warn!("the work against the primary stops: {why}");
        w.work.trigger(AbortReason::Failover(why.to_string()));
    }
}

/// One look: the primary in use and every configured replica.
async fn look(w: &Watch) -> Look {
    let cfg = &w.cfg;
    let patience = cfg
        .failover
        .check_interval
        .clamp(Duration::from_secs(1), Duration::from_secs(5));
    let survey = match primary::survey_within(cfg, "pgmaint-watch", patience).await {
        Ok((s, _)) => s,
        Err(e) => return Look::Broken(e.0),
    };
    if let Some(p) = &survey.promoted {
        return Look::Promoted(p.name.clone());
    }
    if survey.chosen.is_some() {
        return Look::Confirmed;
    }
    let in_use = primary::address(&cfg.primary);
    let mine = survey
        .servers
        .iter()
        .find(|(d, _)| primary::address(d) == in_use)
        .or(survey.servers.first());
    match mine.map(|(_, f)| f) {
        Some(Found::Primary(_)) => Look::Broken(format!(
            "two servers take writes (a split brain?): {}; pgmaint chooses neither",
            survey.describe()
        )),
        Some(Found::Fenced(_, why)) => Look::NotPrimary(format!("it is a former primary ({why})")),
        Some(Found::Standby) => Look::NotPrimary("it is in recovery (a standby now)".into()),
        Some(Found::Unreachable(_)) | None => {
            // The survey counts a refused session as unreachable; the down check counts
            // any answer as alive. Ask once more the down check's way.
            let promotions = journal::read_local(&cfg.results_dir).unwrap_or_default();
            match p::probe_host(&cfg.primary, &promotions, patience).await {
                HostSeen::Answers(what) | HostSeen::Primary(what) => Look::Alive(what),
                HostSeen::Down(why) => Look::NotPrimary(format!("no connection ({why})")),
                HostSeen::Standby => Look::NotPrimary("it is in recovery (a standby now)".into()),
                HostSeen::Fenced(why) => Look::NotPrimary(format!("it is {why}")),
            }
        }
    }
}

/// Another pgmaint's failover under way: who holds a failover lock on a replica.
async fn failover_under_way(cfg: &Config) -> Option<String> {
    for r in &cfg.replicas {
        let Ok(c) = p::connect_within(&r.dsn, "pgmaint-watch", Duration::from_secs(2)).await else {
            continue;
        };
        if let Some(holder) = p::failover_lock_holder(&c).await {
            return Some(format!(
                "the failover lock on replica {} is held by {holder}",
                r.name
            ));
        }
    }
    None
}

enum Attempt {
    Switch(String),
    /// Another pgmaint holds a failover lock, or a promotion is unfinished: look again.
    Busy,
    NoFailover,
}

/// One failover attempt: finish an unfinished promotion, complete one found, or
/// promote a replica (only after the down check).
async fn attempt(w: &Watch, since: Instant) -> Attempt {
    // The latest config (a reload may have changed the replicas); its primary is the
    // term's (a reload keeps the server in use).
    let latest = w.latest.borrow().clone();
    let cfg = &*latest;
    tracing::warn!(
        "failover: is the primary down? checking for failover.primary_down_after ({}s)",
        cfg.failover.primary_down_after.as_secs_f64()
    );
    let on_down = CancellationToken::new();
    let stop_work_on_down = async {
        on_down.cancelled().await;
        stop_work(w, "the primary is down: a failover is under way");
        std::future::pending::<()>().await
    };
    let result = tokio::select! {
        r = promote::failover(cfg, None, false, &w.term, Some(&on_down), &w.holder) => r,
        _ = stop_work_on_down => unreachable!("pending"),
    };
    let secs = || Some(since.elapsed().as_secs_f64());
    match result {
        Ok(report) => {
            let name = report.new_primary.clone();
            // Whatever path found it, the old primary gets nothing more.
            stop_work(w, &format!("replica {name} is the primary now"));
            let (who, result) = match report.how {
                How::Promoted => ("this daemon".to_string(), "promoted"),
                How::Resumed => (
                    format!(
                        "this daemon, resumed after a restart: started by {}",
                        report.by.as_deref().unwrap_or("an earlier pgmaint")
                    ),
                    "promoted",
                ),
                How::Completed => (
                    "by another pgmaint or by hand; this daemon completed it".to_string(),
                    "followed",
                ),
            };
            if report.how == How::Completed {
                tracing::warn!(
                    new_primary = %name,
                    timeline = report.timeline,
                    "failover: followed: replica {name} is the primary now ({who}); the daemon goes on with it"
                );
            } else {
                tracing::warn!(
                    new_primary = %name,
                    timeline = report.timeline,
                    seconds = report.seconds.total,
                    "failover: replica {name} promoted ({who}); the daemon goes on with it as the primary"
                );
            }
            for f in &report.replicas {
                tracing::info!(replica = %f.name, state = %f.state, "failover: {}", f.detail);
            }
            if !report.record_errors.is_empty() {
                tracing::error!(
                    "failover: the promotion could not be recorded {}: the old primary is still fenced by its older \
                     timeline",
                    report.record_errors.join("; ")
                );
            }
            w.stats.failover(result, secs());
            *w.memory.lock().expect("memory") = Memory::default();
            Attempt::Switch(name)
        }
        Err(e) => match e.downcast_ref::<NotPromoting>() {
            Some(NotPromoting::LockBusy { .. }) => {
                // Someone is failing over: the primary in use is not confirmed.
                stop_work(w, &e.one_line());
                tracing::info!("failover: {}; looking again", e.one_line());
                Attempt::Busy
            }
            Some(NotPromoting::Unfinished(..)) => {
                tracing::error!("failover: {}", e.one_line());
                w.stats.failover("failed", None);
                Attempt::Busy
            }
            Some(NotPromoting::FenceFailed(why)) => {
                tracing::error!("failover aborted: {why}");
                w.stats.failover("fence_failed", None);
                Attempt::NoFailover
            }
            Some(NotPromoting::OtherPrimary(..)) | None => {
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
pub fn switched(cfg: &Config, name: &str) -> Option<Config> {
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
