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

impl Column {
    /// Config's error for this column (config field `field`) when task kind `kind`
    /// cannot use its type: it needs `needs`.
    pub(crate) fn wrong_type(&self, field: &str, kind: &str, needs: &str) -> ScanError {
        ScanError::Config(format!(
            "{field}: column {} has type {}; {kind} needs {needs}",
            quote_ident(&self.name),
            self.type_sql
        ))
    }
}

/// The error of a query that compares or sorts the key (of SQL type `key_type`):
/// config's if the type has no ordering, else the database's, in `context`.
pub(crate) fn key_order_error(
    key_type: &str,
    context: impl Into<String>,
) -> impl FnOnce(tokio_postgres::Error) -> ScanError + '_ {
    let context = context.into();
    move |e| {
        if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_FUNCTION) {
            ScanError::Config(format!(
                "key: type {key_type} has no ordering; choose an orderable key"
            ))
        } else {
            ScanError::db(context)(e)
        }
    }
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
    RowRecheck::stored_md5_sql(&c, &checksum.type_name, &checksum.category)
        .ok_or_else(|| checksum.wrong_type("checksum", kind, "hex text, bytea or uuid"))
}

/// A relation as the replica's catalog describes it.
pub(crate) struct Relation {
    pub(crate) oid: u32,
    /// `pg_class.relkind`.
    pub(crate) kind: String,
    /// `pg_class.relpersistence`.
    pub(crate) persistence: String,
    /// `pg_class.reltuples`: -1 until the first VACUUM or ANALYZE.
    pub(crate) reltuples: f64,
    /// `pg_relation_size`.
    pub(crate) bytes: i64,
}

/// Relation `text` (SQL syntax, from config field `field`): its name, and the relation
/// of that name on the replica if there is one, of one of `kinds` (`relkind`s; `None`:
/// any kind).
pub(crate) async fn find_relation(
    client: &Client,
    field: &str,
    text: &str,
    kinds: Option<&[&str]>,
) -> Result<(QualifiedName, Option<Relation>), ScanError> {
    let name =
        QualifiedName::parse(text).map_err(|e| ScanError::Config(format!("{field}: {e}")))?;
    let kinds: Option<Vec<&str>> = kinds.map(<[&str]>::to_vec);
    let row = client
        .query_opt(
            "SELECT c.oid, c.relkind::text, c.relpersistence::text, c.reltuples::float8,
                    pg_relation_size(c.oid)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2
                AND ($3::text[] IS NULL OR c.relkind::text = ANY ($3))",
            &[&name.schema, &name.name, &kinds],
        )
        .await
        .map_err(ScanError::db("reading the catalog"))?;
    let relation = row.map(|r| Relation {
        oid: r.get(0),
        kind: r.get(1),
        persistence: r.get(2),
        reltuples: r.get(3),
        bytes: r.get(4),
    });
    Ok((name, relation))
}

/// Resolve a table in SQL syntax on the replica: `(oid, name, estimated rows)`.
pub(crate) async fn resolve_table(
    client: &Client,
    text: &str,
) -> Result<(u32, QualifiedName, u64), ScanError> {
    // Tables, partitioned tables and materialized views; any other relation is no table.
    let kinds = ["r", "p", "m"];
    let (table, relation) = find_relation(client, "table", text, Some(&kinds)).await?;
    let Some(r) = relation else {
        return Err(ScanError::Config(format!(
            "table: {table} does not exist on the replica"
        )));
    };
    // reltuples is -1 until the first VACUUM/ANALYZE; guess from the size then.
    let estimate = if r.reltuples >= 0.0 {
        r.reltuples as u64
    } else {
        (r.bytes as u64 / 8192) * 50
    };
    Ok((r.oid, table, estimate))
}
