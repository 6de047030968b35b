//! The tables `materialize` tasks write on the primary, checked before any pause: what
//! the uploader will need (see `uploader::swap` and `uploader::merge`) must be there,
//! or the pause is wasted and the upload fails hours later.
//!
//! Both a swap and a merge resolve an existing ordinary table (the uploader never
//! creates a target). A swap builds its staging table in the target's schema (CREATE
//! on the schema) and renames the target away (its owner's privileges); a merge loads
//! into a temporary table (TEMP on the database) and reads, updates and inserts rows
//! of the target: SELECT and INSERT on the query's result columns, UPDATE on those
//! that are not the merge key, granted on the table or column by column.

use anyhow::{Context, Result};
use snapshot_runner::ident::{display_ident, parse_ident, QualifiedName};
use snapshot_runner::TaskSpec;
use tokio_postgres::Client;

use crate::config::TaskConfig;

/// A materialize task's target, as config names it.
#[derive(Debug, Clone)]
pub struct TaskTarget {
    /// The task's name.
    pub task: String,
    /// The table, as the catalog spells it.
    pub table: QualifiedName,
    /// Merged into by key (else swapped in).
    pub merge: bool,
    /// The merge key's columns (empty for a swap).
    pub keys: Vec<String>,
    /// The query's result columns, once the task was checked against a replica's
    /// catalog: the columns a merge reads, inserts and updates. `None`: not known, and
    /// a merge is then checked on the table (or on any of its columns).
    pub columns: Option<Vec<String>>,
}

impl TaskTarget {
    /// The target of `task`, if it is a materialize task whose target parses (config
    /// already refused one that does not).
    pub fn of(task: &TaskConfig) -> Option<TaskTarget> {
        let TaskSpec::Materialize(spec) = &task.spec else {
            return None;
        };
        Some(TaskTarget {
            task: task.name.clone(),
            table: QualifiedName::parse(&spec.target).ok()?,
            merge: spec.merge_key.is_some(),
            keys: spec
                .merge_key
                .iter()
                .flatten()
                .filter_map(|k| parse_ident(k).ok())
                .collect(),
            columns: None,
        })
    }

    /// The same target, with the query's result columns (see [`TaskTarget::columns`]).
    pub fn with_columns(mut self, columns: Option<&[String]>) -> TaskTarget {
        self.columns = columns.map(<[String]>::to_vec);
        self
    }

    /// `swap` or `merge`.
    pub fn how(&self) -> &'static str {
        if self.merge {
            "merge"
        } else {
            "swap"
        }
    }
}

/// What the primary says about a target and pgmaint's role.
struct Found {
    role: String,
    database: String,
    schema_exists: bool,
    relkind: Option<String>,
    owner: Option<String>,
    schema_usage: bool,
    schema_create: bool,
    temp: bool,
    /// Member of the owner's role, with its privileges (may rename the table) and the
    /// right to give a table to it (ALTER TABLE … OWNER TO: SET on PostgreSQL 16+).
    owns: bool,
    /// The owner may create in the schema (it must, to own the staging table there).
    owner_create: bool,
    select: bool,
    insert: bool,
    update: bool,
    /// Some column privilege of each kind (SELECT, INSERT, UPDATE), granted on the
    /// table or on a column.
    any_column: [bool; 3],
    /// Each column of the target and its privileges (SELECT, INSERT, UPDATE), granted
    /// on the table or on the column.
    columns: Vec<(String, [bool; 3])>,
}

