//! The steps of `pgmaint promote` that talk to servers: is the primary really down,
//! what each replica holds, the promotion itself, and re-pointing the other replicas
//! at the new primary. The command (`commands::promote`) runs them in order; the
//! decisions they rest on are pure functions here, with table tests.
//!
//! PostgreSQL facts this relies on (PG 13+, checked on PG 15):
//! - `pg_promote(true, N)` returning false means "not finished within N seconds": the
//!   promotion goes on. Poll `pg_is_in_recovery()`; never send a second promote.
//! - A promotion while replay is paused ends the pause, then replays everything
//!   received before accepting writes.
//! - A paused standby does not restart its WAL receiver (the startup process only asks
//!   for WAL when it needs some): a follower must be resumed to follow anyone.
//! - `primary_conninfo` changes on reload; the standby then follows the new timeline
//!   (`recovery_target_timeline = 'latest'`) unless it already holds WAL of the old
//!   timeline past the switch point: then it waits forever ("new timeline N forked off
//!   current database system timeline M before current recovery point"), and only
//!   pg_rewind or a new base backup brings it back.
//! - Physical replication slots are not replicated: a follower's slot must be created
//!   on the new primary.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::config::{Config, Dsn, ReplicaConfig};
use crate::failover::candidate::lsn;
use crate::failover::journal::{self, Promotion};
use crate::failover::primary;
use crate::replica::PauseState;
use crate::units::human_bytes;

/// Test knob: the `N` of `pg_promote(true, N)`, in seconds, instead of
/// `min(failover.promote_timeout, 60)`. With a tiny N the "returned false, still
/// promoting" path can be exercised; operators have no reason to set it.
pub const PROMOTE_WAIT_ENV: &str = "PGMAINT_TEST_PROMOTE_WAIT";

/// The replay rate assumed for a paused candidate's backlog estimate, in bytes per
/// second. `scripts/bench/failover.sh` measured 170–700 MB/s replaying 1 GB of insert
/// WAL on a shared 2-vCPU test machine (PG 15, fsync off); 100 MB/s errs on the slow
/// side, for slower disks and heavier WAL (see README, "Benchmarks").
pub const ASSUMED_REPLAY_RATE: f64 = 100.0 * 1024.0 * 1024.0;

/// A server's WAL receiver (`pg_stat_wal_receiver`), if one runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WalReceiver {
    /// `status`: `streaming`, `waiting`, `starting`, `stopping`, …
    pub status: String,
    /// `received_tli`.
    pub received_tli: Option<i32>,
    /// `sender_host:sender_port`, if known.
    pub sender: Option<String>,
    /// Seconds since `last_msg_receipt_time`, if any message was received.
    pub since_last_msg: Option<f64>,
}

/// One replica as promote sees it.
#[derive(Debug, Clone)]
pub struct Probe {
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// The replay pause state.
    pub pause_state: PauseState,
    /// `pg_last_wal_receive_lsn()`.
    pub receive_lsn: Option<String>,
    /// `pg_last_wal_replay_lsn()`.
    pub replay_lsn: Option<String>,
    /// `pg_control_system().system_identifier`.
    pub system_identifier: i64,
    /// `pg_postmaster_start_time()`.
    pub postmaster_start: DateTime<Utc>,
    /// Its WAL receiver, if one runs.
    pub walreceiver: Option<WalReceiver>,
}

impl Probe {
    /// How far its WAL goes: the received position, or the replayed one if that is
    /// further (a restarted standby reports no receive position until it streams).
    pub fn position(&self) -> u64 {
        let r = self.receive_lsn.as_deref().and_then(lsn).unwrap_or(0);
        r.max(self.replayed())
    }

    /// The replayed position.
    pub fn replayed(&self) -> u64 {
        self.replay_lsn.as_deref().and_then(lsn).unwrap_or(0)
    }

    /// Received but not replayed.
    pub fn backlog(&self) -> u64 {
        self.position().saturating_sub(self.replayed())
    }
}

