//! `row_checksum`: md5 of a content column against a stored md5 column, computed on the
//! replica's server. Only findings cross the wire.
//!
//! The heap is cut into chunks of consecutive blocks, read with TID range scans
//! (PostgreSQL 14+), which `parallelism` sessions take in turn. One aggregate query per
//! chunk returns the rows and bytes it scanned and the rows that differ: per-row
//! transfer, which dominated when every row was streamed, is gone, and memory is
//! bounded by one chunk's findings. A partitioned table is cut into chunks of each of
//! its leaf partitions. On a server older than 14, ranges of the key take the chunks'
//! place (split points sampled before the pause).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use crate::catalog::{column, key_order_error, resolve_table, stored_md5_expr};
use crate::findings_scan::{FindingsScan, ScanEnd};
use crate::ident::{display_ident, quote_ident, QualifiedName};
use crate::results::{FindingsPlan, RowRecheck};
use crate::session::or_cancelled;
use crate::task::fields::{
    at_least_one, max_findings_or_default, parallelism_or_default, parallelism_within_cap, required,
};
use crate::task::{run_workers, FieldError, TaskFields, TaskReport};
use crate::{ScanContext, ScanError};

/// Keys sampled to choose the split points of the key range.
const SAMPLE_TARGET: f64 = 20_000.0;

/// A chunk holds about this many bytes of the table (heap and TOAST)…
const CHUNK_BYTES: f64 = 64.0 * 1024.0 * 1024.0;
/// … and at most about this many rows (and 50 × `scan.batch_rows`): a chunk's findings
/// are held in memory at once, and the soft deadline is checked between chunks.
const CHUNK_ROWS: f64 = 100_000.0;
/// Chunks are ranges of TIDs, counted in slots of this many line pointers per block (the
/// most an 8 kB heap page holds, plus one): a chunk smaller than a block is a range of
/// offsets. Chunks are contiguous in TID order, so every tuple of any block size falls
/// in exactly one.
const SLOTS: u64 = 292;
/// At least this many chunks per session, so that sessions finish together.
const CHUNKS_PER_SESSION: u64 = 4;
/// Key ranges per session on a server without TID range scans (older than 14).
const KEY_RANGES_PER_SESSION: usize = 8;

/// What more than `max_findings` findings most likely mean.
const FLOOD_HINT: &str = "is the checksum column right?";

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
    /// Parallel sessions, taking chunks of the table in turn.
    pub parallelism: usize,
    /// More findings than this fail the task (`max_findings`).
    pub max_findings: u64,
}

impl RowChecksumSpec {
    /// The config fields of this kind.
    pub const FIELDS: &'static [&'static str] = &[
        "table",
        "key",
        "content",
        "checksum",
        "parallelism",
        "max_findings",
    ];

    /// The spec config's fields describe, checked.
    pub fn from_fields(f: &TaskFields) -> Result<Self, FieldError> {
        let spec = RowChecksumSpec {
            table: required("table", &f.table)?,
            key: required("key", &f.key)?,
            content: required("content", &f.content)?,
            checksum: required("checksum", &f.checksum)?,
            parallelism: parallelism_or_default(f.parallelism),
            max_findings: max_findings_or_default(f.max_findings)?,
        };
        spec.validate()?;
        parallelism_within_cap(f.parallelism)?;
        Ok(spec)
    }

    /// Check what the scan relies on, however the spec was made.
    pub fn validate(&self) -> Result<(), FieldError> {
        at_least_one("max_findings", self.max_findings)?;
        at_least_one("parallelism", self.parallelism as u64)
    }
}

