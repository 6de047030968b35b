//! The run row and the replica lease on the primary: one coordinator per replica, and
//! the recovery of replicas left paused by a run that died.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use snapshot_runner::SnapshotInfo;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use uploader::RunState;

use crate::abort::{Abort, AbortReason};
use crate::config::{Dsn, ReplicaConfig};
use crate::db;
use crate::replica::{PauseOwnership, ReplicaControl, ResumeOutcome};

/// `limits.keep_unpaused`, enforced where leases are taken: two runs choosing their
/// replicas at the same moment must not pause more failover candidates than allowed.
#[derive(Debug, Clone)]
pub struct PoolGuard {
    /// The replicas with `failover_priority > 0`.
    pub candidates: Vec<String>,
    /// How many of them must stay unpaused.
    pub keep: usize,
}

impl PoolGuard {
    /// Inside the lease's transaction: refuse `replica` if leasing it would leave fewer
    /// than `keep` candidates unleased. The table lock serialises concurrent takers.
    async fn check(&self, tx: &tokio_postgres::Transaction<'_>, replica: &str) -> Result<()> {
        if self.keep == 0 || !self.candidates.iter().any(|c| c == replica) {
            return Ok(());
        }
        tx.batch_execute("LOCK TABLE pgmaint.replica_leases IN SHARE ROW EXCLUSIVE MODE")
            .await
            .context("locking the replica leases")?;
        let held: Vec<String> = tx
            .query(
                "SELECT replica || ' (run ' || run_id || ')' FROM pgmaint.replica_leases
                  WHERE replica = ANY($1) AND replica <> $2 ORDER BY replica",
                &[&self.candidates, &replica],
            )
            .await
            .context("reading the replica leases")?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let left = self.candidates.len().saturating_sub(held.len() + 1);
        if left < self.keep {
            bail!(
                "replica {replica}: pausing it would leave {left} failover candidate(s) unpaused, under \
                 limits.keep_unpaused = {} (in use: {})",
                self.keep,
                held.join(", ")
            );
        }
        Ok(())
    }
}

/// The lease a run holds on its replica.
pub struct PauseLease {
    /// The run (row in `pgmaint.runs`).
    pub run_id: i64,
    replica: String,
    duration: Duration,
}

/// `host:pid` of this process: who holds a lease, and who wrote an outcome.
pub fn holder() -> String {
    format!("{}:{}", holder_host(), std::process::id())
}

