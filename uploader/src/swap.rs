//! `swap`: replace the target's contents by the result file, in one transaction.
//!
//! 1. Build a staging table next to the target (`LIKE target` with defaults, CHECK
//!    and NOT NULL constraints, identity, storage, compression, column comments and
//!    statistics objects), COPY the file into it, then create the target's indexes on
//!    it (building an index once after the load is faster than maintaining it during
//!    the load), and ANALYZE it. Readers of the target are not disturbed meanwhile.
//! 2. Lock the target's `pgmaint.materializations` rows and give up (completed,
//!    nothing applied, the staging work rolled back) if another run (of any task)
//!    already put a snapshot at least as new into it. Take ACCESS EXCLUSIVE on the
//!    target (bounded by `lock_timeout`, retried in a savepoint) and check again
//!    what step 1 relied on: a view, foreign key or trigger that appeared, or a
//!    column, constraint or index added or altered meanwhile (even `CREATE INDEX
//!    CONCURRENTLY`), fails the attempt, which is retried later. Then rename the
//!    target and its indexes away, rename the staging table, its indexes and
//!    statistics objects to the old names, turn the constraint indexes back into
//!    PRIMARY KEY / UNIQUE constraints, and re-apply owner, grants (table and
//!    column), table comment, index comments, CLUSTER and REPLICA IDENTITY
//!    settings; serial sequences are handed over; an identity column's new sequence
//!    takes its old one's place: its name, position (`last_value`), grants and
//!    comment (owner and options are the table's and were copied), so
//!    `pg_get_serial_sequence` and `SELECT … FROM idt_id_seq` work as before. All
//!    of that is one round trip of catalog updates. Then commit: readers waiting on
//!    the lock see the new table, never an empty or half-built one. `\d target` and
//!    `\dp target` look as before.
//! 3. After the commit, drop the old table in its own transaction (dropping it inside
//!    the swap would make COMMIT unlink its files while the lock is held). The swap's
//!    transaction records the old table's OID and new name in `pgmaint.swapped_out`;
//!    only a table recorded there, still under that name, is ever dropped (a leftover
//!    of a worker that died before its drop is dropped after a later swap). A user's
//!    table named like one (`pgmaint_swap_old_…`) is never touched.
//!
//! Not carried over: the table's tablespace, per-column statistics targets, and the
//! grantor recorded on grants (they are re-granted by the uploader's role, or by the
//! owner when it is a superuser).
//!
//! A swap refuses (with a message naming each obstacle) a target that other objects
//! depend on or that carries state a rename would lose: views, foreign keys in either
//! direction, triggers, row-level security, inheritance or partitioning,
//! publications, rules, exclusion constraints, or anything else that depends on the
//! table, its row type or its identity sequences (a view or default reading the
//! sequence would stay with the old one, which goes with the old table). Those need a
//! `merge` instead, or an operator's decision.

use std::time::Instant;

use snapshot_runner::ident::quote_ident;
use snapshot_runner::results::SwapPlan;
use tokio_postgres::types::ToSql;
use tokio_postgres::Transaction;

use crate::apply::{copy_checked, execute_retrying_locks, Applied, Checked, Ctx};
use crate::queue::Claimed;
use crate::target::{check_columns, record_materialization, resolve, superseded, Scope, Target};
use crate::UploadError;

/// Name prefix of a swapped-out table, dropped after the swap commits.
const OLD_PREFIX: &str = "pgmaint_swap_old_";

/// Drop the tables earlier swaps renamed away (normally just the one the swap that
/// just committed left; more if a worker died between its commit and this drop, or a
/// drop failed). Only tables recorded in `pgmaint.swapped_out` by the swap's own
/// transaction are candidates, and each is dropped only while its recorded OID still
/// has its recorded name: a user's table named like one (`pgmaint_swap_old_…`) is
/// never touched. Each in its own short transaction (on the apply connection, whose
/// session bounds lock waits with `lock_timeout`); failures are left for the next swap.
pub(crate) async fn drop_old_tables(client: &mut tokio_postgres::Client) {
    let recorded = match client
        .query(
            "SELECT relid, schema_name, table_name FROM pgmaint.swapped_out ORDER BY swapped_at, relid",
            &[],
        )
        .await
    {
        Ok(rows) => rows
            .iter()
            .map(|r| (r.get::<_, u32>(0), r.get::<_, String>(1), r.get::<_, String>(2)))
            .collect::<Vec<_>>(),
        Err(e) => return tracing::warn!(error = %e, "could not list swapped-out tables"),
    };
    for (relid, schema, name) in recorded {
        let table = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
        match drop_old_table(client, relid, &schema, &name, &table).await {
            Ok(Dropped::Yes) => tracing::debug!(table = %table, "dropped the swapped-out table"),
            Ok(Dropped::Busy) => {}
            Ok(Dropped::Forgotten(why)) => {
                tracing::info!(table = %table, relid, "swapped-out table {why}: left alone, no longer tracked")
            }
            Err(e) => {
                tracing::warn!(table = %table, error = %e, "could not drop a swapped-out table; the next swap retries")
            }
        }
    }
}

