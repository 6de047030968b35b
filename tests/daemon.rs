//! `pgmaint daemon` against real clusters: the schedule, leadership, failures, signals,
//! reload, restart safety.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use pgmaint_e2e::*;

/// A daemon process, stopped (SIGKILL) if the test ends without stopping it.
struct Daemon {
    child: Option<Child>,
    log: std::path::PathBuf,
}

impl Daemon {
    /// Start `pgmaint daemon` with `config`; its stderr goes to `<config>.<n>.log`.
    fn start(c: &Cluster, config: &Path, n: usize) -> Daemon {
        let log = config.with_extension(format!("{n}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = c
            .pgmaint(config, &["daemon"])
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Daemon {
            child: Some(child),
            log,
        }
    }
    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// Send `sig`; the exit status if it exits within `timeout`.
    async fn stop(&mut self, sig: &str, timeout: Duration) -> Option<std::process::ExitStatus> {
        signal(self.pid(), sig);
        let status = exited_within(self.child.as_mut().unwrap(), timeout).await;
        if status.is_some() {
            self.child = None;
        }
        status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Slots of `task` that ended with `result`.
async fn slots(c: &Cluster, task: &str, result: &str) -> i64 {
    let sql = "SELECT count(*) FROM pgmaint.task_slots WHERE task_name = $1 AND result = $2";
    scalar(&c.primary().await, sql, &[&task, &result]).await
}

/// Wait until `task` has `n` slots that ended with `result`.
async fn wait_slots(c: &Cluster, task: &str, result: &str, n: i64, timeout: Duration) {
    wait_for(
        &format!("{n} {result} slots of {task}"),
        timeout,
        || async { slots(c, task, result).await >= n },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_tasks_every_3s_run_three_times_each_within_12s_and_the_daemon_uploads_findings() {
    let (c, p) = blobs_cluster("daemon-every", 300).await;
    p.batch_execute("UPDATE public.blobs SET payload_md5 = 'x' WHERE id IN (5, 7)")
        .await
        .unwrap();
    let tasks = format!(
        "{}{}",
        row_checksum_task(
            "sweep-a",
            BLOBS,
            "id",
            "payload",
            "payload_md5",
            "every = \"3s\""
        ),
        row_checksum_task(
            "sweep-b",
            BLOBS,
            "id",
            "payload",
            "payload_md5",
            "every = \"3s\""
        )
    );
    let cfg = c.write_config(
        "daemon.toml",
        &format!("[daemon]\nleader_lease = \"3s\"\n{tasks}"),
    );
    c.init_ready(&cfg).await;
    let started = Instant::now();
    let mut d = Daemon::start(&c, &cfg, 1);
    for task in ["sweep-a", "sweep-b"] {
        let left = Duration::from_secs(12).saturating_sub(started.elapsed());
        wait_slots(&c, task, "succeeded", 3, left).await;
    }
    // The daemon's own worker applied the findings: both rows, still holding.
    wait_for("the findings uploaded", Duration::from_secs(10), || async {
        count(
            &p,
            "SELECT count(*) FROM pgmaint.upload_tasks WHERE state = 'completed'",
        )
        .await
            >= 6
    })
    .await;
    for task in ["sweep-a", "sweep-b"] {
        let keys: Vec<String> = p
            .query(
                "SELECT DISTINCT row_key FROM pgmaint.integrity_findings
                  WHERE task_name = $1 AND still_holds ORDER BY 1",
                &[&task],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(keys, ["5", "7"], "{task}");
    }
    let failed = count(
        &p,
        "SELECT count(*) FROM pgmaint.upload_tasks WHERE state = 'failed'",
    )
    .await;
    assert_eq!(failed, 0, "{}", d.log());
    // SIGTERM: exit 0, replica not paused, leader lease released.
    let status = d
        .stop("TERM", Duration::from_secs(30))
        .await
        .expect("exits");
    assert!(status.success(), "{status:?}\n{}", d.log());
    assert_eq!(c.pause_state(1).await, "not paused");
    assert_eq!(count(&p, "SELECT count(*) FROM pgmaint.leader").await, 0);
}