/// A row_checksum task checked against the catalog.
pub(crate) struct PreparedRowChecksum {
    pub(crate) table: QualifiedName,
    oid: u32,
    key: String,
    key_type: String,
    content: String,
    /// The stored md5 as lower-case hex text.
    stored_expr: String,
    /// A cheaper expression equal to `md5(content)` for every row that matches (the
    /// column itself when it is text): rows where it differs are then classified with
    /// `stored_expr`, which a text column's `lower()` makes costly on every row.
    quick_stored: String,
    key_name: String,
    content_name: String,
    checksum_name: String,
    estimated_rows: u64,
    parallelism: usize,
    max_findings: u64,
    /// The server has TID range scans (PostgreSQL 14+): chunks are block ranges.
    tid_ranges: bool,
    /// Without TID range scans, split points of the key: range i is
    /// [bounds[i-1], bounds[i]), the first and last open-ended.
    bounds: Vec<String>,
    /// With TID range scans, the leaf partitions of a partitioned table, which the scan
    /// reads directly (empty for a plain table).
    pub(crate) partitions: Vec<QualifiedName>,
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
    let quick_stored = if checksum.category == "S" {
        format!("{}::text", quote_ident(&checksum.name))
    } else {
        stored_expr.clone()
    };
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .map_err(ScanError::db("reading the server version"))?
        .get(0);
    let mut prepared = PreparedRowChecksum {
        table,
        oid,
        key: quote_ident(&key.name),
        key_type: key.type_sql,
        content: quote_ident(&content.name),
        stored_expr,
        quick_stored,
        key_name: key.name,
        content_name: content.name,
        checksum_name: checksum.name,
        estimated_rows,
        parallelism: spec.parallelism,
        max_findings: spec.max_findings,
        tid_ranges: version >= 140_000,
        bounds: Vec::new(),
        partitions: Vec::new(),
    };
    if prepared.tid_ranges {
        prepared.partitions = readable_partitions(client, &prepared).await?;
        // The key needs an ordering all the same: findings are re-checked by key.
        let sql = format!(
            "SELECT 1 FROM {} ORDER BY {} LIMIT 0",
            prepared.table.quoted(),
            prepared.key
        );
        let context = format!("checking the key of {}", prepared.table);
        client
            .prepare(&sql)
            .await
            .map_err(key_order_error(&prepared.key_type, context))?;
    } else {
        let parts = spec.parallelism * KEY_RANGES_PER_SESSION;
        prepared.bounds = split_points(client, &prepared, parts).await?;
    }
    Ok(prepared)
}

/// The leaf partitions of `p`'s table (none for a plain table), in oid order: schema,
/// name, relkind, whether this role may SELECT from it, and the role.
async fn partition_leaves(
    client: &Client,
    p: &PreparedRowChecksum,
) -> Result<Vec<tokio_postgres::Row>, ScanError> {
    client
        .query(
            "SELECT n.nspname::text, c.relname::text, c.relkind::text, \
                    has_table_privilege(c.oid, 'SELECT'), current_user::text \
               FROM pg_partition_tree($1::oid) t JOIN pg_class c ON c.oid = t.relid \
               JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE t.isleaf AND c.oid <> $1::oid ORDER BY c.oid",
            &[&p.oid],
        )
        .await
        .map_err(ScanError::db(format!(
            "reading the partitions of {}",
            p.table
        )))
}