enum Dropped {
    Yes,
    /// Another worker is on it, or it was renamed back and forth meanwhile: next time.
    Busy,
    /// Renamed, moved or dropped by someone else: not ours to drop any more.
    Forgotten(&'static str),
}

async fn drop_old_table(
    client: &mut tokio_postgres::Client,
    relid: u32,
    schema: &str,
    name: &str,
    table: &str,
) -> Result<Dropped, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let claimed = tx
        .query_opt(
            "SELECT 1 FROM pgmaint.swapped_out WHERE relid = $1 FOR UPDATE SKIP LOCKED",
            &[&relid],
        )
        .await?;
    if claimed.is_none() {
        return Ok(Dropped::Busy);
    }
    let row = tx
        .query_one(
            "SELECT (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE n.nspname = $2 AND c.relname = $3) = $1,
                    EXISTS (SELECT 1 FROM pg_class WHERE oid = $1)",
            &[&relid, &schema, &name],
        )
        .await?;
    let (named, exists): (Option<bool>, bool) = (row.get(0), row.get(1));
    let forget = "DELETE FROM pgmaint.swapped_out WHERE relid = $1";
    if named != Some(true) {
        tx.execute(forget, &[&relid]).await?;
        tx.commit().await?;
        return Ok(Dropped::Forgotten(if exists {
            "was renamed or moved since the swap"
        } else {
            "was dropped by someone else"
        }));
    }
    // Lock it by name, then check that the name still leads to the recorded OID: under
    // the lock nothing can rename it, so the DROP below drops exactly that table.
    tx.batch_execute(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        .await?;
    let same: Option<bool> = tx
        .query_one("SELECT to_regclass($1)::oid = $2", &[&table, &relid])
        .await?
        .get(0);
    if same != Some(true) {
        return Ok(Dropped::Busy);
    }
    tx.batch_execute(&format!("DROP TABLE {table}")).await?;
    tx.execute(forget, &[&relid]).await?;
    tx.commit().await?;
    Ok(Dropped::Yes)
}

/// A catalog query about a swap target (`$1`: its oid), one line of text a row.
struct AboutTarget {
    /// What it does, for its errors ("`doing` <target>").
    doing: &'static str,
    sql: &'static str,
}

impl AboutTarget {
    async fn lines(&self, tx: &Transaction<'_>, t: &Target) -> Result<Vec<String>, UploadError> {
        texts(tx, self.sql, &[&t.oid], t.db_error(self.doing)).await
    }
}

/// Everything that would make dropping and renaming the target unsafe or lossy.
const BLOCKERS: AboutTarget = AboutTarget {
    doing: "checking what depends on",
    sql: "
SELECT format('view %s depends on it', r.ev_class::regclass)
  FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
 WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
   AND d.refobjid = $1 AND r.ev_class <> $1
UNION ALL
SELECT format('foreign key %I of %s references it', conname, conrelid::regclass)
  FROM pg_constraint WHERE contype = 'f' AND confrelid = $1 AND conrelid <> $1
UNION ALL
SELECT format('it has foreign key %I', conname) FROM pg_constraint WHERE contype = 'f' AND conrelid = $1
UNION ALL
SELECT format('it has exclusion constraint %I', conname) FROM pg_constraint WHERE contype = 'x' AND conrelid = $1
UNION ALL
SELECT format('it has trigger %I', tgname) FROM pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal
UNION ALL
SELECT 'it has row-level security or policies' FROM pg_class c
 WHERE c.oid = $1 AND (c.relrowsecurity OR EXISTS (SELECT 1 FROM pg_policy WHERE polrelid = $1))
UNION ALL
SELECT 'it is part of an inheritance or partition tree'
 WHERE EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = $1 OR inhparent = $1)
UNION ALL
SELECT format('it is in publication %I', p.pubname)
  FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid WHERE pr.prrelid = $1
UNION ALL
SELECT format('it has rule %I', rulename) FROM pg_rewrite WHERE ev_class = $1 AND rulename <> '_RETURN'
UNION ALL
SELECT format('%s depends on it', pg_describe_object(d.classid, d.objid, d.objsubid))
  FROM pg_depend d, pg_class c
 WHERE c.oid = $1 AND d.deptype = 'n'
   AND ((d.refclassid = 'pg_class'::regclass AND d.refobjid = $1) OR (d.refclassid = 'pg_type'::regclass AND d.refobjid = c.reltype))
   AND d.classid NOT IN ('pg_rewrite'::regclass, 'pg_constraint'::regclass, 'pg_trigger'::regclass,
                         'pg_policy'::regclass, 'pg_publication_rel'::regclass)
   AND NOT (d.classid = 'pg_class'::regclass AND d.objid = $1)
UNION ALL
SELECT DISTINCT format('%s depends on its identity sequence %s',
                       CASE WHEN d.classid = 'pg_rewrite'::regclass
                            THEN (SELECT format('view %s', r.ev_class::regclass) FROM pg_rewrite r WHERE r.oid = d.objid)
                            ELSE pg_describe_object(d.classid, d.objid, d.objsubid) END,
                       s.oid::regclass)
  FROM pg_depend i
  JOIN pg_class s ON s.oid = i.objid AND s.relkind = 'S'
  JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = s.oid AND d.deptype = 'n'
 WHERE i.classid = 'pg_class'::regclass AND i.refclassid = 'pg_class'::regclass AND i.refobjid = $1
   AND i.deptype = 'i'",
};

