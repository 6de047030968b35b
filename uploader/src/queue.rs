//! The task table `pgmaint.upload_tasks`: enqueue, claim, heartbeat, complete, fail,
//! rescue; and the operator's view of it (list, show, cancel, retry).
//!
//! States: see [`UploadState`].
//!
//! Fencing: a claim increments `attempts`; that number is the claim's token. Every
//! write a worker makes to its task names (id, worker, attempts) and, to complete it,
//! also requires an unexpired lease. Completion happens in the apply transaction, so
//! a worker whose lease expired (and whose task a rescuer gave to someone else) can
//! never commit its apply.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use snapshot_runner::ApplyPlan;
use tokio_postgres::{Client, GenericClient, Row, Statement, Transaction};

use crate::{ResultsHost, UploadError, UploadState};

/// One upload to queue.
#[derive(Debug, Clone)]
pub struct UploadRequest {
    /// The scan task that produced the file; unique within a run.
    pub task_name: String,
    /// How to apply it: queued as `apply_kind` and `params`.
    pub plan: ApplyPlan,
    /// Data file, relative to `results.dir`.
    pub file: String,
    /// The run's manifest, relative to `results.dir`.
    pub manifest: String,
    /// MD5 (hex) of the data file, as the coordinator wrote it. Kept on the primary, so
    /// a file rewritten together with its manifest is still refused.
    pub file_md5: String,
    /// Size of the data file in bytes, as written.
    pub file_size: i64,
    /// The host whose `results.dir` holds the files (`results.host`), or
    /// [`ResultsHost::Shared`] (`results.shared`): who may claim the task.
    pub host: ResultsHost,
}

/// The notification channel `enqueue` (and `retry`) notify, and workers listen on.
pub const CHANNEL: &str = "pgmaint_upload";

/// Queue a run's uploads inside the caller's transaction (which also records the run's
/// outcome). Each upload depends on the previous one, so one run's results are applied
/// in order. Queueing the same (run, task) again is a no-op. Returns the task ids.
pub async fn enqueue(
    tx: &Transaction<'_>,
    run_id: i64,
    uploads: &[UploadRequest],
    max_attempts: i32,
) -> Result<Vec<i64>, UploadError> {
    let mut ids: Vec<i64> = Vec::new();
    for u in uploads {
        let depends_on: Vec<i64> = ids.last().copied().into_iter().collect();
        let params = u.plan.params();
        let row = tx
            .query_one(
                "WITH ins AS (
                     INSERT INTO pgmaint.upload_tasks
                            (run_id, task_name, apply_kind, file, manifest, params, depends_on, max_attempts, target,
                             file_md5, file_size, host)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $6::jsonb ->> 'target', $9, $10, $11)
                     ON CONFLICT (run_id, task_name) DO NOTHING RETURNING id)
                 SELECT id FROM ins
                 UNION ALL SELECT id FROM pgmaint.upload_tasks WHERE run_id = $1 AND task_name = $2
                 LIMIT 1",
                &[
                    &run_id,
                    &u.task_name,
                    &u.plan.kind().as_str(),
                    &u.file,
                    &u.manifest,
                    &params,
                    &depends_on,
                    &max_attempts,
                    &u.file_md5,
                    &u.file_size,
                    &u.host.column(),
                ],
            )
            .await
            .map_err(UploadError::db(format!("queueing upload of task {}", u.task_name)))?;
        ids.push(row.get(0));
    }
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &run_id.to_string()])
        .await
        .map_err(UploadError::db("notifying uploaders"))?;
    Ok(ids)
}

/// A task claimed by a worker.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub id: i64,
    pub run_id: i64,
    pub task_name: String,
    pub kind: String,
    pub file: String,
    pub manifest: String,
    pub params: serde_json::Value,
    /// The fencing token: the attempt number this claim made.
    pub attempt: i32,
    pub max_attempts: i32,
    /// MD5 and size of the data file as the coordinator recorded them at enqueue
    /// (`None` for tasks queued before migration 3).
    pub file_md5: Option<String>,
    pub file_size: Option<i64>,
}

