use std::path::PathBuf;

use crate::pg_error::DbError;

/// Everything that can go wrong in a scan.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The task's configuration names something that does not exist or cannot be used
    /// (a missing table or column, a column of the wrong type). Fix the config.
    #[error("{0}")]
    Config(String),
    /// The database returned an error or the connection failed. Shown with the
    /// server's message and SQLSTATE; like [`DbError`], without a `source`.
    #[error(transparent)]
    Db(DbError),
    /// Reading or writing a result file failed.
    #[error("{path}: {cause}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// The task was cancelled (signal, limit, lost lease).
    #[error("cancelled")]
    Cancelled,
    /// The task found more than its `max_findings`: most likely a misconfiguration
    /// (the wrong checksum column), so none of its findings are kept for upload.
    #[error("more than {limit} findings: {hint}")]
    TooManyFindings {
        /// The task's `max_findings`.
        limit: u64,
        /// What is most likely wrong, for the kind of task.
        hint: &'static str,
    },
}

impl ScanError {
    /// True for errors caused by the configuration rather than the environment.
    pub fn is_config(&self) -> bool {
        matches!(self, ScanError::Config(_))
    }

    /// The SQLSTATE of a database error, if any.
    pub fn code(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            ScanError::Db(e) => e.code(),
            _ => None,
        }
    }

    pub(crate) fn db(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let error = DbError::with_context(context);
        move |cause| ScanError::Db(error(cause))
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |cause| ScanError::Io { path, cause }
    }
}

impl From<tokio_postgres::Error> for ScanError {
    fn from(cause: tokio_postgres::Error) -> Self {
        ScanError::Db(cause.into())
    }
}