const PROBE_SQL: &str = "SELECT pg_is_in_recovery(),
        CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE 'not in recovery' END,
        pg_last_wal_receive_lsn()::text,
        pg_last_wal_replay_lsn()::text,
        (pg_control_system()).system_identifier,
        pg_postmaster_start_time(),
        w.status, w.received_tli, w.sender_host || ':' || w.sender_port,
        extract(epoch FROM clock_timestamp() - w.last_msg_receipt_time)::float8
   FROM (SELECT 1) one LEFT JOIN pg_stat_wal_receiver w ON true";

/// Read a server's state.
pub async fn probe(client: &Client) -> Result<Probe> {
    let row = client
        .query_one(PROBE_SQL, &[])
        .await
        .context("reading the replica's state")?;
    let status: Option<String> = row.get(6);
    Ok(Probe {
        in_recovery: row.get(0),
        pause_state: PauseState::parse(row.get(1))?,
        receive_lsn: row.get(2),
        replay_lsn: row.get(3),
        system_identifier: row.get(4),
        postmaster_start: row.get(5),
        walreceiver: status.map(|status| WalReceiver {
            status,
            received_tli: row.get(7),
            sender: row.get(8),
            since_last_msg: row.get(9),
        }),
    })
}

/// Connect to `dsn` within `patience` (libpq's own time-out may be longer).
pub async fn connect_within(
    dsn: &Dsn,
    application_name: &str,
    patience: Duration,
) -> Result<Client, String> {
    match tokio::time::timeout(patience, crate::db::connect(dsn, application_name)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.0),
        Err(_) => Err(format!("no answer within {}s", patience.as_secs_f64())),
    }
}

/// A replica, connected and probed, or why not.
pub struct Seen {
    /// Its config.
    pub config: ReplicaConfig,
    /// The session and what it showed, or why there is none.
    pub state: Result<(Client, Probe), String>,
}

/// Connect to every replica and read its state (at once, each within 10 s).
pub async fn probe_replicas(cfg: &Config) -> Vec<Seen> {
    let each = cfg.replicas.iter().map(|r| async move {
        let state = match connect_within(&r.dsn, "pgmaint-promote", Duration::from_secs(10)).await {
            Err(e) => Err(e),
            Ok(c) => match probe(&c).await {
                Ok(p) => Ok((c, p)),
                Err(e) => Err(format!("{e:#}")),
            },
        };
        Seen {
            config: r.clone(),
            state,
        }
    });
    futures_util::future::join_all(each).await
}

/// What one server of `primary.dsn` turned out to be during the down check.
#[derive(Debug, Clone, PartialEq)]
pub enum HostSeen {
    /// No connection: refused, timed out, no route.
    Down(String),
    /// A standby (in recovery): not the primary.
    Standby,
    /// A former primary, fenced by a recorded promotion: not the primary.
    Fenced(String),
    /// A primary: it accepts connections and is not in recovery.
    Primary(String),
    /// The server answered but refused the session (starting up, shutting down, too
    /// many connections, authentication): it is alive.
    Answers(String),
}

impl HostSeen {
    /// Evidence that the primary is up, as a sentence, if this is some.
    pub fn evidence(&self, address: &str) -> Option<String> {
        match self {
            HostSeen::Primary(what) => Some(format!("{address} accepts connections: {what}")),
            HostSeen::Answers(what) => Some(format!(
                "{address} answers (it is running, though it refused pgmaint's session: {what})"
            )),
            _ => None,
        }
    }
}

