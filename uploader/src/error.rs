use std::path::PathBuf;

/// Everything that can go wrong in an upload.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The task must not be applied: tampered or missing file, path outside
    /// `results.dir`, invalid run. Retrying cannot help.
    #[error("{0}")]
    Rejected(String),
    /// A database error (may be passing: lock time-out, lost connection).
    #[error("{context}: {source}")]
    Db {
        /// What the uploader was doing.
        context: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
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
}

impl UploadError {
    /// True when retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, UploadError::Rejected(_))
    }

    /// True when the connection to the primary is gone.
    pub fn is_closed(&self) -> bool {
        matches!(self, UploadError::Db { source, .. } if source.is_closed())
    }

    pub(crate) fn db(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let context = context.into();
        move |source| UploadError::Db { context, source }
    }
}

impl From<tokio_postgres::Error> for UploadError {
    fn from(source: tokio_postgres::Error) -> Self {
        UploadError::Db { context: "database".into(), source }
    }
}
