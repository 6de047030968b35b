//! A `[[dumps]]` entry's directory (`out`): one new subdirectory per run, and the
//! prune that keeps the newest `keep` complete dumps in it.
//!
//! A run's subdirectory is named by the UTC time it was claimed and its run id,
//! `20261130T021500Z-run42`. It is claimed once the cycle holds its lease (the run id
//! names it): the path is first recorded as the run's `results_dir` on the primary,
//! then the directory is created, empty. So every directory pgmaint creates there is on
//! record before it exists, even if pgmaint is killed a moment later.
//!
//! Traps worked around:
//! - `pg_dump -Fd` accepts an existing directory only if it is empty (any file in it,
//!   hidden or not, is "could not create directory"), so the ownership marker
//!   ([`MARKER_FILE`]: dump name and run id) cannot be written at creation; it is
//!   written when the run ends, on every path the process lives through.
//! - `out` may hold anything else an operator keeps there, or the dumps of another
//!   entry with the same `out`: pruning removes only what pgmaint can prove it wrote
//!   for this entry (see [`decide_prune`]), and never the directory of a run that is
//!   still `running` (another process may be writing it).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;
use uploader::RunState;

use snapshot_runner::ResultsMode;

use crate::config::DumpConfig;
use crate::UsageError;

/// The ownership marker pgmaint writes into a named dump's directory when its run ends.
pub const MARKER_FILE: &str = "pgmaint-dump.json";

const STAMP: &str = "%Y%m%dT%H%M%SZ";

/// What [`MARKER_FILE`] holds.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    dump: String,
    run_id: i64,
}

/// The name of run `run_id`'s subdirectory, claimed at `at`: `20261130T021500Z-run42`.
pub fn run_dir_name(at: DateTime<Utc>, run_id: i64) -> String {
    format!("{}-run{run_id}", at.format(STAMP))
}

/// The run id in a name [`run_dir_name`] made; `None` for any other name.
pub fn parse_run_dir_name(name: &str) -> Option<i64> {
    let (stamp, id) = name.split_once("-run")?;
    let at = NaiveDateTime::parse_from_str(stamp, STAMP).ok()?;
    let id: i64 = id.parse().ok()?;
    // Exactly the form pgmaint writes: no sign, no leading zeros, no odd widths.
    (id > 0 && run_dir_name(at.and_utc(), id) == name).then_some(id)
}

/// Create `out` if it is missing (its parent must exist), with `mode`'s directory bits;
/// an existing `out` is left as it is. Before the lease: a bad path costs no pause.
pub fn ensure_out(dump: &DumpConfig, mode: ResultsMode) -> Result<(), UsageError> {
    let out = &dump.out;
    let at = |what: String| {
        UsageError(format!(
            "dumps.out {} (dump {:?}): {what}",
            out.display(),
            dump.name
        ))
    };
    match std::fs::metadata(out) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => return Err(at("not a directory".into())),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(at(e.to_string())),
        Err(_) => {}
    }
    let parent = out.parent().unwrap_or(Path::new("/"));
    if !parent.is_dir() {
        return Err(at(format!(
            "parent directory {} does not exist",
            parent.display()
        )));
    }
    mode.create_dir(out)
        .map_err(|e| at(format!("cannot create it: {e}")))?;
    tracing::info!(dump = %dump.name, dir = %out.display(), "dump directory created");
    Ok(())
}

