use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;

use tokio_postgres::config::{Host, SslMode};

use super::*;

/// Variables of the environment.
type Vars<'a> = &'a [(&'a str, &'a str)];

/// A scratch directory with a service file and password files.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("libpq-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn file(&self, name: &str, text: &str, mode: u32) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn resolve_with(
    dsn: &str,
    vars: &[(&str, &str)],
    home: Option<&Path>,
) -> Result<tokio_postgres::Config, String> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let var = move |k: &str| vars.get(k).cloned();
    let env = Env {
        var: &var,
        home: home.map(Path::to_path_buf),
        os_user: Some("osuser".into()),
    };
    resolve(dsn, &env)
}

fn password(c: &tokio_postgres::Config) -> Option<String> {
    c.get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
}

fn tcp_hosts(c: &tokio_postgres::Config) -> Vec<String> {
    c.get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(h) => h.clone(),
            Host::Unix(p) => p.display().to_string(),
        })
        .collect()
}

#[test]
fn the_environment_fills_what_the_dsn_leaves_out_and_the_dsn_wins() {
    let env = [
        ("PGHOST", "envhost"),
        ("PGPORT", "6000"),
        ("PGUSER", "envuser"),
        ("PGPASSWORD", "envpw"),
        ("PGDATABASE", "envdb"),
        ("PGSSLMODE", "require"),
        ("PGAPPNAME", "envapp"),
    ];
    let c = resolve_with("", &env, None).unwrap();
    assert_eq!(tcp_hosts(&c), ["envhost"]);
    assert_eq!(c.get_ports(), [6000]);
    assert_eq!(c.get_user(), Some("envuser"));
    assert_eq!(password(&c).as_deref(), Some("envpw"));
    assert_eq!(c.get_dbname(), Some("envdb"));
    assert_eq!(c.get_ssl_mode(), SslMode::Require);
    assert_eq!(c.get_application_name(), Some("envapp"));
    let dsn = "host=h port=7 user=u password=p dbname=d sslmode=disable application_name=a";
    for d in [
        dsn,
        "postgres://u:p@h:7/d?sslmode=disable&application_name=a",
    ] {
        let c = resolve_with(d, &env, None).unwrap();
        assert_eq!(tcp_hosts(&c), ["h"], "{d}");
        assert_eq!(c.get_ports(), [7]);
        assert_eq!(c.get_user(), Some("u"));
        assert_eq!(password(&c).as_deref(), Some("p"));
        assert_eq!(c.get_dbname(), Some("d"));
        assert_eq!(c.get_ssl_mode(), SslMode::Disable);
        assert_eq!(c.get_application_name(), Some("a"));
    }
}

#[test]
fn a_dsn_without_host_or_user_gets_libpqs_defaults_not_a_missing_host_error() {
    let c = resolve_with("dbname=app", &[], None).unwrap();
    assert_eq!(c.get_hosts().len(), 1, "a default host");
    assert_eq!(c.get_user(), Some("osuser"));
    // A hostaddr alone is a host enough.
    let c = resolve_with("hostaddr=127.0.0.1", &[], None).unwrap();
    assert!(c.get_hosts().is_empty());
}

#[test]
fn a_service_fills_what_the_dsn_leaves_out_before_the_environment() {
    let s = Scratch::new("svc");
    let file = s.file(
        "services",
        "[nightly]\nhost=svchost\nport=5999\nuser=svcuser\npassword=svcpw\npassfile=/nowhere\n",
        0o644,
    );
    let env = [
        ("PGSERVICEFILE", file.as_str()),
        ("PGUSER", "envuser"),
        ("PGDATABASE", "envdb"),
    ];
    for dsn in [
        "service=nightly port=5001",
        "postgres:///?service=nightly&port=5001",
    ] {
        let c = resolve_with(dsn, &env, None).unwrap();
        assert_eq!(tcp_hosts(&c), ["svchost"], "{dsn}");
        assert_eq!(c.get_ports(), [5001], "the DSN wins");
        assert_eq!(c.get_user(), Some("svcuser"), "the service before PGUSER");
        assert_eq!(password(&c).as_deref(), Some("svcpw"));
        assert_eq!(
            c.get_dbname(),
            Some("envdb"),
            "the environment after the service"
        );
    }
    let pgservice = [("PGSERVICEFILE", file.as_str()), ("PGSERVICE", "nightly")];
    let c = resolve_with("", &pgservice, None).unwrap();
    assert_eq!(tcp_hosts(&c), ["svchost"]);
    let e = resolve_with("service=daily", &env, None).unwrap_err();
    assert!(
        e.starts_with("definition of service \"daily\" not found (looked in "),
        "{e}"
    );
}