/// Claim the next runnable task (see [`claim`]). `$3`: the worker's host, NULL when
/// its results.dir is shared storage (then it claims any task).
const CLAIM: &str = "UPDATE pgmaint.upload_tasks t
                SET state = 'running', attempts = t.attempts + 1, worker = $1,
                    started_at = now(), heartbeat_at = now(),
                    lease_expires_at = now() + $2 * interval '1 millisecond'
              WHERE t.id = (
                    SELECT w.id FROM pgmaint.upload_tasks w
                     WHERE w.state = 'waiting' AND w.not_before <= now()
                       AND ($3::text IS NULL OR w.host IS NULL OR w.host = $3::text)
                       AND NOT EXISTS (SELECT 1 FROM pgmaint.upload_tasks d
                                        WHERE d.id = ANY (w.depends_on) AND d.state <> 'completed')
                     ORDER BY w.not_before, w.id
                     FOR UPDATE SKIP LOCKED LIMIT 1)
             RETURNING t.id, t.run_id, t.task_name, t.apply_kind, t.file, t.manifest, t.params,
                       t.attempts, t.max_attempts, t.file_md5, t.file_size";

/// Renew a lease (see [`heartbeat`]).
const HEARTBEAT: &str = "UPDATE pgmaint.upload_tasks
                SET lease_expires_at = now() + $4 * interval '1 millisecond', heartbeat_at = now()
              WHERE id = $1 AND worker = $2 AND attempts = $3 AND state = 'running'
                AND lease_expires_at > clock_timestamp()
             RETURNING cancel_requested";

/// Complete a task, fenced (see [`complete`]). `$5` is a note kept in `last_error`
/// (a superseded apply says so there), normally NULL.
const COMPLETE: &str = "UPDATE pgmaint.upload_tasks
                SET state = 'completed', finished_at = clock_timestamp(), rows_applied = $4,
                    lease_expires_at = NULL, last_error = $5::text
              WHERE id = $1 AND worker = $2 AND attempts = $3 AND state = 'running'
                AND lease_expires_at > clock_timestamp() AND NOT cancel_requested";

/// The queue statements a worker runs for every task, prepared once per connection:
/// one round trip each instead of two, and no re-planning.
pub(crate) struct Statements {
    pub claim: Statement,
    pub heartbeat: Statement,
    pub complete: Statement,
}

impl Statements {
    /// Prepare on `client`.
    pub(crate) async fn prepare(client: &Client) -> Result<Self, UploadError> {
        let p = |sql: &'static str| async move {
            client
                .prepare(sql)
                .await
                .map_err(UploadError::db("preparing the queue statements"))
        };
        Ok(Statements {
            claim: p(CLAIM).await?,
            heartbeat: p(HEARTBEAT).await?,
            complete: p(COMPLETE).await?,
        })
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Claim the next runnable task: waiting, due, prerequisites completed, files readable
/// on `host`. SKIP LOCKED lets any number of workers claim at once without waiting on
/// each other.
pub(crate) async fn claim(
    client: &Client,
    stmt: &Statement,
    worker: &str,
    lease: Duration,
    host: &ResultsHost,
) -> Result<Option<Claimed>, UploadError> {
    let row = client
        .query_opt(stmt, &[&worker, &millis(lease), &host.column()])
        .await
        .map_err(UploadError::db("claiming an upload task"))?;
    Ok(row.map(|r| Claimed {
        id: r.get(0),
        run_id: r.get(1),
        task_name: r.get(2),
        kind: r.get(3),
        file: r.get(4),
        manifest: r.get(5),
        params: r.get(6),
        attempt: r.get(7),
        max_attempts: r.get(8),
        file_md5: r.get(9),
        file_size: r.get(10),
    }))
}

/// What a heartbeat learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Beat {
    /// Lease renewed.
    Held,
    /// An operator asked to cancel the task.
    CancelRequested,
    /// The task is no longer ours (rescued after the lease expired).
    Lost,
}

/// Renew the lease of a running task, from a connection other than the apply's.
/// The apply transaction takes no lock on the task row until its last statement, so
/// this never waits behind it for long.
pub(crate) async fn heartbeat(
    client: &Client,
    stmt: &Statement,
    task: &Claimed,
    worker: &str,
    lease: Duration,
) -> Result<Beat, UploadError> {
    let row = client
        .query_opt(stmt, &[&task.id, &worker, &task.attempt, &millis(lease)])
        .await
        .map_err(UploadError::db("renewing the task lease"))?;
    Ok(match row {
        None => Beat::Lost,
        Some(r) if r.get::<_, bool>(0) => Beat::CancelRequested,
        Some(_) => Beat::Held,
    })
}

