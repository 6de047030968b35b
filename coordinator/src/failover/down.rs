//! Is the primary really down? The check every failover passes before it changes
//! anything: every server of `primary.dsn` refuses connections (or gives no answer)
//! for `failover.primary_down_after` (a server that answers at all, even with an
//! error, is alive), no replica's WAL receiver hears from a primary within that
//! window, and `failover.witness_command` (if any) does not vouch for it.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::config::Config;
use crate::failover::journal::Promotion;
use crate::failover::servers::{self as p, Seen};

/// Replicas whose WAL receiver heard from a primary within `window`, as evidence. A
/// receiver fed by another configured replica that this look reached says nothing of
/// the old primary: in recovery (a cascading standby), that replica's own receiver
/// speaks for the chain; out of recovery (a replica promoted meanwhile), the check for
/// another primary decides. Fed by anything else — the primary in use, a replica out of
/// reach, an address not in the config — it counts.
pub fn heard_from_a_primary(cfg: &Config, seen: &[Seen], window: Duration) -> Vec<String> {
    let in_use = crate::failover::primary::address(&cfg.primary);
    // A configured replica seen in recovery in this look is a standby, whatever its
    // address (even the first of a primary.dsn that lists every server): a receiver it
    // feeds — a follower re-pointed at a candidate — says nothing of the old primary.
    let standbys: Vec<String> = seen
        .iter()
        .filter_map(|s| {
            let (_, probe) = s.state.as_ref().ok()?;
            let at = crate::failover::primary::address(&s.config.dsn);
            (probe.in_recovery || at != in_use).then_some(at)
        })
        .collect();
    seen.iter()
        .filter_map(|s| {
            let (_, probe) = s.state.as_ref().ok()?;
            let w = probe.walreceiver.as_ref()?;
            if w.sender
                .as_ref()
                .is_some_and(|from| standbys.contains(from))
            {
                return None;
            }
            p::walreceiver_evidence(&s.config.name, w, window)
        })
        .collect()
}

/// Step 2: the evidence that the primary is down, and every replica as seen then.
pub async fn primary_is_down(
    cfg: &Config,
    promotions: &[Promotion],
) -> Result<(p::DownCheck, Vec<Seen>)> {
    let window = cfg.failover.primary_down_after;
    let started = Instant::now();
    tracing::info!(
        "checking that the primary is down: every server of {} must refuse connections for {}s",
        cfg.primary.field,
        window.as_secs_f64()
    );
    let down = p::watch_primary(cfg, promotions, window).await;
    if !down.evidence.is_empty() {
        bail!(
            "the primary is up, not promoting (nothing changed): {}",
            down.evidence.join("; ")
        );
    }
    let seen = p::probe_replicas(cfg).await;
    let heard = heard_from_a_primary(cfg, &seen, window);
    if !heard.is_empty() {
        bail!(
            "a replica still hears from a primary, not promoting (nothing changed): {}",
            heard.join("; ")
        );
    }
    match crate::failover::hooks::witness(cfg).await {
        Some(crate::failover::hooks::Witness::Alive) => bail!(
            "failover.witness_command says the primary is alive (exit 0), not promoting (nothing changed)"
        ),
        Some(crate::failover::hooks::Witness::NotAlive(how)) => {
            tracing::info!("failover.witness_command does not vouch for the primary ({how})")
        }
        Some(crate::failover::hooks::Witness::Silent(why)) => bail!(
            "failover.witness_command gave no answer ({why}), not promoting without it (nothing changed)"
        ),
        None => {}
    }
    tracing::info!(
        down = %down.down.join(", "),
        "the primary is down: no server of {} accepted a connection for {:.1}s, and no replica hears from one",
        cfg.primary.field,
        started.elapsed().as_secs_f64()
    );
    Ok((down, seen))
}