async fn look_up(primary: &Client, t: &TaskTarget) -> Result<Found> {
    let row = primary
        .query_one(
            "SELECT current_user::text, n.oid IS NOT NULL, c.relkind::text, pg_get_userbyid(c.relowner)::text,
                    coalesce(has_schema_privilege(n.oid, 'USAGE'), false),
                    coalesce(has_schema_privilege(n.oid, 'CREATE'), false),
                    has_database_privilege(current_database(), 'TEMP'),
                    coalesce(pg_has_role(c.relowner, 'USAGE')
                             AND CASE WHEN current_setting('server_version_num')::int >= 160000
                                      THEN pg_has_role(c.relowner, 'SET')
                                      ELSE pg_has_role(c.relowner, 'MEMBER') END, false),
                    coalesce(has_table_privilege(c.oid, 'SELECT'), false),
                    coalesce(has_table_privilege(c.oid, 'INSERT'), false),
                    coalesce(has_table_privilege(c.oid, 'UPDATE'), false),
                    current_database()::text,
                    coalesce(has_schema_privilege(c.relowner, n.oid, 'CREATE'), false),
                    coalesce(has_any_column_privilege(c.oid, 'SELECT'), false),
                    coalesce(has_any_column_privilege(c.oid, 'INSERT'), false),
                    coalesce(has_any_column_privilege(c.oid, 'UPDATE'), false),
                    coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
                               WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '{}'),
                    coalesce((SELECT array_agg(p.ok ORDER BY a.attnum, p.k) FROM pg_attribute a,
                                     LATERAL (VALUES (1, has_column_privilege(c.oid, a.attnum, 'SELECT')),
                                                     (2, has_column_privilege(c.oid, a.attnum, 'INSERT')),
                                                     (3, has_column_privilege(c.oid, a.attnum, 'UPDATE'))) p(k, ok)
                               WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '{}')
               FROM (SELECT 1) one
               LEFT JOIN pg_namespace n ON n.nspname = $1
               LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = $2",
            &[&t.table.schema, &t.table.name],
        )
        .await
        .with_context(|| format!("looking up materialize target {} on the primary", t.table))?;
    Ok(Found {
        role: row.get(0),
        schema_exists: row.get(1),
        relkind: row.get(2),
        owner: row.get(3),
        schema_usage: row.get(4),
        schema_create: row.get(5),
        temp: row.get(6),
        owns: row.get(7),
        select: row.get(8),
        insert: row.get(9),
        update: row.get(10),
        database: row.get(11),
        owner_create: row.get(12),
        any_column: [row.get(13), row.get(14), row.get(15)],
        columns: column_privileges(row.get(16), row.get(17)),
    })
}

/// Pair each column name with its three privileges (one flat array, three per column).
fn column_privileges(names: Vec<String>, flat: Vec<bool>) -> Vec<(String, [bool; 3])> {
    names
        .into_iter()
        .zip(flat.chunks(3))
        .map(|(n, p)| (n, [p[0], p.get(1) == Some(&true), p.get(2) == Some(&true)]))
        .collect()
}

/// Check `t` on the primary: `Ok(Ok(what))` when the uploader can apply into it,
/// `Ok(Err(why))` (one line naming the task, the table and the missing grant) when it
/// cannot; `Err` when the primary could not be asked.
pub async fn check(primary: &Client, t: &TaskTarget) -> Result<Result<String, String>> {
    let f = look_up(primary, t).await?;
    let name = &t.table;
    let prefix = format!("task {:?}: materialize target {name} ({})", t.task, t.how());
    let Some(relkind) = &f.relkind else {
        let why = if f.schema_exists {
            format!("{prefix} does not exist on the primary: create it first (the uploader never creates a target)")
        } else {
            format!(
                "{prefix} does not exist on the primary, nor does its schema {}: create them first",
                display_ident(&name.schema)
            )
        };
        return Ok(Err(why));
    };
    if relkind != "r" {
        return Ok(Err(format!(
            "{prefix} is not an ordinary table on the primary (relkind {relkind})"
        )));
    }
    let missing = missing_grants(&f, t);
    if !missing.is_empty() {
        return Ok(Err(format!(
            "{prefix}: role {} lacks what the upload needs: {}",
            f.role,
            missing.join("; ")
        )));
    }
    Ok(Ok(format!(
        "{prefix} exists; role {} may {} it",
        f.role,
        if t.merge { "merge into" } else { "swap" }
    )))
}

