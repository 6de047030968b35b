//! libpq's conventions end to end (issue 12, items 1 and 3): a role that logs in only
//! with a password, which pgmaint finds in a password file (`PGPASSFILE`), in
//! `PGPASSWORD` or through a service file (`PGSERVICEFILE` + `service=`), for a run,
//! an upload and a dump; pg_dump gets it through a private password file, never
//! `PGPASSWORD`; a wrong password is a one-line error, exit code 2.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use pgmaint_e2e::*;

/// A password with the characters a password file must escape.
const PASSWORD: &str = r"s3:cr\et";
const ROLE: &str = "pgm_pw";

/// Role `pgm_pw` (a superuser: pgmaint pauses replay) with [`PASSWORD`], allowed in
/// over TCP only with it (scram-sha-256), before the clusters' trust lines.
async fn password_role(c: &Cluster) {
    let p = c.primary().await;
    p.batch_execute(&format!(
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE {ROLE} SUPERUSER LOGIN PASSWORD '{}'",
        PASSWORD.replace('\'', "''")
    ))
    .await
    .unwrap();
    prepend_hba(c, &format!("host all {ROLE} 127.0.0.1/32 scram-sha-256")).await;
    c.wait_caught_up(1).await;
}

/// A private file (0600) with `text`.
fn private_file(path: &Path, text: &str) -> String {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.display().to_string()
}

/// A pg_dump that writes down how it got its password, then runs the real one.
fn spying_pg_dump(c: &Cluster) -> (PathBuf, PathBuf) {
    c.spying_pg_dump(
        "echo \"PGPASSWORD=${PGPASSWORD-unset}\"; stat -c %a \"$PGPASSFILE\"; echo \"$PGPASSFILE\"",
    )
}

/// `pgmaint args…` with only `env` of the libpq variables, HOME and TMPDIR of its own.
fn pgmaint(c: &Cluster, cfg: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let (home, tmp) = (c.dir.join("home"), c.dir.join("tmp"));
    let mut set = vec![("HOME", home.as_os_str()), ("TMPDIR", tmp.as_os_str())];
    set.extend(env.iter().map(|(k, v)| (*k, std::ffi::OsStr::new(*v))));
    let remove = [
        "PGPASSWORD",
        "PGPASSFILE",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGUSER",
        "PGHOST",
    ];
    c.run_with_env(cfg, args, &remove, &set)
}

/// A run that finds the `planted` rows, its upload, and a dump, all as `pgm_pw`.
async fn run_upload_dump(c: &Cluster, cfg: &Path, env: &[(&str, &str)], label: &str, planted: i64) {
    let s = run_summary(&pgmaint(c, cfg, env, &["run", "--json"]).expect_code(0));
    assert_eq!(s["state"], "succeeded", "{label}");
    let id = s["run_id"].as_i64().unwrap();
    pgmaint(c, cfg, env, &["uploader", "--once"]).expect_code(0);
    let sql = "SELECT count(*) FROM pgmaint.integrity_findings WHERE run_id = $1";
    let found: i64 = scalar(&c.primary().await, sql, &[&id]).await;
    assert_eq!(found, planted, "{label}: the planted findings uploaded");
    let (spy, log) = spying_pg_dump(c);
    let out = c.dir.join(format!("dump-{label}"));
    let args = [
        "dump",
        "--out",
        out.to_str().unwrap(),
        "--pg-dump",
        spy.to_str().unwrap(),
        "--json",
    ];
    let s = run_summary(&pgmaint(c, cfg, env, &args).expect_code(0));
    assert_eq!(s["state"], "succeeded", "{label}");
    assert_eq!(read_manifest(&out)["valid"], true);
    // pg_dump had its password only in a private file, gone since.
    let seen = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines[..2], ["PGPASSWORD=unset", "600"], "{label}: {seen}");
    assert!(
        lines[2].starts_with(c.dir.join("tmp").to_str().unwrap()),
        "{seen}"
    );
    assert!(
        !Path::new(lines[2]).exists(),
        "{label}: the password file removed"
    );
}