/// This host's name, as holders name it.
fn holder_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl PauseLease {
    /// Record a new run and take the replica's lease, atomically. Fails if a live run
    /// holds the lease.
    pub async fn acquire(
        primary: &mut Client,
        replica: &str,
        purpose: &str,
        tasks: &[String],
        duration: Duration,
        guard: &PoolGuard,
    ) -> Result<PauseLease> {
        let holder = holder();
        let tx = primary.transaction().await?;
        guard.check(&tx, replica).await?;
        let run_id: i64 = tx
            .query_one(
                "INSERT INTO pgmaint.runs (replica, purpose, holder, tasks) VALUES ($1, $2, $3, $4) RETURNING id",
                &[&replica, &purpose, &holder, &tasks],
            )
            .await
            .context("recording the run")?
            .get(0);
        let taken = tx
            .execute(
                "INSERT INTO pgmaint.replica_leases (replica, run_id, holder, expires_at)
                 VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond')
                 ON CONFLICT (replica) DO NOTHING",
                &[&replica, &run_id, &holder, &millis(duration)],
            )
            .await
            .context("taking the replica lease")?;
        if taken == 0 {
            drop(tx);
            let row = primary
                .query_opt(
                    "SELECT run_id, holder, expires_at FROM pgmaint.replica_leases WHERE replica = $1",
                    &[&replica],
                )
                .await?;
            match row {
                Some(r) => bail!(
                    "replica {replica} is in use by run {} ({}), lease valid until {}",
                    r.get::<_, i64>(0),
                    r.get::<_, String>(1),
                    r.get::<_, DateTime<Utc>>(2)
                ),
                None => bail!("replica {replica} lease was busy; try again"),
            }
        }
        tx.commit().await?;
        Ok(PauseLease {
            run_id,
            replica: replica.to_string(),
            duration,
        })
    }

    /// Renew the lease every third of its duration from a session of its own. If it
    /// cannot be renewed before it would expire, `abort` fires: a run must not go on
    /// holding a pause that another command may be about to take over.
    pub fn spawn_heartbeat(&self, primary: Dsn, abort: Abort) -> HeartbeatHandle {
        let stop = CancellationToken::new();
        let (run_id, replica, duration) = (self.run_id, self.replica.clone(), self.duration);
        let stopped = stop.clone();
        let handle = tokio::spawn(async move {
            let mut client: Option<Client> = None;
            let mut renewed = Instant::now();
            loop {
                tokio::select! {
                    _ = stopped.cancelled() => return,
                    _ = tokio::time::sleep(duration / 3) => {}
                }
                // The lease counts from the primary's clock when the UPDATE runs, which is
                // after this moment: timing renewals from here errs on the safe side.
                let sent = Instant::now();
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client =
                        tokio::time::timeout(duration / 3, db::connect(&primary, "pgmaint-lease"))
                            .await
                            .ok()
                            .and_then(|c| c.ok());
                }
                let result = match &client {
                    // Bounded: a stalled primary must not stall the renewal past expiry.
                    Some(c) => match tokio::time::timeout(
                        duration / 3,
                        c.execute(
                            "UPDATE pgmaint.replica_leases SET expires_at = now() + $3 * interval '1 millisecond'
                              WHERE replica = $1 AND run_id = $2 AND expires_at > now()",
                            &[&replica, &run_id, &millis(duration)],
                        ),
                    )
                    .await
                    {
                        Ok(r) => r.map_err(|e| e.to_string()),
                        Err(_) => Err("lease renewal timed out".to_string()),
                    },
                    None => Err("primary unreachable".to_string()),
                };
                match result {
                    Ok(1) => renewed = sent,
                    Ok(_) => {
                        abort.trigger(AbortReason::LeaseLost(format!(
                            "run {run_id} no longer holds the lease"
                        )));
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "lease renewal failed");
                        // Give up with half the lease still to run: time to stop and
                        // resume before anyone may take the replica over.
                        if renewed.elapsed() >= duration / 2 {
                            abort.trigger(AbortReason::LeaseLost(e));
                            return;
                        }
                    }
                }
            }
        });
        HeartbeatHandle {
            stop,
            handle: Some(handle),
        }
    }

    /// Record, before `pg_wal_replay_pause()` is called, that this run may own a pause.
    pub async fn mark_pause_requested(
        &self,
        primary: &Client,
        postmaster_start: DateTime<Utc>,
    ) -> Result<()> {
        // Only while this run still holds a live lease: once it expired, a `recover` may
        // have dropped the run, and a pause requested now would be tracked by nobody.
        let n = primary
            .execute(
                "UPDATE pgmaint.runs SET pause_requested_at = now(), replica_started_at = $2
                  WHERE id = $1 AND state = 'running'
                    AND EXISTS (SELECT 1 FROM pgmaint.replica_leases l
                                 WHERE l.run_id = $1 AND l.expires_at > now())",
                &[&self.run_id, &postmaster_start],
            )
            .await
            .context("recording the pause request")?;
        if n == 0 {
            bail!(
                "run {} no longer holds the replica's lease: not pausing",
                self.run_id
            );
        }
        Ok(())
    }

    /// Forget a pause request whose pause this run has resumed itself.
    pub async fn clear_pause_request(&self, primary: &Client) -> Result<()> {
        primary
            .execute(
                "UPDATE pgmaint.runs SET pause_requested_at = NULL, replica_started_at = NULL WHERE id = $1",
                &[&self.run_id],
            )
            .await
            .context("clearing the pause request")?;
        Ok(())
    }

    /// Record the confirmed pause and its snapshot.
    pub async fn record_snapshot(&self, primary: &Client, snap: &SnapshotInfo) -> Result<()> {
        primary
            .execute(
                "UPDATE pgmaint.runs SET paused_at = now(), snapshot_lsn = $2::text::pg_lsn, timeline = $3,
                        system_identifier = $4 WHERE id = $1",
                &[&self.run_id, &snap.lsn, &snap.timeline, &snap.system_identifier],
            )
            .await
            .context("recording the snapshot")?;
        Ok(())
    }

    /// Close the run: final state (only if still `running`: a recover may have marked it
    /// dropped), resume details, and release the lease unless the replica may still be
    /// paused by us (then the lease must expire so that a later command recovers it).
    pub async fn finish(
        &self,
        primary: &mut Client,
        state: RunState,
        error: Option<&str>,
        resumed: Option<(DateTime<Utc>, i64)>,
        release: bool,
    ) -> Result<()> {
        let tx = primary.transaction().await?;
        tx.execute(
            "UPDATE pgmaint.runs SET state = CASE WHEN state = 'running' THEN $2 ELSE state END,
                    finished_at = coalesce(finished_at, now()),
                    error = coalesce($3, error),
                    resumed_at = coalesce($4, resumed_at), backlog_at_resume = coalesce($5, backlog_at_resume)
              WHERE id = $1",
            &[
                &self.run_id,
                &state.as_str(),
                &error,
                &resumed.map(|r| r.0),
                &resumed.map(|r| r.1),
            ],
        )
        .await?;
        if release {
            tx.execute(
                "DELETE FROM pgmaint.replica_leases WHERE replica = $1 AND run_id = $2",
                &[&self.replica, &self.run_id],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// How a run ended, kept in `results.dir/<run-id>/outcome.json` when the run could not
/// record it on the primary (a stalled or restarting primary at the end of the run).
/// The command that later recovers the run's expired lease records it from there, so
/// the run's history says how it really ended, not that its coordinator died.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunOutcome {
    /// The run.
    pub run_id: i64,
    /// Its final state: failed, cancelled, aborted or invalid.
    pub state: RunState,
    /// What went wrong.
    pub error: Option<String>,
    /// When the run resumed replay itself, and the backlog then.
    pub resumed: Option<(DateTime<Utc>, i64)>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// Who wrote it (`host:pid`, as in the run's lease): a file left by another run of
    /// the same id (a results.dir reused after the schema was recreated) is not its.
    pub holder: String,
}

/// The file name of a [`RunOutcome`] in the run directory.
pub const OUTCOME_FILE: &str = "outcome.json";

impl RunOutcome {
    /// Keep the outcome in `run_dir` (created if need be), of `mode`.
    pub fn write(
        &self,
        run_dir: &std::path::Path,
        mode: snapshot_runner::ResultsMode,
    ) -> Result<std::path::PathBuf> {
        mode.create_dir_all(run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        let path = run_dir.join(OUTCOME_FILE);
        mode.write(&path, &serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// The outcome kept for `run_id` under `results_dir`, if any (and if it is one: a
    /// run that succeeded recorded that on the primary, with its uploads).
    pub fn read(results_dir: &std::path::Path, run_id: i64) -> Option<RunOutcome> {
        let path = results_dir.join(run_id.to_string()).join(OUTCOME_FILE);
        let outcome: RunOutcome = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        let ended = [
            RunState::Failed,
            RunState::Cancelled,
            RunState::Aborted,
            RunState::Invalid,
        ];
        (outcome.run_id == run_id && ended.contains(&outcome.state)).then_some(outcome)
    }
}

/// Stops the heartbeat when told to (or dropped).
pub struct HeartbeatHandle {
    stop: CancellationToken,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl HeartbeatHandle {
    /// Stop renewing.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(h) = self.handle.take() {
            // It may be stuck in a call to a stalled primary: do not wait for that.
            h.abort();
            let _ = h.await;
        }
    }
}

impl Drop for HeartbeatHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What `recover` did for one replica.
#[derive(Debug, Clone, serde::Serialize)]
pub enum Recovery {
    /// No lease: nothing to do.
    Nothing,
    /// A live run holds the lease.
    Alive {
        run_id: i64,
        holder: String,
        expires_at: DateTime<Utc>,
    },
    /// A dead run's lease was cleared.
    Recovered {
        run_id: i64,
        resumed: bool,
        /// What happened, starting with a verb: "had died (lease expired): …".
        note: String,
        /// The state the run was marked: `dropped`, or how it had ended by itself.
        state: RunState,
    },
}

/// Recover the replica from a run whose lease expired: resume the pause it left (only
/// if it is provably that run's pause), mark the run DROPPED, clear the lease.
pub async fn recover_expired(
    primary: &mut Client,
    replica: &ReplicaConfig,
    results_dir: &std::path::Path,
) -> Result<Recovery> {
    let tx = primary.transaction().await?;
    let row = tx
        .query_opt(
            "SELECT l.run_id, l.holder, l.expires_at, l.expires_at < now(),
                    r.pause_requested_at IS NOT NULL, r.replica_started_at, r.snapshot_lsn::text
               FROM pgmaint.replica_leases l JOIN pgmaint.runs r ON r.id = l.run_id
              WHERE l.replica = $1 FOR UPDATE OF l",
            &[&replica.name],
        )
        .await
        .context("reading the replica lease")?;
    let Some(row) = row else {
        return Ok(Recovery::Nothing);
    };
    let run_id: i64 = row.get(0);
    let holder: String = row.get(1);
    // Dead: its lease expired, or it ran on this host and its process is gone.
    let died = if row.get::<_, bool>(3) {
        "lease expired".to_string()
    } else if let Some(gone) = dead_on_this_host(&holder) {
        gone
    } else {
        return Ok(Recovery::Alive {
            run_id,
            holder,
            expires_at: row.get(2),
        });
    };
    let paused: Option<PauseOwnership> = row.get::<_, bool>(4).then(|| PauseOwnership {
        postmaster_start: row.get(5),
        snapshot_lsn: row.get(6),
    });
    let (resumed, note) = resume_dead_runs_pause(replica, paused).await?;
    // The run may have ended by itself and only failed to say so (the primary stalled
    // or restarted as it ended): then record how it ended, from its results directory.
    let kept = RunOutcome::read(results_dir, run_id).filter(|o| o.holder == holder);
    let note = close_dead_run(&tx, run_id, kept.as_ref(), &note, &died).await?;
    tx.execute(
        "UPDATE pgmaint.runs SET resumed_at = now() WHERE id = $1 AND $2",
        &[&run_id, &resumed],
    )
    .await?;
    tx.execute(
        "DELETE FROM pgmaint.replica_leases WHERE replica = $1",
        &[&replica.name],
    )
    .await?;
    tx.commit().await?;
    let state = kept.map_or(RunState::Dropped, |o| o.state);
    tracing::warn!(
        run_id,
        replica = %replica.name,
        "replica {}: run {run_id} {note}; run {run_id} marked {state}",
        replica.name
    );
    Ok(Recovery::Recovered {
        run_id,
        resumed,
        note,
        state,
    })
}

/// Resume the pause a dead run left, if it provably is that run's (`paused`: what the
/// run recorded before requesting it). Whether it was resumed, and what was found.
async fn resume_dead_runs_pause(
    replica: &ReplicaConfig,
    paused: Option<PauseOwnership>,
) -> Result<(bool, String)> {
    let Some(own) = paused else {
        return Ok((false, "it never paused the replica".to_string()));
    };
    let mut ctl = ReplicaControl::connect(replica).await?;
    let (outcome, _) = ctl.resume_if_owned(&own).await?;
    let note = match outcome {
        ResumeOutcome::Resumed => "resumed the replay it left paused",
        ResumeOutcome::AlreadyRunning => "replay was already running",
        ResumeOutcome::LostToRestart => {
            "the replica restarted since, so its pause was already gone"
        }
        ResumeOutcome::NotOurs => "the replica is paused elsewhere, by someone else: left paused",
    };
    Ok((outcome == ResumeOutcome::Resumed, note.to_string()))
}

/// Close a dead run still marked `running`: as it had ended (`kept`, from its results
/// directory), or `dropped`. What happened to it, starting with a verb.
async fn close_dead_run(
    tx: &tokio_postgres::Transaction<'_>,
    run_id: i64,
    kept: Option<&RunOutcome>,
    note: &str,
    died: &str,
) -> Result<String> {
    let Some(o) = kept else {
        let why = format!("{died}: coordinator died or hung");
        tx.execute(
            "UPDATE pgmaint.runs SET state = 'dropped', finished_at = now(),
                    error = coalesce(error || '; ', '') || $2
              WHERE id = $1 AND state = 'running'",
            &[&run_id, &why],
        )
        .await?;
        return Ok(format!("had died ({died}): {note}"));
    };
    tx.execute(
        "UPDATE pgmaint.runs SET state = $2, finished_at = $3, resumed_at = coalesce($5, resumed_at),
                backlog_at_resume = coalesce($6, backlog_at_resume),
                error = coalesce($4 || '; ', '') || 'recorded later from results.dir: the run could not reach the primary when it ended'
          WHERE id = $1 AND state = 'running'",
        &[&run_id, &o.state.as_str(), &o.finished_at, &o.error, &o.resumed.map(|r| r.0), &o.resumed.map(|r| r.1)],
    )
    .await?;
    Ok(format!(
        "had ended ({}) without recording it on the primary ({died}): {note}",
        o.state
    ))
}

/// Why a lease holder (`host:pid`, see [`holder`]) on this host is dead, if it is: its
/// process is gone, or its pid now belongs to a process that is not pgmaint. A holder
/// on another host (or this process) is left to its lease.
pub fn dead_on_this_host(holder: &str) -> Option<String> {
    let (host, rest) = holder.split_once(':')?;
    let pid: u32 = rest.split(':').next()?.parse().ok()?;
    let here = holder_host();
    if host != here || pid == std::process::id() {
        return None;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Err(_) => Some(format!("its process {pid} on this host ({here}) is gone")),
        Ok(comm) if !comm.trim().starts_with("pgmaint") => Some(format!(
            "pid {pid} on this host ({here}) is now {}, not pgmaint",
            comm.trim()
        )),
        Ok(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_on_this_host_whose_process_is_gone_is_dead() {
        let here = holder_host();
        assert_eq!(dead_on_this_host(&holder()), None, "this process");
        assert_eq!(dead_on_this_host("elsewhere:1"), None, "another host");
        // pid 1 is init, not pgmaint.
        let init = dead_on_this_host(&format!("{here}:1")).unwrap();
        assert!(init.contains("not pgmaint"), "{init}");
        let gone = dead_on_this_host(&format!("{here}:{}", u32::MAX - 1)).unwrap();
        assert!(gone.contains("is gone"), "{gone}");
    }
}
