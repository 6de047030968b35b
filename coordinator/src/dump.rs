//! `pgmaint dump`: an operator-triggered consistent dump of the frozen replica, through
//! `pg_dump -Fd -j N` (pg_dump's parallel mode works on a standby: it shares one
//! snapshot exported with `pg_export_snapshot()` among its workers).
//!
//! The dump runs inside the same cycle as scans (lease, pre-checks, confirmed pause,
//! watchdog, validity check, resume on every path); this module only knows how to find
//! pg_dump, run it, and describe what it wrote.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use snapshot_runner::{DataFile, ManifestTask, ResultManifest, ResultsMode};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::UsageError;

/// What to dump, and where.
#[derive(Debug, Clone)]
pub struct DumpSpec {
    /// Output directory: must not exist yet (pgmaint then creates it, with `mode`'s
    /// directory bits), or be empty (left as it is: the operator's directory).
    pub out: PathBuf,
    /// `pg_dump -j`.
    pub jobs: u32,
    /// pg_dump to use; default: the one matching the server's major version.
    pub pg_dump: Option<PathBuf>,
    /// A `[[dumps]]` entry's run: `out` is then the entry's directory until the cycle
    /// claims the run's own subdirectory in it (named by the run id), and that
    /// subdirectory after. `None`: `out` is the dump's directory (`dump --out`).
    pub named: Option<NamedDump>,
    /// `results.mode`: of every file in the dump (pg_dump's too) and of the
    /// directories pgmaint creates for it.
    pub mode: ResultsMode,
}

/// The `[[dumps]]` entry a dump runs for.
#[derive(Debug, Clone)]
pub struct NamedDump {
    /// The entry's name (written in the directory's ownership marker).
    pub name: String,
    /// Whether the run's subdirectory was claimed (and `out` is it).
    pub claimed: bool,
}

impl DumpSpec {
    /// For a named dump, once the cycle holds its lease: claim the run's own
    /// subdirectory of the entry's directory and dump into it (see [`crate::dump_dirs`]).
    pub async fn claim_run_dir(
        &mut self,
        primary: &tokio_postgres::Client,
        run_id: i64,
    ) -> Result<()> {
        let Some(named) = &mut self.named else {
            return Ok(());
        };
        if !named.claimed {
            self.out = crate::dump_dirs::claim(primary, &self.out, run_id, self.mode).await?;
            named.claimed = true;
        }
        Ok(())
    }

    /// For a named dump whose subdirectory was claimed, when its run ends (whatever the
    /// outcome): the marker that tells pruning the directory is pgmaint's.
    pub fn mark_owned(&self, run_id: i64) {
        if let Some(NamedDump {
            name,
            claimed: true,
        }) = &self.named
        {
            if let Err(e) = crate::dump_dirs::write_marker(&self.out, name, run_id, self.mode) {
                tracing::warn!(dir = %self.out.display(), error = %crate::error_text::OneLine::one_line(&e), "could not mark the dump directory as pgmaint's; pruning will leave it");
            }
        }
    }

    /// `dump --out` naming a directory that does not exist yet: create it, with the
    /// directory mode, once the checks passed (pg_dump would make it 0700 whatever
    /// `results.mode` says). An existing one is left as it is.
    pub fn create_out(&self) -> Result<()> {
        if self.named.is_some() || self.out.exists() {
            return Ok(());
        }
        self.mode
            .create_dir(&self.out)
            .with_context(|| format!("--out: creating {}", self.out.display()))
    }

    /// Check the output directory before anything is paused.
    pub fn check_out(&self) -> Result<()> {
        if self.jobs == 0 {
            bail!(UsageError("--jobs: must be at least 1".into()));
        }
        match std::fs::read_dir(&self.out) {
            Ok(entries) => {
                if entries.count() > 0 {
                    bail!(UsageError(format!(
                        "--out: {} exists and is not empty",
                        self.out.display()
                    )));
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let parent = self
                    .out
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                if !parent.is_dir() {
                    bail!(UsageError(format!(
                        "--out: parent directory {} does not exist",
                        parent.display()
                    )));
                }
                Ok(())
            }
            Err(e) => bail!(UsageError(format!("--out: {}: {e}", self.out.display()))),
        }
    }
}

/// pg_dump must be at least as new as the server; prefer the server's own major version.
pub fn find_pg_dump(spec: &DumpSpec, server_major: u32) -> Result<PathBuf> {
    if let Some(p) = &spec.pg_dump {
        return Ok(p.clone());
    }
    let packaged = PathBuf::from(format!("/usr/lib/postgresql/{server_major}/bin/pg_dump"));
    if packaged.exists() {
        return Ok(packaged);
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("pg_dump"))
                .find(|p| p.exists())
        })
        .unwrap_or_default();
    on_path.ok_or_else(|| {
        anyhow!(UsageError(format!(
            "pg_dump for PostgreSQL {server_major} not found (looked in /usr/lib/postgresql/{server_major}/bin and PATH); \
             install it or pass --pg-dump"
        )))
    })
}

