//! libpq's conventions for what a DSN leaves out, so that pgmaint (and the pg_dump it
//! runs) connects where `psql` would with the same DSN and environment
//! (<https://www.postgresql.org/docs/current/libpq-connect.html>):
//!
//! 1. the DSN's own keywords (`service` and `passfile` are taken out: tokio-postgres
//!    knows neither, and refuses a string that has them);
//! 2. the keywords of its service (`service=`, else `PGSERVICE`) fill what it leaves
//!    out ([`service`]);
//! 3. then the environment (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, …, [`ENV`]);
//! 4. then libpq's defaults: the local Unix socket (else `localhost`), the operating
//!    system user;
//! 5. with still no password, the password file (`passfile`, else `PGPASSFILE`, else
//!    `~/.pgpass`), matched on host, port, database and user ([`pgpass`]).
//!
//! Written here rather than taken from a crate: no crate on crates.io parses both
//! pg_service.conf and .pgpass with libpq's rules and is kept up (sqlx-postgres has a
//! pgpass reader, private to it; tokio-postgres reads neither), and the rules are
//! small enough to test line by line.

use std::path::{Path, PathBuf};

use snapshot_runner::connection::tls::{RootCert, SslMode, TlsOptions, TlsSettings};
use snapshot_runner::connection::Config;

use crate::conninfo;

pub mod pgpass;
pub mod service;

/// Environment variables and the keywords whose value they give when a DSN (or its
/// service) leaves them out.
pub const ENV: &[(&str, &str)] = &[
    ("PGHOST", "host"),
    ("PGHOSTADDR", "hostaddr"),
    ("PGPORT", "port"),
    ("PGDATABASE", "dbname"),
    ("PGUSER", "user"),
    ("PGPASSWORD", "password"),
    ("PGSSLMODE", "sslmode"),
    ("PGSSLROOTCERT", "sslrootcert"),
    ("PGSSLCERT", "sslcert"),
    ("PGSSLKEY", "sslkey"),
    ("PGAPPNAME", "application_name"),
    ("PGCONNECT_TIMEOUT", "connect_timeout"),
    ("PGOPTIONS", "options"),
];

/// Where a keyword's value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Dsn,
    Service(String, PathBuf),
    Env(&'static str),
    Default,
    PassFile(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Dsn => write!(f, "in the DSN"),
            Origin::Service(name, file) => write!(f, "from service {name:?} in {}", file.display()),
            Origin::Env(var) => write!(f, "from {var}"),
            Origin::Default => write!(f, "libpq's default"),
            Origin::PassFile(file) => write!(f, "from password file {}", file.display()),
        }
    }
}

/// One keyword of the resolved connection string.
#[derive(Debug, Clone)]
struct Entry {
    key: String,
    value: String,
    origin: Origin,
}

/// What the resolution reads besides the DSN: the environment and the home directory.
pub struct Env<'a> {
    /// An environment variable (empty counts as unset).
    pub var: &'a dyn Fn(&str) -> Option<String>,
    /// `$HOME`, else the user's home directory from the password database.
    pub home: Option<PathBuf>,
    /// The operating system user: libpq's default `user`.
    pub os_user: Option<String>,
}

fn process_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Env<'static> {
    /// This process's environment.
    pub fn process() -> Env<'static> {
        let (os_user, pw_home) = os_account();
        Env {
            var: &process_var,
            home: process_var("HOME").map(PathBuf::from).or(pw_home),
            os_user,
        }
    }
}

/// The effective user's name and home directory (getpwuid_r), as libpq finds them.
fn os_account() -> (Option<String>, Option<PathBuf>) {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: zeroed `passwd` is a valid out-parameter; `buf` outlives the reads below.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe {
        libc::getpwuid_r(
            libc::geteuid(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        )
    };
    if rc != 0 || out.is_null() {
        return (None, None);
    }
    // SAFETY: on success both point to NUL-terminated strings inside `buf`.
    let text = |p: *const libc::c_char| {
        unsafe { std::ffi::CStr::from_ptr(p) }
            .to_string_lossy()
            .into_owned()
    };
    (Some(text(pw.pw_name)), Some(PathBuf::from(text(pw.pw_dir))))
}

fn get<'e>(entries: &'e [Entry], key: &str) -> Option<&'e Entry> {
    entries.iter().find(|e| e.key == key)
}

fn fill(entries: &mut Vec<Entry>, key: &str, value: String, origin: Origin) {
    if get(entries, key).is_none() && !value.is_empty() {
        entries.push(Entry {
            key: key.to_string(),
            value,
            origin,
        });
    }
}

