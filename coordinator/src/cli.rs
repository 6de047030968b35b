//! The command line: every subcommand and option, with the `--help` text as doc
//! comments. One definition for `--help` and the README's command list.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::config::{Config, Overrides};

/// Heavy PostgreSQL maintenance on a streaming replica whose WAL replay is paused.
///
/// A cycle pauses replay on a replica, runs scans against the frozen snapshot, writes
/// results stamped with the snapshot LSN, queues short upload tasks on the primary and
/// resumes replay. Replay is resumed on every exit path; a replica left paused by a
/// coordinator that died is resumed by the next pgmaint command once its lease expires.
///
/// Logs go to stderr: as text, or with --log-format json one JSON object per line
/// (timestamp, level, message and the event's fields) for a log collector.
#[derive(Parser)]
#[command(name = "pgmaint", version, max_term_width = 100, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

/// The exit codes and output conventions, under every `pgmaint -h` / `--help`.
const AFTER_HELP: &str = "\
Exit codes:
  0  ok
  1  runtime failure (a failed task or check, an invalid or cancelled run, a refused replica)
  2  bad usage or config, including a server that turns the configured DSN down
     (authentication, an unknown role or database) and an invalid --log filter
  3  a server could not be reached (refused, timed out, no route, name not resolved, or it
     takes no connection now: too many connections, starting up, shutting down): try again

--json prints one JSON document on stdout and nothing else (notes go to stderr);
system_identifier is a string in JSON, run and upload task ids are numbers.";

