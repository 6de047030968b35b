//! `pgmaint run`: one cycle (pause, scan, queue uploads, resume), and the summary a
//! cycle prints (shared with `pgmaint dump`).

use std::process::ExitCode;

use anyhow::Result;

use crate::abort::Abort;
use crate::config::{Config, ReplicaConfig, TaskConfig};
use crate::{cycle, db, pool, signals, units, UsageError};

/// `pgmaint run [--task NAME]... [--replica NAME] [--json]`: one cycle per replica the
/// tasks go to (tasks pinned with `tasks[].replica` run on theirs, the others on the
/// one `--replica` names or the pool chooses), one after the other.
pub async fn run(
    cfg: &Config,
    tasks: &[String],
    replica: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    let tasks = cfg.select_tasks(tasks)?;
    let groups = by_replica(cfg, &tasks, replica)?;
    let abort = Abort::default();
    signals::abort_on_signals(abort.clone());
    let mut summaries = Vec::new();
    for (pinned, tasks) in &groups {
        if abort.reason().is_some() {
            break;
        }
        let cycle = async {
            let replica = match pinned {
                Some(r) => *r,
                None => pick_replica(cfg).await?,
            };
            cycle::run(cfg, replica, cycle::Work::Tasks(tasks), abort.clone()).await
        };
        match cycle.await {
            Ok(summary) => summaries.push(summary),
            // The cycles that ran are reported all the same (with --json: one document
            // on stdout), then this error.
            Err(e) if !summaries.is_empty() => {
                if let Err(earlier) = report_cycles(&summaries, json) {
                    let _ = std::io::Write::write_fmt(
                        &mut std::io::stderr(),
                        format_args!(
                            "pgmaint: error: {}\n",
                            crate::error_text::OneLine::one_line(&earlier)
                        ),
                    );
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        }
    }
    report_cycles(&summaries, json)
}

/// The replica for a cycle: the only one, or the pool's choice.
pub(crate) async fn pick_replica(cfg: &Config) -> Result<&ReplicaConfig> {
    if cfg.replicas.len() == 1 {
        // Pausing it is the point; the cycle's own checks say why it cannot be.
        return Ok(&cfg.replicas[0]);
    }
    let primary = db::connect_at_start(&cfg.primary, "pgmaint").await?;
    let all: Vec<&ReplicaConfig> = cfg.replicas.iter().collect();
    pool::choose_replica(cfg, &primary, &all).await
}

/// Tasks that run in one cycle, on their replica (`None`: the pool's choice).
type Group<'c> = (Option<&'c ReplicaConfig>, Vec<&'c TaskConfig>);

/// The selected tasks by the replica they run on.
fn by_replica<'c>(
    cfg: &'c Config,
    tasks: &[&'c TaskConfig],
    replica: Option<&str>,
) -> Result<Vec<Group<'c>>, UsageError> {
    let named = replica.map(|n| cfg.replica(Some(n))).transpose()?;
    let mut groups: Vec<Group> = Vec::new();
    for t in tasks {
        let pin = match (&t.replica, named) {
            (Some(p), Some(n)) if p != &n.name => {
                return Err(UsageError(format!(
                    "--replica {}: task {:?} is pinned to replica {p} (tasks[].replica)",
                    n.name, t.name
                )))
            }
            (Some(p), _) => Some(cfg.replica(Some(p))?),
            (None, n) => n,
        };
        match groups
            .iter_mut()
            .find(|(r, _)| r.map(|r| &r.name) == pin.map(|p| &p.name))
        {
            Some((_, list)) => list.push(t),
            None => groups.push((pin, vec![*t])),
        }
    }
    Ok(groups)
}

/// Print the summaries of the cycles a command ran (one JSON document with `--json`:
/// the summary, or an array of them); the exit code of the worst.
pub fn report_cycles(summaries: &[cycle::RunSummary], json: bool) -> Result<ExitCode> {
    use std::io::Write;
    if json && summaries.len() > 1 {
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            serde_json::to_string_pretty(summaries)?
        );
    }
    let mut failures = Vec::new();
    for s in summaries {
        let single = summaries.len() == 1;
        if let Err(e) = report_cycle(s, json && single, !json) {
            failures.push(e);
        }
    }
    let last = failures.pop();
    for e in failures {
        let _ = writeln!(
            std::io::stderr(),
            "pgmaint: error: {}",
            crate::error_text::OneLine::one_line(&e)
        );
    }
    match last {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// Print a cycle's summary (as JSON with `json`, as text with `text`); its exit code.
pub fn report_cycle(summary: &cycle::RunSummary, json: bool, text: bool) -> Result<ExitCode> {
    use std::io::Write;
    // After a SIGHUP the terminal may be gone: the outcome is on the primary already,
    // so a failed write here is not worth a panic.
    let out = if json {
        format!("{}\n", serde_json::to_string_pretty(summary)?)
    } else if text {
        render_summary(summary)
    } else {
        String::new()
    };
    let _ = std::io::stdout().write_all(out.as_bytes());
    match &summary.error {
        Some(e) => Err(summary
            .error_class
            .error(format!("run {}: {e}", summary.run_id))),
        None if summary.ok() => Ok(ExitCode::SUCCESS),
        None => Err(anyhow::anyhow!("run {}: {}", summary.run_id, summary.state)),
    }
}

fn render_summary(s: &cycle::RunSummary) -> String {
    let mut out = format!("run {} on replica {}: {}\n", s.run_id, s.replica, s.state);
    if let Some(snap) = &s.snapshot {
        out.push_str(&format!(
            "snapshot LSN {} (timeline {}, system {})\n",
            snap.lsn, snap.timeline, snap.system_identifier
        ));
    }
    if let Some(p) = s.paused_at {
        let (end, secs) = match s.resumed_at {
            Some(r) => (
                r.format("%H:%M:%S%.3f").to_string(),
                format!("{:.1}s", (r - p).num_milliseconds() as f64 / 1000.0),
            ),
            None => ("NOT RESUMED".to_string(), "-".to_string()),
        };
        out.push_str(&format!(
            "pause window {} -> {} UTC ({secs}), backlog at resume {}\n",
            p.format("%Y-%m-%d %H:%M:%S%.3f"),
            end,
            s.backlog_at_resume
                .map(|b| units::human_bytes(b as u64))
                .unwrap_or_else(|| "-".into())
        ));
    }
    if !s.tasks.is_empty() {
        out.push_str(&format!(
            "{:<24} {:<14} {:<10} {:>12} {:>9} {:>9}\n",
            "TASK", "KIND", "STATUS", "ROWS", "FINDINGS", "TIME"
        ));
        for (t, secs) in s.tasks.iter().zip(&s.task_seconds) {
            out.push_str(&format!(
                "{:<24} {:<14} {:<10} {:>12} {:>9} {:>8.1}s\n",
                t.name, t.kind, t.status, t.rows_scanned, t.findings, secs
            ));
        }
    }
    if let Some(dir) = &s.results_dir {
        out.push_str(&format!("results: {}\n", dir.display()));
    }
    if !s.queued.is_empty() {
        out.push_str(&format!(
            "queued {} upload task(s) on the primary\n",
            s.queued.len()
        ));
    }
    out
}