/// Resolve DSN `text` with libpq's conventions into a connection config (the
/// tokio-postgres config and the TLS settings). `Err` is one line (without the field
/// name) naming the keyword at fault.
pub fn resolve(text: &str, env: &Env) -> Result<Config, String> {
    let mut entries: Vec<Entry> = last_of_each(dsn_pairs(text)?)
        .into_iter()
        .map(|(key, value)| Entry {
            key,
            value,
            origin: Origin::Dsn,
        })
        .collect();
    let service = take(&mut entries, "service")
        .map(|e| e.value)
        .or_else(|| (env.var)("PGSERVICE"));
    if let Some(name) = service {
        let files = service::files(env.var, env.home.as_deref());
        let (file, pairs) = service::lookup(&files, &name)?;
        for (key, value) in pairs {
            fill(
                &mut entries,
                &key,
                value,
                Origin::Service(name.clone(), file.clone()),
            );
        }
    }
    let passfile = take(&mut entries, "passfile").map(|e| PathBuf::from(e.value));
    for (var, key) in ENV {
        if let Some(v) = (env.var)(var) {
            fill(&mut entries, key, v, Origin::Env(var));
        }
    }
    fill_defaults(&mut entries, env);
    // An empty password is no password: libpq then reads the password file.
    if get(&entries, "password").is_some_and(|e| e.value.is_empty()) {
        take(&mut entries, "password");
    }
    if get(&entries, "password").is_none() {
        let file = passfile
            .or_else(|| (env.var)("PGPASSFILE").map(PathBuf::from))
            .or_else(|| env.home.as_ref().map(|h| h.join(".pgpass")));
        if let Some(f) = file {
            if let Some(pw) = password_from_file(&f, &entries)? {
                fill(&mut entries, "password", pw, Origin::PassFile(f));
            }
        }
    }
    let tls = tls_settings(&mut entries, env)?;
    Ok(Config::new(build(&entries)?, tls))
}

/// libpq takes the last value of a keyword given twice: never a list of them.
fn last_of_each(pairs: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(pairs.len());
    for (key, value) in pairs {
        out.retain(|(k, _)| *k != key);
        out.push((key, value));
    }
    out
}

/// " (from PGSSLMODE)" and the like: where `e` came from, unless the DSN itself.
fn from(e: &Entry) -> String {
    match e.origin {
        Origin::Dsn => String::new(),
        ref o => format!(" ({o})"),
    }
}

