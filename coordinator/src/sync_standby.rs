//! Is this replica a synchronous standby of the primary? Pausing one under
//! `synchronous_commit = remote_apply` blocks every commit that waits for it.
//!
//! Which of the primary's `pg_stat_replication` rows is this replica: by its
//! replication slot when it uses one (`pg_stat_wal_receiver.slot_name` is the slot
//! whose `active_pid` is the walsender's pid: exact), else by name. The name cannot be
//! parsed back out of `pg_stat_wal_receiver.conninfo`, which shows values unquoted
//! (`application_name=my standby fallback_…`), so every name of the primary's that
//! stands there is taken as possibly this replica's, and the most cautious reading
//! wins. Whether it is synchronous is the primary's own `sync_state`: it reads
//! `synchronous_standby_names` in every form (a list, `FIRST n (…)`, `ANY n (…)`, `*`).

use anyhow::{Context, Result};
use tokio_postgres::Client;

/// How the replica's walreceiver presents itself to the primary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalreceiverIdentity {
    /// `pg_stat_wal_receiver.conninfo` (values unquoted).
    pub conninfo: String,
    /// `pg_stat_wal_receiver.slot_name`.
    pub slot: Option<String>,
    /// `cluster_name`: the walreceiver's name when conninfo sets none.
    pub cluster_name: String,
}

/// One row of the primary's `pg_stat_replication`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyRow {
    /// `application_name`.
    pub name: String,
    /// `sync_state`; NULL without the privilege to see it (`pg_read_all_stats`).
    pub sync_state: Option<String>,
    /// The replication slot its walsender serves, if any.
    pub slot: Option<String>,
}

/// What the primary makes of this replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Asynchronous: pausing it blocks no commit.
    Async,
    /// Synchronous (`sync`, `quorum`, or `potential`: next in line): its state, and how
    /// it was recognised.
    Sync(String, String),
    /// Not recognised among the primary's standbys, some of which are synchronous.
    Unknown(Vec<String>),
    /// The primary hides `sync_state` from pgmaint's role.
    Hidden,
}

/// Does `name` stand in `conninfo` as its `application_name` (followed by a space or
/// the end: names may hold spaces)?
fn named_in(conninfo: &str, name: &str) -> bool {
    let needle = format!("application_name={name}");
    conninfo.match_indices(&needle).any(|(i, _)| {
        let after = &conninfo[i + needle.len()..];
        (i == 0 || conninfo.as_bytes()[i - 1] == b' ')
            && (after.is_empty() || after.starts_with(' '))
    })
}

/// The rows that may be this replica's: the slot's, else every name that fits.
fn candidates<'a>(
    me: &WalreceiverIdentity,
    rows: &'a [StandbyRow],
) -> (Vec<&'a StandbyRow>, String) {
    if let Some(slot) = &me.slot {
        let by_slot: Vec<&StandbyRow> = rows
            .iter()
            .filter(|r| r.slot.as_ref() == Some(slot))
            .collect();
        if !by_slot.is_empty() {
            let names: Vec<&str> = by_slot.iter().map(|r| r.name.as_str()).collect();
            return (
                by_slot,
                format!(
                    "application_name {:?}, by its replication slot {slot:?}",
                    names.join(" or ")
                ),
            );
        }
    }
    let has_name = me
        .conninfo
        .match_indices("application_name=")
        .any(|(i, _)| i == 0 || me.conninfo.as_bytes()[i - 1] == b' ');
    let default_name = if me.cluster_name.is_empty() {
        "walreceiver"
    } else {
        me.cluster_name.as_str()
    };
    let fits: Vec<&StandbyRow> = rows
        .iter()
        .filter(|r| {
            if has_name {
                named_in(&me.conninfo, &r.name)
            } else {
                r.name == default_name
            }
        })
        .collect();
    let names: Vec<&str> = fits.iter().map(|r| r.name.as_str()).collect();
    (fits, format!("application_name {:?}", names.join(" or ")))
}

/// What the primary (its `pg_stat_replication` rows) makes of this replica.
pub fn standing(me: &WalreceiverIdentity, rows: &[StandbyRow]) -> Standing {
    let (mine, how) = candidates(me, rows);
    let considered: &[&StandbyRow] = &mine;
    if considered.is_empty() {
        if rows.iter().any(|r| r.sync_state.is_none()) {
            return Standing::Hidden;
        }
        if rows
            .iter()
            .all(|r| r.sync_state.as_deref() == Some("async"))
        {
            return Standing::Async;
        }
        return Standing::Unknown(rows.iter().map(|r| r.name.clone()).collect());
    }
    if considered.iter().any(|r| r.sync_state.is_none()) {
        return Standing::Hidden;
    }
    match considered
        .iter()
        .filter_map(|r| r.sync_state.as_deref())
        .find(|s| *s != "async")
    {
        Some(state) => Standing::Sync(state.to_string(), how),
        None => Standing::Async,
    }
}

/// Read the replica's side.
pub async fn identity(replica: &Client) -> Result<WalreceiverIdentity> {
    let row = replica
        .query_one(
            "SELECT (SELECT conninfo FROM pg_stat_wal_receiver), (SELECT slot_name FROM pg_stat_wal_receiver),
                    current_setting('cluster_name')",
            &[],
        )
        .await
        .context("reading the replica's walreceiver")?;
    Ok(WalreceiverIdentity {
        conninfo: row.get::<_, Option<String>>(0).unwrap_or_default(),
        slot: row.get(1),
        cluster_name: row.get(2),
    })
}

