//! `[daemon]`: how `pgmaint daemon` schedules, leads and serves its metrics; and the
//! schedule fields (`every`, `at`) that tasks and dumps share.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::{duration, usage};
use crate::schedule::{self, CatchUp, Schedule};
use crate::units::parse_duration;
use crate::UsageError;

/// Daemon settings.
#[derive(Debug, Clone)]
pub struct DaemonSettings {
    /// `daemon.listen`: the HTTP endpoint (`/metrics`, `/health`); none when unset.
    pub listen: Option<SocketAddr>,
    /// `daemon.timezone`: the zone `at` expressions are read in. Default UTC.
    pub timezone: chrono_tz::Tz,
    /// `daemon.catch_up`: slots missed while no daemon ran get one run, or none.
    pub catch_up: CatchUp,
    /// `daemon.uploader`: run the upload worker in the daemon. Default true.
    pub uploader: bool,
    /// `daemon.leader_lease`: how long the scheduler's leadership lasts unrenewed (it
    /// is renewed every third of it); a second daemon takes over within it after the
    /// leader died. Default 30s.
    pub leader_lease: Duration,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    listen: Option<String>,
    timezone: Option<String>,
    catch_up: Option<String>,
    uploader: Option<bool>,
    leader_lease: Option<String>,
}

impl DaemonSettings {
    pub(super) fn from_raw(d: &RawDaemon) -> Result<DaemonSettings, UsageError> {
        let listen = d
            .listen
            .as_deref()
            .map(|l| {
                l.parse::<SocketAddr>().map_err(|_| {
                    usage(format!(
                        "daemon.listen: {l:?} is not an address:port such as \"127.0.0.1:9187\""
                    ))
                })
            })
            .transpose()?;
        let timezone = match &d.timezone {
            None => chrono_tz::UTC,
            Some(z) => {
                schedule::parse_timezone(z).map_err(|e| usage(format!("daemon.timezone: {e}")))?
            }
        };
        let catch_up = match &d.catch_up {
            None => CatchUp::One,
            Some(c) => c
                .parse()
                .map_err(|e| usage(format!("daemon.catch_up: {e}")))?,
        };
        let leader_lease = duration(
            "daemon.leader_lease",
            &d.leader_lease,
            Duration::from_secs(30),
        )?;
        if leader_lease < Duration::from_secs(1) {
            return Err(usage(
                "daemon.leader_lease: must be at least 1s (it is renewed every third of it)",
            ));
        }
        Ok(DaemonSettings {
            listen,
            timezone,
            catch_up,
            uploader: d.uploader.unwrap_or(true),
            leader_lease,
        })
    }
}

/// The schedule of a task or dump at `at` (`tasks[2]`), from its `every` and `at`
/// fields; `None` when it has neither (run only by hand).
pub(super) fn schedule_of(
    at: &str,
    every: &Option<String>,
    cron: &Option<String>,
    tz: chrono_tz::Tz,
) -> Result<Option<Schedule>, UsageError> {
    match (every, cron) {
        (Some(_), Some(_)) => Err(usage(format!(
            "{at}.at: give either every (an interval) or at (a cron expression), not both"
        ))),
        (Some(e), None) => {
            let d = parse_duration(e).map_err(|e| usage(format!("{at}.every: {e}")))?;
            if d < Duration::from_secs(1) {
                return Err(usage(format!("{at}.every: must be at least 1s")));
            }
            Ok(Some(Schedule::Every(d)))
        }
        (None, Some(c)) => {
            let cron = schedule::parse_cron(c).map_err(|e| usage(format!("{at}.at: {e}")))?;
            // "0 0 31 2 *" parses, and never comes.
            let now = chrono::Utc::now().with_timezone(&tz);
            if cron.find_next_occurrence(&now, false).is_err() {
                return Err(usage(format!("{at}.at: {c:?} never comes (no such date)")));
            }
            Ok(Some(Schedule::At(Box::new(cron), tz)))
        }
        (None, None) => Ok(None),
    }
}
