//! What every findings scan (`row_checksum`, `file_checksum`, `amcheck`) runs in:
//! the findings file its workers append to, the counters and progress reporter, the
//! stop token they share; and at the end, the report: counters, file, apply plan, and
//! whether the soft deadline cut the scan short.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::progress::{Counters, ProgressReporter};
use crate::results::data_files::CsvFile;
use crate::results::{ApplyPlan, FindingsPlan, FINDINGS_COLUMNS};
use crate::task::{TaskReport, TaskStatus};
use crate::{ScanContext, ScanError};

/// A findings scan under way.
pub(crate) struct FindingsScan {
    /// The findings file (`<task>.csv`); workers and reader threads append to it.
    pub(crate) sink: Arc<Mutex<CsvFile>>,
    /// Items, bytes and findings so far.
    pub(crate) counters: Arc<Counters>,
    /// Cancelled with the run, and by a failing worker so that its siblings stop too.
    pub(crate) stop: CancellationToken,
    /// What a flood of findings most likely means, for the kind (see [`too_many`]).
    hint: &'static str,
    max_findings: u64,
    progress: ProgressReporter,
}

/// The default of `tasks[].max_findings`.
pub const DEFAULT_MAX_FINDINGS: u64 = 100_000;

/// Count one finding about to be written against `counters`' limit; past it, cancel
/// `stop` (the task's other workers stop too) and fail with [`ScanError::TooManyFindings`].
pub(crate) fn admit(
    counters: &Counters,
    stop: &CancellationToken,
    limit: u64,
    hint: &'static str,
) -> Result<(), ScanError> {
    if counters.admit_finding() {
        return Ok(());
    }
    stop.cancel();
    Err(ScanError::TooManyFindings { limit, hint })
}

/// How a findings scan ended, when it did not fail.
pub(crate) enum ScanEnd {
    /// Everything was scanned.
    Complete,
    /// The soft deadline cut it short; `note` says how far it got, for the report.
    CutShort {
        /// Kept as the report's `error` (a partial task says why it is partial).
        note: Option<String>,
    },
}

impl ScanEnd {
    /// `CutShort` without a note if `cut_short`, else `Complete`.
    pub(crate) fn cut_short_if(cut_short: bool) -> Self {
        if cut_short {
            ScanEnd::CutShort { note: None }
        } else {
            ScanEnd::Complete
        }
    }
}

impl FindingsScan {
    /// Create task `name`'s findings file and start reporting progress of `total`
    /// (an estimate is fine) `unit`s. More than `limit.0` findings fail the task with
    /// the hint `limit.1` ([`FindingsScan::admit`]).
    pub(crate) fn start(
        ctx: &ScanContext,
        name: &str,
        unit: &'static str,
        total: Option<u64>,
        limit: (u64, &'static str),
    ) -> Result<Self, ScanError> {
        let file = CsvFile::create(
            &ctx.run_dir,
            &format!("{name}.csv"),
            &FINDINGS_COLUMNS,
            ctx.results_mode,
        )?;
        let counters = Arc::new(Counters::with_max_findings(limit.0));
        let progress = ProgressReporter::start(ctx.progress, name, unit, total, counters.clone());
        Ok(FindingsScan {
            sink: Arc::new(Mutex::new(file)),
            counters,
            stop: ctx.cancel.child_token(),
            hint: limit.1,
            max_findings: limit.0,
            progress,
        })
    }

    /// Count one finding about to be written; past `max_findings`, stop every worker
    /// of the task and fail it ([`ScanError::TooManyFindings`]).
    pub(crate) fn admit(&self) -> Result<(), ScanError> {
        admit(&self.counters, &self.stop, self.max_findings, self.hint)
    }

    /// What reader threads need to call [`admit`] on their own.
    pub(crate) fn limit(&self) -> (u64, &'static str) {
        (self.max_findings, self.hint)
    }

    /// Items done so far (rows, files, relations).
    pub(crate) fn items(&self) -> u64 {
        self.counters.items.load(Ordering::Relaxed)
    }

    /// End the scan once its workers are done: the counters go into `report` whatever
    /// happened; if the scan `ended` without an error, the findings file is written out
    /// and the report says how to apply it (`plan`) and whether it is partial.
    pub(crate) async fn finish(
        self,
        report: &mut TaskReport,
        ended: Result<ScanEnd, ScanError>,
        plan: FindingsPlan,
    ) -> Result<(), ScanError> {
        self.progress.finish().await;
        report.take_counters(&self.counters);
        let ended = ended?;
        // Every worker is done, so no one else holds the file; if one still did, it
        // was left behind by a cancellation.
        let sink = Arc::try_unwrap(self.sink).map_err(|_| ScanError::Cancelled)?;
        report.file = Some(sink.into_inner().expect("sink lock").finish()?);
        report.apply = Some(ApplyPlan::Findings(plan));
        if let ScanEnd::CutShort { note } = ended {
            report.status = TaskStatus::Partial;
            report.error = note;
        }
        Ok(())
    }
}
