use std::path::PathBuf;

use snapshot_runner::pg_error::DbError;

/// Everything that can go wrong in an upload.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The task must not be applied: tampered or missing file, path outside
    /// `results.dir`, invalid run. Retrying cannot help.
    #[error("{0}")]
    Rejected(String),
    /// The target table on the primary cannot take this apply as it stands (missing,
    /// wrong columns, no unique key for a merge, a view depending on a swapped table).
    /// Retrying cannot help until an operator changes the table; then `pgmaint tasks retry`.
    #[error("{0}")]
    Target(String),
    /// The target changed while the apply ran (an index, view, foreign key, trigger or
    /// column added or altered before the apply took its exclusive lock): this attempt
    /// is rolled back and the task retried, against the table as it now is.
    #[error("{0}")]
    Changed(String),
    /// A database error (may be passing: lock time-out, lost connection). Shown with
    /// the server's message and SQLSTATE, like the scans' database errors.
    #[error(transparent)]
    Db(DbError),
    /// Reading a result file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The worker's lease on the task expired before it could complete it.
    #[error("lease on upload task {0} expired; another worker may own it now")]
    Fenced(i64),
    /// An operator cancelled the task (`pgmaint tasks cancel`) while it ran.
    #[error("upload task {0} was cancelled")]
    Cancelled(i64),
    /// A queue operation the task's state does not allow (cancel a completed task, …),
    /// or an unknown task id.
    #[error("{0}")]
    Refused(String),
    /// The commit guard says the primary in use is superseded (a failover): the apply
    /// was rolled back, and nothing is written on that server any more.
    #[error("not committed: {0}")]
    Superseded(String),
    /// A queue operation that cannot succeed while another task stays as it is: a
    /// retry whose prerequisite failed (the message names it). Nothing was changed.
    #[error("{0}")]
    Blocked(String),
}

impl UploadError {
    /// True when retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        match self {
            UploadError::Rejected(_) | UploadError::Target(_) => true,
            // Bad data (22), a constraint the file breaks (23) and a statement the target
            // cannot take (42: missing column, no privilege) fail the same way every
            // time, until an operator fixes something and runs `pgmaint tasks retry`. A
            // unique violation may come from a concurrent insert (merge): retried.
            UploadError::Db(e) => e.code().is_some_and(|c| {
                let code = c.code();
                (code.starts_with("22") || code.starts_with("23") || code.starts_with("42"))
                    && code != "23505"
            }),
            _ => false,
        }
    }

    /// True when the connection to the primary is gone.
    pub fn is_closed(&self) -> bool {
        match self {
            UploadError::Db(DbError { cause, .. }) => {
                cause.is_closed()
                    || cause.code().is_some_and(|c| {
                        // admin_shutdown, crash_shutdown, cannot_connect_now: the server
                        // is going away; the connection is as good as closed.
                        matches!(c.code(), "57P01" | "57P02" | "57P03")
                    })
                    || std::error::Error::source(cause).is_some_and(|s| s.is::<std::io::Error>())
            }
            _ => false,
        }
    }

    /// The SQLSTATE of a database error, if any.
    pub fn code(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            UploadError::Db(e) => e.code(),
            _ => None,
        }
    }

    pub(crate) fn db(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let error = DbError::with_context(context);
        move |cause| UploadError::Db(error(cause))
    }
}

impl From<tokio_postgres::Error> for UploadError {
    fn from(cause: tokio_postgres::Error) -> Self {
        UploadError::Db(cause.into())
    }
}
