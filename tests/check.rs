//! `pgmaint check`: everything checked without a pause, one line per check; and the
//! materialize target checked by `pgmaint run` before its pause.

use pgmaint_e2e::*;

/// A materialize task writing `target` (a swap).
fn materialize(name: &str, target: &str) -> String {
    format!(
        "[[tasks]]\nname = \"{name}\"\nkind = \"materialize\"\n\
         query = \"SELECT id, payload_md5 FROM public.blobs\"\ntarget = \"{target}\"\n"
    )
}

/// The `FAIL` line of `run` whose object starts with `name`.
fn fail_line<'a>(run: &'a Run, name: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|l| l.starts_with(&format!("FAIL {name}")))
        .unwrap_or_else(|| panic!("no FAIL {name} line:\n{}", run.stdout))
}

/// A config of the cluster with `primary` and `replica` DSNs and `results_dir`.
fn config_with(
    c: &Cluster,
    file: &str,
    primary: &str,
    replica: &str,
    results: &str,
) -> std::path::PathBuf {
    let path = c.dir.join(file);
    let text = format!(
        "[primary]\ndsn = \"{primary}\"\n[[replicas]]\nname = \"r1\"\ndsn = \"{replica}\"\n\
         [results]\ndir = \"{results}\"\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn check_passes_then_names_each_failure_and_run_refuses_a_missing_target() {
    let (c, p) = blobs_cluster("check-each", 100).await;
    p.batch_execute("CREATE TABLE public.sums (id bigint PRIMARY KEY, payload_md5 text)")
        .await
        .unwrap();
    let good = c
        .ready_config(
            "good.toml",
            &format!(
                "{}{}[[dumps]]\nname = \"nightly\"\nout = \"{}\"\n",
                blobs_task(""),
                materialize("sums", "public.sums"),
                c.dir.join("dumps/nightly").display()
            ),
        )
        .await;

    // Everything passes: one ok line per check, the config's first.
    let run = c.run(&good, &["check"]).expect_code(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines[0].starts_with("ok   config: ") && lines[0].contains("parsed"),
        "{}",
        run.stdout
    );
    for want in [
        "ok   primary: ",
        "ok   primary schema: ",
        "ok   primary privileges: ",
        "ok   replica r1: ",
        "ok   replica r1 cluster: ",
        "ok   replica r1 privileges: ",
        "ok   task blobs on r1: ",
        "ok   task sums on r1: ",
        "ok   target public.sums (task sums): ",
        "ok   results.dir ",
        "ok   dumps[nightly].out ",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(want)),
            "{want}:\n{}",
            run.stdout
        );
    }
    assert!(!run.stdout.contains("FAIL"), "{}", run.stdout);
    // --json: one document with a checks array.
    let run = c.run(&good, &["check", "--json"]).expect_code(0);
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let checks = doc["checks"].as_array().unwrap();
    assert_eq!(checks.len(), lines.len());
    assert_eq!(checks[0]["name"], "config");
    assert!(checks
        .iter()
        .all(|c| c["ok"] == true && c["detail"].is_string()));

    // A missing materialize target.
    let missing = c.write_config("missing.toml", &materialize("lost", "public.nowhere"));
    let run = c.run(&missing, &["check"]).expect_code(1);
    let line = fail_line(&run, "target public.nowhere (task lost)");
    assert!(line.contains("does not exist on the primary"), "{line}");
    assert!(
        run.error_line().unwrap().contains("target public.nowhere"),
        "{}",
        run.stderr
    );
    let (run, doc) = {
        let run = c.run(&missing, &["check", "--json"]).expect_code(1);
        let doc: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        (run, doc)
    };
    let failed: Vec<&serde_json::Value> = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .collect();
    assert_eq!(failed.len(), 1, "{}", run.stdout);
    assert_eq!(failed[0]["name"], "target public.nowhere (task lost)");

    // `run` refuses it before its pause: exit 2, naming the task and the target.
    let run = c.run(&missing, &["run"]).expect_code(2);
    let line = run.error_line().unwrap();
    assert!(
        line.contains("task \"lost\"") && line.contains("public.nowhere"),
        "{line}"
    );
    assert_eq!(c.pause_state(1).await, "not paused");
    let id = last_run_id(&c).await;
    assert!(
        !run_column::<bool>(
            &c,
            id,
            "paused_at IS NOT NULL OR pause_requested_at IS NOT NULL"
        )
        .await
    );

    // An unwritable results.dir: its parent is a regular file (root writes anywhere).
    let file = c.dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let under = file.join("results");
    let cfg = config_with(
        &c,
        "unwritable.toml",
        &c.primary_dsn(),
        &c.replica_dsn(1),
        under.to_str().unwrap(),
    );
    let run = c.run(&cfg, &["check"]).expect_code(1);
    let line = fail_line(&run, "results.dir");
    assert!(
        line.contains(under.to_str().unwrap()) && line.contains("is not a directory"),
        "{line}"
    );

    // A role without the grants, on both servers.
    p.batch_execute("CREATE ROLE app_maint LOGIN")
        .await
        .unwrap();
    c.wait_caught_up(1).await;
    let as_role = |dsn: String| dsn.replace("user=postgres", "user=app_maint");
    let cfg = config_with(
        &c,
        "role.toml",
        &as_role(c.primary_dsn()),
        &as_role(c.replica_dsn(1)),
        c.results_dir().to_str().unwrap(),
    );
    let run = c.run(&cfg, &["check"]).expect_code(1);
    let line = fail_line(&run, "replica r1 privileges");
    for grant in [
        "GRANT EXECUTE ON FUNCTION pg_wal_replay_pause() TO app_maint",
        "GRANT EXECUTE ON FUNCTION pg_wal_replay_resume() TO app_maint",
        "GRANT pg_monitor TO app_maint",
    ] {
        assert!(line.contains(grant), "{grant}: {line}");
    }
    let line = fail_line(&run, "primary privileges");
    assert!(
        line.contains("GRANT USAGE ON SCHEMA pgmaint TO app_maint"),
        "{line}"
    );
    assert!(line.contains("GRANT pg_monitor TO app_maint"), "{line}");

    // A replica that does not answer: exit 3 when nothing else failed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let silent = format!("host=127.0.0.1 port={port} user=postgres dbname=app connect_timeout=5");
    let cfg = config_with(
        &c,
        "silent.toml",
        &c.primary_dsn(),
        &silent,
        c.results_dir().to_str().unwrap(),
    );
    let run = c.run(&cfg, &["check"]).expect_code(3);
    assert!(
        fail_line(&run, "replica r1").contains("cannot connect"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_fails_for_a_replica_of_another_cluster() {
    let a = Cluster::up("check-other-a", 1);
    let b = Cluster::up_fresh("check-other-b", 1);
    let init = a.write_config("init.toml", "");
    a.run(&init, &["init"]).expect_code(0);
    let cfg = config_with(
        &a,
        "mixed.toml",
        &a.primary_dsn(),
        &b.replica_dsn(1),
        a.results_dir().to_str().unwrap(),
    );
    let run = a.run(&cfg, &["check"]).expect_code(1);
    let line = fail_line(&run, "replica r1 cluster");
    assert!(
        line.contains("is not a standby of the primary")
            && line.contains(&format!("port={}", b.replica_port(1))),
        "{line}"
    );
    // Reached and in recovery all the same: only the cluster check fails.
    assert!(run.stdout.contains("ok   replica r1: "), "{}", run.stdout);
    assert_eq!(b.pause_state(1).await, "not paused");
}
