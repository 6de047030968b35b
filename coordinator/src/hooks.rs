//! The operator's failover hooks, run through `sh -c`:
//! - `failover.witness_command`: asked before a failover whether the primary is alive
//!   (exit 0: alive, no failover). A witness that cannot run, or does not answer within
//!   [`WITNESS_TIMEOUT`], says nothing either way.
//! - `failover.fence_command`: run just before the promotion, to make sure the old
//!   primary takes no more writes (STONITH, a firewall rule, a pgbouncer pause). A
//!   non-zero exit, or no exit within [`FENCE_TIMEOUT`], aborts the failover.
//!
//! Both get the old primary in their environment: `PGMAINT_OLD_PRIMARY_HOST`,
//! `PGMAINT_OLD_PRIMARY_PORT` (the first server of `primary.dsn`) and
//! `PGMAINT_OLD_PRIMARIES` (every server, `host:port` comma-separated); the fence also
//! gets the candidate, `PGMAINT_NEW_PRIMARY` (its name), `PGMAINT_NEW_PRIMARY_HOST` and
//! `PGMAINT_NEW_PRIMARY_PORT`.

use std::process::Stdio;
use std::time::Duration;

use crate::config::{Config, Dsn, ReplicaConfig};
use crate::{db, primary};

/// How long a witness may take.
pub const WITNESS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a fence may take.
pub const FENCE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the witness said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Witness {
    /// Exit 0: the primary is alive.
    Alive,
    /// Another exit code: it does not vouch for the primary.
    NotAlive(String),
    /// It could not run or did not finish: no evidence either way.
    Silent(String),
}

/// Ask `failover.witness_command`, if set.
pub async fn witness(cfg: &Config) -> Option<Witness> {
    let cmd = cfg.failover.witness_command.as_deref()?;
    let env = old_primary_env(&cfg.primary);
    Some(match run(cmd, &env, WITNESS_TIMEOUT).await {
        Ok(0) => Witness::Alive,
        Ok(code) => Witness::NotAlive(format!("exited {code}")),
        Err(e) => Witness::Silent(e),
    })
}

/// Run `failover.fence_command`, if set, before promoting `candidate`. `Err`: why the
/// failover must not go on.
pub async fn fence(cfg: &Config, candidate: &ReplicaConfig) -> Result<(), String> {
    let Some(cmd) = cfg.failover.fence_command.as_deref() else {
        return Ok(());
    };
    let mut env = old_primary_env(&cfg.primary);
    let (hosts, ports) = db::hosts_and_ports(&candidate.dsn.config);
    env.push(("PGMAINT_NEW_PRIMARY", candidate.name.clone()));
    env.push((
        "PGMAINT_NEW_PRIMARY_HOST",
        hosts.first().cloned().unwrap_or_default(),
    ));
    env.push((
        "PGMAINT_NEW_PRIMARY_PORT",
        ports.first().cloned().unwrap_or("5432".into()),
    ));
    tracing::info!(command = %cmd, "failover: running failover.fence_command");
    match run(cmd, &env, FENCE_TIMEOUT).await {
        Ok(0) => {
            tracing::info!("failover: failover.fence_command succeeded");
            Ok(())
        }
        Ok(code) => Err(format!("failover.fence_command exited {code}")),
        Err(e) => Err(format!("failover.fence_command: {e}")),
    }
}

/// The old primary, for a hook's environment.
fn old_primary_env(listed: &Dsn) -> Vec<(&'static str, String)> {
    let servers = primary::hosts(listed);
    let all: Vec<String> = servers.iter().map(primary::address).collect();
    let (hosts, ports) = db::hosts_and_ports(&listed.config);
    vec![
        (
            "PGMAINT_OLD_PRIMARY_HOST",
            hosts.first().cloned().unwrap_or("localhost".into()),
        ),
        (
            "PGMAINT_OLD_PRIMARY_PORT",
            ports.first().cloned().unwrap_or("5432".into()),
        ),
        ("PGMAINT_OLD_PRIMARIES", all.join(",")),
    ]
}

/// `sh -c cmd` with `env`, its output logged; its exit code (`Err`: it did not run or
/// finish within `timeout`, or was killed by a signal).
async fn run(cmd: &str, env: &[(&str, String)], timeout: Duration) -> Result<i32, String> {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("could not run {cmd:?}: {e}"))?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => {
            return Err(format!(
                "{cmd:?} did not finish within {}s",
                timeout.as_secs()
            ))
        }
        Ok(Err(e)) => return Err(format!("{cmd:?}: {e}")),
        Ok(Ok(out)) => out,
    };
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        tracing::info!(command = %cmd, "{line}");
    }
    out.status
        .code()
        .ok_or_else(|| format!("{cmd:?} was killed by a signal"))
}
