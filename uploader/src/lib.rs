//! pgmaint's upload queue on the primary, and the worker that applies results.
//!
//! The uploader is the only part of pgmaint that writes to the primary. Each upload
//! task is applied in one short transaction that also marks it completed, so a crash
//! never leaves a partial or a double apply. Before anything is applied, the data file
//! is checked against the run's manifest (path inside `results.dir`, size, MD5) and the
//! run must be recorded as valid.
//!
//! This crate knows nothing about pausing replicas.
//!
//! ```no_run
//! # async fn example() -> Result<(), uploader::UploadError> {
//! let primary: tokio_postgres::Config = "host=127.0.0.1 port=55432 user=postgres dbname=app".parse()?;
//! let worker = uploader::Worker::new(primary, "/var/lib/pgmaint/results".into());
//! let stats = worker.drain().await?;
//! println!("{} applied, {} failed", stats.completed, stats.failed);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod apply;
mod error;
mod queue;
mod worker;

pub use error::UploadError;
pub use queue::{enqueue, ApplyKind, UploadRequest};
pub use worker::{DrainStats, Worker};
