//! `pgmaint status`: replicas, leases, recent runs, upload queue.

use std::process::ExitCode;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::commands::recover::recover_in_passing;
use crate::config::Config;
use crate::config::ReplicaConfig;
use crate::error_text::OneLine;
use crate::failover::primary::{self, Found, Survey};
use crate::replica::{PauseState, ReplayState, ReplicaControl};
use crate::schedule::Schedule;
use crate::schedule_history::{self, SlotHistory};
use crate::units::human_bytes;
use crate::{db, schema};

/// `pgmaint status [--json]`. `survey`: every server `primary.dsn` lists, as found
/// when the command started (`cfg.primary` is the one in use).
pub async fn run(cfg: &Config, survey: &Survey, json: bool) -> Result<ExitCode> {
    let primary = db::connect_at_start(&cfg.primary, "pgmaint").await?;
    schema::require_current(&primary).await?;
    recover_in_passing(cfg).await;
    let mut status = gather(cfg, &primary).await?;
    status.primaries = primary_servers(survey);
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(ExitCode::SUCCESS)
}

/// One server `primary.dsn` lists.
#[derive(Serialize)]
pub struct PrimaryServer {
    address: String,
    /// `primary (in use)`, `standby`, `former primary, fenced: …`, `unreachable: …`.
    role: String,
}

/// One replica's line.
#[derive(Serialize)]
pub struct ReplicaStatus {
    name: String,
    reachable: bool,
    error: Option<String>,
    /// `standby`, `primary` (promoted), or why it is not a standby of this primary.
    role: String,
    /// `replicas[].failover_priority`.
    failover_priority: u32,
    /// Who holds its pause: `run N (host:pid)`, or `someone else`.
    paused_by: Option<String>,
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

/// One scheduled (or by-hand) task's or dump's line.
#[derive(Serialize)]
pub struct ScheduleLine {
    name: String,
    /// `task` or `dump`.
    kind: &'static str,
    /// `every 24h`, `at "30 2 * * *" Europe/Paris`, or `by hand`.
    schedule: String,
    /// When it is next due (in the past: overdue); none when run by hand.
    next_slot: Option<DateTime<Utc>>,
    /// The newest slot claimed, and when its run started.
    last_slot: Option<DateTime<Utc>>,
    last_started_at: Option<DateTime<Utc>>,
    /// `succeeded`, `failed`, or `unfinished` (running, or its daemon died in it).
    last_result: Option<String>,
    last_success_at: Option<DateTime<Utc>>,
    last_duration_seconds: Option<f64>,
    last_findings: Option<i64>,
    /// Failed slots since the last succeeded one.
    consecutive_failures: i64,
    /// The error of the newest finished slot, if it failed.
    last_error: Option<String>,
}

/// Who leads the scheduler (`pgmaint.leader`).
#[derive(Serialize)]
pub struct LeaderLine {
    /// `host:pid` of the daemon.
    holder: String,
    acquired_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    /// The lease ran out (by the primary's clock): that daemon is gone or stuck.
    expired: bool,
}

/// The last failover recorded on the primary (`pgmaint.promotions`).
#[derive(Serialize)]
pub struct FailoverLine {
    /// The replica promoted (its config name).
    replica: String,
    promoted_at: DateTime<Utc>,
    old_timeline: i32,
    new_timeline: i32,
    switch_lsn: String,
    /// `host:port` of the former primary, as configured.
    old_primary: Option<String>,
    /// Promoted over the backlog gate (`pgmaint promote --force`).
    forced: bool,
}

/// Everything `status` shows.
#[derive(Serialize)]
pub struct Status {
    primaries: Vec<PrimaryServer>,
    replicas: Vec<ReplicaStatus>,
    runs: Vec<RunLine>,
    queue: std::collections::BTreeMap<String, i64>,
    schedule: Vec<ScheduleLine>,
    scheduler_leader: Option<LeaderLine>,
    last_failover: Option<FailoverLine>,
}

/// Gather the status.
pub async fn gather(cfg: &Config, primary: &Client) -> Result<Status> {
    let mut replicas = Vec::new();
    for r in &cfg.replicas {
        replicas.push(replica_status(cfg, primary, r).await?);
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
        primaries: Vec::new(),
        replicas,
        runs,
        queue,
        schedule: schedule_lines(cfg, primary).await?,
        scheduler_leader: scheduler_leader(primary).await?,
        last_failover: last_failover(primary).await?,
    })
}

