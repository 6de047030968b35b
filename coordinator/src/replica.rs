//! Control of WAL replay on one replica: checks, pause, snapshot, resume.
//!
//! The traps this module works around (all verified on PG 15):
//! - `pg_wal_replay_pause()` only *requests* a pause; `pg_is_wal_replay_paused()` is true
//!   already at "pause requested". Only `pg_get_wal_replay_pause_state() = 'paused'`
//!   confirms it.
//! - A pause does not survive a restart: replay silently resumes. The postmaster start
//!   time tells a restarted replica apart, so we never resume a pause that is not ours.
//! - PG pauses recovery by itself in some cases (e.g. a parameter mismatch with the
//!   primary): we never touch a replica that is not `not paused` when we start.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use snapshot_runner::SnapshotInfo;
use tokio_postgres::Client;

use crate::config::{Dsn, ReplicaConfig};
use crate::db;
use crate::error_text::OneLine;
use crate::sync_standby::{self, Standing};
use crate::units::human_bytes;
use crate::UsageError;

/// `pg_get_wal_replay_pause_state()`, or that the server is not in recovery at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum PauseState {
    /// Replay runs.
    #[serde(rename = "not paused")]
    NotPaused,
    /// `pg_wal_replay_pause()` was called; replay has not stopped yet.
    #[serde(rename = "pause requested")]
    PauseRequested,
    /// Replay has stopped: the snapshot is frozen.
    #[serde(rename = "paused")]
    Paused,
    /// A primary (or a promoted standby): there is no replay.
    #[serde(rename = "not in recovery")]
    NotInRecovery,
}

impl PauseState {
    /// The text form, as PostgreSQL gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            PauseState::NotPaused => "not paused",
            PauseState::PauseRequested => "pause requested",
            PauseState::Paused => "paused",
            PauseState::NotInRecovery => "not in recovery",
        }
    }

    /// The state PostgreSQL reported as `text`.
    pub fn parse(text: &str) -> Result<PauseState> {
        [
            PauseState::NotPaused,
            PauseState::PauseRequested,
            PauseState::Paused,
            PauseState::NotInRecovery,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
        .ok_or_else(|| anyhow!("unknown replay pause state {text:?}"))
    }
}

impl std::fmt::Display for PauseState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Where replay stands right now.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayState {
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// `not paused`, `pause requested`, `paused` (or `not in recovery`).
    pub pause_state: PauseState,
    /// `pg_last_wal_receive_lsn()`.
    pub receive_lsn: Option<String>,
    /// `pg_last_wal_replay_lsn()`.
    pub replay_lsn: Option<String>,
    /// receive − replay, in bytes (never negative).
    pub backlog_bytes: i64,
    /// `pg_postmaster_start_time()`.
    pub postmaster_start: DateTime<Utc>,
    /// `pg_stat_wal_receiver.status`, if a walreceiver runs.
    pub walreceiver: Option<String>,
    /// Time of the last replayed transaction, if any.
    pub last_replayed_xact: Option<DateTime<Utc>>,
    /// The server its WAL receiver streams from (`host:port`), if any.
    pub upstream: Option<String>,
}

/// What makes a pause ours: the replica was not restarted since we requested it, and
/// (once confirmed) replay still stands where we recorded it.
#[derive(Debug, Clone)]
pub struct PauseOwnership {
    /// `pg_postmaster_start_time()` when we requested the pause.
    pub postmaster_start: DateTime<Utc>,
    /// The snapshot LSN, once the pause was confirmed.
    pub snapshot_lsn: Option<String>,
}

/// What a resume found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeOutcome {
    /// We resumed our pause.
    Resumed,
    /// Replay was already running (someone resumed it).
    AlreadyRunning,
    /// The replica restarted, so our pause was gone; any pause now is someone else's.
    LostToRestart,
    /// The replica is paused, but not where we paused it: not ours, left alone.
    NotOurs,
}

/// A control session on one replica.
pub struct ReplicaControl {
    /// The replica's config.
    pub config: ReplicaConfig,
    client: Client,
}

const STATE_SQL: &str = "SELECT pg_is_in_recovery(),
        CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE 'not in recovery' END,
        pg_last_wal_receive_lsn()::text,
        pg_last_wal_replay_lsn()::text,
        greatest(coalesce(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0), 0)::int8,
        pg_postmaster_start_time(),
        (SELECT status FROM pg_stat_wal_receiver),
        pg_last_xact_replay_timestamp(),
        (SELECT sender_host || ':' || sender_port FROM pg_stat_wal_receiver)";

