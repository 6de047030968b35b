//! The upload worker.

use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::Client;

use crate::queue::{self, ApplyKind, Claimed};
use crate::{apply, UploadError};

/// Applies queued uploads on the primary.
pub struct Worker {
    primary: tokio_postgres::Config,
    results_dir: PathBuf,
    id: String,
    /// Lease of a claimed task.
    pub lease: Duration,
    /// `lock_timeout` of an apply transaction.
    pub lock_timeout: Duration,
}

/// What a drain did.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct DrainStats {
    /// Tasks applied.
    pub completed: u64,
    /// Tasks failed for good.
    pub failed: u64,
    /// Tasks put back to wait for a retry.
    pub retried: u64,
    /// Rows applied.
    pub rows: u64,
}

impl Worker {
    /// A worker for the primary at `primary`, reading files under `results_dir`.
    pub fn new(primary: tokio_postgres::Config, results_dir: PathBuf) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        Worker {
            primary,
            results_dir,
            id: format!("{host}:{}", std::process::id()),
            lease: Duration::from_secs(60),
            lock_timeout: Duration::from_secs(5),
        }
    }

    /// This worker's id, as recorded on the tasks it runs.
    pub fn id(&self) -> &str {
        &self.id
    }

    async fn connect(&self) -> Result<Client, UploadError> {
        let mut config = self.primary.clone();
        config.application_name("pgmaint-uploader");
        snapshot_runner::connect(&config).await.map_err(UploadError::db("connecting to the primary"))
    }

    /// Apply every task that is runnable now, then return.
    pub async fn drain(&self) -> Result<DrainStats, UploadError> {
        let mut client = self.connect().await?;
        let mut stats = DrainStats::default();
        while let Some(task) = queue::claim(&client, &self.id, self.lease).await? {
            match self.apply(&mut client, &task).await {
                Ok(rows) => {
                    stats.completed += 1;
                    stats.rows += rows as u64;
                    tracing::info!(task = task.id, run = task.run_id, name = %task.task_name, rows, "applied");
                }
                Err(e) => {
                    let state = queue::fail(&client, &task, &self.id, &e).await?;
                    tracing::error!(task = task.id, run = task.run_id, name = %task.task_name, error = %e, now = state, "upload failed");
                    if state == "failed" {
                        stats.failed += 1;
                    } else {
                        stats.retried += 1;
                    }
                }
            }
        }
        Ok(stats)
    }

    /// One task, in one transaction: fence, check, load, complete.
    async fn apply(&self, client: &mut Client, task: &Claimed) -> Result<i64, UploadError> {
        let tx = client.transaction().await?;
        tx.batch_execute(&format!("SET LOCAL lock_timeout = {}", self.lock_timeout.as_millis().max(1)))
            .await?;
        queue::fence(&tx, task, &self.id).await?;
        let rows = match ApplyKind::parse(&task.kind) {
            Some(ApplyKind::Findings) => apply::findings(&tx, task, &self.results_dir).await?,
            None => return Err(UploadError::Rejected(format!("unknown apply kind {:?}", task.kind))),
        };
        queue::complete(&tx, task, rows).await?;
        tx.commit().await.map_err(UploadError::db("committing the apply"))?;
        Ok(rows)
    }
}
