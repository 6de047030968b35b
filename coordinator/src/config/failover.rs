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
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFailover {
    primary_down_after: Option<String>,
    max_replay_backlog: Option<String>,
    promote_timeout: Option<String>,
    follow_timeout: Option<String>,
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
        Ok(settings)
    }
}
