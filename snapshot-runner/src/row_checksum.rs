//! `row_checksum`: md5 of a content column against a stored md5 column, computed on the
//! replica's server, with the key range split across parallel sessions.

use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use crate::catalog::{column, key_order_error, resolve_table, stored_md5_expr};
use crate::findings_scan::{FindingsScan, ScanEnd};
use crate::ident::{quote_ident, QualifiedName};
use crate::results::{FindingsPlan, RowRecheck};
use crate::session::or_cancelled;
use crate::task::fields::{at_least_one, parallelism_or_default, parallelism_within_cap, required};
use crate::task::{run_workers, FieldError, TaskFields, TaskReport};
use crate::{ScanContext, ScanError};

/// Keys sampled to choose the split points of the key range.
const SAMPLE_TARGET: f64 = 20_000.0;

/// Config of a `row_checksum` task. Names are in SQL syntax (`schema.table`, `"Mixed Case"`).
#[derive(Debug, Clone)]
pub struct RowChecksumSpec {
    /// The table.
    pub table: String,
    /// Key column: any type with a btree ordering (integer, text, uuid, …).
    pub key: String,
    /// Content column (bytea or text).
    pub content: String,
    /// Stored md5 column: hex text, 16-byte bytea, or uuid.
    pub checksum: String,
    /// Parallel sessions; the key range is split into this many parts.
    pub parallelism: usize,
}

impl RowChecksumSpec {
    /// The config fields of this kind.
    pub const FIELDS: &'static [&'static str] =
        &["table", "key", "content", "checksum", "parallelism"];

    /// The spec config's fields describe, checked.
    pub fn from_fields(f: &TaskFields) -> Result<Self, FieldError> {
        let spec = RowChecksumSpec {
            table: required("table", &f.table)?,
            key: required("key", &f.key)?,
            content: required("content", &f.content)?,
            checksum: required("checksum", &f.checksum)?,
            parallelism: parallelism_or_default(f.parallelism),
        };
        spec.validate()?;
        parallelism_within_cap(f.parallelism)?;
        Ok(spec)
    }

    /// Check what the scan relies on, however the spec was made.
    pub fn validate(&self) -> Result<(), FieldError> {
        at_least_one("parallelism", self.parallelism as u64)
    }
}

/// A row_checksum task checked against the catalog, with its key range split.
pub(crate) struct PreparedRowChecksum {
    pub(crate) table: QualifiedName,
    key: String,
    key_type: String,
    content: String,
    stored_expr: String,
    key_name: String,
    content_name: String,
    checksum_name: String,
    estimated_rows: u64,
    /// Split points: range i is [bounds[i-1], bounds[i]), the first and last open-ended.
    bounds: Vec<String>,
}

pub(crate) async fn prepare(
    client: &Client,
    spec: &RowChecksumSpec,
) -> Result<PreparedRowChecksum, ScanError> {
    let (oid, table, estimated_rows) = resolve_table(client, &spec.table).await?;
    let key = column(client, oid, "key", &spec.key, &table).await?;
    let content = column(client, oid, "content", &spec.content, &table).await?;
    let checksum = column(client, oid, "checksum", &spec.checksum, &table).await?;
    if !(content.type_name == "bytea" || content.category == "S") {
        return Err(content.wrong_type("content", "row_checksum", "bytea or text"));
    }
    let stored_expr = stored_md5_expr(&checksum, "row_checksum")?;
    let mut prepared = PreparedRowChecksum {
        table,
        key: quote_ident(&key.name),
        key_type: key.type_sql,
        content: quote_ident(&content.name),
        stored_expr,
        key_name: key.name,
        content_name: content.name,
        checksum_name: checksum.name,
        estimated_rows,
        bounds: Vec::new(),
    };
    prepared.bounds = split_points(client, &prepared, spec.parallelism).await?;
    Ok(prepared)
}

/// Choose `parts - 1` split points from a sample of keys. Any split points partition
/// the key space, so they need not come from the snapshot: they are chosen before the
/// pause, and sampling also proves the key type is orderable.
async fn split_points(
    client: &Client,
    p: &PreparedRowChecksum,
    parts: usize,
) -> Result<Vec<String>, ScanError> {
    if parts < 2 {
        return Ok(Vec::new());
    }
    let percent = if p.estimated_rows as f64 <= SAMPLE_TARGET {
        100.0
    } else {
        (SAMPLE_TARGET * 100.0 / p.estimated_rows as f64).clamp(0.0001, 100.0)
    };
    let sql = format!(
        "SELECT s.k::text FROM (SELECT {key} AS k FROM {table} TABLESAMPLE SYSTEM ($1::float8) \
          WHERE {key} IS NOT NULL) s ORDER BY s.k",
        key = p.key,
        table = p.table.quoted()
    );
    let rows = client
        .query(&sql, &[&percent])
        .await
        .map_err(key_order_error(
            &p.key_type,
            format!("sampling keys of {}", p.table),
        ))?;
    let keys: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let mut bounds: Vec<String> = Vec::new();
    for i in 1..parts {
        if let Some(k) = keys.get(i * keys.len() / parts) {
            if bounds.last() != Some(k) {
                bounds.push(k.clone());
            }
        }
    }
    Ok(bounds)
}

