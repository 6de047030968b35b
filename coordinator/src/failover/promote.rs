//! `pgmaint promote [--replica NAME] [--force] [--json]`: failover, when the primary
//! is down.
//!
//! In order, and nothing is changed on any server before step 6:
//! 1. `--replica` is checked against the config (unknown, `failover_priority = 0`:
//!    exit 2) and against the server (unreachable, not in recovery: exit 1).
//! 2. The primary must be down: no server of `primary.dsn` accepts a connection (or
//!    answers at all) for `failover.primary_down_after`, and no replica's WAL receiver
//!    hears from one within it. Otherwise exit 1, naming the evidence. `--force` never
//!    overrides this.
//! 3. The candidate: [`crate::failover::candidate::choose_candidate`] over every replica's state.
//! 4. pgmaint's schema and the privileges promotion needs, on the candidate.
//! 5. The backlog gate: more unreplayed WAL than `failover.max_replay_backlog` is
//!    refused (exit 1) unless `--force`, with an estimate of the replay time.
//! 6. Replay resumed if paused; `pg_promote(true, N)` once; `false` means "not yet":
//!    `pg_is_in_recovery()` is polled until `failover.promote_timeout`.
//! 7. The promotion recorded on the new primary (`pgmaint.promotions`) and in
//!    `results.dir/promotions.json`: from then on the old primary is fenced.
//! 8. Runs left `running` are dropped (their results are never uploaded), their
//!    leases released, and the pauses they own on other replicas resumed.
//! 9. Every other replica is re-pointed at the new primary and checked to stream from
//!    it within `failover.follow_timeout`: `following`, `diverged` (with the pg_rewind
//!    command), `unreachable` or `not following`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chrono::Utc;
use serde::Serialize;
use tokio_postgres::Client;

use crate::config::{Config, ReplicaConfig};
use crate::error_text::OneLine;
use crate::failover::candidate::{choose_candidate, StandbyView};
use crate::failover::journal::{self, Promotion};
use crate::failover::servers::{self as p, DroppedRun, FollowState, Probe, Seen};
use crate::replica::{PauseState, ReplicaControl, ResumeOutcome};
use crate::units::human_bytes;
use crate::{db, schema, UsageError};

/// One replica other than the new primary, after the failover.
#[derive(Debug, Serialize)]
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

/// How long each step took, in seconds.
#[derive(Debug, Default, Serialize)]
pub struct Timings {
    /// The primary down check (at least `failover.primary_down_after`).
    pub down_check: f64,
    /// From the resume/`pg_promote` to the candidate out of recovery.
    pub promotion: f64,
    /// Re-pointing the other replicas and waiting for them.
    pub followers: f64,
    /// The whole command.
    pub total: f64,
}

/// What `pgmaint promote` did.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The replica promoted: the new primary.
    pub new_primary: String,
    /// Its `host:port`.
    pub address: String,
    /// The cluster's system identifier (a string: it exceeds 2^53).
    pub system_identifier: String,
    /// The old primary's timeline.
    pub old_timeline: i32,
    /// The new primary's timeline.
    pub timeline: i32,
    /// Where the new timeline branched off the old one.
    pub switch_lsn: String,
    /// Where the switch LSN was read.
    pub switch_lsn_source: String,
    /// The servers of `primary.dsn` that were down.
    pub old_primary: Vec<String>,
    /// Promoted with `--force` over the backlog gate.
    pub forced: bool,
    /// The candidate's unreplayed WAL when it was chosen, bytes.
    pub backlog_bytes: u64,
    /// Replay was paused on the candidate and pgmaint resumed it.
    pub resumed_pause: bool,
    /// What `pg_promote(true, N)` returned (`None`: no answer).
    pub pg_promote_returned: Option<bool>,
    /// The N of `pg_promote(true, N)`.
    pub pg_promote_wait_seconds: i32,
    /// What the operator should know: WAL lost with this choice, a forced backlog.
    pub warnings: Vec<String>,
    /// What the primary down check saw besides down servers.
    pub notes: Vec<String>,
    /// Runs left running, dropped by the promotion.
    pub dropped_runs: Vec<DroppedRun>,
    /// Every other replica.
    pub replicas: Vec<Follower>,
    /// When the promotion was recorded.
    pub promoted_at: chrono::DateTime<Utc>,
    /// Where recording the promotion failed, if it did.
    pub record_errors: Vec<String>,
    /// Time taken.
    pub seconds: Timings,
}

