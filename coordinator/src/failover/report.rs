//! What a failover did: the report `pgmaint promote` prints, and the daemon logs.

use std::process::ExitCode;

use anyhow::{bail, Result};
use chrono::Utc;
use serde::Serialize;

use crate::failover::follow::Follower;
use crate::failover::servers::DroppedRun;
use crate::units::human_bytes;

/// How the failover came to its new primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum How {
    /// This pgmaint chose the replica and promoted it.
    Promoted,
    /// A promotion recorded on this host (by this pgmaint or one killed half-way) was
    /// unfinished: finished now.
    Resumed,
    /// The replica was promoted by another pgmaint or by hand (found from its
    /// timeline): its promotion completed here (recorded, followers re-pointed).
    Completed,
}

impl std::fmt::Display for How {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            How::Promoted => "promoted",
            How::Resumed => "resumed",
            How::Completed => "completed",
        })
    }
}

/// How long each step took, in seconds.
#[derive(Debug, Default, Serialize)]
pub struct Timings {
    /// The primary down check (at least `failover.primary_down_after`).
    pub down_check: f64,
    /// From the resume/`pg_promote` to the candidate out of recovery.
    pub promotion: f64,
    /// Re-pointing the other replicas and waiting for them.
    pub followers: f64,
    /// The whole command.
    pub total: f64,
}

/// What `pgmaint promote` did.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Promoted here, resumed after a restart, or completed for another promoter.
    pub how: How,
    /// Who promoted it (`host:pid…`), when pgmaint knows.
    pub by: Option<String>,
    /// The replica promoted: the new primary.
    pub new_primary: String,
    /// Its `host:port`.
    pub address: String,
    /// The cluster's system identifier (a string: it exceeds 2^53).
    pub system_identifier: String,
    /// The old primary's timeline.
    pub old_timeline: i32,
    /// The new primary's timeline.
    pub timeline: i32,
    /// Where the new timeline branched off the old one.
    pub switch_lsn: String,
    /// Where the switch LSN was read.
    pub switch_lsn_source: String,
    /// The servers of `primary.dsn` that were down.
    pub old_primary: Vec<String>,
    /// Promoted with `--force` over the backlog gate.
    pub forced: bool,
    /// The candidate's unreplayed WAL when it was chosen, bytes.
    pub backlog_bytes: u64,
    /// Replay was paused on the candidate and pgmaint resumed it.
    pub resumed_pause: bool,
    /// What `pg_promote(true, N)` returned (`None`: no answer).
    pub pg_promote_returned: Option<bool>,
    /// The N of `pg_promote(true, N)`.
    pub pg_promote_wait_seconds: i32,
    /// What the operator should know: WAL lost with this choice, a forced backlog.
    pub warnings: Vec<String>,
    /// What the primary down check saw besides down servers.
    pub notes: Vec<String>,
    /// Runs left running, dropped by the promotion.
    pub dropped_runs: Vec<DroppedRun>,
    /// Every other replica.
    pub replicas: Vec<Follower>,
    /// When the promotion was recorded.
    pub promoted_at: chrono::DateTime<Utc>,
    /// Where recording the promotion failed, if it did.
    pub record_errors: Vec<String>,
    /// Time taken.
    pub seconds: Timings,
}

/// Print the report; a promotion that could not be recorded is an error all the same.
pub fn finish(report: &Report, json: bool) -> Result<ExitCode> {
    print(report, json)?;
    if !report.record_errors.is_empty() {
        bail!(
            "replica {} WAS promoted (timeline {}), but the promotion could not be recorded {}: until it is, \
             pgmaint may not recognise the old primary as fenced",
            report.new_primary,
            report.timeline,
            report.record_errors.join("; ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn print(r: &Report, json: bool) -> Result<()> {
    use std::io::Write;
    let text = if json {
        format!("{}\n", serde_json::to_string_pretty(r)?)
    } else {
        render(r)
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    Ok(())
}

/// The report for a human.
pub fn render(r: &Report) -> String {
    let by =
        r.by.as_deref()
            .map(|b| format!(" by {b}"))
            .unwrap_or_default();
    let (what, how) = match r.how {
        How::Promoted => ("promoted replica", String::new()),
        How::Resumed => (
            "finished the unfinished promotion of replica",
            format!(" (started{by}, resumed after a restart)"),
        ),
        How::Completed => (
            "completed the promotion of replica",
            if by.is_empty() {
                " (promoted by hand or by another pgmaint)".to_string()
            } else {
                format!(" (promoted{by})")
            },
        ),
    };
    let mut out = format!(
        "{what} {} ({}){how}: the new primary, timeline {} (from {}), switch LSN {}\n",
        r.new_primary, r.address, r.timeline, r.old_timeline, r.switch_lsn
    );
    out.push_str(&format!(
        "old primary down: {} (no connection for {:.1}s, no replica heard from it)\n",
        if r.old_primary.is_empty() {
            "-".to_string()
        } else {
            r.old_primary.join(", ")
        },
        r.seconds.down_check
    ));
    for n in &r.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out.push_str(&format!(
        "backlog replayed at promotion {}{}; pg_promote(true, {}) returned {}\n",
        human_bytes(r.backlog_bytes),
        if r.resumed_pause {
            " (replay was paused: resumed)"
        } else {
            ""
        },
        r.pg_promote_wait_seconds,
        match r.pg_promote_returned {
            Some(true) => "true",
            Some(false) => "false (not yet: polled pg_is_in_recovery())",
            None => "nothing (session lost: polled pg_is_in_recovery())",
        }
    ));
    for w in &r.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    for d in &r.dropped_runs {
        out.push_str(&format!(
            "run {} on replica {} dropped (its results are never uploaded): {}\n",
            d.run_id,
            d.replica,
            d.pause_outcome.as_deref().unwrap_or("-")
        ));
    }
    if !r.replicas.is_empty() {
        out.push_str(&format!(
            "{:<12} {:<22} {:<14} DETAIL\n",
            "REPLICA", "ADDRESS", "STATE"
        ));
        for f in &r.replicas {
            out.push_str(&format!(
                "{:<12} {:<22} {:<14} {}\n",
                f.name,
                f.address,
                f.state.to_string(),
                f.detail
            ));
            if let Some(cmd) = &f.pg_rewind {
                out.push_str(&format!("{:<50} {cmd}\n", ""));
            }
        }
    }
    out.push_str(&format!(
        "took {:.1}s: down check {:.1}s, promotion {:.1}s, followers {:.1}s\n",
        r.seconds.total, r.seconds.down_check, r.seconds.promotion, r.seconds.followers
    ));
    out
}
