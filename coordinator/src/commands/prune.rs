//! `pgmaint prune --older-than DURATION [--dry-run] [--json]`: remove the result
//! directories (`results.dir/<run-id>/`) and the finished run records of runs that
//! ended before the cut-off, with what hangs off a record (its upload tasks, all
//! finished, and its findings).
//!
//! Never removed: a run still running or holding a replica lease; a run with an upload
//! task waiting or running (its files are still needed); the latest successful run of
//! each task (the newest `succeeded` run listing it, and the newest whose upload for it
//! completed: the one `pgmaint.current_findings` shows); a run a materialized target, a
//! task cursor or a swapped-out table still refers to; dump runs (`[[dumps]]` prune
//! their own directories with `keep`); a directory pgmaint cannot prove is the run's
//! (a name that is not a run id, no run record, a manifest of another run); and the
//! record of a run whose directory is on another host (its own prune removes both).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use snapshot_runner::results::ResultManifest;
use tokio_postgres::Client;

use crate::config::Config;
use crate::error_text::OneLine;
use crate::lease::{self, RunOutcome};
use crate::{db, schema, units};

/// The advisory lock key that makes prunes take turns (`pgmaint prune` in ASCII).
const PRUNE_LOCK: i64 = 0x7067_6d5f_7072_756e;

/// Findings deleted per transaction: a run with millions of them never holds locks
/// on the primary for long.
const FINDINGS_BATCH: i64 = 10_000;

/// The old runs, each with why it must stay (NULL: it may go). `$1`: the cut-off;
/// `$2`: one run id, or NULL for all.
const OLD_RUNS_SQL: &str = "
WITH latest_listed AS (
    SELECT DISTINCT ON (t.name) t.name AS task_name, r.id AS run_id
      FROM pgmaint.runs r CROSS JOIN LATERAL unnest(r.tasks) AS t(name)
     WHERE r.state = 'succeeded' AND r.purpose = 'run'
     ORDER BY t.name, r.id DESC
), latest_uploaded AS (
    SELECT DISTINCT ON (u.task_name) u.task_name, u.run_id
      FROM pgmaint.upload_tasks u JOIN pgmaint.runs r ON r.id = u.run_id
     WHERE u.state = 'completed' AND r.state = 'succeeded'
     ORDER BY u.task_name, r.snapshot_lsn DESC NULLS LAST, r.id DESC
), latest_findings AS (
    -- exactly the run pgmaint.current_findings shows for the task
    SELECT DISTINCT ON (u.task_name) u.task_name, u.run_id
      FROM pgmaint.upload_tasks u JOIN pgmaint.runs r ON r.id = u.run_id
     WHERE u.apply_kind = 'findings' AND u.state = 'completed' AND r.state = 'succeeded'
     ORDER BY u.task_name, r.snapshot_lsn DESC NULLS LAST, r.id DESC
), latest AS (
    SELECT * FROM latest_listed UNION SELECT * FROM latest_uploaded
    UNION SELECT * FROM latest_findings
)
SELECT r.id, r.state, r.holder, r.replica, r.snapshot_lsn::text, r.results_dir,
       r.started_at, coalesce(r.finished_at, r.started_at) AS ended_at,
       r.system_identifier, r.tasks,
       (SELECT count(*) FROM pgmaint.upload_tasks u WHERE u.run_id = r.id) AS uploads,
       CASE
         WHEN r.state = 'running' THEN 'it is still running'
         WHEN EXISTS (SELECT 1 FROM pgmaint.replica_leases l WHERE l.run_id = r.id)
           THEN 'it holds a replica lease'
         WHEN EXISTS (SELECT 1 FROM pgmaint.upload_tasks u
                       WHERE u.run_id = r.id AND u.state IN ('waiting', 'running'))
           THEN 'an upload task of it is waiting or running'
         WHEN EXISTS (SELECT 1 FROM latest l WHERE l.run_id = r.id)
           THEN 'it is the latest successful run of task(s) '
                || (SELECT string_agg(DISTINCT l.task_name, ', ') FROM latest l WHERE l.run_id = r.id)
         WHEN EXISTS (SELECT 1 FROM pgmaint.materializations m WHERE m.run_id = r.id)
           THEN 'a materialized target still shows its snapshot'
         WHEN EXISTS (SELECT 1 FROM pgmaint.task_cursors c WHERE c.run_id = r.id)
           THEN 'a task cursor still points at it'
         WHEN EXISTS (SELECT 1 FROM pgmaint.swapped_out s WHERE s.run_id = r.id)
           THEN 'a table its swap renamed away is still to be dropped'
       END AS keep
  FROM pgmaint.runs r
 WHERE r.purpose = 'run'
   AND coalesce(r.finished_at, r.started_at) < $1
   AND ($2::bigint IS NULL OR r.id = $2)
 ORDER BY r.id";

