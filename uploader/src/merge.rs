//! `merge`: upsert the result rows into the target by key. COPY into a temporary
//! table, then UPDATE the rows whose key exists (and whose values changed) and INSERT
//! the others, in the apply transaction.

use snapshot_runner::ident::quote_ident;
use snapshot_runner::results::MergePlan;
use tokio_postgres::Transaction;

use crate::apply::{copy_checked, execute_retrying_locks, rejected, Applied, Checked, Ctx};
use crate::queue::Claimed;
use crate::target::{check_columns, record_materialization, resolve, superseded, Scope, Target};
use crate::UploadError;

/// Apply a merge task: upsert the result file into `plan.target` by `plan.key`. Key
/// columns are raw names, as in the result file's header. A primary key or unique
/// index on exactly them must exist.
pub(crate) async fn merge(
    tx: &Transaction<'_>,
    ctx: &Ctx<'_>,
    checked: &Checked,
    plan: &MergePlan,
) -> Result<Applied, UploadError> {
    let task = ctx.task;
    let keys = &plan.key;
    let target = resolve(tx, task, plan.target.name().clone()).await?;
    if let Some(note) =
        superseded(tx, ctx, &target, &checked.snapshot_lsn, Scope::Task, false).await?
    {
        return Ok(Applied::skipped(note));
    }
    let columns = &checked.expected.columns;
    let column_list = check_columns(tx, task, &target, columns).await?;
    check_key(tx, task, &target, keys, columns).await?;

    // Undone if another run turns out to have materialized a newer snapshot meanwhile.
    tx.batch_execute("SAVEPOINT pgmaint_apply")
        .await
        .map_err(UploadError::db("starting the merge savepoint"))?;
    let rows = load(tx, task, &target, &column_list, checked).await? as i64;
    refuse_null_keys(tx, task, keys).await?;
    // Lock this task's materializations row of the target (held to commit) before
    // writing the target.
    if let Some(note) =
        superseded(tx, ctx, &target, &checked.snapshot_lsn, Scope::Task, true).await?
    {
        tx.batch_execute("ROLLBACK TO SAVEPOINT pgmaint_apply")
            .await
            .map_err(UploadError::db("discarding the merge load"))?;
        return Ok(Applied::skipped(note));
    }
    write(tx, ctx, &target, columns, &column_list, keys).await?;
    record_materialization(tx, task, &target, &checked.snapshot_lsn, rows).await?;
    Ok(Applied {
        rows,
        exclusive_since: None,
        drop_after: false,
        note: None,
    })
}

fn quoted_list(names: &[String]) -> String {
    names
        .iter()
        .map(|k| quote_ident(k))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The key columns are in the result file, and the target has a primary key or unique
/// index on exactly them (else a merge could match a row twice, or never).
async fn check_key(
    tx: &Transaction<'_>,
    task: &Claimed,
    target: &Target,
    keys: &[String],
    columns: &[String],
) -> Result<(), UploadError> {
    let missing: Vec<String> = keys
        .iter()
        .filter(|k| !columns.contains(k))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(rejected(
            task,
            format!(
                "key column(s) {} are not in the result file",
                quoted_list(&missing)
            ),
        ));
    }
    let unique: bool = tx
        .query_one(
            "SELECT EXISTS (
                 SELECT 1 FROM pg_index x
                  WHERE x.indrelid = $1 AND x.indisunique AND x.indimmediate
                    AND x.indpred IS NULL AND x.indexprs IS NULL
                    AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text)
                           FROM generate_series(0, x.indnkeyatts - 1) i
                           JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[i])
                        = (SELECT array_agg(k ORDER BY k) FROM unnest($2::text[]) k))",
            &[&target.oid, &keys],
        )
        .await
        .map_err(target.db_error("reading the indexes of"))?
        .get(0);
    if !unique {
        return Err(UploadError::Target(format!(
            "merge target {}: no primary key or unique index on exactly ({}) to merge by (upload task {})",
            target.name,
            quoted_list(keys),
            task.id
        )));
    }
    Ok(())
}

/// COPY the result file into `pgmaint_merge_load` (dropped at commit); the rows loaded.
async fn load(
    tx: &Transaction<'_>,
    task: &Claimed,
    target: &Target,
    column_list: &str,
    checked: &Checked,
) -> Result<u64, UploadError> {
    // The load table has the target's column types, so COPY parses each value once,
    // as the target would.
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE pgmaint_merge_load ON COMMIT DROP AS SELECT {column_list} FROM {} WITH NO DATA",
        target.name.quoted()
    ))
    .await
    .map_err(UploadError::db("creating the merge load table"))?;
    copy_checked(
        tx,
        task,
        &format!("COPY pgmaint_merge_load ({column_list}) FROM STDIN (FORMAT csv, HEADER true)"),
        checked,
    )
    .await
}

