//! What an operator sees of the daemon's schedule without the daemon: `pgmaint status`
//! reads each task's slots from `pgmaint.task_slots` (written here with SQL, as the
//! daemon writes them), `/metrics` exports the same history and the replicas' pause
//! state, and `--log-format json` makes every log line a JSON object. One cluster.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Timelike, Utc};
use pgmaint::config::{Config, Overrides};
use pgmaint_e2e::*;
use tokio_postgres::Client;

const HOLDER: &str = "metrics-test:1";

fn config_body(c: &Cluster) -> String {
    let task = |name: &str, schedule: &str| {
        row_checksum_task(name, BLOBS, "id", "payload", "payload_md5", schedule)
    };
    format!(
        "[daemon]\ntimezone = \"Europe/Paris\"\n{}{}{}[[dumps]]\nname = \"nightly-dump\"\nout = \"{}\"\nat = \"0 3 * * *\"\n",
        task("hourly", "every = \"1h\""),
        task("nightly", "at = \"30 2 * * *\""),
        task("manual", ""),
        c.dir.join("dumps").display()
    )
}

/// A slot as the daemon records it: claimed at `claimed_at`, then (unless `result` is
/// `None`) finished with `result`.
async fn slot(
    p: &Client,
    task: &str,
    slot: DateTime<Utc>,
    claimed_at: DateTime<Utc>,
    result: Option<(&str, Option<&str>, i64, f64)>,
) {
    p.execute(
        "INSERT INTO pgmaint.task_slots (task_name, slot, claimed_by, claimed_at) VALUES ($1, $2, $3, $4)",
        &[&task, &slot, &HOLDER, &claimed_at],
    )
    .await
    .unwrap();
    if let Some((result, error, findings, duration)) = result {
        let finished = claimed_at + TimeDelta::milliseconds((duration * 1000.0) as i64);
        p.execute(
            "UPDATE pgmaint.task_slots SET finished_at = $3, result = $4, error = $5, findings = $6,
                    duration_seconds = $7 WHERE task_name = $1 AND slot = $2",
            &[&task, &slot, &finished, &result, &error, &findings, &duration],
        )
        .await
        .unwrap();
    }
}

/// `hourly`: a success, then two failures. `nightly`: a success, then a slot still
/// running. The scheduler is led by [`HOLDER`].
async fn record_history(p: &Client, now: DateTime<Utc>) -> DateTime<Utc> {
    let h = |n: i64| now - TimeDelta::hours(n);
    slot(p, "hourly", h(3), h(3), Some(("succeeded", None, 3, 12.5))).await;
    let boom = Some("division by zero\nCONTEXT: somewhere");
    slot(p, "hourly", h(2), h(2), Some(("failed", boom, 0, 1.0))).await;
    let last_start = h(1) + TimeDelta::seconds(4);
    let full = Some("No space left on device");
    slot(
        p,
        "hourly",
        h(1),
        last_start,
        Some(("failed", full, 0, 2.0)),
    )
    .await;
    let night = |d: i64| now - TimeDelta::days(d);
    slot(
        p,
        "nightly",
        night(2),
        night(2),
        Some(("succeeded", None, 7, 60.0)),
    )
    .await;
    slot(p, "nightly", night(1), night(1), None).await;
    p.execute(
        "INSERT INTO pgmaint.leader (name, holder, expires_at) VALUES ('scheduler', $1, now() + interval '1 hour')",
        &[&HOLDER],
    )
    .await
    .unwrap();
    last_start
}

fn time(v: &serde_json::Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap()
        .with_timezone(&Utc)
}

fn check_status_json(doc: &serde_json::Value, hourly_start: DateTime<Utc>, now: DateTime<Utc>) {
    let hourly = named(doc, "schedule", "hourly");
    assert_eq!(hourly["schedule"], "every 1h");
    assert_eq!(hourly["kind"], "task");
    assert_eq!(hourly["last_result"], "failed");
    assert_eq!(hourly["consecutive_failures"], 2);
    assert_eq!(hourly["last_error"], "No space left on device");
    let next = time(&hourly["next_slot"]);
    assert!(
        (next - (hourly_start + TimeDelta::hours(1)))
            .num_milliseconds()
            .abs()
            < 1000
    );

    let nightly = named(doc, "schedule", "nightly");
    assert_eq!(nightly["schedule"], "at \"30 2 * * *\" Europe/Paris");
    assert_eq!(nightly["last_result"], "unfinished", "{nightly:#}");
    assert_eq!(nightly["consecutive_failures"], 0);
    assert_eq!(nightly["last_findings"], 7);
    assert!(nightly["last_error"].is_null());
    // 02:30 in Paris is :30 past the hour in UTC, winter or summer, within a day.
    let next = time(&nightly["next_slot"]);
    assert!(next > now && next < now + TimeDelta::days(1), "{next}");
    assert_eq!((next.minute(), next.second()), (30, 0));

    let manual = named(doc, "schedule", "manual");
    assert_eq!(manual["schedule"], "by hand");
    assert!(manual["next_slot"].is_null() && manual["last_result"].is_null());
    let dump = named(doc, "schedule", "nightly-dump");
    assert_eq!(dump["kind"], "dump");
    assert_eq!(dump["schedule"], "at \"0 3 * * *\" Europe/Paris");
    assert_eq!(doc["scheduler_leader"]["holder"], HOLDER);
    assert_eq!(doc["scheduler_leader"]["expired"], false);
}