/// Inside the apply transaction, as its last statement: mark the task completed, but
/// only if this worker still holds it (same attempt, lease not expired, no cancel
/// request). Otherwise the caller rolls the whole apply back. The row lock this takes
/// keeps the rescuer away until the transaction ends; the rescuer then sees
/// `completed` and leaves the task alone.
pub(crate) async fn complete(
    tx: &impl GenericClient,
    stmt: &Statement,
    task: &Claimed,
    worker: &str,
    rows: i64,
    note: Option<&str>,
) -> Result<(), UploadError> {
    let done = tx
        .execute(stmt, &[&task.id, &worker, &task.attempt, &rows, &note])
        .await
        .map_err(UploadError::db("completing the task"))?;
    if done == 1 {
        return Ok(());
    }
    let cancel = tx
        .query_opt(
            "SELECT 1 FROM pgmaint.upload_tasks WHERE id = $1 AND worker = $2 AND attempts = $3
                AND state = 'running' AND cancel_requested",
            &[&task.id, &worker, &task.attempt],
        )
        .await
        .map_err(UploadError::db("completing the task"))?;
    Err(if cancel.is_some() {
        UploadError::Cancelled(task.id)
    } else {
        UploadError::Fenced(task.id)
    })
}

/// Seconds to wait before attempt `attempt + 1`: exponential, capped at 5 minutes,
/// with ±50 % jitter so that failed tasks do not come back in lockstep.
pub(crate) fn backoff_secs(attempt: i32) -> f64 {
    let base = 2f64.powi((attempt - 1).clamp(0, 12)).min(300.0);
    base * (0.5 + rand::random::<f64>())
}

/// After a failed apply: back to waiting with exponential backoff and jitter, or
/// failed for good when the error is permanent or the attempts are used up (and then
/// the tasks that depend on it are dropped). Returns the new state, or `None` if the
/// task was no longer ours.
pub(crate) async fn fail(
    client: &Client,
    task: &Claimed,
    worker: &str,
    error: &UploadError,
) -> Result<Option<UploadState>, UploadError> {
    let permanent = error.is_permanent() || task.attempt >= task.max_attempts;
    let state = if permanent {
        UploadState::Failed
    } else {
        UploadState::Waiting
    };
    let n = client
        .execute(
            "UPDATE pgmaint.upload_tasks
                SET state = $4, last_error = $5, worker = NULL, lease_expires_at = NULL,
                    not_before = now() + $6 * interval '1 second',
                    finished_at = CASE WHEN $4 = 'failed' THEN now() END
              WHERE id = $1 AND worker = $2 AND attempts = $3 AND state = 'running'",
            &[
                &task.id,
                &worker,
                &task.attempt,
                &state,
                &error.to_string(),
                &backoff_secs(task.attempt),
            ],
        )
        .await
        .map_err(UploadError::db("recording the failure"))?;
    if n == 0 {
        return Ok(None);
    }
    if permanent {
        drop_dependents(client, &[task.id]).await?;
    }
    Ok(Some(state))
}

/// Give a task back without counting the attempt (graceful shutdown).
pub(crate) async fn release(
    client: &Client,
    task: &Claimed,
    worker: &str,
) -> Result<bool, UploadError> {
    let n = client
        .execute(
            "UPDATE pgmaint.upload_tasks
                SET state = 'waiting', attempts = attempts - 1, worker = NULL, lease_expires_at = NULL,
                    not_before = now(), last_error = 'released by a worker shutting down'
              WHERE id = $1 AND worker = $2 AND attempts = $3 AND state = 'running'",
            &[&task.id, &worker, &task.attempt],
        )
        .await
        .map_err(UploadError::db("releasing the task"))?;
    if n == 1 {
        notify(client).await?;
    }
    Ok(n == 1)
}

/// The worker stopped a task an operator cancelled: record it.
pub(crate) async fn mark_cancelled(
    client: &Client,
    task: &Claimed,
    worker: &str,
) -> Result<(), UploadError> {
    let n = client
        .execute(
            "UPDATE pgmaint.upload_tasks
                SET state = 'cancelled', worker = NULL, lease_expires_at = NULL, finished_at = now(),
                    last_error = 'cancelled by an operator while running'
              WHERE id = $1 AND worker = $2 AND attempts = $3 AND state = 'running'",
            &[&task.id, &worker, &task.attempt],
        )
        .await
        .map_err(UploadError::db("recording the cancellation"))?;
    if n == 1 {
        drop_dependents(client, &[task.id]).await?;
    }
    Ok(())
}