/// In a child before exec: die (SIGKILL) when pgmaint dies, even by SIGKILL, so that no
/// pg_dump or hook outlives it (a dump without its marker, a hook acting late). If
/// pgmaint (`parent`, its pid before the fork) died already, exit now.
pub(crate) fn die_with_parent(parent: u32) -> std::io::Result<()> {
    // SAFETY: prctl(2) and getppid(2) are async-signal-safe.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getppid() as u32 != parent {
            libc::_exit(1);
        }
    }
    Ok(())
}

/// A libpq connection string for `config`, without the password (handed over in a
/// private password file instead, [`PrivatePassFile`], so it never shows in `ps` nor
/// in the child's environment). The TLS settings are the DSN's as pgmaint resolved
/// them (`sslmode`, and `sslrootcert`, `sslcert`, `sslkey` as absolute paths), so
/// pg_dump verifies the server exactly as pgmaint does.
pub fn libpq_conninfo(config: &snapshot_runner::connection::Config) -> (String, Option<String>) {
    fn quote(v: &str) -> String {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }
    let mut parts = Vec::new();
    let (hosts, ports) = crate::db::hosts_and_ports(config);
    if !hosts.is_empty() {
        parts.push(format!("host={}", quote(&hosts.join(","))));
    }
    // Without it, pg_dump would go by `host` (or the local socket) and might reach
    // another server than the paused replica pgmaint checks.
    let hostaddrs: Vec<String> = config
        .get_hostaddrs()
        .iter()
        .map(|a| a.to_string())
        .collect();
    if !hostaddrs.is_empty() {
        parts.push(format!("hostaddr={}", quote(&hostaddrs.join(","))));
    }
    if !ports.is_empty() {
        parts.push(format!("port={}", quote(&ports.join(","))));
    }
    if let Some(u) = config.get_user() {
        parts.push(format!("user={}", quote(u)));
    }
    if let Some(d) = config.get_dbname() {
        parts.push(format!("dbname={}", quote(d)));
    }
    let tls = config.tls().options();
    // pgmaint treats `allow` as `prefer` (TLS first); libpq's `allow` would try without.
    let mode = match tls.mode {
        snapshot_runner::connection::tls::SslMode::Allow => "prefer",
        m => m.as_str(),
    };
    parts.push(format!("sslmode={mode}"));
    // With `require` (no certificate check), channel binding is what stops a relay of
    // the SCRAM exchange: pg_dump must insist on it when pgmaint does.
    let binding = match config.get_channel_binding() {
        tokio_postgres::config::ChannelBinding::Disable => Some("disable"),
        tokio_postgres::config::ChannelBinding::Require => Some("require"),
        _ => None,
    };
    if let Some(b) = binding {
        parts.push(format!("channel_binding={b}"));
    }
    if let Some(root) = &tls.root_cert {
        parts.push(format!("sslrootcert={}", quote(&root.to_string())));
    }
    if let Some((cert, key)) = &tls.client_cert {
        parts.push(format!("sslcert={}", quote(&cert.display().to_string())));
        parts.push(format!("sslkey={}", quote(&key.display().to_string())));
    }
    if let Some(t) = config.get_connect_timeout() {
        parts.push(format!("connect_timeout={}", t.as_secs().max(1)));
    }
    if let Some(o) = config.get_options() {
        parts.push(format!("options={}", quote(o)));
    }
    let password = config
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    (parts.join(" "), password)
}

