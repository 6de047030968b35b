//! The privileges pgmaint's roles need, read from the servers (`has_*_privilege`,
//! `pg_has_role`): each one missing is named as the statement that grants it.

use anyhow::{Context, Result};
use snapshot_runner::ident::display_ident;
use tokio_postgres::Client;

/// The replay-control functions a cycle calls on a replica.
const REPLICA_FUNCTIONS: [&str; 3] = [
    "pg_wal_replay_pause()",
    "pg_wal_replay_resume()",
    "pg_get_wal_replay_pause_state()",
];

/// The role whose privileges let a role read every column of `pg_stat_wal_receiver`
/// and `pg_stat_replication` (`pg_monitor` is a member of it).
const READ_ALL_STATS: &str = "pg_read_all_stats";

/// pgmaint's own schema on the primary.
const SCHEMA: &str = "pgmaint";

/// The role a session runs as, and the grants it lacks (empty: none).
pub struct Missing {
    /// `current_user`.
    pub role: String,
    /// `GRANT …` statements, one per missing privilege.
    pub grants: Vec<String>,
}

/// On a replica: EXECUTE on the replay-control functions, and the rights to read
/// `pg_stat_wal_receiver`'s columns.
pub async fn on_replica(replica: &Client) -> Result<Missing> {
    let sigs: Vec<String> = REPLICA_FUNCTIONS
        .iter()
        .map(|f| format!("pg_catalog.{f}"))
        .collect();
    let row = replica
        .query_one(
            "SELECT current_user::text,
                    has_function_privilege($1::text, 'EXECUTE'),
                    has_function_privilege($2::text, 'EXECUTE'),
                    has_function_privilege($3::text, 'EXECUTE'),
                    pg_has_role($4::text::name, 'USAGE')",
            &[&sigs[0], &sigs[1], &sigs[2], &READ_ALL_STATS],
        )
        .await
        .context("reading pgmaint's privileges on the replica")?;
    let role: String = row.get(0);
    let who = display_ident(&role);
    let mut grants = Vec::new();
    for (i, f) in REPLICA_FUNCTIONS.iter().enumerate() {
        if !row.get::<_, bool>(i + 1) {
            grants.push(format!("GRANT EXECUTE ON FUNCTION {f} TO {who}"));
        }
    }
    if !row.get::<_, bool>(4) {
        grants.push(format!(
            "GRANT pg_monitor TO {who} (to read pg_stat_wal_receiver)"
        ));
    }
    Ok(Missing { role, grants })
}

/// Before a pause: refuse (a usage error, exit code 2: the DSN's role) a replica on
/// which pgmaint's role lacks a grant the cycle needs, naming each missing grant.
/// Without `pg_read_all_stats`, `pg_stat_wal_receiver` shows a NULL status, which
/// would otherwise read as "not streaming".
pub async fn refuse_missing_on_replica(replica: &Client, name: &str) -> Result<()> {
    let missing = on_replica(replica)
        .await
        .with_context(|| format!("replica {name}"))?;
    match missing.describe() {
        None => Ok(()),
        Some(why) => Err(anyhow::anyhow!(crate::errors::UsageError(format!(
            "replica {name}: {why} (nothing paused)"
        )))),
    }
}

impl Missing {
    /// `role R lacks: GRANT …; GRANT …`, or `None` when nothing is missing.
    pub fn describe(&self) -> Option<String> {
        if self.grants.is_empty() {
            return None;
        }
        Some(format!(
            "role {} lacks: {}",
            display_ident(&self.role),
            self.grants.join("; ")
        ))
    }
}

/// On the primary: USAGE on pgmaint's schema, reading and writing its tables and
/// sequences, and the rights to read `pg_stat_replication.sync_state`.
pub async fn on_primary(primary: &Client) -> Result<Missing> {
    let row = primary
        .query_one(
            "SELECT current_user::text,
                    coalesce(has_schema_privilege(to_regnamespace($1::text), 'USAGE'), false),
                    pg_has_role($2::text::name, 'USAGE')",
            &[&SCHEMA, &READ_ALL_STATS],
        )
        .await
        .context("reading pgmaint's privileges on the primary")?;
    let role: String = row.get(0);
    let who = display_ident(&role);
    let schema = display_ident(SCHEMA);
    let mut grants = Vec::new();
    if !row.get::<_, bool>(1) {
        grants.push(format!("GRANT USAGE ON SCHEMA {schema} TO {who}"));
    }
    let (tables, sequences) = lacking_in_schema(primary).await?;
    if !tables.is_empty() {
        grants.push(format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {who} (lacking on {})",
            tables.join(", ")
        ));
    }
    if !sequences.is_empty() {
        grants.push(format!(
            "GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {who} (lacking on {})",
            sequences.join(", ")
        ));
    }
    if !row.get::<_, bool>(2) {
        grants.push(format!(
            "GRANT pg_monitor TO {who} (to read pg_stat_replication.sync_state)"
        ));
    }
    Ok(Missing { role, grants })
}

/// pgmaint's tables (and views) the role cannot read and write, and its sequences the
/// role cannot use.
async fn lacking_in_schema(primary: &Client) -> Result<(Vec<String>, Vec<String>)> {
    let rows = primary
        .query(
            "SELECT c.relname::text, c.relkind = 'S',
                    CASE c.relkind
                      WHEN 'S' THEN has_sequence_privilege(c.oid, 'USAGE')
                      WHEN 'v' THEN has_table_privilege(c.oid, 'SELECT')
                      ELSE has_table_privilege(c.oid, 'SELECT') AND has_table_privilege(c.oid, 'INSERT')
                           AND has_table_privilege(c.oid, 'UPDATE') AND has_table_privilege(c.oid, 'DELETE')
                    END
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'S')
              ORDER BY c.relname",
            &[&SCHEMA],
        )
        .await
        .context("reading pgmaint's privileges on its tables")?;
    let (mut tables, mut sequences) = (Vec::new(), Vec::new());
    for r in rows.iter().filter(|r| !r.get::<_, bool>(2)) {
        let name: String = r.get(0);
        if r.get::<_, bool>(1) {
            sequences.push(name);
        } else {
            tables.push(name);
        }
    }
    Ok((tables, sequences))
}