/// Claim run `run_id`'s subdirectory of `out`: record it as the run's `results_dir` on
/// the primary (the proof of ownership pruning checks), then create it, empty, with
/// `mode`'s directory bits.
pub async fn claim(
    primary: &Client,
    out: &Path,
    run_id: i64,
    mode: ResultsMode,
) -> Result<PathBuf> {
    let dir = out.join(run_dir_name(Utc::now(), run_id));
    let recorded = primary
        .execute(
            "UPDATE pgmaint.runs SET results_dir = $2 WHERE id = $1 AND state = $3",
            &[
                &run_id,
                &dir.display().to_string(),
                &RunState::Running.as_str(),
            ],
        )
        .await
        .context("recording the dump's directory on the primary")?;
    if recorded != 1 {
        bail!(
            "run {run_id} is no longer running on the primary; its dump directory was not created"
        );
    }
    mode.create_dir(&dir)
        .with_context(|| format!("creating the dump directory {}", dir.display()))?;
    tracing::info!(run_id, dir = %dir.display(), "dump directory claimed");
    Ok(dir)
}

/// Write the ownership marker (of `mode`) into a claimed directory.
pub fn write_marker(dir: &Path, dump: &str, run_id: i64, mode: ResultsMode) -> Result<()> {
    let marker = Marker {
        dump: dump.to_string(),
        run_id,
    };
    let path = dir.join(MARKER_FILE);
    mode.write(&path, &serde_json::to_vec_pretty(&marker)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// What the marker in a directory says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerSays {
    /// No marker (the run ended without one: killed, or the write failed).
    Absent,
    /// This dump's, of the run its name says.
    ThisDump,
    /// Another dump's or another run's, or unreadable: not this entry's to remove.
    Other,
}

/// A subdirectory of `out` whose name has pgmaint's pattern.
#[derive(Debug, Clone)]
pub struct DumpDir {
    /// Its name in `out`.
    pub name: String,
    /// The run id in its name.
    pub run_id: i64,
    /// What its marker says.
    pub marker: MarkerSays,
    /// The state of its run, if the primary holds a dump run of that id which recorded
    /// exactly this path; `None`: not provably pgmaint's.
    pub recorded: Option<RunState>,
    /// Nobody writes it any more: its marker is there (the run that made it ended), or
    /// it has not changed for longer than a dump may run (`limits.max_pause`). A run
    /// dropped because its coordinator stalled may still have a pg_dump writing.
    pub quiet: bool,
}

/// Why a directory is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// A complete dump with `keep` newer complete ones.
    BeyondKeep,
    /// Its run did not succeed (failed, aborted, invalid, cancelled, dropped).
    NotSucceeded(RunState),
}

impl std::fmt::Display for Removal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Removal::BeyondKeep => f.write_str("older than the dumps kept"),
            Removal::NotSucceeded(state) => write!(f, "its run ended {state}"),
        }
    }
}

/// Which directories to remove, in the order to remove them: those whose run did not
/// succeed, then complete dumps beyond the `keep` newest (by run id), oldest first.
///
/// Never a directory without the primary's record (`recorded: None`), of a run still
/// `running`, or whose marker names another dump or run. A succeeded run's directory
/// without a marker is kept and not counted: nothing says which entry it belongs to.
pub fn decide_prune(dirs: &[DumpDir], keep: usize) -> Vec<(&str, Removal)> {
    let mut remove = Vec::new();
    let mut complete: Vec<&DumpDir> = Vec::new();
    for d in dirs {
        match (d.recorded, d.marker) {
            (None, _) | (_, MarkerSays::Other) | (Some(RunState::Running), _) => {}
            (Some(RunState::Succeeded), MarkerSays::ThisDump) => complete.push(d),
            (Some(RunState::Succeeded), MarkerSays::Absent) => {}
            (Some(_), _) if !d.quiet => {}
            (Some(state), _) => remove.push((d.name.as_str(), Removal::NotSucceeded(state))),
        }
    }
    remove.sort_by_key(|(name, _)| parse_run_dir_name(name));
    complete.sort_by_key(|d| std::cmp::Reverse(d.run_id));
    let beyond = complete.iter().skip(keep).rev();
    remove.extend(beyond.map(|d| (d.name.as_str(), Removal::BeyondKeep)));
    remove
}