/// Which cluster and history a server belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerIdentity {
    /// `pg_control_system().system_identifier`: set by initdb, shared by every standby
    /// made from it.
    pub system_identifier: i64,
    /// The timeline the server writes (a primary) or receives (a streaming standby).
    pub timeline: i32,
}

/// The identity of a server that is not in recovery; `None` for a standby.
pub async fn server_identity(client: &Client) -> Result<Option<ServerIdentity>> {
    let row = client
        .query_one(
            "SELECT (pg_control_system()).system_identifier, pg_is_in_recovery(),
                    CASE WHEN NOT pg_is_in_recovery()
                         THEN ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END",
            &[],
        )
        .await
        .context("reading the server's system identifier and timeline")?;
    if row.get::<_, bool>(1) {
        return Ok(None);
    }
    Ok(Some(ServerIdentity {
        system_identifier: row.get(0),
        timeline: row.get(2),
    }))
}

/// The primary's identity; refuses a `primary.dsn` that points at a standby.
pub async fn primary_identity(primary: &Client, dsn: &Dsn) -> Result<ServerIdentity> {
    server_identity(primary).await?.ok_or_else(|| {
        anyhow!(UsageError(format!(
            "{} ({}) is in recovery: it is a standby, not the primary",
            dsn.field,
            db::describe(&dsn.config)
        )))
    })
}

/// Is `replica` a standby of `primary`, on its timeline? The reason if not, naming both.
pub fn check_same_cluster(
    replica_name: &str,
    replica_at: &str,
    replica: ServerIdentity,
    primary_at: &str,
    primary: ServerIdentity,
) -> Result<(), String> {
    if replica.system_identifier != primary.system_identifier {
        return Err(format!(
            "replica {replica_name} ({replica_at}) is not a standby of the primary ({primary_at}): its system \
             identifier {} differs from the primary's {} (a replica of another cluster?)",
            replica.system_identifier, primary.system_identifier
        ));
    }
    if replica.timeline != primary.timeline {
        return Err(format!(
            "replica {replica_name} ({replica_at}) is on timeline {} but the primary ({primary_at}) is on timeline {}: \
             it does not follow this primary's history (a failover it has not followed, or a promoted server \
             that is not the primary)",
            replica.timeline, primary.timeline
        ));
    }
    Ok(())
}

impl ReplicaControl {
    /// Connect; the error names the replica's DSN field.
    pub async fn connect(config: &ReplicaConfig) -> Result<Self, db::ConnectError> {
        let client = db::connect(&config.dsn, "pgmaint-control").await?;
        Ok(ReplicaControl {
            config: config.clone(),
            client,
        })
    }

    /// The replica's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The control session, for read-only checks (`pgmaint check`).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Reconnect if the session broke (the replica restarted, say). Tries for up to `patience`.
    pub async fn ensure_connected(&mut self, patience: Duration) -> Result<()> {
        if !self.client.is_closed() {
            return Ok(());
        }
        self.reconnect(patience).await
    }

