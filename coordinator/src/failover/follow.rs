//! Re-pointing the other replicas at the new primary, and watching them follow it.
//!
//! Re-pointing comes before `pg_promote` ([`repoint_all`], at the candidate while it is
//! still a standby: they cascade from it and follow its timeline switch), so that an
//! old primary that comes back can never feed them WAL past the switch point; and
//! again, idempotently, when a promotion is completed ([`super::promote`]). Then
//! [`await_followers`] waits, up to `failover.follow_timeout`, for each to stream from
//! the new primary on its timeline.
//!
//! PostgreSQL facts this relies on (PG 13+): `primary_conninfo` changes on reload; a
//! cascading standby follows its upstream's timeline switch; a paused standby does not
//! restart its WAL receiver until resumed; physical slots are not replicated, so a
//! follower's slot is created on the candidate (a standby can hold one, and keeps it
//! when promoted).

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use serde::Serialize;
use tokio_postgres::Client;

use crate::config::{Config, ReplicaConfig};
use crate::db;
use crate::error_text::OneLine;
use crate::failover::servers::{self as p, FollowState, Probe, Seen};
use crate::replica::PauseState;

/// One replica other than the new primary, after the failover.
#[derive(Debug, Clone, Serialize)]
pub struct Follower {
    /// Its config name.
    pub name: String,
    /// `host:port`, as configured.
    pub address: String,
    /// `following`, `diverged`, `unreachable` or `not_following`.
    pub state: FollowState,
    /// What was seen or done.
    pub detail: String,
    /// For a diverged replica: the command that rejoins it (run with it stopped).
    pub pg_rewind: Option<String>,
}

/// One follower re-pointed, to be watched.
pub struct Pending {
    name: String,
    address: String,
    client: Client,
    data_directory: Option<String>,
    conninfo: String,
    slot_created: Option<String>,
    detail: String,
}

/// Re-point every replica of `seen` at `target` (the candidate, or the new primary).
/// `switch`: the switch point, or before the promotion the candidate's WAL position (a
/// replica past it cannot follow). Those settled at once, and those to watch.
pub async fn repoint_all(
    target_client: &Client,
    target: &ReplicaConfig,
    seen: Vec<Seen>,
    switch: u64,
    new_tli: Option<i32>,
) -> (Vec<Follower>, Vec<Pending>) {
    let (host, port) = host_port(target);
    let mut done = Vec::new();
    let mut pending = Vec::new();
    for s in seen {
        let name = s.config.name.clone();
        let address = crate::failover::primary::address(&s.config.dsn);
        let settled = |state, detail: String| Follower {
            name: name.clone(),
            address: address.clone(),
            state,
            detail,
            pg_rewind: None,
        };
        // The session of the down check may be stale; one more try.
        let client = match s.state {
            Ok((c, _)) if !c.is_closed() => Ok(c),
            _ => p::connect_within(&s.config.dsn, "pgmaint-promote", Duration::from_secs(10)).await,
        };
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                done.push(settled(FollowState::Unreachable, e));
                continue;
            }
        };
        match repoint(target_client, &client, &name, &host, port, switch, new_tli).await {
            Err(e) => done.push(settled(FollowState::NotFollowing, e.one_line())),
            Ok(Repointed::Settled(state, detail, rewind)) => {
                let mut f = settled(state, detail);
                f.pg_rewind = rewind;
                done.push(f);
            }
            Ok(Repointed::Pending {
                conninfo,
                data_directory,
                slot_created,
            }) => pending.push(Pending {
                name,
                address,
                client,
                data_directory,
                conninfo,
                slot_created,
                detail: String::new(),
            }),
        }
    }
    (done, pending)
}

/// `host` and `port` of a replica's (first) server.
fn host_port(target: &ReplicaConfig) -> (String, u16) {
    let (hosts, ports) = db::hosts_and_ports(&target.dsn.config);
    let host = hosts.first().cloned().unwrap_or_else(|| "localhost".into());
    let port: u16 = ports.first().and_then(|p| p.parse().ok()).unwrap_or(5432);
    (host, port)
}

