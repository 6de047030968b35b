//! Finding the primary among the servers `primary.dsn` lists.
//!
//! `primary.dsn` may list several hosts in libpq's multi-host form (`host=a,b,c
//! port=5432,5433,5434`), so that a config listing every node keeps working after a
//! failover. libpq would take the first server that accepts a connection; pgmaint
//! takes the one that is not in recovery and not fenced: a former primary that came
//! back (same system, older timeline than a recorded promotion, or than another
//! primary it can see) is never used, whatever its place in the list.

use std::time::Duration;

use anyhow::Result;
use tokio_postgres::config::Host;
use tokio_postgres::Client;

use crate::config::{Config, Dsn};
use crate::db::{self, ConnectError};
use crate::failover::journal::{self, Promotion};
use crate::replica::ServerIdentity;

/// One server of `primary.dsn`, as a DSN of its own (same user, database, TLS, …).
pub fn hosts(dsn: &Dsn) -> Vec<Dsn> {
    let hosts = dsn.config.get_hosts();
    let ports = dsn.config.get_ports();
    if hosts.len() <= 1 {
        return vec![dsn.clone()];
    }
    // Every setting of the DSN but its hosts and ports, for each host in turn.
    hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let c = &dsn.config;
            let mut config = tokio_postgres::Config::new();
            match h {
                Host::Tcp(name) => config.host(name),
                Host::Unix(path) => config.host_path(path),
            };
            if let Some(addr) = c.get_hostaddrs().get(i) {
                config.hostaddr(*addr);
            }
            // libpq: one port for all hosts, or one per host.
            config.port(ports.get(i).or(ports.first()).copied().unwrap_or(5432));
            if let Some(v) = c.get_user() {
                config.user(v);
            }
            if let Some(v) = c.get_password() {
                config.password(v);
            }
            if let Some(v) = c.get_dbname() {
                config.dbname(v);
            }
            if let Some(v) = c.get_options() {
                config.options(v);
            }
            if let Some(v) = c.get_application_name() {
                config.application_name(v);
            }
            if let Some(v) = c.get_connect_timeout() {
                config.connect_timeout(*v);
            }
            if let Some(v) = c.get_tcp_user_timeout() {
                config.tcp_user_timeout(*v);
            }
            config
                .ssl_mode(c.get_ssl_mode())
                .ssl_negotiation(c.get_ssl_negotiation())
                .channel_binding(c.get_channel_binding())
                .keepalives(c.get_keepalives())
                .keepalives_idle(c.get_keepalives_idle());
            if let Some(v) = c.get_keepalives_interval() {
                config.keepalives_interval(v);
            }
            if let Some(v) = c.get_keepalives_retries() {
                config.keepalives_retries(v);
            }
            Dsn {
                config: c.with_pg(config),
                field: dsn.field.clone(),
            }
        })
        .collect()
}

/// `host:port` of a single-host DSN.
pub fn address(dsn: &Dsn) -> String {
    let (hosts, ports) = db::hosts_and_ports(&dsn.config);
    format!(
        "{}:{}",
        hosts.first().map(String::as_str).unwrap_or("localhost"),
        ports.first().map(String::as_str).unwrap_or("5432")
    )
}

/// What one listed server turned out to be.
#[derive(Debug, Clone)]
pub enum Found {
    /// No connection: why (and whether the server answered at all).
    Unreachable(ConnectError),
    /// A standby.
    Standby,
    /// A primary (not in recovery): its identity.
    Primary(ServerIdentity),
    /// A former primary: fenced by this promotion (or by a primary on a newer timeline).
    Fenced(ServerIdentity, String),
}

/// Every server of `primary.dsn`, what it is, and the one to use.
#[derive(Debug)]
pub struct Survey {
    /// Each listed server and what it is.
    pub servers: Vec<(Dsn, Found)>,
    /// Index into `servers` of the primary to use.
    pub chosen: Option<usize>,
}