/// The grants (or ownership) the uploader's role lacks for `t`, as statements.
fn missing_grants(f: &Found, t: &TaskTarget) -> Vec<String> {
    let role = display_ident(&f.role);
    let schema = display_ident(&t.table.schema);
    let table = t.table.to_string();
    let mut missing = Vec::new();
    if !f.schema_usage {
        missing.push(format!("GRANT USAGE ON SCHEMA {schema} TO {role}"));
    }
    if t.merge {
        missing.extend(merge_grants(f, t, &table, &role));
        if !f.temp {
            missing.push(format!(
                "GRANT TEMPORARY ON DATABASE {} TO {role} (the merge loads into a temporary table)",
                display_ident(&f.database)
            ));
        }
    } else {
        if !f.schema_create {
            missing.push(format!(
                "GRANT CREATE ON SCHEMA {schema} TO {role} (the swap builds its staging table there)"
            ));
        }
        let owner = display_ident(f.owner.as_deref().unwrap_or("?"));
        if !f.owns {
            missing.push(format!(
                "GRANT {owner} TO {role} (a swap renames the table and gives its staging table to the owner)"
            ));
        }
        if !f.owner_create {
            missing.push(format!(
                "GRANT CREATE ON SCHEMA {schema} TO {owner} (the owner of the swapped-in table must own it there)"
            ));
        }
    }
    missing
}

/// The grants on the target a merge lacks: SELECT and INSERT on the result columns,
/// UPDATE on those that are not the key; each privilege held on the table or on every
/// one of those columns. Without the result columns, the table-level privilege or one
/// on any column will do (the run checks again with them, before its pause).
fn merge_grants(f: &Found, t: &TaskTarget, table: &str, role: &str) -> Vec<String> {
    const KINDS: [&str; 3] = ["SELECT", "INSERT", "UPDATE"];
    let table_level = [f.select, f.insert, f.update];
    let Some(columns) = &t.columns else {
        let lacking: Vec<&str> = (0..3)
            .filter(|&i| !(table_level[i] || f.any_column[i]))
            .map(|i| KINDS[i])
            .collect();
        if lacking.is_empty() {
            return Vec::new();
        }
        return vec![format!(
            "GRANT {} ON TABLE {table} TO {role}",
            lacking.join(", ")
        )];
    };
    let mut grants = Vec::new();
    let mut whole_table = Vec::new();
    for (i, kind) in KINDS.iter().enumerate() {
        if table_level[i] {
            continue;
        }
        // Columns the target does not have fail the upload on their own: not a grant.
        let needed: Vec<&(String, [bool; 3])> = f
            .columns
            .iter()
            .filter(|(c, _)| columns.contains(c) && (i != 2 || !t.keys.contains(c)))
            .collect();
        let lacking: Vec<String> = needed
            .iter()
            .filter(|(_, p)| !p[i])
            .map(|(c, _)| display_ident(c))
            .collect();
        if lacking.is_empty() {
            continue;
        }
        // The least grant: on those columns, or on the table when they are all of it.
        if lacking.len() == f.columns.len() {
            whole_table.push(*kind);
        } else {
            grants.push(format!(
                "GRANT {kind} ({}) ON TABLE {table} TO {role}",
                lacking.join(", ")
            ));
        }
    }
    if !whole_table.is_empty() {
        grants.insert(
            0,
            format!(
                "GRANT {} ON TABLE {table} TO {role}",
                whole_table.join(", ")
            ),
        );
    }
    grants
}