/// Options shared by every subcommand.
#[derive(Args)]
pub struct GlobalOpts {
    /// Config file (TOML).
    #[arg(
        long,
        short = 'c',
        env = "PGMAINT_CONFIG",
        global = true,
        default_value = "/etc/pgmaint/pgmaint.toml"
    )]
    pub config: PathBuf,
    /// The primary's DSN (libpq string or postgres:// URL); overrides primary.dsn.
    #[arg(long, env = "PGMAINT_PRIMARY", global = true, hide_env_values = true)]
    pub primary_dsn: Option<String>,
    /// The replica's DSN; overrides the first [[replicas]] entry's dsn.
    #[arg(long, env = "PGMAINT_REPLICA", global = true, hide_env_values = true)]
    pub replica_dsn: Option<String>,
    /// Log filter (RUST_LOG syntax), e.g. "debug" or "pgmaint=debug".
    #[arg(long, env = "PGMAINT_LOG", global = true, default_value = "info")]
    pub log: String,
    /// How log lines on stderr look: text for people, json for a log collector (one
    /// object per line: timestamp, level, message and the event's fields).
    #[arg(
        long,
        env = "PGMAINT_LOG_FORMAT",
        global = true,
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
pub enum Command {
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
    /// bad config, including a task naming a missing table or column; 3 when the primary,
    /// or the replica the run needs (every one, for the pool's choice), cannot be reached.
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
    /// Check everything that can be checked without pausing or writing anything.
    ///
    /// One line per check, `ok` or `FAIL`, naming the object: the config (already parsed
    /// when the checks start); the primary (reachable, not in recovery, pgmaint's schema
    /// current, its role's privileges on pgmaint's schema and pg_stat_replication); each
    /// replica (reachable, in recovery, a standby of the primary, its role's EXECUTE on
    /// the replay-control functions and pg_monitor); each task against the catalog of
    /// every replica it may run on; each materialize target on the primary (it exists,
    /// and the role may swap or merge into it); results.dir and every dumps[].out
    /// writable (a temporary file created and removed). A missing privilege is named as
    /// the GRANT that gives it.
    ///
    /// Exit code 0 when every check passed; 1 when one failed; 2 for bad config (before
    /// any check); 3 when the only failures are servers that could not be reached.
    Check {
        /// Print one JSON document: {"ok": …, "checks": [{"name", "ok", "detail"}, …]}.
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
        command: TasksCommand,
    },
    /// Replicas (pause state, backlog), recent runs, upload queue, and the schedule:
    /// each scheduled task's and dump's next slot, last result, consecutive failures
    /// and last error, and who leads the scheduler.
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
    ///
    /// With --name, the `[[dumps]]` entry NAME runs now (its out, jobs, replica and
    /// pg_dump): the dump goes into a new subdirectory of its `out` named by UTC time and
    /// run id (`20261130T021500Z-run42`); after a success, complete dumps of the entry
    /// beyond `keep` are removed, oldest first, with the directories of its runs that
    /// did not succeed. Only directories pgmaint provably wrote are removed (its name
    /// pattern, its `pgmaint-dump.json` marker, the run's record on the primary), never
    /// one whose run is still running; anything else in `out` is left alone.
    Dump {
        /// Output directory (must not exist, or be empty).
        #[arg(long, required_unless_present = "name", conflicts_with = "name")]
        out: Option<PathBuf>,
        /// Run the `[[dumps]]` entry NAME (instead of --out, -j and --pg-dump).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Parallel pg_dump jobs (pg_dump -j).
        #[arg(long, short = 'j', default_value_t = 2, conflicts_with = "name")]
        jobs: u32,
        /// pg_dump binary; default: the one of the server's major version.
        #[arg(long, conflicts_with = "name")]
        pg_dump: Option<PathBuf>,
        /// Replica to use (by name); default: the dump's pin (`dumps[].replica`, which
        /// --replica may not contradict), else the pool's choice.
        #[arg(long)]
        replica: Option<String>,
        /// Print the run summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Failover: promote a replica when the primary is down.
    ///
    /// Changes nothing until every check passed: the primary must be down (no server of
    /// primary.dsn accepts a connection, or answers at all, for failover.primary_down_after,
    /// and no replica's WAL receiver hears from one within it; --force never overrides
    /// this); the candidate is the replica that received the most WAL (ties: unpaused,
    /// then failover_priority, then name; never failover_priority = 0), or --replica; a
    /// candidate with more unreplayed WAL than failover.max_replay_backlog is refused
    /// unless --force.
    ///
    /// Then: replay resumed if paused; pg_promote(true, N) sent once (false means "not
    /// yet": pg_is_in_recovery() is polled until failover.promote_timeout); the promotion
    /// recorded on the new primary and in results.dir/promotions.json (the old primary is
    /// fenced from then on); runs left running dropped (never uploaded) and the pauses they
    /// own resumed; every other replica re-pointed at the new primary (ALTER SYSTEM SET
    /// primary_conninfo, its slot created there, reload) and reported following, diverged
    /// (with the pg_rewind command), unreachable or not following.
    ///
    /// Exit code 0 when promoted and recorded (each other replica's state is in the
    /// report); 1 when refused or failed (the primary is up, no candidate, a --replica that
    /// is unreachable or not in recovery, the backlog gate, a promotion not finished within
    /// promote_timeout); 2 for bad usage or config (an unknown --replica, one with
    /// failover_priority = 0, replicas of different clusters, a role that may not promote).
    Promote {
        /// Promote this replica (by name) instead of the best candidate; warns if another
        /// replica received more WAL (lost with this choice).
        #[arg(long)]
        replica: Option<String>,
        /// Promote even if the candidate's unreplayed WAL is over failover.max_replay_backlog
        /// (it accepts no write until replayed). Never overrides the primary down check.
        #[arg(long)]
        force: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run as a service: the scheduler, the upload worker and the metrics endpoint.
    ///
    /// Tasks and dumps with `every` (an interval from the start of their last run) or
    /// `at` (a 5-field cron expression in daemon.timezone) run when due; the others only
    /// by hand. Each slot is claimed once on the primary (pgmaint.task_slots), so neither
    /// a restart nor a second daemon runs it twice; slots missed while no daemon ran get
    /// one catch-up run (daemon.catch_up = "one") or none ("none"). Runs of a task never
    /// overlap. Tasks due together share one cycle (one pause) per replica; cycles run
    /// on several free replicas at once, within limits.keep_unpaused. A failing task
    /// never stops the others or its own schedule.
    ///
    /// Only the holder of the leader lease (pgmaint.leader, daemon.leader_lease)
    /// schedules; another daemon takes over within one lease after it dies. Every daemon
    /// runs an upload worker (daemon.uploader) for the tasks its host's results.dir
    /// holds. daemon.listen serves GET /metrics (Prometheus) and GET /health.
    ///
    /// SIGTERM/SIGINT: stop scheduling, abort cycles in flight (replay resumed), let
    /// the uploader finish within uploader.shutdown_grace, release the lease, exit 0.
    /// SIGHUP: reload the config (a bad one is logged, the old one kept). Exit code 2
    /// for bad config at start (an invalid cron expression, a listen address in use); 3
    /// when the primary does not answer at start (with failover.automatic the daemon
    /// starts anyway when no server of primary.dsn answers).
    Daemon,
    /// Remove old result directories and finished run records.
    ///
    /// For each run that ended (or started, if it never ended) before now − DURATION
    /// (the primary's clock): its record in pgmaint.runs, its upload tasks (all
    /// finished), its findings in pgmaint.integrity_findings, and its directory
    /// results.dir/<run-id>/. One line per run removed, then a summary.
    ///
    /// Never removed: a run still running or holding a replica lease; a run with an
    /// upload task waiting or running; the latest successful run of each task (the newest
    /// succeeded run listing it, and the newest whose upload for it completed, which
    /// pgmaint.current_findings shows); a run that a materialized target, a task cursor
    /// or a swapped-out table refers to; dump runs (`[[dumps]]` prune theirs with
    /// `keep`); anything in results.dir pgmaint cannot prove is the run's (a name that
    /// is not a run id, no run record, another run's manifest.json); the record of a run
    /// made on another host (prune there removes its directory and record).
    ///
    /// Exit code 0 when done; 1 when a removal failed (the others are done); 2 for bad
    /// usage or config; 3 when the primary cannot be reached.
    Prune {
        /// Remove what ended longer ago than this: 30d, 12h, 90m, 1d12h (as durations in
        /// config).
        #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
        older_than: String,
        /// List what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print one JSON document: {"dry_run", "older_than", "cutoff", "removed": [{"run_id",
        /// "state", "ended_at", "upload_tasks", "findings", "directory"}], "kept": [{"run_id",
        /// "reason"}], "kept_directories": [{"path", "reason"}], "errors"}.
        #[arg(long)]
        json: bool,
    },
    /// Resume a replica left paused by a dead run (expired lease); mark the run DROPPED.
    Recover {
        /// Only this replica; default: every replica in config.
        #[arg(long)]
        replica: Option<String>,
    },
    /// Print a shell completion script on stdout (needs no config and no server).
    ///
    /// bash: `pgmaint completions bash > /etc/bash_completion.d/pgmaint`;
    /// zsh: `pgmaint completions zsh > /usr/local/share/zsh/site-functions/_pgmaint`;
    /// fish: `pgmaint completions fish > ~/.config/fish/completions/pgmaint.fish`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the man page (roff) on stdout (needs no config and no server).
    ///
    /// `pgmaint man > /usr/local/share/man/man1/pgmaint.1`, then `man pgmaint`.
    Man,
}

/// The shells `pgmaint completions` writes a script for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// bash (bash-completion).
    Bash,
    /// zsh (compsys).
    Zsh,
    /// fish.
    Fish,
}

/// The completion script for `shell`, generated from this command line's definition.
pub fn completions(shell: Shell) -> Vec<u8> {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "pgmaint", &mut out);
    out
}