/// The first column, as text, of every row `sql` returns.
async fn texts(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    error: impl FnOnce(tokio_postgres::Error) -> UploadError,
) -> Result<Vec<String>, UploadError> {
    let rows = tx.query(sql, params).await.map_err(error)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn refuse_if_blocked(
    tx: &Transaction<'_>,
    ctx: &Ctx<'_>,
    t: &Target,
) -> Result<(), UploadError> {
    let why = BLOCKERS.lines(tx, t).await?;
    if why.is_empty() {
        return Ok(());
    }
    Err(UploadError::Target(format!(
        "swap target {} cannot be replaced safely: {} (remove them, or apply with kind merge; upload task {})",
        t.name,
        why.join("; "),
        ctx.task.id
    )))
}

/// The target's definition as the staging table copies it: persistence and storage
/// parameters, columns (type, NOT NULL, default, identity, generated, collation,
/// storage, compression, comment), constraints, indexes (definition, CLUSTER, REPLICA
/// IDENTITY, validity, comments), statistics objects and identity sequence options,
/// one line each. Read before the
/// staging table is built and again under the exclusive lock: any difference means
/// something was added or altered meanwhile, which the new table would lack.
const SHAPE: AboutTarget = AboutTarget {
    doing: "reading the definition of",
    sql: "
SELECT format('rel %s %s %s', relkind, relpersistence, reloptions) FROM pg_class WHERE oid = $1
UNION ALL
SELECT format('col %s %I %s notnull=%s identity=%s generated=%s collation=%s storage=%s compression=%s default=%s comment=%s',
              a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity, a.attgenerated,
              a.attcollation, a.attstorage, a.attcompression, pg_get_expr(d.adbin, d.adrelid),
              col_description(a.attrelid, a.attnum))
  FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT format('constraint %I %s comment=%s', conname, pg_get_constraintdef(oid), obj_description(oid, 'pg_constraint'))
  FROM pg_constraint WHERE conrelid = $1
UNION ALL
SELECT format('index %s clustered=%s replident=%s valid=%s comment=%s', pg_get_indexdef(indexrelid), indisclustered,
              indisreplident, indisvalid, obj_description(indexrelid, 'pg_class'))
  FROM pg_index WHERE indrelid = $1
UNION ALL
SELECT format('statistics %s', pg_get_statisticsobjdef(oid)) FROM pg_statistic_ext WHERE stxrelid = $1
UNION ALL
SELECT format('identity sequence of %I: %s start=%s increment=%s min=%s max=%s cache=%s cycle=%s',
              a.attname, s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle)
  FROM pg_depend d
  JOIN pg_sequence s ON s.seqrelid = d.objid
  JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
 WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid = $1
   AND d.deptype = 'i'
ORDER BY 1",
};

/// Under the exclusive lock: fail this attempt (retried later, against the table as
/// it now is) if a view, foreign key, trigger, … appeared, or the definition changed,
/// since the checks and plans made before the staging table was built.
async fn recheck_under_lock(
    tx: &Transaction<'_>,
    ctx: &Ctx<'_>,
    t: &Target,
    before: &[String],
) -> Result<(), UploadError> {
    let why = BLOCKERS.lines(tx, t).await?;
    if !why.is_empty() {
        return Err(UploadError::Changed(
            format!(
                "swap target {} changed during the apply: {} (appeared while the staging table was built; \
                 rolled back, to be retried; upload task {})",
                t.name,
                why.join("; "),
                ctx.task.id
            )
            .replace('\n', " "),
        ));
    }
    let now = SHAPE.lines(tx, t).await?;
    if now != before {
        let mut diff: Vec<String> = before
            .iter()
            .filter(|l| !now.contains(l))
            .map(|l| format!("was: {l}"))
            .chain(
                now.iter()
                    .filter(|l| !before.contains(l))
                    .map(|l| format!("now: {l}")),
            )
            .collect();
        let more = diff.len().saturating_sub(4);
        diff.truncate(4);
        if more > 0 {
            diff.push(format!("{more} more"));
        }
        return Err(UploadError::Changed(
            format!(
                "swap target {} changed during the apply ({}); rolled back, to be retried (upload task {})",
                t.name,
                diff.join("; "),
                ctx.task.id
            )
            .replace('\n', " "),
        ));
    }
    Ok(())
}

/// The identity sequences of the target ($1) and of the staging table ($2), paired by
/// column, as statements that give the new sequence the old one's place: phase 0, at
/// the start of the exchange, renames the old sequence away (`$3_q<k>`, $3 being the
/// old table's new name), carries its position over and gives its name to the new
/// one; phase 1, once the table's owner is restored (an identity sequence's owner is
/// its table's), copies its grants (when either has any: `REVOKE` what the new one
/// holds, `GRANT` what the old one held) and its comment. Sequence options were copied
/// by `LIKE … INCLUDING IDENTITY` (and are part of the shape checked under the lock).
const IDENTITY_SEQUENCES: &str = "
WITH cols AS (
  SELECT row_number() OVER (ORDER BY a.attnum) AS k, a.attname, od.objid AS old_oid, nd.objid AS new_oid
    FROM pg_attribute a
    JOIN pg_depend od ON od.classid = 'pg_class'::regclass AND od.refclassid = 'pg_class'::regclass
                     AND od.refobjid = a.attrelid AND od.refobjsubid = a.attnum AND od.deptype = 'i'
    JOIN pg_attribute na ON na.attrelid = $2::text::regclass AND na.attname = a.attname
    JOIN pg_depend nd ON nd.classid = 'pg_class'::regclass AND nd.refclassid = 'pg_class'::regclass
                     AND nd.refobjid = na.attrelid AND nd.refobjsubid = na.attnum AND nd.deptype = 'i'
   WHERE a.attrelid = $1 AND a.attidentity <> '' AND a.attnum > 0 AND NOT a.attisdropped),
pairs AS (
  SELECT k, old_oid, os.relname AS name, os.relacl AS old_acl, os.relowner AS old_owner, ns.relacl AS new_acl,
         format('%I.%I', ons.nspname, os.relname) AS old_seq,
         $3 || '_q' || k AS away,
         format('%I.%I', ons.nspname, $3 || '_q' || k) AS old_away,
         format('%I.%I', nns.nspname, ns.relname) AS new_seq,
         format('%I.%I', nns.nspname, os.relname) AS final
    FROM cols
    JOIN pg_class os ON os.oid = old_oid AND os.relkind = 'S' JOIN pg_namespace ons ON ons.oid = os.relnamespace
    JOIN pg_class ns ON ns.oid = new_oid AND ns.relkind = 'S' JOIN pg_namespace nns ON nns.oid = ns.relnamespace)
SELECT phase, stmt FROM (
  SELECT 0, k, 1, format('ALTER SEQUENCE %s RENAME TO %I', old_seq, away) FROM pairs
  UNION ALL
  SELECT 0, k, 2, format('SELECT setval(%L, s.last_value, s.is_called) FROM %s s', new_seq, old_away) FROM pairs
  UNION ALL
  SELECT 0, k, 3, format('ALTER SEQUENCE %s RENAME TO %I', new_seq, name) FROM pairs
  UNION ALL
  SELECT 1, k, 4, format('REVOKE ALL ON SEQUENCE %s FROM %s', final,
                         CASE WHEN g.r = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.r)) END)
    FROM pairs, LATERAL (SELECT old_owner UNION SELECT grantee FROM aclexplode(new_acl)) g(r)
   WHERE old_acl IS NOT NULL OR new_acl IS NOT NULL
  UNION ALL
  SELECT 1, k, 5, format('GRANT %s ON SEQUENCE %s TO %s%s', a.privilege_type, final,
                         CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
                         CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
    FROM pairs, aclexplode(coalesce(old_acl, acldefault('s', old_owner))) a
   WHERE old_acl IS NOT NULL OR new_acl IS NOT NULL
  UNION ALL
  SELECT 1, k, 6, format('COMMENT ON SEQUENCE %s IS %L', final, obj_description(old_oid, 'pg_class'))
    FROM pairs WHERE obj_description(old_oid, 'pg_class') IS NOT NULL
) s(phase, k, step, stmt)
ORDER BY phase, k, step";

