//! Task specs, their preparation (catalog checks, before the pause) and their reports.

use std::time::{Duration, Instant};

use crate::amcheck::{self, AmcheckSpec, PreparedAmcheck};
use crate::export::{self, ExportSpec, PreparedExport};
use crate::file_checksum::{self, FileChecksumSpec, PreparedFileChecksum};
use crate::materialize::{self, MaterializeSpec, PreparedMaterialize};
use crate::results::manifest::{DataFile, ManifestTask};
use crate::results::ApplyPlan;
use crate::row_checksum::{self, PreparedRowChecksum, RowChecksumSpec};
use crate::{ScanContext, ScanError};

/// What a task does. Each kind has its own spec.
#[derive(Debug, Clone)]
pub enum TaskSpec {
    /// md5 of a content column against a stored checksum column.
    RowChecksum(RowChecksumSpec),
    /// md5 of files under a root directory against a catalog table.
    FileChecksum(FileChecksumSpec),
    /// A query's result, swapped in for (or merged into) a table on the primary.
    Materialize(MaterializeSpec),
    /// amcheck's `bt_index_check` and `verify_heapam`.
    Amcheck(AmcheckSpec),
    /// CSV copies of tables or a query, not uploaded.
    Export(ExportSpec),
}

impl TaskSpec {
    /// The kind's name as written in config.
    pub fn kind(&self) -> &'static str {
        match self {
            TaskSpec::RowChecksum(_) => "row_checksum",
            TaskSpec::FileChecksum(_) => "file_checksum",
            TaskSpec::Materialize(_) => "materialize",
            TaskSpec::Amcheck(_) => "amcheck",
            TaskSpec::Export(_) => "export",
        }
    }

    /// How many sessions the task opens on the replica at most, all at once.
    pub fn sessions(&self) -> usize {
        match self {
            TaskSpec::RowChecksum(s) => s.parallelism,
            TaskSpec::Amcheck(s) => s.parallelism,
            _ => 1,
        }
    }
}

/// A task whose configuration has been checked against the replica's catalog.
pub struct PreparedTask {
    /// Task name from config.
    pub name: String,
    kind: &'static str,
    inner: Prepared,
}

enum Prepared {
    RowChecksum(PreparedRowChecksum),
    FileChecksum(PreparedFileChecksum),
    Materialize(PreparedMaterialize),
    Amcheck(PreparedAmcheck),
    Export(PreparedExport),
}

/// Check a task against the replica's catalog: tables and columns exist and have
/// usable types. Run this before pausing, so a typo never costs a pause.
pub async fn prepare(
    name: &str,
    spec: &TaskSpec,
    ctx: &ScanContext,
) -> Result<PreparedTask, ScanError> {
    let client = ctx.connect().await?;
    let inner = match spec {
        TaskSpec::RowChecksum(s) => row_checksum::prepare(&client, s)
            .await
            .map(Prepared::RowChecksum),
        TaskSpec::FileChecksum(s) => file_checksum::prepare(&client, s)
            .await
            .map(Prepared::FileChecksum),
        TaskSpec::Materialize(s) => materialize::prepare(&client, s)
            .await
            .map(Prepared::Materialize),
        TaskSpec::Amcheck(s) => amcheck::prepare(&client, s).await.map(Prepared::Amcheck),
        TaskSpec::Export(s) => export::prepare(&client, name, s)
            .await
            .map(Prepared::Export),
    }
    .map_err(|e| prefix_config(name, spec.kind(), e))?;
    Ok(PreparedTask {
        name: name.to_string(),
        kind: spec.kind(),
        inner,
    })
}

fn prefix_config(task: &str, kind: &str, e: ScanError) -> ScanError {
    match e {
        ScanError::Config(msg) => ScanError::Config(format!("task {task:?} ({kind}): {msg}")),
        other => other,
    }
}

impl PreparedTask {
    /// The kind's name.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The data files the task writes into the run directory.
    pub fn file_names(&self) -> Vec<String> {
        match &self.inner {
            Prepared::Export(p) => p.file_names(),
            _ => vec![format!("{}.csv", self.name)],
        }
    }

    /// The relations this task reads, as `(schema, name)`, so the coordinator can check
    /// that the replayed WAL holds no AccessExclusiveLock on them at the pause point.
    pub fn relations(&self) -> Vec<(String, String)> {
        match &self.inner {
            Prepared::RowChecksum(p) => vec![(p.table.schema.clone(), p.table.name.clone())],
            Prepared::FileChecksum(p) => vec![(p.table.schema.clone(), p.table.name.clone())],
            Prepared::Materialize(p) => p.relations(),
            Prepared::Amcheck(p) => p.relations(),
            Prepared::Export(p) => p.relations(),
        }
    }