/// The man page, pgmaint(1), in roff, generated from this command line's definition.
pub fn man_page() -> Vec<u8> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut out)
        .expect("rendering into memory");
    out
}

/// `pgmaint tasks …`.
#[derive(Subcommand)]
pub enum TasksCommand {
    /// Upload tasks, newest first.
    List {
        /// Only tasks in this state (waiting, running, completed, failed, cancelled, dropped).
        #[arg(long)]
        state: Option<String>,
        /// Only the tasks of this run.
        #[arg(long)]
        run: Option<i64>,
        /// At most this many (1 or more).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..))]
        limit: i64,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// One task in full: params, lease, last error.
    Show {
        /// Task id.
        id: i64,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a waiting task now, or ask the worker running it to stop (the apply is
    /// rolled back). Tasks that depend on it are dropped.
    Cancel {
        /// Task id.
        id: i64,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put a failed, cancelled or dropped task back to waiting, attempts reset (and the
    /// tasks that were dropped because of it). Refused (exit 1) while a prerequisite of
    /// the task is failed, cancelled or dropped: the error names the task to retry.
    ///
    /// Each task waits for the host whose results.dir holds its files (results.host);
    /// only the uploader of that host claims it. --on-host hands tasks over to another
    /// host, e.g. when theirs is gone: a failed, cancelled or dropped task is re-queued
    /// there, and a task still waiting is just moved (with the waiting tasks of its run
    /// that depend on it). First copy results.dir/<run-id>/ of the old host into
    /// results.dir/<run-id>/ of HOST: the uploader there refuses a missing or changed file.
    Retry {
        /// Task id.
        id: i64,
        /// Wait for this host from now on (its results.host). "any": any uploader may
        /// claim it; allowed only with results.shared = true in this config (storage every
        /// host reads).
        #[arg(long, value_name = "HOST")]
        on_host: Option<String>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A duration argument, checked as config durations are (`units::parse_duration`).
fn duration_arg(text: &str) -> Result<String, String> {
    crate::units::parse_duration(text).map(|_| text.to_string())
}

/// The crates whose module paths a bare `--log` directive may name (`pgmaint` means
/// `pgmaint=trace`, as in RUST_LOG).
const LOG_TARGETS: [&str; 4] = ["pgmaint", "uploader", "snapshot_runner", "tokio_postgres"];

/// The log filter of `--log` (RUST_LOG syntax), checked: a level (`debug`), or
/// `TARGET=LEVEL` directives separated by commas (`info,pgmaint::cycle=debug`). A bare
/// word that is neither a level nor one of pgmaint's crates is refused rather than
/// read as a target that matches nothing (`--log debg` would silence every log).
/// Server NOTICEs (tokio_postgres) are at `warn` unless the filter says otherwise.
pub fn log_filter(spec: &str) -> Result<tracing_subscriber::EnvFilter, crate::UsageError> {
    use tracing_subscriber::filter::LevelFilter;
    let bad = |why: String| crate::UsageError(format!("--log {spec:?}: {why}"));
    let mut directives = Vec::new();
    for d in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !d.contains('=') && !d.contains('[') {
            let crate_name = d.split("::").next().unwrap_or(d);
            if d.parse::<LevelFilter>().is_err() && !LOG_TARGETS.contains(&crate_name) {
                return Err(bad(format!(
                    "{d:?} is not a level (trace, debug, info, warn, error, off) nor one of pgmaint's \
                     crates ({}); write TARGET=LEVEL for a target",
                    LOG_TARGETS.join(", ")
                )));
            }
        }
        directives.push(d);
    }
    if directives.is_empty() {
        return Err(bad("empty; give a level, e.g. info".into()));
    }
    let full = format!("tokio_postgres=warn,{}", directives.join(","));
    tracing_subscriber::EnvFilter::builder()
        .parse(&full)
        .map_err(|e| bad(e.to_string()))
}

/// The config file with the command line's and environment's overrides.
pub fn load_config(g: &GlobalOpts) -> Result<Config> {
    let overrides = Overrides {
        primary: g.primary_dsn.clone(),
        replica: g.replica_dsn.clone(),
    };
    Ok(Config::load(&g.config, &overrides)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filters_are_checked_not_guessed() {
        for good in [
            "debug",
            "INFO",
            "info,pgmaint::cycle=debug",
            "pgmaint",
            "warn,uploader=trace",
            "off",
        ] {
            assert!(log_filter(good).is_ok(), "{good}");
        }
        for bad in ["debg", "", " , ", "pgmaint=loud", "verbose,pgmaint=debug"] {
            let e = log_filter(bad).unwrap_err().0;
            assert!(e.starts_with("--log "), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn completions_and_the_man_page_cover_every_subcommand() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = String::from_utf8(completions(shell)).unwrap();
            assert!(
                script.contains("daemon") && script.contains("promote"),
                "{shell:?}"
            );
        }
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes:") && help.contains("3  a server could not be reached"));
        let short = Cli::command().render_help().to_string();
        assert!(short.contains("Exit codes:"), "{short}");
        let man = String::from_utf8(man_page()).unwrap();
        assert!(man.starts_with(".ie"), "{}", &man[..80.min(man.len())]);
        assert!(man.contains(".TH pgmaint 1") && man.contains("daemon"));
    }
}
