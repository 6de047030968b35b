//! The promotion, as one state machine: what `pgmaint promote` does, and what
//! `pgmaint daemon` does with `failover.automatic` (never with `--force`).
//!
//! Its steps, each recorded before the next is taken, each safe to repeat:
//! 1. **Lock.** The failover lock (a session advisory lock) on every replica reached:
//!    one promoter at a time; a lock held elsewhere names its holder.
//! 2. **Unfinished?** A promotion this host recorded and did not finish
//!    ([`journal::unfinished`]) is resumed: never a second one.
//! 3. **Promoted already?** A configured replica out of recovery on a newer timeline
//!    that descends from the primary's is the primary now (by hand, or by a pgmaint
//!    whose record is elsewhere): its promotion is completed, not repeated.
//! 4. **Decide.** The down check ([`super::down`]), the candidate ([`choose_candidate`]),
//!    its schema and privileges, the backlog gate, `failover.fence_command`, a last
//!    look. Nothing has changed on any server up to here.
//! 5. **Intent**, written ahead ([`Step::Intent`]). From here on the next pgmaint
//!    finishes the promotion; before it, nothing has changed.
//! 6. **Re-point** the other replicas at the candidate ([`super::follow`]): they
//!    cascade from it and follow its timeline switch, and a returning old primary can
//!    no longer feed them. Then `pg_promote(true, N)`, and `pg_is_in_recovery()` polled
//!    until `failover.promote_timeout`. After a crash the intent stands and
//!    `pg_promote` is sent again — a repeat is harmless (it only re-creates the promote
//!    signal file) — unless another server took writes meanwhile: then the intent is
//!    given up.
//! 7. **Promoted**, in the journal (new timeline and switch point, from the new
//!    primary's history file), then on the new primary (`pgmaint.promotions`, once).
//! 8. Runs left running from before the promotion are dropped, their pauses resumed.
//! 9. The followers are re-pointed at the new primary (idempotent) and watched until
//!    they stream on its timeline; then **Done**.
//!
//! A pgmaint killed anywhere leaves nothing changed (before 5), or a journal entry
//! that the next pgmaint completes: a daemon at its next look or start, `pgmaint
//! promote`, or any other command at start ([`resume_at_start`]; those send no
//! `pg_promote` themselves, they only finish one that happened). `PGMAINT_TEST_KILL_AT=
//! <step>` (`intent`, `repointed`, `pg_promote`, `promoted`, `recorded`, `followers`)
//! kills the process with SIGKILL at that step, for the crash tests.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ReplicaConfig};
use crate::error_text::OneLine;
use crate::failover::candidate::{choose_candidate, StandbyView};
use crate::failover::down;
use crate::failover::follow::{self, lsn_text};
use crate::failover::journal::{self, Promotion, Step};
use crate::failover::report::{How, Report, Timings};
use crate::failover::servers::{self as p, DroppedRun, Probe, Seen};
use crate::replica::{PauseState, ReplicaControl, ResumeOutcome};
use crate::units::human_bytes;
use crate::{schema, UsageError};

/// Test knob: kill this process (SIGKILL) when the promotion reaches this step.
pub const KILL_AT_ENV: &str = "PGMAINT_TEST_KILL_AT";

/// Die here if the crash tests asked for it (see the module's docs).
fn kill_point(step: &str) {
    if std::env::var(KILL_AT_ENV).is_ok_and(|v| v == step) {
        tracing::error!("{KILL_AT_ENV}={step}: killing this process (a crash test)");
        // SAFETY: kill(2) on our own pid; no memory is touched.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Why a failover did not promote because another one is under way or done: a daemon
/// waits for it, or follows the new primary.
#[derive(Debug, thiserror::Error)]
pub enum NotPromoting {
    /// Another pgmaint holds the failover lock on this replica.
    #[error("the failover lock on replica {replica} is held by {holder}: a failover is under way there (nothing changed)")]
    LockBusy {
        /// The replica whose lock is taken.
        replica: String,
        /// Who holds it, as its session says.
        holder: String,
    },
    /// This replica is a primary already, and no timeline or record says it is the
    /// newer one.
    #[error(
        "replica {0} is already a primary (not in recovery{1}), and neither a newer timeline nor a recorded \
         promotion makes it the successor of the primary: another failover is under way outside pgmaint, or two \
         servers take writes; not promoting a third (nothing changed)"
    )]
    OtherPrimary(String, String),
    /// `failover.fence_command` failed.
    #[error("{0}: not promoting (nothing changed)")]
    FenceFailed(String),
    /// A promotion is recorded (its intent at least) and not finished: it is completed
    /// at the next try, never replaced by another.
    #[error("the promotion of replica {0} is unfinished: {1}; it is completed at the next try (never another candidate)")]
    Unfinished(String, String),
}

