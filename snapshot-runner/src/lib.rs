//! Scan tasks against a frozen PostgreSQL replica, and the result files they write.
//!
//! The coordinator pauses WAL replay on a streaming replica; every scan in this crate
//! then reads the same frozen state, from as many connections as it likes, without
//! recovery conflicts. Each task writes its CSV data file under the run directory (an
//! `export` writes one per table); the coordinator collects the [`TaskReport`]s into a
//! [`ResultManifest`] stamped with the [`SnapshotInfo`].
//!
//! Kinds: `row_checksum` ([`RowChecksumSpec`]) and `file_checksum` ([`FileChecksumSpec`])
//! write findings, as does `amcheck` ([`AmcheckSpec`]); `materialize`
//! ([`MaterializeSpec`]) writes a query's result for the uploader to swap in or merge;
//! `export` ([`ExportSpec`]) writes copies that are not uploaded. Every kind streams,
//! stops cleanly at its soft deadline with partial results, and stops at once (server
//! side too) when the run is cancelled.
//!
//! A task's spec is built from config's fields by its kind ([`TaskSpec::from_fields`]),
//! which names the field at fault ([`FieldError`]).
//!
//! Besides the scans, this crate holds what the rest of pgmaint shares with them: the
//! [`results`] format (manifest, data files, findings columns, and the [`ApplyPlan`]
//! the uploader follows), [`connection`]s to PostgreSQL, SQL identifiers ([`ident`])
//! and database errors ([`pg_error`]).
//!
//! This crate knows nothing about pausing or about the upload queue.
//!
//! ```no_run
//! # async fn example() -> Result<(), snapshot_runner::ScanError> {
//! use snapshot_runner::{ScanContext, TaskSpec, RowChecksumSpec};
//! // A DSN with its TLS settings (`sslmode`; certificate files: `connection::tls`).
//! let replica: snapshot_runner::connection::Config = "host=127.0.0.1 port=55433 user=postgres dbname=app".parse()?;
//! let ctx = ScanContext::new(replica, "/var/lib/pgmaint/results/42".into(), 42);
//! let spec = TaskSpec::RowChecksum(RowChecksumSpec {
//!     table: "public.blobs".into(), key: "id".into(), content: "payload".into(),
//!     checksum: "payload_md5".into(), parallelism: 2, max_findings: 100_000,
//! });
//! let task = snapshot_runner::prepare("blob-integrity", &spec, &ctx).await?;
//! let report = task.run(&ctx, None, None).await;
//! println!("{} rows, {} findings", report.rows_scanned, report.findings);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod amcheck;
mod catalog;
pub mod connection;
mod copy;
mod error;
mod export;
mod file_checksum;
mod findings_scan;
pub mod ident;
mod materialize;
mod md5file;
pub mod pg_error;
pub mod progress;
pub mod results;
mod row_checksum;
mod session;
mod task;

pub use amcheck::AmcheckSpec;
pub use error::ScanError;
pub use export::ExportSpec;
pub use file_checksum::FileChecksumSpec;
pub use materialize::MaterializeSpec;
pub use results::{
    ApplyPlan, DataFile, ManifestTask, ResultManifest, ResultsMode, SnapshotInfo, FINDINGS_COLUMNS,
};
pub use row_checksum::RowChecksumSpec;
pub use session::{scan_application_name, ScanContext};
pub use task::{
    prepare, FieldError, FieldProblem, PreparedTask, TaskFields, TaskReport, TaskSpec, TaskStatus,
};
