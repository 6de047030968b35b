//! Confirm findings on the primary at upload time.
//!
//! A finding is true of the snapshot; by the time it is uploaded the row may have been
//! fixed (or deleted). For `row_checksum` findings, the rows they name are re-checked on
//! the primary, by key, with the same computation as the scan, and
//! `integrity_findings.still_holds` records the outcome: `false` marks a finding
//! resolved after the snapshot. Findings of other checks keep `still_holds` NULL.
//! A finding's key is NULL when the row's key is NULL: it is re-checked against the
//! rows whose key IS NULL, while an empty text key is looked up like any other.

use std::collections::HashSet;

use snapshot_runner::ident::{quote_ident, QualifiedName};
use snapshot_runner::results::RowRecheck;
use tokio_postgres::Transaction;

use crate::queue::Claimed;
use crate::UploadError;

/// Keys re-checked per query.
const CHUNK: usize = 10_000;

/// A finding just inserted into `pgmaint.integrity_findings`.
pub(crate) struct Inserted {
    pub id: i64,
    pub relation: String,
    /// NULL when the row's key is NULL (not the same as an empty key).
    pub row_key: Option<String>,
    pub finding: String,
}

/// The re-check of one table, as SQL for the primary, built from the columns' types
/// there (names are quoted catalog names).
struct RecheckSql {
    /// `SELECT key::text, finding` of the rows whose key is in `$1` (text, cast to the
    /// key's type).
    by_key: String,
    /// `SELECT finding` of the rows whose key is NULL.
    null_key: String,
    /// Only a text key can be empty: an empty key of another type names no row (and
    /// cannot be cast to it).
    key_is_text: bool,
}

/// How many of the findings re-checked still hold; counts of the findings inserted by
/// this apply.
#[derive(Default)]
struct Tally {
    confirmed: usize,
    resolved: usize,
    unknown: usize,
}

/// Re-check on the primary the findings of `task` just inserted (`inserted`), and
/// record `still_holds` for each. A NULL key is looked up with `IS NULL` (all rows
/// whose key is NULL), any other key with `=`, an empty text key included.
pub(crate) async fn confirm(
    tx: &Transaction<'_>,
    task: &Claimed,
    r: &RowRecheck,
    inserted: &[Inserted],
) -> Result<(), UploadError> {
    let relation = r.relation.as_str();
    let findings: Vec<&Inserted> = inserted.iter().filter(|f| f.relation == relation).collect();
    if findings.is_empty() {
        return Ok(());
    }
    let Some(sql) = recheck_sql(tx, task, r).await? else {
        return Ok(());
    };
    let db = |what: &str| UploadError::db(format!("re-checking findings on {relation}: {what}"));
    // What the rows whose key is NULL show now (a unique key allows several).
    let null_now: HashSet<String> = if findings.iter().any(|f| f.row_key.is_none()) {
        tx.query(&sql.null_key, &[])
            .await
            .map_err(db("re-checking rows with a NULL key"))?
            .iter()
            .filter_map(|r| r.get::<_, Option<String>>(0))
            .collect()
    } else {
        HashSet::new()
    };
    let mut tally = Tally::default();
    for chunk in findings.chunks(CHUNK) {
        recheck_chunk(tx, &sql, relation, chunk, &null_now, &mut tally).await?;
    }
    let Tally {
        confirmed,
        resolved,
        unknown,
    } = tally;
    // Counts of the findings inserted by this apply: confirmed + resolved + unknown.
    tracing::info!(upload_task_id = task.id, %relation, confirmed, resolved, unknown, "findings re-checked on the primary");
    Ok(())
}

/// The re-check SQL for the table as it is on the primary now; `None` (with a warning)
/// when the table, a column or the checksum's type is not what the scan saw.
async fn recheck_sql(
    tx: &Transaction<'_>,
    task: &Claimed,
    r: &RowRecheck,
) -> Result<Option<RecheckSql>, UploadError> {
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
    // The same reading of the stored checksum as the scan's.
    let stored = RowRecheck::stored_md5_sql(&quote_ident(&r.checksum), s.get(2), s.get(3));
    let Some(stored) = stored else {
        tracing::warn!(upload_task_id = task.id, %relation, "checksum column type changed on the primary; still_holds left unknown");
        return Ok(None);
    };
    let (kq, cq) = (quote_ident(&r.key), quote_ident(&r.content));
    let table_sql = QualifiedName {
        schema: r.schema.clone(),
        name: r.table.clone(),
    }
    .quoted();
    let check = format!(
        "CASE WHEN md5({cq}) IS NULL THEN 'null_content' WHEN {stored} IS NULL THEN 'null_checksum'
              WHEN md5({cq}) <> {stored} THEN 'mismatch' END"
    );
    Ok(Some(RecheckSql {
        by_key: format!(
            "SELECT {kq}::text, {check} FROM {table_sql} WHERE {kq} = ANY ($1::text[]::{key_type}[])"
        ),
        null_key: format!("SELECT {check} FROM {table_sql} WHERE {kq} IS NULL"),
        key_is_text: k.get::<_, &str>(3) == "S",
    }))
}

/// Re-check one chunk of findings on `relation` and record `still_holds` for each.
async fn recheck_chunk(
    tx: &Transaction<'_>,
    sql: &RecheckSql,
    relation: &str,
    chunk: &[&Inserted],
    null_now: &HashSet<String>,
    tally: &mut Tally,
) -> Result<(), UploadError> {
    let db = |what: &str| UploadError::db(format!("re-checking findings on {relation}: {what}"));
    let lookup = |k: &str| sql.key_is_text || !k.is_empty();
    let keys: Vec<&str> = chunk
        .iter()
        .filter_map(|f| f.row_key.as_deref())
        .filter(|k| lookup(k))
        .collect();
    // (key, finding) of the rows as they are now.
    let now: HashSet<(String, String)> = if keys.is_empty() {
        HashSet::new()
    } else {
        tx.query(&sql.by_key, &[&keys])
            .await
            .map_err(db("re-checking rows"))?
            .iter()
            .filter_map(|r| Some((r.get::<_, String>(0), r.get::<_, Option<String>>(1)?)))
            .collect()
    };
    let (mut ids, mut holds) = (Vec::new(), Vec::new());
    for f in chunk {
        // A row that is gone, or whose content now matches, no longer holds.
        let h = match f.row_key.as_deref() {
            None => null_now.contains(&f.finding),
            Some(k) if lookup(k) => now.contains(&(k.to_string(), f.finding.clone())),
            Some(_) => {
                tally.unknown += 1;
                continue;
            }
        };
        if h {
            tally.confirmed += 1;
        } else {
            tally.resolved += 1;
        }
        ids.push(f.id);
        holds.push(h);
    }
    tx.execute(
        "UPDATE pgmaint.integrity_findings f SET still_holds = v.h
           FROM unnest($1::bigint[], $2::bool[]) v(id, h) WHERE f.id = v.id",
        &[&ids, &holds],
    )
    .await
    .map_err(db("recording still_holds"))?;
    Ok(())
}