/// Steps 1 to 9 (see the module's docs). `stop`: stop where that is still safe (before
/// step 5). `on_down`: cancelled once the primary is found down (the daemon then stops
/// its work against the old primary). `by`: who this is (`host:pid…`), for the journal
/// and the failover lock.
pub async fn failover(
    cfg: &Config,
    by_hand: Option<&str>,
    force: bool,
    stop: &CancellationToken,
    on_down: Option<&CancellationToken>,
    by: &str,
) -> Result<Report> {
    let started = Instant::now();
    // The operator's choice is checked before anything is waited for.
    if let Some(name) = by_hand {
        check_by_hand(cfg, name).await?;
    }

    // 1. One promoter at a time. Promotions known here and on the replicas.
    let (promotions, _failover_locks, locked) = lock_replicas(cfg, by).await?;

    // 2. An unfinished promotion recorded on this host.
    let unfinished = journal::unfinished(&cfg.results_dir)
        .context("the promotions recorded on this host (results.dir/promotions.json)")?;
    if let Some(entry) = unfinished {
        return resume(cfg, entry, started, true).await;
    }

    // 3. A replica the servers say is the primary already.
    if let Some(now) = promoted_already(cfg).await {
        if let Some(n) = by_hand.filter(|n| **n != now.name) {
            bail!(
                "replica {} is the primary already (timeline {}): not promoting replica {n} as well (nothing changed)",
                now.name,
                now.id.timeline
            );
        }
        return complete(cfg, &now.name, started).await;
    }

    // 4. Decide: the primary must be down.
    let (down, seen) = down::primary_is_down(cfg, &promotions).await?;
    let down_check = started.elapsed();
    if let Some(t) = on_down {
        t.cancel();
    }
    same_system(&seen)?;
    no_other_primary(&seen, &promotions).await?;
    let Candidacy {
        mut warnings,
        target,
        client,
        probe,
        others,
    } = candidacy(seen, by_hand)?;
    // The candidate's own failover lock: it may have been out of reach when the locks
    // were taken.
    if !locked.contains(&(probe.system_identifier, probe.postmaster_start))
        && !p::try_failover_lock(&client, by).await?
    {
        return Err(busy(&client, &target.name).await);
    }
    schema::require_current(&client)
        .await
        .with_context(|| format!("replica {} (the candidate)", target.name))?;
    check_privileges(&client, &target.name).await?;
    let backlog = probe.backlog();
    if let Some(w) = backlog_gate(cfg, &client, &probe, &target.name, force).await? {
        warnings.push(w);
    }
    if stop.is_cancelled() {
        bail!("cancelled by a signal before promoting (nothing changed)");
    }
    // The operator's fence: the old primary must take no more writes.
    if let Err(why) = crate::failover::hooks::fence(cfg, &target).await {
        return Err(NotPromoting::FenceFailed(why).into());
    }
    // A last look, the moment before (the down check ended a while ago, and the fence
    // may have taken long): the primary, every replica's WAL receiver, and every
    // replica's role (one promoted meanwhile is followed, not joined by a second).
    let last = p::watch_primary(cfg, &promotions, Duration::ZERO).await;
    let fresh = p::probe_replicas(cfg).await;
    let mut evidence = last.evidence;
    evidence.extend(down::heard_from_a_primary(
        cfg,
        &fresh,
        cfg.failover.primary_down_after,
    ));
    if !evidence.is_empty() {
        bail!(
            "the primary came back before the promotion, not promoting (nothing changed{}): {}",
            if cfg.failover.fence_command.is_some() {
                "; failover.fence_command ran"
            } else {
                ""
            },
            evidence.join("; ")
        );
    }
    no_other_primary(&fresh, &promotions).await?;
    let paused_now = fresh
        .iter()
        .find(|s| s.config.name == target.name)
        .and_then(|s| s.state.as_ref().ok())
        .map(|(_, fresh)| fresh.pause_state != PauseState::NotPaused);

    // 5. The intent, written ahead: from here on the promotion is finished by whoever
    // comes next.
    let forced = force && backlog > cfg.failover.max_replay_backlog;
    let entry = Promotion {
        replica: target.name.clone(),
        system_identifier: probe.system_identifier,
        old_timeline: probe
            .walreceiver
            .as_ref()
            .and_then(|w| w.received_tli)
            .unwrap_or(0),
        new_timeline: 0,
        switch_lsn: String::new(),
        old_primary: (!down.down.is_empty()).then(|| down.down.join(",")),
        forced,
        promoted_at: Utc::now(),
        step: Step::Intent,
        by: Some(by.to_string()),
        address: Some(crate::failover::primary::address(&target.dsn)),
    };
    journal::record_local(&cfg.results_dir, &entry).map_err(|e| {
        anyhow!(
            "{}: not promoting without a record of it (nothing changed)",
            e.one_line()
        )
    })?;
    kill_point("intent");

    // 6. The others cascade from the candidate from now on; then the promotion,
    // recorded as under way first.
    follow::repoint_all(&client, &target, others, probe.position(), None).await;
    kill_point("repointed");
    let mut entry = entry;
    entry.step = Step::Promoting;
    journal::record_local(&cfg.results_dir, &entry)
        .map_err(|e| anyhow!("{}: not promoting without a record of it", e.one_line()))?;
    let promote_started = Instant::now();
    let resumed_pause = paused_now.unwrap_or(probe.pause_state != PauseState::NotPaused);
    if resumed_pause {
        p::resume_replay(&client)
            .await
            .with_context(|| format!("resuming replay on replica {}", target.name))?;
        tracing::info!(replica = %target.name, "replay was {}: resumed it before promoting", probe.pause_state);
    }
    let wait = promote_wait(cfg)?;
    let target_name = target.name.clone();
    let unfinished = |e: anyhow::Error| -> anyhow::Error {
        NotPromoting::Unfinished(target_name.clone(), e.one_line()).into()
    };
    let (client, returned) = promote(cfg, &target, client, wait)
        .await
        .map_err(unfinished)?;
    kill_point("pg_promote");
    let promotion_took = promote_started.elapsed();
    tracing::info!(replica = %target.name, secs = promotion_took.as_secs_f64(), "promoted");

    complete_promotion(
        cfg,
        Completion {
            entry,
            how: How::Promoted,
            target,
            client,
            position: probe.position(),
            warnings,
            backlog,
            resumed_pause,
            returned,
            wait,
            down_servers: down.down,
            notes: down.notes,
            down_check,
            promotion_took,
            started,
        },
    )
    .await
    .map_err(unfinished)
}

