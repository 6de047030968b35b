//! Scan sessions on the frozen replica: read-only, with `lock_timeout`, named after
//! the run so the coordinator can see that every one is gone before it resumes replay.

use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::{Client, IsolationLevel, Transaction};
use tokio_util::sync::CancellationToken;

use crate::progress::ProgressMode;
use crate::results::ResultsMode;
use crate::ScanError;

/// What every task of one run shares: where to connect, where to write, when to stop.
#[derive(Clone)]
pub struct ScanContext {
    /// The replica (paused while tasks run).
    pub replica: crate::connection::Config,
    /// `results.dir/<run-id>`: data files go here.
    pub run_dir: PathBuf,
    /// The run id, used to name scan sessions.
    pub run_id: i64,
    /// `lock_timeout` of every scan session. A relation locked AccessExclusive by the
    /// replayed WAL at the pause point would otherwise block a scan forever.
    pub lock_timeout: Duration,
    /// Rows fetched per round trip; the soft time-out and cancellation are checked
    /// between batches.
    pub batch_rows: i32,
    /// Cancelled on signals, limits and lost leases: tasks stop at once.
    pub cancel: CancellationToken,
    /// Bars on a terminal, periodic log lines otherwise.
    pub progress: ProgressMode,
    /// The mode of the data files (`results.mode`).
    pub results_mode: ResultsMode,
}

impl ScanContext {
    /// A context with defaults: 5 s lock time-out, 2000-row batches.
    pub fn new(replica: crate::connection::Config, run_dir: PathBuf, run_id: i64) -> Self {
        ScanContext {
            replica,
            run_dir,
            run_id,
            lock_timeout: Duration::from_secs(5),
            batch_rows: 2000,
            cancel: CancellationToken::new(),
            progress: ProgressMode::detect(Duration::from_secs(10)),
            results_mode: ResultsMode::PRIVATE,
        }
    }

    /// `application_name` of this run's scan sessions. The coordinator looks for it in
    /// `pg_stat_activity` to make sure every session is gone before it resumes replay.
    pub fn application_name(&self) -> String {
        scan_application_name(self.run_id)
    }

    /// A read-only scan session with `lock_timeout` set, and `row_security` off (as
    /// pg_dump does): a table whose row-level security would hide rows from this role
    /// is an error, never a scan that silently reads part of it.
    pub async fn connect(&self) -> Result<Client, ScanError> {
        let mut config = self.replica.clone();
        config.application_name(self.application_name());
        let client = crate::connection::connect(&config)
            .await
            .map_err(ScanError::db("connecting to the replica"))?;
        let setup = format!(
            "SET default_transaction_read_only = on; SET lock_timeout = {}; SET statement_timeout = 0; \
             SET row_security = off",
            self.lock_timeout.as_millis().max(1)
        );
        client
            .batch_execute(&setup)
            .await
            .map_err(ScanError::db("setting up a scan session"))?;
        Ok(client)
    }

    /// A scan session ([`ScanContext::connect`]) and the token that cancels the
    /// statement it runs.
    pub(crate) async fn session(
        &self,
    ) -> Result<(Client, crate::connection::CancelToken), ScanError> {
        let client = self.connect().await?;
        let cancel_token = self.replica.cancel_token(&client);
        Ok((client, cancel_token))
    }
}

/// `application_name` used by the scan sessions of run `run_id`.
pub fn scan_application_name(run_id: i64) -> String {
    format!("pgmaint-scan-{run_id}")
}

/// `work`, unless `stop` is cancelled first: then the statement running on the session
/// of `cancel_token` is cancelled on the server too, and the scan ends
/// [`ScanError::Cancelled`].
pub(crate) async fn or_cancelled<T>(
    work: impl std::future::Future<Output = T>,
    stop: &CancellationToken,
    cancel_token: &crate::connection::CancelToken,
) -> Result<T, ScanError> {
    tokio::select! {
        done = work => Ok(done),
        _ = stop.cancelled() => {
            crate::connection::cancel_query(cancel_token).await;
            Err(ScanError::Cancelled)
        }
    }
}

/// A read-only REPEATABLE READ transaction: every scan reads through one. On a paused
/// replica every statement sees the same state anyway; this keeps a multi-statement scan
/// consistent should it ever run unpaused.
pub(crate) async fn snapshot_transaction(
    client: &mut Client,
) -> Result<Transaction<'_>, tokio_postgres::Error> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
}
