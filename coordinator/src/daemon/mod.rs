//! `pgmaint daemon`: nightly maintenance as one long-lived service.
//!
//! One process hosts, under one shutdown token, the pieces the one-shot commands use:
//! - the scheduler ([`scheduler`]): while this daemon holds the leader lease
//!   ([`crate::leader`]), it claims due slots on the primary and runs their cycles;
//! - the upload worker (`daemon.uploader`, on by default): every daemon runs one,
//!   claiming the tasks whose files its host holds;
//! - the HTTP endpoint (`daemon.listen`): `/metrics` and `/health`.
//!
//! SIGTERM or SIGINT: stop scheduling, abort the cycles in flight (each resumes its
//! replica), let the uploader finish within `uploader.shutdown_grace`, release the
//! leader lease, exit 0. SIGHUP: reload the config; a bad one is logged and the old
//! one kept.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Dsn, Overrides};
use crate::leader::Leadership;
use crate::{db, schema, signals};

pub(crate) mod scheduler;

/// Where the config comes from, to read it again on SIGHUP.
pub struct ConfigSource {
    /// `--config`.
    pub path: PathBuf,
    /// The command line's and environment's overrides.
    pub overrides: Overrides,
}

/// `pgmaint daemon`. `listed`: `primary.dsn` as configured (`cfg.primary` is the one
/// server in use). `reachable`: the primary answered at start (with
/// `failover.automatic`, the daemon also starts without it, and its watch decides).
/// `promoted`: replicas found promoted at start (the daemon runs with the newest as its
/// primary), so that a reload never brings the old primary back.
pub async fn run(
    cfg: Config,
    listed: Dsn,
    source: ConfigSource,
    reachable: bool,
    promoted: Vec<String>,
) -> Result<ExitCode> {
    let listener = cfg.daemon.listen.map(crate::http::bind).transpose()?;
    if reachable {
        let primary = db::connect_at_start(&cfg.primary, "pgmaint-daemon").await?;
        schema::require_current(&primary).await?;
    }
    let holder = crate::leader::daemon_holder();
    let shutdown = CancellationToken::new();
    let reload = Arc::new(Notify::new());
    signals::daemon_signals(shutdown.clone(), reload.clone());
    tracing::info!(
        holder = %holder,
        tasks = cfg.tasks.iter().filter(|t| t.schedule.is_some()).count(),
        dumps = cfg.dumps.iter().filter(|d| d.schedule.is_some()).count(),
        uploader = cfg.daemon.uploader,
        automatic_failover = cfg.failover.automatic,
        listen = %cfg.daemon.listen.map(|l| l.to_string()).unwrap_or_else(|| "off".into()),
        primary = %crate::failover::primary::address(&cfg.primary),
        "daemon started"
    );
    let stats = Arc::new(crate::metrics::DaemonStats::default());
    let (config_tx, config_rx) = watch::channel(Arc::new(cfg));
    let serving = listener.map(|l| {
        tokio::spawn(crate::http::serve(
            l,
            config_rx.clone(),
            holder.clone(),
            stats.clone(),
            shutdown.clone(),
        ))
    });
    // Every replica promoted while this daemon ran, the newest last.
    let promoted = Arc::new(std::sync::Mutex::new(promoted));
    tokio::spawn(reload_on_signal(
        reload,
        source,
        listed.clone(),
        promoted.clone(),
        config_tx.clone(),
    ));

    let mut degraded = !reachable;
    let shared = Shared {
        listed: listed.clone(),
        holder: holder.clone(),
        stats: stats.clone(),
        config_rx: config_rx.clone(),
        shutdown: shutdown.clone(),
        memory: Arc::default(),
    };
    let outcome = loop {
        let cfg = config_rx.borrow().clone();
        let end = term(&cfg, &shared, degraded).await;
        // Shutdown wins over whatever the term ended with: a failover it interrupted
        // is recorded, and the next start completes it.
        if shutdown.is_cancelled() {
            break Ok(());
        }
        match end {
            TermEnd::Shutdown => break Ok(()),
            TermEnd::Moved(why) => break Err(why),
            TermEnd::Again => {}
            TermEnd::Switched(name) => {
                let Some(new) = crate::failover::watch::switched(&config_rx.borrow(), &name) else {
                    break Err(format!(
                        "replica {name}, the new primary, is no longer in the config"
                    ));
                };
                let checked = tokio::select! {
                    _ = shutdown.cancelled() => break Ok(()),
                    checked = usable(&new) => checked,
                };
                if let Err(why) = checked {
                    break Err(why);
                }
                degraded = false;
                // One lock for the switch and a reload: a reload never brings back the
                // old primary, and the switch applies to the latest config.
                let mut guard = promoted.lock().expect("promoted");
                let new =
                    crate::failover::watch::switched(&config_rx.borrow(), &name).unwrap_or(new);
                guard.push(name);
                let _ = config_tx.send(Arc::new(new));
                drop(guard);
            }
        }
    };
    if let Some(s) = serving {
        shutdown.cancel();
        let _ = s.await;
    }
    match outcome {
        Err(why) => {
            anyhow::bail!(
                "{why}: the daemon stopped; start it again (its service restarts it on failure)"
            )
        }
        Ok(()) => {
            tracing::info!("daemon stopped");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The new primary after a switch: reachable, pgmaint's schema current.
async fn usable(cfg: &Config) -> Result<(), String> {
    let client = db::connect(&cfg.primary, "pgmaint-daemon")
        .await
        .map_err(|e| format!("the new primary: {}", e.0))?;
    schema::require_current(&client)
        .await
        .map_err(|e| format!("the new primary: {e:#}"))
}

/// What every term of the daemon shares.
struct Shared {
    /// `primary.dsn` as configured.
    listed: Dsn,
    /// The leader-lease holder id.
    holder: String,
    stats: Arc<crate::metrics::DaemonStats>,
    config_rx: watch::Receiver<Arc<Config>>,
    shutdown: CancellationToken,
    /// What the failover watch remembers across terms.
    memory: Arc<std::sync::Mutex<crate::failover::watch::Memory>>,
}

/// How a term (the daemon's work against one primary) ended.
enum TermEnd {
    /// SIGTERM or SIGINT.
    Shutdown,
    /// The primary changed without this daemon's failover (stop: a service manager
    /// starts the daemon again, against the new one).
    Moved(String),
    /// A failover: go on with this replica as the primary.
    Switched(String),
    /// The work stopped for a failover that did not happen: start again.
    Again,
}

/// Work against `cfg.primary` until a shutdown, a failover or a moved primary: the
/// leader lease, the scheduler and the upload worker (all under `work`); without
/// `failover.automatic` the uploader's watch on `primary.dsn` (a fenced or moved primary
/// stops the daemon), with it the failover watch. A degraded term (no primary answered
/// at start) only watches.
async fn term(cfg: &Arc<Config>, d: &Shared, degraded: bool) -> TermEnd {
    let term = d.shutdown.child_token();
    // Stopped by the term's end, or by a failover once the primary is found down or
    // superseded (then with AbortReason::Failover: nothing more is written on it).
    let work = crate::abort::Abort::under(&term);
    let watching = spawn_watch(cfg, d, &term, &work, degraded);
    let worker_failed = if degraded {
        term.cancelled().await;
        None
    } else {
        do_the_work(cfg, d, &term, &work).await
    };
    // A failover under way (the work stopped for it) ends the term itself.
    let end = watching.await.ok().flatten();
    term.cancel();
    match (end, worker_failed) {
        (Some(end), _) => end,
        (None, Some(why)) if !d.shutdown.is_cancelled() => TermEnd::Moved(why),
        (None, _) => TermEnd::Shutdown,
    }
}

/// The watch on the primary of a term: it ends the term when it returns.
fn spawn_watch(
    cfg: &Arc<Config>,
    d: &Shared,
    term: &CancellationToken,
    work: &crate::abort::Abort,
    degraded: bool,
) -> tokio::task::JoinHandle<Option<TermEnd>> {
    let term = term.clone();
    if cfg.failover.automatic {
        let w = crate::failover::watch::Watch {
            cfg: cfg.clone(),
            latest: d.config_rx.clone(),
            stats: d.stats.clone(),
            term: term.clone(),
            work: work.clone(),
            degraded,
            memory: d.memory.clone(),
            holder: d.holder.clone(),
        };
        let work = work.clone();
        tokio::spawn(async move {
            let end = crate::failover::watch::watch(w).await;
            if let Some(crate::failover::watch::WatchEnd::Stop(why)) = &end {
                work.trigger(crate::abort::AbortReason::Failover(why.clone()));
            }
            term.cancel();
            end.map(|end| match end {
                crate::failover::watch::WatchEnd::Switch(name) => TermEnd::Switched(name),
                crate::failover::watch::WatchEnd::Again => TermEnd::Again,
                crate::failover::watch::WatchEnd::Stop(why) => TermEnd::Moved(why),
            })
        })
    } else {
        let (cfg, listed, work) = ((**cfg).clone(), d.listed.clone(), work.clone());
        tokio::spawn(async move {
            let moved =
                crate::commands::uploader::watch_the_primary(cfg, listed, term.clone()).await;
            // The primary moved or was fenced: the work stops for that reason, so that
            // nothing more is written on it (not the runs' ends, nor slots, nor the lease).
            if let Some(why) = &moved {
                work.trigger(crate::abort::AbortReason::Failover(why.clone()));
            }
            term.cancel();
            moved.map(TermEnd::Moved)
        })
    }
}

/// The leader lease, the upload worker and the scheduler, until `work` ends; why the
/// upload worker gave up, if it did.
async fn do_the_work(
    cfg: &Arc<Config>,
    d: &Shared,
    term: &CancellationToken,
    work: &crate::abort::Abort,
) -> Option<String> {
    let (leadership, leads) = Leadership::new(
        cfg.primary.clone(),
        d.holder.clone(),
        cfg.daemon.leader_lease,
    );
    let leading = tokio::spawn(leadership.run(work.clone()));
    let uploading = cfg.daemon.uploader.then(|| {
        let worker = crate::commands::uploader::worker(cfg, None);
        let (work, term) = (work.token().clone(), term.clone());
        tokio::spawn(async move {
            let ran = worker.run(work.clone()).await;
            // A worker that gives up while the daemon runs would leave uploads undone
            // unnoticed: end the term (and the daemon, exit 1).
            if let Err(e) = &ran {
                if !work.is_cancelled() {
                    tracing::error!("upload worker stopped: {e}");
                    term.cancel();
                }
            }
            ran
        })
    });
    scheduler::Scheduler::new(d.config_rx.clone(), leads, d.holder.clone())
        .run(work.clone())
        .await;
    let mut failed = None;
    if let Some(u) = uploading {
        match u.await {
            Ok(Ok(stats)) => tracing::info!(
                applied = stats.completed,
                failed = stats.failed,
                "upload worker stopped"
            ),
            Ok(Err(e)) => failed = Some(format!("the upload worker stopped: {e}")),
            Err(e) => failed = Some(format!("the upload worker stopped: {e}")),
        }
    }
    let _ = leading.await;
    failed
}

/// On every SIGHUP, read the config again. A bad config is logged in one line and the
/// old one kept; a good one takes effect at the scheduler's next tick.
async fn reload_on_signal(
    reload: Arc<Notify>,
    source: ConfigSource,
    listed: Dsn,
    promoted: Arc<std::sync::Mutex<Vec<String>>>,
    config: watch::Sender<Arc<Config>>,
) {
    loop {
        reload.notified().await;
        let mut new = match Config::load(&source.path, &source.overrides) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("config reload failed, keeping the old config: {}", e.0);
                continue;
            }
        };
        let old = config.borrow().clone();
        for (what, changed) in restart_only_changes(&old, &new, &listed) {
            if changed {
                tracing::warn!("{what} changed: it takes effect when the daemon restarts");
            }
        }
        // The server in use stays the one found at start, or promoted since (under the
        // lock a switch holds: a reload never brings back the old primary).
        let guard = promoted.lock().expect("promoted");
        let old = config.borrow().clone();
        match guard
            .last()
            .and_then(|name| crate::failover::watch::switched(&new, name))
        {
            Some(switched) => new = switched,
            None => new.primary = old.primary.clone(),
        }
        // Former primaries (promoted earlier, failed over since) never rejoin the pool.
        new.replicas.retain(|r| !guard.contains(&r.name));
        new.results_dir = old.results_dir.clone();
        new.results_host = old.results_host.clone();
        new.results_shared = old.results_shared;
        new.daemon.listen = old.daemon.listen;
        new.daemon.uploader = old.daemon.uploader;
        new.daemon.leader_lease = old.daemon.leader_lease;
        new.uploader = old.uploader.clone();
        tracing::info!(
            tasks = new.tasks.iter().filter(|t| t.schedule.is_some()).count(),
            dumps = new.dumps.iter().filter(|d| d.schedule.is_some()).count(),
            "config reloaded"
        );
        let _ = config.send(Arc::new(new));
        drop(guard);
    }
}

/// Settings a reload does not apply, and whether each changed.
fn restart_only_changes(old: &Config, new: &Config, listed: &Dsn) -> Vec<(&'static str, bool)> {
    vec![
        (
            "primary.dsn",
            db::describe(&new.primary.config) != db::describe(&listed.config),
        ),
        ("results.dir", new.results_dir != old.results_dir),
        ("results.host", new.results_host != old.results_host),
        ("results.shared", new.results_shared != old.results_shared),
        ("daemon.listen", new.daemon.listen != old.daemon.listen),
        (
            "[uploader]",
            format!("{:?}", new.uploader) != format!("{:?}", old.uploader),
        ),
        (
            "daemon.uploader",
            new.daemon.uploader != old.daemon.uploader,
        ),
        (
            "daemon.leader_lease",
            new.daemon.leader_lease != old.daemon.leader_lease,
        ),
    ]
}