/// Try one server of `primary.dsn` once.
pub async fn probe_host(dsn: &Dsn, promotions: &[Promotion], patience: Duration) -> HostSeen {
    let mut config = dsn.config.clone();
    config.application_name("pgmaint-promote");
    let client = match tokio::time::timeout(patience, snapshot_runner::connection::connect(&config))
        .await
    {
        Err(_) => return HostSeen::Down(format!("no answer within {}s", patience.as_secs_f64())),
        // A server that answered with an error message is running.
        Ok(Err(e)) => {
            return match e.as_db_error() {
                Some(db) => {
                    HostSeen::Answers(format!("{} (SQLSTATE {})", db.message(), db.code().code()))
                }
                None => HostSeen::Down(
                    std::error::Error::source(&e)
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| e.to_string()),
                ),
            }
        }
        Ok(Ok(c)) => c,
    };
    match crate::replica::server_identity(&client).await {
        Err(e) => HostSeen::Answers(format!("{e:#}")),
        Ok(None) => HostSeen::Standby,
        Ok(Some(id)) => {
            let mut all = promotions.to_vec();
            all.extend(journal::read_on(&client).await);
            match journal::fenced_by(&all, id.system_identifier, id.timeline) {
                Some(p) => HostSeen::Fenced(format!(
                    "a former primary on timeline {}: replica {} was promoted to timeline {} at {}",
                    id.timeline, p.replica, p.new_timeline, p.promoted_at
                )),
                None => HostSeen::Primary(format!("a primary on timeline {}", id.timeline)),
            }
        }
    }
}

/// Does a replica's WAL receiver still hear from a primary, within `window`? The
/// evidence as a sentence if so.
pub fn walreceiver_evidence(replica: &str, w: &WalReceiver, window: Duration) -> Option<String> {
    let from = w.sender.as_deref().unwrap_or("its upstream");
    let ago = w
        .since_last_msg
        .map(|s| format!("last message {s:.1}s ago"))
        .unwrap_or_else(|| "no message yet".into());
    if w.status == "streaming" {
        return Some(format!(
            "replica {replica}'s WAL receiver is streaming from {from} ({ago})"
        ));
    }
    match w.since_last_msg {
        Some(s) if s < window.as_secs_f64() => Some(format!(
            "replica {replica}'s WAL receiver ({}) heard from {from} {s:.1}s ago, within failover.primary_down_after ({}s)",
            w.status,
            window.as_secs_f64()
        )),
        _ => None,
    }
}

/// The primary down check's outcome.
#[derive(Debug, Default)]
pub struct DownCheck {
    /// `host:port` of each server of `primary.dsn` that never accepted a connection.
    pub down: Vec<String>,
    /// Servers of `primary.dsn` that answered but are not the primary (standbys,
    /// fenced former primaries), for the report.
    pub notes: Vec<String>,
    /// Evidence that the primary is up: refuse if any.
    pub evidence: Vec<String>,
    /// How long the check took.
    pub took: Duration,
}

/// Try every server of `primary.dsn` for `window`, every half second: any that
/// accepts a connection as an unfenced primary, or answers at all, is evidence that
/// the primary is up (the check stops at once). A server found in recovery is a
/// standby, and one fenced by a recorded promotion a former primary: neither is the
/// primary.
pub async fn watch_primary(cfg: &Config, promotions: &[Promotion], window: Duration) -> DownCheck {
    let start = Instant::now();
    let deadline = start + window;
    let hosts = primary::hosts(&cfg.primary);
    let patience = window.clamp(Duration::from_secs(1), Duration::from_secs(5));
    let last = loop {
        let seen = futures_util::future::join_all(
            hosts.iter().map(|h| probe_host(h, promotions, patience)),
        )
        .await;
        let evidence: Vec<String> = hosts
            .iter()
            .zip(&seen)
            .filter_map(|(h, s)| s.evidence(&primary::address(h)))
            .collect();
        if !evidence.is_empty() {
            return DownCheck {
                evidence,
                took: start.elapsed(),
                ..Default::default()
            };
        }
        let now = Instant::now();
        if now >= deadline {
            break seen;
        }
        tokio::time::sleep((deadline - now).min(Duration::from_millis(500))).await;
    };
    let mut check = DownCheck {
        took: start.elapsed(),
        ..Default::default()
    };
    for (h, s) in hosts.iter().zip(&last) {
        let at = primary::address(h);
        match s {
            HostSeen::Down(why) => {
                tracing::info!(server = %at, "primary.dsn server down: {why}");
                check.down.push(at)
            }
            HostSeen::Standby => check.notes.push(format!("{at} is a standby")),
            HostSeen::Fenced(why) => check.notes.push(format!("{at} is {why}: ignored")),
            HostSeen::Primary(_) | HostSeen::Answers(_) => unreachable!("evidence returns early"),
        }
    }
    check
}