/// One old run record.
struct OldRun {
    id: i64,
    state: String,
    holder: String,
    replica: String,
    snapshot_lsn: Option<String>,
    results_dir: Option<String>,
    started_at: DateTime<Utc>,
    ended_at: DateTime<Utc>,
    system_identifier: Option<i64>,
    tasks: Vec<String>,
    uploads: i64,
    keep: Option<String>,
}

impl OldRun {
    fn from_row(r: &tokio_postgres::Row) -> OldRun {
        OldRun {
            id: r.get(0),
            state: r.get(1),
            holder: r.get(2),
            replica: r.get(3),
            snapshot_lsn: r.get(4),
            results_dir: r.get(5),
            started_at: r.get(6),
            ended_at: r.get(7),
            system_identifier: r.get(8),
            tasks: r.get(9),
            uploads: r.get(10),
            keep: r.get(11),
        }
    }

    /// The host part of `holder` (`host:pid`).
    fn host(&self) -> &str {
        self.holder
            .rsplit_once(':')
            .map_or(self.holder.as_str(), |(h, _)| h)
    }
}

/// What prune did (or, with `--dry-run`, would do).
#[derive(Debug, Serialize)]
pub struct PruneReport {
    /// `--dry-run`: nothing was changed.
    pub dry_run: bool,
    /// `--older-than`, as given.
    pub older_than: String,
    /// Runs that ended before this (the primary's clock) were considered.
    pub cutoff: DateTime<Utc>,
    /// The runs removed (or that would be).
    pub removed: Vec<Removed>,
    /// Old runs kept, and why.
    pub kept: Vec<Kept>,
    /// Directories in results.dir named like a run id that prune leaves alone, and why.
    pub kept_directories: Vec<KeptDirectory>,
    /// Removals that failed, each saying what was done and what is left (a later
    /// prune finishes it).
    pub errors: Vec<String>,
}

/// A run removed: its record, its upload tasks, its findings, its directory.
#[derive(Debug, Serialize)]
pub struct Removed {
    pub run_id: i64,
    pub state: String,
    pub ended_at: DateTime<Utc>,
    pub upload_tasks: i64,
    /// Findings removed (with `--dry-run`: at the time of the dry run).
    pub findings: i64,
    /// Its directory in results.dir, if it had one here.
    pub directory: Option<PathBuf>,
}

/// An old run kept.
#[derive(Debug, Serialize)]
pub struct Kept {
    pub run_id: i64,
    pub reason: String,
}

/// A directory left alone.
#[derive(Debug, Serialize)]
pub struct KeptDirectory {
    pub path: PathBuf,
    pub reason: String,
}