/// The TLS settings of `entries`, with libpq's defaults (`~/.postgresql/root.crt`,
/// `postgresql.crt`, `postgresql.key`); the TLS keywords are taken out of `entries`
/// (tokio-postgres's own `sslmode` is set from them by [`Config::new`]).
fn tls_settings(entries: &mut Vec<Entry>, env: &Env) -> Result<TlsSettings, String> {
    if let Some(e) = take(entries, "sslpassword").filter(|e| !e.value.is_empty()) {
        return Err(format!(
            "sslpassword{}: encrypted client keys are not supported; decrypt the key \
             (`openssl pkey -in KEY -out KEY.plain`) and drop sslpassword",
            from(&e)
        ));
    }
    let mode_entry = take(entries, "sslmode");
    let root = take(entries, "sslrootcert");
    let cert = take(entries, "sslcert");
    let key = take(entries, "sslkey");
    let system = root.as_ref().is_some_and(|r| r.value == "system");
    let mode = match &mode_entry {
        Some(e) => SslMode::parse(&e.value).ok_or_else(|| {
            format!(
                "sslmode{}: invalid value {:?} (disable, allow, prefer, require, verify-ca or verify-full)",
                from(e),
                e.value
            )
        })?,
        // libpq 16: sslrootcert=system makes verify-full the default.
        None if system => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    let mode_from = mode_entry.as_ref().map(from).unwrap_or_default();
    if let (true, Some(r)) = (system && mode != SslMode::VerifyFull, &root) {
        return Err(format!(
            "sslmode{mode_from}: weak sslmode {:?} may not be used with sslrootcert=system{} (use \"verify-full\")",
            mode.as_str(),
            from(r)
        ));
    }
    if mode == SslMode::VerifyFull && get(entries, "host").is_none() {
        return Err(format!(
            "sslmode=verify-full{mode_from} needs `host`: the name the server's certificate is checked against \
             (hostaddr alone gives none)"
        ));
    }
    let default_file = |name: &str| env.home.as_ref().map(|h| h.join(".postgresql").join(name));
    let absolute = |v: &str| std::path::absolute(v).unwrap_or_else(|_| PathBuf::from(v));
    let mut options = TlsOptions {
        mode,
        ..Default::default()
    };
    if mode != SslMode::Disable {
        options.root_cert = match &root {
            Some(_) if system => Some(RootCert::System),
            Some(r) => {
                let path = absolute(&r.value);
                match (path.exists(), mode.verifies()) {
                    (true, _) => Some(RootCert::File(path)),
                    (false, true) => {
                        return Err(format!(
                            "sslrootcert{}: root certificate file {:?} does not exist (sslmode={} verifies the \
                             server's certificate against it; or sslrootcert=system for the system's trusted roots)",
                            from(r),
                            path.display().to_string(),
                            mode.as_str()
                        ))
                    }
                    // libpq: without the file, no verification (but for verify-*).
                    (false, false) => None,
                }
            }
            None => match default_file("root.crt") {
                Some(p) if p.exists() => Some(RootCert::File(p)),
                p if mode.verifies() => {
                    return Err(format!(
                        "sslrootcert: root certificate file {} does not exist (libpq's default; sslmode={} \
                         verifies the server's certificate against it: give sslrootcert, or sslrootcert=system \
                         for the system's trusted roots)",
                        p.map(|p| format!("{:?}", p.display().to_string()))
                            .unwrap_or_else(|| "~/.postgresql/root.crt (no home directory)".into()),
                        mode.as_str()
                    ))
                }
                _ => None,
            },
        };
        let cert_path = match &cert {
            Some(c) => {
                let path = absolute(&c.value);
                if !path.exists() {
                    return Err(format!(
                        "sslcert{}: certificate file {:?} does not exist",
                        from(c),
                        path.display().to_string()
                    ));
                }
                Some(path)
            }
            None => default_file("postgresql.crt").filter(|p| p.exists()),
        };
        if let Some(cert_path) = cert_path {
            let key_path = match &key {
                Some(k) => absolute(&k.value),
                None => default_file("postgresql.key").ok_or_else(|| {
                    "sslkey: certificate present, but no private key file (no home directory for the default \
                     ~/.postgresql/postgresql.key)"
                        .to_string()
                })?,
            };
            options.client_cert = Some((cert_path, key_path));
        }
    }
    let tls = TlsSettings::new(options).map_err(|e| {
        let origin = [&mode_entry, &root, &cert, &key]
            .into_iter()
            .flatten()
            .find(|x| x.key == e.key)
            .map(from)
            .unwrap_or_default();
        format!("{}{origin}: {}", e.key, e.text)
    })?;
    Ok(tls)
}

/// Take `key` out of `entries` (every occurrence; the last one counts, as in libpq).
fn take(entries: &mut Vec<Entry>, key: &str) -> Option<Entry> {
    let mut taken = None;
    entries.retain(|e| {
        if e.key == key {
            taken = Some(e.clone());
            false
        } else {
            true
        }
    });
    taken
}

/// libpq's defaults for `user` (the operating system user) and the host (the local
/// Unix socket, in the first of its usual directories that has it; else `localhost`:
/// tokio-postgres has no default host and would answer "both host and hostaddr are
/// missing").
fn fill_defaults(entries: &mut Vec<Entry>, env: &Env) {
    if let Some(user) = &env.os_user {
        fill(entries, "user", user.clone(), Origin::Default);
    }
    if get(entries, "host").is_none() && get(entries, "hostaddr").is_none() {
        let port = get(entries, "port")
            .and_then(|p| p.value.split(',').next().map(str::to_string))
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "5432".into());
        // The socket directory, whether or not the server runs yet (a socket file
        // looked for now would turn a server still starting into TCP for good).
        let _ = port;
        let host = ["/run/postgresql", "/var/run/postgresql"]
            .into_iter()
            .find(|d| Path::new(d).is_dir())
            .unwrap_or("/tmp");
        fill(entries, "host", host.to_string(), Origin::Default);
    }
}

/// The password of the hosts of `entries` in password file `file`. tokio-postgres keeps
/// one password for all the hosts of a DSN, so hosts the file gives different
/// passwords (or a password for some only) are refused rather than one host's password
/// sent to another.
fn password_from_file(file: &Path, entries: &[Entry]) -> Result<Option<String>, String> {
    let value = |k: &str| get(entries, k).map(|e| e.value.as_str()).unwrap_or("");
    let list = |k: &str| -> Vec<&str> { value(k).split(',').collect() };
    let (hosts, addrs, ports) = (list("host"), list("hostaddr"), list("port"));
    let user = value("user");
    let dbname = match value("dbname") {
        "" => user,
        d => d,
    };
    let Some(text) = pgpass::read(file) else {
        return Ok(None);
    };
    let n = hosts.len().max(addrs.len());
    let found: Vec<Option<String>> = (0..n)
        .map(|i| {
            let host = hosts
                .get(i)
                .filter(|h| !h.is_empty())
                .or(addrs.get(i))
                .copied()
                .unwrap_or("");
            let port = ports
                .get(i)
                .or(ports.first())
                .copied()
                .filter(|p| !p.is_empty())
                .unwrap_or("5432");
            let target = pgpass::Target {
                host,
                port,
                dbname,
                user,
            };
            pgpass::lookup(&text, &target)
        })
        .collect();
    let mut passwords: Vec<&String> = found.iter().flatten().collect();
    passwords.dedup();
    match (passwords.as_slice(), found.iter().all(Option::is_some)) {
        ([], _) => Ok(None),
        ([one], true) => Ok(Some((*one).clone())),
        _ => Err(format!(
            "password file {}: its lines give the hosts of this DSN different passwords (or one to some \
             only); pgmaint sends one password to every host of a DSN: use one password, or give `password`",
            file.display()
        )),
    }
}

