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

/// A configured replica that is out of recovery and the newest primary of its system:
/// promoted (by pgmaint, recorded or not, or by hand).
#[derive(Debug, Clone)]
pub struct PromotedReplica {
    /// Its config name.
    pub name: String,
    /// Its DSN.
    pub dsn: Dsn,
    /// Its identity.
    pub id: ServerIdentity,
}

/// Every server of `primary.dsn`, what it is, and the one to use.
#[derive(Debug)]
pub struct Survey {
    /// Each listed server and what it is.
    pub servers: Vec<(Dsn, Found)>,
    /// Index into `servers` of the primary to use.
    pub chosen: Option<usize>,
    /// A configured replica that is the primary now (it supersedes every listed
    /// server), if one is.
    pub promoted: Option<PromotedReplica>,
}

impl Survey {
    /// One line per server that is not the chosen primary, for an error or status.
    pub fn describe(&self) -> String {
        let mut all: Vec<String> = self
            .servers
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
            .collect();
        if let Some(p) = &self.promoted {
            all.push(format!(
                "replica {} ({}) is the primary now, on timeline {}: point primary.dsn at it (or list every \
                 server in primary.dsn)",
                p.name,
                address(&p.dsn),
                p.id.timeline
            ));
        }
        all.join("; ")
    }
}

/// One writable server as the timeline rule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writable {
    /// Its identity (its current timeline).
    pub id: ServerIdentity,
    /// The timelines its history descends from (from its timeline's history file);
    /// `None` when that file could not be read.
    pub ancestors: Option<Vec<i32>>,
}

/// The timeline rule (the servers are the truth): a writable server is superseded by
/// another of the same system on a higher timeline whose history descends from its
/// timeline (or whose history cannot be read: a higher timeline of one system is made
/// by a promotion after it). For each server, the index of the newest one that
/// supersedes it. Two writable servers on one timeline supersede neither: a split
/// brain, which no timeline can settle.
pub fn superseded(servers: &[Writable]) -> Vec<Option<usize>> {
    servers
        .iter()
        .map(|old| {
            servers
                .iter()
                .enumerate()
                .filter(|(_, new)| {
                    new.id.system_identifier == old.id.system_identifier
                        && new.id.timeline > old.id.timeline
                        && new
                            .ancestors
                            .as_ref()
                            .is_none_or(|a| a.contains(&old.id.timeline))
                })
                .max_by_key(|(_, new)| new.id.timeline)
                .map(|(i, _)| i)
        })
        .collect()
}

/// The timelines a server's current timeline descends from, from its history file
/// (`None`: unreadable, e.g. without the privilege to read it).
pub async fn ancestors(client: &Client, tli: i32) -> Option<Vec<i32>> {
    if tli <= 1 {
        return Some(Vec::new());
    }
    match super::servers::timeline_history(client, tli).await {
        Ok(text) => Some(super::servers::parse_history_all(&text)),
        Err(e) => {
            tracing::debug!("timeline {tli}'s history file: {e}");
            None
        }
    }
}

/// One server seen by a survey: connected and not in recovery, with its identity.
async fn writable(client: &Client) -> Result<Option<Writable>, String> {
    match crate::replica::server_identity(client).await {
        Err(e) => Err(format!("{e:#}")),
        Ok(None) => Ok(None),
        Ok(Some(id)) => Ok(Some(Writable {
            id,
            ancestors: ancestors(client, id.timeline).await,
        })),
    }
}

/// Ask every server of `cfg.primary`, and every configured replica, what it is, and
/// choose the primary: not in recovery, not fenced by a recorded promotion (on this
/// host, or on any server asked), and not superseded by a server of its system on a
/// newer timeline ([`superseded`]: a replica promoted by hand, or by a pgmaint whose
/// record is lost, fences the old primary all the same).
pub async fn survey(
    cfg: &Config,
    application_name: &str,
) -> Result<(Survey, Vec<Client>), ConnectError> {
    survey_within(cfg, application_name, Duration::from_secs(15)).await
}

