//! `amcheck`: storage-level corruption checks on the frozen replica, with the `amcheck`
//! extension: `bt_index_check` on every btree index and `verify_heapam` on every table.
//! (`bt_index_parent_check` needs a ShareLock that a standby cannot take.)
//!
//! Every relation is checked on its own: an index that errors becomes a finding, and
//! the others are still checked.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use futures_util::{pin_mut, StreamExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use crate::catalog::find_relation;
use crate::findings_scan::{FindingsScan, ScanEnd};
use crate::ident::{quote_ident, QualifiedName};
use crate::results::{AmcheckFindings, FindingsPlan};
use crate::session::or_cancelled;
use crate::task::fields::{
    at_least_one, max_findings_or_default, parallelism_or_default, parallelism_within_cap,
};
use crate::task::{run_workers, FieldError, TaskFields, TaskReport};
use crate::{ScanContext, ScanError};

/// Config of an `amcheck` task.
#[derive(Debug, Clone)]
pub struct AmcheckSpec {
    /// Tables to check, with their btree indexes (SQL syntax). `None`: every
    /// permanent user table and materialized view.
    pub tables: Option<Vec<String>>,
    /// Also check that every heap tuple has its index entry (`heapallindexed`); slower.
    pub heapallindexed: bool,
    /// Relations checked at once, each on its own session.
    pub parallelism: usize,
    /// More findings than this fail the task (`max_findings`).
    pub max_findings: u64,
}

impl AmcheckSpec {
    /// The config fields of this kind.
    pub const FIELDS: &'static [&'static str] =
        &["tables", "heapallindexed", "parallelism", "max_findings"];

    /// The spec config's fields describe, checked.
    pub fn from_fields(f: &TaskFields) -> Result<Self, FieldError> {
        let spec = AmcheckSpec {
            tables: f.tables.clone(),
            heapallindexed: f.heapallindexed.unwrap_or(false),
            parallelism: parallelism_or_default(f.parallelism),
            max_findings: max_findings_or_default(f.max_findings)?,
        };
        spec.validate()?;
        parallelism_within_cap(f.parallelism)?;
        Ok(spec)
    }

    /// Check what the scan relies on, however the spec was made.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.tables.as_ref().is_some_and(Vec::is_empty) {
            return Err(FieldError::invalid(
                "tables",
                "empty list (leave it out to check every table)",
            ));
        }
        at_least_one("max_findings", self.max_findings)?;
        at_least_one("parallelism", self.parallelism as u64)
    }
}

/// What more than `max_findings` amcheck findings most likely mean.
const FLOOD_HINT: &str = "are the relations badly damaged? raise max_findings to record them all";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Heap,
    Index,
}

#[derive(Debug, Clone)]
struct Item {
    check: Check,
    oid: u32,
    name: QualifiedName,
    bytes: u64,
}

pub(crate) struct PreparedAmcheck {
    /// `"schema"` of the extension, quoted, to call its functions by qualified name.
    ext_schema: String,
    heapallindexed: bool,
    parallelism: usize,
    max_findings: u64,
    items: Vec<Item>,
}

impl PreparedAmcheck {
    pub(crate) fn relations(&self) -> Vec<(String, String)> {
        self.items
            .iter()
            .map(|i| (i.name.schema.clone(), i.name.name.clone()))
            .collect()
    }
}

pub(crate) async fn prepare(
    client: &Client,
    spec: &AmcheckSpec,
) -> Result<PreparedAmcheck, ScanError> {
    let ext_schema = extension_schema(client).await?;
    let tables = match &spec.tables {
        None => all_tables(client).await?,
        Some(list) => listed_tables(client, list).await?,
    };
    Ok(PreparedAmcheck {
        ext_schema: quote_ident(&ext_schema),
        heapallindexed: spec.heapallindexed,
        parallelism: spec.parallelism,
        max_findings: spec.max_findings,
        items: with_indexes(client, tables).await?,
    })
}

/// The schema of the amcheck extension, which must be there and new enough.
async fn extension_schema(client: &Client) -> Result<String, ScanError> {
    let row = client
        .query_one(
            "SELECT current_database()::text,
                    (SELECT n.nspname::text FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
                      WHERE e.extname = 'amcheck'),
                    (SELECT count(*) FROM pg_proc p JOIN pg_extension e ON e.extnamespace = p.pronamespace
                      WHERE e.extname = 'amcheck' AND p.proname IN ('bt_index_check', 'verify_heapam'))::int",
            &[],
        )
        .await
        .map_err(ScanError::db("looking for the amcheck extension"))?;
    let db: String = row.get(0);
    let Some(ext_schema) = row.get::<_, Option<String>>(1) else {
        return Err(ScanError::Config(format!(
            "amcheck extension is not installed in database {db}: CREATE EXTENSION amcheck on the primary"
        )));
    };
    if row.get::<_, i32>(2) < 2 {
        return Err(ScanError::Config(format!(
            "amcheck extension in database {db} is too old (no verify_heapam): ALTER EXTENSION amcheck UPDATE on the primary"
        )));
    }
    Ok(ext_schema)
}