/// Drop every waiting task that depends, directly or through others, on one of `ids`
/// (which ended failed, cancelled or dropped): it can never run.
pub(crate) async fn drop_dependents(
    client: &impl GenericClient,
    ids: &[i64],
) -> Result<u64, UploadError> {
    if ids.is_empty() {
        return Ok(0);
    }
    client
        .execute(
            "WITH RECURSIVE doomed(id, because) AS (
                 SELECT w.id, d FROM unnest($1::bigint[]) d
                   JOIN pgmaint.upload_tasks w ON w.depends_on @> ARRAY[d] AND w.state = 'waiting'
                 UNION
                 SELECT w.id, doomed.id FROM doomed
                   JOIN pgmaint.upload_tasks w ON w.depends_on @> ARRAY[doomed.id] AND w.state = 'waiting')
             UPDATE pgmaint.upload_tasks t
                SET state = 'dropped', finished_at = now(),
                    last_error = format('prerequisite task %s will never complete', doomed.because)
               FROM doomed WHERE t.id = doomed.id AND t.state = 'waiting'",
            &[&ids],
        )
        .await
        .map_err(UploadError::db("dropping the tasks that depend on a failed one"))
}

/// What a rescue did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Rescued {
    pub requeued: u64,
    pub failed: u64,
}

/// Return running tasks whose lease expired (their worker died or lost the primary)
/// to waiting, due at once (the attempt counts, so a task that kills its workers
/// still ends up failed); or fail them when their attempts are used up. A task whose
/// row is locked is being completed right now: SKIP LOCKED leaves it to its worker.
pub(crate) async fn rescue(client: &Client) -> Result<Rescued, UploadError> {
    let rows = client
        .query(
            "UPDATE pgmaint.upload_tasks t
                SET state = CASE WHEN t.attempts >= t.max_attempts THEN 'failed' ELSE 'waiting' END,
                    finished_at = CASE WHEN t.attempts >= t.max_attempts THEN now() END,
                    last_error = format('lease expired at %s (worker %s gone?)', t.lease_expires_at, t.worker),
                    not_before = now(),
                    worker = NULL, lease_expires_at = NULL
              WHERE t.id IN (SELECT id FROM pgmaint.upload_tasks
                              WHERE state = 'running' AND lease_expires_at < now()
                              FOR UPDATE SKIP LOCKED)
             RETURNING t.id, t.state",
            &[],
        )
        .await
        .map_err(UploadError::db("rescuing tasks with expired leases"))?;
    let failed: Vec<i64> = rows
        .iter()
        .filter(|r| r.get::<_, UploadState>(1) == UploadState::Failed)
        .map(|r| r.get(0))
        .collect();
    drop_dependents(client, &failed).await?;
    for r in &rows {
        tracing::warn!(
            upload_task_id = r.get::<_, i64>(0),
            now = %r.get::<_, UploadState>(1).as_str(),
            "rescued a task whose lease expired"
        );
    }
    if !rows.is_empty() {
        notify(client).await?;
    }
    Ok(Rescued {
        requeued: (rows.len() - failed.len()) as u64,
        failed: failed.len() as u64,
    })
}

async fn notify(client: &impl GenericClient) -> Result<(), UploadError> {
    client
        .execute("SELECT pg_notify($1, 'wake')", &[&CHANNEL])
        .await
        .map_err(UploadError::db("notifying uploaders"))?;
    Ok(())
}

/// One row of `pgmaint.upload_tasks`, as an operator sees it.
#[derive(Debug, Clone, Serialize)]
pub struct TaskRow {
    /// Task id.
    pub id: i64,
    /// The run whose results it applies.
    pub run_id: i64,
    /// The scan task that produced the file.
    pub task_name: String,
    /// `findings`, `swap` or `merge`.
    pub apply_kind: String,
    /// Target table, for swap and merge.
    pub target: Option<String>,
    /// Its state (serialized as its text: `waiting`, `running`, …).
    pub state: UploadState,
    /// Attempts made.
    pub attempts: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// Not claimed before this time.
    pub not_before: DateTime<Utc>,
    /// Tasks that must complete first.
    pub depends_on: Vec<i64>,
    /// Worker running it.
    pub worker: Option<String>,
    /// When the running worker's lease ends.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Last heartbeat of the running worker.
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// An operator asked to cancel it while it ran.
    pub cancel_requested: bool,
    /// Rows applied, once completed.
    pub rows_applied: Option<i64>,
    /// Error of the last attempt.
    pub last_error: Option<String>,
    /// Data file, relative to `results.dir`.
    pub file: String,
    /// Manifest, relative to `results.dir`.
    pub manifest: String,
    /// Kind-specific parameters.
    pub params: serde_json::Value,
    /// Queued at.
    pub created_at: DateTime<Utc>,
    /// Last claimed at.
    pub started_at: Option<DateTime<Utc>>,
    /// Ended at.
    pub finished_at: Option<DateTime<Utc>>,
    /// The host whose `results.dir` holds the files; `None` (null): shared storage,
    /// any worker may claim it.
    pub host: Option<String>,
}

