//! The write guard of the upload worker ([`uploader::CommitGuard`]): before every
//! claim and right before every apply commits, the worker asks whether the primary in
//! use is still the primary. It is not when a configured replica of the same system
//! is out of recovery on a newer timeline (promoted: the primary in use is a former
//! one), or when a replica's failover lock is held (a failover is under way). The
//! guard keeps one session per server open, so a look costs a few milliseconds.
//!
//! What remains: a promotion that lands between this look and the commit (a few
//! milliseconds), one of a server pgmaint does not know, or one of a replica this
//! worker cannot reach (an unreachable replica speaks neither for nor against: failing
//! closed would stop every upload whenever a replica restarts). A promotion recorded in
//! this host's `promotions.json` counts even then. `failover.fence_command`
//! (STONITH, a firewall rule on the old primary) closes that window: it runs before
//! every promotion pgmaint makes.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio_postgres::Client;

use crate::config::{Config, Dsn, ReplicaConfig};
use crate::failover::primary::address;
use crate::failover::servers as p;
use crate::replica::server_identity;

/// The guard of one worker against one primary.
pub struct TimelineGuard {
    primary: Dsn,
    results_dir: std::path::PathBuf,
    replicas: Vec<ReplicaConfig>,
    sessions: tokio::sync::Mutex<HashMap<String, Client>>,
}

impl TimelineGuard {
    /// A guard for `cfg.primary` (the server in use), asking `cfg.replicas`.
    pub fn new(cfg: &Config) -> TimelineGuard {
        TimelineGuard {
            primary: cfg.primary.clone(),
            results_dir: cfg.results_dir.clone(),
            replicas: cfg.replicas.clone(),
            sessions: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    async fn look(&self) -> Result<(), String> {
        let mut sessions = self.sessions.lock().await;
        let ours = match session(&mut sessions, "primary", &self.primary).await {
            Some(c) => match server_identity(c).await {
                Ok(Some(id)) => id,
                Ok(None) => return Err("the primary in use is in recovery (a standby now)".into()),
                Err(e) => {
                    sessions.remove("primary");
                    return Err(format!("the primary in use does not answer: {e:#}"));
                }
            },
            None => return Err("the primary in use does not answer".into()),
        };
        // A promotion recorded on this host (by another pgmaint process) that fences it.
        let recorded = crate::failover::journal::read_local(&self.results_dir)
            .map_err(|e| format!("{e:#}"))?;
        if let Some(p) =
            crate::failover::journal::fenced_by(&recorded, ours.system_identifier, ours.timeline)
        {
            return Err(format!(
                "replica {} was promoted to timeline {} (results.dir/promotions.json): the primary in use is a \
                 former primary",
                p.replica, p.new_timeline
            ));
        }
        for r in &self.replicas {
            let Some(c) = session(&mut sessions, &r.name, &r.dsn).await else {
                // Out of reach: it can speak neither for nor against.
                continue;
            };
            let Ok(asked) = tokio::time::timeout(SERVER_LIMIT, server_identity(c)).await else {
                // Out of reach in time: it speaks neither for nor against.
                sessions.remove(&r.name);
                continue;
            };
            match asked {
                Ok(Some(id))
                    if id.system_identifier == ours.system_identifier
                        && id.timeline > ours.timeline =>
                {
                    return Err(format!(
                        "replica {} ({}) is a primary on timeline {}, newer than the primary's {}: the primary in use \
                         is a former primary",
                        r.name,
                        address(&r.dsn),
                        id.timeline,
                        ours.timeline
                    ));
                }
                Ok(_) => {}
                Err(_) => {
                    sessions.remove(&r.name);
                    continue;
                }
            }
            let holder = tokio::time::timeout(SERVER_LIMIT, p::failover_lock_holder(c))
                .await
                .ok()
                .flatten();
            if let Some(holder) = holder {
                return Err(format!(
                    "the failover lock on replica {} is held by {holder}: a failover is under way",
                    r.name
                ));
            }
        }
        Ok(())
    }
}

/// The open session to `dsn` under `key`, opened if needed (within 2 s).
async fn session<'a>(
    sessions: &'a mut HashMap<String, Client>,
    key: &str,
    dsn: &Dsn,
) -> Option<&'a Client> {
    if sessions.get(key).is_some_and(|c| c.is_closed()) {
        sessions.remove(key);
    }
    if !sessions.contains_key(key) {
        let c = p::connect_within(dsn, "pgmaint-guard", Duration::from_secs(2))
            .await
            .ok()?;
        sessions.insert(key.to_string(), c);
    }
    sessions.get(key)
}

impl uploader::CommitGuard for TimelineGuard {
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async {
            // Bounded: a server that hangs (SIGSTOP, a dead network) must neither hold
            // an apply transaction open before its commit nor keep a shutdown waiting.
            match tokio::time::timeout(LOOK_LIMIT, self.look()).await {
                Ok(r) => r,
                Err(_) => {
                    self.sessions.lock().await.clear();
                    Err(format!(
                        "the servers did not answer the guard within {}s",
                        LOOK_LIMIT.as_secs()
                    ))
                }
            }
        })
    }
}

/// How long one look of the guard may take in all.
const LOOK_LIMIT: Duration = Duration::from_secs(3);

/// How long one server may take to answer the guard.
const SERVER_LIMIT: Duration = Duration::from_millis(1500);