/// A table to check: `(oid, name, size in bytes)`.
type Table = (u32, QualifiedName, u64);

/// Every permanent, populated user table and materialized view.
async fn all_tables(client: &Client) -> Result<Vec<Table>, ScanError> {
    Ok(client
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text, pg_relation_size(c.oid)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'm') AND c.relpersistence = 'p' AND c.relispopulated
                AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                AND n.nspname !~ '^pg_(toast|temp_)'
              ORDER BY 2, 3",
            &[],
        )
        .await
        .map_err(ScanError::db("listing tables"))?
        .iter()
        .map(|r| {
            (
                r.get(0),
                QualifiedName {
                    schema: r.get(1),
                    name: r.get(2),
                },
                r.get::<_, i64>(3) as u64,
            )
        })
        .collect())
}

/// The tables config lists (`tables[i]`): each must exist and hold data on a standby.
async fn listed_tables(client: &Client, list: &[String]) -> Result<Vec<Table>, ScanError> {
    let mut out = Vec::new();
    for (i, text) in list.iter().enumerate() {
        let field = format!("tables[{i}]");
        let (t, relation) = find_relation(client, &field, text, None).await?;
        let relation = relation.ok_or_else(|| {
            ScanError::Config(format!("{field}: table {t} does not exist on the replica"))
        })?;
        if !matches!(relation.kind.as_str(), "r" | "m") {
            return Err(ScanError::Config(format!(
                "{field}: {t} is not a table or materialized view (list a partitioned table's partitions)"
            )));
        }
        if relation.persistence != "p" {
            return Err(ScanError::Config(format!(
                "{field}: {t} is unlogged or temporary; a standby holds no data for it"
            )));
        }
        out.push((relation.oid, t, relation.bytes as u64));
    }
    Ok(out)
}

/// The checks of `tables`: each heap, followed by its valid btree indexes.
async fn with_indexes(client: &Client, tables: Vec<Table>) -> Result<Vec<Item>, ScanError> {
    let oids: Vec<u32> = tables.iter().map(|t| t.0).collect();
    let indexes = client
        .query(
            "SELECT ic.oid, n.nspname::text, ic.relname::text, pg_relation_size(ic.oid), i.indrelid
               FROM pg_index i
               JOIN pg_class ic ON ic.oid = i.indexrelid
               JOIN pg_am am ON am.oid = ic.relam
               JOIN pg_namespace n ON n.oid = ic.relnamespace
              WHERE i.indrelid = ANY($1) AND am.amname = 'btree' AND i.indisvalid AND i.indisready
              ORDER BY 2, 3",
            &[&oids],
        )
        .await
        .map_err(ScanError::db("listing indexes"))?;
    let mut items = Vec::new();
    for (oid, name, bytes) in tables {
        items.push(Item {
            check: Check::Heap,
            oid,
            name,
            bytes,
        });
        for r in indexes.iter().filter(|r| r.get::<_, u32>(4) == oid) {
            items.push(Item {
                check: Check::Index,
                oid: r.get(0),
                name: QualifiedName {
                    schema: r.get(1),
                    name: r.get(2),
                },
                bytes: r.get::<_, i64>(3) as u64,
            });
        }
    }
    Ok(items)
}

pub(crate) async fn run(
    name: &str,
    p: &PreparedAmcheck,
    ctx: &ScanContext,
    deadline: Option<Instant>,
    report: &mut TaskReport,
) -> Result<(), ScanError> {
    let scan = FindingsScan::start(
        ctx,
        name,
        "relations",
        Some(p.items.len() as u64),
        (p.max_findings, FLOOD_HINT),
    )?;
    let queue = Mutex::new(p.items.iter().cloned().collect::<VecDeque<_>>());
    let workers = (0..p.parallelism.min(p.items.len()).max(1))
        .map(|_| worker(p, ctx, &queue, &scan, deadline));
    let ended = run_workers(&scan.stop, workers).await.map(|cut_short| {
        if !cut_short {
            return ScanEnd::Complete;
        }
        ScanEnd::CutShort {
            note: Some(format!(
                "soft_timeout reached: {} of {} relations checked",
                scan.items(),
                p.items.len()
            )),
        }
    });
    let plan = FindingsPlan::Amcheck(AmcheckFindings {
        heapallindexed: p.heapallindexed,
    });
    scan.finish(report, ended, plan).await
}

