//! The operator's failover hooks, run through `sh -c`:
//! - `failover.witness_command`: asked before a failover whether the primary is alive
//!   (exit 0: alive, no failover; another exit code: it does not vouch for it). A
//!   witness that cannot run (126, 127), is killed, or does not answer within
//!   [`WITNESS_TIMEOUT`] gives no answer, and no failover happens without one: the
//!   operator asked for a second opinion.
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
use crate::db;
use crate::failover::primary;

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
        // The shell's "cannot run" and "not found": no answer, not "dead".
        Ok(code @ (126 | 127)) => {
            Witness::Silent(format!("exited {code} (the command could not run)"))
        }
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

/// `sh -c cmd` with `env`, in a process group of its own, its output logged as it
/// comes; its exit code (`Err`: it did not start, did not exit within `timeout` — then
/// its whole group is killed — or was killed by a signal). A background child that
/// keeps the output open does not hold the answer up.
async fn run(cmd: &str, env: &[(&str, String)], timeout: Duration) -> Result<i32, String> {
    let mut command = tokio::process::Command::new("sh");
    // SAFETY: see die_with_parent: only async-signal-safe calls in the child.
    unsafe {
        let parent = std::process::id();
        command.pre_exec(move || crate::dump::die_with_parent(parent));
    }
    let mut child = command
        .arg("-c")
        .arg(cmd)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        // What the hook needs is in its environment; pgmaint's secrets are not.
        .env_remove("PGPASSWORD")
        .env_remove("PGMAINT_PRIMARY")
        .env_remove("PGMAINT_REPLICA")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("could not run {cmd:?}: {e}"))?;
    let group = child.id();
    let logging = log_output(cmd, child.stdout.take(), child.stderr.take());
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Err(_) => {
            kill_group(group);
            return Err(format!(
                "{cmd:?} did not finish within {}s (killed)",
                timeout.as_secs()
            ));
        }
        Ok(Err(e)) => return Err(format!("{cmd:?}: {e}")),
        Ok(Ok(status)) => status,
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), logging).await;
    status
        .code()
        .ok_or_else(|| format!("{cmd:?} was killed by a signal"))
}

/// Log what the command writes, line by line as it comes (the first 200 lines; the
/// rest is read and dropped, so that a chatty command never blocks on a full pipe).
fn log_output(
    cmd: &str,
    out: Option<tokio::process::ChildStdout>,
    err: Option<tokio::process::ChildStderr>,
) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let cmd = cmd.to_string();
    tokio::spawn(async move {
        let mut lines = 0;
        let mut out = out.map(|o| BufReader::new(o).lines());
        let mut err = err.map(|e| BufReader::new(e).lines());
        while out.is_some() || err.is_some() {
            let line = tokio::select! {
                l = async { out.as_mut().expect("checked").next_line().await }, if out.is_some() => {
                    l.unwrap_or(None).or_else(|| { out = None; None })
                }
                l = async { err.as_mut().expect("checked").next_line().await }, if err.is_some() => {
                    l.unwrap_or(None).or_else(|| { err = None; None })
                }
            };
            if let Some(line) = line {
                lines += 1;
                if lines <= 200 {
                    tracing::info!(command = %cmd, "{line}");
                }
            }
        }
    })
}

/// Kill the process group `group` (the hook and whatever it started).
fn kill_group(group: Option<u32>) {
    if let Some(pid) = group {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn exit_codes_time_outs_and_background_children() {
        assert_eq!(run("exit 3", &[], FENCE_TIMEOUT).await, Ok(3));
        assert_eq!(
            run("test \"$X\" = y", &[("X", "y".into())], FENCE_TIMEOUT).await,
            Ok(0)
        );
        assert_eq!(
            run("no-such-witness-command", &[], FENCE_TIMEOUT).await,
            Ok(127)
        );
        // A background child holding the output open does not hold the answer up.
        let started = Instant::now();
        assert_eq!(run("sleep 5 & exit 0", &[], FENCE_TIMEOUT).await, Ok(0));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        // Over its time: killed, with what it started.
        let started = Instant::now();
        let e = run("sleep 30; exit 0", &[], Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(e.contains("did not finish within"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(run("kill -9 $$", &[], FENCE_TIMEOUT)
            .await
            .unwrap_err()
            .contains("killed by a signal"));
    }
}