/// [`survey`], each connection attempt bounded by `patience`.
pub async fn survey_within(
    cfg: &Config,
    application_name: &str,
    patience: Duration,
) -> Result<(Survey, Vec<Client>), ConnectError> {
    // Fail closed: an unreadable record of promotions could hide a former primary.
    let mut promotions: Vec<Promotion> = journal::read_local(&cfg.results_dir).map_err(|e| {
        ConnectError(
            format!("{e:#} (the promotions pgmaint recorded on this host)"),
            db::Reach::TurnedDown,
        )
    })?;
    let connect = |dsn: Dsn| async move {
        match tokio::time::timeout(patience, db::connect(&dsn, application_name)).await {
            Err(_) => Err(ConnectError::no_answer(format!(
                "no answer within {}s",
                patience.as_secs_f64()
            ))),
            Ok(r) => r,
        }
    };
    // pgmaint.promotions replicates: the replicas know of a promotion run from another
    // host even when primary.dsn does not list the new primary. A replica out of
    // recovery may be the primary now.
    let replicas = futures_util::future::join_all(cfg.replicas.iter().map(|r| async move {
        let Ok(c) = connect(r.dsn.clone()).await else {
            return None;
        };
        let promotions = journal::read_on(&c).await;
        let w = writable(&c).await.ok().flatten();
        Some((r, promotions, w))
    }))
    .await;
    let mut promoted_replicas = Vec::new();
    for (r, p, w) in replicas.into_iter().flatten() {
        promotions.extend(p);
        if let Some(w) = w {
            promoted_replicas.push((r, w));
        }
    }
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    let mut seen = Vec::new();
    for dsn in hosts(&cfg.primary) {
        let found = match connect(dsn.clone()).await {
            Err(e) => Found::Unreachable(e),
            Ok(client) => match writable(&client).await {
                // A session that fails its first query: most likely a server going away.
                Err(e) => Found::Unreachable(ConnectError::no_answer(e)),
                Ok(None) => Found::Standby,
                Ok(Some(w)) => {
                    promotions.extend(journal::read_on(&client).await);
                    clients.push((servers.len(), client));
                    seen.push((servers.len(), w.clone()));
                    Found::Primary(w.id)
                }
            },
        };
        servers.push((dsn, found));
    }
    // A replica listed in primary.dsn too is one server: compare it once.
    let listed: Vec<String> = servers.iter().map(|(d, _)| address(d)).collect();
    promoted_replicas.retain(|(r, _)| !listed.contains(&address(&r.dsn)));
    // The timeline rule over every writable server seen, listed or not.
    let all: Vec<Writable> = seen
        .iter()
        .map(|(_, w)| w.clone())
        .chain(promoted_replicas.iter().map(|(_, w)| w.clone()))
        .collect();
    let newer = superseded(&all);
    let names: Vec<String> = seen
        .iter()
        .map(|(at, _)| address(&servers[*at].0))
        .chain(
            promoted_replicas
                .iter()
                .map(|(r, _)| format!("replica {} ({})", r.name, address(&r.dsn))),
        )
        .collect();
    for (k, (at, w)) in seen.iter().enumerate() {
        let id = w.id;
        let fenced = if let Some(p) =
            journal::fenced_by(&promotions, id.system_identifier, id.timeline)
        {
            Some(format!(
                "replica {} was promoted to timeline {} at {}",
                p.replica, p.new_timeline, p.promoted_at
            ))
        } else {
            newer[k].map(|j| {
                format!(
                    "{} is a primary of the same system on timeline {}, which descends from timeline {}",
                    names[j],
                    all[j].id.timeline,
                    id.timeline
                )
            })
        };
        if let Some(why) = fenced {
            servers[*at].1 = Found::Fenced(id, why);
        }
    }
    // A configured replica out of recovery, neither fenced nor superseded: the primary
    // now, if no listed server also takes writes (then it is a split brain).
    let promoted: Vec<PromotedReplica> = promoted_replicas
        .iter()
        .enumerate()
        .filter(|(k, (_, w))| {
            newer[seen.len() + k].is_none()
                && journal::fenced_by(&promotions, w.id.system_identifier, w.id.timeline).is_none()
        })
        .map(|(_, (r, w))| PromotedReplica {
            name: r.name.clone(),
            dsn: r.dsn.clone(),
            id: w.id,
        })
        .collect();
    // Two unfenced primaries (a split brain, or a failover outside pgmaint): choosing
    // either could write to the wrong one.
    let primaries = servers
        .iter()
        .filter(|(_, f)| matches!(f, Found::Primary(_)))
        .count();
    let chosen = if primaries == 1 && promoted.is_empty() {
        servers
            .iter()
            .position(|(_, f)| matches!(f, Found::Primary(_)))
    } else {
        None
    };
    let promoted = if primaries == 0 && promoted.len() == 1 {
        promoted.into_iter().next()
    } else {
        None
    };
    let clients = clients
        .into_iter()
        .filter(|(i, _)| Some(*i) == chosen)
        .map(|(_, c)| c)
        .collect();
    Ok((
        Survey {
            servers,
            chosen,
            promoted,
        },
        clients,
    ))
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
    let primaries = if primaries == 1 && survey.chosen.is_none() {
        // The other one is a configured replica out of recovery.
        2
    } else {
        primaries
    };
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