/// Why a failover did not promote because another one is under way or done: a daemon
/// follows the new primary instead.
#[derive(Debug, thiserror::Error)]
pub enum NotPromoting {
    /// Another pgmaint holds the failover lock on this replica.
    #[error("another pgmaint promote is running: it holds the failover lock on replica {0} (nothing changed)")]
    LockBusy(String),
    /// This replica is a primary already, fenced by no recorded promotion.
    #[error(
        "replica {0} is already a primary (not in recovery{1}), and no recorded promotion fences it: another \
         failover happened outside pgmaint, or one is under way; not promoting a second primary (nothing changed)"
    )]
    OtherPrimary(String, String),
    /// `failover.fence_command` failed.
    #[error("{0}: not promoting (nothing changed)")]
    FenceFailed(String),
    /// `pg_promote` was sent to this replica, and what followed failed: the promotion
    /// may still finish. Never promote another one meanwhile.
    #[error("replica {0} was asked to promote, then: {1}")]
    Unfinished(String, String),
}

/// Steps 1 to 9 (see the module's docs): what `pgmaint promote` does, and what
/// `pgmaint daemon` does with `failover.automatic` (never with `force`). `stop`: stop
/// where that is still safe (before step 6). `on_down`: cancelled once the primary is
/// found down (the daemon then stops its work against the old primary). `finishing`:
/// a replica asked to promote by an earlier attempt that did not finish: never another
/// candidate while it may still become the primary; once it is one, steps 7 to 9 are
/// done for it.
pub async fn failover(
    cfg: &Config,
    by_hand: Option<&str>,
    force: bool,
    stop: &tokio_util::sync::CancellationToken,
    on_down: Option<&tokio_util::sync::CancellationToken>,
    finishing: Option<&str>,
) -> Result<Report> {
    let started = Instant::now();

    // 1. The operator's choice, before anything is waited for.
    if let Some(name) = by_hand {
        check_by_hand(cfg, name).await?;
    }
    // Promotions known here and on the replicas, and the failover locks.
    let (promotions, _failover_locks, locked) = lock_replicas(cfg).await?;

    // 2. The primary must be down.
    let (down, seen) = primary_is_down(cfg, &promotions).await?;
    let down_check = started.elapsed();
    if let Some(t) = on_down {
        t.cancel();
    }
    same_system(&seen)?;
    if let Some(name) = finishing {
        return finish_promotion(cfg, name, &down, seen, started, down_check).await;
    }
    no_other_primary(&seen, &promotions).await?;

    // 3. The candidate.
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
        && !p::try_failover_lock(&client).await?
    {
        return Err(NotPromoting::LockBusy(target.name.clone()).into());
    }

    // 4. pgmaint's schema, and the privileges a promotion needs: refused before any change.
    schema::require_current(&client)
        .await
        .with_context(|| format!("replica {} (the candidate)", target.name))?;
    check_privileges(&client, &target.name).await?;

    // 5. The backlog gate.
    let backlog = probe.backlog();
    if let Some(w) = backlog_gate(cfg, &client, &probe, &target.name, force).await? {
        warnings.push(w);
    }

    // 6. Resume, promote once, wait. A signal from here on does not stop the failover
    // half-way (a second one exits at once).
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
    evidence.extend(heard_from_a_primary(
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
    let promotion_took = promote_started.elapsed();
    tracing::info!(replica = %target.name, secs = promotion_took.as_secs_f64(), "promoted");

    after_promotion(
        cfg,
        Promoted {
            target,
            client,
            position: probe.position(),
            forced: force && backlog > cfg.failover.max_replay_backlog,
            others,
            warnings,
            backlog,
            resumed_pause,
            returned,
            wait,
            down_check,
            promotion_took,
            started,
        },
        &down,
    )
    .await
    .map_err(unfinished)
}

/// What steps 7 to 9 need of a promotion that happened.
struct Promoted {
    target: ReplicaConfig,
    client: Client,
    /// The candidate's WAL position before it was promoted (the switch point, when the
    /// history file cannot be read).
    position: u64,
    forced: bool,
    others: Vec<Seen>,
    warnings: Vec<String>,
    backlog: u64,
    resumed_pause: bool,
    returned: Option<bool>,
    wait: i32,
    down_check: Duration,
    promotion_took: Duration,
    started: Instant,
}

/// Steps 7 to 9: record the promotion (the old primary fenced from then on), drop the
/// runs left running, re-point the other replicas; the report.
async fn after_promotion(cfg: &Config, mut done: Promoted, down: &p::DownCheck) -> Result<Report> {
    let target = &done.target;
    // 7. Record it: from now on the old primary is fenced.
    let recorded = record(
        cfg,
        &done.client,
        &target.name,
        done.position,
        &down.down,
        done.forced,
    )
    .await?;
    let (id, promotion) = (recorded.id, &recorded.promotion);

    // 8. Runs left running: dropped, their pauses resumed.
    let dropped = drop_runs(
        cfg,
        &mut done.client,
        &target.name,
        id.timeline,
        &mut done.warnings,
    )
    .await;

    // 9. The other replicas follow the new primary.
    let followers_started = Instant::now();
    done.others
        .sort_by(|a, b| a.config.name.cmp(&b.config.name));
    let replicas = follow(
        cfg,
        &done.client,
        target,
        done.others,
        id.timeline,
        &promotion.switch_lsn,
    )
    .await;
    Ok(Report {
        new_primary: target.name.clone(),
        address: crate::failover::primary::address(&target.dsn),
        system_identifier: id.system_identifier.to_string(),
        old_timeline: promotion.old_timeline,
        timeline: id.timeline,
        switch_lsn: promotion.switch_lsn.clone(),
        switch_lsn_source: recorded.switch_lsn_source.clone(),
        old_primary: down.down.clone(),
        forced: promotion.forced,
        backlog_bytes: done.backlog,
        resumed_pause: done.resumed_pause,
        pg_promote_returned: done.returned,
        pg_promote_wait_seconds: done.wait,
        warnings: done.warnings,
        notes: down.notes.clone(),
        dropped_runs: dropped,
        replicas,
        promoted_at: promotion.promoted_at,
        record_errors: recorded.errors.clone(),
        seconds: Timings {
            down_check: done.down_check.as_secs_f64(),
            promotion: done.promotion_took.as_secs_f64(),
            followers: followers_started.elapsed().as_secs_f64(),
            total: done.started.elapsed().as_secs_f64(),
        },
    })
}

/// An earlier attempt asked replica `name` to promote and did not see it finish: while
/// it is still in recovery, wait for it (never a second pg_promote, never another
/// candidate); once it is the primary, do steps 7 to 9 for it.
async fn finish_promotion(
    cfg: &Config,
    name: &str,
    down: &p::DownCheck,
    seen: Vec<Seen>,
    started: Instant,
    down_check: Duration,
) -> Result<Report> {
    let (mine, others): (Vec<Seen>, Vec<Seen>) =
        seen.into_iter().partition(|s| s.config.name == name);
    let still =
        |why: String| -> anyhow::Error { NotPromoting::Unfinished(name.to_string(), why).into() };
    let Some(Seen {
        config: target,
        state,
    }) = mine.into_iter().next()
    else {
        return Err(still("it is no longer in the config".into()));
    };
    let (client, probe) = state.map_err(|e| still(format!("unreachable: {e}")))?;
    if probe.in_recovery {
        return Err(still(
            "still in recovery: the promotion asked for earlier goes on".into(),
        ));
    }
    tracing::info!(replica = %name, "failover: replica {name} finished its promotion: recording it");
    after_promotion(
        cfg,
        Promoted {
            target,
            client,
            position: probe.position(),
            forced: false,
            others,
            warnings: Vec::new(),
            backlog: 0,
            resumed_pause: false,
            returned: None,
            wait: 0,
            down_check,
            promotion_took: Duration::ZERO,
            started,
        },
        down,
    )
    .await
    .map_err(|e| still(e.one_line()))
}

/// Print the report; a promotion that could not be recorded is an error all the same.
pub fn finish(report: &Report, json: bool) -> Result<ExitCode> {
    print(report, json)?;
    if !report.record_errors.is_empty() {
        bail!(
            "replica {} WAS promoted (timeline {}), but the promotion could not be recorded {}: until it is, \
             pgmaint may not recognise the old primary as fenced",
            report.new_primary,
            report.timeline,
            report.record_errors.join("; ")
        );
    }
    Ok(ExitCode::SUCCESS)
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

async fn lock_replicas(cfg: &Config) -> Result<(Vec<Promotion>, Vec<Client>, Locked)> {
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
            if !p::try_failover_lock(&c).await? {
                return Err(NotPromoting::LockBusy(s.config.name.clone()).into());
            }
            promotions.extend(journal::read_on(&c).await);
            failover_locks.push(c);
        }
    }
    Ok((promotions, failover_locks, locked))
}

/// Replicas whose WAL receiver heard from a primary within `window`, as evidence. A
/// receiver fed by another configured replica that this look reached says nothing of
/// the old primary: in recovery (a cascading standby), that replica's own receiver
/// speaks for the chain; out of recovery (a replica promoted meanwhile), the check for
/// another primary decides. Fed by anything else — the primary in use, a replica out of
/// reach, an address not in the config — it counts.
fn heard_from_a_primary(cfg: &Config, seen: &[Seen], window: Duration) -> Vec<String> {
    let in_use = crate::failover::primary::address(&cfg.primary);
    let standbys: Vec<String> = seen
        .iter()
        .filter(|s| s.state.is_ok())
        .map(|s| crate::failover::primary::address(&s.config.dsn))
        .filter(|a| *a != in_use)
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
async fn primary_is_down(
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

/// What step 7 recorded.
struct Recorded {
    id: crate::replica::ServerIdentity,
    promotion: Promotion,
    switch_lsn_source: String,
    /// Where recording failed.
    errors: Vec<String>,
}

/// Step 7: the promotion recorded on the new primary and on this host; from then on
/// the old primary is fenced.
async fn record(
    cfg: &Config,
    client: &Client,
    name: &str,
    position: u64,
    old_primary: &[String],
    forced: bool,
) -> Result<Recorded> {
    let id = crate::replica::server_identity(client)
        .await?
        .ok_or_else(|| anyhow!("replica {name} is still in recovery after its promotion"))?;
    let (old_timeline, switch_lsn, switch_lsn_source) =
        match p::read_switch_point(client, id.timeline).await {
            Ok((parent, at)) => (parent, at, "the new timeline's history file".to_string()),
            Err(e) => {
                let at = lsn_text(position);
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
    let promotion = Promotion {
        replica: name.to_string(),
        system_identifier: id.system_identifier,
        old_timeline,
        new_timeline: id.timeline,
        switch_lsn,
        old_primary: (!old_primary.is_empty()).then(|| old_primary.join(",")),
        forced,
        promoted_at: Utc::now(),
    };
    let mut errors = Vec::new();
    if let Err(e) = journal::record_on(client, &promotion).await {
        errors.push(format!("on the new primary: {}", e.one_line()));
    }
    if let Err(e) = journal::record_local(&cfg.results_dir, &promotion) {
        errors.push(format!("in results.dir: {}", e.one_line()));
    }
    Ok(Recorded {
        id,
        promotion,
        switch_lsn_source,
        errors,
    })
}

/// Step 8: runs left running are dropped (their results are never uploaded), their
/// leases released, and the pauses they own on other replicas resumed.
async fn drop_runs(
    cfg: &Config,
    client: &mut Client,
    promoted: &str,
    timeline: i32,
    warnings: &mut Vec<String>,
) -> Vec<DroppedRun> {
    let reason = format!(
        "replica {promoted} was promoted (timeline {timeline}): the run's results are never uploaded"
    );
    let mut dropped = match p::drop_running_runs(client, &reason).await {
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

/// One follower being re-pointed.
struct Pending {
    name: String,
    address: String,
    client: Client,
    data_directory: Option<String>,
    conninfo: String,
    slot_created: Option<String>,
    detail: String,
}

/// Re-point every other replica at the new primary, and wait (at most
/// `failover.follow_timeout` in all) for each to stream from it.
async fn follow(
    cfg: &Config,
    new_primary: &Client,
    target: &ReplicaConfig,
    seen: Vec<Seen>,
    new_tli: i32,
    switch_lsn: &str,
) -> Vec<Follower> {
    let deadline = Instant::now() + cfg.failover.follow_timeout;
    let switch = crate::failover::candidate::lsn(switch_lsn).unwrap_or(u64::MAX);
    let (hosts, ports) = db::hosts_and_ports(&target.dsn.config);
    let host = hosts.first().cloned().unwrap_or_else(|| "localhost".into());
    let port: u16 = ports.first().and_then(|p| p.parse().ok()).unwrap_or(5432);
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
        match repoint(new_primary, &client, &name, &host, port, switch).await {
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
    let phase = Instant::now();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for f in pending {
            if p::streams_on(&f.client, new_tli).await.unwrap_or(false) {
                done.push(Follower {
                    detail: format!(
                        "streams from {host}:{port} on timeline {new_tli} ({:.1}s after it was re-pointed){}",
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
) -> Result<Repointed> {
    let probe: Probe = p::probe(client).await?;
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
    if p::past_switch(probe.position(), probe.replayed(), switch) == Some(true) {
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
    if probe.pause_state != PauseState::NotPaused {
        return Ok(Repointed::Settled(
            FollowState::NotFollowing,
            format!(
                "re-pointed at {host}:{port}, but its replay is {} by someone else (not a pgmaint run): a paused \
                 standby does not stream; it follows once resumed (SELECT pg_wal_replay_resume())",
                probe.pause_state
            ),
            None,
        ));
    }
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
fn lsn_text(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xFFFF_FFFF)
}

fn print(r: &Report, json: bool) -> Result<()> {
    use std::io::Write;
    let text = if json {
        format!("{}\n", serde_json::to_string_pretty(r)?)
    } else {
        render(r)
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    Ok(())
}

/// The report for a human.
pub fn render(r: &Report) -> String {
    let mut out = format!(
        "promoted replica {} ({}): the new primary, timeline {} (from {}), switch LSN {}\n",
        r.new_primary, r.address, r.timeline, r.old_timeline, r.switch_lsn
    );
    out.push_str(&format!(
        "old primary down: {} (no connection for {:.1}s, no replica heard from it)\n",
        if r.old_primary.is_empty() {
            "-".to_string()
        } else {
            r.old_primary.join(", ")
        },
        r.seconds.down_check
    ));
    for n in &r.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out.push_str(&format!(
        "backlog replayed at promotion {}{}; pg_promote(true, {}) returned {}\n",
        human_bytes(r.backlog_bytes),
        if r.resumed_pause {
            " (replay was paused: resumed)"
        } else {
            ""
        },
        r.pg_promote_wait_seconds,
        match r.pg_promote_returned {
            Some(true) => "true",
            Some(false) => "false (not yet: polled pg_is_in_recovery())",
            None => "nothing (session lost: polled pg_is_in_recovery())",
        }
    ));
    for w in &r.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    for d in &r.dropped_runs {
        out.push_str(&format!(
            "run {} on replica {} dropped (its results are never uploaded): {}\n",
            d.run_id,
            d.replica,
            d.pause_outcome.as_deref().unwrap_or("-")
        ));
    }
    if !r.replicas.is_empty() {
        out.push_str(&format!(
            "{:<12} {:<22} {:<14} DETAIL\n",
            "REPLICA", "ADDRESS", "STATE"
        ));
        for f in &r.replicas {
            out.push_str(&format!(
                "{:<12} {:<22} {:<14} {}\n",
                f.name,
                f.address,
                f.state.to_string(),
                f.detail
            ));
            if let Some(cmd) = &f.pg_rewind {
                out.push_str(&format!("{:<50} {cmd}\n", ""));
            }
        }
    }
    out.push_str(&format!(
        "took {:.1}s: down check {:.1}s, promotion {:.1}s, followers {:.1}s\n",
        r.seconds.total, r.seconds.down_check, r.seconds.promotion, r.seconds.followers
    ));
    out
}
