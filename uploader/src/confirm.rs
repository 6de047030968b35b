//! Confirm findings on the primary at upload time.
//!
//! A finding is true of the snapshot; by the time it is uploaded the row may have been
//! fixed (or deleted). For `row_checksum` findings, the rows they name are re-checked on
//! the primary, by key, with the same computation as the scan, and
//! `integrity_findings.still_holds` records the outcome: `false` marks a finding
//! resolved after the snapshot. Findings of other checks keep `still_holds` NULL.

use std::collections::HashMap;

use snapshot_runner::ident::quote_ident;
use tokio_postgres::Transaction;

use crate::queue::Claimed;
use crate::UploadError;

/// Keys re-checked per query.
const CHUNK: usize = 10_000;

fn param<'a>(task: &'a Claimed, name: &str) -> Option<&'a str> {
    task.params.get(name).and_then(|v| v.as_str())
}

/// Re-check the findings of `task` just loaded into `pgmaint_findings_load`.
pub(crate) async fn confirm(tx: &Transaction<'_>, task: &Claimed) -> Result<(), UploadError> {
    if param(task, "check") != Some("row_checksum") {
        return Ok(());
    }
    let (Some(relation), Some(schema), Some(table), Some(key), Some(content), Some(checksum)) = (
        param(task, "relation"),
        param(task, "schema"),
        param(task, "table"),
        param(task, "key"),
        param(task, "content"),
        param(task, "checksum"),
    ) else {
        tracing::warn!(
            task = task.id,
            "row_checksum findings without the params to re-check them; still_holds left unknown"
        );
        return Ok(());
    };
    let db = |what: &str| UploadError::db(format!("re-checking findings on {relation}: {what}"));
    // The columns' real types on the primary (names are raw catalog names).
    let rows = tx
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typname::text, t.typcategory::text
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               JOIN pg_type t ON t.oid = a.atttypid
              WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = ANY ($3)",
            &[&schema, &table, &vec![key, content, checksum]],
        )
        .await
        .map_err(db("reading the catalog"))?;
    let col = |name: &str| rows.iter().find(|r| r.get::<_, &str>(0) == name);
    let (Some(k), Some(_), Some(s)) = (col(key), col(content), col(checksum)) else {
        tracing::warn!(task = task.id, %relation, "table or columns gone on the primary; still_holds left unknown");
        return Ok(());
    };
    let key_type: String = k.get(1);
    let key_is_text = k.get::<_, &str>(3) == "S";
    let c = quote_ident(checksum);
    // Same normalisation of the stored checksum as the scan (snapshot-runner row_checksum).
    let stored = match (s.get::<_, &str>(2), s.get::<_, &str>(3)) {
        ("bytea", _) => format!("encode({c}, 'hex')"),
        ("uuid", _) => format!("replace({c}::text, '-', '')"),
        (_, "S") => format!("lower({c}::text)"),
        _ => {
            tracing::warn!(task = task.id, %relation, "checksum column type changed on the primary; still_holds left unknown");
            return Ok(());
        }
    };
    let (kq, cq) = (quote_ident(key), quote_ident(content));
    let recheck = format!(
        "SELECT {kq}::text,
                CASE WHEN md5({cq}) IS NULL THEN 'null_content' WHEN {stored} IS NULL THEN 'null_checksum'
                     WHEN md5({cq}) <> {stored} THEN 'mismatch' END
           FROM {}.{} WHERE {kq} = ANY ($1::text[]::{key_type}[])",
        quote_ident(schema),
        quote_ident(table)
    );

    let found = tx
        .query(
            "SELECT row_key, finding FROM pgmaint_findings_load WHERE relation = $1 ORDER BY row_key",
            &[&relation],
        )
        .await
        .map_err(db("reading the findings"))?;
    let findings: Vec<(String, String)> = found.iter().map(|r| (r.get(0), r.get(1))).collect();
    let (mut confirmed, mut resolved) = (0usize, 0usize);
    for chunk in findings.chunks(CHUNK) {
        // An empty key stands for a NULL key in the findings file: it cannot be
        // looked up, so its finding stays unknown (unless the key type is text).
        let keys: Vec<&str> = chunk
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| key_is_text || !k.is_empty())
            .collect();
        let now: HashMap<String, Option<String>> = tx
            .query(&recheck, &[&keys])
            .await
            .map_err(db("re-checking rows"))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let (mut ks, mut fs, mut holds) = (Vec::new(), Vec::new(), Vec::new());
        for (key, finding) in chunk {
            if !key_is_text && key.is_empty() {
                continue;
            }
            // A row that is gone, or whose content now matches, no longer holds.
            let h = now
                .get(key)
                .is_some_and(|f| f.as_deref() == Some(finding.as_str()));
            if h {
                confirmed += 1;
            } else {
                resolved += 1;
            }
            ks.push(key.as_str());
            fs.push(finding.as_str());
            holds.push(h);
        }
        tx.execute(
            "UPDATE pgmaint.integrity_findings f SET still_holds = v.h
               FROM unnest($4::text[], $5::text[], $6::bool[]) v(k, fi, h)
              WHERE f.run_id = $1 AND f.task_name = $2 AND f.relation = $3 AND f.row_key = v.k AND f.finding = v.fi",
            &[&task.run_id, &task.task_name, &relation, &ks, &fs, &holds],
        )
        .await
        .map_err(db("recording still_holds"))?;
    }
    if !findings.is_empty() {
        tracing::info!(task = task.id, %relation, confirmed, resolved, "findings re-checked on the primary");
    }
    Ok(())
}