/// Read the primary's side.
pub async fn standbys(primary: &Client) -> Result<Vec<StandbyRow>> {
    Ok(primary
        .query(
            "SELECT r.application_name, r.sync_state, s.slot_name::text
               FROM pg_stat_replication r LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid",
            &[],
        )
        .await
        .context("reading pg_stat_replication on the primary")?
        .iter()
        .map(|r| StandbyRow {
            name: r.get::<_, Option<String>>(0).unwrap_or_default(),
            sync_state: r.get(1),
            slot: r.get(2),
        })
        .collect())
}

/// Is `remote_apply` in effect on the primary: in pgmaint's session (server default,
/// or its role or database), or set for any role or database (stored as typed, so
/// compared without case)? And does pgmaint's session override the setting, hiding the
/// server's default from it? A `SET` in an application's own session cannot be seen
/// from here: the watchdog catches that one ([`commits_waiting`]).
pub async fn remote_apply(primary: &Client) -> Result<(bool, bool)> {
    let row = primary
        .query_one(
            "SELECT current_setting('synchronous_commit') = 'remote_apply'
                    OR EXISTS (SELECT 1 FROM pg_db_role_setting s, unnest(s.setconfig) c
                                WHERE lower(trim(split_part(c, '=', 1))) = 'synchronous_commit'
                                  AND lower(trim(split_part(c, '=', 2))) = 'remote_apply'),
                    (SELECT source IN ('database', 'user', 'database user', 'client', 'session')
                       FROM pg_settings WHERE name = 'synchronous_commit')",
            &[],
        )
        .await
        .context("reading synchronous_commit on the primary")?;
    Ok((row.get(0), row.get(1)))
}

/// Commits on the primary that have waited over a second for a synchronous standby.
pub async fn commits_waiting(primary: &Client) -> Result<i64> {
    Ok(primary
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
              WHERE wait_event = 'SyncRep' AND now() - coalesce(state_change, query_start) > interval '1 second'",
            &[],
        )
        .await
        .context("reading pg_stat_activity on the primary")?
        .get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, state: &str, slot: Option<&str>) -> StandbyRow {
        StandbyRow {
            name: name.into(),
            sync_state: Some(state.into()),
            slot: slot.map(Into::into),
        }
    }

    fn me(conninfo: &str, slot: Option<&str>, cluster: &str) -> WalreceiverIdentity {
        WalreceiverIdentity {
            conninfo: conninfo.into(),
            slot: slot.map(Into::into),
            cluster_name: cluster.into(),
        }
    }

    const SPACED: &str = "user=postgres host=127.0.0.1 port=5432 application_name=my standby \
                          fallback_application_name=walreceiver sslmode=prefer";

    #[test]
    fn a_slot_tells_the_replica_apart_exactly() {
        let rows = [
            row("r1", "sync", Some("r1")),
            row("r1 fallback_application_name=r1", "async", None),
        ];
        let r1 = me(
            "host=a application_name=r1 fallback_application_name=r1 sslmode=prefer",
            Some("r1"),
            "",
        );
        assert_eq!(
            standing(&r1, &rows),
            Standing::Sync(
                "sync".into(),
                "application_name \"r1\", by its replication slot \"r1\"".into()
            )
        );
    }

    #[test]
    fn every_name_that_fits_counts_and_the_most_cautious_wins() {
        // Spaces in the name; a longer name that also fits is not taken alone.
        let rows = [row("my standby", "sync", None), row("my", "async", None)];
        assert_eq!(
            standing(&me(SPACED, None, ""), &rows),
            Standing::Sync(
                "sync".into(),
                "application_name \"my standby or my\"".into()
            )
        );
        let rows = [
            row("r1", "sync", None),
            row("r1 fallback_application_name=r1", "async", None),
        ];
        let r1 = me(
            "host=a application_name=r1 fallback_application_name=r1",
            None,
            "",
        );
        assert!(matches!(standing(&r1, &rows), Standing::Sync(..)));
        // Quorum and next-in-line count as synchronous.
        assert!(matches!(
            standing(&me(SPACED, None, ""), &[row("my standby", "quorum", None)]),
            Standing::Sync(..)
        ));
        assert!(matches!(
            standing(
                &me(SPACED, None, ""),
                &[row("my standby", "potential", None)]
            ),
            Standing::Sync(..)
        ));
        // Asynchronous beside a synchronous other.
        assert_eq!(
            standing(
                &me(SPACED, None, ""),
                &[row("my standby", "async", None), row("other", "sync", None)]
            ),
            Standing::Async
        );
    }

    #[test]
    fn without_an_application_name_the_walreceiver_goes_by_cluster_name() {
        let plain = "host=a port=5432 fallback_application_name=r1";
        assert!(matches!(
            standing(&me(plain, None, "r1"), &[row("r1", "sync", None)]),
            Standing::Sync(..)
        ));
        assert_eq!(
            standing(&me(plain, None, ""), &[row("walreceiver", "async", None)]),
            Standing::Async
        );
        // Not found, and some standby is synchronous: it may be this one.
        assert_eq!(
            standing(&me(plain, None, "r9"), &[row("r1", "sync", None)]),
            Standing::Unknown(vec!["r1".into()])
        );
        // Not found, nothing synchronous: nothing to block.
        assert_eq!(
            standing(&me(plain, None, "r9"), &[row("r1", "async", None)]),
            Standing::Async
        );
    }

    #[test]
    fn a_hidden_sync_state_is_said_so() {
        let rows = [StandbyRow {
            name: "r1".into(),
            sync_state: None,
            slot: None,
        }];
        assert_eq!(
            standing(&me("host=a application_name=r1", None, ""), &rows),
            Standing::Hidden
        );
    }
}
