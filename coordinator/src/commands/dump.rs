//! `pgmaint dump`: an operator-triggered consistent dump of the frozen replica, into
//! `--out`, or as the `[[dumps]]` entry `--name` (its own new subdirectory of the
//! entry's `out`, then older dumps pruned).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::abort::Abort;
use crate::commands::run::{pick_replica, report_cycle};
use crate::config::{Config, DumpConfig, ReplicaConfig};
use crate::error_text::OneLine;
use crate::{cycle, db, dump, dump_dirs, signals, UsageError};

/// What `pgmaint dump` dumps into.
pub enum DumpTarget {
    /// `--out DIR [-j N] [--pg-dump PATH]`.
    Out {
        /// The dump's directory.
        out: PathBuf,
        /// `pg_dump -j`.
        jobs: u32,
        /// pg_dump to use.
        pg_dump: Option<PathBuf>,
    },
    /// `--name NAME`: the `[[dumps]]` entry.
    Named(String),
}

/// `pgmaint dump (--out DIR [-j N] [--pg-dump PATH] | --name NAME) [--replica NAME] [--json]`.
pub async fn run(
    cfg: &Config,
    target: DumpTarget,
    replica: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    let abort = Abort::default();
    let summary = match target {
        DumpTarget::Named(name) => {
            let dump = cfg.dump(&name)?;
            let replica = named_replica(cfg, dump, replica).await?;
            signals::abort_on_signals(abort.clone());
            run_named(cfg, dump, replica, abort).await?
        }
        DumpTarget::Out { out, jobs, pg_dump } => {
            let replica = match replica {
                Some(name) => cfg.replica(Some(name))?,
                None => pick_replica(cfg).await?,
            };
            signals::abort_on_signals(abort.clone());
            let spec = dump::DumpSpec {
                out,
                jobs,
                pg_dump,
                named: None,
                mode: cfg.results_mode,
            };
            cycle::run(cfg, replica, cycle::Work::Dump(spec), abort).await?
        }
    };
    report_cycle(&summary, json, !json)
}

/// The replica a named dump runs on: its pin (`--replica` may only repeat it), or
/// `--replica`, or the pool's choice.
async fn named_replica<'c>(
    cfg: &'c Config,
    dump: &DumpConfig,
    replica: Option<&str>,
) -> Result<&'c ReplicaConfig> {
    match (&dump.replica, replica) {
        (Some(pin), Some(asked)) if pin != asked => Err(UsageError(format!(
            "--replica {asked}: dump {:?} is pinned to replica {pin} (dumps[].replica)",
            dump.name
        ))
        .into()),
        (Some(pin), _) => Ok(cfg.replica(Some(pin))?),
        (None, Some(asked)) => Ok(cfg.replica(Some(asked))?),
        (None, None) => pick_replica(cfg).await,
    }
}

/// Run the `[[dumps]]` entry `dump` once on `replica`: what `pgmaint dump --name` does,
/// and what the daemon calls when the entry is due.
///
/// 1. Creates `dump.out` if it is missing (its parent must exist), with the directory
///    mode of `results.mode` (0700 by default).
/// 2. Runs one dump cycle (lease, pre-checks, confirmed pause, `pg_dump -Fd -j
///    dump.jobs` with `dump.pg_dump`, validity check, resume on every path). Its files go
///    into a new subdirectory of `out` named by the UTC time and the run id
///    (`20261130T021500Z-run42`), claimed once the cycle holds its lease: recorded as
///    the run's `results_dir` on the primary, then created; the ownership marker
///    `pgmaint-dump.json` is written into it when the run ends.
/// 3. If the dump succeeded, prunes `out` ([`dump_dirs::prune`]): complete dumps of this
///    entry beyond `dump.keep`, oldest first, and directories of its runs that did not
///    succeed. Never anything pgmaint cannot prove it wrote, never a running run's. A
///    prune failure is logged as a warning; the summary stays a success.
///
/// `replica` must be the entry's pin if it has one (else a [`UsageError`]); without a
/// pin the caller chooses (`pgmaint dump` takes `--replica` or the pool's choice).
/// Errors are a bad `out`, a replica against the pin, and those of [`cycle::run`]
/// before its lease (config, connections, a replica in use); from the lease on, the
/// outcome is in the summary (`summary.ok()`, `summary.error`). Cancel with `abort`.
pub async fn run_named(
    cfg: &Config,
    dump: &DumpConfig,
    replica: &ReplicaConfig,
    abort: Abort,
) -> Result<cycle::RunSummary> {
    if let Some(pin) = dump.replica.as_ref().filter(|p| **p != replica.name) {
        return Err(UsageError(format!(
            "replica {}: dump {:?} is pinned to replica {pin} (dumps[].replica)",
            replica.name, dump.name
        ))
        .into());
    }
    dump_dirs::ensure_out(dump, cfg.results_mode)?;
    let spec = dump::DumpSpec {
        out: dump.out.clone(),
        jobs: dump.jobs,
        pg_dump: dump.pg_dump.clone(),
        named: Some(dump::NamedDump {
            name: dump.name.clone(),
            claimed: false,
        }),
        mode: cfg.results_mode,
    };
    let summary = cycle::run(cfg, replica, cycle::Work::Dump(spec), abort).await?;
    if summary.ok() {
        prune(cfg, dump).await;
    }
    Ok(summary)
}

/// [`dump_dirs::prune`], its failure a warning.
async fn prune(cfg: &Config, dump: &DumpConfig) {
    let result = async {
        let primary = db::connect(&cfg.primary, "pgmaint").await?;
        dump_dirs::prune(&primary, dump, cfg.limits.max_pause).await
    }
    .await;
    match result {
        Ok(removed) => {
            tracing::debug!(dump = %dump.name, removed = removed.len(), "old dumps pruned")
        }
        Err(e) => {
            tracing::warn!(dump = %dump.name, error = %e.one_line(), "pruning old dumps failed; the dump itself succeeded")
        }
    }
}