/// One index of the target, and how to rebuild it on the staging table.
struct IndexPlan {
    name: String,
    temp: String,
    /// `CREATE INDEX temp ON staging USING …`.
    create: String,
    /// PRIMARY KEY or UNIQUE constraint it backs: `(kind, deferrable, deferred)`.
    constraint: Option<(String, bool, bool)>,
    /// `quote_literal()` of the index's and the constraint's comments.
    comment: Option<String>,
    constraint_comment: Option<String>,
    clustered: bool,
    replica_identity: bool,
}

async fn plan_indexes(
    tx: &Transaction<'_>,
    ctx: &Ctx<'_>,
    t: &Target,
    staging: &str,
) -> Result<Vec<IndexPlan>, UploadError> {
    // pg_get_indexdef() prints `CREATE [UNIQUE ]INDEX <name> ON <schema>.<table> USING …`
    // with quote_ident() quoting; the rest (method, columns, opclasses, INCLUDE,
    // WITH, WHERE) is what we reuse on the staging table.
    let rows = tx
        .query(
            "SELECT ic.relname::text, x.indisunique, pg_get_indexdef(x.indexrelid),
                    format('CREATE %sINDEX %s ON %s.%s USING ', CASE WHEN x.indisunique THEN 'UNIQUE ' ELSE '' END,
                           quote_ident(ic.relname), quote_ident(n.nspname), quote_ident(c.relname)),
                    con.contype::text, coalesce(con.condeferrable, false), coalesce(con.condeferred, false),
                    quote_literal(obj_description(x.indexrelid, 'pg_class')),
                    quote_literal(obj_description(con.oid, 'pg_constraint')),
                    x.indisclustered, x.indisreplident
               FROM pg_index x
               JOIN pg_class ic ON ic.oid = x.indexrelid
               JOIN pg_class c ON c.oid = x.indrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
               LEFT JOIN pg_constraint con ON con.conindid = x.indexrelid AND con.conrelid = x.indrelid
                                          AND con.contype IN ('p', 'u')
              WHERE x.indrelid = $1 ORDER BY x.indexrelid",
            &[&t.oid],
        )
        .await
        .map_err(t.db_error("reading the indexes of"))?;
    let mut plans = Vec::new();
    for (k, r) in rows.iter().enumerate() {
        let name: String = r.get(0);
        let unique: bool = r.get(1);
        let def: String = r.get(2);
        let prefix: String = r.get(3);
        let rest = def.strip_prefix(&prefix).ok_or_else(|| {
            UploadError::Target(format!(
                "swap target {}: cannot reproduce index {} ({def}); upload task {}",
                t.name,
                quote_ident(&name),
                ctx.task.id
            ))
        })?;
        let temp = format!("pgmaint_swap_{}_i{k}", ctx.task.id);
        plans.push(IndexPlan {
            create: format!(
                "CREATE {}INDEX {} ON {staging} USING {rest}",
                if unique { "UNIQUE " } else { "" },
                quote_ident(&temp)
            ),
            temp,
            constraint: r
                .get::<_, Option<String>>(4)
                .map(|kind| (kind, r.get(5), r.get(6))),
            comment: r.get(7),
            constraint_comment: r.get(8),
            clustered: r.get(9),
            replica_identity: r.get(10),
            name,
        });
    }
    Ok(plans)
}

