//! Which replica a cycle pauses, chosen with failover in mind.
//!
//! A replica pgmaint keeps paused is the worst failover candidate there is: promoting it
//! first replays everything it received during the pause (xlogrecovery.c ends the pause
//! on a promotion request, then replays the backlog before accepting writes). So the
//! pool pauses, in order of preference, replicas that are never promoted
//! (`failover_priority = 0`), then the one with the least backlog, and never one whose
//! pause would leave fewer than `limits.keep_unpaused` failover candidates unpaused.
//! [`choose`] is the whole policy, as a pure function.

use std::fmt;

use crate::config::{Config, ReplicaConfig};
use crate::replica::ReplicaControl;

/// One replica as the pool sees it right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaView {
    /// `replicas[].name`.
    pub name: String,
    /// `replicas[].failover_priority`: 0 = never promoted.
    pub failover_priority: u32,
    /// Why it cannot be used at all (unreachable, fenced, diverged), if so.
    pub unusable: Option<String>,
    /// Unusable because it does not answer (see [`crate::db::Reach::NoAnswer`]).
    pub no_answer: bool,
    /// The run holding its lease, if any.
    pub leased_by: Option<i64>,
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// Its WAL receiver streams.
    pub streaming: bool,
    /// Replay is `not paused`.
    pub unpaused: bool,
    /// receive − replay, bytes.
    pub backlog: u64,
}

/// Why a replica was not chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skipped {
    /// Unreachable, fenced or diverged: the reason.
    Unusable(String),
    /// Another run holds its lease.
    Leased(i64),
    /// Not a standby (promoted?).
    NotInRecovery,
    /// Its WAL receiver does not stream.
    NotStreaming,
    /// Replay is paused or being paused by someone else.
    Paused,
    /// Backlog over `limits.max_replay_backlog` (bytes, limit).
    Backlog(u64, u64),
    /// Pausing it would leave fewer than `keep_unpaused` failover candidates unpaused
    /// (how many would be left).
    KeepUnpaused(usize, usize),
    /// Another replica was preferred (failover priority, then backlog).
    NotPreferred,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skipped::Unusable(why) => f.write_str(why),
            Skipped::Leased(run) => write!(f, "in use by run {run}"),
            Skipped::NotInRecovery => f.write_str("not in recovery (promoted?)"),
            Skipped::NotStreaming => f.write_str("not streaming"),
            Skipped::Paused => f.write_str("replay already paused by someone else"),
            Skipped::Backlog(b, l) => write!(
                f,
                "replay backlog {} over limits.max_replay_backlog ({})",
                crate::units::human_bytes(*b),
                crate::units::human_bytes(*l)
            ),
            Skipped::KeepUnpaused(left, keep) => write!(
                f,
                "pausing it would leave {left} failover candidate(s) unpaused, under limits.keep_unpaused = {keep}"
            ),
            Skipped::NotPreferred => f.write_str("another replica is preferred"),
        }
    }
}

/// The pool's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The replica to pause, if any may be.
    pub chosen: Option<String>,
    /// Every other replica, and why not.
    pub skipped: Vec<(String, Skipped)>,
}

/// The default of `limits.keep_unpaused`: keep one failover candidate unpaused when
/// there are two or more; with a single candidate, pausing it is the point.
pub fn default_keep_unpaused(priorities: &[u32]) -> usize {
    usize::from(priorities.iter().filter(|p| **p > 0).count() >= 2)
}

/// Choose the replica to pause among `replicas`.
pub fn choose(replicas: &[ReplicaView], max_backlog: u64, keep_unpaused: usize) -> Choice {
    // Failover candidates whose replay runs now: each one paused takes one away.
    let unpaused_candidates = replicas
        .iter()
        .filter(|r| {
            r.failover_priority > 0
                && r.unusable.is_none()
                && r.in_recovery
                && r.unpaused
                // A lease means a run is about to pause it, or has.
                && r.leased_by.is_none()
        })
        .count();
    let mut skipped = Vec::new();
    let mut usable: Vec<&ReplicaView> = Vec::new();
    for r in replicas {
        let why = if let Some(u) = &r.unusable {
            Some(Skipped::Unusable(u.clone()))
        } else if let Some(run) = r.leased_by {
            Some(Skipped::Leased(run))
        } else if !r.in_recovery {
            Some(Skipped::NotInRecovery)
        } else if !r.unpaused {
            Some(Skipped::Paused)
        } else if !r.streaming {
            Some(Skipped::NotStreaming)
        } else if r.backlog > max_backlog {
            Some(Skipped::Backlog(r.backlog, max_backlog))
        } else if r.failover_priority > 0 && unpaused_candidates.saturating_sub(1) < keep_unpaused {
            Some(Skipped::KeepUnpaused(
                unpaused_candidates.saturating_sub(1),
                keep_unpaused,
            ))
        } else {
            None
        };
        match why {
            Some(why) => skipped.push((r.name.clone(), why)),
            None => usable.push(r),
        }
    }
    usable.sort_by(|a, b| {
        (a.failover_priority > 0, a.backlog, &a.name).cmp(&(
            b.failover_priority > 0,
            b.backlog,
            &b.name,
        ))
    });
    let chosen = usable.first().map(|r| r.name.clone());
    skipped.extend(
        usable
            .iter()
            .skip(1)
            .map(|r| (r.name.clone(), Skipped::NotPreferred)),
    );
    skipped.sort_by(|a, b| a.0.cmp(&b.0));
    Choice { chosen, skipped }
}