/// The newest promotion recorded on the primary, if any.
async fn last_failover(primary: &Client) -> Result<Option<FailoverLine>> {
    Ok(primary
        .query_opt(
            "SELECT replica, promoted_at, old_timeline, new_timeline, switch_lsn::text, old_primary, forced
               FROM pgmaint.promotions ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await?
        .map(|r| FailoverLine {
            replica: r.get(0),
            promoted_at: r.get(1),
            old_timeline: r.get(2),
            new_timeline: r.get(3),
            switch_lsn: r.get(4),
            old_primary: r.get(5),
            forced: r.get(6),
        }))
}

/// Each task and dump in config order: its schedule, next slot and slot history.
async fn schedule_lines(cfg: &Config, primary: &Client) -> Result<Vec<ScheduleLine>> {
    let entries: Vec<(&str, &'static str, Option<&Schedule>)> = cfg
        .tasks
        .iter()
        .map(|t| (t.name.as_str(), "task", t.schedule.as_ref()))
        .chain(
            cfg.dumps
                .iter()
                .map(|d| (d.name.as_str(), "dump", d.schedule.as_ref())),
        )
        .collect();
    let names: Vec<String> = entries.iter().map(|(n, _, _)| n.to_string()).collect();
    let history = schedule_history::read(primary, &names).await?;
    tracing::debug!(
        configured = names.len(),
        with_slots = history.len(),
        "read the slot history from pgmaint.task_slots"
    );
    let now = Utc::now();
    Ok(entries
        .into_iter()
        .map(|(name, kind, schedule)| {
            let h: Option<&SlotHistory> = history.get(name);
            let next_slot = schedule.and_then(|s| {
                schedule_history::next_slot(
                    s,
                    h.map(|h| h.last_slot),
                    h.map(|h| h.last_claimed_at),
                    now,
                )
            });
            ScheduleLine {
                name: name.to_string(),
                kind,
                schedule: schedule_history::describe(schedule),
                next_slot,
                last_slot: h.map(|h| h.last_slot),
                last_started_at: h.map(|h| h.last_claimed_at),
                last_result: h.map(|h| h.last_result.clone().unwrap_or("unfinished".into())),
                last_success_at: h.and_then(|h| h.last_success_at),
                last_duration_seconds: h.and_then(|h| h.last_duration_seconds),
                last_findings: h.and_then(|h| h.last_findings),
                consecutive_failures: h.map_or(0, |h| h.consecutive_failures),
                last_error: h.and_then(|h| h.last_error.clone()),
            }
        })
        .collect())
}

/// The scheduler's leader row, if a daemon ever took it (and did not shut down cleanly).
async fn scheduler_leader(primary: &Client) -> Result<Option<LeaderLine>> {
    Ok(primary
        .query_opt(
            "SELECT holder, acquired_at, expires_at, expires_at <= now() FROM pgmaint.leader
              WHERE name = 'scheduler'",
            &[],
        )
        .await?
        .map(|r| LeaderLine {
            holder: r.get(0),
            acquired_at: r.get(1),
            expires_at: r.get(2),
            expired: r.get(3),
        }))
}

fn ts(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

/// Every server `primary.dsn` lists, and what it is (as the command found them).
fn primary_servers(survey: &Survey) -> Vec<PrimaryServer> {
    survey
        .servers
        .iter()
        .enumerate()
        .map(|(i, (dsn, found))| PrimaryServer {
            address: primary::address(dsn),
            role: match found {
                _ if Some(i) == survey.chosen => "primary (in use)".to_string(),
                Found::Primary(_) => "primary".to_string(),
                Found::Standby => "standby".to_string(),
                Found::Fenced(_, why) => format!("former primary, fenced: {why}"),
                Found::Unreachable(e) => format!("unreachable: {e}"),
            },
        })
        .collect()
}

/// One replica: its state, role, lease and pause holder.
async fn replica_status(
    cfg: &Config,
    primary: &Client,
    r: &ReplicaConfig,
) -> Result<ReplicaStatus> {
    let lease = primary
        .query_opt(
            "SELECT l.run_id, l.expires_at, r.paused_at, l.holder FROM pgmaint.replica_leases l
               JOIN pgmaint.runs r ON r.id = l.run_id WHERE l.replica = $1",
            &[&r.name],
        )
        .await?;
    let (state, error, belongs) = match ReplicaControl::connect(r).await {
        Ok(c) => {
            let belongs = c.check_belongs_to(primary, &cfg.primary).await.err();
            match c.state().await {
                Ok(s) => (Some(s), None, belongs),
                Err(e) => (None, Some(e.one_line()), belongs),
            }
        }
        Err(e) => (None, Some(e.0), None),
    };
    let role = match (&state, &belongs) {
        (None, _) => "unreachable".to_string(),
        (Some(st), _) if !st.in_recovery => {
            if crate::failover::primary::address(&r.dsn)
                == crate::failover::primary::address(&cfg.primary)
            {
                "primary (promoted, in use)".to_string()
            } else {
                "primary (promoted, not the one in use)".to_string()
            }
        }
        (Some(_), Some(e)) => format!("standby, not of this primary: {}", e.one_line()),
        (Some(_), None) => "standby".to_string(),
    };
    let paused_by = match (&state, &lease) {
        // A primary has no replay to pause.
        (Some(st), _) if !st.in_recovery || st.pause_state == PauseState::NotPaused => None,
        (None, _) => None,
        (Some(_), Some(l)) => Some(format!(
            "run {} ({})",
            l.get::<_, i64>(0),
            l.get::<_, String>(3)
        )),
        (Some(_), None) => Some("someone else".to_string()),
    };
    Ok(ReplicaStatus {
        name: r.name.clone(),
        reachable: state.is_some(),
        error,
        role,
        failover_priority: r.failover_priority,
        paused_by,
        state,
        lease_run: lease.as_ref().map(|l| l.get(0)),
        lease_expires_at: lease.as_ref().map(|l| l.get(1)),
        paused_since: lease.as_ref().and_then(|l| l.get(2)),
    })
}

/// Human-readable rendering.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    out.push_str("PRIMARY\n");
    for p in &s.primaries {
        out.push_str(&format!("  {:<22} {}\n", p.address, p.role));
    }
    out.push_str("\nREPLICAS\n");
    out.push_str(&format!(
        "  {:<10} {:<10} {:>4} {:<16} {:<10} {:>12} {:<14} {:<14} {:<22} {}\n",
        "NAME",
        "ROLE",
        "PRIO",
        "REPLAY",
        "WALRECV",
        "BACKLOG",
        "RECEIVE LSN",
        "REPLAY LSN",
        "UPSTREAM",
        "LEASE"
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
                "  {:<10} {:<10} {:>4} {:<16} {:<10} {:>12} {:<14} {:<14} {:<22} {}\n",
                r.name,
                r.role.split(':').next().unwrap_or(""),
                r.failover_priority,
                st.pause_state,
                st.walreceiver.as_deref().unwrap_or("-"),
                human_bytes(st.backlog_bytes as u64),
                st.receive_lsn.as_deref().unwrap_or("-"),
                st.replay_lsn.as_deref().unwrap_or("-"),
                st.upstream.as_deref().unwrap_or("-"),
                match &r.paused_by {
                    Some(by) if r.lease_run.is_none() => format!("paused by {by}"),
                    _ => lease,
                }
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
    render_schedule(s, &mut out);
    if let Some(f) = &s.last_failover {
        out.push_str(&format!(
            "\nLAST FAILOVER\n  {}: replica {} promoted (timeline {} -> {} at {}){}{}\n",
            ts(Some(f.promoted_at)),
            f.replica,
            f.old_timeline,
            f.new_timeline,
            f.switch_lsn,
            f.old_primary
                .as_ref()
                .map(|o| format!(", former primary {o} fenced"))
                .unwrap_or_default(),
            if f.forced {
                ", forced over the backlog gate"
            } else {
                ""
            }
        ));
    }
    out
}

/// The SCHEDULE section: who leads the scheduler, then one line per task and dump.
fn render_schedule(s: &Status, out: &mut String) {
    if s.schedule.is_empty() && s.scheduler_leader.is_none() {
        return;
    }
    out.push_str("\nSCHEDULE\n");
    match &s.scheduler_leader {
        Some(l) if l.expired => out.push_str(&format!(
            "  scheduler: no leader (the lease of {} expired {})\n",
            l.holder,
            ts(Some(l.expires_at))
        )),
        Some(l) => out.push_str(&format!(
            "  scheduler: led by {} since {}, lease until {}\n",
            l.holder,
            ts(Some(l.acquired_at)),
            ts(Some(l.expires_at))
        )),
        None => out.push_str("  scheduler: no daemon leads it\n"),
    }
    out.push_str(&format!(
        "  {:<22} {:<4} {:<30} {:<19} {:<30} {:>5}\n",
        "NAME", "KIND", "SCHEDULE", "NEXT SLOT", "LAST RESULT", "FAILS"
    ));
    for l in &s.schedule {
        let last = match &l.last_result {
            Some(r) => format!("{r} {}", ts(l.last_started_at)),
            None => "-".into(),
        };
        out.push_str(&format!(
            "  {:<22} {:<4} {:<30} {:<19} {:<30} {:>5}\n",
            l.name,
            l.kind,
            l.schedule,
            ts(l.next_slot),
            last,
            l.consecutive_failures
        ));
        if let Some(e) = &l.last_error {
            out.push_str(&format!("        last error: {}\n", truncate_line(e, 100)));
        }
    }
}

/// The first line of `text`, at most `max` characters (an ellipsis marks a cut).
fn truncate_line(text: &str, max: usize) -> String {
    let first = text.lines().next().unwrap_or("");
    let cut = text.len() > first.len() || first.chars().count() > max;
    if !cut {
        return first.to_string();
    }
    let kept: String = first.chars().take(max.saturating_sub(1)).collect();
    format!("{}…", kept.trim_end())
}

#[cfg(test)]
mod tests {
    use super::truncate_line;

    #[test]
    fn a_long_or_multi_line_error_is_cut_to_one_line() {
        assert_eq!(truncate_line("short", 10), "short");
        assert_eq!(truncate_line("0123456789abc", 10), "012345678…");
        assert_eq!(truncate_line("one\ntwo", 10), "one…");
    }
}