async fn check_metrics(c: &Cluster, config: &Path) {
    let cfg = Config::load(config, &Overrides::default()).unwrap();
    let listener = pgmaint::http::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(cfg));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(pgmaint::http::serve(
        listener,
        rx,
        HOLDER.into(),
        Arc::new(pgmaint::metrics::DaemonStats::default()),
        shutdown.clone(),
    ));
    assert_eq!(
        http_get(addr, "/health").await,
        ("HTTP/1.1 200 OK".into(), "ok\n".into())
    );
    let (status, text) = http_get(addr, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{text}");
    let m = |series: &str| sample(&text, series);
    assert_eq!(
        m("pgmaint_task_consecutive_failures{task=\"hourly\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(m("pgmaint_task_findings{task=\"nightly\"}"), Some(7.0));
    assert_eq!(
        m("pgmaint_task_last_duration_seconds{task=\"hourly\"}"),
        Some(2.0)
    );
    assert!(m("pgmaint_task_last_success_timestamp_seconds{task=\"hourly\"}").is_some());
    assert_eq!(
        m("pgmaint_task_consecutive_failures{task=\"nightly-dump\"}"),
        Some(0.0)
    );
    assert_eq!(m("pgmaint_scheduler_leader"), Some(1.0));
    assert_eq!(m("pgmaint_replica_paused{replica=\"r1\"}"), Some(0.0));
    assert!(m("pgmaint_replica_replay_backlog_bytes{replica=\"r1\"}").is_some());
    assert_eq!(
        m("pgmaint_replica_pause_seconds{replica=\"r1\"}"),
        Some(0.0)
    );
    assert_eq!(m("pgmaint_runs_total{state=\"succeeded\"}"), Some(0.0));
    for state in uploader::UploadState::ALL {
        let series = format!("pgmaint_upload_tasks{{state=\"{}\"}}", state.as_str());
        assert_eq!(m(&series), Some(0.0), "{series}");
    }
    // A pause an operator made is a pause too: lag alerts may be silenced by it.
    c.pause_by_hand(1).await;
    // A scrape's answer is reused for up to a second (hostile-client hardening).
    wait_for("the pause in a scrape", Duration::from_secs(5), || async {
        sample(
            &http_get(addr, "/metrics").await.1,
            "pgmaint_replica_paused{replica=\"r1\"}",
        ) == Some(1.0)
    })
    .await;
    let (_, text) = http_get(addr, "/metrics").await;
    assert_eq!(
        sample(&text, "pgmaint_replica_paused{replica=\"r1\"}"),
        Some(1.0),
        "{text}"
    );
    c.replica(1)
        .await
        .execute("SELECT pg_wal_replay_resume()", &[])
        .await
        .unwrap();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the endpoint stops on shutdown")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_each_tasks_schedule_from_its_slots_and_metrics_export_them() {
    let c = Cluster::up("metrics-schedule", 1);
    let config = c.write_config("metrics.toml", &config_body(&c));
    // The migrations, logged as JSON objects with their fields at the top level.
    let init = c
        .run(&config, &["--log-format", "json", "init"])
        .expect_code(0);
    let first: serde_json::Value = serde_json::from_str(init.stderr.lines().next().unwrap())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", init.stderr));
    assert_eq!(first["message"], "applied migration", "{first}");
    assert_eq!(
        (&first["level"], &first["version"]),
        (&"INFO".into(), &1.into())
    );
    let now = Utc::now();
    let hourly_start = record_history(&c.primary().await, now).await;

    let run = c.run(&config, &["status", "--json"]).expect_code(0);
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    check_status_json(&doc, hourly_start, now);
    let text = c.run(&config, &["status"]).expect_code(0).stdout;
    let section = &text[text.find("\nSCHEDULE\n").expect("a SCHEDULE section")..];
    assert!(
        section.contains(&format!("scheduler: led by {HOLDER}")),
        "{section}"
    );
    assert!(section.contains("by hand"), "{section}");
    assert!(
        section.contains("last error: No space left on device"),
        "{section}"
    );
    // A multi-line error shows as one line.
    assert!(!section.contains("CONTEXT"), "{section}");

    check_json_logs(&c, &config);
    check_metrics(&c, &config).await;
}

/// `--log-format json` (or `PGMAINT_LOG_FORMAT=json`): every line `status --log debug`
/// writes on stderr is a JSON object with a level and a timestamp.
fn check_json_logs(c: &Cluster, config: &Path) {
    let check = |stderr: &str| {
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(!lines.is_empty(), "no log lines");
        for line in lines {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert!(
                v["level"].is_string() && v["timestamp"].is_string(),
                "{line}"
            );
        }
    };
    let args = ["--log-format", "json", "--log", "debug", "status"];
    check(&c.run(config, &args).expect_code(0).stderr);
    let by_env = c
        .pgmaint(config, &["--log", "debug", "status"])
        .env("PGMAINT_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert!(by_env.status.success());
    check(&String::from_utf8_lossy(&by_env.stderr));
    c.run(config, &["--log-format", "xml", "status"])
        .expect_code(2)
        .expect_stderr("invalid value 'xml'");
}