/// Run pg_dump against the paused replica. `cancel` kills it (the cycle then closes the
/// sessions it left, found by `application_name`).
pub async fn run_pg_dump(
    pg_dump: &Path,
    replica: &snapshot_runner::connection::Config,
    spec: &DumpSpec,
    application_name: &str,
    lock_timeout: Duration,
    progress_every: Duration,
    cancel: &CancellationToken,
) -> Result<()> {
    let (conninfo, password) = libpq_conninfo(replica);
    let mut cmd = tokio::process::Command::new(pg_dump);
    cmd.arg("--format=directory")
        .arg(format!("--jobs={}", spec.jobs))
        .arg(format!(
            "--lock-wait-timeout={}",
            lock_timeout.as_millis().max(1)
        ))
        .arg("--no-password")
        .arg("--file")
        .arg(&spec.out)
        .arg("--dbname")
        .arg(&conninfo)
        .env("PGAPPNAME", application_name)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // pg_dump creates its files with the process umask (from 0666): give it the one
    // that makes them `results.mode`, in the child only, so no file of the dump is
    // ever readable by more than the mode allows, even while it is being written.
    let umask = spec.mode.umask() as libc::mode_t;
    let parent = std::process::id();
    // SAFETY: umask(2) and prctl(2) are async-signal-safe and touch only the child's
    // own state.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(umask);
            die_with_parent(parent)
        });
    }
    let _passfile = give_password(&mut cmd, password.as_deref())?;
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", pg_dump.display()))?;
    let mut stderr = child.stderr.take().expect("piped");
    let collect = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let started = Instant::now();
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("waiting for pg_dump")?,
            _ = cancel.cancelled() => {
                let _ = child.kill().await;
                bail!("pg_dump stopped: the cycle was aborted");
            }
            _ = tokio::time::sleep(progress_every) => {
                let (files, bytes) = dir_usage(&spec.out);
                tracing::info!(files, mb = bytes / 1_000_000, secs = started.elapsed().as_secs(), "dump in progress");
            }
        }
    };
    let stderr = collect.await.unwrap_or_default();
    if !status.success() {
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message");
        bail!("pg_dump failed ({status}): {last}");
    }
    Ok(())
}

/// A password file of pgmaint's own for one pg_dump: created mode 0600 (never readable
/// by anyone else, not even for a moment), one `*:*:*:*:password` line, removed when
/// dropped, so on every way out of [`run_pg_dump`] (an error and a cancel too).
pub struct PrivatePassFile(PathBuf);

impl PrivatePassFile {
    /// Write `password` to a new file in the temporary directory.
    pub fn create(password: &str) -> Result<PrivatePassFile> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = std::env::temp_dir();
        let name = format!(
            "pgmaint-pgpass-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let path = dir.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| {
                format!("creating a password file for pg_dump in {}", dir.display())
            })?;
        let file_guard = PrivatePassFile(path);
        file.write_all(crate::config::libpq::pgpass::wildcard_line(password).as_bytes())
            .with_context(|| format!("writing {}", file_guard.0.display()))?;
        Ok(file_guard)
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivatePassFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            tracing::warn!(file = %self.0.display(), error = %e, "could not remove pg_dump's password file");
        }
    }
}

/// The child's password: `PGPASSFILE` pointing at a private file (returned: keep it
/// until the child is gone), never `PGPASSWORD`. The connection string is complete,
/// so no `PG*` variable of pgmaint's environment applies to pg_dump (a `PGSSLROOTCERT`
/// or `PGOPTIONS` would make pg_dump connect otherwise than pgmaint did), but the
/// `PGAPPNAME` set for it.
fn give_password(
    cmd: &mut tokio::process::Command,
    password: Option<&str>,
) -> Result<Option<PrivatePassFile>> {
    for (var, _) in std::env::vars_os() {
        if var
            .to_str()
            .is_some_and(|v| v.starts_with("PG") && v != "PGAPPNAME")
        {
            cmd.env_remove(var);
        }
    }
    let Some(password) = password else {
        return Ok(None);
    };
    let file = PrivatePassFile::create(password)?;
    cmd.env("PGPASSFILE", file.path());
    Ok(Some(file))
}

fn dir_usage(dir: &Path) -> (u64, u64) {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .fold((0, 0), |(n, b), m| (n + 1, b + m.len()))
        })
        .unwrap_or((0, 0))
}

