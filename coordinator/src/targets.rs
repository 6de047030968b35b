//! The tables `materialize` tasks write on the primary, checked before any pause: what
//! the uploader will need (see `uploader::swap` and `uploader::merge`) must be there,
//! or the pause is wasted and the upload fails hours later.
//!
//! Both a swap and a merge resolve an existing ordinary table (the uploader never
//! creates a target). A swap builds its staging table in the target's schema (CREATE
//! on the schema) and renames the target away (its owner's privileges); a merge loads
//! into a temporary table (TEMP on the database) and reads, updates and inserts rows
//! of the target (SELECT, INSERT, UPDATE).

use anyhow::{Context, Result};
use snapshot_runner::ident::{display_ident, QualifiedName};
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
        })
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
                    coalesce(has_schema_privilege(c.relowner, n.oid, 'CREATE'), false)
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
    })
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
        let lacking: Vec<&str> = [
            ("SELECT", f.select),
            ("INSERT", f.insert),
            ("UPDATE", f.update),
        ]
        .iter()
        .filter(|(_, has)| !has)
        .map(|(p, _)| *p)
        .collect();
        if !lacking.is_empty() {
            missing.push(format!(
                "GRANT {} ON TABLE {table} TO {role}",
                lacking.join(", ")
            ));
        }
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

/// Before a pause: refuse (`Err(task, why)`) the first of `tasks` whose target the
/// uploader could not apply into.
pub async fn refuse_unusable(
    primary: &Client,
    tasks: &[&TaskConfig],
) -> Result<Result<(), (String, String)>> {
    for t in tasks.iter().filter_map(|t| TaskTarget::of(t)) {
        if let Err(why) = check(primary, &t).await? {
            return Ok(Err((t.task.clone(), why)));
        }
    }
    Ok(Ok(()))
}