impl Survey {
    /// One line per server that is not the chosen primary, for an error or status.
    pub fn describe(&self) -> String {
        self.servers
            .iter()
            .map(|(dsn, found)| {
                let what = match found {
                    Found::Unreachable(e) => format!("unreachable ({e})"),
                    Found::Standby => "in recovery (a standby)".into(),
                    Found::Primary(id) => format!("a primary on timeline {}", id.timeline),
                    Found::Fenced(id, why) => format!(
                        "a former primary on timeline {}, fenced: {why}",
                        id.timeline
                    ),
                };
                format!("{} is {what}", address(dsn))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Ask every server of `cfg.primary` what it is, and choose the primary: not in
/// recovery, not fenced by a recorded promotion (on this host, or on any server asked),
/// and on the newest timeline of its system.
pub async fn survey(
    cfg: &Config,
    application_name: &str,
) -> Result<(Survey, Vec<Client>), ConnectError> {
    // Fail closed: an unreadable record of promotions could hide a former primary.
    let mut promotions: Vec<Promotion> = journal::read_local(&cfg.results_dir).map_err(|e| {
        ConnectError(
            format!("{e:#} (the promotions pgmaint recorded on this host)"),
            db::Reach::TurnedDown,
        )
    })?;
    // pgmaint.promotions replicates: the replicas know of a promotion run from another
    // host even when primary.dsn does not list the new primary.
    for r in &cfg.replicas {
        if let Ok(Ok(c)) = tokio::time::timeout(
            Duration::from_secs(5),
            db::connect(&r.dsn, application_name),
        )
        .await
        {
            promotions.extend(journal::read_on(&c).await);
        }
    }
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    for dsn in hosts(&cfg.primary) {
        let found = match tokio::time::timeout(
            Duration::from_secs(15),
            db::connect(&dsn, application_name),
        )
        .await
        {
            Err(_) => Found::Unreachable(ConnectError::no_answer("no answer within 15s".into())),
            Ok(Err(e)) => Found::Unreachable(e),
            Ok(Ok(client)) => match crate::replica::server_identity(&client).await {
                // A session that fails its first query: most likely a server going away.
                Err(e) => Found::Unreachable(ConnectError::no_answer(format!("{e:#}"))),
                Ok(None) => Found::Standby,
                Ok(Some(id)) => {
                    promotions.extend(journal::read_on(&client).await);
                    clients.push((servers.len(), client));
                    Found::Primary(id)
                }
            },
        };
        servers.push((dsn, found));
    }
    // Fence what a promotion, or a primary of the same system on a newer timeline, left
    // behind.
    let newest: Vec<(i64, i32)> = servers
        .iter()
        .filter_map(|(_, f)| match f {
            Found::Primary(id) => Some((id.system_identifier, id.timeline)),
            _ => None,
        })
        .collect();
    for (_, found) in servers.iter_mut() {
        let Found::Primary(id) = found else { continue };
        let id = *id;
        if let Some(p) = journal::fenced_by(&promotions, id.system_identifier, id.timeline) {
            *found = Found::Fenced(
                id,
                format!(
                    "replica {} was promoted to timeline {} at {}",
                    p.replica, p.new_timeline, p.promoted_at
                ),
            );
        } else if let Some((_, t)) = newest
            .iter()
            .find(|(s, t)| *s == id.system_identifier && *t > id.timeline)
        {
            *found = Found::Fenced(
                id,
                format!("another primary of the same system is on timeline {t}"),
            );
        }
    }
    // Two unfenced primaries (a split brain, or a failover outside pgmaint): choosing
    // either could write to the wrong one.
    let primaries = servers
        .iter()
        .filter(|(_, f)| matches!(f, Found::Primary(_)))
        .count();
    let chosen = if primaries == 1 {
        servers
            .iter()
            .position(|(_, f)| matches!(f, Found::Primary(_)))
    } else {
        None
    };
    let clients = clients
        .into_iter()
        .filter(|(i, _)| Some(*i) == chosen)
        .map(|(_, c)| c)
        .collect();
    Ok((Survey { servers, chosen }, clients))
}

/// Connect to the primary: the one server of `primary.dsn` to use (see [`survey`]),
/// its single-host DSN, for every later connection of the command, and the survey of
/// every listed server (for `status`).
pub async fn connect(
    cfg: &Config,
    application_name: &str,
) -> Result<(Client, Dsn, Survey), ConnectError> {
    let (survey, mut clients) = survey(cfg, application_name).await?;
    match (survey.chosen, clients.pop()) {
        (Some(i), Some(client)) => {
            let dsn = survey.servers[i].0.clone();
            for (other, found) in &survey.servers {
                if let Found::Fenced(_, why) = found {
                    tracing::warn!(server = %address(other), "skipping a former primary ({why})");
                }
            }
            Ok((client, dsn, survey))
        }
        // A lone server that does not answer: say just that, as libpq would.
        _ if survey.servers.len() == 1 && matches!(survey.servers[0].1, Found::Unreachable(_)) => {
            let Found::Unreachable(e) = &survey.servers[0].1 else {
                unreachable!()
            };
            Err(e.clone())
        }
        _ => Err(no_usable_primary(cfg, &survey)),
    }
}

/// Why no server of `primary.dsn` is the primary. Unreachable (exit code 3 at start)
/// when none takes writes and one of them does not answer: it may be the primary.
fn no_usable_primary(cfg: &Config, survey: &Survey) -> ConnectError {
    let primaries = survey
        .servers
        .iter()
        .filter(|(_, f)| matches!(f, Found::Primary(_)))
        .count();
    let silent = survey
        .servers
        .iter()
        .any(|(_, f)| matches!(f, Found::Unreachable(e) if e.1 == db::Reach::NoAnswer));
    let text = format!(
        "{}: no usable primary{}: {}",
        cfg.primary.field,
        if primaries > 1 {
            " (more than one server takes writes: a split brain? pgmaint chooses none)"
        } else {
            ""
        },
        survey.describe()
    );
    if primaries == 0 && silent {
        ConnectError::no_answer(text)
    } else {
        ConnectError(text, db::Reach::TurnedDown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_host_dsn_is_one_dsn_per_host_with_the_same_settings() {
        let dsn = Dsn {
            config: "host=a,b,c port=5432,5433,5434 user=pgm dbname=app sslmode=require connect_timeout=4"
                .parse()
                .unwrap(),
            field: "primary.dsn".into(),
        };
        let each = hosts(&dsn);
        let addrs: Vec<String> = each.iter().map(address).collect();
        assert_eq!(addrs, ["a:5432", "b:5433", "c:5434"]);
        for d in &each {
            assert_eq!(d.config.get_user(), Some("pgm"));
            assert_eq!(d.config.get_dbname(), Some("app"));
            assert_eq!(
                d.config.get_ssl_mode(),
                tokio_postgres::config::SslMode::Require
            );
            assert_eq!(
                d.config.get_connect_timeout(),
                Some(&Duration::from_secs(4))
            );
        }
        // One port for all hosts.
        let one: Dsn = Dsn {
            config: "host=a,b port=6000".parse().unwrap(),
            field: "primary.dsn".into(),
        };
        let addrs: Vec<String> = hosts(&one).iter().map(address).collect();
        assert_eq!(addrs, ["a:6000", "b:6000"]);
    }
}
