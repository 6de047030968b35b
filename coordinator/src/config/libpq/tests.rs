use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;

use tokio_postgres::config::{Host, SslMode};

use super::*;
use snapshot_runner::connection::tls;

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

fn resolve_with(dsn: &str, vars: &[(&str, &str)], home: Option<&Path>) -> Result<Config, String> {
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
            "host=h sslcrl=x",
            &[],
            "invalid connection string: unknown option `sslcrl` (in the DSN)",
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
            "sslrootcert: root certificate file ~/.postgresql/root.crt (no home directory) does not exist",
        ),
        (
            "host=h sslmode=verify-ca sslrootcert=/nonexistent/ca.crt",
            &[],
            "sslrootcert: root certificate file \"/nonexistent/ca.crt\" does not exist",
        ),
        (
            "host=h",
            &[("PGSSLMODE", "verify_full")],
            "sslmode (from PGSSLMODE): invalid value \"verify_full\"",
        ),
        (
            "host=h sslmode=require sslrootcert=system",
            &[],
            "sslmode: weak sslmode \"require\" may not be used with sslrootcert=system",
        ),
        (
            "hostaddr=127.0.0.1 sslmode=verify-full sslrootcert=system",
            &[],
            "sslmode=verify-full needs `host`",
        ),
        (
            "host=h sslcert=/nonexistent/c.crt",
            &[("PGSSLKEY", "/nonexistent/c.key")],
            "sslcert: certificate file \"/nonexistent/c.crt\" does not exist",
        ),
        (
            "host=h sslpassword=x",
            &[],
            "sslpassword: encrypted client keys are not supported",
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
    // A password with an unescaped `&`: the piece after it is never echoed.
    let e = resolve_with("postgres://h/app?password=ab&cd-secret", &[], None).unwrap_err();
    assert!(!e.contains("secret"), "{e}");
    assert!(e.contains("URL query parameter 2"), "{e}");
}

#[test]
fn a_url_without_a_port_takes_pgport_as_libpq_does() {
    let env = [("PGPORT", "6001")];
    let c = resolve_with("postgres://u@h/app", &env, None).unwrap();
    assert_eq!(c.get_ports(), [6001], "single host, no port: PGPORT");
    let c = resolve_with("postgresql://h:6002/app", &env, None).unwrap();
    assert_eq!(c.get_ports(), [6002], "the URL's port wins");
    let c = resolve_with("postgresql://[::1]/app", &env, None).unwrap();
    assert_eq!(c.get_ports(), [6001], "an IPv6 host without a port");
    let c = resolve_with("postgresql://[::1]:6003/app", &env, None).unwrap();
    assert_eq!(c.get_ports(), [6003]);
    // libpq: a host list gives one port per host, an empty one meaning 5432.
    let c = resolve_with("postgresql://h1,h2:6004/app", &env, None).unwrap();
    assert_eq!(c.get_ports(), [5432, 6004]);
    let c = resolve_with("postgresql:///app?host=/tmp", &env, None).unwrap();
    assert_eq!(c.get_ports(), [6001], "no authority at all");
}

#[test]
fn a_key_given_twice_takes_its_last_value_as_libpq_does() {
    let c = resolve_with("host=a host=b port=1 port=2 dbname=x dbname=y", &[], None).unwrap();
    assert_eq!(tcp_hosts(&c), ["b"], "never a host list");
    assert_eq!(c.get_ports(), [2]);
    assert_eq!(c.get_dbname(), Some("y"));
    let c = resolve_with(
        "postgresql://u@h/app?application_name=a&application_name=b",
        &[],
        None,
    )
    .unwrap();
    assert_eq!(c.get_application_name(), Some("b"));
}

/// A throwaway CA and a client certificate signed by it, made with the openssl CLI.
fn ca_and_client_cert(s: &Scratch) {
    let run = |args: &[&str]| {
        let ok = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&s.0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=someone",
        "-keyout",
        "c.key",
        "-out",
        "c.csr",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "c.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "v1.crt",
    ]);
    // rustls takes X.509 v3 only: extensions make one.
    std::fs::write(s.0.join("ext.cnf"), "basicConstraints=CA:FALSE\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "c.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "c.crt",
    ]);
}