/// Check relations from the queue until it is empty; `true` if the soft deadline
/// stopped it first.
async fn worker(
    p: &PreparedAmcheck,
    ctx: &ScanContext,
    queue: &Mutex<VecDeque<Item>>,
    scan: &FindingsScan,
    deadline: Option<Instant>,
) -> Result<bool, ScanError> {
    let (sink, counters, stop) = (&scan.sink, &scan.counters, &scan.stop);
    let (client, cancel_token) = ctx.session().await?;
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(!queue.lock().expect("queue lock").is_empty());
        }
        let Some(item) = queue.lock().expect("queue lock").pop_front() else {
            return Ok(false);
        };
        let relation = item.name.to_string();
        let mut write = |row_key: &str, finding: &str, detail: &str| -> Result<(), ScanError> {
            scan.admit()?;
            sink.lock()
                .expect("sink lock")
                .write([relation.as_str(), row_key, finding, detail])
        };
        let checked = or_cancelled(
            check_one(p, &client, &item, &mut write),
            stop,
            &cancel_token,
        )
        .await?;
        match checked {
            Ok(()) => {}
            Err(Failure::Output(e)) => return Err(e),
            Err(Failure::Db(e)) => handle_db_error(e, &item, &mut write)?,
        }
        counters.add(1, item.bytes);
    }
}

/// Why checking one relation stopped.
enum Failure {
    /// The check (or the connection) raised an error.
    Db(tokio_postgres::Error),
    /// Writing the findings file failed.
    Output(ScanError),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure::Db(e)
    }
}

fn handle_db_error(
    e: tokio_postgres::Error,
    item: &Item,
    write: &mut impl FnMut(&str, &str, &str) -> Result<(), ScanError>,
) -> Result<(), ScanError> {
    match e {
        // An error raised by the check itself is a finding about this relation; the
        // next relation is still checked. Only a lost connection stops the worker.
        e if e.as_db_error().is_some() => {
            let db = e.as_db_error().expect("checked above");
            let finding = match (db.code(), item.check) {
                (c, Check::Index) if is_corruption(c) => "index_corrupt",
                (c, Check::Heap) if is_corruption(c) => "heap_corrupt",
                _ => "check_error",
            };
            let mut detail = db.message().to_string();
            if let Some(d) = db.detail() {
                detail.push_str(": ");
                detail.push_str(d);
            }
            tracing::warn!(relation = %item.name, finding, detail = %detail, "amcheck finding");
            write("", finding, &detail)
        }
        e => Err(ScanError::db(format!("checking {}", item.name))(e)),
    }
}

/// SQLSTATEs amcheck raises for corruption (class XX), and the generic internal error
/// some corrupt pages trigger first.
fn is_corruption(code: &SqlState) -> bool {
    *code == SqlState::INDEX_CORRUPTED
        || *code == SqlState::DATA_CORRUPTED
        || *code == SqlState::INTERNAL_ERROR
}

async fn check_one(
    p: &PreparedAmcheck,
    client: &Client,
    item: &Item,
    write: &mut impl FnMut(&str, &str, &str) -> Result<(), ScanError>,
) -> Result<(), Failure> {
    match item.check {
        Check::Index => {
            let sql = format!(
                "SELECT {}.bt_index_check($1::oid::regclass, $2)",
                p.ext_schema
            );
            client
                .execute(&sql, &[&item.oid, &p.heapallindexed])
                .await?;
        }
        Check::Heap => {
            // One row per corrupt tuple, streamed: a badly damaged table cannot fill memory.
            let sql = format!(
                "SELECT blkno, offnum, attnum, msg FROM {}.verify_heapam($1::oid::regclass, \
                 on_error_stop => false, check_toast => true, skip => 'none')",
                p.ext_schema
            );
            let params: [&(dyn ToSql + Sync); 1] = [&item.oid];
            let rows = client.query_raw(&sql, params).await?;
            pin_mut!(rows);
            while let Some(row) = rows.next().await {
                let row = row?;
                let blk: Option<i64> = row.get(0);
                let off: Option<i32> = row.get(1);
                let att: Option<i32> = row.get(2);
                let msg: Option<String> = row.get(3);
                let key = match (blk, off) {
                    (Some(b), Some(o)) => format!("({b},{o})"),
                    (Some(b), None) => format!("({b},)"),
                    _ => String::new(),
                };
                let detail = match att {
                    Some(a) => format!("attnum {a}: {}", msg.unwrap_or_default()),
                    None => msg.unwrap_or_default(),
                };
                write(&key, "heap_corrupt", &detail).map_err(Failure::Output)?;
            }
        }
    }
    Ok(())
}