/// Apply a swap task: replace `plan.target` by the result file (`checked`).
pub(crate) async fn swap(
    tx: &Transaction<'_>,
    ctx: &Ctx<'_>,
    checked: &Checked,
    plan: &SwapPlan,
) -> Result<Applied, UploadError> {
    let task = ctx.task;
    let t = resolve(tx, task, plan.target.name().clone()).await?;
    let column_list = check_columns(tx, task, &t, &checked.expected.columns).await?;
    if let Some(note) = superseded(tx, ctx, &t, &checked.snapshot_lsn, Scope::Target, false).await?
    {
        return Ok(Applied::skipped(note));
    }
    refuse_if_blocked(tx, ctx, &t).await?;

    let schema = quote_ident(&t.name.schema);
    let staging_name = format!("pgmaint_swap_{}", task.id);
    let staging = format!("{schema}.{}", quote_ident(&staging_name));
    let target = t.name.quoted();
    let db = |what: &str| t.swap_error(what);

    // What the staging table is built from; checked again under the exclusive lock.
    let before = SHAPE.lines(tx, &t).await?;
    let indexes = plan_indexes(tx, ctx, &t, &staging).await?;
    // Undone if another run turns out to have materialized a newer snapshot meanwhile.
    tx.batch_execute("SAVEPOINT pgmaint_apply")
        .await
        .map_err(db("starting the staging savepoint"))?;

    // 1. Build the staging table beside the target.
    let rows = build_staging(tx, task, &t, &staging, &column_list, checked, &indexes).await?;

    // 2. The short exclusive part. First the target's materializations rows (held to
    // commit: a concurrent apply of the same target decides after this one), then the
    // table; every apply takes them in that order.
    if let Some(note) = superseded(tx, ctx, &t, &checked.snapshot_lsn, Scope::Target, true).await? {
        tx.batch_execute("ROLLBACK TO SAVEPOINT pgmaint_apply")
            .await
            .map_err(db("dropping the staging table"))?;
        return Ok(Applied::skipped(note));
    }
    execute_retrying_locks(
        tx,
        ctx,
        &format!("LOCK TABLE {target} IN ACCESS EXCLUSIVE MODE"),
        &format!("locking {}", t.name),
    )
    .await?;
    let locked_at = Instant::now();
    // Nothing can alter the target now. A view, foreign key or trigger created, or an
    // index built (even CONCURRENTLY), since the checks above would be left on the old
    // table, or missing from the new one, by the renames below (and the DROP of the
    // old table only runs after the commit, so it cannot roll this back): check again,
    // and retry the whole apply if anything changed.
    recheck_under_lock(tx, ctx, &t, &before).await?;
    // Owner, grants and comment of the old table, as statements for the new one (the
    // server quotes names with %I and texts with %L).
    let restore = texts(
        tx,
        "SELECT stmt FROM (
             SELECT 1, format('ALTER TABLE %s OWNER TO %I', $2::text, pg_get_userbyid(relowner)) FROM pg_class WHERE oid = $1
             UNION ALL
             SELECT 2, format('REVOKE ALL ON TABLE %s FROM %I', $2::text, pg_get_userbyid(relowner))
               FROM pg_class WHERE oid = $1 AND relacl IS NOT NULL
             UNION ALL
             SELECT 3, format('GRANT %s ON TABLE %s TO %s%s', a.privilege_type, $2::text,
                           CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
                           CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
               FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = $1
             UNION ALL
             SELECT 4, format('GRANT %s (%I) ON TABLE %s TO %s%s', a.privilege_type, att.attname, $2::text,
                           CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
                           CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
               FROM pg_attribute att, aclexplode(att.attacl) a
              WHERE att.attrelid = $1 AND att.attnum > 0 AND NOT att.attisdropped AND att.attacl IS NOT NULL
             UNION ALL
             SELECT 5, format('COMMENT ON TABLE %s IS %L', $2::text, obj_description($1, 'pg_class'))
              WHERE obj_description($1, 'pg_class') IS NOT NULL
             UNION ALL
             SELECT 6, format('ALTER TABLE %s REPLICA IDENTITY %s', $2::text,
                           CASE relreplident WHEN 'f' THEN 'FULL' WHEN 'n' THEN 'NOTHING' END)
               FROM pg_class WHERE oid = $1 AND relreplident IN ('f', 'n')) s(ord, stmt) ORDER BY ord",
        &[&t.oid, &target],
        db("reading owner, grants and comment"),
    )
    .await?;
    // Sequences owned by the target's columns (serial) would go with it: hand them over.
    let sequences = texts(
        tx,
        "SELECT format('ALTER SEQUENCE %s OWNED BY %s.%I', d.objid::regclass, $2::text, a.attname)
           FROM pg_depend d
           JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
           JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
          WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
            AND d.refobjid = $1 AND d.deptype = 'a'",
        &[&t.oid, &staging],
        db("reading owned sequences"),
    )
    .await?;
    // The old table is renamed away, not dropped: dropping a big table makes COMMIT
    // unlink its files while the lock is still held (about 60 ms for 1M rows). It is
    // dropped right after the commit instead (`drop_old_tables`).
    let old_name = format!("{OLD_PREFIX}{}", task.id);
    // Identity columns got a new sequence with the staging table (an identity sequence
    // cannot change tables). It takes the old one's place: the old one is renamed away
    // (it goes with the old table), the new one carries on from the old position and
    // takes its name; after the owner is restored, its grants and comment too.
    let identity = tx
        .query(IDENTITY_SEQUENCES, &[&t.oid, &staging, &old_name])
        .await
        .map_err(db("reading identity sequences"))?;
    let (identity_pre, identity_post): (Vec<_>, Vec<_>) =
        identity.iter().partition(|r| r.get::<_, i32>(0) == 0);
    let mut sequences = sequences;
    sequences.extend(identity_pre.iter().map(|r| r.get::<_, String>(1)));

    let mut sql: Vec<String> = sequences;
    sql.push(format!(
        "ALTER TABLE {target} RENAME TO {}",
        quote_ident(&old_name)
    ));
    for (k, ix) in indexes.iter().enumerate() {
        // Frees the index (and constraint) names for the new table's indexes.
        sql.push(format!(
            "ALTER INDEX {schema}.{} RENAME TO {}",
            quote_ident(&ix.name),
            quote_ident(&format!("{old_name}_i{k}"))
        ));
    }
    // Extended statistics: LIKE copied them (in OID order) under generated names;
    // give them the old names.
    let stats = tx
        .query(
            "WITH o AS (SELECT stxnamespace::regnamespace::text AS nsp, stxname, row_number() OVER (ORDER BY oid) AS k
                          FROM pg_statistic_ext WHERE stxrelid = $1),
                  n AS (SELECT stxnamespace::regnamespace::text AS nsp, stxname, row_number() OVER (ORDER BY oid) AS k
                          FROM pg_statistic_ext WHERE stxrelid = $2::text::regclass)
             SELECT format('ALTER STATISTICS %s.%I RENAME TO %I', o.nsp, o.stxname, $3 || '_s' || o.k),
                    format('ALTER STATISTICS %s.%I RENAME TO %I', n.nsp, n.stxname, o.stxname)
               FROM o JOIN n USING (k)",
            &[&t.oid, &staging, &old_name],
        )
        .await
        .map_err(db("reading statistics objects"))?;
    for r in &stats {
        sql.push(r.get(0));
    }
    for r in &stats {
        sql.push(r.get(1));
    }
    sql.push(format!(
        "ALTER TABLE {staging} RENAME TO {}",
        quote_ident(&t.name.name)
    ));
    sql.extend(install_indexes(&indexes, &schema, &target));
    sql.extend(restore);
    sql.extend(identity_post.iter().map(|r| r.get::<_, String>(1)));
    // One round trip for the whole exchange: the lock is held for as short as possible.
    let read_ms = locked_at.elapsed().as_secs_f64() * 1000.0;
    tx.batch_execute(&sql.join(";\n"))
        .await
        .map_err(db("exchanging the tables"))?;
    record_swapped_out(tx, task, &t, &old_name).await?;
    record_materialization(tx, task, &t, &checked.snapshot_lsn, rows).await?;
    tracing::debug!(upload_task_id = task.id, target = %t.name, owner = %t.owner, rows, indexes = indexes.len(),
                    catalog_ms = read_ms, exchanged_ms = locked_at.elapsed().as_secs_f64() * 1000.0, "swap exchanged");
    Ok(Applied {
        rows,
        exclusive_since: Some(locked_at),
        drop_after: true,
        note: None,
    })
}