/// Leave `INVALID` (with the reason, of `mode`) in a dump directory whose dump failed
/// or whose snapshot moved, if pg_dump got as far as writing anything there.
pub fn mark_invalid(out: &Path, why: &str, mode: ResultsMode) {
    let written = std::fs::read_dir(out)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if written {
        let text = format!("This is not a usable pgmaint dump: {why}\n");
        if let Err(e) = mode.write(&out.join("INVALID"), text.as_bytes()) {
            tracing::warn!(dir = %out.display(), error = %e, "could not mark the dump invalid");
        }
    }
}

/// Hash every file pg_dump wrote (after replay resumed: hashing is not worth a longer
/// pause) and write the manifest (of `mode`) into the dump directory, next to pg_dump's
/// own files.
pub fn write_manifest(
    out: &Path,
    mut manifest: ResultManifest,
    elapsed: Duration,
    mode: ResultsMode,
) -> Result<ManifestTask> {
    let mut files = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(out)
        .with_context(|| format!("reading {}", out.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    for path in names {
        let (md5, size) = snapshot_runner::results::data_files::file_md5(&path)
            .with_context(|| format!("hashing {}", path.display()))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        files.push(DataFile {
            name,
            columns: Vec::new(),
            rows: 0,
            size,
            md5,
            snapshot_lsn: None,
        });
    }
    let task = ManifestTask {
        name: "dump".into(),
        kind: "pg_dump".into(),
        status: "completed".into(),
        rows_scanned: 0,
        findings: 0,
        relation: None,
        file: None,
        files,
        error: None,
    };
    manifest.tasks = vec![task.clone()];
    manifest.write(out, mode)?;
    tracing::info!(dir = %out.display(), files = task.files.len(), secs = elapsed.as_secs_f64(), "dump manifest written");
    Ok(task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_private_password_file_is_0600_gives_the_password_and_goes_when_dropped() {
        use std::os::unix::fs::PermissionsExt;
        let file = PrivatePassFile::create(r"a:b\c").unwrap();
        let path = file.path().to_path_buf();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = crate::config::libpq::pgpass::read(&path).expect("a file libpq accepts");
        let any = crate::config::libpq::pgpass::Target {
            host: "db1",
            port: "5433",
            dbname: "app",
            user: "u",
        };
        assert_eq!(
            crate::config::libpq::pgpass::lookup(&text, &any).as_deref(),
            Some(r"a:b\c")
        );
        drop(file);
        assert!(!path.exists());
    }

    #[test]
    fn conninfo_quotes_values_and_keeps_the_password_out() {
        let c: tokio_postgres::Config =
            "host=db1 port=5433 user=o'neil dbname='my db' password=s3cret sslmode=require"
                .parse()
                .unwrap();
        let (info, password) = libpq_conninfo(&c.into());
        assert_eq!(
            info,
            r"host='db1' port='5433' user='o\'neil' dbname='my db' sslmode=require"
        );
        assert_eq!(password.as_deref(), Some("s3cret"));
        let c: snapshot_runner::connection::Config = "hostaddr=10.0.0.5 port=5433 user=u dbname=d"
            .parse::<tokio_postgres::Config>()
            .unwrap()
            .into();
        assert!(
            libpq_conninfo(&c).0.contains("hostaddr='10.0.0.5'"),
            "{}",
            libpq_conninfo(&c).0
        );
    }

    #[test]
    fn conninfo_keeps_channel_binding_and_reads_allow_as_prefer() {
        let c: tokio_postgres::Config =
            "host=h user=u dbname=d sslmode=require channel_binding=require"
                .parse()
                .unwrap();
        let info = libpq_conninfo(&c.into()).0;
        assert!(
            info.contains("sslmode=require channel_binding=require"),
            "{info}"
        );
        let allow = snapshot_runner::connection::Config::new(
            "host=h user=u dbname=d".parse().unwrap(),
            snapshot_runner::connection::tls::TlsSettings::new(
                snapshot_runner::connection::tls::TlsOptions {
                    mode: snapshot_runner::connection::tls::SslMode::Allow,
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        let info = libpq_conninfo(&allow).0;
        assert!(
            info.contains("sslmode=prefer") && !info.contains("channel_binding"),
            "{info}"
        );
    }
}