/// Look at every replica of `among` now: reachable, of this primary's cluster and
/// timeline, leased, in recovery, streaming, paused, backlog.
pub async fn look(
    cfg: &Config,
    primary: &tokio_postgres::Client,
    among: &[&ReplicaConfig],
) -> anyhow::Result<Vec<ReplicaView>> {
    let mut views = Vec::new();
    for r in among {
        let leased_by: Option<i64> = primary
            .query_opt(
                // An expired lease may still hold a pause, until a command recovers it.
                "SELECT run_id FROM pgmaint.replica_leases WHERE replica = $1",
                &[&r.name],
            )
            .await?
            .map(|row| row.get(0));
        let mut view = ReplicaView {
            name: r.name.clone(),
            failover_priority: r.failover_priority,
            unusable: None,
            no_answer: false,
            leased_by,
            in_recovery: false,
            streaming: false,
            unpaused: false,
            backlog: 0,
        };
        match ReplicaControl::connect(r).await {
            Err(e) => {
                view.no_answer = e.1 == crate::db::Reach::NoAnswer;
                view.unusable = Some(format!("unreachable: {}", e.0));
            }
            Ok(ctl) => {
                if let Err(e) = ctl.check_belongs_to(primary, &cfg.primary).await {
                    view.unusable = Some(crate::error_text::OneLine::one_line(&e));
                }
                // Without pg_read_all_stats its WAL receiver's status is hidden: say
                // which grant is missing, not "not streaming".
                match crate::privileges::on_replica(ctl.client()).await {
                    Ok(m) => {
                        if let Some(why) = m.describe() {
                            view.unusable.get_or_insert(why);
                        }
                    }
                    Err(e) => {
                        view.unusable
                            .get_or_insert(crate::error_text::OneLine::one_line(&e));
                    }
                }
                match ctl.state().await {
                    Ok(st) => {
                        view.in_recovery = st.in_recovery;
                        view.streaming = st.walreceiver.as_deref() == Some("streaming");
                        view.unpaused = st.pause_state == crate::replica::PauseState::NotPaused;
                        view.backlog = st.backlog_bytes.max(0) as u64;
                    }
                    Err(e) => view.unusable = Some(crate::error_text::OneLine::one_line(&e)),
                }
            }
        }
        views.push(view);
    }
    Ok(views)
}

/// `limits.keep_unpaused` for a replica chosen by hand (`--replica`, a pinned task) or
/// by the pool: pausing `replica`, a failover candidate, must leave at least `keep`
/// other candidates reachable, of this primary, in recovery, unpaused and unleased, as
/// a live look shows them now.
pub async fn check_keep_unpaused(
    cfg: &Config,
    primary: &tokio_postgres::Client,
    replica: &ReplicaConfig,
) -> anyhow::Result<()> {
    let keep = cfg.keep_unpaused();
    if keep == 0 || replica.failover_priority == 0 {
        return Ok(());
    }
    let others: Vec<&ReplicaConfig> = cfg
        .replicas
        .iter()
        .filter(|r| r.name != replica.name && r.failover_priority > 0)
        .collect();
    let views = look(cfg, primary, &others).await?;
    let (ready, not): (Vec<&ReplicaView>, Vec<&ReplicaView>) = views.iter().partition(|v| {
        v.unusable.is_none() && v.in_recovery && v.unpaused && v.leased_by.is_none()
    });
    if ready.len() >= keep {
        return Ok(());
    }
    let why: Vec<String> = not
        .iter()
        .map(|v| {
            let reason = if let Some(u) = &v.unusable {
                u.clone()
            } else if let Some(run) = v.leased_by {
                format!("in use by run {run}")
            } else if !v.in_recovery {
                "not in recovery".into()
            } else {
                "paused".into()
            };
            format!("{}: {reason}", v.name)
        })
        .collect();
    anyhow::bail!(
        "replica {}: pausing it would leave {} other failover candidate(s) ready, under limits.keep_unpaused = {keep} \
         ({})",
        replica.name,
        ready.len(),
        why.join("; ")
    )
}