const TASK_COLUMNS: &str = "id, run_id, task_name, apply_kind, target, state, attempts, max_attempts, not_before,
     depends_on, worker, lease_expires_at, heartbeat_at, cancel_requested, rows_applied, last_error, file,
     manifest, params, created_at, started_at, finished_at, host";

impl TaskRow {
    fn from_row(r: &Row) -> Self {
        TaskRow {
            id: r.get(0),
            run_id: r.get(1),
            task_name: r.get(2),
            apply_kind: r.get(3),
            target: r.get(4),
            state: r.get(5),
            attempts: r.get(6),
            max_attempts: r.get(7),
            not_before: r.get(8),
            depends_on: r.get(9),
            worker: r.get(10),
            lease_expires_at: r.get(11),
            heartbeat_at: r.get(12),
            cancel_requested: r.get(13),
            rows_applied: r.get(14),
            last_error: r.get(15),
            file: r.get(16),
            manifest: r.get(17),
            params: r.get(18),
            created_at: r.get(19),
            started_at: r.get(20),
            finished_at: r.get(21),
            host: r.get(22),
        }
    }
}

/// Tasks, newest first, optionally only in `state` and/or of `run`; at most `limit`.
pub async fn list_tasks(
    client: &Client,
    state: Option<UploadState>,
    run: Option<i64>,
    limit: i64,
) -> Result<Vec<TaskRow>, UploadError> {
    let rows = client
        .query(
            &format!(
                "SELECT {TASK_COLUMNS} FROM pgmaint.upload_tasks
                  WHERE ($1::text IS NULL OR state = $1) AND ($2::bigint IS NULL OR run_id = $2)
                  ORDER BY id DESC LIMIT $3"
            ),
            &[&state, &run, &limit],
        )
        .await
        .map_err(UploadError::db("listing upload tasks"))?;
    Ok(rows.iter().map(TaskRow::from_row).collect())
}

/// One task.
pub async fn get_task(client: &impl GenericClient, id: i64) -> Result<TaskRow, UploadError> {
    client
        .query_opt(
            &format!("SELECT {TASK_COLUMNS} FROM pgmaint.upload_tasks WHERE id = $1"),
            &[&id],
        )
        .await
        .map_err(UploadError::db("reading the upload task"))?
        .map(|r| TaskRow::from_row(&r))
        .ok_or_else(|| UploadError::Refused(format!("upload task {id} does not exist")))
}

/// What `cancel_task` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcome {
    /// It was waiting: cancelled now (and its dependents dropped).
    Cancelled,
    /// It is running: its worker stops it at its next heartbeat (or at completion),
    /// rolls the apply back and marks it cancelled.
    Requested,
}

/// Cancel a task. Cooperative for a running task: see [`CancelOutcome::Requested`].
pub async fn cancel_task(client: &Client, id: i64) -> Result<CancelOutcome, UploadError> {
    let row = client
        .query_opt(
            "WITH old AS (SELECT id, state FROM pgmaint.upload_tasks WHERE id = $1 FOR UPDATE)
             UPDATE pgmaint.upload_tasks t
                SET state = CASE WHEN old.state = 'waiting' THEN 'cancelled' ELSE t.state END,
                    finished_at = CASE WHEN old.state = 'waiting' THEN now() ELSE t.finished_at END,
                    last_error = CASE WHEN old.state = 'waiting' THEN 'cancelled by an operator' ELSE t.last_error END,
                    cancel_requested = true
               FROM old WHERE t.id = old.id AND old.state IN ('waiting', 'running')
             RETURNING old.state",
            &[&id],
        )
        .await
        .map_err(UploadError::db("cancelling the upload task"))?;
    match row {
        Some(r) if r.get::<_, UploadState>(0) == UploadState::Waiting => {
            drop_dependents(client, &[id]).await?;
            Ok(CancelOutcome::Cancelled)
        }
        Some(_) => Ok(CancelOutcome::Requested),
        None => {
            let t = get_task(client, id).await?;
            Err(UploadError::Refused(format!(
                "upload task {id} is {}; only a waiting or running task can be cancelled",
                t.state
            )))
        }
    }
}

