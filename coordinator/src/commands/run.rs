//! `pgmaint run`: one cycle (pause, scan, queue uploads, resume), and the summary a
//! cycle prints (shared with `pgmaint dump`).

use std::process::ExitCode;

use anyhow::Result;

use crate::abort::Abort;
use crate::config::Config;
use crate::{cycle, signals, units};

/// `pgmaint run [--task NAME]... [--replica NAME] [--json]`.
pub async fn run(
    cfg: &Config,
    tasks: &[String],
    replica: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    let replica = cfg.replica(replica)?;
    let tasks = cfg.select_tasks(tasks)?;
    let abort = Abort::default();
    signals::abort_on_signals(abort.clone());
    let summary = cycle::run(cfg, replica, cycle::Work::Tasks(&tasks), abort).await?;
    report_cycle(&summary, json)
}

/// Print a cycle's summary; its exit code.
pub fn report_cycle(summary: &cycle::RunSummary, json: bool) -> Result<ExitCode> {
    use std::io::Write;
    // After a SIGHUP the terminal may be gone: the outcome is on the primary already,
    // so a failed write here is not worth a panic.
    let text = if json {
        format!("{}\n", serde_json::to_string_pretty(summary)?)
    } else {
        render_summary(summary)
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
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
