//! `[limits]`: the guards of a pause.

use std::time::Duration;

use serde::Deserialize;

use super::{duration, usage};
use crate::units::parse_bytes;
use crate::UsageError;

/// Limits that guard a pause.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest pause; over it the cycle aborts its scans and resumes.
    pub max_pause: Duration,
    /// Largest receive − replay backlog, in bytes.
    pub max_replay_backlog: u64,
    /// Lease on the primary; renewed every third of it.
    pub lease: Duration,
    /// How long to wait for `pg_get_wal_replay_pause_state()` to reach `paused`.
    pub pause_timeout: Duration,
    /// Failover candidates (`failover_priority > 0`) that must stay unpaused; `None`:
    /// the default ([`crate::pool::default_keep_unpaused`]), resolved by [`super::Config`].
    pub keep_unpaused: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    max_pause: Option<String>,
    max_replay_backlog: Option<String>,
    lease: Option<String>,
    pause_timeout: Option<String>,
    keep_unpaused: Option<usize>,
}

impl Limits {
    pub(super) fn from_raw(l: &RawLimits) -> Result<Limits, UsageError> {
        let limits = Limits {
            max_pause: duration(
                "limits.max_pause",
                &l.max_pause,
                Duration::from_secs(2 * 3600),
            )?,
            max_replay_backlog: match &l.max_replay_backlog {
                None => 8 << 30,
                Some(s) => {
                    parse_bytes(s).map_err(|e| usage(format!("limits.max_replay_backlog: {e}")))?
                }
            },
            lease: duration("limits.lease", &l.lease, Duration::from_secs(60))?,
            pause_timeout: duration(
                "limits.pause_timeout",
                &l.pause_timeout,
                Duration::from_secs(60),
            )?,
            keep_unpaused: l.keep_unpaused,
        };
        if limits.lease < Duration::from_secs(1) {
            return Err(usage("limits.lease: must be at least 1s"));
        }
        if limits.max_pause.is_zero() {
            return Err(usage("limits.max_pause: must be more than zero"));
        }
        Ok(limits)
    }
}