/// Step 2: finish the promotion recorded on this host. Its intent stands: a candidate
/// still in recovery is promoted (again: harmless) if `may_promote`, never replaced
/// by another — unless another server took writes meanwhile (promoted by hand, or by
/// another pgmaint): then the intent is given up, nothing sent.
async fn resume(
    cfg: &Config,
    entry: Promotion,
    started: Instant,
    may_promote: bool,
) -> Result<Report> {
    let name = entry.replica.clone();
    tracing::warn!(
        replica = %name,
        "resuming the unfinished promotion of replica {name}, started by {} at {} (recorded step: {})",
        entry.by.as_deref().unwrap_or("an earlier pgmaint"),
        entry.promoted_at,
        entry.step
    );
    let unfinished =
        |why: String| -> anyhow::Error { NotPromoting::Unfinished(name.clone(), why).into() };
    let Some(target) = locate(cfg, &entry) else {
        // Nothing configured is that server: it cannot be finished here, and waiting
        // for it would block every failover for good. Had it been promoted, its newer
        // timeline still fences the old primary.
        let mut given_up = entry.clone();
        given_up.step = Step::Abandoned;
        journal::record_local(&cfg.results_dir, &given_up)?;
        bail!(
            "the promotion of replica {name} ({}) recorded in results.dir/promotions.json cannot be finished: no \
             configured server is that replica any more; given up (list it again and run pgmaint promote to finish \
             it, or promote by hand)",
            entry.address.as_deref().unwrap_or("address unknown")
        );
    };
    let client = p::connect_within(&target.dsn, "pgmaint-promote", Duration::from_secs(10))
        .await
        .map_err(|e| unfinished(format!("replica {name} is unreachable ({e})")))?;
    let probe = p::probe(&client)
        .await
        .map_err(|e| unfinished(e.one_line()))?;
    let wait = promote_wait(cfg)?;
    let (mut returned, mut resumed_pause) = (None, false);
    let promote_started = Instant::now();
    let client = if probe.in_recovery {
        if !may_promote {
            return Err(unfinished(
                "it is still in recovery; `pgmaint promote`, or a daemon with failover.automatic, sends pg_promote \
                 again"
                    .into(),
            ));
        }
        if let Some(other) = another_writer(cfg, &entry, &target).await {
            return Err(give_up(
                cfg,
                &entry,
                &format!("{other} takes writes now (promoted meanwhile?)"),
            )
            .await);
        }
        match entry.step {
            // pg_promote was never sent: the decision needs the primary down still.
            Step::Intent => {
                let promotions = journal::read_local(&cfg.results_dir).unwrap_or_default();
                if let Err(e) = down::primary_is_down(cfg, &promotions).await {
                    return Err(give_up(cfg, &entry, &e.one_line()).await);
                }
                if let Err(why) = crate::failover::hooks::fence(cfg, &target).await {
                    return Err(NotPromoting::FenceFailed(why).into());
                }
            }
            // pg_promote may have been sent: if the old primary answers, see whether
            // the promotion goes through, else give it up.
            Step::Promoting => {
                let promotions = journal::read_local(&cfg.results_dir).unwrap_or_default();
                let look = p::watch_primary(cfg, &promotions, Duration::ZERO).await;
                if !look.evidence.is_empty() {
                    let watched = watch_for_promotion(&target, cfg.failover.promote_timeout.min(Duration::from_secs(15))).await;
                    match watched {
                        Some(c) => {
                            return complete_promotion(
                                cfg,
                                resumed_completion(entry, target, c, &probe, started),
                            )
                            .await
                            .map_err(|e| unfinished(e.one_line()));
                        }
                        None => {
                            return Err(give_up(
                                cfg,
                                &entry,
                                &format!(
                                    "the old primary answers ({}), and replica {name} did not leave recovery",
                                    look.evidence.join("; ")
                                ),
                            )
                            .await)
                        }
                    }
                }
            }
            _ => {
                return Err(unfinished(format!(
                    "it was recorded as promoted (timeline {}) but is in recovery now (rejoined as a standby?): see \
                     to it by hand",
                    entry.new_timeline
                )))
            }
        }
        let others = others_than(cfg, &name).await;
        follow::repoint_all(&client, &target, others, probe.position(), None).await;
        let mut promoting = entry.clone();
        promoting.step = Step::Promoting;
        journal::record_local(&cfg.results_dir, &promoting)?;
        if probe.pause_state != PauseState::NotPaused {
            p::resume_replay(&client)
                .await
                .map_err(|e| unfinished(e.one_line()))?;
            resumed_pause = true;
        }
        tracing::warn!(
            replica = %name,
            "replica {name} is still in recovery: sending pg_promote again (a repeat is harmless: it only \
             re-creates the promote signal file)"
        );
        let (c, r) = promote(cfg, &target, client, wait)
            .await
            .map_err(|e| unfinished(e.one_line()))?;
        kill_point("pg_promote");
        returned = r;
        c
    } else {
        if let Some(why) = superseded_or_fenced(cfg, &client).await {
            return Err(give_up(
                cfg,
                &entry,
                &format!("replica {name} takes writes, but {why}"),
            )
            .await);
        }
        client
    };
    let mut completion = resumed_completion(entry, target, client, &probe, started);
    completion.resumed_pause = resumed_pause;
    completion.returned = returned;
    completion.wait = wait;
    completion.promotion_took = promote_started.elapsed();
    complete_promotion(cfg, completion)
        .await
        .map_err(|e| unfinished(e.one_line()))
}

/// Give an unfinished promotion up (`why`): its entry marked abandoned, and the other
/// replicas re-pointed back at the primary in use, if one answers (they may have been
/// re-pointed at the candidate). The error to return.
async fn give_up(cfg: &Config, entry: &Promotion, why: &str) -> anyhow::Error {
    let mut given_up = entry.clone();
    given_up.step = Step::Abandoned;
    if let Err(e) = journal::record_local(&cfg.results_dir, &given_up) {
        return e.context("giving up an unfinished promotion");
    }
    let back = match crate::failover::primary::survey_within(
        cfg,
        "pgmaint-promote",
        Duration::from_secs(5),
    )
    .await
    {
        Ok((s, mut clients)) => match (s.chosen, clients.pop()) {
            (Some(i), Some(c)) => {
                let old = ReplicaConfig {
                    name: "primary".into(),
                    dsn: s.servers[i].0.clone(),
                    failover_priority: 0,
                };
                let others = others_than(cfg, "").await;
                follow::repoint_all(&c, &old, others, u64::MAX, None).await;
                format!(
                    "; the other replicas follow {} again",
                    crate::failover::primary::address(&old.dsn)
                )
            }
            _ => String::new(),
        },
        Err(_) => String::new(),
    };
    anyhow!(
        "{why}: the unfinished promotion of replica {} (started by {} at {}) is given up, nothing more sent to it{back} \
         (nothing changed)",
        entry.replica,
        entry.by.as_deref().unwrap_or("an earlier pgmaint"),
        entry.promoted_at
    )
}

