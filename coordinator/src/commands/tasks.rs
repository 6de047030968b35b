//! `pgmaint tasks list|show|cancel|retry`: the operator's view of the upload queue.

use std::process::ExitCode;

use anyhow::Result;
use uploader::{CancelOutcome, ResultsHost, TaskRow, UploadError, UploadState};

use crate::cli::TasksCommand;
use crate::config::{Config, ANY_HOST};
use crate::{db, schema, UsageError};

/// Operator errors (unknown id, wrong state, bad --state) exit with code 2; a retry
/// blocked by a failed prerequisite is a runtime condition (exit 1).
fn queue_error(e: UploadError) -> anyhow::Error {
    match e {
        UploadError::Refused(msg) => anyhow::anyhow!(UsageError(msg)),
        other => anyhow::anyhow!(other),
    }
}

/// `pgmaint tasks …`.
pub async fn run(cfg: &Config, cmd: TasksCommand) -> Result<ExitCode> {
    let mut primary = db::connect_at_start(&cfg.primary, "pgmaint").await?;
    schema::require_current(&primary).await?;
    match cmd {
        TasksCommand::List {
            state,
            run,
            limit,
            json,
        } => {
            let state = state
                .map(|s| s.parse::<UploadState>())
                .transpose()
                .map_err(|e| UsageError(format!("--state: {e}")))?;
            let rows = uploader::list_tasks(&primary, state, run, limit)
                .await
                .map_err(queue_error)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", render_list(&rows));
            }
        }
        TasksCommand::Show { id, json } => {
            let t = uploader::get_task(&primary, id)
                .await
                .map_err(queue_error)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                print!("{}", render_one(&t));
            }
        }
        TasksCommand::Cancel { id, json } => {
            let outcome = uploader::cancel_task(&primary, id)
                .await
                .map_err(queue_error)?;
            if json {
                println!("{}", serde_json::json!({ "id": id, "outcome": outcome }));
            } else {
                match outcome {
                    CancelOutcome::Cancelled => println!("upload task {id} cancelled"),
                    CancelOutcome::Requested => {
                        println!("upload task {id} is running: cancel requested; its worker stops it at its next heartbeat")
                    }
                }
            }
        }
        TasksCommand::Retry { id, on_host, json } => {
            let on_host = on_host.map(|h| destination(cfg, &h)).transpose()?;
            let ids = uploader::retry_task(&mut primary, id, on_host.as_ref())
                .await
                .map_err(queue_error)?;
            let host = on_host.as_ref().map(|h| h.column());
            if json {
                let mut out = serde_json::json!({ "id": id, "requeued": ids });
                if let Some(host) = host {
                    out["host"] = serde_json::json!(host);
                }
                println!("{out}");
            } else {
                let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
                match &on_host {
                    None => println!("upload task(s) {} back to waiting", list.join(", ")),
                    Some(h) => println!("upload task(s) {} waiting for {h}", list.join(", ")),
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--on-host HOST`: a host name, or `any` (a NULL host: any uploader), which only a
/// config with `results.shared = true` may ask for.
fn destination(cfg: &Config, host: &str) -> Result<ResultsHost> {
    if host.trim().is_empty() {
        anyhow::bail!(UsageError("--on-host: empty host name".into()));
    }
    if host != ANY_HOST {
        return Ok(ResultsHost::Named(host.to_string()));
    }
    if !cfg.results_shared {
        anyhow::bail!(UsageError(format!(
            "--on-host {ANY_HOST}: only with results.shared = true (every uploader must read the files); \
             name the host whose results.dir holds a copy of them"
        )));
    }
    Ok(ResultsHost::Shared)
}

/// The `host` column as shown: `any` for a NULL host (shared storage).
fn host_text(host: &Option<String>) -> &str {
    host.as_deref().unwrap_or(ANY_HOST)
}

fn ago(t: chrono::DateTime<chrono::Utc>) -> String {
    let s = (chrono::Utc::now() - t).num_seconds();
    match s {
        i64::MIN..=-1 => format!("in {}s", -s),
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        7200..=172_799 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

fn one_line(s: &str, max: usize) -> String {
    let s = s.replace('\n', " ");
    if s.chars().count() <= max {
        s
    } else {
        format!("{}…", s.chars().take(max - 1).collect::<String>())
    }
}

/// Errors start with `upload task N (run R, task T): `; the table already says that.
fn strip_task_prefix(e: &str) -> &str {
    match (e.starts_with("upload task "), e.find("): ")) {
        (true, Some(i)) => &e[i + 3..],
        _ => e,
    }
}

fn render_list(rows: &[TaskRow]) -> String {
    if rows.is_empty() {
        return "no upload tasks\n".into();
    }
    let mut out = format!(
        "{:>6} {:>6} {:<20} {:<8} {:<10} {:<12} {:>8} {:>10} {:<10} {}\n",
        "ID",
        "RUN",
        "TASK",
        "KIND",
        "STATE",
        "HOST",
        "ATTEMPTS",
        "ROWS",
        "UPDATED",
        "TARGET / LAST ERROR / WORKER"
    );
    for t in rows {
        let updated = t
            .finished_at
            .or(t.heartbeat_at)
            .or(t.started_at)
            .unwrap_or(t.created_at);
        let note = match (&t.last_error, &t.target) {
            _ if t.state == UploadState::Running => format!(
                "{} (lease {}{})",
                t.worker.as_deref().unwrap_or("-"),
                t.lease_expires_at.map(ago).unwrap_or_else(|| "-".into()),
                if t.cancel_requested {
                    ", cancel requested"
                } else {
                    ""
                }
            ),
            (Some(e), _) if t.state != UploadState::Completed => one_line(strip_task_prefix(e), 70),
            (_, Some(target)) => target.clone(),
            _ => String::new(),
        };
        out.push_str(&format!(
            "{:>6} {:>6} {:<20} {:<8} {:<10} {:<12} {:>8} {:>10} {:<10} {}\n",
            t.id,
            t.run_id,
            one_line(&t.task_name, 20),
            t.apply_kind,
            t.state,
            one_line(host_text(&t.host), 12),
            format!("{}/{}", t.attempts, t.max_attempts),
            t.rows_applied
                .map(|r| r.to_string())
                .unwrap_or_else(|| "-".into()),
            ago(updated),
            note
        ));
    }
    out
}

fn render_one(t: &TaskRow) -> String {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let time = |v: Option<chrono::DateTime<chrono::Utc>>| {
        opt(v.map(|t| format!("{} ({})", t.format("%Y-%m-%d %H:%M:%S%.3f UTC"), ago(t))))
    };
    let deps: Vec<String> = t.depends_on.iter().map(|d| d.to_string()).collect();
    format!(
        "upload task {id}\n  run:              {run}\n  task:             {name}\n  kind:             {kind}\n  target:           {target}\n  state:            {state}{cancel}\n  host:             {host}\n  attempts:         {a}/{m}\n  not before:       {nb}\n  depends on:       {deps}\n  worker:           {worker}\n  lease expires:    {lease}\n  last heartbeat:   {hb}\n  rows applied:     {rows}\n  file:             {file}\n  manifest:         {manifest}\n  params:           {params}\n  created:          {created}\n  started:          {started}\n  finished:         {finished}\n  last error:       {err}\n",
        id = t.id,
        run = t.run_id,
        name = t.task_name,
        kind = t.apply_kind,
        target = opt(t.target.clone()),
        state = t.state,
        cancel = if t.cancel_requested && t.state == UploadState::Running { " (cancel requested)" } else { "" },
        host = match &t.host {
            Some(h) => h.clone(),
            None => format!("{ANY_HOST} (shared results.dir)"),
        },
        a = t.attempts,
        m = t.max_attempts,
        nb = time(Some(t.not_before)),
        deps = if deps.is_empty() { "-".into() } else { deps.join(", ") },
        worker = opt(t.worker.clone()),
        lease = time(t.lease_expires_at),
        hb = time(t.heartbeat_at),
        rows = opt(t.rows_applied.map(|r| r.to_string())),
        file = t.file,
        manifest = t.manifest,
        params = t.params,
        created = time(Some(t.created_at)),
        started = time(t.started_at),
        finished = time(t.finished_at),
        err = opt(t.last_error.clone()),
    )
}
