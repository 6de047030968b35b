//! The watchdog: guards a pause from the moment it is confirmed until replay is
//! resumed, from sessions of its own, so that nothing the cycle waits on can delay it.
//!
//! It aborts the cycle when:
//! - `limits.max_pause` is reached (a deadline of its own: a hung query cannot delay it);
//! - the replica restarted (a pause does not survive a restart: replay went on), or
//!   replay was resumed by another process (Patroni 2.1+ resumes paused replicas unless
//!   the cluster is in maintenance mode): the snapshot is gone;
//! - the replay backlog passes `limits.max_replay_backlog`;
//! - commits on the primary wait for this replica: a synchronous standby paused while
//!   some session uses `synchronous_commit = remote_apply`, which the pre-checks could
//!   not see (a `SET` in an application's own session), or `synchronous_standby_names`
//!   changed during the pause.

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::abort::{Abort, AbortReason};
use crate::config::{Dsn, Limits};
use crate::db;
use crate::replica::{read_state, PauseState};
use crate::sync_standby::{self, Standing, WalreceiverIdentity};
use snapshot_runner::SnapshotInfo;

/// What the watchdog guards.
pub struct Watchdog {
    /// The replica's name.
    pub replica: String,
    /// Its DSN.
    pub replica_dsn: Dsn,
    /// The primary's DSN.
    pub primary_dsn: Dsn,
    /// The snapshot the pause froze.
    pub snapshot: SnapshotInfo,
    /// How the replica's walreceiver presents itself to the primary.
    pub identity: WalreceiverIdentity,
    /// The pause limits.
    pub limits: Limits,
}

impl Watchdog {
    /// Guard the pause that started at `pause_started` until the returned token is
    /// cancelled, triggering `abort` with the first reason found.
    pub fn spawn(self, abort: Abort, pause_started: Instant) -> CancellationToken {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let mut replica: Option<Client> = None;
            let mut primary: Option<Client> = None;
            let tick = Duration::from_millis(500)
                .min(self.limits.max_pause / 4)
                .max(Duration::from_millis(50));
            let deadline = tokio::time::Instant::from_std(pause_started + self.limits.max_pause);
            let mut round = 0u64;
            loop {
                round += 1;
                let check = async {
                    tokio::time::sleep(tick).await;
                    if let Some(reason) = self.check_replica(&mut replica).await {
                        return Some(reason);
                    }
                    // The primary once a second: one cheap query.
                    if round & 1 == 0 {
                        return self.check_primary(&mut primary).await;
                    }
                    None
                };
                tokio::select! {
                    _ = stopped.cancelled() => return,
                    _ = tokio::time::sleep_until(deadline) => {
                        return abort.trigger(AbortReason::MaxPause(self.limits.max_pause));
                    }
                    found = check => {
                        if let Some(reason) = found {
                            return abort.trigger(reason);
                        }
                    }
                }
            }
        });
        stop
    }

    async fn check_replica(&self, client: &mut Option<Client>) -> Option<AbortReason> {
        let c = session(client, &self.replica_dsn).await?;
        let name = &self.replica;
        match read_state(c).await {
            Ok(st) if st.postmaster_start != self.snapshot.postmaster_start => {
                Some(AbortReason::SnapshotLost(format!(
                    "replica {name} restarted at {} (its pause was lost and replay went on)",
                    st.postmaster_start
                )))
            }
            Ok(st) if st.pause_state == PauseState::NotPaused => Some(AbortReason::SnapshotLost(
                format!("replica {name}: replay was resumed by another process during the pause"),
            )),
            Ok(st) if st.pause_state != PauseState::Paused => {
                Some(AbortReason::SnapshotLost(format!(
                    "replica {name} is no longer paused (state '{}')",
                    st.pause_state
                )))
            }
            Ok(st) if st.backlog_bytes as u64 > self.limits.max_replay_backlog => Some(
                AbortReason::Backlog(st.backlog_bytes as u64, self.limits.max_replay_backlog),
            ),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(error = %e, "watchdog could not read the replay state");
                None
            }
        }
    }

    async fn check_primary(&self, client: &mut Option<Client>) -> Option<AbortReason> {
        let c = session(client, &self.primary_dsn).await?;
        let waiting = match sync_standby::commits_waiting(c).await {
            Ok(0) => return None,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "watchdog could not read the primary's sessions");
                return None;
            }
        };
        let rows = sync_standby::standbys(c).await.ok()?;
        match sync_standby::standing(&self.identity, &rows) {
            Standing::Async => None,
            standing => Some(AbortReason::PrimaryBlocked(format!(
                "{waiting} commit(s) on the primary wait for a synchronous standby, and replica {} may be it ({})",
                self.replica,
                match standing {
                    Standing::Sync(state, how) => format!("{how}, sync_state={state}"),
                    Standing::Unknown(_) => "not told apart from the synchronous ones".into(),
                    _ => "sync_state hidden from pgmaint's role".into(),
                }
            ))),
        }
    }
}

/// Abort with [`AbortReason::MaxPause`] at `deadline` unless the returned token is
/// cancelled first.
pub fn arm_deadline(abort: Abort, deadline: Instant, max_pause: Duration) -> CancellationToken {
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = stopped.cancelled() => {}
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                abort.trigger(AbortReason::MaxPause(max_pause));
            }
        }
    });
    stop
}

/// The watchdog's session on `dsn`, opened (again) if need be.
async fn session<'a>(client: &'a mut Option<Client>, dsn: &Dsn) -> Option<&'a Client> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        *client = db::connect(dsn, "pgmaint-watchdog").await.ok();
    }
    client.as_ref()
}