/// Wait up to `patience` for `target` to leave recovery: its session then.
async fn watch_for_promotion(target: &ReplicaConfig, patience: Duration) -> Option<Client> {
    let deadline = Instant::now() + patience;
    loop {
        if let Ok(c) =
            p::connect_within(&target.dsn, "pgmaint-promote", Duration::from_secs(2)).await
        {
            if p::probe(&c).await.is_ok_and(|pr| !pr.in_recovery) {
                return Some(c);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Why a server out of recovery is not the newest primary, if it is not: a recorded
/// promotion fences its timeline, or a configured server of its system is out of
/// recovery on a newer timeline.
async fn superseded_or_fenced(cfg: &Config, client: &Client) -> Option<String> {
    let id = crate::replica::server_identity(client).await.ok()??;
    let mut recorded = journal::read_local(&cfg.results_dir).unwrap_or_default();
    recorded.extend(journal::read_on(client).await);
    if let Some(p) = journal::fenced_by(&recorded, id.system_identifier, id.timeline) {
        return Some(format!(
            "replica {} was promoted to timeline {} since: it is a former primary",
            p.replica, p.new_timeline
        ));
    }
    let servers = cfg
        .replicas
        .iter()
        .map(|r| r.dsn.clone())
        .chain(crate::failover::primary::hosts(&cfg.primary));
    for dsn in servers {
        let Ok(c) = p::connect_within(&dsn, "pgmaint-promote", Duration::from_secs(3)).await else {
            continue;
        };
        if let Ok(Some(other)) = crate::replica::server_identity(&c).await {
            if other.system_identifier == id.system_identifier && other.timeline > id.timeline {
                return Some(format!(
                    "{} is a primary on a newer timeline ({} > {})",
                    crate::failover::primary::address(&dsn),
                    other.timeline,
                    id.timeline
                ));
            }
        }
    }
    None
}

/// The completion of a resumed promotion whose candidate was found promoted.
fn resumed_completion(
    entry: Promotion,
    target: ReplicaConfig,
    client: Client,
    probe: &Probe,
    started: Instant,
) -> Completion {
    Completion {
        how: How::Resumed,
        position: probe.position(),
        backlog: probe.backlog(),
        resumed_pause: false,
        returned: None,
        wait: 0,
        down_servers: entry
            .old_primary
            .as_deref()
            .map(|s| s.split(',').map(String::from).collect())
            .unwrap_or_default(),
        notes: Vec::new(),
        warnings: Vec::new(),
        down_check: Duration::ZERO,
        promotion_took: Duration::ZERO,
        started,
        entry,
        target,
        client,
    }
}

/// A configured server other than `target` and the old primary that takes writes: a
/// promotion made while this one was unfinished.
async fn another_writer(cfg: &Config, entry: &Promotion, target: &ReplicaConfig) -> Option<String> {
    use crate::failover::primary::{address, hosts};
    let old: Vec<&str> = entry
        .old_primary
        .as_deref()
        .map(|s| s.split(',').collect())
        .unwrap_or_default();
    let mine = address(&target.dsn);
    let mut candidates: Vec<(String, crate::config::Dsn)> = cfg
        .replicas
        .iter()
        .filter(|r| r.name != target.name)
        .map(|r| {
            (
                format!("replica {} ({})", r.name, address(&r.dsn)),
                r.dsn.clone(),
            )
        })
        .collect();
    candidates.extend(hosts(&cfg.primary).into_iter().map(|d| (address(&d), d)));
    for (what, dsn) in candidates {
        let at = address(&dsn);
        if at == mine || old.contains(&at.as_str()) {
            continue;
        }
        let Ok(c) = p::connect_within(&dsn, "pgmaint-promote", Duration::from_secs(5)).await else {
            continue;
        };
        if p::probe(&c).await.is_ok_and(|pr| !pr.in_recovery) {
            return Some(what);
        }
    }
    None
}

/// The server of a journal entry: the replica of that name, or else the configured
/// server (a replica, or a server of `primary.dsn`) at its recorded address.
fn locate(cfg: &Config, entry: &Promotion) -> Option<ReplicaConfig> {
    use crate::failover::primary::{address, hosts};
    if let Some(r) = cfg.replicas.iter().find(|r| r.name == entry.replica) {
        return Some(r.clone());
    }
    let at = entry.address.as_deref()?;
    if let Some(r) = cfg.replicas.iter().find(|r| address(&r.dsn) == at) {
        return Some(r.clone());
    }
    hosts(&cfg.primary)
        .into_iter()
        .find(|d| address(d) == at)
        .map(|dsn| ReplicaConfig {
            name: entry.replica.clone(),
            dsn,
            failover_priority: 1,
        })
}

/// Step 3: the configured replica that the servers say is the primary now, if one is.
async fn promoted_already(cfg: &Config) -> Option<crate::failover::primary::PromotedReplica> {
    match crate::failover::primary::survey_within(cfg, "pgmaint-promote", Duration::from_secs(5))
        .await
    {
        Ok((survey, _)) => survey.promoted,
        Err(e) => {
            tracing::warn!("looking for a replica promoted already: {}", e.0);
            None
        }
    }
}

/// Complete the promotion of replica `name`, out of recovery already (promoted by hand
/// or by another pgmaint): record it, fence the old primary, drop the runs left
/// running, re-point the others.
pub async fn complete(cfg: &Config, name: &str, started: Instant) -> Result<Report> {
    let unfinished =
        |why: String| -> anyhow::Error { NotPromoting::Unfinished(name.to_string(), why).into() };
    let target = cfg
        .replicas
        .iter()
        .find(|r| r.name == name)
        .cloned()
        .ok_or_else(|| unfinished("it is not in [[replicas]]".into()))?;
    let client = p::connect_within(&target.dsn, "pgmaint-promote", Duration::from_secs(10))
        .await
        .map_err(|e| unfinished(format!("unreachable ({e})")))?;
    let probe = p::probe(&client)
        .await
        .map_err(|e| unfinished(e.one_line()))?;
    tracing::warn!(
        replica = %name,
        "replica {name} is the primary now (a newer timeline, promoted by hand or by another pgmaint): completing \
         its promotion"
    );
    // The operator's fence: this pgmaint did not run it before that promotion.
    let mut warnings = Vec::new();
    if let Err(why) = crate::failover::hooks::fence(cfg, &target).await {
        warnings.push(format!(
            "{why}: the promotion stands; fence the old primary by hand"
        ));
    }
    let entry = Promotion {
        replica: name.to_string(),
        system_identifier: probe.system_identifier,
        old_timeline: 0,
        new_timeline: 0,
        switch_lsn: String::new(),
        old_primary: Some(
            crate::failover::primary::hosts(&cfg.primary)
                .iter()
                .map(crate::failover::primary::address)
                .collect::<Vec<_>>()
                .join(","),
        ),
        forced: false,
        promoted_at: Utc::now(),
        step: Step::Promoted,
        by: None,
        address: Some(crate::failover::primary::address(&target.dsn)),
    };
    complete_promotion(
        cfg,
        Completion {
            entry,
            how: How::Completed,
            target,
            client,
            position: probe.position(),
            warnings,
            backlog: 0,
            resumed_pause: false,
            returned: None,
            wait: 0,
            down_servers: Vec::new(),
            notes: Vec::new(),
            down_check: Duration::ZERO,
            promotion_took: Duration::ZERO,
            started,
        },
    )
    .await
}

/// Every configured replica but `name`, probed.
async fn others_than(cfg: &Config, name: &str) -> Vec<Seen> {
    let mut others = p::probe_replicas(cfg).await;
    others.retain(|s| s.config.name != name);
    others.sort_by(|a, b| a.config.name.cmp(&b.config.name));
    others
}

/// What steps 7 to 9 need of a promotion that happened.
struct Completion {
    /// Its journal entry (an intent, or a fresh one for a promotion found).
    entry: Promotion,
    how: How,
    target: ReplicaConfig,
    client: Client,
    /// The candidate's WAL position before it was promoted (the switch point, when the
    /// history file cannot be read).
    position: u64,
    warnings: Vec<String>,
    backlog: u64,
    resumed_pause: bool,
    returned: Option<bool>,
    wait: i32,
    down_servers: Vec<String>,
    notes: Vec<String>,
    down_check: Duration,
    promotion_took: Duration,
    started: Instant,
}

/// Steps 7 to 9, each recorded before the next: the promotion in the journal and on
/// the new primary (the old primary fenced from then on), the runs left running
/// dropped, the followers re-pointed and watched; the report.
async fn complete_promotion(cfg: &Config, mut c: Completion) -> Result<Report> {
    let name = c.target.name.clone();
    let id = crate::replica::server_identity(&c.client)
        .await?
        .ok_or_else(|| anyhow!("replica {name} is still in recovery after its promotion"))?;
    let (old_timeline, switch_lsn, switch_lsn_source) =
        match p::read_switch_point(&c.client, id.timeline).await {
            Ok((parent, at)) => (parent, at, "the new timeline's history file".to_string()),
            Err(e) => {
                let at = lsn_text(c.position);
                tracing::warn!(
                    "{}; taking the candidate's WAL position {at} as the switch point",
                    e.one_line()
                );
                (
                    id.timeline - 1,
                    at,
                    format!(
                        "the candidate's WAL position (history file unreadable: {})",
                        e.one_line()
                    ),
                )
            }
        };
    // 7. Promoted: in the journal, then on the new primary.
    c.entry.step = Step::Promoted;
    c.entry.system_identifier = id.system_identifier;
    c.entry.old_timeline = old_timeline;
    c.entry.new_timeline = id.timeline;
    c.entry.switch_lsn = switch_lsn.clone();
    let mut record_errors = Vec::new();
    if let Err(e) = journal::record_local(&cfg.results_dir, &c.entry) {
        record_errors.push(format!("in results.dir: {}", e.one_line()));
    }
    kill_point("promoted");
    let promoted_at = match journal::record_on(&mut c.client, &c.entry).await {
        Ok(at) => Some(at),
        Err(e) => {
            record_errors.push(format!("on the new primary: {}", e.one_line()));
            None
        }
    };
    kill_point("recorded");

    // 8. Runs left running from before the promotion (by the new primary's clock):
    // dropped, their pauses resumed. Without the record's time they are left to their
    // leases (a run started on the new primary since must not be dropped).
    let dropped = match promoted_at {
        Some(at) => drop_runs(cfg, &mut c.client, &name, id.timeline, at, &mut c.warnings).await,
        None => Vec::new(),
    };
    let promoted_at = promoted_at.unwrap_or_else(Utc::now);

    // 9. The other replicas follow the new primary.
    let followers_started = Instant::now();
    let switch = crate::failover::candidate::lsn(&switch_lsn).unwrap_or(u64::MAX);
    let others = others_than(cfg, &name).await;
    let (settled, pending) =
        follow::repoint_all(&c.client, &c.target, others, switch, Some(id.timeline)).await;
    let replicas = follow::await_followers(
        cfg,
        &c.client,
        &c.target,
        settled,
        pending,
        id.timeline,
        &switch_lsn,
    )
    .await;
    kill_point("followers");
    c.entry.step = Step::Done;
    if let Err(e) = journal::record_local(&cfg.results_dir, &c.entry) {
        record_errors.push(format!("in results.dir: {}", e.one_line()));
    }
    Ok(Report {
        how: c.how,
        by: c.entry.by.clone(),
        new_primary: name,
        address: crate::failover::primary::address(&c.target.dsn),
        system_identifier: id.system_identifier.to_string(),
        old_timeline,
        timeline: id.timeline,
        switch_lsn,
        switch_lsn_source,
        old_primary: c.down_servers,
        forced: c.entry.forced,
        backlog_bytes: c.backlog,
        resumed_pause: c.resumed_pause,
        pg_promote_returned: c.returned,
        pg_promote_wait_seconds: c.wait,
        warnings: c.warnings,
        notes: c.notes,
        dropped_runs: dropped,
        replicas,
        promoted_at,
        record_errors,
        seconds: Timings {
            down_check: c.down_check.as_secs_f64(),
            promotion: c.promotion_took.as_secs_f64(),
            followers: followers_started.elapsed().as_secs_f64(),
            total: c.started.elapsed().as_secs_f64(),
        },
    })
}

/// At the start of any command but `promote` (which resumes it itself): a promotion
/// this host recorded and did not finish is finished, under the failover locks,
/// before the command looks for the primary. Only a daemon with `failover.automatic`
/// (`may_promote`) sends `pg_promote` again to a candidate still in recovery; the
/// other commands finish what happened and say what is left. Errors are logged: the
/// command goes on, and the survey that follows fences what it must.
pub async fn resume_at_start(cfg: &Config, may_promote: bool) {
    match journal::unfinished(&cfg.results_dir) {
        Ok(Some(_)) => {}
        Ok(None) => return,
        Err(e) => {
            tracing::warn!("{}", e.one_line());
            return;
        }
    }
    let by = crate::leader::daemon_holder();
    let finished = async {
        let _locks = lock_replicas(cfg, &by).await?;
        // Read again under the locks: another pgmaint may have finished it meanwhile.
        match journal::unfinished(&cfg.results_dir)? {
            Some(entry) => resume(cfg, entry, Instant::now(), may_promote)
                .await
                .map(Some),
            None => Ok(None),
        }
    };
    match finished.await {
        Ok(Some(r)) => tracing::warn!(
            replica = %r.new_primary,
            "{}",
            crate::failover::report::render(&r).lines().next().unwrap_or_default()
        ),
        Ok(None) => {}
        Err(e) => tracing::warn!("{}", e.one_line()),
    }
}

/// At the start of a daemon with `failover.automatic`: complete, under the failover
/// locks, the promotion of replica `name`, which the servers say is the primary now.
pub async fn complete_at_start(cfg: &Config, name: &str) -> Result<Report> {
    let by = crate::leader::daemon_holder();
    let _locks = lock_replicas(cfg, &by).await?;
    complete(cfg, name, Instant::now()).await
}

/// Step 3's outcome: the candidate (its session and state) and every other replica.
struct Candidacy {
    warnings: Vec<String>,
    target: ReplicaConfig,
    client: Client,
    probe: Probe,
    others: Vec<Seen>,
}

/// Step 3: the candidate among the replicas seen ([`choose_candidate`]).
fn candidacy(seen: Vec<Seen>, by_hand: Option<&str>) -> Result<Candidacy> {
    let views: Vec<StandbyView> = seen.iter().map(view).collect();
    let candidate =
        choose_candidate(&views, by_hand).map_err(|e| anyhow!("{e} (nothing changed)"))?;
    for w in &candidate.warnings {
        tracing::warn!("{w}");
    }
    let (others, chosen): (Vec<Seen>, Vec<Seen>) = seen
        .into_iter()
        .partition(|s| s.config.name != candidate.name);
    let chosen = chosen
        .into_iter()
        .next()
        .expect("the candidate is a replica");
    let (client, probe) = chosen.state.expect("the candidate is reachable");
    Ok(Candidacy {
        warnings: candidate.warnings,
        target: chosen.config,
        client,
        probe,
        others,
    })
}

/// Promotions known here and on the replicas (the table replicates), so that a former
/// primary that came back is fenced and not taken for the primary; and the failover
/// locks. One promote at a time: each holds a session-level advisory lock on every
/// replica it reaches (advisory locks work on a hot standby) until it ends. Two config
/// entries may reach one server: it is locked once (a server is its system identifier
/// and postmaster start time).
/// The set of servers locked (system identifier, postmaster start time).
type Locked = std::collections::HashSet<(i64, chrono::DateTime<Utc>)>;

async fn lock_replicas(cfg: &Config, by: &str) -> Result<(Vec<Promotion>, Vec<Client>, Locked)> {
    let mut promotions = journal::read_local(&cfg.results_dir).unwrap_or_else(|e| {
        tracing::warn!(
            "could not read the promotions recorded on this host: {}",
            e.one_line()
        );
        Vec::new()
    });
    let mut failover_locks = Vec::new();
    let mut locked = std::collections::HashSet::new();
    for s in p::probe_replicas(cfg).await {
        if let Ok((c, probe)) = s.state {
            if !locked.insert((probe.system_identifier, probe.postmaster_start)) {
                continue;
            }
            if !p::try_failover_lock(&c, by).await? {
                return Err(busy(&c, &s.config.name).await);
            }
            promotions.extend(journal::read_on(&c).await);
            failover_locks.push(c);
        }
    }
    Ok((promotions, failover_locks, locked))
}

/// The failover lock on `replica` is taken: by whom.
async fn busy(client: &Client, replica: &str) -> anyhow::Error {
    let holder = p::failover_lock_holder(client)
        .await
        .unwrap_or_else(|| "another session (it has just ended?)".into());
    NotPromoting::LockBusy {
        replica: replica.to_string(),
        holder,
    }
    .into()
}

/// Step 5: a candidate with more unreplayed WAL than `failover.max_replay_backlog` is
/// refused, unless `force`: then the warning to report.
async fn backlog_gate(
    cfg: &Config,
    client: &Client,
    probe: &Probe,
    name: &str,
    force: bool,
) -> Result<Option<String>> {
    let backlog = probe.backlog();
    if backlog <= cfg.failover.max_replay_backlog {
        return Ok(None);
    }
    let (rate, measured) = match probe.pause_state {
        PauseState::NotPaused => match p::measure_replay_rate(client).await {
            Some(r) => (r, true),
            None => (p::ASSUMED_REPLAY_RATE, false),
        },
        _ => (p::ASSUMED_REPLAY_RATE, false),
    };
    let what = format!(
        "replica {name} has {} of WAL received but not replayed ({}), over failover.max_replay_backlog ({}): {}, \
         and it accepts no write until then",
        human_bytes(backlog),
        if probe.pause_state == PauseState::NotPaused {
            "replaying"
        } else {
            "replay paused"
        },
        human_bytes(cfg.failover.max_replay_backlog),
        p::replay_estimate(backlog, rate, measured)
    );
    if !force {
        bail!("{what}; promote it anyway with --force, or choose another replica with --replica (nothing changed)");
    }
    tracing::warn!("--force: {what}");
    Ok(Some(format!("--force: {what}")))
}

/// Step 8: runs left running are dropped (their results are never uploaded), their
/// leases released, and the pauses they own on other replicas resumed.
async fn drop_runs(
    cfg: &Config,
    client: &mut Client,
    promoted: &str,
    timeline: i32,
    before: DateTime<Utc>,
    warnings: &mut Vec<String>,
) -> Vec<DroppedRun> {
    let reason = format!(
        "replica {promoted} was promoted (timeline {timeline}): the run's results are never uploaded"
    );
    let mut dropped = match p::drop_running_runs(client, &reason, before).await {
        Ok(d) => d,
        Err(e) => {
            warnings.push(format!(
                "could not drop the runs left running: {}",
                e.one_line()
            ));
            Vec::new()
        }
    };
    for run in &mut dropped {
        tracing::warn!(run_id = run.run_id, replica = %run.replica, "dropped: {reason}");
        let (outcome, settled) = resume_dropped(cfg, run, promoted).await;
        run.pause_outcome = Some(outcome);
        // Settled: nothing left for a later recover to do; release the lease. Else it
        // stays expired, and the next command's recover retries the resume.
        if settled {
            if let Err(e) = client
                .execute(
                    "DELETE FROM pgmaint.replica_leases WHERE run_id = $1",
                    &[&run.run_id],
                )
                .await
            {
                warnings.push(format!(
                    "could not release the lease of run {}: {e}",
                    run.run_id
                ));
            }
        }
    }
    dropped
}

/// A replica chosen by hand must be reachable and in recovery: said at once, not after
/// the down check.
async fn check_by_hand(cfg: &Config, name: &str) -> Result<()> {
    let r = cfg.replica(Some(name))?;
    if r.failover_priority == 0 {
        return Err(anyhow!(UsageError(format!(
            "--replica {name}: replica {name} has failover_priority = 0 in the config: it is never promoted"
        ))));
    }
    let client = p::connect_within(&r.dsn, "pgmaint-promote", Duration::from_secs(10))
        .await
        .map_err(|e| {
            anyhow!("replica {name} cannot be promoted: it is unreachable ({e}) (nothing changed)")
        })?;
    let probe = p::probe(&client).await?;
    if !probe.in_recovery {
        bail!("replica {name} cannot be promoted: it is not in recovery (already a primary?) (nothing changed)");
    }
    Ok(())
}

/// Every reachable replica must belong to one cluster: promoting a replica of another
/// one would be a disaster, and it is a config error.
fn same_system(seen: &[Seen]) -> Result<()> {
    let ids: Vec<(&str, i64)> = seen
        .iter()
        .filter_map(|s| {
            Some((
                s.config.name.as_str(),
                s.state.as_ref().ok()?.1.system_identifier,
            ))
        })
        .collect();
    if let Some((a, x)) = ids.first() {
        if let Some((b, y)) = ids.iter().find(|(_, y)| y != x) {
            return Err(anyhow!(UsageError(format!(
                "replicas {a} and {b} belong to different clusters (system identifiers {x} and {y}): fix [[replicas]] \
                 (nothing changed)"
            ))));
        }
    }
    Ok(())
}

/// A configured replica that is already out of recovery, and not a former primary
/// fenced by a recorded promotion, is a primary already: another failover happened
/// outside pgmaint (or one is under way). Promoting a second would make two writers on
/// one timeline, which no fence could tell apart: refuse.
async fn no_other_primary(seen: &[Seen], promotions: &[Promotion]) -> Result<()> {
    for s in seen {
        let Ok((client, probe)) = &s.state else {
            continue;
        };
        if probe.in_recovery {
            continue;
        }
        let id = crate::replica::server_identity(client).await?;
        let fenced = id.is_some_and(|id| {
            journal::fenced_by(promotions, id.system_identifier, id.timeline).is_some()
        });
        if !fenced {
            return Err(NotPromoting::OtherPrimary(
                s.config.name.clone(),
                id.map(|id| format!(", timeline {}", id.timeline))
                    .unwrap_or_default(),
            )
            .into());
        }
    }
    Ok(())
}

/// A replica as the candidate rule sees it.
fn view(s: &Seen) -> StandbyView {
    match &s.state {
        Ok((_, probe)) => StandbyView {
            name: s.config.name.clone(),
            failover_priority: s.config.failover_priority,
            unreachable: None,
            in_recovery: probe.in_recovery,
            receive_lsn: probe.position(),
            replay_lsn: probe.replayed(),
            paused: probe.pause_state != PauseState::NotPaused,
        },
        Err(e) => StandbyView {
            name: s.config.name.clone(),
            failover_priority: s.config.failover_priority,
            unreachable: Some(e.clone()),
            in_recovery: false,
            receive_lsn: 0,
            replay_lsn: 0,
            paused: false,
        },
    }
}

/// Refuse, before any change, a candidate on which pgmaint's role cannot resume
/// replay or promote (a usage error: the DSN's role).
async fn check_privileges(client: &Client, name: &str) -> Result<()> {
    let row = client
        .query_one(
            "SELECT current_user::text,
                    has_function_privilege('pg_promote(boolean, integer)', 'EXECUTE'),
                    has_function_privilege('pg_wal_replay_resume()', 'EXECUTE')",
            &[],
        )
        .await
        .context("reading pgmaint's privileges on the candidate")?;
    let (user, promote, resume): (String, bool, bool) = (row.get(0), row.get(1), row.get(2));
    if !(promote && resume) {
        return Err(anyhow!(UsageError(format!(
            "replica {name}: role {user} may not execute pg_promote() or pg_wal_replay_resume(): connect as a \
             superuser, or GRANT EXECUTE on both (nothing changed)"
        ))));
    }
    Ok(())
}

/// The N of `pg_promote(true, N)`: `min(failover.promote_timeout, 60)` seconds, or
/// the test knob.
fn promote_wait(cfg: &Config) -> Result<i32> {
    if let Ok(v) = std::env::var(p::PROMOTE_WAIT_ENV) {
        return match v.parse::<i32>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(anyhow!(UsageError(format!(
                "{}: {v:?} is not a number of seconds >= 1",
                p::PROMOTE_WAIT_ENV
            )))),
        };
    }
    Ok(cfg.failover.promote_timeout.as_secs().clamp(1, 60) as i32)
}

/// `pg_promote(true, wait)`, once; then poll `pg_is_in_recovery()` until
/// `failover.promote_timeout`. The session to the new primary, and what pg_promote
/// returned (`None`: the answer was lost).
async fn promote(
    cfg: &Config,
    target: &ReplicaConfig,
    client: Client,
    wait: i32,
) -> Result<(Client, Option<bool>)> {
    let name = &target.name;
    let deadline = Instant::now() + cfg.failover.promote_timeout;
    // pg_promote signals the postmaster before it waits: a statement_timeout (or a
    // cancel) during the wait ends the call, not the promotion.
    let _ = client.batch_execute("SET statement_timeout = 0").await;
    tracing::info!(replica = %name, "SELECT pg_promote(true, {wait})");
    let returned = match client
        .query_one("SELECT pg_promote(true, $1)", &[&wait])
        .await
    {
        Ok(row) => Some(row.get::<_, bool>(0)),
        // Refused before anything was asked: no privilege, or no longer in recovery.
        Err(e)
            if e.code()
                .is_some_and(|c| matches!(c.code(), "42501" | "55000")) =>
        {
            return Err(anyhow!(e).context(format!("pg_promote() on replica {name}")))
        }
        // Any other error, or a broken session: the request may have gone through.
        // Never ask twice; watch.
        Err(e) => {
            tracing::warn!(replica = %name, "pg_promote(): {e}; watching pg_is_in_recovery() (never a second pg_promote)");
            None
        }
    };
    if returned == Some(true) {
        return Ok((client, returned));
    }
    if returned == Some(false) {
        tracing::info!(
            replica = %name,
            "pg_promote(true, {wait}) returned false: the promotion is not finished yet and goes on; \
             polling pg_is_in_recovery() until failover.promote_timeout (never a second pg_promote)"
        );
    }
    let mut client = Some(client);
    loop {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = p::connect_within(&target.dsn, "pgmaint-promote", Duration::from_secs(5))
                .await
                .ok();
        }
        if let Some(c) = &client {
            if let Ok(row) = c.query_one("SELECT pg_is_in_recovery()", &[]).await {
                if !row.get::<_, bool>(0) {
                    return Ok((client.take().expect("checked"), returned));
                }
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "replica {name}: promotion requested, but it is still in recovery after failover.promote_timeout ({}s) \
                 (replaying its backlog?). PostgreSQL does not cancel a promotion: it becomes the primary when \
                 replay ends. pgmaint has not recorded it nor re-pointed the other replicas: once {name} is out \
                 of recovery, point them at it by hand (ALTER SYSTEM SET primary_conninfo, pg_reload_conf())",
                cfg.failover.promote_timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Resume the pause a dropped run owns on its replica (unless that replica is the new
/// primary, whose pause the promotion ended). What happened, in words, and whether that
/// settles it (nothing left for a later recover to do).
async fn resume_dropped(cfg: &Config, run: &DroppedRun, promoted: &str) -> (String, bool) {
    if run.replica == promoted {
        return (
            "its replica was promoted: the pause ended with the promotion".into(),
            true,
        );
    }
    let Some(own) = &run.pause else {
        return ("it never paused its replica".into(), true);
    };
    let Some(r) = cfg.replicas.iter().find(|r| r.name == run.replica) else {
        return (
            format!(
                "replica {} is not in this config: its pause (if any) was left alone",
                run.replica
            ),
            false,
        );
    };
    let attempt = async {
        let mut ctl = ReplicaControl::connect(r).await?;
        anyhow::Ok(ctl.resume_if_owned(own).await?.0)
    };
    let later =
        "its lease is expired, so the next pgmaint command (or `pgmaint recover`) resumes it";
    match tokio::time::timeout(Duration::from_secs(30), attempt).await {
        Ok(Ok(ResumeOutcome::Resumed)) => ("resumed the replay it left paused".into(), true),
        Ok(Ok(ResumeOutcome::AlreadyRunning)) => ("replay was already running".into(), true),
        Ok(Ok(ResumeOutcome::LostToRestart)) => (
            "the replica restarted since: its pause was already gone".into(),
            true,
        ),
        Ok(Ok(ResumeOutcome::NotOurs)) => (
            "the replica is paused elsewhere, by someone else: left paused".into(),
            true,
        ),
        Ok(Err(e)) => (
            format!("could not resume its pause: {}; {later}", e.one_line()),
            false,
        ),
        Err(_) => (
            format!("could not resume its pause: no answer within 30s; {later}"),
            false,
        ),
    }
}