#[test]
fn tls_settings_follow_libpq_defaults_and_rules() {
    use snapshot_runner::connection::tls::Verification;
    let s = Scratch::new("tls");
    ca_and_client_cert(&s);
    let home = s.0.join("home");
    std::fs::create_dir_all(home.join(".postgresql")).unwrap();
    let ca = s.0.join("ca.crt").display().to_string();

    // sslrootcert=system without sslmode: verify-full (libpq 16).
    let c = resolve_with("host=h sslrootcert=system", &[], Some(&home)).unwrap();
    assert_eq!(c.tls().options().mode, tls::SslMode::VerifyFull);
    assert_eq!(c.tls().verification(), Verification::ChainAndName);
    assert_eq!(c.get_ssl_mode(), SslMode::Require);

    // require without a root file: encrypt only; with ~/.postgresql/root.crt: verify-ca.
    let c = resolve_with("host=h sslmode=require", &[], Some(&home)).unwrap();
    assert_eq!(c.tls().verification(), Verification::None);
    std::fs::copy(&ca, home.join(".postgresql/root.crt")).unwrap();
    let c = resolve_with("host=h sslmode=require", &[], Some(&home)).unwrap();
    assert_eq!(c.tls().verification(), Verification::Chain);
    let c = resolve_with("host=h sslmode=verify-full", &[], Some(&home)).unwrap();
    assert_eq!(
        c.tls().options().root_cert,
        Some(tls::RootCert::File(home.join(".postgresql/root.crt")))
    );
    // From the environment.
    let env = [("PGSSLMODE", "verify-ca"), ("PGSSLROOTCERT", ca.as_str())];
    let c = resolve_with("host=h", &env, None).unwrap();
    assert_eq!(c.tls().verification(), Verification::Chain);

    // A client certificate by keyword, then by libpq's default names.
    let (cert, key) = (s.0.join("c.crt"), s.0.join("c.key"));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let dsn = format!("host=h sslcert={} sslkey={}", cert.display(), key.display());
    let c = resolve_with(&dsn, &[], None).unwrap();
    assert_eq!(
        c.tls().options().client_cert,
        Some((cert.clone(), key.clone()))
    );
    let c = resolve_with("host=h", &[], Some(&home)).unwrap();
    assert_eq!(c.tls().options().client_cert, None, "no default files");
    std::fs::copy(&cert, home.join(".postgresql/postgresql.crt")).unwrap();
    std::fs::copy(&key, home.join(".postgresql/postgresql.key")).unwrap();
    let c = resolve_with("host=h", &[], Some(&home)).unwrap();
    assert_eq!(
        c.tls().options().client_cert,
        Some((
            home.join(".postgresql/postgresql.crt"),
            home.join(".postgresql/postgresql.key")
        ))
    );
    // sslmode=disable reads no file at all.
    let c = resolve_with("host=h sslmode=disable", &[], Some(&home)).unwrap();
    assert_eq!(c.tls().options().client_cert, None);

    // A key others may read is refused, naming sslkey and the file.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = resolve_with(&dsn, &[], None).unwrap_err();
    assert!(
        e.starts_with(&format!(
            "sslkey: private key file {:?} has group or world access",
            key.display().to_string()
        )),
        "{e}"
    );
    // A v1 client certificate: refused, naming sslcert.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let v1 = s.0.join("v1.crt").display().to_string();
    let e = resolve_with(
        &format!("host=h sslcert={v1} sslkey={}", key.display()),
        &[],
        None,
    )
    .unwrap_err();
    assert!(e.starts_with("sslcert: certificate file"), "{e}");
    // A root file that holds no certificate.
    let bad = s.file("bad.crt", "not a certificate\n", 0o644);
    let e = resolve_with(
        &format!("host=h sslmode=verify-ca sslrootcert={bad}"),
        &[],
        None,
    )
    .unwrap_err();
    assert!(e.starts_with("sslrootcert: root certificate file"), "{e}");
}