/// SQL and bound values for range `i` of the split.
fn range_query(p: &PreparedRowChecksum, i: usize) -> (String, Vec<String>) {
    let (k, t) = (&p.key, &p.key_type);
    let lo = if i == 0 { None } else { p.bounds.get(i - 1) };
    let hi = p.bounds.get(i);
    let (filter, params) = match (lo, hi) {
        (None, None) => ("TRUE".to_string(), vec![]),
        (None, Some(h)) => (
            format!("({k} < $1::text::{t} OR {k} IS NULL)"),
            vec![h.clone()],
        ),
        (Some(l), None) => (format!("{k} >= $1::text::{t}"), vec![l.clone()]),
        (Some(l), Some(h)) => (
            format!("{k} >= $1::text::{t} AND {k} < $2::text::{t}"),
            vec![l.clone(), h.clone()],
        ),
    };
    // OFFSET 0 keeps the planner from pulling the subquery up: it would copy md5(content)
    // into each of the three places that use `computed`, and hash every value three times.
    let sql = format!(
        "SELECT key_text, \
                CASE WHEN computed IS NULL THEN 'null_content' \
                     WHEN stored IS NULL THEN 'null_checksum' \
                     WHEN computed <> stored THEN 'mismatch' END, \
                stored, computed, coalesce(bytes, 0)::int8 \
           FROM (SELECT {k}::text AS key_text, {stored} AS stored, md5({c}) AS computed, \
                        octet_length({c}) AS bytes \
                   FROM {table} WHERE {filter} OFFSET 0) s",
        stored = p.stored_expr,
        c = p.content,
        table = p.table.quoted(),
    );
    (sql, params)
}

pub(crate) async fn run(
    name: &str,
    p: &PreparedRowChecksum,
    ctx: &ScanContext,
    deadline: Option<Instant>,
    report: &mut TaskReport,
) -> Result<(), ScanError> {
    let scan = FindingsScan::start(ctx, name, "rows", Some(p.estimated_rows))?;
    let relation = p.table.to_string();
    let workers = (0..=p.bounds.len()).map(|i| {
        let (sql, params) = range_query(p, i);
        let (scan, relation) = (&scan, relation.as_str());
        async move { scan_range(ctx, scan, &sql, &params, relation, deadline).await }
    });
    let ended = run_workers(&scan.stop, workers)
        .await
        .map(ScanEnd::cut_short_if);
    // The uploader re-checks each finding on the primary with these (names, not SQL).
    let plan = FindingsPlan::RowChecksum(RowRecheck {
        relation,
        schema: p.table.schema.clone(),
        table: p.table.name.clone(),
        key: p.key_name.clone(),
        content: p.content_name.clone(),
        checksum: p.checksum_name.clone(),
    });
    scan.finish(report, ended, plan).await
}

/// Scan one key range in batches; returns `true` if the soft deadline cut it short.
async fn scan_range(
    ctx: &ScanContext,
    scan: &FindingsScan,
    sql: &str,
    params: &[String],
    relation: &str,
    deadline: Option<Instant>,
) -> Result<bool, ScanError> {
    let (sink, counters, stop) = (&scan.sink, &scan.counters, &scan.stop);
    let (mut client, cancel_token) = ctx.session().await?;
    let context = || format!("scanning {relation}");
    let tx = crate::session::snapshot_transaction(&mut client)
        .await
        .map_err(ScanError::db(context()))?;
    let stmt = tx.prepare(sql).await.map_err(ScanError::db(context()))?;
    let params: Vec<&(dyn ToSql + Sync)> =
        params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let portal = tx
        .bind(&stmt, &params)
        .await
        .map_err(ScanError::db(context()))?;
    loop {
        let batch = tx.query_portal(&portal, ctx.batch_rows);
        let rows = or_cancelled(batch, stop, &cancel_token)
            .await?
            .map_err(ScanError::db(context()))?;
        let mut bytes = 0u64;
        for row in &rows {
            bytes += row.get::<_, i64>(4) as u64;
            let Some(finding) = row.get::<_, Option<&str>>(1) else {
                continue;
            };
            // A NULL key stays NULL in the file: it is not the empty string.
            let key = row.get::<_, Option<&str>>(0);
            let stored = row.get::<_, Option<&str>>(2);
            let computed = row.get::<_, Option<&str>>(3);
            let detail = match finding {
                "mismatch" => format!(
                    "stored={} computed={}",
                    stored.unwrap_or(""),
                    computed.unwrap_or("")
                ),
                "null_checksum" => format!("computed={}", computed.unwrap_or("")),
                _ => match stored {
                    Some(s) => format!("stored={s}"),
                    None => "stored=NULL".to_string(),
                },
            };
            sink.lock().expect("sink lock").write_nullable([
                Some(relation.as_bytes()),
                key.map(str::as_bytes),
                Some(finding.as_bytes()),
                Some(detail.as_bytes()),
            ])?;
            counters.findings.fetch_add(1, Ordering::Relaxed);
        }
        counters.add(rows.len() as u64, bytes);
        if rows.len() < ctx.batch_rows as usize {
            return Ok(false);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(true);
        }
    }
}
