//! The scheduler's leader lease: one row of `pgmaint.leader` on the primary, as River's
//! `river_leader`. Only its holder claims slots, so only one daemon schedules at a
//! time; every daemon runs upload workers (the queue is safe for many).
//!
//! Expiry is the primary's clock (`now()`), so daemons on hosts whose clocks disagree
//! still agree on who leads. The holder renews every third of the lease; a daemon
//! that cannot renew stops scheduling once its last renewal is a lease old, which is
//! also when another daemon may take over. A clean shutdown deletes the row, so the
//! next daemon takes over at once. The claim of a slot checks leadership again inside
//! its own statement ([`crate::schedule::claim`]): a leader that lost the row without
//! noticing cannot claim anything.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::Client;

use crate::config::Dsn;
use crate::db;

/// The row's name.
pub const SCHEDULER: &str = "scheduler";

/// Take the lease, or renew it if `holder` has it. True if `holder` leads now.
pub async fn try_lead(
    client: &Client,
    holder: &str,
    lease: Duration,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "INSERT INTO pgmaint.leader AS l (name, holder, expires_at)
             VALUES ($1, $2, now() + $3 * interval '1 millisecond')
             ON CONFLICT (name) DO UPDATE
                SET holder = EXCLUDED.holder,
                    expires_at = EXCLUDED.expires_at,
                    acquired_at = CASE WHEN l.holder = EXCLUDED.holder THEN l.acquired_at ELSE now() END
              WHERE l.holder = EXCLUDED.holder OR l.expires_at < now()
             RETURNING 1",
            &[&SCHEDULER, &holder, &(lease.as_secs_f64() * 1000.0)],
        )
        .await?;
    Ok(row.is_some())
}

/// This daemon's holder id: `host:pid` and a random part, so that two daemons with
/// the same host name and pid (containers) are never taken for one.
pub fn daemon_holder() -> String {
    format!("{}:{:08x}", crate::lease::holder(), rand::random::<u32>())
}

/// Give the lease up (a clean shutdown): another daemon takes over at its next try.
pub async fn release(client: &Client, holder: &str) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM pgmaint.leader WHERE name = $1 AND holder = $2",
            &[&SCHEDULER, &holder],
        )
        .await?;
    Ok(())
}

/// Keeps trying to lead (or renew) every third of `lease`, until `shutdown`; the
/// watch says whether this daemon leads. On shutdown the lease is released.
pub struct Leadership {
    primary: Dsn,
    holder: String,
    lease: Duration,
    leads: watch::Sender<bool>,
}

impl Leadership {
    /// For `holder` (see [`crate::lease::holder`]) on the primary `primary`.
    pub fn new(primary: Dsn, holder: String, lease: Duration) -> (Self, watch::Receiver<bool>) {
        let (leads, rx) = watch::channel(false);
        (
            Leadership {
                primary,
                holder,
                lease,
                leads,
            },
            rx,
        )
    }

    /// Run until `work` ends, then release the lease if held — unless the work stopped
    /// for a failover: the primary is down or superseded, and gets nothing more (the
    /// lease runs out by itself).
    pub async fn run(self, work: crate::abort::Abort) {
        let shutdown = work.token().clone();
        let mut client: Option<Client> = None;
        // When the lease was last taken or renewed: it is ours until a lease after.
        let mut renewed: Option<Instant> = None;
        let every = self.lease / 3;
        loop {
            // Each try within a third of the lease: a renewal hanging on a dead primary
            // must not keep this daemon believing it leads.
            if shutdown.is_cancelled() {
                break;
            }
            let attempt = tokio::time::timeout(every, async {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = db::connect(&self.primary, "pgmaint-daemon-leader")
                        .await
                        .ok();
                }
                match &client {
                    Some(c) => try_lead(c, &self.holder, self.lease)
                        .await
                        .map_err(|e| e.to_string()),
                    None => Err("the primary is unreachable".to_string()),
                }
            })
            .await
            .unwrap_or_else(|_| {
                client = None;
                Err(format!("no answer within {:.1}s", every.as_secs_f64()))
            });
            let was = *self.leads.borrow();
            let leads = match attempt {
                Ok(true) => {
                    renewed = Some(Instant::now());
                    true
                }
                Ok(false) => {
                    renewed = None;
                    false
                }
                // Not renewed: still ours until the lease ran out since the last renewal.
                Err(e) => {
                    tracing::warn!("could not renew the scheduler's leader lease: {e}");
                    renewed.is_some_and(|r| r.elapsed() + every < self.lease)
                }
            };
            if leads != was {
                if leads {
                    tracing::info!(holder = %self.holder, "leading the scheduler");
                } else {
                    tracing::warn!(holder = %self.holder, "no longer leading the scheduler");
                }
                let _ = self.leads.send(leads);
            }
            // A daemon that waits to lead looks twice as often: it takes over within
            // a sixth of a lease after the lease ran out.
            let pause = if leads { every } else { every / 2 };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        let _ = self.leads.send(false);
        if renewed.is_some() && work.for_failover() {
            tracing::info!(
                "the scheduler's leader lease is left to expire: the primary is down or superseded"
            );
        } else if renewed.is_some() {
            let released = tokio::time::timeout(every.max(Duration::from_secs(2)), async {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = db::connect(&self.primary, "pgmaint-daemon-leader")
                        .await
                        .ok();
                }
                match &client {
                    Some(c) => release(c, &self.holder).await.map_err(|e| e.to_string()),
                    None => Err("the primary is unreachable".to_string()),
                }
            })
            .await
            .unwrap_or_else(|_| Err("no answer".into()));
            match released {
                Ok(()) => tracing::info!("scheduler's leader lease released"),
                Err(e) => {
                    tracing::warn!("could not release the leader lease (it expires by itself): {e}")
                }
            }
        }
    }
}
