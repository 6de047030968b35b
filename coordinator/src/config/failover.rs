//! `[failover]`: how `pgmaint promote` decides that the primary is gone, and how long
//! it waits for each step of a failover.

use std::time::Duration;

use serde::Deserialize;

use super::{duration, usage};
use crate::units::parse_bytes;
use crate::UsageError;

/// Failover settings.
#[derive(Debug, Clone)]
pub struct FailoverSettings {
    /// The primary counts as down only when no server pgmaint knows as the primary has
    /// accepted a connection, and no replica's WAL receiver has heard from one, for this
    /// long. Default 10s.
    pub primary_down_after: Duration,
    /// A candidate with more received-but-not-replayed WAL than this is refused without
    /// `--force`: it would replay all of it before accepting a write. Default 1GB.
    pub max_replay_backlog: u64,
    /// How long a promotion may take (`pg_promote` is asked once; pgmaint then polls
    /// `pg_is_in_recovery()`). Default 60s.
    pub promote_timeout: Duration,
    /// How long each other replica has to stream from the new primary. Default 30s.
    pub follow_timeout: Duration,
    /// `failover.automatic`: `pgmaint daemon` promotes on its own when the primary is
    /// down. Default false.
    pub automatic: bool,
    /// `failover.check_interval`: how often the daemon looks at the primary. Default 2s.
    pub check_interval: Duration,
    /// `failover.witness_command`: a shell command; exit 0 means "the primary is
    /// alive", and no failover happens.
    pub witness_command: Option<String>,
    /// `failover.fence_command`: a shell command run just before promoting, with the
    /// old primary's host and port in its environment; a non-zero exit aborts the
    /// failover.
    pub fence_command: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFailover {
    primary_down_after: Option<String>,
    max_replay_backlog: Option<String>,
    promote_timeout: Option<String>,
    follow_timeout: Option<String>,
    automatic: Option<bool>,
    check_interval: Option<String>,
    witness_command: Option<String>,
    fence_command: Option<String>,
}

impl FailoverSettings {
    pub(super) fn from_raw(f: &RawFailover) -> Result<FailoverSettings, UsageError> {
        let settings = FailoverSettings {
            primary_down_after: duration(
                "failover.primary_down_after",
                &f.primary_down_after,
                Duration::from_secs(10),
            )?,
            max_replay_backlog: match &f.max_replay_backlog {
                None => 1 << 30,
                Some(s) => parse_bytes(s)
                    .map_err(|e| usage(format!("failover.max_replay_backlog: {e}")))?,
            },
            promote_timeout: duration(
                "failover.promote_timeout",
                &f.promote_timeout,
                Duration::from_secs(60),
            )?,
            follow_timeout: duration(
                "failover.follow_timeout",
                &f.follow_timeout,
                Duration::from_secs(30),
            )?,
            automatic: f.automatic.unwrap_or(false),
            check_interval: duration(
                "failover.check_interval",
                &f.check_interval,
                Duration::from_secs(2),
            )?,
            witness_command: command("failover.witness_command", &f.witness_command)?,
            fence_command: command("failover.fence_command", &f.fence_command)?,
        };
        for (field, d) in [
            ("failover.primary_down_after", settings.primary_down_after),
            ("failover.promote_timeout", settings.promote_timeout),
            ("failover.follow_timeout", settings.follow_timeout),
        ] {
            if d < Duration::from_secs(1) {
                return Err(usage(format!("{field}: must be at least 1s")));
            }
        }
        if settings.check_interval < Duration::from_millis(100) {
            return Err(usage("failover.check_interval: must be at least 100ms"));
        }
        Ok(settings)
    }
}

/// A shell command field: not blank when given.
fn command(field: &str, v: &Option<String>) -> Result<Option<String>, UsageError> {
    match v {
        Some(c) if c.trim().is_empty() => {
            Err(usage(format!("{field}: empty (leave it out to have none)")))
        }
        other => Ok(other.clone()),
    }
}