/// Create the staging table beside the target (as the target: columns, defaults,
/// constraints, storage parameters), load the result file into it, build the
/// target's indexes on it and ANALYZE it. The rows loaded.
async fn build_staging(
    tx: &Transaction<'_>,
    task: &Claimed,
    t: &Target,
    staging: &str,
    column_list: &str,
    checked: &Checked,
    indexes: &[IndexPlan],
) -> Result<i64, UploadError> {
    let target = t.name.quoted();
    let db = |what: &str| t.swap_error(what);
    tx.batch_execute(&format!(
        "CREATE {}TABLE {staging} (LIKE {target} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED
             INCLUDING IDENTITY INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING COMMENTS INCLUDING STATISTICS)",
        if t.persistence == "u" { "UNLOGGED " } else { "" }
    ))
    .await
    .map_err(db("creating the staging table"))?;
    let reloptions: Option<String> = tx
        .query_one(
            "SELECT format('ALTER TABLE %s SET (%s)', $2::text, array_to_string(reloptions, ', '))
               FROM pg_class WHERE oid = $1 AND reloptions IS NOT NULL
             UNION ALL SELECT NULL LIMIT 1",
            &[&t.oid, &staging],
        )
        .await
        .map_err(db("reading storage parameters"))?
        .get(0);
    if let Some(sql) = reloptions {
        tx.batch_execute(&sql)
            .await
            .map_err(db("copying storage parameters"))?;
    }
    let rows = copy_checked(
        tx,
        task,
        &format!("COPY {staging} ({column_list}) FROM STDIN (FORMAT csv, HEADER true)"),
        checked,
    )
    .await? as i64;
    for ix in indexes {
        tx.batch_execute(&ix.create).await.map_err(db(&format!(
            "building index {} on the staging table",
            quote_ident(&ix.name)
        )))?;
    }
    tx.batch_execute(&format!("ANALYZE {staging}"))
        .await
        .map_err(db("analyzing the staging table"))?;
    Ok(rows)
}

