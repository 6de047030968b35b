//! `pgmaint status`: replicas, leases, recent runs, upload queue.

use std::process::ExitCode;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::commands::recover::recover_in_passing;
use crate::config::Config;
use crate::replica::{read_state, ReplayState};
use crate::units::human_bytes;
use crate::{db, schema};

/// `pgmaint status [--json]`.
pub async fn run(cfg: &Config, json: bool) -> Result<ExitCode> {
    let primary = db::connect_at_start(&cfg.primary, "pgmaint").await?;
    schema::require_current(&primary).await?;
    recover_in_passing(cfg).await;
    let status = gather(cfg, &primary).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(ExitCode::SUCCESS)
}

/// One replica's line.
#[derive(Serialize)]
pub struct ReplicaStatus {
    name: String,
    reachable: bool,
    error: Option<String>,
    state: Option<ReplayState>,
    /// The run holding the lease, if any.
    lease_run: Option<i64>,
    lease_expires_at: Option<DateTime<Utc>>,
    /// When the pause of the leasing run was confirmed.
    paused_since: Option<DateTime<Utc>>,
}

/// One run's line.
#[derive(Serialize)]
pub struct RunLine {
    id: i64,
    replica: String,
    state: String,
    started_at: DateTime<Utc>,
    paused_at: Option<DateTime<Utc>>,
    resumed_at: Option<DateTime<Utc>>,
    snapshot_lsn: Option<String>,
    backlog_at_resume: Option<i64>,
    tasks: Vec<String>,
    error: Option<String>,
}

/// Everything `status` shows.
#[derive(Serialize)]
pub struct Status {
    replicas: Vec<ReplicaStatus>,
    runs: Vec<RunLine>,
    queue: std::collections::BTreeMap<String, i64>,
}

/// Gather the status.
pub async fn gather(cfg: &Config, primary: &Client) -> Result<Status> {
    let mut replicas = Vec::new();
    for r in &cfg.replicas {
        let lease = primary
            .query_opt(
                "SELECT l.run_id, l.expires_at, r.paused_at FROM pgmaint.replica_leases l
                   JOIN pgmaint.runs r ON r.id = l.run_id WHERE l.replica = $1",
                &[&r.name],
            )
            .await?;
        let (state, error) = match db::connect(&r.dsn, "pgmaint-status").await {
            Ok(c) => match read_state(&c).await {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(e.to_string())),
            },
            Err(e) => (None, Some(e.0)),
        };
        replicas.push(ReplicaStatus {
            name: r.name.clone(),
            reachable: state.is_some(),
            error,
            state,
            lease_run: lease.as_ref().map(|l| l.get(0)),
            lease_expires_at: lease.as_ref().map(|l| l.get(1)),
            paused_since: lease.as_ref().and_then(|l| l.get(2)),
        });
    }
    let runs = primary
        .query(
            "SELECT id, replica, state, started_at, paused_at, resumed_at, snapshot_lsn::text,
                    backlog_at_resume, tasks, error
               FROM pgmaint.runs ORDER BY id DESC LIMIT 10",
            &[],
        )
        .await?
        .iter()
        .map(|r| RunLine {
            id: r.get(0),
            replica: r.get(1),
            state: r.get(2),
            started_at: r.get(3),
            paused_at: r.get(4),
            resumed_at: r.get(5),
            snapshot_lsn: r.get(6),
            backlog_at_resume: r.get(7),
            tasks: r.get(8),
            error: r.get(9),
        })
        .collect();
    let mut queue = std::collections::BTreeMap::new();
    for s in uploader::UploadState::ALL {
        queue.insert(s.as_str().to_string(), 0);
    }
    for row in primary
        .query(
            "SELECT state, count(*) FROM pgmaint.upload_tasks GROUP BY state",
            &[],
        )
        .await?
    {
        queue.insert(row.get(0), row.get(1));
    }
    Ok(Status {
        replicas,
        runs,
        queue,
    })
}

fn ts(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

/// Human-readable rendering.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    out.push_str("REPLICAS\n");
    out.push_str(&format!(
        "  {:<10} {:<16} {:<10} {:>12} {:<14} {:<14} {}\n",
        "NAME", "REPLAY", "WALRECV", "BACKLOG", "RECEIVE LSN", "REPLAY LSN", "LEASE"
    ));
    for r in &s.replicas {
        let lease = match (r.lease_run, r.lease_expires_at) {
            (Some(id), Some(exp)) if exp < Utc::now() => format!(
                "run {id} DEAD (lease expired {}): run `pgmaint recover`",
                ts(Some(exp))
            ),
            (Some(id), _) => format!("run {id}, paused since {}", ts(r.paused_since)),
            _ => "-".into(),
        };
        match &r.state {
            Some(st) => out.push_str(&format!(
                "  {:<10} {:<16} {:<10} {:>12} {:<14} {:<14} {}\n",
                r.name,
                st.pause_state,
                st.walreceiver.as_deref().unwrap_or("-"),
                human_bytes(st.backlog_bytes as u64),
                st.receive_lsn.as_deref().unwrap_or("-"),
                st.replay_lsn.as_deref().unwrap_or("-"),
                lease
            )),
            None => out.push_str(&format!(
                "  {:<10} UNREACHABLE: {}\n",
                r.name,
                r.error.as_deref().unwrap_or("")
            )),
        }
    }
    out.push_str("\nRUNS (latest first)\n");
    out.push_str(&format!(
        "  {:>5} {:<10} {:<10} {:<19} {:<19} {:<19} {:<12} {}\n",
        "ID", "REPLICA", "STATE", "STARTED", "PAUSED", "RESUMED", "SNAPSHOT", "TASKS"
    ));
    for r in &s.runs {
        out.push_str(&format!(
            "  {:>5} {:<10} {:<10} {:<19} {:<19} {:<19} {:<12} {}\n",
            r.id,
            r.replica,
            r.state,
            ts(Some(r.started_at)),
            ts(r.paused_at),
            ts(r.resumed_at),
            r.snapshot_lsn.as_deref().unwrap_or("-"),
            r.tasks.join(",")
        ));
        if let Some(e) = &r.error {
            out.push_str(&format!("        error: {e}\n"));
        }
    }
    out.push_str("\nUPLOAD QUEUE\n  ");
    let parts: Vec<String> = s.queue.iter().map(|(k, v)| format!("{k}={v}")).collect();
    out.push_str(&parts.join("  "));
    out.push('\n');
    out
}
