//! Connections to the primary and the replicas.

use tokio_postgres::Client;

use crate::config::Dsn;
use crate::UsageError;

/// The hosts of a DSN (names, addresses or socket directories) and its ports, as text.
pub fn hosts_and_ports(dsn: &tokio_postgres::Config) -> (Vec<String>, Vec<String>) {
    let hosts = dsn
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    (
        hosts,
        dsn.get_ports().iter().map(|p| p.to_string()).collect(),
    )
}

/// Describe where a DSN points, without its password.
pub fn describe(dsn: &tokio_postgres::Config) -> String {
    let (hosts, ports) = hosts_and_ports(dsn);
    format!(
        "host={} port={} dbname={}",
        if hosts.is_empty() {
            "localhost".into()
        } else {
            hosts.join(",")
        },
        if ports.is_empty() {
            "5432".into()
        } else {
            ports.join(",")
        },
        dsn.get_dbname().unwrap_or("-")
    )
}

/// A connection that failed, naming the config field and the server. By itself a
/// runtime failure (a server gone in the middle of a run); [`connect_at_start`] makes
/// it the operator's.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(pub String);

impl From<ConnectError> for UsageError {
    fn from(e: ConnectError) -> Self {
        UsageError(e.0)
    }
}

/// Connect, or fail with an error naming the config field of the DSN.
pub async fn connect(dsn: &Dsn, application_name: &str) -> Result<Client, ConnectError> {
    let mut config = dsn.config.clone();
    config.application_name(application_name);
    snapshot_runner::connection::connect(&config)
        .await
        .map_err(|e| {
            let cause = std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_default();
            let cause = if cause.is_empty() {
                e.to_string()
            } else {
                format!("{e}: {cause}")
            };
            ConnectError(format!(
                "{}: cannot connect ({}): {}",
                dsn.field,
                describe(&dsn.config),
                cause.replace('\n', " ")
            ))
        })
}

/// Connect when a command starts: a server that cannot be reached then is a problem
/// of the operator's input (exit code 2).
pub async fn connect_at_start(dsn: &Dsn, application_name: &str) -> Result<Client, UsageError> {
    Ok(connect(dsn, application_name).await?)
}
