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

pub(crate) mod failover;
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
pub async fn run(
    cfg: Config,
    listed: Dsn,
    source: ConfigSource,
    reachable: bool,
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
        listen = ?cfg.daemon.listen,
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
    let promoted = Arc::new(std::sync::Mutex::new(None));
    tokio::spawn(reload_on_signal(
        reload,
        source,
        listed.clone(),
        promoted.clone(),
        config_tx.clone(),
    ));

    let outcome = loop {
        let cfg = config_rx.borrow().clone();
        match term(&cfg, &listed, &holder, &stats, &config_rx, &shutdown).await {
            TermEnd::Shutdown => break Ok(()),
            TermEnd::Moved(why) => break Err(why),
            TermEnd::Switched(new) => {
                *promoted.lock().expect("promoted") = Some(
                    cfg.replicas
                        .iter()
                        .find(|r| r.dsn.config == new.primary.config)
                        .map(|r| r.name.clone())
                        .unwrap_or_default(),
                );
                let _ = config_tx.send(Arc::new(*new));
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

/// How a term (the daemon's work against one primary) ended.
enum TermEnd {
    /// SIGTERM or SIGINT.
    Shutdown,
    /// The primary changed without this daemon's failover (stop: a service manager
    /// starts the daemon again, against the new one).
    Moved(String),
    /// A failover: go on with this config (a new primary).
    Switched(Box<Config>),
}

/// Work against `cfg.primary` until a shutdown, a failover or a moved primary: the
/// leader lease, the scheduler, the upload worker, and the watch on the primary (the
/// failover watch with `failover.automatic`, else the uploader's).
async fn term(
    cfg: &Arc<Config>,
    listed: &Dsn,
    holder: &str,
    stats: &Arc<crate::metrics::DaemonStats>,
    config_rx: &watch::Receiver<Arc<Config>>,
    shutdown: &CancellationToken,
) -> TermEnd {
    let term = shutdown.child_token();
    let (leadership, leads) = Leadership::new(
        cfg.primary.clone(),
        holder.to_string(),
        cfg.daemon.leader_lease,
    );
    let leading = tokio::spawn(leadership.run(term.clone()));
    let uploading = cfg.daemon.uploader.then(|| {
        let worker = crate::commands::uploader::worker(cfg, None);
        let term = term.clone();
        tokio::spawn(async move {
            let ran = worker.run(term.clone()).await;
            // A worker that gives up while the daemon runs would leave uploads undone
            // unnoticed: end the term (and the daemon, exit 1).
            if let Err(e) = &ran {
                if !term.is_cancelled() {
                    tracing::error!("upload worker stopped: {e}");
                    term.cancel();
                }
            }
            ran
        })
    });
    let watching = if cfg.failover.automatic {
        let (cfg, stats, term) = (cfg.clone(), stats.clone(), term.clone());
        tokio::spawn(async move {
            let new = failover::watch(cfg, stats, term.clone()).await;
            term.cancel();
            new.map(|c| TermEnd::Switched(Box::new(c)))
        })
    } else {
        let (cfg, listed, term) = ((**cfg).clone(), listed.clone(), term.clone());
        tokio::spawn(async move {
            crate::commands::uploader::watch_the_primary(cfg, listed, term)
                .await
                .map(TermEnd::Moved)
        })
    };
    scheduler::Scheduler::new(config_rx.clone(), leads, holder.to_string())
        .run(term.clone())
        .await;
    let mut worker_failed = None;
    if let Some(u) = uploading {
        match u.await {
            Ok(Ok(stats)) => tracing::info!(
                applied = stats.completed,
                failed = stats.failed,
                "upload worker stopped"
            ),
            Ok(Err(e)) => worker_failed = Some(format!("the upload worker stopped: {e}")),
            Err(e) => worker_failed = Some(format!("the upload worker stopped: {e}")),
        }
    }
    let _ = leading.await;
    term.cancel();
    match (watching.await.ok().flatten(), worker_failed) {
        (Some(end), _) => end,
        (None, Some(why)) if !shutdown.is_cancelled() => TermEnd::Moved(why),
        (None, _) => TermEnd::Shutdown,
    }
}

/// On every SIGHUP, read the config again. A bad config is logged in one line and the
/// old one kept; a good one takes effect at the scheduler's next tick.
async fn reload_on_signal(
    reload: Arc<Notify>,
    source: ConfigSource,
    listed: Dsn,
    promoted: Arc<std::sync::Mutex<Option<String>>>,
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
        // The server in use stays the one found at start, or promoted since.
        let promoted = promoted.lock().expect("promoted").clone();
        match promoted.and_then(|name| failover::switched(&new, &name)) {
            Some(switched) => new = switched,
            None => new.primary = old.primary.clone(),
        }
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