/// Put a failed, cancelled or dropped task back to waiting with its attempts reset,
/// and with it the tasks that were dropped because of it. Returns the ids re-queued.
///
/// With `on_host`, they wait for that host from then on (its `results.dir` must hold
/// a copy of the run's files; [`ResultsHost::Shared`]: any worker). A task that is
/// still waiting may be moved too (its host is gone), with the waiting tasks of the
/// same host that depend on it; nothing else about it changes.
///
/// A task whose prerequisite is itself failed, cancelled or dropped would wait
/// forever: that retry is refused ([`UploadError::Blocked`]), naming the task to retry
/// instead (the failed or cancelled one at the head of the chain), and nothing
/// changes. So is a move that leaves a prerequisite waiting for another host. A
/// dropped dependent that has such a prerequisite of its own, outside what is
/// re-queued, stays dropped.
pub async fn retry_task(
    client: &mut Client,
    id: i64,
    on_host: Option<&ResultsHost>,
) -> Result<Vec<i64>, UploadError> {
    let tx = client
        .transaction()
        .await
        .map_err(UploadError::db(RETRYING))?;
    let task = tx
        .query_opt(
            "SELECT state, depends_on, run_id, task_name, host FROM pgmaint.upload_tasks WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await
        .map_err(UploadError::db(RETRYING))?
        .ok_or_else(|| UploadError::Refused(format!("upload task {id} does not exist")))?;
    let state: UploadState = task.get(0);
    if let Some(host) = on_host {
        refuse_if_prerequisite_elsewhere(&tx, id, &task, host).await?;
    }
    let mut ids = match (state, on_host) {
        (s, _) if s.is_dead_end() => requeue(&tx, id, &task, on_host).await?,
        (UploadState::Waiting, Some(host)) => move_waiting(&tx, id, &task, host).await?,
        (s, Some(_)) => {
            return Err(UploadError::Refused(format!(
                "upload task {id} is {s}; only a failed, cancelled, dropped or waiting task can be \
                 retried on another host"
            )))
        }
        (s, None) => {
            return Err(UploadError::Refused(format!(
                "upload task {id} is {s}; only a failed, cancelled or dropped task can be retried \
                 (or, with --on-host, a waiting one moved)"
            )))
        }
    };
    notify(&tx).await?;
    tx.commit().await.map_err(UploadError::db(RETRYING))?;
    ids.sort_unstable();
    Ok(ids)
}

/// Re-queue dead-end task `id` (`task`: its row) and what was dropped because of it;
/// on `on_host` if given, else on the host each had.
async fn requeue(
    tx: &Transaction<'_>,
    id: i64,
    task: &Row,
    on_host: Option<&ResultsHost>,
) -> Result<Vec<i64>, UploadError> {
    refuse_if_blocked(tx, id, task).await?;
    let closure = dropped_because_of(tx, id).await?;
    let dead = dead_prerequisites(tx, &closure).await?;
    let requeue = runnable_again(&closure, &dead);
    let rows = tx
        .query(
            "UPDATE pgmaint.upload_tasks
                SET state = 'waiting', attempts = 0, not_before = now(), cancel_requested = false,
                    worker = NULL, lease_expires_at = NULL, finished_at = NULL,
                    host = CASE WHEN $3 THEN $4::text ELSE host END
              WHERE id = ANY ($1) AND state = ANY ($2)
             RETURNING id",
            &[
                &requeue,
                &UploadState::DEAD_END.as_slice(),
                &on_host.is_some(),
                &on_host.and_then(|h| h.column()),
            ],
        )
        .await
        .map_err(UploadError::db(RETRYING))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Move waiting task `id` (`task`: its row), and the waiting tasks of the same host
/// that depend on it (transitively: the rest of its run), to wait for `host`.
async fn move_waiting(
    tx: &Transaction<'_>,
    id: i64,
    task: &Row,
    host: &ResultsHost,
) -> Result<Vec<i64>, UploadError> {
    let old: Option<String> = task.get(4);
    let rows = tx
        .query(
            "WITH RECURSIVE moving(id) AS (
                 SELECT $1::bigint
                 UNION
                 SELECT w.id FROM moving JOIN pgmaint.upload_tasks w
                     ON w.depends_on @> ARRAY[moving.id] AND w.state = 'waiting'
                    AND w.host IS NOT DISTINCT FROM $2::text)
             UPDATE pgmaint.upload_tasks t SET host = $3::text
               FROM moving WHERE t.id = moving.id AND t.state = 'waiting'
             RETURNING t.id",
            &[&id, &old, &host.column()],
        )
        .await
        .map_err(UploadError::db(RETRYING))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Refuse to put task `id` (`task`: its row) on `host` while one of its prerequisites
/// waits for another host: the two would be applied apart (or never, if that host is
/// gone). The task to move instead is named.
async fn refuse_if_prerequisite_elsewhere(
    tx: &Transaction<'_>,
    id: i64,
    task: &Row,
    host: &ResultsHost,
) -> Result<(), UploadError> {
    let depends_on: Vec<i64> = task.get(1);
    let elsewhere = tx
        .query_opt(
            "SELECT id, host FROM pgmaint.upload_tasks
              WHERE id = ANY ($1) AND state = 'waiting' AND host IS NOT NULL
                AND host IS DISTINCT FROM $2::text
              ORDER BY id LIMIT 1",
            &[&depends_on, &host.column()],
        )
        .await
        .map_err(UploadError::db(RETRYING))?;
    let Some(p) = elsewhere else {
        return Ok(());
    };
    let (pid, phost): (i64, String) = (p.get(0), p.get(1));
    let (run, name): (i64, String) = (task.get(2), task.get(3));
    Err(UploadError::Blocked(format!(
        "upload task {id} (run {run}, task {name}) cannot be put on {host} alone: its prerequisite \
         upload task {pid} waits for host {phost}; move task {pid} first (that moves the tasks \
         waiting on it too)"
    )))
}

/// Waiting tasks that this worker's `host` cannot claim, per host that can: what a
/// drain leaves behind. Empty for [`ResultsHost::Shared`].
pub async fn waiting_for_other_hosts(
    client: &impl GenericClient,
    host: &ResultsHost,
) -> Result<Vec<(String, i64)>, UploadError> {
    let Some(mine) = host.column() else {
        return Ok(Vec::new());
    };
    let rows = client
        .query(
            "SELECT host, count(*) FROM pgmaint.upload_tasks
              WHERE state = 'waiting' AND host IS NOT NULL AND host <> $1::text
              GROUP BY host ORDER BY host",
            &[&mine],
        )
        .await
        .map_err(UploadError::db(
            "counting the tasks waiting for other hosts",
        ))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// What [`retry_task`] and its steps are doing, for their errors.
const RETRYING: &str = "retrying the upload task";

/// Refuse to retry task `id` (`task`: its state, prerequisites, run and name) while
/// one of its prerequisites is failed, cancelled or dropped, naming the task to retry
/// instead.
async fn refuse_if_blocked(tx: &Transaction<'_>, id: i64, task: &Row) -> Result<(), UploadError> {
    let depends_on: Vec<i64> = task.get(1);
    // FOR SHARE: a prerequisite cannot fail (and drop its dependents, which only
    // touches waiting ones) between this check and the commit.
    let blocked = tx
        .query(
            "SELECT id, run_id, task_name, state FROM pgmaint.upload_tasks
              WHERE id = ANY ($1) ORDER BY id FOR SHARE",
            &[&depends_on],
        )
        .await
        .map_err(UploadError::db(RETRYING))?
        .into_iter()
        .find(|r| r.get::<_, UploadState>(3).is_dead_end());
    let Some(p) = blocked else {
        return Ok(());
    };
    let (pid, prun, pname, pstate): (i64, i64, String, UploadState) =
        (p.get(0), p.get(1), p.get(2), p.get(3));
    // Up the chain through dropped tasks to the one that failed (or was cancelled).
    let head = tx
        .query_opt(
            "WITH RECURSIVE up(id) AS (
                 SELECT $1::bigint
                 UNION
                 SELECT d FROM up JOIN pgmaint.upload_tasks t ON t.id = up.id AND t.state = 'dropped',
                        unnest(t.depends_on) d)
             SELECT t.id, t.run_id, t.task_name, t.state FROM up JOIN pgmaint.upload_tasks t ON t.id = up.id
              WHERE t.state IN ('failed', 'cancelled') ORDER BY t.id LIMIT 1",
            &[&pid],
        )
        .await
        .map_err(UploadError::db(RETRYING))?;
    let (run, name): (i64, String) = (task.get(2), task.get(3));
    let prefix = format!(
        "upload task {id} (run {run}, task {name}) cannot be retried: its prerequisite upload task {pid} \
         (run {prun}, task {pname}) is {pstate}"
    );
    Err(UploadError::Blocked(match head {
        Some(h) if h.get::<_, i64>(0) != pid => {
            let (hid, hrun, hname, hstate): (i64, i64, String, UploadState) =
                (h.get(0), h.get(1), h.get(2), h.get(3));
            format!(
                "{prefix} because upload task {hid} (run {hrun}, task {hname}) is {hstate}; \
                 retry task {hid} first (that re-queues the tasks dropped because of it)"
            )
        }
        _ => format!(
            "{prefix}; retry task {pid} first (that re-queues the tasks dropped because of it)"
        ),
    }))
}

/// Task `id` and, transitively, the tasks dropped because of it, each with its
/// prerequisites; locked.
async fn dropped_because_of(
    tx: &Transaction<'_>,
    id: i64,
) -> Result<Vec<(i64, Vec<i64>)>, UploadError> {
    Ok(tx
        .query(
            "WITH RECURSIVE again(id) AS (
                 SELECT $1::bigint
                 UNION
                 SELECT w.id FROM again JOIN pgmaint.upload_tasks w
                     ON w.depends_on @> ARRAY[again.id] AND w.state = 'dropped')
             SELECT t.id, t.depends_on FROM pgmaint.upload_tasks t JOIN again USING (id)
              ORDER BY t.id FOR UPDATE OF t",
            &[&id],
        )
        .await
        .map_err(UploadError::db(RETRYING))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// The prerequisites of `closure`'s tasks, outside it, that can never complete.
async fn dead_prerequisites(
    tx: &Transaction<'_>,
    closure: &[(i64, Vec<i64>)],
) -> Result<HashSet<i64>, UploadError> {
    let inside: HashSet<i64> = closure.iter().map(|(i, _)| *i).collect();
    let outside: Vec<i64> = closure
        .iter()
        .flat_map(|(_, deps)| deps.iter().copied())
        .filter(|d| !inside.contains(d))
        .collect();
    Ok(tx
        .query(
            "SELECT id FROM pgmaint.upload_tasks WHERE id = ANY ($1) AND state = ANY ($2) FOR SHARE",
            &[&outside, &UploadState::DEAD_END.as_slice()],
        )
        .await
        .map_err(UploadError::db(RETRYING))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Of `closure` (tasks with their prerequisites), the ones that can run once re-queued:
/// drop from the set, until nothing changes, every task with a prerequisite that is
/// neither re-queued nor able to complete (`dead`).
fn runnable_again(closure: &[(i64, Vec<i64>)], dead: &HashSet<i64>) -> Vec<i64> {
    let inside: HashSet<i64> = closure.iter().map(|(i, _)| *i).collect();
    let mut requeue = inside.clone();
    loop {
        let stuck: Vec<i64> = closure
            .iter()
            .filter(|(i, deps)| {
                requeue.contains(i)
                    && deps
                        .iter()
                        .any(|d| dead.contains(d) || (inside.contains(d) && !requeue.contains(d)))
            })
            .map(|(i, _)| *i)
            .collect();
        if stuck.is_empty() {
            break;
        }
        for i in stuck {
            requeue.remove(&i);
        }
    }
    requeue.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for attempt in 1..=20 {
            let base = 2f64.powi((attempt - 1).min(12)).min(300.0);
            for _ in 0..50 {
                let b = backoff_secs(attempt);
                assert!(b >= base * 0.5 && b <= base * 1.5, "attempt {attempt}: {b}");
            }
        }
        assert!(backoff_secs(100) <= 450.0);
    }

    #[test]
    fn a_retry_requeues_only_what_can_run() {
        // 1 is retried; 2 and 3 were dropped because of it; 3 also waits on 9, which
        // is dead outside the set, and 4 waits on 3.
        let closure = vec![(1, vec![]), (2, vec![1]), (3, vec![2, 9]), (4, vec![3])];
        let mut ids = runnable_again(&closure, &HashSet::from([9]));
        ids.sort_unstable();
        assert_eq!(ids, [1, 2]);
        let mut ids = runnable_again(&closure, &HashSet::new());
        ids.sort_unstable();
        assert_eq!(ids, [1, 2, 3, 4]);
    }
}
