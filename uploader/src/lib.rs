//! pgmaint's upload queue on the primary, and the worker that applies results.
//!
//! The uploader is the only part of pgmaint that writes to the primary. Each upload
//! task is applied in one transaction that also marks it completed (fenced by the
//! worker's lease), so a crash never leaves a partial or a double apply. Before anything
//! is applied, the data file is checked against the run's manifest (path inside
//! `results.dir`, size, MD5) and the run must be recorded as valid.
//!
//! Apply kinds: `findings` (insert into `pgmaint.integrity_findings`, re-checking
//! row_checksum findings on the primary), `swap` (replace a table by a staged copy,
//! under a short exclusive lock) and `merge` (upsert by key). All load with COPY, and
//! check the bytes streamed against the manifest and against the MD5 and size the
//! coordinator recorded in the queue. A swap or merge locks its rows in
//! `pgmaint.materializations` and completes without applying anything (superseded)
//! when another run already materialized a snapshot at least as new: for a swap, into
//! the target; for a merge, into the target from the same task (several tasks may
//! merge their own rows into one target).
//!
//! The queue (`pgmaint.upload_tasks`): states waiting → running → completed / failed /
//! cancelled / dropped; attempts capped, retried with exponential backoff and jitter;
//! `not_before`; prerequisites (`depends_on`); one task per (run, task); leases renewed
//! by heartbeat; a rescuer for expired leases; cooperative cancellation. Each task
//! records the host whose `results.dir` holds its files, and a worker claims only what
//! it can read ([`ResultsHost`]).
//!
//! This crate knows nothing about pausing replicas.
//!
//! ```no_run
//! # async fn example() -> Result<(), uploader::UploadError> {
//! // A DSN with its TLS settings (`sslmode`; certificate files: `connection::tls`).
//! let primary: snapshot_runner::connection::Config = "host=127.0.0.1 port=55432 user=postgres dbname=app".parse()?;
//! let worker = uploader::Worker::new(primary, "/var/lib/pgmaint/results".into());
//! let stats = worker.drain().await?;
//! println!("{} applied, {} failed", stats.completed, stats.failed);
//! # Ok(()) }
//! ```
//!
//! The worker is made of parts, each a service that runs until its token is
//! cancelled: a [`Listener`] (LISTEN/NOTIFY) that wakes idle slots, a [`Rescuer`] for
//! expired leases, and [`Slot`]s that claim, apply and record. [`Worker::run`] and
//! [`Worker::drain`] compose them; a process that hosts them next to other services
//! (a scheduler) can compose them itself, under its own token:
//!
//! ```no_run
//! # async fn example(worker: uploader::Worker) -> Result<(), uploader::UploadError> {
//! use tokio_util::sync::CancellationToken;
//! use uploader::{Wake, WorkerMode};
//!
//! let shutdown = CancellationToken::new();
//! let wake = Wake::new();
//! tokio::spawn(worker.listener(&wake).run(shutdown.clone()));
//! tokio::spawn(worker.rescuer(&wake, WorkerMode::Serve).run(shutdown.clone()));
//! let slots = worker.slots(&wake, WorkerMode::Serve);
//! let stats = uploader::run_slots(slots, shutdown.clone()).await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod apply;
mod confirm;
mod error;
mod findings;
mod guard;
mod host;
mod listener;
mod merge;
mod queue;
mod reconnect;
mod rescuer;
mod slot;
mod state;
mod swap;
mod target;
mod wake;
mod worker;

pub use error::UploadError;
pub use guard::CommitGuard;
pub use host::ResultsHost;
pub use listener::Listener;
pub use queue::{
    cancel_task, enqueue, get_task, list_tasks, retry_task, waiting_for_other_hosts, CancelOutcome,
    TaskRow, UploadRequest, CHANNEL,
};
pub use rescuer::Rescuer;
pub use slot::{DrainStats, Slot, WorkerMode};
/// The database error inside [`UploadError::Db`], shared with the scans.
pub use snapshot_runner::pg_error::DbError;
/// What an [`UploadRequest`] carries: the results format's apply plan.
pub use snapshot_runner::results::{ApplyKind, ApplyPlan};
pub use state::{RunState, UnknownUploadState, UploadState};
pub use wake::Wake;
pub use worker::{run_slots, Worker};