/// The statements that give the staging table's indexes the target's index names,
/// constraints, comments and settings (once the target's own are renamed away).
fn install_indexes(indexes: &[IndexPlan], schema: &str, target: &str) -> Vec<String> {
    let mut sql = Vec::new();
    for ix in indexes {
        let (temp, name) = (quote_ident(&ix.temp), quote_ident(&ix.name));
        match &ix.constraint {
            Some((kind, deferrable, deferred)) => sql.push(format!(
                "ALTER TABLE {target} ADD CONSTRAINT {name} {} USING INDEX {temp}{}{}",
                if kind == "p" { "PRIMARY KEY" } else { "UNIQUE" },
                if *deferrable { " DEFERRABLE" } else { "" },
                if *deferred { " INITIALLY DEFERRED" } else { "" }
            )),
            None => sql.push(format!("ALTER INDEX {schema}.{temp} RENAME TO {name}")),
        }
        if let Some(c) = &ix.comment {
            sql.push(format!("COMMENT ON INDEX {schema}.{name} IS {c}"));
        }
        if let Some(c) = &ix.constraint_comment {
            sql.push(format!("COMMENT ON CONSTRAINT {name} ON {target} IS {c}"));
        }
        if ix.clustered {
            sql.push(format!("ALTER TABLE {target} CLUSTER ON {name}"));
        }
        if ix.replica_identity {
            sql.push(format!(
                "ALTER TABLE {target} REPLICA IDENTITY USING INDEX {name}"
            ));
        }
    }
    sql
}

/// Record the renamed-away table as pgmaint's to drop, by OID, in the swap's
/// transaction: only a table recorded there is ever dropped.
async fn record_swapped_out(
    tx: &Transaction<'_>,
    task: &Claimed,
    t: &Target,
    old_name: &str,
) -> Result<(), UploadError> {
    tx.execute(
        "INSERT INTO pgmaint.swapped_out (relid, schema_name, table_name, upload_task_id, run_id)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (relid) DO UPDATE SET schema_name = $2, table_name = $3, upload_task_id = $4, run_id = $5,
                                           swapped_at = now()",
        &[&t.oid, &t.name.schema, &old_name, &task.id, &task.run_id],
    )
    .await
    .map_err(t.swap_error("recording the swapped-out table"))?;
    Ok(())
}