/// The tokio-postgres config of `entries`; an error names the keyword at fault and
/// where its value came from.
fn build(entries: &[Entry]) -> Result<tokio_postgres::Config, String> {
    let line = |e: &Entry| format!("{}={}", e.key, conninfo::quote(&e.value));
    let text: Vec<String> = entries.iter().map(line).collect();
    text.join(" ")
        .parse()
        .map_err(|all: tokio_postgres::Error| {
            let (e, origin) = entries
                .iter()
                .find_map(|e| {
                    line(e)
                        .parse::<tokio_postgres::Config>()
                        .err()
                        .map(|x| (x, Some(&e.origin)))
                })
                .unwrap_or((all, None));
            let origin = origin.map(|o| format!(" ({o})")).unwrap_or_default();
            format!("invalid connection string: {}{origin}", cause(&e))
        })
}

/// The text of a tokio-postgres config error with its cause ("unknown option `x`"):
/// the error alone says only "invalid connection string".
fn cause(e: &tokio_postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(s) => s.to_string(),
        None => e.to_string(),
    }
}

/// The keyword/value pairs of a DSN: a libpq `key=value` string, or a `postgres://`
/// URL (its user, password, hosts, ports and database, then its query parameters).
fn dsn_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let t = text.trim();
    if !(t.starts_with("postgres://") || t.starts_with("postgresql://")) {
        return conninfo::parse(t).map_err(|e| format!("invalid connection string: {e}"));
    }
    let (base, query) = t.split_once('?').unwrap_or((t, ""));
    let url: tokio_postgres::Config = base
        .parse()
        .map_err(|e| format!("invalid connection string: {}", cause(&e)))?;
    let mut pairs = Vec::new();
    let (hosts, _) = crate::db::hosts_and_ports(&url);
    for (key, v) in [("host", hosts.join(",")), ("port", url_ports(base))] {
        if !v.is_empty() {
            pairs.push((key.to_string(), v));
        }
    }
    if let Some(u) = url.get_user() {
        pairs.push(("user".into(), u.to_string()));
    }
    if let Some(p) = url.get_password() {
        pairs.push(("password".into(), String::from_utf8_lossy(p).into_owned()));
    }
    if let Some(d) = url.get_dbname() {
        pairs.push(("dbname".into(), d.to_string()));
    }
    for (n, param) in query.split('&').filter(|p| !p.is_empty()).enumerate() {
        // Never echo the parameter: an unescaped `&` in a password splits it, and the
        // piece after it would land here.
        let (k, v) = param.split_once('=').ok_or_else(|| {
            format!(
                "invalid connection string: missing \"=\" in URL query parameter {} (a value with `&` must be \
                 percent-encoded, `%26`)",
                n + 1
            )
        })?;
        pairs.push((percent_decode(k)?, percent_decode(v)?));
    }
    Ok(pairs)
}

/// The ports of a URL's hosts as libpq stores them: one per host, empty for a host
/// without one, and nothing at all for one host without a port (so that `PGPORT`
/// applies; tokio-postgres's URL parser would say 5432).
fn url_ports(base: &str) -> String {
    let rest = base.split_once("://").map(|(_, r)| r).unwrap_or(base);
    let authority = rest.split('/').next().unwrap_or("");
    let hosts = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    let ports: Vec<&str> = hosts
        .split(',')
        .map(|h| {
            // `[v6]:port` or `host:port`.
            let after = match h.strip_prefix('[') {
                Some(v6) => v6.split_once(']').map(|(_, a)| a).unwrap_or(""),
                None => h,
            };
            after.split_once(':').map(|(_, p)| p).unwrap_or("")
        })
        .collect();
    ports.join(",")
}

/// `%XX` escapes of a URL component, decoded.
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.ok_or("invalid connection string: invalid percent-encoding in URL")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| "invalid connection string: URL parameter is not UTF-8".into())
}

#[cfg(test)]
mod tests;
