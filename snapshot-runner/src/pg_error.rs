//! PostgreSQL errors in one line, for operators.

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