/// The leaf partitions of a partitioned table, which the block-range scan reads
/// directly: each must be a heap (a foreign partition has no blocks) that this role
/// may read (reading through the parent, only the parent's grant counted). Refused
/// before the pause, naming the partition or the grant.
async fn readable_partitions(
    client: &Client,
    p: &PreparedRowChecksum,
) -> Result<Vec<QualifiedName>, ScanError> {
    let rows = partition_leaves(client, p).await?;
    let mut partitions = Vec::new();
    let mut lacking = Vec::new();
    let mut who = String::new();
    for row in rows {
        let leaf = QualifiedName {
            schema: row.get(0),
            name: row.get(1),
        };
        let kind: String = row.get(2);
        if kind != "r" {
            return Err(ScanError::Config(format!(
                "table {}: partition {leaf} is not a local table (relkind {kind:?}, a foreign table?): \
                 row_checksum reads each partition's blocks and cannot read it; check that \
                 partition where its data lives",
                p.table
            )));
        }
        if !row.get::<_, bool>(3) {
            who = display_ident(&row.get::<_, String>(4));
            lacking.push(format!("GRANT SELECT ON TABLE {leaf} TO {who}"));
        }
        partitions.push(leaf);
    }
    if !lacking.is_empty() {
        return Err(ScanError::Config(format!(
            "role {who} may not read partitions of {} that row_checksum reads directly: {} \
             (or GRANT pg_read_all_data TO {who})",
            p.table,
            lacking.join("; ")
        )));
    }
    Ok(partitions)
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

/// One chunk of the scan: a statement (by index) and its bound values.
struct Chunk {
    statement: usize,
    params: [Option<String>; 2],
}

/// The statements of a scan and the chunks they are run on.
struct Plan {
    statements: Vec<String>,
    chunks: Vec<Chunk>,
}

/// The query of one chunk of `from` (a quoted relation) where `filter` holds: rows and
/// bytes scanned, and the key, stored and computed md5 of each row that may be a
/// finding, flattened into one text array (three elements a row; NULL if none).
///
/// Each row is hashed once by the FILTER; only a row that differs is hashed again (and
/// its key and stored md5 formatted). The inner array of arrays is flattened in the
/// outer query, once per chunk.
fn chunk_query(p: &PreparedRowChecksum, from: &str, filter: &str) -> String {
    format!(
        "SELECT n, bytes, (SELECT array_agg(e) FROM unnest(f) e) \
           FROM (SELECT count(*) AS n, coalesce(sum(octet_length({c})), 0)::int8 AS bytes, \
                        array_agg(ARRAY[{k}::text, {stored}, md5({c})]) \
                          FILTER (WHERE (md5({c}) = {quick}) IS NOT TRUE) AS f \
                   FROM {from} WHERE {filter}) s",
        c = p.content,
        k = p.key,
        stored = p.stored_expr,
        quick = p.quick_stored,
    )
}

/// The chunks on a server with TID range scans: block ranges of every heap of the
/// table (itself, or its leaf partitions), sized from the snapshot's relation sizes.
async fn block_chunks(
    client: &Client,
    p: &PreparedRowChecksum,
    batch_rows: i32,
) -> Result<Plan, ScanError> {
    let max_rows = CHUNK_ROWS.min(50.0 * f64::from(batch_rows.max(1)));
    // The table checked before the pause must be the one in the snapshot: one dropped
    // and created again meanwhile would have no blocks under the old oid, and the scan
    // would report a clean table.
    let same: bool = client
        .query_one(
            "SELECT coalesce(to_regclass($1)::oid = $2::oid, false)",
            &[&p.table.quoted(), &p.oid],
        )
        .await
        .map_err(ScanError::db(format!("looking up {}", p.table)))?
        .get(0);
    if !same {
        return Err(ScanError::Config(format!(
            "table {} was dropped, renamed or replaced since the task was checked",
            p.table
        )));
    }
    // Its partitions must be the ones checked (kind, grants, replayed locks): one
    // attached or detached since would be read unchecked, or not at all.
    let leaves: Vec<QualifiedName> = partition_leaves(client, p)
        .await?
        .iter()
        .map(|r| QualifiedName {
            schema: r.get(0),
            name: r.get(1),
        })
        .collect();
    if leaves != p.partitions {
        return Err(ScanError::Config(format!(
            "the partitions of {} changed since the task was checked (attached or detached before the pause): run it again",
            p.table
        )));
    }
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, \
                    pg_relation_size(c.oid) / current_setting('block_size')::int8, \
                    pg_table_size(c.oid), c.reltuples::float8 \
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE c.relkind IN ('r', 'm') \
                AND c.oid IN (SELECT $1::oid UNION SELECT relid FROM pg_partition_tree($1::oid)) \
              ORDER BY c.oid",
            &[&p.oid],
        )
        .await
        .map_err(ScanError::db(format!("reading the size of {}", p.table)))?;
    let mut plan = Plan {
        statements: Vec::new(),
        chunks: Vec::new(),
    };
    let sessions = p.parallelism.max(1) as u64;
    for row in rows {
        let heap = QualifiedName {
            schema: row.get(0),
            name: row.get(1),
        };
        let blocks = row.get::<_, i64>(2).max(0) as u64;
        let bytes = row.get::<_, i64>(3).max(0) as f64;
        let tuples = row.get::<_, f64>(4);
        let statement = plan.statements.len();
        plan.statements.push(chunk_query(
            p,
            &heap.quoted(),
            "ctid >= $1::text::tid AND ctid < $2::text::tid",
        ));
        let step = chunk_slots(blocks, bytes, tuples, sessions, max_rows);
        let tid = |slot: u64| Some(format!("({},{})", slot / SLOTS, slot % SLOTS));
        let mut start = 0;
        loop {
            let end = start + step;
            // The last chunk is open-ended: nothing past the relation's end is missed.
            let last = end >= blocks * SLOTS;
            let upper = if last {
                tid(u64::from(u32::MAX) * SLOTS)
            } else {
                tid(end)
            };
            plan.chunks.push(Chunk {
                statement,
                params: [tid(start), upper],
            });
            if last {
                break;
            }
            start = end;
        }
    }
    Ok(plan)
}