    /// Open a new control session. Tries for up to `patience`.
    async fn reconnect(&mut self, patience: Duration) -> Result<()> {
        let deadline = Instant::now() + patience;
        let mut wait = Duration::from_millis(200);
        loop {
            match db::connect(&self.config.dsn, "pgmaint-control").await {
                Ok(c) => {
                    self.client = c;
                    return Ok(());
                }
                Err(e) if Instant::now() >= deadline => return Err(e.into()),
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Read the replay state, reconnecting once if the session turns out to be broken: a
    /// restart terminates it, and the client may learn that only from this query.
    pub async fn fresh_state(&mut self) -> Result<ReplayState> {
        self.ensure_connected(Duration::from_secs(10)).await?;
        match self.state().await {
            Ok(st) => Ok(st),
            Err(e) => {
                tracing::debug!(error = %e.one_line(), "control session broke; reconnecting");
                self.reconnect(Duration::from_secs(10)).await?;
                self.state().await
            }
        }
    }

    /// Read the replay state.
    pub async fn state(&self) -> Result<ReplayState> {
        read_state(&self.client)
            .await
            .with_context(|| format!("reading the replay state of replica {}", self.name()))
    }

    /// Refuse (a usage error, exit 2) a replica that belongs to another cluster or
    /// another timeline than `primary`: its snapshot would be uploaded into the wrong
    /// database. Checked before the lease, so nothing is recorded for it.
    pub async fn check_belongs_to(
        &self,
        primary: &Client,
        primary_dsn: &Dsn,
    ) -> Result<ServerIdentity> {
        let want = primary_identity(primary, primary_dsn).await?;
        let row = self
            .client
            .query_one(
                "SELECT (pg_control_system()).system_identifier,
                        coalesce((SELECT received_tli FROM pg_stat_wal_receiver WHERE status = 'streaming'),
                                 (pg_control_checkpoint()).timeline_id)",
                &[],
            )
            .await
            .context("reading the replica's system identifier and timeline")?;
        let have = ServerIdentity {
            system_identifier: row.get(0),
            timeline: row.get(1),
        };
        check_same_cluster(
            self.name(),
            &db::describe(&self.config.dsn.config),
            have,
            &db::describe(&primary_dsn.config),
            want,
        )
        .map_err(|e| anyhow!(UsageError(e)))?;
        Ok(want)
    }

    /// Every condition for a safe pause, checked before we request one.
    pub async fn precheck(&self, primary: &Client, max_backlog: u64) -> Result<ReplayState> {
        let name = self.name();
        let st = self.state().await?;
        if !st.in_recovery {
            bail!("replica {name} is not in recovery: it is a primary, not a standby (was it promoted?)");
        }
        if st.pause_state != PauseState::NotPaused {
            bail!(
                "replica {name}: WAL replay is already '{}' by someone else (or by PostgreSQL itself); \
                 pgmaint only pauses a replica that is 'not paused', and leaves this one as it is",
                st.pause_state
            );
        }
        if st.walreceiver.as_deref() != Some("streaming") {
            bail!(
                "replica {name} is not streaming from the primary (walreceiver: {})",
                st.walreceiver.as_deref().unwrap_or("not running")
            );
        }
        if st.backlog_bytes as u64 > max_backlog {
            bail!(
                "replica {name} has {} of received WAL not yet replayed, over limits.max_replay_backlog ({})",
                human_bytes(st.backlog_bytes as u64),
                human_bytes(max_backlog)
            );
        }
        self.refuse_synchronous_remote_apply(primary).await?;
        Ok(st)
    }

    /// A synchronous standby under `synchronous_commit = remote_apply` blocks every commit
    /// on the primary while its replay is paused: refuse one, or one that cannot be told
    /// apart from one (see [`sync_standby`]).
    async fn refuse_synchronous_remote_apply(&self, primary: &Client) -> Result<()> {
        let (remote_apply, overridden) = sync_standby::remote_apply(primary).await?;
        if !(remote_apply || overridden) {
            return Ok(());
        }
        let why = if remote_apply {
            "the primary uses synchronous_commit=remote_apply"
        } else {
            "pgmaint's own session on the primary overrides synchronous_commit, so the primary's \
             setting for other sessions may be remote_apply"
        };
        let me = sync_standby::identity(&self.client).await?;
        let name = self.name();
        match sync_standby::standing(&me, &sync_standby::standbys(primary).await?) {
            Standing::Async => Ok(()),
            Standing::Sync(state, how) => bail!(
                "replica {name} is a synchronous standby of the primary ({how}, sync_state={state}) and {why}: \
                 pausing its replay would block every commit on the primary"
            ),
            Standing::Unknown(names) => bail!(
                "replica {name}: cannot tell which of the primary's standbys it is (none of {names:?}), some of \
                 them are synchronous, and {why}: not pausing a replica that may block every commit on the primary"
            ),
            Standing::Hidden => bail!(
                "replica {name}: the primary hides pg_stat_replication.sync_state from pgmaint's role (grant it \
                 pg_read_all_stats or pg_monitor), and {why}: not pausing a replica that may be a synchronous standby"
            ),
        }
    }

    /// How this replica's walreceiver presents itself to the primary.
    pub async fn walreceiver_identity(&self) -> Result<sync_standby::WalreceiverIdentity> {
        sync_standby::identity(&self.client).await
    }

    /// Connections a new session of ours could still get: `max_connections` less the
    /// sessions open now, less `superuser_reserved_connections` unless we are a superuser.
    pub async fn free_connections(&self) -> Result<i64> {
        Ok(self
            .client
            .query_one(
                "SELECT current_setting('max_connections')::int
                        - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')
                        - CASE WHEN (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN 0
                               ELSE current_setting('superuser_reserved_connections')::int END",
                &[],
            )
            .await
            .context("reading the replica's free connections")?
            .get(0))
    }

    /// Request a pause and wait until `pg_get_wal_replay_pause_state()` says `paused`.
    /// [`ResumedByOther`] when replay went back to `not paused` meanwhile.
    pub async fn pause(&self, timeout: Duration) -> Result<()> {
        self.client
            .execute("SELECT pg_wal_replay_pause()", &[])
            .await
            .context("pg_wal_replay_pause()")?;
        let deadline = Instant::now() + timeout;
        loop {
            let state: String = self
                .client
                .query_one("SELECT pg_get_wal_replay_pause_state()", &[])
                .await
                .context("pg_get_wal_replay_pause_state()")?
                .get(0);
            match PauseState::parse(&state)? {
                PauseState::Paused => return Ok(()),
                PauseState::PauseRequested if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                PauseState::PauseRequested => bail!(
                    "replica {}: replay did not reach 'paused' within limits.pause_timeout ({}s)",
                    self.name(),
                    timeout.as_secs()
                ),
                // Someone resumed replay between our request and its confirmation.
                PauseState::NotPaused => return Err(ResumedByOther(self.name().to_string()).into()),
                other => bail!(
                    "replica {}: replay pause state became '{other}' while pausing",
                    self.name()
                ),
            }
        }
    }

    /// Relations among `wanted` on which the replayed WAL holds an AccessExclusiveLock:
    /// a scan of them would wait forever while replay is paused.
    /// `None` means every relation (a dump reads them all).
    pub async fn startup_locks(&self, wanted: Option<&[(String, String)]>) -> Result<Vec<String>> {
        let rows = self
            .client
            .query(
                "SELECT n.nspname::text, c.relname::text
                   FROM pg_locks l
                   JOIN pg_class c ON c.oid = l.relation
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock' AND l.granted
                    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                    AND l.pid IN (SELECT pid FROM pg_stat_activity WHERE backend_type = 'startup')",
                &[],
            )
            .await
            .context("reading pg_locks")?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .filter(|rel| wanted.is_none_or(|w| w.contains(rel)))
            .map(|(s, n)| format!("{s}.{n}"))
            .collect())
    }

    /// The server's major version (15 for 15.4).
    pub async fn server_major(&self) -> Result<u32> {
        let num: String = self
            .client
            .query_one("SHOW server_version_num", &[])
            .await?
            .get(0);
        Ok(num.parse::<u32>().context("server_version_num")? / 10000)
    }

    /// The frozen state: replay LSN, timeline, system identifier, start time.
    pub async fn snapshot(&self) -> Result<SnapshotInfo> {
        let row = self
            .client
            .query_one(
                "SELECT pg_last_wal_replay_lsn()::text, (pg_control_checkpoint()).timeline_id,
                        (pg_control_system()).system_identifier, pg_postmaster_start_time()",
                &[],
            )
            .await
            .context("reading the snapshot position")?;
        let lsn: String = row.get(0);
        let timeline = self.replay_timeline(row.get(1), &lsn).await;
        Ok(SnapshotInfo {
            lsn,
            timeline,
            system_identifier: row.get(2),
            postmaster_start: row.get(3),
        })
    }

    /// The timeline replay is on at `lsn`. `pg_control_checkpoint()` says the timeline
    /// of the last restartpoint, which lags behind a timeline switch (a replica that
    /// follows a promoted one replays the new timeline long before its next
    /// restartpoint): a snapshot stamped with the old timeline past the switch point
    /// would be refused by the uploader as lost history. So: a promotion pgmaint
    /// recorded and the replica has replayed (the row is visible) moves it on; and a
    /// WAL receiver on a newer timeline whose history file (readable by superusers and
    /// `pg_read_server_files`) puts the switch at or before `lsn` does too.
    async fn replay_timeline(&self, checkpoint: i32, lsn: &str) -> i32 {
        let recorded: Option<i32> = self
            .client
            .query_one(
                "SELECT CASE WHEN to_regclass('pgmaint.promotions') IS NOT NULL THEN
                        (SELECT max(new_timeline) FROM pgmaint.promotions
                          WHERE system_identifier = (pg_control_system()).system_identifier
                            AND switch_lsn <= $1::text::pg_lsn) END",
                &[&lsn],
            )
            .await
            .ok()
            .and_then(|r| r.get(0));
        let mut timeline = checkpoint.max(recorded.unwrap_or(0));
        let received: Option<i32> = self
            .client
            .query_opt("SELECT received_tli FROM pg_stat_wal_receiver", &[])
            .await
            .ok()
            .flatten()
            .and_then(|r| r.get(0));
        if let Some(tli) = received.filter(|t| *t > timeline) {
            let history = crate::failover::servers::timeline_history(&self.client, tli).await;
            let switch = history
                .ok()
                .and_then(|text| crate::failover::servers::parse_history(&text));
            if let Some((parent, at)) = switch {
                let past = crate::failover::candidate::lsn(&at)
                    .zip(crate::failover::candidate::lsn(lsn))
                    .is_some_and(|(switch, replayed)| replayed >= switch);
                if parent == timeline && past {
                    timeline = tli;
                }
            }
        }
        timeline
    }

    /// Why the snapshot is no longer the one we paused at, if it is not.
    pub async fn snapshot_moved(&mut self, snap: &SnapshotInfo) -> Option<String> {
        let st = match self.fresh_state().await {
            Ok(st) => st,
            Err(e) => return Some(e.one_line()),
        };
        if st.postmaster_start != snap.postmaster_start {
            return Some(format!(
                "replica {} restarted at {} (its pause was lost and replay went on)",
                self.name(),
                st.postmaster_start
            ));
        }
        if st.pause_state != PauseState::Paused {
            return Some(format!(
                "replica {} is no longer paused (state '{}')",
                self.name(),
                st.pause_state
            ));
        }
        if st.replay_lsn.as_deref() != Some(snap.lsn.as_str()) {
            return Some(format!(
                "replica {} replay moved from {} to {}",
                self.name(),
                snap.lsn,
                st.replay_lsn.unwrap_or_default()
            ));
        }
        None
    }

    /// Resume replay if the pause is ours. Retries the connection for a while: a replica
    /// must never be left paused because of a passing network error.
    pub async fn resume_if_owned(
        &mut self,
        own: &PauseOwnership,
    ) -> Result<(ResumeOutcome, ReplayState)> {
        let mut last_err = None;
        for attempt in 0..5 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1 << attempt.min(3))).await;
            }
            match self.try_resume(own).await {
                Ok(r) => return Ok(r),
                Err(e) => {
                    // Replay moving under the session (a recovery conflict, SQLSTATE
                    // 40001) is no alarm: the next attempt reads the new state.
                    let conflict = e
                        .downcast_ref::<tokio_postgres::Error>()
                        .and_then(|e| e.code())
                        .is_some_and(|c| c.code() == "40001");
                    if conflict {
                        tracing::info!(replica = %self.name(), attempt, "resume: the session met a recovery conflict (replay moved); asking again");
                    } else {
                        tracing::warn!(replica = %self.name(), error = %e.one_line(), attempt, "resume failed; retrying");
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    async fn try_resume(&mut self, own: &PauseOwnership) -> Result<(ResumeOutcome, ReplayState)> {
        let st = self.fresh_state().await?;
        let outcome = decide_resume(own, &st);
        if outcome == ResumeOutcome::Resumed {
            self.client
                .execute("SELECT pg_wal_replay_resume()", &[])
                .await
                .context("pg_wal_replay_resume()")?;
        }
        Ok((outcome, st))
    }

    /// Wait until the sessions named `application_name` are gone; terminate stragglers.
    /// Sessions still open at resume would be cancelled by recovery conflicts anyway, but
    /// their half-read results must not be mistaken for good ones.
    pub async fn close_sessions(&mut self, application_name: &str) -> Result<()> {
        self.ensure_connected(Duration::from_secs(10)).await?;
        let count_sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()";
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let n: i64 = self
                .client
                .query_one(count_sql, &[&application_name])
                .await?
                .get(0);
            if n == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!(
            replica = %self.name(),
            application_name,
            "terminating scan sessions still open"
        );
        self.client
            .execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()",
                &[&application_name],
            )
            .await
            .context("terminating scan sessions")?;
        Ok(())
    }
}

/// Read the replay state through any session.
pub async fn read_state(client: &Client) -> Result<ReplayState> {
    let row = client.query_one(STATE_SQL, &[]).await?;
    Ok(ReplayState {
        in_recovery: row.get(0),
        pause_state: PauseState::parse(row.get(1))?,
        receive_lsn: row.get(2),
        replay_lsn: row.get(3),
        backlog_bytes: row.get(4),
        postmaster_start: row.get(5),
        walreceiver: row.get(6),
        last_replayed_xact: row.get(7),
        upstream: row.get(8),
    })
}

/// Is the pause we see ours to resume?
pub fn decide_resume(own: &PauseOwnership, st: &ReplayState) -> ResumeOutcome {
    if st.postmaster_start != own.postmaster_start {
        return ResumeOutcome::LostToRestart;
    }
    match st.pause_state {
        PauseState::Paused => match &own.snapshot_lsn {
            Some(lsn) if st.replay_lsn.as_deref() != Some(lsn.as_str()) => ResumeOutcome::NotOurs,
            _ => ResumeOutcome::Resumed,
        },
        // Requested but never confirmed: our request. Once ours was confirmed, a pause
        // that is only "requested" now is somebody else's, in progress.
        PauseState::PauseRequested if own.snapshot_lsn.is_none() => ResumeOutcome::Resumed,
        PauseState::PauseRequested => ResumeOutcome::NotOurs,
        _ => ResumeOutcome::AlreadyRunning,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(pause: &str, lsn: &str, start: i64) -> ReplayState {
        ReplayState {
            in_recovery: true,
            pause_state: PauseState::parse(pause).unwrap(),
            receive_lsn: Some(lsn.into()),
            replay_lsn: Some(lsn.into()),
            backlog_bytes: 0,
            postmaster_start: DateTime::from_timestamp(start, 0).unwrap(),
            walreceiver: Some("streaming".into()),
            last_replayed_xact: None,
            upstream: None,
        }
    }

    fn own(lsn: Option<&str>) -> PauseOwnership {
        PauseOwnership {
            postmaster_start: DateTime::from_timestamp(1000, 0).unwrap(),
            snapshot_lsn: lsn.map(Into::into),
        }
    }

    #[test]
    fn a_replica_of_another_cluster_or_timeline_is_told_apart() {
        let id = |s, t| ServerIdentity {
            system_identifier: s,
            timeline: t,
        };
        assert_eq!(
            check_same_cluster("r1", "R", id(7, 2), "P", id(7, 2)),
            Ok(())
        );
        let e = check_same_cluster("r1", "host=b", id(8, 1), "host=a", id(7, 1)).unwrap_err();
        assert!(e.starts_with("replica r1 (host=b) is not a standby of the primary (host=a): its system identifier 8 differs from the primary's 7"), "{e}");
        let e = check_same_cluster("r1", "host=b", id(7, 1), "host=a", id(7, 2)).unwrap_err();
        assert!(
            e.starts_with(
                "replica r1 (host=b) is on timeline 1 but the primary (host=a) is on timeline 2"
            ),
            "{e}"
        );
    }

    #[test]
    fn resumes_only_a_pause_it_owns() {
        use ResumeOutcome::*;
        assert_eq!(
            decide_resume(&own(Some("0/10")), &state("paused", "0/10", 1000)),
            Resumed
        );
        // Requested but never confirmed: still ours.
        assert_eq!(
            decide_resume(&own(None), &state("pause requested", "0/8", 1000)),
            Resumed
        );
        assert_eq!(
            decide_resume(&own(None), &state("paused", "0/8", 1000)),
            Resumed
        );
        // Restarted: our pause is gone; a pause now is someone else's.
        assert_eq!(
            decide_resume(&own(Some("0/10")), &state("paused", "0/10", 2000)),
            LostToRestart
        );
        // Paused somewhere else: someone resumed ours and paused again.
        assert_eq!(
            decide_resume(&own(Some("0/10")), &state("paused", "0/20", 1000)),
            NotOurs
        );
        assert_eq!(
            decide_resume(&own(Some("0/10")), &state("not paused", "0/20", 1000)),
            AlreadyRunning
        );
        // Ours was confirmed at 0/10; a pause being requested now is someone else's.
        assert_eq!(
            decide_resume(&own(Some("0/10")), &state("pause requested", "0/20", 1000)),
            NotOurs
        );
    }
}

/// Replay was resumed by someone else while pgmaint's pause was being confirmed: the
/// snapshot is lost (the run is invalid), and the pause is no longer pgmaint's.
#[derive(Debug, thiserror::Error)]
#[error("replica {0}: replay was resumed by another process during the pause")]
pub struct ResumedByOther(pub String);
