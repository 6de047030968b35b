//! `[[dumps]]`: named, scheduled dumps (`pgmaint daemon`, or `pgmaint dump --name`).

use std::path::PathBuf;

use serde::Deserialize;

use super::daemon::schedule_of;
use super::{usage, valid_name};
use crate::schedule::Schedule;
use crate::UsageError;

/// One `[[dumps]]` entry.
#[derive(Debug, Clone)]
pub struct DumpConfig {
    /// Unique among dumps and tasks (it names the dump's slots).
    pub name: String,
    /// Directory that holds this dump's runs, one subdirectory each
    /// (`<date>-run<id>`).
    pub out: PathBuf,
    /// `pg_dump -j`. Default 2.
    pub jobs: u32,
    /// When the daemon runs it; `None`: only by hand.
    pub schedule: Option<Schedule>,
    /// Complete dumps kept in `out` after a successful one; older ones are removed.
    pub keep: usize,
    /// The only replica this dump runs on; default: the pool's choice.
    pub replica: Option<String>,
    /// pg_dump to use; default: the one of the server's major version.
    pub pg_dump: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDump {
    name: Option<String>,
    out: Option<PathBuf>,
    jobs: Option<u32>,
    every: Option<String>,
    at: Option<String>,
    keep: Option<usize>,
    replica: Option<String>,
    pg_dump: Option<PathBuf>,
}

/// Every `[[dumps]]` entry, in config order.
pub(super) fn parse_dumps(
    raw: &[RawDump],
    tz: chrono_tz::Tz,
) -> Result<Vec<DumpConfig>, UsageError> {
    let mut dumps: Vec<DumpConfig> = Vec::new();
    for (i, d) in raw.iter().enumerate() {
        let at = format!("dumps[{i}]");
        let name = d
            .name
            .clone()
            .ok_or_else(|| usage(format!("{at}.name: missing")))?;
        if !valid_name(&name) {
            return Err(usage(format!(
                "{at}.name: {name:?} is not a valid dump name (1-63 letters, digits, - _ .)"
            )));
        }
        if dumps.iter().any(|x| x.name == name) {
            return Err(usage(format!("{at}.name: duplicate dump name {name:?}")));
        }
        let out = d
            .out
            .clone()
            .ok_or_else(|| usage(format!("{at}.out: missing (dump {name:?})")))?;
        if !out.is_absolute() {
            return Err(usage(format!(
                "{at}.out: {} must be an absolute path",
                out.display()
            )));
        }
        let jobs = d.jobs.unwrap_or(2);
        if jobs == 0 {
            return Err(usage(format!("{at}.jobs: must be at least 1")));
        }
        let keep = d.keep.unwrap_or(7);
        if keep == 0 {
            return Err(usage(format!(
                "{at}.keep: must be at least 1 (the dump just made is always kept)"
            )));
        }
        dumps.push(DumpConfig {
            schedule: schedule_of(&at, &d.every, &d.at, tz)?,
            name,
            out,
            jobs,
            keep,
            replica: d.replica.clone(),
            pg_dump: d.pg_dump.clone(),
        });
    }
    Ok(dumps)
}
