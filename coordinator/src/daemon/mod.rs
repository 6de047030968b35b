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
use crate::{db, lease, schema, signals};

pub(crate) mod scheduler;

/// Where the config comes from, to read it again on SIGHUP.
pub struct ConfigSource {
    /// `--config`.
    pub path: PathBuf,
    /// The command line's and environment's overrides.
    pub overrides: Overrides,
}

/// `pgmaint daemon`. `listed`: `primary.dsn` as configured (`cfg.primary` is the one
/// server in use).
pub async fn run(cfg: Config, listed: Dsn, source: ConfigSource) -> Result<ExitCode> {
    let listener = cfg.daemon.listen.map(crate::http::bind).transpose()?;
    let primary = db::connect_at_start(&cfg.primary, "pgmaint-daemon").await?;
    schema::require_current(&primary).await?;
    drop(primary);
    let holder = lease::holder();
    let shutdown = CancellationToken::new();
    let reload = Arc::new(Notify::new());
    signals::daemon_signals(shutdown.clone(), reload.clone());
    tracing::info!(
        holder = %holder,
        tasks = cfg.tasks.iter().filter(|t| t.schedule.is_some()).count(),
        dumps = cfg.dumps.iter().filter(|d| d.schedule.is_some()).count(),
        uploader = cfg.daemon.uploader,
        listen = ?cfg.daemon.listen,
        "daemon started"
    );

    let (leadership, leads) =
        Leadership::new(cfg.primary.clone(), holder.clone(), cfg.daemon.leader_lease);
    let leading = tokio::spawn(leadership.run(shutdown.clone()));
    let uploading = cfg.daemon.uploader.then(|| {
        let worker = crate::commands::uploader::worker(&cfg, None);
        let shutdown = shutdown.clone();
        tokio::spawn(async move { worker.run(shutdown).await })
    });
    let watching = tokio::spawn(crate::commands::uploader::watch_the_primary(
        cfg.clone(),
        listed.clone(),
        shutdown.clone(),
    ));
    let (config_tx, config_rx) = watch::channel(Arc::new(cfg));
    let serving = listener.map(|l| {
        tokio::spawn(crate::http::serve(
            l,
            config_rx.clone(),
            holder.clone(),
            shutdown.clone(),
        ))
    });
    tokio::spawn(reload_on_signal(reload, source, listed, config_tx));

    scheduler::Scheduler::new(config_rx, leads, holder)
        .run(shutdown.clone())
        .await;
    if let Some(u) = uploading {
        match u.await {
            Ok(Ok(stats)) => tracing::info!(
                applied = stats.completed,
                failed = stats.failed,
                "upload worker stopped"
            ),
            Ok(Err(e)) => tracing::error!("upload worker: {e}"),
            Err(e) => tracing::error!("upload worker: {e}"),
        }
    }
    let _ = leading.await;
    if let Some(s) = serving {
        let _ = s.await;
    }
    watching.abort();
    match watching.await.ok().flatten() {
        Some(why) => {
            anyhow::bail!("{why}: stopped; start `pgmaint daemon` again to follow the primary")
        }
        None => {
            tracing::info!("daemon stopped");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// On every SIGHUP, read the config again. A bad config is logged in one line and the
/// old one kept; a good one takes effect at the scheduler's next tick.
async fn reload_on_signal(
    reload: Arc<Notify>,
    source: ConfigSource,
    listed: Dsn,
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
        // The server in use stays the one found at start.
        new.primary = old.primary.clone();
        new.results_dir = old.results_dir.clone();
        new.results_host = old.results_host.clone();
        new.results_shared = old.results_shared;
        new.daemon.listen = old.daemon.listen;
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
            "daemon.uploader",
            new.daemon.uploader != old.daemon.uploader,
        ),
        (
            "daemon.leader_lease",
            new.daemon.leader_lease != old.daemon.leader_lease,
        ),
    ]
}
