//! `pgmaint`: the entry point. Parses the command line, sets up logging and the
//! runtime, and dispatches to the command's module; the exit code of an error is
//! decided in one place ([`ErrorClass`]).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use pgmaint::cli::{load_config, Cli, Command, GlobalOpts, LogFormat};
use pgmaint::commands;
use pgmaint::error_text::OneLine;
use pgmaint::errors::ErrorClass;
use pgmaint::failover::primary;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Generated from the command line alone: no config, no server, no logging.
    let generated = match cli.command {
        Command::Completions { shell } => Some(pgmaint::cli::completions(shell)),
        Command::Man => Some(pgmaint::cli::man_page()),
        _ => None,
    };
    if let Some(text) = generated {
        return print(&text);
    }
    if let Err(e) = init_logging(&cli.global) {
        let _ = writeln!(std::io::stderr(), "pgmaint: error: {e}");
        return ExitCode::from(ErrorClass::Usage.exit_code());
    }
    raise_open_files_limit();
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
            // The terminal may be gone (SIGHUP): a failed write is not worth a panic.
            let _ = writeln!(std::io::stderr(), "pgmaint: error: {}", e.one_line());
            ExitCode::from(ErrorClass::of(&e).exit_code())
        }
    }
}

/// Raise the soft limit of open files to the hard one, as PostgreSQL's own tools do: a
/// daemon serving `daemon.listen` and holding sessions to every server must not run
/// out of descriptors at the usual soft limit of 1024. A failure is only logged.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let soft = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::debug!("could not raise the open files limit from {soft}");
            }
        }
    }
}

/// Write `text` to stdout (a completion script, the man page).
fn print(text: &[u8]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(text).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "pgmaint: error: writing to stdout: {e}");
            ExitCode::from(ErrorClass::Runtime.exit_code())
        }
    }
}