/// The switch point of timeline `tli`, from the text of its history file
/// (`<parent tli>\t<switch lsn>\t<reason>` per line, the last line for `tli`'s own
/// parent): `(parent timeline, switch LSN)`.
pub fn parse_history(text: &str) -> Option<(i32, String)> {
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with('#'))
        .and_then(|l| {
            let mut fields = l.split_whitespace();
            let parent = fields.next()?.parse().ok()?;
            let at = fields.next()?;
            lsn(at)?;
            Some((parent, at.to_string()))
        })
}

/// Every timeline a history file says its timeline descends from (the first field of
/// each line).
pub fn parse_history_all(text: &str) -> Vec<i32> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The new timeline's history on the new primary (`pg_wal/<TLI>.history`): `(parent
/// timeline, switch LSN)`. Needs superuser or `pg_read_server_files`.
pub async fn read_switch_point(new_primary: &Client, tli: i32) -> Result<(i32, String)> {
    let name = format!("pg_wal/{tli:08X}.history");
    let text = timeline_history(new_primary, tli)
        .await
        .with_context(|| format!("reading {name}"))?;
    parse_history(&text).with_context(|| format!("{name}: no switch point in {text:?}"))
}

/// The text of `pg_wal/<tli>.history` on `client`'s server: through
/// `pgmaint_admin.timeline_history(int)` when the least-privilege recipe made it and
/// this role may run it (a function that reads that one file), else `pg_read_file`
/// (superuser, or a grant on it).
pub async fn timeline_history(client: &Client, tli: i32) -> Result<String, tokio_postgres::Error> {
    const FUNCTION: &str = "pgmaint_admin.timeline_history(integer)";
    let own: bool = client
        .query_one(
            // Without USAGE on the schema, to_regprocedure would raise an error, not
            // answer NULL: CASE asks it only once USAGE is known.
            "SELECT CASE WHEN to_regnamespace('pgmaint_admin') IS NULL
                          OR NOT has_schema_privilege('pgmaint_admin', 'USAGE') THEN false
                         ELSE coalesce(has_function_privilege(to_regprocedure($1), 'EXECUTE'), false) END",
            &[&FUNCTION],
        )
        .await?
        .get(0);
    let row = if own {
        client
            .query_one("SELECT pgmaint_admin.timeline_history($1)", &[&tli])
            .await?
    } else {
        let name = format!("pg_wal/{tli:08X}.history");
        client
            .query_one("SELECT pg_read_file($1)", &[&name])
            .await?
    };
    // NULL (a timeline <= 0, which has no history) reads as an empty history.
    Ok(row.get::<_, Option<String>>(0).unwrap_or_default())
}

/// How long replaying `backlog` bytes takes at `rate` bytes/s, in words, with where
/// the rate comes from.
pub fn replay_estimate(backlog: u64, rate: f64, measured: bool) -> String {
    let secs = backlog as f64 / rate.max(1.0);
    format!(
        "replaying it takes about {} at {}/s ({})",
        human_secs(secs),
        human_bytes(rate as u64),
        if measured {
            "the replay rate measured on the candidate just now"
        } else {
            "an assumed replay rate: the candidate is paused, so none could be measured"
        }
    )
}

/// `4.2s`, `3m10s`, `1h02m`.
pub fn human_secs(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

/// Measure the replay rate of an unpaused replica over about a second (bytes/s), if
/// it replays at all.
pub async fn measure_replay_rate(client: &Client) -> Option<f64> {
    let read = || async {
        let r = client
            .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
            .await
            .ok()?;
        r.get::<_, Option<String>>(0).as_deref().and_then(lsn)
    };
    let (t0, a) = (Instant::now(), read().await?);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b = read().await?;
    (b > a).then(|| (b - a) as f64 / t0.elapsed().as_secs_f64())
}

/// What became of a replica other than the new primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FollowState {
    /// It streams from the new primary, on the new timeline.
    Following,
    /// Its WAL went past the switch point: it cannot follow until rewound.
    Diverged,
    /// pgmaint could not reach it.
    Unreachable,
    /// Anything else (paused by someone else, not a standby, not streaming in time):
    /// the detail says what.
    NotFollowing,
}

