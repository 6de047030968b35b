//! Queries from config (`materialize`, `export`): checked on the replica before the
//! pause, then streamed with `COPY (query) TO STDOUT (FORMAT csv, HEADER true)` into a
//! hashing data file. Nothing is held in memory but the chunk in flight: tokio-postgres
//! stops reading the socket while a chunk waits to be written.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use tokio_postgres::{Client, Transaction};
use tokio_util::sync::CancellationToken;

use crate::ident::QualifiedName;
use crate::progress::Counters;
use crate::results::data_files::RawFile;
use crate::session::or_cancelled;
use crate::ScanError;

/// A query from config, checked on the replica.
#[derive(Debug, Clone)]
pub(crate) struct CheckedQuery {
    /// The query text without a trailing `;`.
    pub(crate) text: String,
    /// Result column names, as the CSV header will name them.
    pub(crate) columns: Vec<String>,
    /// Tables and materialized views it reads (from its plan).
    pub(crate) relations: Vec<QualifiedName>,
}

impl CheckedQuery {
    /// `COPY (query) TO STDOUT (FORMAT csv, HEADER true)`. The newlines keep a trailing
    /// `-- comment` in the query from swallowing the closing parenthesis.
    pub(crate) fn copy_sql(&self) -> String {
        format!(
            "COPY (\n{}\n) TO STDOUT (FORMAT csv, HEADER true)",
            self.text
        )
    }
}

/// Check a query from config field `field`: it parses and plans on the replica, takes
/// no parameters, and names its columns uniquely (they become the CSV header).
pub(crate) async fn check_query(
    client: &Client,
    field: &str,
    text: &str,
) -> Result<CheckedQuery, ScanError> {
    let text = text
        .trim()
        .trim_end_matches(|c: char| c == ';' || c.is_whitespace())
        .to_string();
    if text.is_empty() {
        return Err(ScanError::Config(format!("{field}: empty query")));
    }
    let stmt = client
        .prepare(&text)
        .await
        .map_err(|e| query_error(field, e))?;
    if !stmt.params().is_empty() {
        return Err(ScanError::Config(format!(
            "{field}: the query takes parameters ($1, …); write the values in"
        )));
    }
    if stmt.columns().is_empty() {
        return Err(ScanError::Config(format!(
            "{field}: the statement returns no columns; it must be a query"
        )));
    }
    let columns: Vec<String> = stmt
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let mut seen = BTreeSet::new();
    for c in &columns {
        if c == "?column?" {
            return Err(ScanError::Config(format!(
                "{field}: a result column has no name; name every expression (… AS name)"
            )));
        }
        if !seen.insert(c.as_str()) {
            return Err(ScanError::Config(format!(
                "{field}: column {c:?} appears twice in the result"
            )));
        }
    }
    let plan = plan_of(client, &text)
        .await
        .map_err(|e| query_error(field, e))?;
    // A write fails on the paused replica (read-only) only once the pause is taken:
    // refuse it now, when it costs nothing.
    if let Some(what) = writes(&plan) {
        return Err(ScanError::Config(format!(
            "{field}: the query {what}; a replica is read-only: materialize and export queries may only read"
        )));
    }
    let mut found = BTreeSet::new();
    collect_relations(&plan, &mut found);
    let relations = found
        .into_iter()
        .map(|(schema, name)| QualifiedName { schema, name })
        .collect();
    Ok(CheckedQuery {
        text,
        columns,
        relations,
    })
}

fn query_error(field: &str, e: tokio_postgres::Error) -> ScanError {
    match e.as_db_error() {
        Some(db) => ScanError::Config(format!(
            "{field}: the replica rejects the query: {}",
            db.message()
        )),
        None => ScanError::db(format!("checking {field}"))(e),
    }
}

/// The query's plan, from `EXPLAIN (VERBOSE, FORMAT JSON)` (planned, not run).
async fn plan_of(client: &Client, text: &str) -> Result<serde_json::Value, tokio_postgres::Error> {
    let row = client
        .query_one(&format!("EXPLAIN (VERBOSE, FORMAT JSON)\n{text}\n"), &[])
        .await?;
    // EXPLAIN's JSON output comes back as text (or json on some versions).
    Ok(match row.try_get::<_, String>(0) {
        Ok(s) => serde_json::from_str(&s).unwrap_or_default(),
        Err(_) => row.try_get::<_, serde_json::Value>(0).unwrap_or_default(),
    })
}

/// What in a plan writes or locks rows (a data-modifying statement or CTE, `FOR
/// UPDATE`/`FOR SHARE`), if anything.
fn writes(plan: &serde_json::Value) -> Option<String> {
    match plan {
        serde_json::Value::Object(m) => {
            match m.get("Node Type").and_then(|t| t.as_str()) {
                Some("ModifyTable") => {
                    let op = m
                        .get("Operation")
                        .and_then(|o| o.as_str())
                        .unwrap_or("modify");
                    let rel = m
                        .get("Relation Name")
                        .and_then(|r| r.as_str())
                        .unwrap_or("a table");
                    return Some(format!("writes ({} on {rel})", op.to_uppercase()));
                }
                Some("LockRows") => return Some("locks rows (FOR UPDATE/SHARE)".into()),
                _ => {}
            }
            m.values().find_map(writes)
        }
        serde_json::Value::Array(a) => a.iter().find_map(writes),
        _ => None,
    }
}

fn collect_relations(v: &serde_json::Value, out: &mut BTreeSet<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            if let (Some(serde_json::Value::String(s)), Some(serde_json::Value::String(r))) =
                (m.get("Schema"), m.get("Relation Name"))
            {
                out.insert((s.clone(), r.clone()));
            }
            m.values().for_each(|x| collect_relations(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_relations(x, out)),
        _ => {}
    }
}

/// How a COPY into a file ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyEnd {
    /// Every row was written.
    Complete,
    /// The soft deadline passed; the file holds the rows copied until then.
    Deadline,
}

/// Stream `COPY … TO STDOUT` into `file`. Each CopyData message PostgreSQL sends is one
/// CSV line of the result (the first one is the header), so rows are counted by message.
pub(crate) async fn copy_to_file(
    client: &Transaction<'_>,
    cancel_token: &crate::connection::CancelToken,
    copy_sql: &str,
    file: &mut RawFile,
    counters: &Arc<Counters>,
    deadline: Option<Instant>,
    stop: &CancellationToken,
) -> Result<CopyEnd, ScanError> {
    let context = "streaming COPY from the replica";
    let stream = or_cancelled(client.copy_out(copy_sql), stop, cancel_token)
        .await?
        .map_err(ScanError::db(context))?;
    futures_util::pin_mut!(stream);
    let mut header = true;
    let deadline_sleep = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline_sleep);
    loop {
        let chunk = tokio::select! {
            c = stream.next() => c,
            _ = stop.cancelled() => {
                crate::connection::cancel_query(cancel_token).await;
                return Err(ScanError::Cancelled);
            }
            _ = &mut deadline_sleep => {
                crate::connection::cancel_query(cancel_token).await;
                file.ensure_header()?;
                return Ok(CopyEnd::Deadline);
            }
        };
        let Some(chunk) = chunk else {
            return Ok(CopyEnd::Complete);
        };
        let chunk = chunk.map_err(ScanError::db(context))?;
        file.write_all(&chunk)?;
        if header {
            header = false;
        } else {
            file.add_rows(1);
            counters.add(1, chunk.len() as u64);
        }
    }
}