/// Choose the replica for a cycle among `among` (the config's replicas, or those a
/// task is pinned to), saying which and why the others were skipped.
pub async fn choose_replica<'c>(
    cfg: &'c Config,
    primary: &tokio_postgres::Client,
    among: &[&'c ReplicaConfig],
) -> anyhow::Result<&'c ReplicaConfig> {
    let views = look(cfg, primary, among).await?;
    let choice = choose(&views, cfg.limits.max_replay_backlog, cfg.keep_unpaused());
    for (name, why) in &choice.skipped {
        tracing::info!(replica = %name, "replica skipped: {why}");
    }
    match &choice.chosen {
        Some(name) => {
            tracing::info!(replica = %name, "replica chosen from the pool");
            Ok(among
                .iter()
                .find(|r| &r.name == name)
                .copied()
                .expect("chosen among them"))
        }
        None => {
            let text = format!(
                "no replica can be paused now: {}",
                choice
                    .skipped
                    .iter()
                    .map(|(n, why)| format!("{n}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            // None answers: a server the run needs cannot be reached (exit code 3).
            let class = if !views.is_empty() && views.iter().all(|v| v.no_answer) {
                crate::errors::ErrorClass::Unreachable
            } else {
                crate::errors::ErrorClass::Runtime
            };
            Err(class.error(text))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, priority: u32) -> ReplicaView {
        ReplicaView {
            name: name.into(),
            failover_priority: priority,
            unusable: None,
            no_answer: false,
            leased_by: None,
            in_recovery: true,
            streaming: true,
            unpaused: true,
            backlog: 0,
        }
    }

    fn chosen(replicas: &[ReplicaView], keep: usize) -> Option<String> {
        choose(replicas, 1 << 30, keep).chosen
    }

    #[test]
    fn the_pool_pauses_with_failover_in_mind() {
        let two = [r("r1", 1), r("r2", 1)];
        let keep = default_keep_unpaused(&[1, 1]);
        assert_eq!(keep, 1);
        // Either may go, the other stays a candidate: by name at equal backlog.
        assert_eq!(chosen(&two, keep), Some("r1".into()));
        // r1 leased (paused by a run): pausing r2 would leave no candidate unpaused.
        let mut busy = two.clone();
        busy[0].leased_by = Some(7);
        busy[0].unpaused = false;
        let c = choose(&busy, 1 << 30, keep);
        assert_eq!(c.chosen, None);
        assert_eq!(
            c.skipped,
            vec![
                ("r1".into(), Skipped::Leased(7)),
                ("r2".into(), Skipped::KeepUnpaused(0, 1))
            ]
        );
        // A never-promoted replica is preferred, whatever its backlog, and pausing it
        // costs no candidate.
        let mut scan = [r("r1", 0), r("r2", 1)];
        scan[0].backlog = 5000;
        assert_eq!(chosen(&scan, 1), Some("r1".into()));
        // Least backlog among candidates.
        let mut lag = [r("a", 1), r("b", 1), r("c", 1)];
        lag[0].backlog = 900;
        lag[1].backlog = 100;
        lag[2].backlog = 500;
        let c = choose(&lag, 1 << 30, 1);
        assert_eq!(c.chosen, Some("b".into()));
        assert_eq!(c.skipped[0], ("a".into(), Skipped::NotPreferred));
        // A single replica: pausing it is the point.
        assert_eq!(default_keep_unpaused(&[1]), 0);
        assert_eq!(chosen(&[r("r1", 1)], 0), Some("r1".into()));
        assert_eq!(default_keep_unpaused(&[0, 1]), 0);
    }

    #[test]
    fn the_pool_skips_what_cannot_be_paused_and_says_why() {
        let mut v = [
            r("a", 1),
            r("b", 1),
            r("c", 1),
            r("d", 1),
            r("e", 1),
            r("f", 1),
        ];
        v[0].in_recovery = false;
        v[1].streaming = false;
        v[2].backlog = 2000;
        v[3].unusable = Some("unreachable: connection refused".into());
        v[4].unpaused = false;
        let c = choose(&v, 1000, 0);
        assert_eq!(c.chosen, Some("f".into()));
        assert_eq!(
            c.skipped,
            vec![
                ("a".into(), Skipped::NotInRecovery),
                ("b".into(), Skipped::NotStreaming),
                ("c".into(), Skipped::Backlog(2000, 1000)),
                (
                    "d".into(),
                    Skipped::Unusable("unreachable: connection refused".into())
                ),
                ("e".into(), Skipped::Paused),
            ]
        );
    }
}