/// `pgmaint prune`.
pub async fn run(cfg: &Config, older_than: &str, dry_run: bool, json: bool) -> Result<ExitCode> {
    let age = units::parse_duration(older_than)
        .map_err(|e| crate::UsageError(format!("--older-than: {e}")))?;
    let mut primary = db::connect_at_start(&cfg.primary, "pgmaint").await?;
    schema::require_current(&primary).await?;
    if !dry_run {
        // One prune at a time: two would race for the same directories and findings.
        // A session lock on the primary, gone with the session if prune dies.
        let alone: bool = primary
            .query_one("SELECT pg_try_advisory_lock($1)", &[&PRUNE_LOCK])
            .await
            .context("taking prune's lock on the primary")?
            .get(0);
        if !alone {
            anyhow::bail!("another pgmaint prune is running against this primary: try again when it has finished");
        }
        // A dead run's lease expired: resume its pause and close it, as every command
        // does (a dry run changes nothing).
        crate::commands::recover::recover_in_passing(cfg).await;
    }
    let report = prune(cfg, &mut primary, older_than, age, dry_run).await?;
    use std::io::Write;
    let text = if json {
        format!("{}\n", serde_json::to_string_pretty(&report)?)
    } else {
        render(&report)
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    match report.errors.len() {
        0 => Ok(ExitCode::SUCCESS),
        n => Err(anyhow::anyhow!(
            "prune: {n} removal(s) failed: {}",
            report.errors.join("; ")
        )),
    }
}

/// Find what may go, and (unless `dry_run`) remove it, one run per transaction.
pub async fn prune(
    cfg: &Config,
    primary: &mut Client,
    older_than: &str,
    age: Duration,
    dry_run: bool,
) -> Result<PruneReport> {
    let cutoff: DateTime<Utc> = primary
        .query_one(
            "SELECT now() - make_interval(secs => $1)",
            &[&age.as_secs_f64()],
        )
        .await
        .context("reading the primary's clock")?
        .get(0);
    let rows = primary
        .query(OLD_RUNS_SQL, &[&cutoff, &None::<i64>])
        .await
        .context("reading old runs")?;
    let mut report = PruneReport {
        dry_run,
        older_than: older_than.to_string(),
        cutoff,
        removed: Vec::new(),
        kept: Vec::new(),
        kept_directories: Vec::new(),
        errors: Vec::new(),
    };
    let this_host = lease::holder();
    let this_host = this_host
        .rsplit_once(':')
        .map_or("", |(h, _)| h)
        .to_string();
    let mut known = std::collections::HashSet::new();
    for run in rows.iter().map(OldRun::from_row) {
        known.insert(run.id);
        let kept = |reason: String| Kept {
            run_id: run.id,
            reason,
        };
        if let Some(reason) = &run.keep {
            report.kept.push(kept(reason.clone()));
            continue;
        }
        let dir = cfg.results_dir.join(run.id.to_string());
        let directory = match prove(&dir, &run, &cfg.results_dir, &this_host) {
            Proof::Absent if run.host() != this_host => {
                report.kept.push(kept(format!(
                    "it ran on host {}: its directory, if any, is in that host's results.dir (prune there)",
                    run.host()
                )));
                continue;
            }
            Proof::Absent => None,
            Proof::Proven => Some(dir),
            Proof::Unproven(why) => {
                report.kept.push(kept(format!(
                    "{} is not provably its directory: {why}",
                    dir.display()
                )));
                continue;
            }
        };
        if dry_run {
            let findings: i64 = primary
                .query_one(
                    "SELECT count(*) FROM pgmaint.integrity_findings WHERE run_id = $1",
                    &[&run.id],
                )
                .await?
                .get(0);
            report.removed.push(Removed {
                run_id: run.id,
                state: run.state.clone(),
                ended_at: run.ended_at,
                upload_tasks: run.uploads,
                findings,
                directory,
            });
            continue;
        }
        match remove(primary, &run, cutoff, directory.as_deref()).await {
            Ok(Some(removed)) => {
                tracing::info!(run_id = run.id, "run removed");
                report.removed.push(removed);
            }
            Ok(None) => report.kept.push(kept(
                "it changed since it was read (an upload re-queued?)".into(),
            )),
            Err(e) => {
                let e = format!("run {}: {}", run.id, e.one_line());
                tracing::warn!(run_id = run.id, error = %e, "could not remove the run");
                report.errors.push(e);
            }
        }
    }
    for k in &report.kept {
        tracing::info!(run_id = k.run_id, "kept: {}", k.reason);
    }
    report.kept_directories = unclaimed_directories(cfg, primary, &known).await?;
    for d in &report.kept_directories {
        tracing::info!(dir = %d.path.display(), "left alone: {}", d.reason);
    }
    Ok(report)
}

/// Whether `dir` is provably run `run`'s directory.
enum Proof {
    /// There is nothing at that path.
    Absent,
    /// It is the run's.
    Proven,
    /// Something is there, but not provably the run's: why.
    Unproven(String),
}

fn prove(dir: &Path, run: &OldRun, results_dir: &Path, this_host: &str) -> Proof {
    let meta = match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Proof::Absent,
        Err(e) => return Proof::Unproven(e.to_string()),
        Ok(m) => m,
    };
    if !meta.is_dir() {
        return Proof::Unproven("not a directory".into());
    }
    let manifest = dir.join(snapshot_runner::results::MANIFEST_FILE);
    if manifest.exists() {
        // The run id alone does not prove it: ids start again when the schema is
        // recreated, and a results.dir may outlive it. The snapshot (LSN and cluster)
        // the record holds must be the manifest's; a record without a snapshot (the
        // run failed before its pause) never wrote a manifest, so one there is not its.
        return match ResultManifest::read(&manifest) {
            Ok(m)
                if m.run_id == run.id
                    && m.replica == run.replica
                    && run.snapshot_lsn.as_deref() == Some(m.snapshot.lsn.as_str())
                    && run
                        .system_identifier
                        .is_none_or(|s| s == m.snapshot.system_identifier) =>
            {
                Proof::Proven
            }
            Ok(_) => Proof::Unproven(format!(
                "its manifest.json is not run {}'s (run id, replica, snapshot LSN or system identifier differ)",
                run.id
            )),
            Err(e) => Proof::Unproven(format!("its manifest.json: {e}")),
        };
    }
    if RunOutcome::read(results_dir, run.id).is_some_and(|o| o.holder == run.holder) {
        return Proof::Proven;
    }
    // A run that succeeded recorded the directory it created (the cycle creates it with
    // create_dir, which fails on an existing one).
    if run.state == "succeeded" && run.results_dir.as_deref() == Some(&*dir.to_string_lossy()) {
        return Proof::Proven;
    }
    // A run that failed before its manifest: the directory it created (step 1 of the
    // cycle) after its record, on this host, holding nothing but its own tasks' data
    // files. A directory of another run with that id (an older schema) was there before
    // this run started (so this run could not create it), or holds a manifest.
    let created_after = meta
        .modified()
        .ok()
        .map(DateTime::<Utc>::from)
        .is_some_and(|m| m >= run.started_at);
    if run.host() == this_host && created_after && only_data_files_of(dir, &run.tasks) {
        return Proof::Proven;
    }
    Proof::Unproven(format!(
        "no manifest.json or outcome.json of run {}, and not a directory of its data files written on this host since it started",
        run.id
    ))
}

