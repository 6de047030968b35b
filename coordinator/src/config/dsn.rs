//! `[primary]` and `[[replicas]]`: where pgmaint connects, as libpq strings or
//! `postgres://` URLs, overridden by `PGMAINT_PRIMARY` and `PGMAINT_REPLICA`.

use serde::Deserialize;

use super::{usage, valid_name, Overrides};
use crate::UsageError;

/// A connection string and the config field it came from (for error messages).
#[derive(Debug, Clone)]
pub struct Dsn {
    /// Parsed libpq string or URL.
    pub config: snapshot_runner::connection::Config,
    /// `primary.dsn`, `replicas[0].dsn`, or the environment variable.
    pub field: String,
}

/// One replica.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// Name used in runs, leases and results.
    pub name: String,
    /// How to reach it.
    pub dsn: Dsn,
    /// `replicas[].failover_priority`: 0 = never promote it (pgmaint then prefers it for
    /// scans); higher wins a tie between failover candidates. Default 1.
    pub failover_priority: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrimary {
    dsn: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReplica {
    name: String,
    dsn: String,
    failover_priority: Option<u32>,
}

/// A DSN with libpq's conventions for what it leaves out (service file, environment,
/// password file: see [`super::libpq`]).
fn parse_dsn(field: &str, text: &str) -> Result<Dsn, UsageError> {
    parse_dsn_in(field, text, &super::libpq::Env::process())
}

fn parse_dsn_in(field: &str, text: &str, env: &super::libpq::Env) -> Result<Dsn, UsageError> {
    let config = super::libpq::resolve(text, env).map_err(|e| usage(format!("{field}: {e}")))?;
    Ok(Dsn {
        config,
        field: field.to_string(),
    })
}

/// The primary: `PGMAINT_PRIMARY`, else `primary.dsn`.
pub(super) fn primary(raw: &Option<RawPrimary>, overrides: &Overrides) -> Result<Dsn, UsageError> {
    match (&overrides.primary, raw) {
        (Some(dsn), _) => parse_dsn("PGMAINT_PRIMARY", dsn),
        (None, Some(p)) => parse_dsn("primary.dsn", &p.dsn),
        (None, None) => Err(usage("primary.dsn: missing (or set PGMAINT_PRIMARY)")),
    }
}

/// The replicas; `PGMAINT_REPLICA` replaces the first one's DSN, or is the only
/// replica when config has none.
pub(super) fn replicas(
    raw: &[RawReplica],
    overrides: &Overrides,
) -> Result<Vec<ReplicaConfig>, UsageError> {
    let mut replicas = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let field = format!("replicas[{i}]");
        if r.name.is_empty() || !valid_name(&r.name) {
            return Err(usage(format!(
                "{field}.name: {:?} is not a valid name (letters, digits, - _ .)",
                r.name
            )));
        }
        if replicas.iter().any(|x: &ReplicaConfig| x.name == r.name) {
            return Err(usage(format!(
                "{field}.name: duplicate replica name {:?}",
                r.name
            )));
        }
        let dsn = match (&overrides.replica, i) {
            (Some(d), 0) => parse_dsn("PGMAINT_REPLICA", d)?,
            _ => parse_dsn(&format!("{field}.dsn"), &r.dsn)?,
        };
        replicas.push(ReplicaConfig {
            name: r.name.clone(),
            dsn,
            failover_priority: r.failover_priority.unwrap_or(1),
        });
    }
    if replicas.is_empty() {
        match &overrides.replica {
            Some(d) => replicas.push(ReplicaConfig {
                name: "replica".into(),
                dsn: parse_dsn("PGMAINT_REPLICA", d)?,
                failover_priority: 1,
            }),
            None => return Err(usage(
                "replicas: at least one [[replicas]] entry is required (or set PGMAINT_REPLICA)",
            )),
        }
    }
    Ok(replicas)
}
