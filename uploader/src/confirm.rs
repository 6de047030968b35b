//! Confirm findings on the primary at upload time.
//!
//! A finding is true of the snapshot; by the time it is uploaded the row may have been
//! fixed (or deleted). For `row_checksum` findings, the rows they name are re-checked on
//! the primary, by key, with the same computation as the scan, and
//! `integrity_findings.still_holds` records the outcome: `false` marks a finding
//! resolved after the snapshot. Findings of other checks keep `still_holds` NULL.
//! A finding's key is NULL when the row's key is NULL: it is re-checked against the
//! rows whose key IS NULL, while an empty text key is looked up like any other.
//!
//! The re-check is set-based: it is part of the `INSERT … SELECT` that inserts the
//! findings ([`crate::findings`]), one join of the load table to the checked table on
//! the key, so each finding is written once, with its `still_holds`, and nothing is
//! held in the uploader's memory. The checked table is only read (ACCESS SHARE, no row
//! locks): writers to it are never blocked.

use snapshot_runner::ident::{quote_ident, QualifiedName};
use snapshot_runner::results::RowRecheck;
use tokio_postgres::Transaction;

use crate::queue::Claimed;
use crate::UploadError;

/// The re-check of one table, as SQL parts of the findings INSERT, built from the
/// columns' types on the primary (names are quoted catalog names). The load table is
/// aliased `l` (columns `relation, row_key, finding, detail`), and `$4` is the relation
/// as the findings name it.
pub(crate) struct Recheck {
    /// `still_holds` of a finding `l` whose key is not NULL, given the join [`Self::join`]
    /// (alias `t`): true when a row with its key shows the same finding now; false
    /// when no row does (fixed or deleted since the snapshot); NULL for another
    /// relation's findings, or an empty key of a non-text key (it names no row).
    pub holds: String,
    /// `LEFT JOIN <table> t ON …`: the rows of the checked table that have the key of a
    /// finding of this relation and show the same finding now. Only those rows'
    /// content is hashed (the check is a join filter, not a hash key).
    pub join: String,
    /// `still_holds` of a finding `l` whose key is NULL: whether a row whose key IS
    /// NULL (a unique key allows several) shows the same finding now.
    pub holds_null_key: String,
}

/// The re-check SQL for the table as it is on the primary now; `None` (with a warning)
/// when the table, a column or the checksum's type is not what the scan saw.
pub(crate) async fn recheck_sql(
    tx: &Transaction<'_>,
    task: &Claimed,
    r: &RowRecheck,
) -> Result<Option<Recheck>, UploadError> {
    let relation = &r.relation;
    // The columns' real types on the primary (names are raw catalog names).
    let rows = tx
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typname::text, t.typcategory::text
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               JOIN pg_type t ON t.oid = a.atttypid
              WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = ANY ($3)",
            &[&r.schema, &r.table, &vec![r.key.as_str(), &r.content, &r.checksum]],
        )
        .await
        .map_err(UploadError::db(format!(
            "re-checking findings on {relation}: reading the catalog"
        )))?;
    let col = |name: &str| rows.iter().find(|row| row.get::<_, &str>(0) == name);
    let (Some(k), Some(_), Some(s)) = (col(&r.key), col(&r.content), col(&r.checksum)) else {
        tracing::warn!(upload_task_id = task.id, %relation, "table or columns gone on the primary; still_holds left unknown");
        return Ok(None);
    };
    let key_type: String = k.get(1);
    // Only a text key can be empty: an empty key of another type names no row (and
    // cannot be cast to it).
    let key_is_text = k.get::<_, &str>(3) == "S";
    let (kq, cq, sq) = (
        quote_ident(&r.key),
        quote_ident(&r.content),
        quote_ident(&r.checksum),
    );
    // The check of a row of the table aliased `alias`: the finding it shows now, NULL
    // when it is fine. The same reading of the stored checksum as the scan's; the
    // content is hashed once (md5 is NULL exactly when the content is).
    let check = |alias: &str| {
        let stored = RowRecheck::stored_md5_sql(&format!("{alias}.{sq}"), s.get(2), s.get(3))?;
        let content = format!("{alias}.{cq}");
        Some(format!(
            "CASE WHEN {content} IS NULL THEN 'null_content' WHEN {stored} IS NULL THEN 'null_checksum'
                  WHEN md5({content}) <> {stored} THEN 'mismatch' END"
        ))
    };
    let (Some(check_t), Some(check_n)) = (check("t"), check("n")) else {
        tracing::warn!(upload_task_id = task.id, %relation, "checksum column type changed on the primary; still_holds left unknown");
        return Ok(None);
    };
    let table_sql = QualifiedName {
        schema: r.schema.clone(),
        name: r.table.clone(),
    }
    .quoted();
    // The key a finding names, as the key's type; NULL for another relation's findings
    // and for an empty key that cannot name a row. CASE keeps the cast from running on
    // those.
    let empty_ok = if key_is_text {
        "true"
    } else {
        "l.row_key <> ''"
    };
    let key = format!("CASE WHEN l.relation = $4 AND {empty_ok} THEN l.row_key::{key_type} END");
    Ok(Some(Recheck {
        holds: format!(
            "CASE WHEN l.relation IS DISTINCT FROM $4 OR NOT ({empty_ok}) THEN NULL
                  ELSE t.{kq} IS NOT NULL END"
        ),
        // `(… = …) IS TRUE` is no equality: the planner cannot make it a hash key, so
        // the content is hashed only for the rows whose key matched. Several rows with
        // one key (a key need not be unique) that show the finding give identical rows
        // (still_holds true), kept once under the unique index like any repeat.
        join: format!(
            "LEFT JOIN {table_sql} t ON t.{kq} = ({key}) AND (({check_t}) = l.finding) IS TRUE"
        ),
        holds_null_key: format!(
            "CASE WHEN l.relation IS DISTINCT FROM $4 THEN NULL
                  ELSE EXISTS (SELECT FROM {table_sql} n WHERE n.{kq} IS NULL AND ({check_n}) = l.finding) END"
        ),
    }))
}
