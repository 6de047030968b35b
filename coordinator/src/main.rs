//! `pgmaint`: heavy PostgreSQL maintenance on a streaming replica whose WAL replay is
//! paused. See README.md for the config reference.

mod config;
mod cycle;
mod db;
mod dump;
mod error_text;
mod lease;
mod replica;
mod schema;
mod status;
mod tasks_cmd;
mod units;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use config::{Config, Overrides};
use error_text::OneLine;
use lease::{Abort, AbortReason};

/// An error in the operator's input: config, arguments, unreachable DSN. Exit code 2.
#[derive(Debug, Clone)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for UsageError {}

/// Heavy PostgreSQL maintenance on a streaming replica whose WAL replay is paused.
///
/// A cycle pauses replay on a replica, runs scans against the frozen snapshot, writes
/// results stamped with the snapshot LSN, queues short upload tasks on the primary and
/// resumes replay. Replay is resumed on every exit path; a replica left paused by a
/// coordinator that died is resumed by the next pgmaint command once its lease expires.
///
/// Exit codes: 0 ok; 1 runtime failure; 2 bad usage or config.
#[derive(Parser)]
#[command(name = "pgmaint", version, max_term_width = 100)]
struct Cli {
    #[command(flatten)]
    global: GlobalOpts,
    #[command(subcommand)]
    command: Command,
}

