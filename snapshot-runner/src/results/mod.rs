//! The results format: what a run leaves in `results.dir/<run-id>/` and queues on the
//! primary. It is the contract between the scans that write results and the uploader
//! that applies them, so both crates read it from here.
//!
//! - [`manifest`]: `manifest.json`, the run's snapshot and every data file's MD5 and size.
//! - [`data_files`]: the CSV data files, hashed while written.
//! - [`FINDINGS_COLUMNS`]: the header of every findings file.
//! - [`mode`]: who may read result files and their directories (`results.mode`).
//! - [`apply_plan`]: how each data file is applied on the primary, as queued there.

pub mod apply_plan;
pub mod data_files;
pub mod manifest;
pub mod mode;

pub use apply_plan::{
    AmcheckFindings, ApplyKind, ApplyPlan, FileChecksumFindings, FindingsPlan, MergePlan,
    PlanError, RowRecheck, SwapPlan, TargetTable,
};
pub use manifest::{DataFile, ManifestTask, ResultManifest, SnapshotInfo, MANIFEST_FILE};
pub use mode::ResultsMode;

/// Columns of every findings CSV: one row per problem found.
pub const FINDINGS_COLUMNS: [&str; 4] = ["relation", "row_key", "finding", "detail"];