/// After a successful run of `dump`: remove what [`decide_prune`] says, logging each
/// removal. Returns the directories removed.
pub async fn prune(
    primary: &Client,
    dump: &DumpConfig,
    settle: std::time::Duration,
) -> Result<Vec<PathBuf>> {
    let dirs = survey(primary, dump, settle).await?;
    let mut removed = Vec::new();
    for (name, why) in decide_prune(&dirs, dump.keep) {
        let path = dump.out.join(name);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(dump = %dump.name, dir = %path.display(), reason = %why, "old dump removed");
                removed.push(path);
            }
            Err(e) => {
                tracing::warn!(dump = %dump.name, dir = %path.display(), error = %e, "could not remove an old dump")
            }
        }
    }
    Ok(removed)
}

/// The subdirectories of `out` with pgmaint's pattern, and what their markers and the
/// primary say of them.
async fn survey(
    primary: &Client,
    dump: &DumpConfig,
    settle: std::time::Duration,
) -> Result<Vec<DumpDir>> {
    let entries =
        std::fs::read_dir(&dump.out).with_context(|| format!("reading {}", dump.out.display()))?;
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dump.out.display()))?;
        // Not followed: a symlink is never a dump pgmaint made.
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let name = entry.file_name().to_str().map(str::to_string);
        let Some((name, run_id)) = name
            .filter(|_| is_dir)
            .and_then(|n| parse_run_dir_name(&n).map(|id| (n, id)))
        else {
            tracing::debug!(entry = %entry.path().display(), "not a pgmaint dump; left alone");
            continue;
        };
        let marker = read_marker(&entry.path(), &dump.name, run_id);
        let quiet = marker != MarkerSays::Absent || unchanged_for(&entry.path(), settle);
        dirs.push(DumpDir {
            name,
            run_id,
            marker,
            recorded: None,
            quiet,
        });
    }
    let ids: Vec<i64> = dirs.iter().map(|d| d.run_id).collect();
    let rows = primary
        .query(
            "SELECT id, state, results_dir FROM pgmaint.runs WHERE id = ANY($1) AND purpose = $2",
            &[&ids, &"dump"],
        )
        .await
        .context("reading the dumps' runs on the primary")?;
    for d in &mut dirs {
        let path = dump.out.join(&d.name).display().to_string();
        let row = rows.iter().find(|r| r.get::<_, i64>(0) == d.run_id);
        d.recorded = row
            .filter(|r| r.get::<_, Option<String>>(2).as_deref() == Some(path.as_str()))
            .and_then(|r| RunState::parse(r.get(1)));
        if d.recorded.is_none() {
            tracing::debug!(dir = %path, "no dump run on the primary recorded this directory; left alone");
        }
    }
    Ok(dirs)
}

/// Nothing in `dir` (or `dir` itself) changed for `settle`.
fn unchanged_for(dir: &Path, settle: std::time::Duration) -> bool {
    let newest = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .chain(std::fs::metadata(dir).ok().and_then(|m| m.modified().ok()))
        .max();
    newest.is_some_and(|t| t.elapsed().is_ok_and(|age| age > settle))
}

