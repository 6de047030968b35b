//! Failover: which replica to promote when the primary is gone.
//!
//! Like repmgr and Patroni, the replica that received the most WAL loses the least; a
//! replica never to be promoted (`failover_priority = 0`) is not a candidate. Where
//! several received as much, an unpaused one is preferred: a paused replica must replay
//! everything it received during its pause before it accepts a write. Then the higher
//! priority, then the name, so that every pgmaint that sees the same state picks the
//! same replica. [`choose_candidate`] is that rule, as a pure function.

use crate::units::human_bytes;

/// One replica as failover sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyView {
    /// `replicas[].name`.
    pub name: String,
    /// `replicas[].failover_priority`.
    pub failover_priority: u32,
    /// Why it cannot be asked at all (unreachable), if so.
    pub unreachable: Option<String>,
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// `pg_last_wal_receive_lsn()`, as a number.
    pub receive_lsn: u64,
    /// `pg_last_wal_replay_lsn()`, as a number.
    pub replay_lsn: u64,
    /// Replay is paused (or being paused).
    pub paused: bool,
}

impl StandbyView {
    /// Received but not yet replayed: what a promotion must replay first.
    pub fn backlog(&self) -> u64 {
        self.receive_lsn.saturating_sub(self.replay_lsn)
    }
}

/// The replica to promote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Its name.
    pub name: String,
    /// What the operator should know (WAL that will be lost).
    pub warnings: Vec<String>,
}

/// An `pg_lsn` text (`16/B374D848`) as a number.
pub fn lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Choose the replica to promote: `by_hand` (`--replica`), or the best candidate.
pub fn choose_candidate(views: &[StandbyView], by_hand: Option<&str>) -> Result<Candidate, String> {
    let standbys: Vec<&StandbyView> = views
        .iter()
        .filter(|v| v.unreachable.is_none() && v.in_recovery)
        .collect();
    let chosen = match by_hand {
        Some(name) => {
            let v = views
                .iter()
                .find(|v| v.name == name)
                .ok_or_else(|| format!("--replica: no replica named {name:?} in the config"))?;
            if let Some(why) = &v.unreachable {
                return Err(format!("replica {name} cannot be promoted: it is unreachable ({why})"));
            }
            if !v.in_recovery {
                return Err(format!("replica {name} cannot be promoted: it is not in recovery (already a primary?)"));
            }
            if v.failover_priority == 0 {
                return Err(format!("replica {name} has failover_priority = 0: it is never promoted"));
            }
            v
        }
        None => standbys
            .iter()
            .copied()
            .filter(|v| v.failover_priority > 0)
            .max_by(|a, b| {
                (a.receive_lsn, !a.paused, a.failover_priority, std::cmp::Reverse(&a.name))
                    .cmp(&(b.receive_lsn, !b.paused, b.failover_priority, std::cmp::Reverse(&b.name)))
            })
            .ok_or_else(|| {
                "no replica can be promoted: none is reachable, in recovery and with failover_priority > 0".to_string()
            })?,
    };
    let warnings = standbys
        .iter()
        .filter(|v| v.receive_lsn > chosen.receive_lsn)
        .map(|v| {
            format!(
                "replica {} received {} more WAL than {}: promoting {} loses it",
                v.name,
                human_bytes(v.receive_lsn - chosen.receive_lsn),
                chosen.name,
                chosen.name
            )
        })
        .collect();
    Ok(Candidate {
        name: chosen.name.clone(),
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(name: &str, priority: u32, receive: u64, paused: bool) -> StandbyView {
        StandbyView {
            name: name.into(),
            failover_priority: priority,
            unreachable: None,
            in_recovery: true,
            receive_lsn: receive,
            replay_lsn: receive,
            paused,
        }
    }

    #[test]
    fn lsn_text_is_read_as_postgresql_orders_it() {
        assert_eq!(lsn("0/3000060"), Some(0x300_0060));
        assert_eq!(lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert!(lsn("16/B374D848").unwrap() > lsn("15/FFFFFFFF").unwrap());
        assert_eq!(lsn("nope"), None);
    }

    #[test]
    fn the_candidate_is_the_one_that_loses_least_then_unpaused_then_priority_then_name() {
        let pick = |views: &[StandbyView]| choose_candidate(views, None).unwrap().name;
        // Most WAL received wins, paused or not.
        assert_eq!(pick(&[v("r1", 1, 100, false), v("r2", 1, 200, true)]), "r2");
        // Equal WAL: the unpaused one (no backlog to replay first).
        assert_eq!(pick(&[v("r1", 1, 200, true), v("r2", 1, 200, false)]), "r2");
        // Then the higher priority, then the name.
        assert_eq!(
            pick(&[v("r1", 1, 200, false), v("r2", 5, 200, false)]),
            "r2"
        );
        assert_eq!(
            pick(&[v("r2", 1, 200, false), v("r1", 1, 200, false)]),
            "r1"
        );
        // Priority 0 never; unreachable or promoted ones are not asked.
        let mut gone = v("r3", 9, 900, false);
        gone.unreachable = Some("connection refused".into());
        let mut promoted = v("r4", 9, 900, false);
        promoted.in_recovery = false;
        assert_eq!(
            pick(&[
                v("r1", 1, 100, false),
                v("r2", 0, 500, false),
                gone,
                promoted
            ]),
            "r1"
        );
        let none = choose_candidate(&[v("r2", 0, 500, false)], None).unwrap_err();
        assert!(none.starts_with("no replica can be promoted"), "{none}");
    }

    #[test]
    fn a_replica_chosen_by_hand_is_checked_and_lost_wal_is_named() {
        let views = [
            v("r1", 1, 100, false),
            v("r2", 1, 100 + 2048, false),
            v("r0", 0, 50, false),
        ];
        let c = choose_candidate(&views, Some("r1")).unwrap();
        assert_eq!(c.name, "r1");
        assert_eq!(
            c.warnings,
            vec!["replica r2 received 2.0 kB more WAL than r1: promoting r1 loses it".to_string()]
        );
        let e = choose_candidate(&views, Some("r9")).unwrap_err();
        assert_eq!(e, "--replica: no replica named \"r9\" in the config");
        let e = choose_candidate(&views, Some("r0")).unwrap_err();
        assert_eq!(
            e,
            "replica r0 has failover_priority = 0: it is never promoted"
        );
    }
}