/// Every entry of `dir` is a regular file named like a data file of one of `tasks`
/// (`<task>.csv`, or `<task>.<table>.csv` for an export), or the manifest's temporary
/// file.
fn only_data_files_of(dir: &Path, tasks: &[String]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.into_iter().all(|e| {
        let Ok(e) = e else { return false };
        let name = e.file_name().to_string_lossy().into_owned();
        let regular = e.file_type().is_ok_and(|t| t.is_file());
        let ours = name == ".manifest.json.tmp"
            || (name.ends_with(".csv") && tasks.iter().any(|t| name.starts_with(&format!("{t}."))));
        regular && ours
    })
}

/// Remove run `run`, in this order, so that a prune stopped anywhere (killed, the
/// primary lost, a file it may not remove) loses nothing that should stay and leaves
/// what the next prune finishes:
/// 1. one transaction, with the run's record and upload tasks locked: the reasons to
///    keep it read again (it is left alone if one holds now), and its upload tasks
///    deleted (nothing can retry them and make it a task's latest run any more);
/// 2. its directory, the `manifest.json` (and `outcome.json`) last, so that what is
///    left of it is still provably the run's;
/// 3. its findings, in short transactions (a run may have millions);
/// 4. its record, which stays until the directory is gone.
async fn remove(
    primary: &mut Client,
    run: &OldRun,
    cutoff: DateTime<Utc>,
    dir: Option<&Path>,
) -> Result<Option<Removed>> {
    let tx = primary.transaction().await?;
    // Locks the run's upload tasks: a `tasks retry` waits, then finds them gone.
    tx.query(
        "SELECT 1 FROM pgmaint.upload_tasks WHERE run_id = $1 FOR UPDATE",
        &[&run.id],
    )
    .await?;
    tx.query(
        "SELECT 1 FROM pgmaint.runs WHERE id = $1 FOR UPDATE",
        &[&run.id],
    )
    .await?;
    let again = tx.query(OLD_RUNS_SQL, &[&cutoff, &Some(run.id)]).await?;
    if again
        .first()
        .is_none_or(|r| OldRun::from_row(r).keep.is_some())
    {
        return Ok(None);
    }
    tx.execute(
        "UPDATE pgmaint.task_slots SET run_id = NULL WHERE run_id = $1",
        &[&run.id],
    )
    .await?;
    let uploads = tx
        .execute(
            "DELETE FROM pgmaint.upload_tasks WHERE run_id = $1",
            &[&run.id],
        )
        .await?;
    tx.commit()
        .await
        .context("committing the removal of its upload tasks")?;
    let rest = || {
        format!(
            "its upload tasks are removed; its record{} stay until a later prune",
            if dir.is_some() {
                " and what is left of its directory"
            } else {
                ""
            }
        )
    };
    if let Some(dir) = dir {
        remove_run_dir(dir)
            .with_context(|| format!("removing {}", dir.display()))
            .with_context(rest)?;
    }
    let mut findings = 0u64;
    loop {
        let n = primary
            .execute(
                "DELETE FROM pgmaint.integrity_findings WHERE id IN
                   (SELECT id FROM pgmaint.integrity_findings WHERE run_id = $1 LIMIT $2)",
                &[&run.id, &FINDINGS_BATCH],
            )
            .await
            .with_context(rest)?;
        findings += n;
        if n < FINDINGS_BATCH as u64 {
            break;
        }
    }
    let tx = primary.transaction().await?;
    findings += tx
        .execute(
            "DELETE FROM pgmaint.integrity_findings WHERE run_id = $1",
            &[&run.id],
        )
        .await
        .with_context(rest)?;
    tx.execute("DELETE FROM pgmaint.runs WHERE id = $1", &[&run.id])
        .await
        .with_context(rest)?;
    tx.commit()
        .await
        .context("committing the removal")
        .with_context(rest)?;
    Ok(Some(Removed {
        run_id: run.id,
        state: run.state.clone(),
        ended_at: run.ended_at,
        upload_tasks: uploads as i64,
        findings: findings as i64,
        directory: dir.map(Path::to_path_buf),
    }))
}

