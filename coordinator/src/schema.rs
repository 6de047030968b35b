//! pgmaint's own schema on the primary: ordered migrations from `sql/`.

use anyhow::{bail, Context, Result};
use tokio_postgres::Client;

/// Migrations in order; the number is the schema version.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "initial", include_str!("../../sql/0001_initial.sql")),
    (
        2,
        "upload_queue",
        include_str!("../../sql/0002_upload_queue.sql"),
    ),
    (
        3,
        "expected_file",
        include_str!("../../sql/0003_expected_file.sql"),
    ),
    (
        4,
        "swap_records",
        include_str!("../../sql/0004_swap_records.sql"),
    ),
    (
        5,
        "findings_null_key",
        include_str!("../../sql/0005_findings_null_key.sql"),
    ),
    (
        6,
        "promotions",
        include_str!("../../sql/0006_promotions.sql"),
    ),
    (
        7,
        "task_slots",
        include_str!("../../sql/0007_task_slots.sql"),
    ),
    (8, "daemon", include_str!("../../sql/0008_daemon.sql")),
    (
        9,
        "current_findings",
        include_str!("../../sql/0009_current_findings.sql"),
    ),
];

/// The schema version this binary knows.
pub fn latest() -> i32 {
    MIGRATIONS.last().map(|m| m.0).unwrap_or(0)
}

/// An arbitrary constant: serialises concurrent `pgmaint init` runs.
const INIT_LOCK: i64 = 0x7067_6d61_696e_7401;

/// Apply the missing migrations. Idempotent; refuses a newer schema.
/// Returns `(version before, version after)`.
pub async fn init(client: &mut Client) -> Result<(i32, i32)> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&INIT_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS pgmaint;
         CREATE TABLE IF NOT EXISTS pgmaint.schema_migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .context("creating pgmaint.schema_migrations")?;
    let before: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM pgmaint.schema_migrations",
            &[],
        )
        .await?
        .get(0);
    check_not_newer(before)?;
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > before) {
        tx.batch_execute(sql)
            .await
            .with_context(|| format!("applying migration {version} ({name})"))?;
        tx.execute(
            "INSERT INTO pgmaint.schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        tracing::info!(version, name, "applied migration");
    }
    tx.commit().await?;
    Ok((before, latest()))
}

fn check_not_newer(version: i32) -> Result<()> {
    if version > latest() {
        bail!(
            "the primary's pgmaint schema is version {version}, newer than this pgmaint knows ({}): upgrade pgmaint",
            latest()
        );
    }
    Ok(())
}

/// Fail unless the primary has exactly the schema this binary knows.
pub async fn require_current(client: &Client) -> Result<()> {
    let installed: bool = client
        .query_one(
            "SELECT to_regclass('pgmaint.schema_migrations') IS NOT NULL",
            &[],
        )
        .await
        .context("reading pgmaint's schema version")?
        .get(0);
    if !installed {
        bail!("pgmaint's schema is not installed on the primary: run `pgmaint init`");
    }
    let version: i32 = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM pgmaint.schema_migrations",
            &[],
        )
        .await
        .context("reading pgmaint's schema version")?
        .get(0);
    check_not_newer(version)?;
    if version < latest() {
        bail!("pgmaint's schema on the primary is at version {version}, this pgmaint needs {}: run `pgmaint init`", latest());
    }
    Ok(())
}