#[test]
fn the_password_file_gives_the_password_of_the_first_matching_line() {
    let s = Scratch::new("pass");
    let text = "h:5432:app:u:first\n*:*:*:u:second\n";
    let file = s.file("pgpass", text, 0o600);
    std::fs::write(s.0.join(".pgpass"), "*:*:*:*:fromhome\n").unwrap();
    std::fs::set_permissions(s.0.join(".pgpass"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let home = Some(s.0.as_path());
    let passfile_key = format!("host=h user=u dbname=app passfile={file}");
    let cases: &[(&str, Vars, Option<&str>)] = &[
        (&passfile_key, &[], Some("first")),
        (
            "host=h user=u dbname=app",
            &[("PGPASSFILE", &file)],
            Some("first"),
        ),
        (
            "host=other user=u dbname=app",
            &[("PGPASSFILE", &file)],
            Some("second"),
        ),
        ("host=h user=u dbname=app", &[], Some("fromhome")),
        // The DSN's passfile before PGPASSFILE; a password anywhere before either.
        (&passfile_key, &[("PGPASSFILE", "/nowhere")], Some("first")),
        (
            "host=h user=u dbname=app",
            &[("PGPASSFILE", &file), ("PGPASSWORD", "env")],
            Some("env"),
        ),
        (
            "host=h user=u dbname=app password=dsn",
            &[("PGPASSFILE", &file)],
            Some("dsn"),
        ),
        // dbname defaults to the user; the port to 5432.
        ("host=h user=app", &[("PGPASSFILE", &file)], None),
        (
            "host=h port=5433 user=u dbname=app",
            &[("PGPASSFILE", &file)],
            Some("second"),
        ),
        ("host=h user=x dbname=app", &[("PGPASSFILE", &file)], None),
        // Several hosts, none with a line.
        (
            "host=a,h port=1,5432 user=x dbname=app",
            &[("PGPASSFILE", &file)],
            None,
        ),
    ];
    for (dsn, env, want) in cases {
        let c = resolve_with(dsn, env, home).unwrap();
        assert_eq!(password(&c).as_deref(), *want, "{dsn} {env:?}");
    }
    // Several hosts, a line for one only: never send its password to the other.
    let e = resolve_with(
        "host=a,h port=1,5432 user=u dbname=app",
        &[("PGPASSFILE", &file)],
        home,
    )
    .unwrap_err();
    assert!(
        e.contains("different passwords (or one to some only)"),
        "{e}"
    );
}

#[test]
fn a_password_file_others_may_read_is_ignored() {
    let s = Scratch::new("open");
    let file = s.file("pgpass", "*:*:*:*:pw\n", 0o644);
    let c = resolve_with("host=h user=u", &[("PGPASSFILE", &file)], None).unwrap();
    assert_eq!(password(&c), None);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = resolve_with("host=h user=u", &[("PGPASSFILE", &file)], None).unwrap();
    assert_eq!(password(&c).as_deref(), Some("pw"));
}

#[test]
fn errors_name_the_keyword_and_where_its_value_came_from() {
    let cases: &[(&str, Vars, &str)] = &[
        (
            "host=h sslrootcert=x",
            &[],
            "invalid connection string: unknown option `sslrootcert` (in the DSN)",
        ),
        (
            "host=h port=x",
            &[],
            "invalid connection string: invalid value for option `port` (in the DSN)",
        ),
        (
            "host=h",
            &[("PGPORT", "abc")],
            "invalid connection string: invalid value for option `port` (from PGPORT)",
        ),
        (
            "host=h",
            &[("PGSSLMODE", "verify-full")],
            "sslmode=verify-full (from PGSSLMODE) is not supported yet",
        ),
        (
            "host=h sslmode=verify-ca",
            &[],
            "sslmode=verify-ca is not supported yet",
        ),
        (
            "host",
            &[],
            "invalid connection string: missing \"=\" after the first word of the connection string",
        ),
        (
            // A password with a space: no part of it is ever echoed.
            "host=h password=correct horse",
            &[],
            "invalid connection string: missing \"=\" after the value of `password`",
        ),
        (
            "postgres://h:x/app",
            &[],
            "invalid connection string: invalid value for option `port`",
        ),
        (
            "postgres://h/app?bogus=1",
            &[],
            "invalid connection string: unknown option `bogus`",
        ),
    ];
    for (dsn, env, want) in cases {
        let e = resolve_with(dsn, env, None).unwrap_err();
        assert!(e.starts_with(want), "{dsn}: {e}");
        assert!(!e.contains('\n'));
    }
    // A password that merely contains "verify-full" is no sslmode.
    assert!(resolve_with("host=h password=verify-full", &[], None).is_ok());
}

#[test]
fn urls_decode_their_parameters() {
    let c = resolve_with(
        "postgresql://u@h/app?application_name=a%20b&passfile=%2Fnowhere",
        &[],
        None,
    )
    .unwrap();
    assert_eq!(c.get_application_name(), Some("a b"));
    assert!(resolve_with("postgres://h/app?application_name=%zz", &[], None).is_err());
}