fn read_marker(dir: &Path, dump: &str, run_id: i64) -> MarkerSays {
    match std::fs::read(dir.join(MARKER_FILE)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => MarkerSays::Absent,
        Err(_) => MarkerSays::Other,
        Ok(bytes) => match serde_json::from_slice::<Marker>(&bytes) {
            Ok(m) if m.dump == dump && m.run_id == run_id => MarkerSays::ThisDump,
            _ => MarkerSays::Other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_dir_names_round_trip_and_nothing_else_parses() {
        let at = DateTime::parse_from_rfc3339("2026-11-30T02:15:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(run_dir_name(at, 42), "20261130T021500Z-run42");
        assert_eq!(parse_run_dir_name("20261130T021500Z-run42"), Some(42));
        for foreign in [
            "20261130T021500Z-run042",
            "20261130T021500Z-run+42",
            "20261130T021500Z-run-42",
            "20261130T021500Z-run",
            "20261130T021500-run42",
            "20261331T021500Z-run42",
            "20261130T021500Z-run42.old",
            "x20261130T021500Z-run42",
            "backup",
            "",
        ] {
            assert_eq!(parse_run_dir_name(foreign), None, "{foreign:?}");
        }
    }

    fn settled(d: DumpDir) -> DumpDir {
        DumpDir { quiet: true, ..d }
    }

    fn dir(run_id: i64, marker: MarkerSays, recorded: Option<RunState>) -> DumpDir {
        DumpDir {
            name: format!("20261130T0{run_id:05}Z-run{run_id}"),
            run_id,
            marker,
            recorded,
            quiet: marker != MarkerSays::Absent,
        }
    }

    /// What, the directories, keep, and the (run id, reason) removed in order.
    type Case = (&'static str, Vec<DumpDir>, usize, Vec<(i64, Removal)>);

    #[test]
    fn prune_removes_what_pgmaint_wrote_beyond_keep_and_unsucceeded_only() {
        use MarkerSays::*;
        use RunState::*;
        let ok = |id| dir(id, ThisDump, Some(Succeeded));
        let cases: Vec<Case> = vec![
            ("nothing beyond keep", vec![ok(1), ok(2)], 2, vec![]),
            (
                "complete dumps beyond keep, oldest first",
                vec![ok(3), ok(1), ok(4), ok(2)],
                2,
                vec![(1, Removal::BeyondKeep), (2, Removal::BeyondKeep)],
            ),
            (
                "every run that did not succeed, marker or not (unchanged for long without one)",
                vec![
                    ok(9),
                    dir(1, ThisDump, Some(Failed)),
                    settled(dir(2, Absent, Some(Aborted))),
                    dir(3, ThisDump, Some(Invalid)),
                    settled(dir(4, Absent, Some(Cancelled))),
                    settled(dir(5, Absent, Some(Dropped))),
                ],
                1,
                vec![
                    (1, Removal::NotSucceeded(Failed)),
                    (2, Removal::NotSucceeded(Aborted)),
                    (3, Removal::NotSucceeded(Invalid)),
                    (4, Removal::NotSucceeded(Cancelled)),
                    (5, Removal::NotSucceeded(Dropped)),
                ],
            ),
            (
                "never a running run's, even beyond keep",
                vec![
                    ok(3),
                    dir(1, ThisDump, Some(Running)),
                    dir(2, Absent, Some(Running)),
                ],
                1,
                vec![],
            ),
            (
                "never without the primary's record",
                vec![ok(3), dir(1, ThisDump, None), dir(2, Absent, None)],
                1,
                vec![],
            ),
            (
                "never another dump's, nor counted",
                vec![
                    ok(5),
                    dir(1, Other, Some(Succeeded)),
                    dir(2, Other, Some(Failed)),
                    ok(3),
                ],
                2,
                vec![],
            ),
            (
                "a dropped run's directory without a marker, changed lately: a pg_dump may still write it",
                vec![ok(9), dir(5, Absent, Some(Dropped)), dir(6, Absent, Some(Aborted))],
                1,
                vec![],
            ),
            (
                "a succeeded run without a marker is neither removed nor counted",
                vec![ok(5), dir(4, Absent, Some(Succeeded)), ok(3)],
                2,
                vec![],
            ),
        ];
        for (what, dirs, keep, want) in cases {
            let want: Vec<(String, Removal)> = want
                .into_iter()
                .map(|(id, why)| {
                    (
                        dirs.iter().find(|d| d.run_id == id).unwrap().name.clone(),
                        why,
                    )
                })
                .collect();
            let got: Vec<(String, Removal)> = decide_prune(&dirs, keep)
                .into_iter()
                .map(|(n, why)| (n.to_string(), why))
                .collect();
            assert_eq!(got, want, "{what}");
        }
    }
}