    /// Run the task against the (paused) replica. Never fails as a whole: errors are
    /// reported in the [`TaskReport`]. `soft_deadline` stops the task cleanly after the
    /// batch in flight, with partial results. `cursor` is where the previous valid run
    /// of this task stopped (the coordinator keeps it on the primary).
    pub async fn run(
        &self,
        ctx: &ScanContext,
        soft_deadline: Option<Instant>,
        cursor: Option<&str>,
    ) -> TaskReport {
        let started = Instant::now();
        let mut report = TaskReport::new(&self.name, self.kind());
        let result = match &self.inner {
            Prepared::RowChecksum(p) => {
                report.relation = Some(p.table.to_string());
                row_checksum::run(&self.name, p, ctx, soft_deadline, &mut report).await
            }
            Prepared::FileChecksum(p) => {
                report.relation = Some(p.table.to_string());
                file_checksum::run(&self.name, p, ctx, soft_deadline, cursor, &mut report).await
            }
            Prepared::Materialize(p) => {
                materialize::run(&self.name, p, ctx, soft_deadline, &mut report).await
            }
            Prepared::Amcheck(p) => {
                amcheck::run(&self.name, p, ctx, soft_deadline, &mut report).await
            }
            Prepared::Export(p) => {
                export::run(&self.name, p, ctx, soft_deadline, &mut report).await
            }
        };
        report.elapsed = started.elapsed();
        match result {
            Ok(()) => {}
            Err(ScanError::Cancelled) => report.status = TaskStatus::Cancelled,
            Err(e) => {
                report.status = TaskStatus::Failed;
                report.error = Some(e.to_string());
            }
        }
        report
    }
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    /// Scanned everything.
    Completed,
    /// Stopped by its soft time-out; the results cover part of the data.
    Partial,
    /// Failed with an error.
    Failed,
    /// Stopped by cancellation.
    Cancelled,
}

impl TaskStatus {
    /// Lower-case name, as in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Completed => "completed",
            TaskStatus::Partial => "partial",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    /// True when the results may be uploaded.
    pub fn has_results(self) -> bool {
        matches!(self, TaskStatus::Completed | TaskStatus::Partial)
    }
}

/// What a task did.
#[derive(Debug, Clone)]
pub struct TaskReport {
    /// Task name.
    pub name: String,
    /// Task kind.
    pub kind: &'static str,
    /// How it ended.
    pub status: TaskStatus,
    /// Rows (or files) examined.
    pub rows_scanned: u64,
    /// Bytes examined.
    pub bytes_scanned: u64,
    /// Findings written.
    pub findings: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// The relation the findings are about.
    pub relation: Option<String>,
    /// The data file written (single-file tasks).
    pub file: Option<DataFile>,
    /// The data files written by a multi-file task (`export`).
    pub files: Vec<DataFile>,
    /// Error of a failed task.
    pub error: Option<String>,
    /// How the data file should be applied on the primary; `None`: not uploaded.
    pub apply: Option<ApplyPlan>,
    /// Where the next run should carry on (tasks that cover a store over several runs).
    pub cursor: Option<String>,
}

impl TaskReport {
    /// Copy a task's progress counters into the report.
    pub(crate) fn take_counters(&mut self, counters: &crate::progress::Counters) {
        use std::sync::atomic::Ordering;
        self.rows_scanned = counters.items.load(Ordering::Relaxed);
        self.bytes_scanned = counters.bytes.load(Ordering::Relaxed);
        self.findings = counters.findings.load(Ordering::Relaxed);
    }

    fn new(name: &str, kind: &'static str) -> Self {
        TaskReport {
            name: name.to_string(),
            kind,
            status: TaskStatus::Completed,
            rows_scanned: 0,
            bytes_scanned: 0,
            findings: 0,
            elapsed: Duration::ZERO,
            relation: None,
            file: None,
            files: Vec::new(),
            error: None,
            apply: None,
            cursor: None,
        }
    }

    /// The manifest entry for this report.
    pub fn to_manifest(&self) -> ManifestTask {
        ManifestTask {
            name: self.name.clone(),
            kind: self.kind.to_string(),
            status: self.status.as_str().to_string(),
            rows_scanned: self.rows_scanned,
            findings: self.findings,
            relation: self.relation.clone(),
            file: self.file.clone(),
            files: self.files.clone(),
            error: self.error.clone(),
        }
    }
}

/// Run a task's parallel workers to the end. A failing worker cancels `stop`, so its
/// siblings stop too; the results are folded by [`join_worker_results`].
pub(crate) async fn run_workers<W>(
    stop: &tokio_util::sync::CancellationToken,
    workers: W,
) -> Result<bool, ScanError>
where
    W: IntoIterator,
    W::Item: std::future::Future<Output = Result<bool, ScanError>>,
{
    let guarded = workers.into_iter().map(|w| async move {
        let r = w.await;
        if r.is_err() {
            stop.cancel();
        }
        r
    });
    join_worker_results(futures_util::future::join_all(guarded).await)
}

/// Fold the results of a task's parallel workers: `Ok(true)` if any was cut short by the
/// soft deadline. A real error wins over the `Cancelled` of the siblings it stopped.
pub(crate) fn join_worker_results(
    results: Vec<Result<bool, ScanError>>,
) -> Result<bool, ScanError> {
    let mut partial = false;
    let mut cancelled = false;
    for r in results {
        match r {
            Ok(cut) => partial |= cut,
            Err(ScanError::Cancelled) => cancelled = true,
            Err(e) => return Err(e),
        }
    }
    if cancelled {
        return Err(ScanError::Cancelled);
    }
    Ok(partial)
}
