//! `merge`: upsert the result rows into the target by key. COPY into a temporary
//! table, then UPDATE the rows whose key exists (and whose values changed) and INSERT
//! the others, in the apply transaction.

use snapshot_runner::ident::quote_ident;
use tokio_postgres::Transaction;

use crate::apply::{check, copy_checked, execute_retrying_locks, rejected, Applied, Ctx};
use crate::target::{
    check_columns, record_materialization, resolve, superseded, target_name, Scope,
};
use crate::UploadError;

/// Apply a merge task. Params: `{"target": "<table, SQL syntax>", "key": ["col", …]}`;
/// key columns are raw names, as in the result file's header. A primary key or unique
/// index on exactly them must exist.
pub(crate) async fn merge(tx: &Transaction<'_>, ctx: &Ctx<'_>) -> Result<Applied, UploadError> {
    let task = ctx.task;
    let name = target_name(task)?;
    let keys: Vec<String> = task
        .params
        .get("key")
        .and_then(|v| v.as_array())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            rejected(
                task,
                "merge task without params.key (a list of key columns)",
            )
        })?
        .iter()
        .map(|k| {
            k.as_str()
                .map(str::to_string)
                .ok_or_else(|| rejected(task, "params.key: not a list of column names"))
        })
        .collect::<Result<_, _>>()?;
    let checked = check(tx, task, ctx.results_dir).await?;
    let target = resolve(tx, task, name).await?;
    if let Some(note) =
        superseded(tx, ctx, &target, &checked.snapshot_lsn, Scope::Task, false).await?
    {
        return Ok(Applied::skipped(note));
    }
    let columns = &checked.expected.columns;
    let column_list = check_columns(tx, task, &target, columns).await?;
    let missing: Vec<String> = keys
        .iter()
        .filter(|k| !columns.contains(k))
        .map(|k| quote_ident(k))
        .collect();
    if !missing.is_empty() {
        return Err(rejected(
            task,
            format!(
                "key column(s) {} are not in the result file",
                missing.join(", ")
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
        .map_err(UploadError::db(format!("reading the indexes of {}", target.name)))?
        .get(0);
    if !unique {
        return Err(UploadError::Target(format!(
            "merge target {}: no primary key or unique index on exactly ({}) to merge by (upload task {})",
            target.name,
            keys.iter().map(|k| quote_ident(k)).collect::<Vec<_>>().join(", "),
            task.id
        )));
    }

    // Undone if another run turns out to have materialized a newer snapshot meanwhile.
    tx.batch_execute("SAVEPOINT pgmaint_apply")
        .await
        .map_err(UploadError::db("starting the merge savepoint"))?;
    // The load table has the target's column types, so COPY parses each value once,
    // as the target would.
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE pgmaint_merge_load ON COMMIT DROP AS SELECT {column_list} FROM {} WITH NO DATA",
        target.name.quoted()
    ))
    .await
    .map_err(UploadError::db("creating the merge load table"))?;
    let rows = copy_checked(
        tx,
        task,
        &format!("COPY pgmaint_merge_load ({column_list}) FROM STDIN (FORMAT csv, HEADER true)"),
        &checked,
    )
    .await? as i64;

    let q = |c: &String| quote_ident(c);
    // `t.k = l.k` never matches a NULL key: such a row would be inserted again by every
    // run (a unique index lets NULLs repeat). Refuse the file, naming the column.
    let nulls = tx
        .query_one(
            &format!(
                "SELECT ARRAY[{}]::bigint[] FROM pgmaint_merge_load",
                keys.iter()
                    .map(|k| format!("count(*) FILTER (WHERE {} IS NULL)", q(k)))
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
                q(k)
            ),
        ));
    }

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

    let table = target.name.quoted();
    let key_match: Vec<String> = keys
        .iter()
        .map(|k| format!("t.{k} = l.{k}", k = q(k)))
        .collect();
    let key_match = key_match.join(" AND ");
    let others: Vec<String> = columns
        .iter()
        .filter(|c| !keys.contains(c))
        .map(q)
        .collect();
    // Two plain statements rather than INSERT … ON CONFLICT: its speculative insertion
    // costs about 2.5x a plain insert per row (scripts/bench/upload-load.sh). A row
    // inserted concurrently with the same key makes the INSERT fail on the unique
    // index: the apply rolls back and is retried.
    tx.batch_execute("ANALYZE pgmaint_merge_load")
        .await
        .map_err(UploadError::db("analyzing the merge load table"))?;
    if !others.is_empty() {
        // Rows that did not change are not rewritten: no dead tuples, no WAL for them.
        // Values are compared as text (bytewise): every type has a text form, while
        // json, xml, point, or a composite holding one, have no `=` for IS DISTINCT
        // FROM. A change in the printed form counts as a change, so an equal value
        // printed differently (1.0 and 1.00, '1 day' and '24 hours', -0 and 0, another
        // json spacing) is rewritten, as the result has it; no real change is missed.
        // Floats print exactly (shortest round-trip form) with extra_float_digits > 0,
        // whatever the server's setting.
        tx.batch_execute("SET LOCAL extra_float_digits = 3")
            .await
            .map_err(UploadError::db("setting extra_float_digits"))?;
        let as_text = |side: &str| {
            others
                .iter()
                .map(|c| format!("{side}.{c}::text COLLATE \"C\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let update = format!(
            "UPDATE {table} AS t SET {set} FROM pgmaint_merge_load l
              WHERE {key_match} AND ROW({old}) IS DISTINCT FROM ROW({new})",
            set = others
                .iter()
                .map(|c| format!("{c} = l.{c}"))
                .collect::<Vec<_>>()
                .join(", "),
            old = as_text("t"),
            new = as_text("l"),
        );
        execute_retrying_locks(
            tx,
            ctx,
            &update,
            &format!("merging into {} (update)", target.name),
        )
        .await?;
    }
    let insert = format!(
        "INSERT INTO {table} ({column_list})
         SELECT {l_list} FROM pgmaint_merge_load l WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE {key_match})",
        l_list = columns.iter().map(|c| format!("l.{}", q(c))).collect::<Vec<_>>().join(", "),
    );
    execute_retrying_locks(
        tx,
        ctx,
        &insert,
        &format!("merging into {} (insert)", target.name),
    )
    .await?;
    record_materialization(tx, task, &target, &checked.snapshot_lsn, rows).await?;
    Ok(Applied {
        rows,
        exclusive_since: None,
        drop_after: false,
        note: None,
    })
}
