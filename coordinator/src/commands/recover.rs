//! `pgmaint recover`, and the recovery every command does in passing: resume a
//! replica that a dead run (expired lease) left paused, and close the run.

use std::process::ExitCode;

use anyhow::Result;

use crate::config::Config;
use crate::error_text::OneLine;
use crate::{db, lease, schema};

/// `pgmaint recover [--replica NAME]`.
pub async fn run(cfg: &Config, replica: Option<&str>) -> Result<ExitCode> {
    let mut primary = db::connect_at_start(&cfg.primary, "pgmaint").await?;
    schema::require_current(&primary).await?;
    recover_all(cfg, &mut primary, replica, false).await?;
    Ok(ExitCode::SUCCESS)
}

/// Any pgmaint command resumes a replica that a dead run left paused (DESIGN: a run
/// whose lease expired is dropped). Commands that are not about replicas do it in
/// passing: a failure here is logged, and the command goes on with its own work.
pub async fn recover_in_passing(cfg: &Config) {
    let attempt = async {
        let mut primary = db::connect_at_start(&cfg.primary, "pgmaint").await?;
        schema::require_current(&primary).await?;
        recover_all(cfg, &mut primary, None, true).await
    };
    if let Err(e) = attempt.await {
        tracing::warn!(
            "could not check for replicas left paused by dead runs: {}",
            e.one_line()
        );
    }
}

/// Recover every replica (or one) from dead runs. `quiet` (in passing) prints nothing
/// on stdout: what was done is logged, on stderr.
async fn recover_all(
    cfg: &Config,
    primary: &mut tokio_postgres::Client,
    only: Option<&str>,
    quiet: bool,
) -> Result<()> {
    let replicas: Vec<_> = match only {
        Some(n) => vec![cfg.replica(Some(n))?],
        None => cfg.replicas.iter().collect(),
    };
    for r in replicas {
        let outcome = match lease::recover_expired(primary, r, &cfg.results_dir).await {
            Ok(o) => o,
            // One unreachable replica must not keep the others paused.
            Err(e) if quiet => {
                tracing::warn!(
                    "replica {}: could not check for a dead run: {}",
                    r.name,
                    e.one_line()
                );
                continue;
            }
            Err(e) => return Err(e.context(format!("recovering replica {}", r.name))),
        };
        match outcome {
            // In passing, what was done is a note on stderr (recover_expired logs it):
            // stdout belongs to the command, e.g. one JSON document for `status --json`.
            lease::Recovery::Recovered {
                run_id,
                note,
                state,
                ..
            } if !quiet => println!(
                "{}: run {run_id} {note}; run {run_id} marked {state}",
                r.name
            ),
            lease::Recovery::Alive {
                run_id,
                holder,
                expires_at,
            } if !quiet => println!(
                "{}: run {run_id} ({holder}) is alive, lease valid until {expires_at}; not touched",
                r.name
            ),
            _ if !quiet => println!("{}: nothing to recover", r.name),
            _ => {}
        }
    }
    Ok(())
}