/// Log to stderr, as text or one JSON object per line (`--log-format`). An invalid
/// `--log` filter is the operator's error (exit code 2), never a silent fallback.
fn init_logging(global: &GlobalOpts) -> Result<(), pgmaint::UsageError> {
    // Server NOTICEs ("relation already exists, skipping") are noise to an operator:
    // the filter puts tokio_postgres at warn unless it says otherwise.
    let filter = pgmaint::cli::log_filter(&global.log)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        // After a SIGHUP, stderr may be a dead terminal: a failed log write must be
        // dropped, not reported with eprintln! (which panics, before replay resumes).
        .log_internal_errors(false);
    match global.log_format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // The event's fields at the top level, next to timestamp, level and message.
        LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).init(),
    }
    Ok(())
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let mut cfg = load_config(&cli.global)?;
    // The primary is down when promote runs: it must not look for one.
    if let Command::Promote {
        replica,
        force,
        json,
    } = &cli.command
    {
        return commands::promote::run(&cfg, replica.as_deref(), *force, *json).await;
    }
    // check reports an unreachable primary as one of its lines.
    if let Command::Check { json } = &cli.command {
        return commands::check::run(&cfg, &cli.global.config, *json).await;
    }
    // A promotion this host recorded and did not finish (pgmaint killed half-way) is
    // completed before anything else.
    let may_promote = matches!(cli.command, Command::Daemon) && cfg.failover.automatic;
    pgmaint::failover::resume_at_start(&cfg, may_promote).await;
    let listed = cfg.primary.clone();
    // The primary among the servers primary.dsn lists (a former primary never); every
    // later connection of the command goes to that one server.
    let (_, primary, survey) = match primary::connect(&cfg, "pgmaint").await {
        Ok(found) => found,
        // With automatic failover, a daemon that finds a configured replica promoted
        // (its primary.dsn names the old primary) completes that promotion and goes on
        // with the new primary, as it would after its own failover.
        Err(e) if matches!(cli.command, Command::Daemon) && cfg.failover.automatic => {
            let source = daemon_source(&cli.global);
            if let Some(name) = promoted_replica(&cfg).await {
                tracing::warn!("{}", e.0);
                match pgmaint::failover::promote::complete_at_start(&cfg, &name).await {
                    Ok(r) => tracing::warn!(
                        "{}",
                        pgmaint::failover::report::render(&r)
                            .lines()
                            .next()
                            .unwrap_or_default()
                    ),
                    Err(e) => tracing::warn!("{}", e.one_line()),
                }
                let switched = pgmaint::failover::watch::switched(&cfg, &name)
                    .ok_or_else(|| anyhow::anyhow!("replica {name} is not in [[replicas]]"))?;
                return pgmaint::daemon::run(switched, listed, source, true, vec![name]).await;
            }
            if !none_answers(&cfg).await {
                return Err(e.at_start());
            }
            // The daemon starts without a primary: its watch decides whether the
            // primary is down (and promotes), or only out of reach.
            tracing::warn!("the primary is not reachable at start: {}", e.0);
            return pgmaint::daemon::run(cfg, listed, source, false, Vec::new()).await;
        }
        Err(e) => return Err(e.at_start()),
    };
    cfg.primary = primary;
    match cli.command {
        Command::Init => commands::init::run(&cfg).await,
        Command::Run {
            tasks,
            replica,
            json,
        } => commands::run::run(&cfg, &tasks, replica.as_deref(), json).await,
        Command::Dump {
            out,
            name,
            jobs,
            pg_dump,
            replica,
            json,
        } => {
            let target = match (name, out) {
                (Some(name), _) => commands::dump::DumpTarget::Named(name),
                (None, out) => commands::dump::DumpTarget::Out {
                    out: out.expect("clap: --out or --name"),
                    jobs,
                    pg_dump,
                },
            };
            commands::dump::run(&cfg, target, replica.as_deref(), json).await
        }
        Command::Uploader { once, slots } => {
            commands::recover::recover_in_passing(&cfg).await;
            commands::uploader::run(&cfg, &listed, once, slots).await
        }
        Command::Tasks { command } => commands::tasks::run(&cfg, command).await,
        Command::Status { json } => commands::status::run(&cfg, &survey, json).await,
        Command::Daemon => {
            commands::recover::recover_in_passing(&cfg).await;
            pgmaint::daemon::run(cfg, listed, daemon_source(&cli.global), true, Vec::new()).await
        }
        Command::Recover { replica } => commands::recover::run(&cfg, replica.as_deref()).await,
        Command::Prune {
            older_than,
            dry_run,
            json,
        } => commands::prune::run(&cfg, &older_than, dry_run, json).await,
        Command::Promote { .. } | Command::Check { .. } => {
            unreachable!("dispatched before the primary is resolved")
        }
        Command::Completions { .. } | Command::Man => {
            unreachable!("printed before the config is loaded")
        }
    }
}

/// Where the daemon reads its config again on SIGHUP.
fn daemon_source(g: &pgmaint::cli::GlobalOpts) -> pgmaint::daemon::ConfigSource {
    pgmaint::daemon::ConfigSource {
        path: g.config.clone(),
        overrides: pgmaint::config::Overrides {
            primary: g.primary_dsn.clone(),
            replica: g.replica_dsn.clone(),
        },
    }
}

/// The configured replica that is the primary now, if the servers say one is.
async fn promoted_replica(cfg: &pgmaint::config::Config) -> Option<String> {
    let (survey, _) = primary::survey(cfg, "pgmaint").await.ok()?;
    survey.promoted.map(|p| p.name)
}

/// No server of `primary.dsn` takes writes: each is out of reach or a standby (a
/// `primary.dsn` that lists every server, the primary dead). Not: one is fenced,
/// several take writes, the promotions on this host cannot be read — those stop the
/// daemon as every command.
async fn none_answers(cfg: &pgmaint::config::Config) -> bool {
    match primary::survey(cfg, "pgmaint").await {
        Ok((survey, _)) => survey.servers.iter().all(|(_, found)| {
            matches!(
                found,
                primary::Found::Unreachable(_) | primary::Found::Standby
            )
        }),
        Err(_) => false,
    }
}
