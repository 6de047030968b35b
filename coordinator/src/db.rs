//! Connections to the primary and the replicas.

use tokio_postgres::Client;

use crate::config::Dsn;
use crate::errors::{UnreachableError, UsageError};

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
    // A DSN is resolved with libpq's defaults (config::libpq), so it has a host or a
    // hostaddr: say which, rather than a host it would not use.
    let addrs: Vec<String> = dsn.get_hostaddrs().iter().map(|a| a.to_string()).collect();
    let host = match (hosts.is_empty(), addrs.is_empty()) {
        (false, _) => format!("host={}", hosts.join(",")),
        (true, false) => format!("hostaddr={}", addrs.join(",")),
        (true, true) => "host=(none)".into(),
    };
    format!(
        "{host} port={} dbname={}",
        if ports.is_empty() {
            "5432".into()
        } else {
            ports.join(",")
        },
        dsn.get_dbname().unwrap_or("-")
    )
}

/// Whether a server answered a failed connection attempt, and so whose problem it is
/// when a command starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// No server answered (connection refused, time-out, no route, a name that does not
    /// resolve, the connection closed during the handshake), or the server answered that
    /// it takes no connection now (SQLSTATE classes 53 and 57: too many connections,
    /// starting up, shutting down): exit code 3.
    NoAnswer,
    /// The server answered and turned the DSN down (authentication failed, no
    /// pg_hba.conf entry, an unknown database or role, TLS required or not offered):
    /// the config's problem, exit code 2. Also anything not known to be a network fault.
    TurnedDown,
}

impl Reach {
    /// What a failed connection attempt says about the server.
    pub fn of(e: &tokio_postgres::Error) -> Reach {
        if let Some(db) = e.as_db_error() {
            let class = &db.code().code()[..2];
            return if class == "53" || class == "57" {
                Reach::NoAnswer
            } else {
                Reach::TurnedDown
            };
        }
        if e.is_closed() {
            return Reach::NoAnswer;
        }
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            if let Some(io) = c.downcast_ref::<std::io::Error>() {
                // InvalidData: a TLS certificate not accepted; PermissionDenied:
                // target_session_attrs not met. Every other I/O error is the network's.
                return match io.kind() {
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::PermissionDenied => {
                        Reach::TurnedDown
                    }
                    _ => Reach::NoAnswer,
                };
            }
            cause = c.source();
        }
        Reach::TurnedDown
    }
}

/// A connection that failed, naming the config field and the server, and whether the
/// server answered. By itself a runtime failure (a server gone in the middle of a run);
/// [`ConnectError::at_start`] makes it the operator's (exit code 2) or an unreachable
/// server (exit code 3).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(pub String, pub Reach);

impl ConnectError {
    /// No answer from the server: `text` says which and how long we waited.
    pub fn no_answer(text: String) -> Self {
        ConnectError(text, Reach::NoAnswer)
    }

    /// The error of a command that cannot start without this server.
    pub fn at_start(self) -> anyhow::Error {
        match self.1 {
            Reach::NoAnswer => UnreachableError(self.0).into(),
            Reach::TurnedDown => UsageError(self.0).into(),
        }
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
            // A certificate that did not verify says which check failed (unknown CA,
            // host name mismatch) rather than rustls's words.
            let cause = match (dsn.config.tls().failure_text(&e), cause.is_empty()) {
                (Some(tls), _) => tls,
                (None, true) => e.to_string(),
                (None, false) => format!("{e}: {cause}"),
            };
            ConnectError(
                format!(
                    "{}: cannot connect ({}): {}",
                    dsn.field,
                    describe(&dsn.config),
                    cause.replace('\n', " ")
                ),
                Reach::of(&e),
            )
        })
}

/// Connect when a command starts: a server that turns the DSN down is a problem of the
/// operator's input (exit code 2), one that does not answer is unreachable (exit code 3).
pub async fn connect_at_start(dsn: &Dsn, application_name: &str) -> anyhow::Result<Client> {
    connect(dsn, application_name)
        .await
        .map_err(ConnectError::at_start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::ErrorClass;

    #[tokio::test]
    async fn a_closed_port_is_no_answer_and_exit_code_3_at_start() {
        // Bind then drop: a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dsn = Dsn {
            config: format!("host=127.0.0.1 port={port} user=x dbname=app")
                .parse()
                .unwrap(),
            field: "primary.dsn".into(),
        };
        let e = connect(&dsn, "test").await.expect_err("nothing listens");
        assert_eq!(e.1, Reach::NoAnswer);
        assert!(e.0.starts_with("primary.dsn: cannot connect"), "{}", e.0);
        assert_eq!(ErrorClass::of(&e.at_start()).exit_code(), 3);
        let turned_down = ConnectError("primary.dsn: password".into(), Reach::TurnedDown);
        assert_eq!(ErrorClass::of(&turned_down.at_start()).exit_code(), 2);
    }
}
