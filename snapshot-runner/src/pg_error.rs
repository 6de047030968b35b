//! PostgreSQL errors in one line, for operators; and [`DbError`], the database error
//! every pgmaint library reports.

/// The driver's error in one line: the server's message and SQLSTATE (and detail), or
/// the cause of a connection error. tokio-postgres alone prints just "db error".
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(d) = db.detail() {
            s.push_str(&format!("; {d}"));
        }
        return s.replace('\n', " ");
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}").replace('\n', " "),
        None => e.to_string(),
    }
}

/// The database returned an error or the connection failed, while pgmaint was doing
/// `context`. Shown as `context: ` and the server's message and SQLSTATE ([`describe`]).
///
/// The driver's error is not this error's `source`: the message already holds it, and
/// a chain printed in full would repeat it.
#[derive(Debug)]
pub struct DbError {
    /// What pgmaint was doing.
    pub context: String,
    /// The driver's error.
    pub cause: tokio_postgres::Error,
}

impl DbError {
    /// For `map_err`: the driver's error, said to have happened while doing `context`.
    pub fn with_context(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let context = context.into();
        move |cause| DbError { context, cause }
    }

    /// The SQLSTATE, if the server sent one.
    pub fn code(&self) -> Option<&tokio_postgres::error::SqlState> {
        self.cause.code()
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.context, describe(&self.cause))
    }
}

impl std::error::Error for DbError {}

/// An error met doing nothing more specific than talking to the database.
impl From<tokio_postgres::Error> for DbError {
    fn from(cause: tokio_postgres::Error) -> Self {
        DbError {
            context: "database".into(),
            cause,
        }
    }
}
