//! Automatic failover (`failover.automatic = true`): the daemon watches the primary and,
//! when it is really gone, promotes a replica through the same path as
//! `pgmaint promote` (never `--force`), or follows the one another pgmaint promoted.
//!
//! A failed connection only starts the check. The primary counts as down only when
//! [`crate::commands::promote::failover`] finds, for `failover.primary_down_after`,
//! that every connection attempt to every server of `primary.dsn` fails, that no
//! replica's WAL receiver hears from a primary, and that `failover.witness_command`
//! (if any) does not vouch for it. Exactly one promoter: it holds the failover lock (a
//! session advisory lock) on every replica it reaches, the candidate included; a
//! daemon that finds the lock taken, or a replica already out of recovery, follows
//! instead of promoting. The candidate rule is deterministic (most WAL received, then
//! unpaused, then `failover_priority`, then name), so daemons that see the same state
//! choose the same replica.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::commands::promote::{self, NotPromoting};
use crate::config::{Config, Dsn};
use crate::error_text::OneLine;
use crate::fence;
use crate::metrics::{self, DaemonStats};
use crate::promotion as p;

/// Watch `cfg.primary` every `failover.check_interval` until `term` ends. Returns the
/// config to go on with when a replica became the primary (promoted here or by
/// another pgmaint).
pub(crate) async fn watch(
    cfg: Arc<Config>,
    stats: Arc<DaemonStats>,
    term: CancellationToken,
) -> Option<Config> {
    let every = cfg.failover.check_interval;
    let mut down_since: Option<Instant> = None;
    // The first look at once: a daemon may start while the primary is gone.
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            tokio::select! {
                _ = term.cancelled() => return None,
                _ = tokio::time::sleep(every) => {}
            }
        }
        let patience = every.clamp(Duration::from_secs(1), Duration::from_secs(5));
        let answer = metrics::connect_quickly(&cfg.primary, "pgmaint-daemon-watch", patience).await;
        stats.primary_seen(answer.is_ok());
        match answer {
            Ok(_) => {
                if down_since.take().is_some() {
                    tracing::info!("the primary answers again");
                }
                continue;
            }
            Err(e) if down_since.is_none() => {
                tracing::warn!(
                    "the primary does not answer ({}): checking whether it is down",
                    e.0
                );
                down_since = Some(Instant::now());
            }
            Err(_) => {}
        }
        let since = down_since.expect("set above");
        if let Some(new) = attempt(&cfg, &stats, &term, since).await {
            return Some(new);
        }
    }
}

/// One failover attempt: follow a replica that is a primary already, or promote one.
/// The new config, if the daemon must switch.
async fn attempt(
    cfg: &Config,
    stats: &DaemonStats,
    term: &CancellationToken,
    since: Instant,
) -> Option<Config> {
    if let Some(name) = promoted_replica(cfg).await {
        return Some(followed(cfg, stats, &name, since));
    }
    tracing::warn!(
        "failover: is the primary down? checking for failover.primary_down_after ({}s)",
        cfg.failover.primary_down_after.as_secs_f64()
    );
    match promote::failover(cfg, None, false, term).await {
        Ok(report) => {
            tracing::warn!(
                new_primary = %report.new_primary,
                timeline = report.timeline,
                seconds = report.seconds.total,
                "failover: replica {} promoted; the daemon goes on with it as the primary",
                report.new_primary
            );
            for f in &report.replicas {
                tracing::info!(replica = %f.name, state = ?f.state, "failover: {}", f.detail);
            }
            let secs = since.elapsed().as_secs_f64();
            stats.failover("promoted", Some(secs));
            switched(cfg, &report.new_primary)
        }
        Err(e) => match e.downcast_ref::<NotPromoting>() {
            Some(NotPromoting::LockBusy(_)) | Some(NotPromoting::OtherPrimary(..)) => {
                tracing::info!("failover: {}; waiting to follow it", e.one_line());
                wait_to_follow(cfg, stats, term, since).await
            }
            Some(NotPromoting::FenceFailed(why)) => {
                tracing::error!("failover aborted: {why}");
                stats.failover("fence_failed", None);
                None
            }
            None => {
                let msg = e.one_line();
                let result = if msg.contains("nothing changed") {
                    "refused"
                } else {
                    "failed"
                };
                tracing::warn!(result, "no failover: {msg}");
                stats.failover(result, None);
                None
            }
        },
    }
}

/// Another pgmaint is promoting: wait (at most as long as its failover may take) for
/// a replica to be the primary, then follow it.
async fn wait_to_follow(
    cfg: &Config,
    stats: &DaemonStats,
    term: &CancellationToken,
    since: Instant,
) -> Option<Config> {
    let f = &cfg.failover;
    let patience = f.primary_down_after + f.promote_timeout + f.follow_timeout;
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        tokio::select! {
            _ = term.cancelled() => return None,
            _ = tokio::time::sleep(f.check_interval) => {}
        }
        if let Some(name) = promoted_replica(cfg).await {
            return Some(followed(cfg, stats, &name, since));
        }
    }
    tracing::warn!(
        "failover: the other pgmaint promoted no replica within {}s",
        patience.as_secs()
    );
    stats.failover("refused", None);
    None
}

fn followed(cfg: &Config, stats: &DaemonStats, name: &str, since: Instant) -> Config {
    tracing::warn!(
        new_primary = %name,
        "failover: followed: replica {name} is the primary now (promoted by another pgmaint or by hand); \
         the daemon goes on with it"
    );
    stats.failover("followed", Some(since.elapsed().as_secs_f64()));
    switched(cfg, name).expect("a configured replica")
}

/// A configured replica that is out of recovery and fenced by no recorded promotion:
/// a primary already.
async fn promoted_replica(cfg: &Config) -> Option<String> {
    let local = fence::read_local(&cfg.results_dir).unwrap_or_default();
    for s in p::probe_replicas(cfg).await {
        let Ok((client, probe)) = &s.state else {
            continue;
        };
        if probe.in_recovery {
            continue;
        }
        let Ok(Some(id)) = crate::replica::server_identity(client).await else {
            continue;
        };
        let mut known = local.clone();
        known.extend(fence::read_on(client).await);
        if fence::fenced_by(&known, id.system_identifier, id.timeline).is_none() {
            return Some(s.config.name.clone());
        }
    }
    None
}

/// `cfg` with replica `name` as the primary, and without it among the replicas.
pub(crate) fn switched(cfg: &Config, name: &str) -> Option<Config> {
    let mut new = cfg.clone();
    let i = new.replicas.iter().position(|r| r.name == name)?;
    let promoted = new.replicas.remove(i);
    new.primary = Dsn {
        config: promoted.dsn.config.clone(),
        field: format!("replicas[{i}].dsn (replica {name}, promoted)"),
    };
    Some(new)
}