/// Remove a run directory proven the run's: everything but its `outcome.json` and
/// `manifest.json` first, then those (the proof), then the directory itself.
fn remove_run_dir(dir: &Path) -> std::io::Result<()> {
    let proofs = [
        crate::lease::OUTCOME_FILE,
        snapshot_runner::results::MANIFEST_FILE,
    ];
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if proofs.iter().any(|p| entry.file_name() == *p) {
            continue;
        }
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    for p in proofs {
        match std::fs::remove_file(dir.join(p)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    std::fs::remove_dir(dir)
}

/// Directories of results.dir named like a run id whose run has no record on the
/// primary (not pgmaint's to remove); those of old runs are reported with their run.
async fn unclaimed_directories(
    cfg: &Config,
    primary: &Client,
    old: &std::collections::HashSet<i64>,
) -> Result<Vec<KeptDirectory>> {
    let entries = match std::fs::read_dir(&cfg.results_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(anyhow::anyhow!(
                "results.dir {}: {e}",
                cfg.results_dir.display()
            ))
        }
    };
    let mut ids = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        match name.parse::<i64>() {
            Ok(id) if id.to_string() == name && !old.contains(&id) => ids.push((id, entry.path())),
            Ok(_) => {}
            Err(_) => {
                tracing::debug!(entry = %entry.path().display(), "not a run directory; left alone")
            }
        }
    }
    let list: Vec<i64> = ids.iter().map(|(id, _)| *id).collect();
    let recorded: std::collections::HashSet<i64> = primary
        .query("SELECT id FROM pgmaint.runs WHERE id = ANY($1)", &[&list])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut kept: Vec<KeptDirectory> = ids
        .into_iter()
        .filter(|(id, _)| !recorded.contains(id))
        .map(|(_, path)| KeptDirectory {
            path,
            reason: "no run of that id is recorded on the primary".into(),
        })
        .collect();
    kept.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(kept)
}

/// The text report: one line per run removed, then a summary.
fn render(r: &PruneReport) -> String {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    let mut out = String::new();
    for x in &r.removed {
        let dir = x
            .directory
            .as_ref()
            .map(|d| format!(" and {}", d.display()))
            .unwrap_or_default();
        out.push_str(&format!(
            "{verb} run {} ({}, ended {}): its record, {} upload task(s), {} finding(s){dir}\n",
            x.run_id,
            x.state,
            x.ended_at.format("%Y-%m-%d %H:%M:%S UTC"),
            x.upload_tasks,
            x.findings,
        ));
    }
    let dirs = r.removed.iter().filter(|x| x.directory.is_some()).count();
    out.push_str(&format!(
        "{}: {} run(s) and {dirs} result directory(ies) {} that ended before {} (older than {}); \
         kept {} old run(s) and {} unclaimed directory(ies){}\n",
        if r.dry_run {
            "prune --dry-run"
        } else {
            "prune"
        },
        r.removed.len(),
        if r.dry_run { "would go" } else { "removed" },
        r.cutoff.format("%Y-%m-%d %H:%M:%S UTC"),
        r.older_than,
        r.kept.len(),
        r.kept_directories.len(),
        if r.kept.is_empty() && r.kept_directories.is_empty() {
            ""
        } else {
            " (why: --log info, or --json)"
        }
    ));
    out
}