impl std::fmt::Display for FollowState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FollowState::Following => "following",
            FollowState::Diverged => "diverged",
            FollowState::Unreachable => "unreachable",
            FollowState::NotFollowing => "not following",
        })
    }
}

/// Has a standby whose WAL reaches `position` (having replayed up to `replayed`) gone
/// past `switch`? `Some(true)`: certainly (it replayed past it); `Some(false)`: it holds
/// WAL past it, which it will replay unless that is only the start of an incomplete
/// record; `None`: no.
pub fn past_switch(position: u64, replayed: u64, switch: u64) -> Option<bool> {
    if replayed > switch {
        Some(true)
    } else if position > switch {
        Some(false)
    } else {
        None
    }
}

/// A conninfo without its password (for printing).
pub fn without_password(conninfo: &str) -> String {
    match crate::conninfo::parse(conninfo) {
        Ok(pairs) => {
            let kept: Vec<(String, String)> =
                pairs.into_iter().filter(|(k, _)| k != "password").collect();
            kept.iter()
                .map(|(k, v)| {
                    let plain = !v.is_empty()
                        && !v
                            .chars()
                            .any(|c| c.is_whitespace() || c == '\'' || c == '\\');
                    if plain {
                        format!("{k}={v}")
                    } else {
                        format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        }
        Err(_) => "<the new primary's conninfo>".into(),
    }
}

/// Quote for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The pg_rewind command that rejoins a diverged standby (run with it stopped).
pub fn pg_rewind_command(data_directory: &str, source_conninfo: &str) -> String {
    format!(
        "pg_rewind --target-pgdata={} --source-server={} --write-recovery-conf --progress",
        shell_quote(data_directory),
        shell_quote(&without_password(source_conninfo))
    )
}

/// The advisory lock key of `pgmaint promote` ("pgmfailo").
const FAILOVER_LOCK: i64 = 0x7067_6d66_6169_6c6f;

/// Take the failover lock on this session (held until it closes), if free. The
/// session is named after `by` (`pgmaint-failover host:pid…`), so that another pgmaint
/// that finds the lock taken can say who holds it.
pub async fn try_failover_lock(client: &Client, by: &str) -> Result<bool> {
    let name: String = format!("pgmaint-failover {by}").chars().take(63).collect();
    client
        .execute("SELECT set_config('application_name', $1, false)", &[&name])
        .await
        .context("naming the failover lock's session")?;
    // A pgmaint that just exited may hold it for a few more milliseconds (its backend
    // has not noticed the closed connection yet): a held lock is asked again for a
    // moment before it counts as taken.
    for attempt in 0..10 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&FAILOVER_LOCK])
            .await
            .context("taking the failover lock")?
            .get(0);
        if got {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Who holds the failover lock on `client`'s server, as its session names itself.
pub async fn failover_lock_holder(client: &Client) -> Option<String> {
    // A bigint advisory key is (classid, objid) = (high, low) 32 bits, objsubid 1.
    let (high, low) = ((FAILOVER_LOCK >> 32) as u32, FAILOVER_LOCK as u32);
    let row = client
        .query_opt(
            "SELECT coalesce(nullif(a.application_name, ''), 'a session') || ' (pid ' || l.pid || ' on that server'
                    || coalesce(', from ' || host(a.client_addr), '') || ')'
               FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1 AND l.objid = $2 AND l.objsubid = 1
              LIMIT 1",
            &[&high, &low],
        )
        .await
        .ok()??;
    Some(row.get(0))
}

/// Resume a standby's replay (promote ends any pause; this makes it explicit).
pub async fn resume_replay(client: &Client) -> Result<()> {
    client
        .execute("SELECT pg_wal_replay_resume()", &[])
        .await
        .context("pg_wal_replay_resume()")?;
    Ok(())
}

/// `SHOW name`.
pub async fn show(client: &Client, name: &str) -> Result<String> {
    // SHOW takes no parameters; `name` is one of ours, never the operator's.
    let row = client
        .query_one(&format!("SHOW {name}"), &[])
        .await
        .with_context(|| format!("SHOW {name}"))?;
    Ok(row.get(0))
}

/// `ALTER SYSTEM SET primary_conninfo = conninfo`, then a reload.
pub async fn set_primary_conninfo(client: &Client, conninfo: &str) -> Result<()> {
    let quoted: String = client
        .query_one("SELECT quote_literal($1)", &[&conninfo])
        .await?
        .get(0);
    client
        .batch_execute(&format!("ALTER SYSTEM SET primary_conninfo = {quoted}"))
        .await
        .context("ALTER SYSTEM SET primary_conninfo")?;
    client
        .execute("SELECT pg_reload_conf()", &[])
        .await
        .context("pg_reload_conf()")?;
    Ok(())
}

/// Create physical slot `name` on the new primary unless it exists. Whether it was
/// created.
pub async fn ensure_slot(new_primary: &Client, name: &str) -> Result<bool> {
    let n = new_primary
        .execute(
            "SELECT pg_create_physical_replication_slot($1, true)
              WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&name],
        )
        .await
        .with_context(|| format!("creating replication slot {name} on the new primary"))?;
    Ok(n == 1)
}

/// Drop slot `name` on the new primary if nothing uses it (one we created for a
/// follower that turned out not to follow: it would hold WAL forever).
pub async fn drop_idle_slot(new_primary: &Client, name: &str) -> Result<()> {
    new_primary
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
              WHERE slot_name = $1 AND NOT active",
            &[&name],
        )
        .await
        .with_context(|| format!("dropping replication slot {name} on the new primary"))?;
    Ok(())
}

/// Does the standby stream from a server on timeline `tli` (or later)?
pub async fn streams_on(client: &Client, tli: i32) -> Result<bool> {
    let row = client
        .query_opt(
            "SELECT status = 'streaming' AND received_tli >= $1 FROM pg_stat_wal_receiver",
            &[&tli],
        )
        .await?;
    Ok(row.map(|r| r.get::<_, Option<bool>>(0) == Some(true)) == Some(true))
}

/// A run left `running` on the new primary, dropped by the promotion.
#[derive(Debug, Clone, Serialize)]
pub struct DroppedRun {
    /// Its id.
    pub run_id: i64,
    /// Its replica.
    pub replica: String,
    /// What the run recorded before requesting its pause (`None`: it never paused).
    #[serde(skip)]
    pub pause: Option<crate::replica::PauseOwnership>,
    /// What became of its pause.
    pub pause_outcome: Option<String>,
}

/// On the new primary: mark every run still `running` that started before `before`
/// (the promotion: a run started on the new primary since is left alone) as `dropped`
/// (with `reason`), and release their leases. Their results are never uploaded (the
/// uploader applies only `succeeded` runs).
pub async fn drop_running_runs(
    new_primary: &mut Client,
    reason: &str,
    before: DateTime<Utc>,
) -> Result<Vec<DroppedRun>> {
    let tx = new_primary.transaction().await?;
    let rows = tx
        .query(
            "UPDATE pgmaint.runs
                SET state = 'dropped', finished_at = now(),
                    error = coalesce(error || '; ', '') || $1
              WHERE state = 'running' AND started_at < $2
          RETURNING id, replica, pause_requested_at IS NOT NULL, replica_started_at, snapshot_lsn::text",
            &[&reason, &before],
        )
        .await
        .context("marking the runs left running as dropped")?;
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    // Expired, not deleted: should resuming a dropped run's pause fail below, the next
    // pgmaint command recovers the expired lease (and resumes the pause it proves).
    tx.execute(
        "UPDATE pgmaint.replica_leases SET expires_at = least(expires_at, now()) WHERE run_id = ANY($1)",
        &[&ids],
    )
    .await
    .context("expiring the leases of the dropped runs")?;
    tx.commit().await?;
    Ok(rows
        .iter()
        .map(|r| DroppedRun {
            run_id: r.get(0),
            replica: r.get(1),
            pause: match (r.get::<_, bool>(2), r.get::<_, Option<DateTime<Utc>>>(3)) {
                (true, Some(start)) => Some(crate::replica::PauseOwnership {
                    postmaster_start: start,
                    snapshot_lsn: r.get(4),
                }),
                _ => None,
            },
            pause_outcome: None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wr(status: &str, ago: Option<f64>) -> WalReceiver {
        WalReceiver {
            status: status.into(),
            received_tli: Some(1),
            sender: Some("10.0.0.1:5432".into()),
            since_last_msg: ago,
        }
    }

    #[test]
    fn a_replica_that_still_hears_from_a_primary_is_evidence() {
        let w = Duration::from_secs(10);
        let e = walreceiver_evidence("r1", &wr("streaming", Some(42.0)), w).unwrap();
        assert_eq!(
            e,
            "replica r1's WAL receiver is streaming from 10.0.0.1:5432 (last message 42.0s ago)"
        );
        let e = walreceiver_evidence("r1", &wr("waiting", Some(3.0)), w).unwrap();
        assert!(
            e.contains(
                "heard from 10.0.0.1:5432 3.0s ago, within failover.primary_down_after (10s)"
            ),
            "{e}"
        );
        assert_eq!(
            walreceiver_evidence("r1", &wr("waiting", Some(11.0)), w),
            None
        );
        assert_eq!(walreceiver_evidence("r1", &wr("starting", None), w), None);
    }

    #[test]
    fn a_server_that_answers_at_all_is_up() {
        assert!(HostSeen::Primary("a primary on timeline 1".into())
            .evidence("h:1")
            .unwrap()
            .starts_with("h:1 accepts connections"));
        assert!(
            HostSeen::Answers("the database system is starting up (SQLSTATE 57P03)".into())
                .evidence("h:1")
                .is_some()
        );
        for not in [
            HostSeen::Down("Connection refused".into()),
            HostSeen::Standby,
            HostSeen::Fenced("a former primary".into()),
        ] {
            assert_eq!(not.evidence("h:1"), None, "{not:?}");
        }
    }

    #[test]
    fn the_switch_point_is_the_last_line_of_the_history_file() {
        assert_eq!(
            parse_history("1\t0/4024030\tno recovery target specified\n"),
            Some((1, "0/4024030".into()))
        );
        assert_eq!(
            parse_history("1\t0/3000000\tno recovery target specified\n\n2\t0/5000198\tno recovery target specified\n"),
            Some((2, "0/5000198".into()))
        );
        assert_eq!(parse_history(""), None);
        assert_eq!(
            parse_history_all("1\t0/3000000\tno recovery target specified\n\n2\t0/5000198\tx\n"),
            vec![1, 2]
        );
        assert_eq!(parse_history("x y"), None);
    }

    #[test]
    fn past_the_switch_point_is_certain_once_replayed() {
        assert_eq!(past_switch(100, 100, 100), None);
        assert_eq!(past_switch(90, 80, 100), None);
        assert_eq!(past_switch(120, 90, 100), Some(false));
        assert_eq!(past_switch(120, 110, 100), Some(true));
    }

    #[test]
    fn the_rewind_command_is_quoted_and_carries_no_password() {
        let c = pg_rewind_command(
            "/var/lib/postgresql/15/main",
            "user=postgres password=s3cret host=10.0.0.2 port=5433 application_name='my standby'",
        );
        assert_eq!(
            c,
            "pg_rewind --target-pgdata='/var/lib/postgresql/15/main' \
             --source-server='user=postgres host=10.0.0.2 port=5433 application_name='\\''my standby'\\''' \
             --write-recovery-conf --progress"
        );
    }

    #[test]
    fn replay_estimates_say_where_the_rate_comes_from() {
        let e = replay_estimate(1 << 30, 100.0 * 1024.0 * 1024.0, false);
        assert_eq!(e, "replaying it takes about 10.2s at 100.0 MB/s (an assumed replay rate: the candidate is paused, so none could be measured)");
        assert_eq!(human_secs(190.0), "3m10s");
        assert_eq!(human_secs(3720.0), "1h02m");
    }
}