/// A cluster with role [`ROLE`] and a config that connects as it with no password.
async fn password_cluster(name: &str) -> (Cluster, tokio_postgres::Client, PathBuf, PathBuf) {
    let (c, p) = blobs_cluster(name, 2_000).await;
    let trusted = c.ready_config("trust.toml", &blobs_task("")).await;
    password_role(&c).await;
    for d in ["home", "tmp"] {
        std::fs::create_dir_all(c.dir.join(d)).unwrap();
    }
    let text = std::fs::read_to_string(&trusted).unwrap();
    let cfg = c.dir.join("pw.toml");
    std::fs::write(&cfg, text.replace("user=postgres", &format!("user={ROLE}"))).unwrap();
    (c, p, trusted, cfg)
}

const PLANT: &str = "UPDATE blobs SET payload_md5 = md5('tampered') WHERE id = $1";

#[tokio::test(flavor = "multi_thread")]
async fn the_password_only_in_a_password_file_runs_uploads_and_dumps() {
    let (c, p, _, cfg) = password_cluster("libpq-pgpass").await;
    // Only in a password file, with escapes, after a line for another role.
    let escaped = PASSWORD.replace('\\', "\\\\").replace(':', "\\:");
    let passfile = private_file(
        &c.dir.join("pgpass"),
        &format!("# test\n*:*:*:postgres:nope\n127.0.0.1:*:app:{ROLE}:{escaped}\n"),
    );
    p.execute(PLANT, &[&17i64]).await.unwrap();
    run_upload_dump(&c, &cfg, &[("PGPASSFILE", &passfile)], "pgpass", 1).await;

    // A password file others may read is ignored (with a warning naming it), as libpq.
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = pgmaint(&c, &cfg, &[("PGPASSFILE", &passfile)], &["run"]).expect_code(2);
    assert!(
        r.stderr.contains("password file has group or world access"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(&passfile), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_password_only_in_pgpassword_runs_uploads_and_dumps() {
    let (c, p, _, cfg) = password_cluster("libpq-env").await;
    p.execute(PLANT, &[&18i64]).await.unwrap();
    run_upload_dump(&c, &cfg, &[("PGPASSWORD", PASSWORD)], "env", 1).await;

    // A wrong password: one line naming the field, exit code 2, no password shown.
    let r = pgmaint(&c, &cfg, &[("PGPASSWORD", "wrong-secret")], &["run"]).expect_code(2);
    let line = r.error_line().expect("an error line").to_string();
    assert!(
        line.starts_with("pgmaint: error: primary.dsn: cannot connect"),
        "{line}"
    );
    assert!(line.contains("password authentication failed"), "{line}");
    assert!(
        !r.stderr.contains("wrong-secret") && !r.stderr.contains(PASSWORD),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.stderr
            .lines()
            .filter(|l| l.starts_with("pgmaint: error"))
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_password_only_through_a_service_file_runs_uploads_and_dumps() {
    let (c, p, trusted, _) = password_cluster("libpq-service").await;
    // The DSN gives the port, the service the rest.
    let services = private_file(
        &c.dir.join("services.conf"),
        &format!("[pgm]\nhost=127.0.0.1\nuser={ROLE}\ndbname=app\npassword={PASSWORD}\n"),
    );
    let text = std::fs::read_to_string(&trusted).unwrap();
    let svc_cfg = c.dir.join("svc.toml");
    std::fs::write(
        &svc_cfg,
        text.replace("host=127.0.0.1 ", "service=pgm ")
            .replace(" user=postgres dbname=app", ""),
    )
    .unwrap();
    assert!(std::fs::read_to_string(&svc_cfg)
        .unwrap()
        .contains("dsn = \"service=pgm port="));
    p.execute(PLANT, &[&19i64]).await.unwrap();
    run_upload_dump(&c, &svc_cfg, &[("PGSERVICEFILE", &services)], "service", 1).await;
}
