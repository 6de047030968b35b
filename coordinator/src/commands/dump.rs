//! `pgmaint dump`: an operator-triggered consistent dump of the frozen replica.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::abort::Abort;
use crate::commands::run::{pick_replica, report_cycle};
use crate::config::Config;
use crate::{cycle, dump, signals};

/// `pgmaint dump --out DIR [-j N] [--pg-dump PATH] [--replica NAME] [--json]`.
pub async fn run(
    cfg: &Config,
    out: PathBuf,
    jobs: u32,
    pg_dump: Option<PathBuf>,
    replica: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    let replica = match replica {
        Some(name) => cfg.replica(Some(name))?,
        None => pick_replica(cfg).await?,
    };
    let abort = Abort::default();
    signals::abort_on_signals(abort.clone());
    let spec = dump::DumpSpec { out, jobs, pg_dump };
    let summary = cycle::run(cfg, replica, cycle::Work::Dump(spec), abort).await?;
    report_cycle(&summary, json, !json)
}

/// PLACEHOLDER until the dumps branch lands (replaced by it).
pub async fn run_named(
    cfg: &Config,
    dump: &crate::config::DumpConfig,
    replica: &crate::config::ReplicaConfig,
    abort: Abort,
) -> Result<cycle::RunSummary> {
    let out = dump
        .out
        .join(chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string());
    let spec = dump::DumpSpec {
        out,
        jobs: dump.jobs,
        pg_dump: dump.pg_dump.clone(),
    };
    cycle::run(cfg, replica, cycle::Work::Dump(spec), abort).await
}
