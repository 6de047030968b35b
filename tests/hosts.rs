//! Upload tasks stay with the host that holds their files (issue 10, item 4): daemons on
//! several hosts, each with its own results.dir, share one cluster and one queue. Each
//! "host" here is a config with its own `results.dir` and `results.host`, against a
//! real primary and replica.

use std::path::{Path, PathBuf};

use pgmaint_e2e::*;

/// A config like [`Cluster::write_config`]'s, but with its own `[results]`: `dir`
/// (created) and the `extra` lines (`host = …`, `shared = …`); then `tasks`.
fn host_config(c: &Cluster, file: &str, dir: &Path, extra: &str, tasks: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let text = format!(
        "[primary]\ndsn = \"{}\"\n[[replicas]]\nname = \"r1\"\ndsn = \"{}\"\n\
         [results]\ndir = \"{}\"\n{extra}\n{tasks}",
        c.primary_dsn(),
        c.replica_dsn(1),
        dir.display()
    );
    let path = c.dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

/// Two row_checksum tasks over `public.blobs`: a run queues two uploads, the second
/// depending on the first.
fn two_tasks() -> String {
    format!(
        "{}{}",
        blobs_task(""),
        row_checksum_task("blobs-again", BLOBS, "id", "payload", "payload_md5", "")
    )
}

/// A blobs cluster with 3 tampered checksums: each blobs task of a run finds 3.
async fn cluster(name: &str) -> Cluster {
    let (c, p) = blobs_cluster(name, 2_000).await;
    p.batch_execute(
        "UPDATE public.blobs SET payload_md5 = md5('tampered') WHERE id IN (7, 42, 1999)",
    )
    .await
    .unwrap();
    c
}

/// (run, task, host, state, attempts) of every upload task, by id.
async fn tasks(c: &Cluster) -> Vec<(i64, String, Option<String>, String, i32)> {
    c.primary()
        .await
        .query(
            "SELECT run_id, task_name, host, state, attempts FROM pgmaint.upload_tasks ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

/// Upload task ids of run `run`, in order.
async fn task_ids(c: &Cluster, run: i64) -> Vec<i64> {
    c.primary()
        .await
        .query(
            "SELECT id FROM pgmaint.upload_tasks WHERE run_id = $1 ORDER BY id",
            &[&run],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Findings on the primary from run `run`, and the tasks they came from.
async fn findings(c: &Cluster, run: i64) -> Vec<(String, String)> {
    let sql =
        "SELECT task_name, row_key FROM pgmaint.integrity_findings WHERE run_id = $1 ORDER BY 1, 2";
    pair_rows(&c.primary().await, sql, &[&run]).await
}

fn found(tasks: &[&str]) -> Vec<(String, String)> {
    let mut want: Vec<(String, String)> = tasks
        .iter()
        .flat_map(|t| ["1999", "42", "7"].map(|k| (t.to_string(), k.to_string())))
        .collect();
    want.sort();
    want
}

fn run_id(summary: &serde_json::Value) -> i64 {
    summary["run_id"].as_i64().unwrap()
}

fn s(v: &str) -> String {
    v.to_string()
}

fn host(h: &str) -> Option<String> {
    Some(h.to_string())
}

/// Copy `results.dir/<run>/` of one host into another's, as an operator would.
fn copy_run(from: &Path, to: &Path, run: i64) {
    let (src, dst) = (from.join(run.to_string()), to.join(run.to_string()));
    std::fs::create_dir_all(&dst).unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dst.join(f.file_name())).unwrap();
    }
}

/// Two hosts, each with its own results.dir: each uploader applies only the tasks of
/// its host; the other host's stay waiting (not failed on a missing file) until their
/// own uploader applies them.
#[tokio::test(flavor = "multi_thread")]
async fn each_uploader_applies_only_the_tasks_of_its_own_host() {
    let c = cluster("hosts-own").await;
    let (dir_a, dir_b) = (c.dir.join("results-a"), c.dir.join("results-b"));
    let cfg_a = host_config(&c, "a.toml", &dir_a, "host = \"host-a\"", &blobs_task(""));
    let cfg_b = host_config(&c, "b.toml", &dir_b, "host = \"host-b\"", &blobs_task(""));
    c.init_ready(&cfg_a).await;
    let run_a = run_id(&run_ok(&c, &cfg_a, &[]));
    let run_b = run_id(&run_ok(&c, &cfg_b, &[]));
    assert!(dir_a.join(format!("{run_a}/blobs.csv")).exists());
    assert!(dir_b.join(format!("{run_b}/blobs.csv")).exists());

    let out = c.run(&cfg_a, &["uploader", "--once"]).expect_code(0);
    let wait_line: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains("wait for other hosts"))
        .collect();
    assert_eq!(wait_line.len(), 1, "{}", out.stdout);
    assert!(wait_line[0].contains("1 task(s)") && wait_line[0].contains("host-b (1)"));
    assert_eq!(
        tasks(&c).await,
        [
            (run_a, s("blobs"), host("host-a"), s("completed"), 1),
            (run_b, s("blobs"), host("host-b"), s("waiting"), 0)
        ]
    );
    assert_eq!(findings(&c, run_a).await, found(&["blobs"]));
    assert_eq!(findings(&c, run_b).await, []);

    // The operator's view says which host each task waits for.
    let list = c.run(&cfg_a, &["tasks", "list", "--json"]).expect_code(0);
    let list: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    let hosts: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["host-b", "host-a"]);
    c.run(&cfg_a, &["tasks", "list"])
        .expect_code(0)
        .expect_stdout("HOST");

    let out = c.run(&cfg_b, &["uploader", "--once"]).expect_code(0);
    assert!(!out.stdout.contains("other hosts"), "{}", out.stdout);
    assert_eq!(findings(&c, run_b).await, found(&["blobs"]));
    let states: Vec<String> = tasks(&c).await.into_iter().map(|t| t.3).collect();
    assert_eq!(states, ["completed", "completed"]);
}

/// results.shared = true: a task is queued with no host and any uploader applies it;
/// an uploader on shared storage also applies the tasks of a named host.
#[tokio::test(flavor = "multi_thread")]
async fn with_shared_storage_a_task_has_no_host_and_any_uploader_applies_it() {
    let c = cluster("hosts-shared").await;
    let dir = c.dir.join("results-shared");
    let task = blobs_task("");
    let shared = host_config(
        &c,
        "s.toml",
        &dir,
        "shared = true\nhost = \"host-s\"",
        &task,
    );
    let cfg_a = host_config(&c, "a.toml", &dir, "host = \"host-a\"", &task);
    let cfg_b = host_config(&c, "b.toml", &dir, "host = \"host-b\"", &task);
    c.init_ready(&shared).await;

    let run_s = run_id(&run_ok(&c, &shared, &[]));
    let id = task_ids(&c, run_s).await[0];
    let show = c.run(&cfg_b, &["tasks", "show", &id.to_string(), "--json"]);
    let show: serde_json::Value = serde_json::from_str(&show.expect_code(0).stdout).unwrap();
    assert_eq!(show["host"], serde_json::Value::Null);
    c.run(&cfg_b, &["tasks", "show", &id.to_string()])
        .expect_code(0)
        .expect_stdout("host:             any (shared results.dir)");
    // A worker of a named host (not shared) claims a task with no host.
    c.run(&cfg_b, &["uploader", "--once"]).expect_code(0);
    assert_eq!(findings(&c, run_s).await, found(&["blobs"]));

    let run_a = run_id(&run_ok(&c, &cfg_a, &[]));
    c.run(&cfg_b, &["uploader", "--once"])
        .expect_code(0)
        .expect_stdout("host-a (1)");
    assert_eq!(findings(&c, run_a).await, []);
    let out = c.run(&shared, &["uploader", "--once"]).expect_code(0);
    assert!(!out.stdout.contains("other hosts"), "{}", out.stdout);
    assert_eq!(findings(&c, run_a).await, found(&["blobs"]));
    assert_eq!(
        tasks(&c).await,
        [
            (run_s, s("blobs"), None, s("completed"), 1),
            (run_a, s("blobs"), host("host-a"), s("completed"), 1)
        ]
    );
}

/// A host is gone with its uploader: its waiting tasks are handed over with `tasks retry
/// --on-host` to a host whose results.dir has a copy of the run, and applied there.
#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_task_of_a_gone_host_is_moved_with_retry_on_host_and_applied_there() {
    let c = cluster("hosts-move").await;
    let (dir_a, dir_b) = (c.dir.join("results-a"), c.dir.join("results-b"));
    let cfg_a = host_config(&c, "a.toml", &dir_a, "host = \"host-a\"", &two_tasks());
    let cfg_b = host_config(&c, "b.toml", &dir_b, "host = \"host-b\"", &two_tasks());
    c.init_ready(&cfg_a).await;
    let run = run_id(&run_ok(&c, &cfg_a, &[]));
    let ids = task_ids(&c, run).await;
    let (first, second) = (ids[0].to_string(), ids[1].to_string());

    // "any" needs a config that declares shared storage.
    let refused = c.run(&cfg_b, &["tasks", "retry", &first, "--on-host", "any"]);
    refused
        .expect_code(2)
        .expect_stderr("--on-host any: only with results.shared = true");
    // The second task alone would wait for a prerequisite left on the gone host.
    c.run(&cfg_b, &["tasks", "retry", &second, "--on-host", "host-b"])
        .expect_code(1)
        .expect_stderr(&format!("move task {first} first"));

    copy_run(&dir_a, &dir_b, run);
    let out = c.run(
        &cfg_b,
        &["tasks", "retry", &first, "--on-host", "host-b", "--json"],
    );
    let out: serde_json::Value = serde_json::from_str(&out.expect_code(0).stdout).unwrap();
    assert_eq!(out["requeued"], serde_json::json!(ids));
    assert_eq!(out["host"], "host-b");

    c.run(&cfg_b, &["uploader", "--once"]).expect_code(0);
    assert_eq!(findings(&c, run).await, found(&["blobs", "blobs-again"]));
    assert_eq!(
        tasks(&c).await,
        [
            (run, s("blobs"), host("host-b"), s("completed"), 1),
            (run, s("blobs-again"), host("host-b"), s("completed"), 1)
        ]
    );
}