/// TID slots ([`SLOTS`] a block) per chunk of a heap of `blocks` blocks, `bytes` with its
/// TOAST, `tuples` rows (-1: never analyzed), scanned by `sessions` sessions, with at most
/// about `max_rows` rows a chunk. Whole blocks unless a block holds more rows than that.
fn chunk_slots(blocks: u64, bytes: f64, tuples: f64, sessions: u64, max_rows: f64) -> u64 {
    if blocks == 0 {
        return SLOTS;
    }
    let per_block_bytes = (bytes / blocks as f64).max(1.0);
    let per_block_rows = if tuples > 0.0 {
        (tuples / blocks as f64).max(1.0)
    } else {
        // Never analyzed: as many rows as the smallest tuples fit (a guess that errs on
        // small chunks).
        290.0
    };
    let by_size = (CHUNK_BYTES / per_block_bytes).min(max_rows / per_block_rows);
    let balanced = blocks.div_ceil(sessions * CHUNKS_PER_SESSION) as f64;
    let per_chunk = by_size.min(balanced);
    if per_chunk >= 1.0 {
        per_chunk as u64 * SLOTS
    } else {
        ((per_chunk * SLOTS as f64) as u64).max(1)
    }
}

/// The chunks on a server without TID range scans: ranges of the key.
fn key_chunks(p: &PreparedRowChecksum) -> Plan {
    let (k, t) = (&p.key, &p.key_type);
    let table = p.table.quoted();
    // NULL keys sort last in a btree and fall in no range: the first range takes them.
    let statements = vec![
        chunk_query(p, &table, "TRUE"),
        chunk_query(p, &table, &format!("({k} < $1::text::{t} OR {k} IS NULL)")),
        chunk_query(p, &table, &format!("{k} >= $1::text::{t}")),
        chunk_query(
            p,
            &table,
            &format!("{k} >= $1::text::{t} AND {k} < $2::text::{t}"),
        ),
    ];
    let chunks = (0..=p.bounds.len())
        .map(|i| {
            let lo = if i == 0 { None } else { p.bounds.get(i - 1) };
            let hi = p.bounds.get(i);
            let (statement, params) = match (lo, hi) {
                (None, None) => (0, [None, None]),
                (None, Some(h)) => (1, [Some(h.clone()), None]),
                (Some(l), None) => (2, [Some(l.clone()), None]),
                (Some(l), Some(h)) => (3, [Some(l.clone()), Some(h.clone())]),
            };
            Chunk { statement, params }
        })
        .collect();
    Plan { statements, chunks }
}

pub(crate) async fn run(
    name: &str,
    p: &PreparedRowChecksum,
    ctx: &ScanContext,
    deadline: Option<Instant>,
    report: &mut TaskReport,
) -> Result<(), ScanError> {
    let limit = (p.max_findings, FLOOD_HINT);
    let scan = FindingsScan::start(ctx, name, "rows", Some(p.estimated_rows), limit)?;
    let relation = p.table.to_string();
    let ended = async {
        // Sized once paused: the snapshot's relation sizes.
        let plan = if p.tid_ranges {
            let client = ctx.connect().await?;
            block_chunks(&client, p, ctx.batch_rows).await?
        } else {
            key_chunks(p)
        };
        let next = AtomicUsize::new(0);
        let sessions = p.parallelism.min(plan.chunks.len()).max(1);
        let workers = (0..sessions).map(|_| {
            let (scan, relation, plan, next) = (&scan, relation.as_str(), &plan, &next);
            async move { scan_chunks(ctx, scan, plan, next, relation, deadline).await }
        });
        run_workers(&scan.stop, workers).await
    }
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

/// Scan chunks taken in turn from `plan` until none is left; `true` if the soft
/// deadline stopped it first.
async fn scan_chunks(
    ctx: &ScanContext,
    scan: &FindingsScan,
    plan: &Plan,
    next: &AtomicUsize,
    relation: &str,
    deadline: Option<Instant>,
) -> Result<bool, ScanError> {
    let (sink, counters, stop) = (&scan.sink, &scan.counters, &scan.stop);
    let (mut client, cancel_token) = ctx.session().await?;
    let context = || format!("scanning {relation}");
    let tx = crate::session::snapshot_transaction(&mut client)
        .await
        .map_err(ScanError::db(context()))?;
    // Chunk queries are short and their time goes into md5(): compiling each one with
    // JIT (their cost estimate can pass jit_above_cost) would cost more than it saves.
    tx.batch_execute("SET LOCAL jit = off")
        .await
        .map_err(ScanError::db(context()))?;
    let mut statements = vec![None; plan.statements.len()];
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(next.load(Ordering::Relaxed) < plan.chunks.len());
        }
        let Some(chunk) = plan.chunks.get(next.fetch_add(1, Ordering::Relaxed)) else {
            return Ok(false);
        };
        let stmt = match &statements[chunk.statement] {
            Some(s) => s,
            None => {
                let sql = &plan.statements[chunk.statement];
                let s = tx.prepare(sql).await.map_err(ScanError::db(context()))?;
                statements[chunk.statement].insert(s)
            }
        };
        let params: Vec<&(dyn ToSql + Sync)> = chunk.params[..stmt.params().len()]
            .iter()
            .map(|p| p as &(dyn ToSql + Sync))
            .collect();
        let row = or_cancelled(tx.query_one(stmt, &params), stop, &cancel_token)
            .await?
            .map_err(ScanError::db(context()))?;
        let (rows, bytes) = (row.get::<_, i64>(0), row.get::<_, i64>(1));
        let flagged: Option<Vec<Option<String>>> = row.get(2);
        for f in flagged.unwrap_or_default().chunks_exact(3) {
            let (key, stored, computed) = (&f[0], f[1].as_deref(), f[2].as_deref());
            let Some((finding, detail)) = classify(stored, computed) else {
                continue;
            };
            scan.admit()?;
            // A NULL key stays NULL in the file: it is not the empty string.
            sink.lock().expect("sink lock").write_nullable([
                Some(relation.as_bytes()),
                key.as_deref().map(str::as_bytes),
                Some(finding.as_bytes()),
                Some(detail.as_bytes()),
            ])?;
        }
        counters.add(rows as u64, bytes as u64);
    }
}