/// Before a pause: refuse (`Err(task, why)`) the first of `targets` the uploader could
/// not apply into.
pub async fn refuse_unusable(
    primary: &Client,
    targets: &[TaskTarget],
) -> Result<Result<(), (String, String)>> {
    for t in targets {
        if let Err(why) = check(primary, t).await? {
            return Ok(Err((t.task.clone(), why)));
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(columns: Vec<(&str, [bool; 3])>) -> Found {
        Found {
            role: "user".into(),
            database: "App".into(),
            schema_exists: true,
            relkind: Some("r".into()),
            owner: Some("Owner".into()),
            schema_usage: true,
            schema_create: true,
            temp: true,
            owns: true,
            owner_create: true,
            select: false,
            insert: false,
            update: false,
            any_column: [0, 1, 2].map(|i| columns.iter().any(|(_, p)| p[i])),
            columns: columns
                .into_iter()
                .map(|(c, p)| (c.to_string(), p))
                .collect(),
        }
    }

    fn merge_into(table: &str, keys: &[&str], columns: Option<&[&str]>) -> TaskTarget {
        TaskTarget {
            task: "t".into(),
            table: QualifiedName::parse(table).unwrap(),
            merge: true,
            keys: keys.iter().map(|k| k.to_string()).collect(),
            columns: columns.map(|c| c.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn column_grants_count_for_a_merge() {
        // SELECT and INSERT on (id, v), UPDATE on v: what the merge of (id, v) by id runs.
        let f = found(vec![
            ("id", [true, true, false]),
            ("v", [true, true, true]),
            ("other", [false, false, false]),
        ]);
        let t = merge_into("public.sums", &["id"], Some(&["id", "v"]));
        assert_eq!(missing_grants(&f, &t), Vec::<String>::new());
        // Without the result columns, some column privilege of each kind will do.
        let t = merge_into("public.sums", &["id"], None);
        assert_eq!(missing_grants(&f, &t), Vec::<String>::new());
        // A result column without UPDATE is named, as a column grant.
        let t = merge_into("public.sums", &["id"], Some(&["id", "v", "other"]));
        assert_eq!(
            missing_grants(&f, &t),
            vec![
                "GRANT SELECT (other) ON TABLE public.sums TO \"user\"",
                "GRANT INSERT (other) ON TABLE public.sums TO \"user\"",
                "GRANT UPDATE (other) ON TABLE public.sums TO \"user\"",
            ]
        );
        // No privilege at all: the table grant where every column is needed, the
        // columns' otherwise (the key is never updated).
        let f = found(vec![("id", [false; 3]), ("v", [false; 3])]);
        let t = merge_into("public.sums", &["id"], Some(&["id", "v"]));
        assert_eq!(
            missing_grants(&f, &t),
            vec![
                "GRANT SELECT, INSERT ON TABLE public.sums TO \"user\"",
                "GRANT UPDATE (v) ON TABLE public.sums TO \"user\"",
            ]
        );
    }

    #[test]
    fn grant_suggestions_quote_what_needs_quoting() {
        let mut f = found(vec![("id", [false; 3])]);
        f.schema_usage = false;
        f.temp = false;
        let t = merge_into("\"order\".\"Items\"", &["id"], Some(&["id"]));
        assert_eq!(
            missing_grants(&f, &t),
            vec![
                "GRANT USAGE ON SCHEMA \"order\" TO \"user\"",
                "GRANT SELECT, INSERT ON TABLE \"order\".\"Items\" TO \"user\"",
                "GRANT TEMPORARY ON DATABASE \"App\" TO \"user\" (the merge loads into a temporary table)",
            ]
        );
        let mut f = found(vec![("id", [false; 3])]);
        f.schema_create = false;
        f.owns = false;
        f.owner_create = false;
        let mut t = merge_into("select.x", &[], None);
        t.merge = false;
        let grants = missing_grants(&f, &t);
        assert_eq!(
            grants,
            vec![
                "GRANT CREATE ON SCHEMA \"select\" TO \"user\" (the swap builds its staging table there)",
                "GRANT \"Owner\" TO \"user\" (a swap renames the table and gives its staging table to the owner)",
                "GRANT CREATE ON SCHEMA \"select\" TO \"Owner\" (the owner of the swapped-in table must own it there)",
            ]
        );
    }
}