/// Handed over before the files were copied, the task fails on the new host (file
/// missing) and its dependent is dropped; `tasks retry --on-host` puts both back on a
/// host that has the copy, and they are applied there.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_failed_for_missing_files_is_retried_on_a_host_that_has_them() {
    let c = cluster("hosts-failed").await;
    let dirs = ["a", "b", "c"].map(|h| c.dir.join(format!("results-{h}")));
    let cfg = |h: &str, dir: &Path| {
        let file = format!("{h}.toml");
        host_config(
            &c,
            &file,
            dir,
            &format!("host = \"host-{h}\""),
            &two_tasks(),
        )
    };
    let (cfg_a, cfg_b, cfg_c) = (cfg("a", &dirs[0]), cfg("b", &dirs[1]), cfg("c", &dirs[2]));
    c.init_ready(&cfg_a).await;
    let run = run_id(&run_ok(&c, &cfg_a, &[]));
    let ids = task_ids(&c, run).await;
    let first = ids[0].to_string();

    c.run(&cfg_b, &["tasks", "retry", &first, "--on-host", "host-b"])
        .expect_code(0);
    c.run(&cfg_b, &["uploader", "--once"])
        .expect_code(1)
        .expect_stdout("1 failed");
    let states: Vec<(String, Option<String>)> =
        tasks(&c).await.into_iter().map(|t| (t.3, t.2)).collect();
    assert_eq!(
        states,
        [
            (s("failed"), host("host-b")),
            (s("dropped"), host("host-b"))
        ]
    );
    assert_eq!(findings(&c, run).await, []);

    copy_run(&dirs[0], &dirs[2], run);
    c.run(&cfg_c, &["tasks", "retry", &first, "--on-host", "host-c"])
        .expect_code(0)
        .expect_stdout(&format!(
            "upload task(s) {}, {} waiting for host host-c",
            ids[0], ids[1]
        ));
    c.run(&cfg_c, &["uploader", "--once"]).expect_code(0);
    assert_eq!(findings(&c, run).await, found(&["blobs", "blobs-again"]));
    let states: Vec<(String, Option<String>)> =
        tasks(&c).await.into_iter().map(|t| (t.3, t.2)).collect();
    assert_eq!(
        states,
        [
            (s("completed"), host("host-c")),
            (s("completed"), host("host-c"))
        ]
    );
}