/// Options shared by every subcommand.
#[derive(Args)]
struct GlobalOpts {
    /// Config file (TOML).
    #[arg(
        long,
        short = 'c',
        env = "PGMAINT_CONFIG",
        global = true,
        default_value = "/etc/pgmaint/pgmaint.toml"
    )]
    config: PathBuf,
    /// The primary's DSN (libpq string or postgres:// URL); overrides primary.dsn.
    #[arg(long, env = "PGMAINT_PRIMARY", global = true, hide_env_values = true)]
    primary_dsn: Option<String>,
    /// The replica's DSN; overrides the first [[replicas]] entry's dsn.
    #[arg(long, env = "PGMAINT_REPLICA", global = true, hide_env_values = true)]
    replica_dsn: Option<String>,
    /// Log filter (RUST_LOG syntax), e.g. "debug" or "pgmaint=debug".
    #[arg(long, env = "PGMAINT_LOG", global = true, default_value = "info")]
    log: String,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pgmaint's schema migrations to the primary (idempotent).
    Init,
    /// One cycle: pause the replica, run the tasks, queue uploads, resume.
    ///
    /// In order: take the replica's lease on the primary; check every task against the
    /// replica's catalog; check the replica (in recovery, streaming, 'not paused', not a
    /// synchronous standby under remote_apply, backlog under limits.max_replay_backlog);
    /// pause replay and wait for 'paused'; record the snapshot (replay LSN, timeline,
    /// system identifier, postmaster start time); run the tasks; check the snapshot did
    /// not move; write results.dir/<run-id>/ (CSV files + manifest.json); in one
    /// transaction on the primary, record the run and queue its uploads; close the scan
    /// sessions and resume replay.
    ///
    /// Replay is resumed on every path: errors, SIGINT/SIGTERM/SIGHUP, limits.max_pause or
    /// limits.max_replay_backlog exceeded, a lost lease. A replica that restarted during
    /// the scan (its pause silently lost) makes the run invalid: nothing is uploaded.
    ///
    /// Exit code 0 when the run succeeded and every task has results; 1 otherwise; 2 for
    /// bad config, including a task naming a missing table or column.
    Run {
        /// Run only this task (repeatable); default: every task in config.
        #[arg(long = "task", value_name = "NAME")]
        tasks: Vec<String>,
        /// Replica to use (by name); default: the first in config.
        #[arg(long)]
        replica: Option<String>,
        /// Print the run summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Upload worker: apply queued results on the primary.
    Uploader {
        /// Drain the queue of what is runnable now, then exit.
        #[arg(long)]
        once: bool,
        /// Tasks applied at once; default: uploader.slots.
        #[arg(long)]
        slots: Option<usize>,
    },
    /// The upload queue on the primary: list, show, cancel, retry tasks.
    Tasks {
        #[command(subcommand)]
        command: tasks_cmd::TasksCommand,
    },
    /// Replicas (pause state, backlog), recent runs, upload queue.
    Status {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A consistent dump of the frozen replica: pause, `pg_dump -Fd -j N`, resume.
    ///
    /// The dump gets the cycle's safety: lease, pre-checks, confirmed pause, limits,
    /// and resume on every path. Every pg_dump worker reads the same paused state. A
    /// replica that restarts during the dump (its pause lost) fails the dump. The files
    /// are then hashed and `manifest.json` (snapshot LSN, timeline, system identifier,
    /// MD5 and size of every file) is written next to pg_dump's own. Restore with
    /// `pg_restore -d DBNAME DIR`.
    Dump {
        /// Output directory (must not exist, or be empty).
        #[arg(long)]
        out: PathBuf,
        /// Parallel pg_dump jobs (pg_dump -j).
        #[arg(long, short = 'j', default_value_t = 2)]
        jobs: u32,
        /// pg_dump binary; default: the one of the server's major version.
        #[arg(long)]
        pg_dump: Option<PathBuf>,
        /// Replica to use (by name); default: the first in config.
        #[arg(long)]
        replica: Option<String>,
        /// Print the run summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Resume a replica left paused by a dead run (expired lease); mark the run DROPPED.
    Recover {
        /// Only this replica; default: every replica in config.
        #[arg(long)]
        replica: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Server NOTICEs ("relation already exists, skipping") are noise to an operator.
    let filter = format!("tokio_postgres=warn,{}", cli.global.log);
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        // After a SIGHUP, stderr may be a dead terminal: a failed log write must be
        // dropped, not reported with eprintln! (which panics, before replay resumes).
        .log_internal_errors(false)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(dispatch(cli));
    // Work abandoned after an abort (a read stuck in the kernel) must not hold the exit:
    // replay was resumed before we got here.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(code) => code,
        Err(e) => {
            let usage = e.downcast_ref::<UsageError>().is_some();
            eprintln!("pgmaint: error: {}", e.one_line());
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

fn load_config(g: &GlobalOpts) -> Result<Config> {
    let overrides = Overrides {
        primary: g.primary_dsn.clone(),
        replica: g.replica_dsn.clone(),
    };
    Ok(Config::load(&g.config, &overrides)?)
}

/// SIGINT/SIGTERM/SIGHUP abort the cycle (which then resumes replay); they never kill
/// the process outright while a replica may be paused.
fn install_signal_handlers(abort: Abort) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    // The operator's terminal or ssh session going away must not kill a paused cycle.
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
                _ = hup.recv() => "SIGHUP",
            };
            abort.trigger(AbortReason::Signal(name));
        }
    });
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let cfg = load_config(&cli.global)?;
    match cli.command {
        Command::Init => {
            let mut primary = db::connect(&cfg.primary, "pgmaint").await?;
            let (before, after) = schema::init(&mut primary).await?;
            if before == after {
                println!("pgmaint schema is up to date (version {after})");
            } else {
                println!("pgmaint schema migrated from version {before} to {after}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            tasks,
            replica,
            json,
        } => {
            let replica = cfg.replica(replica.as_deref())?;
            let tasks = cfg.select_tasks(&tasks)?;
            let abort = Abort::default();
            install_signal_handlers(abort.clone());
            let summary = cycle::run(&cfg, replica, cycle::Work::Tasks(&tasks), abort).await?;
            Ok(report_cycle(&summary, json)?)
        }
        Command::Dump {
            out,
            jobs,
            pg_dump,
            replica,
            json,
        } => {
            let replica = cfg.replica(replica.as_deref())?;
            let abort = Abort::default();
            install_signal_handlers(abort.clone());
            let spec = dump::DumpSpec { out, jobs, pg_dump };
            let summary = cycle::run(&cfg, replica, cycle::Work::Dump(spec), abort).await?;
            Ok(report_cycle(&summary, json)?)
        }
        Command::Uploader { once, slots } => {
            recover_in_passing(&cfg).await;
            tasks_cmd::run_uploader(&cfg, once, slots).await
        }
        Command::Tasks { command } => tasks_cmd::tasks(&cfg, command).await,
        Command::Status { json } => {
            let primary = db::connect(&cfg.primary, "pgmaint").await?;
            schema::require_current(&primary).await?;
            recover_in_passing(&cfg).await;
            let status = status::gather(&cfg, &primary).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status::render(&status));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Recover { replica } => {
            let mut primary = db::connect(&cfg.primary, "pgmaint").await?;
            schema::require_current(&primary).await?;
            recover_all(&cfg, &mut primary, replica.as_deref(), false).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Any pgmaint command resumes a replica that a dead run left paused (DESIGN: a run
/// whose lease expired is dropped). Commands that are not about replicas do it in
/// passing: a failure here is logged, and the command goes on with its own work.
async fn recover_in_passing(cfg: &Config) {
    let attempt = async {
        let mut primary = db::connect(&cfg.primary, "pgmaint").await?;
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

/// Recover every replica (or one) from dead runs. `quiet` prints only what was done.
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
            lease::Recovery::Recovered {
                run_id,
                note,
                state,
                ..
            } => {
                println!(
                    "{}: run {run_id} {note}; run {run_id} marked {state}",
                    r.name
                )
            }
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

/// Print a cycle's summary; its exit code.
fn report_cycle(summary: &cycle::RunSummary, json: bool) -> Result<ExitCode> {
    use std::io::Write;
    // After a SIGHUP the terminal may be gone: the outcome is on the primary already,
    // so a failed write here is not worth a panic.
    let text = if json {
        format!("{}\n", serde_json::to_string_pretty(summary)?)
    } else {
        render_summary(summary)
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    if let Some(e) = &summary.error {
        let _ = writeln!(
            std::io::stderr(),
            "pgmaint: error: run {}: {e}",
            summary.run_id
        );
    }
    Ok(match (summary.ok(), summary.usage_error) {
        (true, _) => ExitCode::SUCCESS,
        (false, true) => ExitCode::from(2),
        (false, false) => ExitCode::from(1),
    })
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
