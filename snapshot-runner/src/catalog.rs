//! The tables and columns a task names in config, looked up in the replica's catalog:
//! they must exist and have types the scan can use. Names are parsed with
//! PostgreSQL's rules and bound as values; only the catalog's own spelling, quoted,
//! ever reaches SQL.

use tokio_postgres::Client;

use crate::ident::{parse_ident, quote_ident, QualifiedName};
use crate::results::RowRecheck;
use crate::ScanError;

/// A column of a configured table, as the catalog describes it.
pub(crate) struct Column {
    pub(crate) name: String,
    pub(crate) type_sql: String,
    pub(crate) type_name: String,
    pub(crate) category: String,
}

/// Look up column `text` (SQL syntax, from config field `field`) of `table`.
pub(crate) async fn column(
    client: &Client,
    table_oid: u32,
    field: &str,
    text: &str,
    table: &QualifiedName,
) -> Result<Column, ScanError> {
    let name = parse_ident(text).map_err(|e| ScanError::Config(format!("{field}: {e}")))?;
    let row = client
        .query_opt(
            "SELECT format_type(a.atttypid, a.atttypmod), t.typname::text, t.typcategory::text
               FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
              WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&table_oid, &name],
        )
        .await
        .map_err(ScanError::db("reading the catalog"))?;
    let row = row.ok_or_else(|| {
        ScanError::Config(format!(
            "{field}: column {} does not exist in table {table}",
            quote_ident(&name)
        ))
    })?;
    Ok(Column {
        name,
        type_sql: row.get(0),
        type_name: row.get(1),
        category: row.get(2),
    })
}

/// SQL giving a stored md5 column as lower-case hex text: the column may be hex text,
/// 16-byte bytea or uuid.
pub(crate) fn stored_md5_expr(checksum: &Column, kind: &str) -> Result<String, ScanError> {
    let c = quote_ident(&checksum.name);
    RowRecheck::stored_md5_sql(&c, &checksum.type_name, &checksum.category).ok_or_else(|| {
        ScanError::Config(format!(
            "checksum: column {c} has type {}; {kind} needs hex text, bytea or uuid",
            checksum.type_sql
        ))
    })
}

/// Resolve a table in SQL syntax on the replica: `(oid, name, estimated rows)`.
pub(crate) async fn resolve_table(
    client: &Client,
    text: &str,
) -> Result<(u32, QualifiedName, u64), ScanError> {
    let table = QualifiedName::parse(text).map_err(|e| ScanError::Config(format!("table: {e}")))?;
    let row = client
        .query_opt(
            "SELECT c.oid, c.reltuples::float8, pg_relation_size(c.oid)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p', 'm')",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(ScanError::db("reading the catalog"))?
        .ok_or_else(|| {
            ScanError::Config(format!("table: {table} does not exist on the replica"))
        })?;
    let reltuples: f64 = row.get(1);
    let bytes: i64 = row.get(2);
    // reltuples is -1 until the first VACUUM/ANALYZE; guess from the size then.
    let estimate = if reltuples >= 0.0 {
        reltuples as u64
    } else {
        (bytes as u64 / 8192) * 50
    };
    Ok((row.get(0), table, estimate))
}
