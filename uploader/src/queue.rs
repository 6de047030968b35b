//! The task table `pgmaint.upload_tasks`: enqueue, claim, finish.

use std::time::Duration;

use tokio_postgres::{Client, GenericClient, Transaction};

use crate::UploadError;

/// How an upload is applied on the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyKind {
    /// Insert findings into `pgmaint.integrity_findings`.
    Findings,
}

impl ApplyKind {
    /// The name stored in the queue.
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyKind::Findings => "findings",
        }
    }
    /// The kind called `s`, if this uploader knows it.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "findings" => Some(ApplyKind::Findings),
            _ => None,
        }
    }
}

/// One upload to queue.
#[derive(Debug, Clone)]
pub struct UploadRequest {
    /// The scan task that produced the file; unique within a run.
    pub task_name: String,
    /// How to apply it.
    pub kind: ApplyKind,
    /// Data file, relative to `results.dir`.
    pub file: String,
    /// The run's manifest, relative to `results.dir`.
    pub manifest: String,
    /// Kind-specific parameters.
    pub params: serde_json::Value,
}

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
        let row = tx
            .query_one(
                "WITH ins AS (
                     INSERT INTO pgmaint.upload_tasks
                            (run_id, task_name, apply_kind, file, manifest, params, depends_on, max_attempts)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (run_id, task_name) DO NOTHING RETURNING id)
                 SELECT id FROM ins
                 UNION ALL SELECT id FROM pgmaint.upload_tasks WHERE run_id = $1 AND task_name = $2
                 LIMIT 1",
                &[&run_id, &u.task_name, &u.kind.as_str(), &u.file, &u.manifest, &u.params, &depends_on, &max_attempts],
            )
            .await
            .map_err(UploadError::db(format!("queueing upload of task {}", u.task_name)))?;
        ids.push(row.get(0));
    }
    tx.execute("SELECT pg_notify('pgmaint_upload', $1)", &[&run_id.to_string()])
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
    /// The fencing token: the attempt number this claim made.
    pub attempt: i32,
    pub max_attempts: i32,
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Claim the next runnable task: waiting, due, prerequisites completed.
pub(crate) async fn claim(client: &Client, worker: &str, lease: Duration) -> Result<Option<Claimed>, UploadError> {
    let row = client
        .query_opt(
            "UPDATE pgmaint.upload_tasks t
                SET state = 'running', attempts = t.attempts + 1, worker = $1,
                    started_at = now(), lease_expires_at = now() + $2 * interval '1 millisecond'
              WHERE t.id = (
                    SELECT w.id FROM pgmaint.upload_tasks w
                     WHERE w.state = 'waiting' AND w.not_before <= now()
                       AND NOT EXISTS (SELECT 1 FROM pgmaint.upload_tasks d
                                        WHERE d.id = ANY (w.depends_on) AND d.state <> 'completed')
                     ORDER BY w.not_before, w.id
                     FOR UPDATE SKIP LOCKED LIMIT 1)
             RETURNING t.id, t.run_id, t.task_name, t.apply_kind, t.file, t.manifest, t.attempts, t.max_attempts",
            &[&worker, &millis(lease)],
        )
        .await
        .map_err(UploadError::db("claiming an upload task"))?;
    Ok(row.map(|r| Claimed {
        id: r.get(0),
        run_id: r.get(1),
        task_name: r.get(2),
        kind: r.get(3),
        file: r.get(4),
        manifest: r.get(5),
        attempt: r.get(6),
        max_attempts: r.get(7),
    }))
}

/// Inside the apply transaction: lock the task row and check that this worker still
/// holds it (same attempt, lease not expired). The row lock keeps the rescuer away until
/// the transaction ends, so a task is applied and completed at most once.
pub(crate) async fn fence(tx: &impl GenericClient, task: &Claimed, worker: &str) -> Result<(), UploadError> {
    let ok = tx
        .query_opt(
            "SELECT 1 FROM pgmaint.upload_tasks
              WHERE id = $1 AND state = 'running' AND worker = $2 AND attempts = $3
                AND lease_expires_at > clock_timestamp()
              FOR UPDATE",
            &[&task.id, &worker, &task.attempt],
        )
        .await
        .map_err(UploadError::db("checking the task lease"))?;
    ok.map(|_| ()).ok_or(UploadError::Fenced(task.id))
}

/// Inside the apply transaction: mark the task completed.
pub(crate) async fn complete(tx: &impl GenericClient, task: &Claimed, rows: i64) -> Result<(), UploadError> {
    tx.execute(
        "UPDATE pgmaint.upload_tasks SET state = 'completed', finished_at = now(), rows_applied = $2,
                lease_expires_at = NULL, last_error = NULL WHERE id = $1",
        &[&task.id, &rows],
    )
    .await
    .map_err(UploadError::db("completing the task"))?;
    Ok(())
}

/// After a failed apply: back to waiting with exponential backoff and jitter, or
/// failed for good when the error is permanent or the attempts are used up.
pub(crate) async fn fail(client: &Client, task: &Claimed, worker: &str, error: &UploadError) -> Result<&'static str, UploadError> {
    let permanent = error.is_permanent() || task.attempt >= task.max_attempts;
    let backoff = 2f64.powi(task.attempt.min(10)) * (0.5 + rand::random::<f64>());
    let state = if permanent { "failed" } else { "waiting" };
    client
        .execute(
            "UPDATE pgmaint.upload_tasks
                SET state = $4, last_error = $5, worker = NULL, lease_expires_at = NULL,
                    not_before = now() + $6 * interval '1 second',
                    finished_at = CASE WHEN $4 = 'failed' THEN now() END
              WHERE id = $1 AND worker = $2 AND attempts = $3 AND state = 'running'",
            &[&task.id, &worker, &task.attempt, &state, &error.to_string(), &backoff],
        )
        .await
        .map_err(UploadError::db("recording the failure"))?;
    Ok(state)
}