/// Wait (at most `failover.follow_timeout` in all) for each re-pointed replica to
/// stream from the new primary on timeline `new_tli`; `done` are those settled already.
pub async fn await_followers(
    cfg: &Config,
    new_primary: &Client,
    target: &ReplicaConfig,
    mut done: Vec<Follower>,
    mut pending: Vec<Pending>,
    new_tli: i32,
    switch_lsn: &str,
) -> Vec<Follower> {
    let deadline = Instant::now() + cfg.failover.follow_timeout;
    let switch = crate::failover::candidate::lsn(switch_lsn).unwrap_or(u64::MAX);
    let (host, port) = host_port(target);
    let phase = Instant::now();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for f in pending {
            if p::streams_on(&f.client, new_tli).await.unwrap_or(false) {
                done.push(Follower {
                    detail: format!(
                        "streams from {host}:{port} on timeline {new_tli} ({:.1}s after the promotion){}",
                        phase.elapsed().as_secs_f64(),
                        f.detail
                    ),
                    name: f.name,
                    address: f.address,
                    state: FollowState::Following,
                    pg_rewind: None,
                });
            } else {
                still.push(f);
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            for f in pending.drain(..) {
                done.push(timed_out(cfg, new_primary, f, switch, switch_lsn).await);
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    done.sort_by(|a, b| a.name.cmp(&b.name));
    done
}

/// What re-pointing one replica came to.
enum Repointed {
    /// Decided already.
    Settled(FollowState, String, Option<String>),
    /// Re-pointed: to be watched.
    Pending {
        conninfo: String,
        data_directory: Option<String>,
        slot_created: Option<String>,
    },
}

/// Re-point one replica at `host:port` (its slot created there first).
async fn repoint(
    new_primary: &Client,
    client: &Client,
    name: &str,
    host: &str,
    port: u16,
    switch: u64,
    new_tli: Option<i32>,
) -> Result<Repointed> {
    let probe: Probe = p::probe(client).await?;
    // Streaming the new timeline already (re-pointed before the promotion): its WAL is
    // past the switch point on the new timeline, which is no divergence.
    let on_new = new_tli.is_some_and(|t| {
        probe
            .walreceiver
            .as_ref()
            .and_then(|w| w.received_tli)
            .is_some_and(|r| r >= t)
    });
    if !probe.in_recovery {
        return Ok(Repointed::Settled(
            FollowState::NotFollowing,
            "it is not in recovery (another primary?): left alone".into(),
            None,
        ));
    }
    let current = p::show(client, "primary_conninfo").await?;
    if current.trim().is_empty() {
        return Ok(Repointed::Settled(
            FollowState::NotFollowing,
            "it has no primary_conninfo (not a streaming standby): left alone".into(),
            None,
        ));
    }
    let conninfo = crate::conninfo::with_host(&current, host, port)
        .map_err(|e| anyhow!("its primary_conninfo cannot be read: {e}"))?;
    let slot = p::show(client, "primary_slot_name").await?;
    let data_directory = p::show(client, "data_directory").await.ok();
    if !on_new && p::past_switch(probe.position(), probe.replayed(), switch) == Some(true) {
        // Re-pointed all the same, so that it never streams from the old primary
        // again; no slot for it (it would hold WAL on the new primary forever).
        p::set_primary_conninfo(client, &conninfo).await?;
        let (detail, rewind) = diverged(&probe, data_directory.as_deref(), &conninfo, switch);
        return Ok(Repointed::Settled(FollowState::Diverged, detail, rewind));
    }
    let slot_created = if slot.is_empty() {
        None
    } else {
        p::ensure_slot(new_primary, &slot)
            .await?
            .then_some(slot.clone())
    };
    p::set_primary_conninfo(client, &conninfo).await?;
    tracing::info!(
        replica = %name,
        "re-pointed at {host}:{port}{}",
        if slot.is_empty() {
            String::new()
        } else {
            format!(" (slot {slot})")
        }
    );
    Ok(Repointed::Pending {
        conninfo,
        data_directory,
        slot_created,
    })
}

/// The detail and pg_rewind command of a diverged replica.
fn diverged(
    probe: &Probe,
    data_directory: Option<&str>,
    conninfo: &str,
    switch: u64,
) -> (String, Option<String>) {
    let rewind = p::pg_rewind_command(data_directory.unwrap_or("<its data directory>"), conninfo);
    (
        format!(
            "its WAL goes to {}, past the switch point {}: it cannot follow the new timeline. Stop it, run the \
             pg_rewind command (it needs wal_log_hints or data checksums; it copies the new primary's \
             configuration files, so restore its own port, primary_slot_name… before starting it), then start it; \
             or rebuild it with pg_basebackup. Until then it is out of the pool (pgmaint run refuses a replica on \
             another timeline)",
            lsn_text(probe.position()),
            lsn_text(switch)
        ),
        Some(rewind),
    )
}

/// A replica that did not stream from the new primary in time: diverged (its WAL
/// went past the switch point), or not following for a reason pgmaint cannot see.
async fn timed_out(
    cfg: &Config,
    new_primary: &Client,
    f: Pending,
    switch: u64,
    switch_lsn: &str,
) -> Follower {
    let probe = p::probe(&f.client).await.ok();
    let past = probe
        .as_ref()
        .and_then(|pr| p::past_switch(pr.position(), pr.replayed(), switch));
    if let Some(slot) = &f.slot_created {
        if let Err(e) = p::drop_idle_slot(new_primary, slot).await {
            tracing::warn!(replica = %f.name, "{}", e.one_line());
        }
    }
    match (past, &probe) {
        (Some(_), Some(pr)) => {
            let (detail, rewind) = diverged(pr, f.data_directory.as_deref(), &f.conninfo, switch);
            Follower {
                name: f.name,
                address: f.address,
                state: FollowState::Diverged,
                detail,
                pg_rewind: rewind,
            }
        }
        (_, Some(pr)) if pr.pause_state != PauseState::NotPaused => Follower {
            name: f.name,
            address: f.address,
            state: FollowState::NotFollowing,
            detail: format!(
                "re-pointed, but its replay is {} by someone else (not a pgmaint run): a paused standby does \
                 not stream; it follows once resumed (SELECT pg_wal_replay_resume())",
                pr.pause_state
            ),
            pg_rewind: None,
        },
        _ => Follower {
            name: f.name,
            address: f.address,
            state: FollowState::NotFollowing,
            detail: format!(
                "re-pointed, but it did not stream from the new primary on its timeline within \
                 failover.follow_timeout ({}s; switch point {switch_lsn}): see its server log",
                cfg.failover.follow_timeout.as_secs()
            ),
            pg_rewind: None,
        },
    }
}

/// An LSN as PostgreSQL writes it.
pub fn lsn_text(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xFFFF_FFFF)
}
