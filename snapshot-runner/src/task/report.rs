//! What a task did: its [`TaskReport`], which the coordinator turns into the
//! manifest's entry and, if the task has results to apply, an upload.

use std::time::Duration;

use crate::results::manifest::{DataFile, ManifestTask};
use crate::results::ApplyPlan;

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

    pub(crate) fn new(name: &str, kind: &'static str) -> Self {
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