/// The finding about a row whose stored md5 (lower-case hex) is `stored` and whose
/// content hashes to `computed`, with its detail; `None` if they match.
fn classify(stored: Option<&str>, computed: Option<&str>) -> Option<(&'static str, String)> {
    match (computed, stored) {
        (None, Some(s)) => Some(("null_content", format!("stored={s}"))),
        (None, None) => Some(("null_content", "stored=NULL".to_string())),
        (Some(c), None) => Some(("null_checksum", format!("computed={c}"))),
        (Some(c), Some(s)) if c == s => None,
        (Some(c), Some(s)) => Some(("mismatch", format!("stored={s} computed={c}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_are_classified_as_the_row_query_did() {
        assert_eq!(classify(Some("ab"), Some("ab")), None);
        assert_eq!(
            classify(Some("ab"), Some("cd")),
            Some(("mismatch", "stored=ab computed=cd".into()))
        );
        assert_eq!(
            classify(None, Some("cd")),
            Some(("null_checksum", "computed=cd".into()))
        );
        assert_eq!(
            classify(Some("ab"), None),
            Some(("null_content", "stored=ab".into()))
        );
        assert_eq!(
            classify(None, None),
            Some(("null_content", "stored=NULL".into()))
        );
    }

    #[test]
    fn chunks_are_bounded_by_bytes_rows_and_sessions() {
        let blocks = |slots: u64| {
            assert_eq!(slots % SLOTS, 0, "whole blocks");
            slots / SLOTS
        };
        // 2M rows of 64 B: 26,667 blocks of 75 rows; rows bound the chunk.
        let small = chunk_slots(26_667, 218e6, 2e6, 2, CHUNK_ROWS);
        assert_eq!(blocks(small), 1_333);
        // 16k rows of 64 KiB in TOAST: a 120-block heap; bytes bound the chunk.
        let large = blocks(chunk_slots(120, 1.1e9, 16_384.0, 2, CHUNK_ROWS));
        assert!((1..=8).contains(&large), "{large}");
        // A small table still gives every session several chunks.
        assert_eq!(blocks(chunk_slots(16, 131_072.0, 800.0, 2, CHUNK_ROWS)), 2);
        assert_eq!(chunk_slots(0, 0.0, -1.0, 2, CHUNK_ROWS), SLOTS);
        // scan.batch_rows = 1 (50 rows a chunk) with 100 rows a block: half blocks.
        assert_eq!(chunk_slots(1_000, 8.2e6, 1e5, 1, 50.0), SLOTS / 2);
    }
}
