//! TLS as libpq does it, end to end (issue 12, item 2), against servers whose
//! certificate a throwaway CA made for `DNS:localhost` only: `verify-full` checks the
//! chain and the host name, `verify-ca` the chain only, `require` with a
//! `~/.postgresql/root.crt` verifies like `verify-ca`, `sslrootcert=system` takes the
//! system's store, a client certificate logs a `cert` role in, and pg_dump gets the same
//! settings. One cluster for all of it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pgmaint_e2e::*;

/// The role the servers take only over TLS.
const ROLE: &str = "pgm_tls";
/// The role the servers take only with a client certificate (`cert`).
const CERT_ROLE: &str = "pgm_cert";

/// `openssl args…` in `dir`, which must succeed.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA `name`.crt/.key in `dir`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=pgmaint test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

/// A certificate `name`.crt/.key in `dir`, for `cn`, signed by CA `ca`, with the
/// extensions `ext` (X.509 v3).
fn make_cert(dir: &Path, name: &str, cn: &str, ca: &str, ext: &str) {
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
    std::fs::set_permissions(
        dir.join(format!("{name}.key")),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
}

/// The CA files: `ca` (signs the servers' and the client's certificates) and `other`
/// (signs nothing of ours). Server certificate for DNS:localhost only (not 127.0.0.1),
/// client certificate for [`CERT_ROLE`].
fn make_pki(c: &Cluster) -> PathBuf {
    let dir = c.dir.join("pki");
    std::fs::create_dir_all(&dir).unwrap();
    make_ca(&dir, "ca");
    make_ca(&dir, "other");
    make_cert(
        &dir,
        "server",
        "localhost",
        "ca",
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    );
    make_cert(
        &dir,
        "client",
        CERT_ROLE,
        "ca",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
    dir
}

/// TLS on every server with the CA's server certificate (and the CA to check client
/// certificates), [`ROLE`] over TLS only and [`CERT_ROLE`] with a certificate only.
async fn enable_tls_with_ca(c: &Cluster, pki: &Path) {
    let n: usize = c.env["REPLICAS"].parse().unwrap();
    let data = PathBuf::from(&c.env["DATA"]);
    let run_as = c.env["RUN_AS"].clone();
    for name in std::iter::once("primary".to_string()).chain((1..=n).map(|i| format!("r{i}"))) {
        let dir = data.join(&name);
        for (from, to) in [
            ("server.crt", "server.crt"),
            ("server.key", "server.key"),
            ("ca.crt", "root.crt"),
        ] {
            let p = dir.join(to);
            std::fs::copy(pki.join(from), &p).unwrap();
            Command::new("chown").arg(&run_as).arg(&p).status().unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        // ALTER SYSTEM on the primary does not reach a replica's own config: write each.
        let conf = dir.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap_or_default();
        text.push_str("\nssl = on\nssl_ca_file = 'root.crt'\n");
        std::fs::write(&conf, text).unwrap();
    }
    let p = c.primary().await;
    p.batch_execute(&format!(
        "CREATE ROLE {ROLE} SUPERUSER LOGIN; CREATE ROLE {CERT_ROLE} SUPERUSER LOGIN"
    ))
    .await
    .unwrap();
    c.wait_caught_up(1).await;
    // The first matching line wins; prepend_hba reloads every server (ssl too).
    prepend_hba(c, &format!("hostnossl all {ROLE} 127.0.0.1/32 reject")).await;
    prepend_hba(c, &format!("hostssl all {CERT_ROLE} 127.0.0.1/32 cert")).await;
    prepend_hba(c, &format!("hostnossl all {CERT_ROLE} 127.0.0.1/32 reject")).await;
}

/// A config whose DSNs go to `host` as `user` with the TLS keywords `tls`.
fn config(c: &Cluster, file: &str, host: &str, user: &str, tls: &str) -> PathBuf {
    let base = c.write_config(&format!("{file}.base"), &blobs_task(""));
    let text = std::fs::read_to_string(&base).unwrap();
    let text = text
        .replace("host=127.0.0.1 ", &format!("host={host} "))
        .replace(
            "user=postgres dbname=app\"",
            &format!("user={user} dbname=app {tls}\""),
        );
    let path = c.dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

/// `pgmaint args…` with a home of its own (no `~/.postgresql` unless the test makes
/// one) and `env`.
fn pgmaint(c: &Cluster, cfg: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let home = c.dir.join("home");
    let mut set = vec![("HOME", home.as_os_str())];
    set.extend(env.iter().map(|(k, v)| (*k, std::ffi::OsStr::new(*v))));
    let remove = [
        "PGSSLMODE",
        "PGSSLROOTCERT",
        "PGSSLCERT",
        "PGSSLKEY",
        "PGSERVICE",
    ];
    c.run_with_env(cfg, args, &remove, &set)
}

/// Exit code 2 and one error line that names the primary's DSN and says `why`.
fn refused(run: Run, why: &str) {
    let run = run.expect_code(2);
    let line = run.error_line().unwrap_or_else(|| panic!("{}", run.stderr));
    assert!(
        line.contains("primary.dsn: cannot connect") && line.contains(why),
        "{why}: {}",
        run.stderr
    );
}

/// A pg_dump that writes down its arguments (the conninfo), then runs the real one.
fn spying_pg_dump(c: &Cluster) -> (PathBuf, PathBuf) {
    c.spying_pg_dump("printf '%s\\n' \"$@\"")
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_verifies_the_ca_and_the_host_name_as_libpq_does() {
    let (c, p) = blobs_cluster("tls", 500).await;
    let pki = make_pki(&c);
    enable_tls_with_ca(&c, &pki).await;
    std::fs::create_dir_all(c.dir.join("home")).unwrap();
    let ca = pki.join("ca.crt").display().to_string();
    let other = pki.join("other.crt").display().to_string();
    let none: &[(&str, &str)] = &[];

    // verify-full with the right CA and host name: a whole run, over TLS.
    let full = config(
        &c,
        "full.toml",
        "localhost",
        ROLE,
        &format!("sslmode=verify-full sslrootcert={ca}"),
    );
    pgmaint(&c, &full, none, &["init"]).expect_code(0);
    c.wait_caught_up(1).await;
    p.execute(
        "UPDATE public.blobs SET payload_md5 = md5('tampered') WHERE id = 7",
        &[],
    )
    .await
    .unwrap();
    c.wait_caught_up(1).await;
    let s = run_summary(&pgmaint(&c, &full, none, &["run", "--json"]).expect_code(0));
    assert_eq!(s["state"], "succeeded", "{s:#}");
    let found = run_findings(&c, s["run_id"].as_i64().unwrap(), "blobs");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "7", "{found:?}");

    // verify-full to 127.0.0.1: the certificate is for localhost only.
    let by_ip = config(
        &c,
        "full-ip.toml",
        "127.0.0.1",
        ROLE,
        &format!("sslmode=verify-full sslrootcert={ca}"),
    );
    refused(
        pgmaint(&c, &by_ip, none, &["status"]),
        "host name mismatch: the server's certificate is not valid for \"127.0.0.1\" (it is for localhost;",
    );

    // verify-ca against another CA: unknown CA, whatever the host name.
    let wrong_ca = config(
        &c,
        "ca-other.toml",
        "localhost",
        ROLE,
        &format!("sslmode=verify-ca sslrootcert={other}"),
    );
    refused(
        pgmaint(&c, &wrong_ca, none, &["status"]),
        &format!("not signed by a CA of sslrootcert {other} (unknown CA"),
    );
    // verify-ca with the right CA does not look at the name: 127.0.0.1 connects.
    let ca_ip = config(
        &c,
        "ca-ip.toml",
        "127.0.0.1",
        ROLE,
        &format!("sslmode=verify-ca sslrootcert={ca}"),
    );
    pgmaint(&c, &ca_ip, none, &["status"]).expect_code(0);

    // require with ~/.postgresql/root.crt verifies like verify-ca (libpq's
    // backward-compatible rule): the other CA there, and require fails; from the
    // environment too (PGSSLMODE, PGSSLROOTCERT).
    let require = config(&c, "require.toml", "127.0.0.1", ROLE, "sslmode=require");
    pgmaint(&c, &require, none, &["status"]).expect_code(0);
    let dot = c.dir.join("home/.postgresql");
    std::fs::create_dir_all(&dot).unwrap();
    std::fs::copy(&other, dot.join("root.crt")).unwrap();
    refused(pgmaint(&c, &require, none, &["status"]), "(unknown CA");
    std::fs::remove_file(dot.join("root.crt")).unwrap();
    let plain = config(&c, "plain.toml", "localhost", ROLE, "");
    let env = [("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", ca.as_str())];
    pgmaint(&c, &plain, &env, &["status"]).expect_code(0);
    let env = [
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", other.as_str()),
    ];
    refused(pgmaint(&c, &plain, &env, &["status"]), "(unknown CA");
    // verify-full without any root file: one line naming sslrootcert and the path.
    let no_root = config(&c, "no-root.toml", "localhost", ROLE, "sslmode=verify-full");
    let run = pgmaint(&c, &no_root, none, &["status"]).expect_code(2);
    let want = format!(
        "primary.dsn: sslrootcert: root certificate file {:?} does not exist",
        dot.join("root.crt").display().to_string()
    );
    assert!(
        run.error_line().is_some_and(|l| l.contains(&want)),
        "{}",
        run.stderr
    );

    // sslrootcert=system: the system's store (SSL_CERT_FILE points OpenSSL's and
    // rustls-native-certs' lookup at our CA); without sslmode it is verify-full.
    let system = config(&c, "system.toml", "localhost", ROLE, "sslrootcert=system");
    pgmaint(&c, &system, &[("SSL_CERT_FILE", &ca)], &["status"]).expect_code(0);
    let weak = config(
        &c,
        "system-weak.toml",
        "localhost",
        ROLE,
        "sslrootcert=system sslmode=verify-ca",
    );
    let run = pgmaint(&c, &weak, &[("SSL_CERT_FILE", &ca)], &["status"]).expect_code(2);
    assert!(
        run.error_line().is_some_and(|l| l
            .contains("primary.dsn: sslmode: weak sslmode \"verify-ca\" may not be used with sslrootcert=system")),
        "{}",
        run.stderr
    );

    // A client certificate: the `cert` role logs in with it, and is refused without.
    let (cert, key) = (pki.join("client.crt"), pki.join("client.key"));
    let with_cert = config(
        &c,
        "cert.toml",
        "localhost",
        CERT_ROLE,
        &format!(
            "sslmode=verify-full sslrootcert={ca} sslcert={} sslkey={}",
            cert.display(),
            key.display()
        ),
    );
    pgmaint(&c, &with_cert, none, &["status"]).expect_code(0);
    let without = config(
        &c,
        "no-cert.toml",
        "localhost",
        CERT_ROLE,
        &format!("sslmode=verify-full sslrootcert={ca}"),
    );
    refused(
        pgmaint(&c, &without, none, &["status"]),
        "connection requires a valid client certificate",
    );
    // A key others may read is refused before any connection, naming sslkey.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = pgmaint(&c, &with_cert, none, &["status"]).expect_code(2);
    assert!(
        run.error_line().is_some_and(|l| l.contains(&format!(
            "primary.dsn: sslkey: private key file {:?} has group or world access",
            key.display().to_string()
        ))),
        "{}",
        run.stderr
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // pg_dump verifies as pgmaint does: it gets the TLS settings in its conninfo.
    let (spy, log) = spying_pg_dump(&c);
    let out = c.dir.join("dump");
    let args = [
        "dump",
        "--out",
        out.to_str().unwrap(),
        "--pg-dump",
        spy.to_str().unwrap(),
        "--json",
    ];
    let s = run_summary(&pgmaint(&c, &with_cert, none, &args).expect_code(0));
    assert_eq!(s["state"], "succeeded", "{s:#}");
    assert_eq!(read_manifest(&out)["valid"], true);
    let seen = std::fs::read_to_string(&log).unwrap();
    for want in [
        "host='localhost'".to_string(),
        "sslmode=verify-full".to_string(),
        format!("sslrootcert='{ca}'"),
        format!("sslcert='{}'", cert.display()),
        format!("sslkey='{}'", key.display()),
    ] {
        assert!(
            seen.contains(&want),
            "pg_dump's arguments lack {want}: {seen}"
        );
    }
}
