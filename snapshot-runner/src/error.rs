use std::path::PathBuf;

/// Everything that can go wrong in a scan.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The task's configuration names something that does not exist or cannot be used
    /// (a missing table or column, a column of the wrong type). Fix the config.
    #[error("{0}")]
    Config(String),
    /// The database returned an error or the connection failed.
    #[error("{context}: {source}")]
    Db {
        /// What pgmaint was doing.
        context: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Reading or writing a result file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The task was cancelled (signal, limit, lost lease).
    #[error("cancelled")]
    Cancelled,
}

impl ScanError {
    /// True for errors caused by the configuration rather than the environment.
    pub fn is_config(&self) -> bool {
        matches!(self, ScanError::Config(_))
    }

    /// The SQLSTATE of a database error, if any.
    pub fn code(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            ScanError::Db { source, .. } => source.code(),
            _ => None,
        }
    }

    pub(crate) fn db(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let context = context.into();
        move |source| ScanError::Db { context, source }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ScanError::Io { path, source }
    }
}

impl From<tokio_postgres::Error> for ScanError {
    fn from(source: tokio_postgres::Error) -> Self {
        ScanError::Db {
            context: "database".into(),
            source,
        }
    }
}