/// `t.k = l.k` never matches a NULL key: such a row would be inserted again by every
/// run (a unique index lets NULLs repeat). Refuse the file, naming the column.
async fn refuse_null_keys(
    tx: &Transaction<'_>,
    task: &Claimed,
    keys: &[String],
) -> Result<(), UploadError> {
    let nulls = tx
        .query_one(
            &format!(
                "SELECT ARRAY[{}]::bigint[] FROM pgmaint_merge_load",
                keys.iter()
                    .map(|k| format!("count(*) FILTER (WHERE {} IS NULL)", quote_ident(k)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            &[],
        )
        .await
        .map_err(UploadError::db("checking the merge keys for NULLs"))?
        .get::<_, Vec<i64>>(0);
    if let Some((k, n)) = keys.iter().zip(&nulls).find(|(_, n)| **n > 0) {
        return Err(rejected(
            task,
            format!(
                "key column {} is NULL in {n} row(s) of the result file: a NULL key matches no row, so a merge \
                 would insert those rows again on every run (make the key NOT NULL in the query, or filter them out)",
                quote_ident(k)
            ),
        ));
    }
    Ok(())
}

/// Write the loaded rows into the target: UPDATE the rows whose key exists and whose
/// values changed, INSERT the others.
///
/// Two plain statements rather than INSERT … ON CONFLICT: its speculative insertion
/// costs about 2.5x a plain insert per row (scripts/bench/upload-load.sh). A row
/// inserted concurrently with the same key makes the INSERT fail on the unique index:
/// the apply rolls back and is retried.
async fn write(
    tx: &Transaction<'_>,
    ctx: &Ctx<'_>,
    target: &Target,
    columns: &[String],
    column_list: &str,
    keys: &[String],
) -> Result<(), UploadError> {
    tx.batch_execute("ANALYZE pgmaint_merge_load")
        .await
        .map_err(UploadError::db("analyzing the merge load table"))?;
    let table = target.name.quoted();
    if let Some(update) = update_sql(&table, columns, keys) {
        // The update compares values through their text forms: floats must print
        // exactly (shortest round-trip form), whatever the server's setting.
        tx.batch_execute("SET LOCAL extra_float_digits = 3")
            .await
            .map_err(UploadError::db("setting extra_float_digits"))?;
        execute_retrying_locks(
            tx,
            ctx,
            &update,
            &format!("merging into {} (update)", target.name),
        )
        .await?;
    }
    execute_retrying_locks(
        tx,
        ctx,
        &insert_sql(&table, columns, column_list, keys),
        &format!("merging into {} (insert)", target.name),
    )
    .await?;
    Ok(())
}

/// `t.k1 = l.k1 AND …`: a target row `t` and a loaded row `l` with the same key.
fn key_match(keys: &[String]) -> String {
    keys.iter()
        .map(|k| format!("t.{k} = l.{k}", k = quote_ident(k)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The UPDATE of the target rows whose key is loaded and whose other values changed;
/// `None` when every column is a key column (nothing to update).
///
/// Rows that did not change are not rewritten: no dead tuples, no WAL for them.
/// Values are compared as text (bytewise): every type has a text form, while json,
/// xml, point, or a composite holding one, have no `=` for IS DISTINCT FROM. A change
/// in the printed form counts as a change, so an equal value printed differently (1.0
/// and 1.00, '1 day' and '24 hours', -0 and 0, another json spacing) is rewritten, as
/// the result has it; no real change is missed. Floats print exactly with
/// extra_float_digits > 0, which the caller sets.
fn update_sql(table: &str, columns: &[String], keys: &[String]) -> Option<String> {
    let others: Vec<String> = columns
        .iter()
        .filter(|c| !keys.contains(c))
        .map(|c| quote_ident(c))
        .collect();
    if others.is_empty() {
        return None;
    }
    let as_text = |side: &str| {
        others
            .iter()
            .map(|c| format!("{side}.{c}::text COLLATE \"C\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(format!(
        "UPDATE {table} AS t SET {set} FROM pgmaint_merge_load l
              WHERE {key_match} AND ROW({old}) IS DISTINCT FROM ROW({new})",
        set = others
            .iter()
            .map(|c| format!("{c} = l.{c}"))
            .collect::<Vec<_>>()
            .join(", "),
        key_match = key_match(keys),
        old = as_text("t"),
        new = as_text("l"),
    ))
}

/// The INSERT of the loaded rows whose key is not in the target.
fn insert_sql(table: &str, columns: &[String], column_list: &str, keys: &[String]) -> String {
    format!(
        "INSERT INTO {table} ({column_list})
         SELECT {l_list} FROM pgmaint_merge_load l WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE {key_match})",
        l_list = columns
            .iter()
            .map(|c| format!("l.{}", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", "),
        key_match = key_match(keys),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_update_rewrites_only_changed_rows_and_quotes_every_name() {
        let sql = update_sql("\"s\".\"T\"", &names(&["Day", "v"]), &names(&["Day"])).unwrap();
        assert_eq!(
            sql,
            "UPDATE \"s\".\"T\" AS t SET \"v\" = l.\"v\" FROM pgmaint_merge_load l
              WHERE t.\"Day\" = l.\"Day\" AND ROW(t.\"v\"::text COLLATE \"C\") IS DISTINCT FROM ROW(l.\"v\"::text COLLATE \"C\")"
        );
        assert_eq!(
            update_sql("t", &names(&["a", "b"]), &names(&["a", "b"])),
            None
        );
    }

    #[test]
    fn the_insert_adds_only_rows_whose_key_is_new() {
        assert_eq!(
            insert_sql("\"t\"", &names(&["a", "b"]), "\"a\", \"b\"", &names(&["a", "b"])),
            "INSERT INTO \"t\" (\"a\", \"b\")
         SELECT l.\"a\", l.\"b\" FROM pgmaint_merge_load l WHERE NOT EXISTS (SELECT 1 FROM \"t\" t WHERE t.\"a\" = l.\"a\" AND t.\"b\" = l.\"b\")"
        );
    }
}
