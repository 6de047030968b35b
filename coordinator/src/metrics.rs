//! The daemon's Prometheus metrics: gathered from the primary and the replicas at
//! each scrape ([`scrape`]), so a task or replica removed from config vanishes from
//! the next one, and nothing runs between scrapes.
//!
//! The metric names are a contract (dashboards and alert rules use them):
//! `pgmaint_replica_paused`, `pgmaint_replica_replay_backlog_bytes`,
//! `pgmaint_replica_pause_seconds` (label `replica`);
//! `pgmaint_task_last_success_timestamp_seconds`, `pgmaint_task_last_duration_seconds`,
//! `pgmaint_task_consecutive_failures`, `pgmaint_task_findings` (label `task`, dumps
//! included); `pgmaint_runs_total`, `pgmaint_upload_tasks` (label `state`);
//! `pgmaint_scheduler_leader`.
//!
//! Traps:
//! - prometheus-client writes OpenMetrics, where a counter family `pgmaint_runs` has
//!   samples `pgmaint_runs_total` and the text ends in `# EOF`. We serve the Prometheus
//!   text format 0.0.4, where `# HELP`/`# TYPE` name the sample itself:
//!   [`render`] rewrites those lines.
//! - A dead replica must not stall the scrape: each is asked concurrently, with a 2 s
//!   connect time-out and 3 s in all; one that does not answer has no `paused` or
//!   `backlog` sample (its `pause_seconds` comes from the primary's run table).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_postgres::Client;

use crate::config::{Config, Dsn, ReplicaConfig};
use crate::db::{self, ConnectError};
use crate::replica::{self, PauseState};
use crate::schedule_history;

/// One replica's samples.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaSample {
    /// `replicas[].name`.
    pub name: String,
    /// Replay is not `not paused`; `None` when the replica did not answer.
    pub paused: Option<bool>,
    /// Receive LSN − replay LSN; `None` when the replica did not answer.
    pub backlog_bytes: Option<i64>,
    /// How long the running pgmaint run holding its lease has had it paused; 0 if none.
    pub pause_seconds: f64,
}

/// One task's (or dump's) samples, from its slot history.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSample {
    /// `tasks[].name` or `dumps[].name`.
    pub name: String,
    /// When its last succeeded slot finished; `None`: never (no sample).
    pub last_success: Option<DateTime<Utc>>,
    /// How long its last finished slot took.
    pub last_duration_seconds: Option<f64>,
    /// Failed slots since the last succeeded one.
    pub consecutive_failures: i64,
    /// What its last finished slot found.
    pub findings: Option<i64>,
}

/// Everything `/metrics` shows, at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsState {
    /// Each configured replica.
    pub replicas: Vec<ReplicaSample>,
    /// Each configured task and dump.
    pub tasks: Vec<TaskSample>,
    /// `pgmaint.runs` by state, every state present.
    pub runs: BTreeMap<String, i64>,
    /// `pgmaint.upload_tasks` by state, every state present.
    pub uploads: BTreeMap<String, i64>,
    /// This daemon holds the scheduler's lease, unexpired.
    pub leader: bool,
    /// The daemon reaches the primary (`pgmaint_primary_up`).
    pub primary_up: bool,
    /// Automatic failovers by result (`pgmaint_failovers_total`).
    pub failovers: BTreeMap<String, u64>,
    /// How long the last automatic failover took (`pgmaint_failover_seconds`).
    pub last_failover_seconds: Option<f64>,
}

/// What this daemon process counts itself (not on the primary): its automatic
/// failovers, and whether its watch reaches the primary.
#[derive(Debug, Default)]
pub struct DaemonStats {
    inner: std::sync::Mutex<DaemonCounts>,
}

#[derive(Debug, Default, Clone)]
struct DaemonCounts {
    watched: Option<bool>,
    failovers: BTreeMap<String, u64>,
    last_failover_seconds: Option<f64>,
}

impl DaemonStats {
    /// The failover watch reached the primary, or not.
    pub fn primary_seen(&self, up: bool) {
        self.inner.lock().expect("stats").watched = Some(up);
    }
    /// A failover attempt ended with `result` (`promoted`, `followed`, `refused`,
    /// `fence_failed`, `failed`); the seconds of one that promoted or followed.
    pub fn failover(&self, result: &str, seconds: Option<f64>) {
        let mut c = self.inner.lock().expect("stats");
        *c.failovers.entry(result.to_string()).or_default() += 1;
        if seconds.is_some() {
            c.last_failover_seconds = seconds;
        }
    }
    fn counts(&self) -> DaemonCounts {
        self.inner.lock().expect("stats").clone()
    }
}

/// The results `pgmaint_failovers_total` always shows (0 until one happens).
pub const FAILOVER_RESULTS: [&str; 5] =
    ["promoted", "followed", "refused", "fence_failed", "failed"];

/// How long a replica may take to answer a scrape, connection included.
const REPLICA_PATIENCE: Duration = Duration::from_secs(3);
/// How long the primary may take to answer a scrape, connection included.
const PRIMARY_PATIENCE: Duration = Duration::from_secs(5);

/// Connect to `dsn` within `timeout` (the connect time-out of each address, and of the
/// whole attempt), for a scrape or a health check that must answer promptly.
pub async fn connect_quickly(
    dsn: &Dsn,
    application_name: &str,
    timeout: Duration,
) -> Result<Client, ConnectError> {
    let mut quick = dsn.clone();
    quick.config.connect_timeout(timeout);
    tokio::time::timeout(timeout, db::connect(&quick, application_name))
        .await
        .unwrap_or_else(|_| {
            Err(ConnectError::no_answer(format!(
                "{}: cannot connect ({}): no answer within {}s",
                dsn.field,
                db::describe(&dsn.config),
                timeout.as_secs()
            )))
        })
}

/// Gather the metrics now and render them in the Prometheus text format 0.0.4.
/// `holder`: this daemon's leader-lease holder id ([`crate::lease::holder`]). When the
/// primary cannot be read, the replicas' samples, `pgmaint_primary_up 0` and the
/// failover counts are still served (what an operator needs most then); the samples
/// read from the primary's tables are absent.
pub async fn scrape(cfg: &Config, holder: &str, stats: &DaemonStats) -> Result<String> {
    let primary_part = async {
        let primary = connect_quickly(&cfg.primary, "pgmaint-metrics", PRIMARY_PATIENCE).await?;
        tokio::time::timeout(PRIMARY_PATIENCE, gather_primary(cfg, &primary, holder))
            .await
            .context("reading pgmaint's tables on the primary: no answer within 5s")?
    };
    let replica_part = futures_util::future::join_all(cfg.replicas.iter().map(replica_sample));
    let (state, replicas) = tokio::join!(primary_part, replica_part);
    let mut state = match state {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("metrics: the primary cannot be read: {e:#}");
            MetricsState {
                replicas: cfg
                    .replicas
                    .iter()
                    .map(|r| ReplicaSample {
                        name: r.name.clone(),
                        paused: None,
                        backlog_bytes: None,
                        pause_seconds: 0.0,
                    })
                    .collect(),
                ..Default::default()
            }
        }
    };
    for (sample, (paused, backlog)) in state.replicas.iter_mut().zip(replicas) {
        sample.paused = paused;
        sample.backlog_bytes = backlog;
    }
    let counts = stats.counts();
    // The failover watch's view, when there is one, wins: it is what decides a failover.
    if let Some(up) = counts.watched {
        state.primary_up = up;
    }
    state.failovers = FAILOVER_RESULTS
        .iter()
        .map(|r| {
            (
                r.to_string(),
                counts.failovers.get(*r).copied().unwrap_or(0),
            )
        })
        .collect();
    state.last_failover_seconds = counts.last_failover_seconds;
    Ok(render(&state))
}

/// The replica's paused flag and backlog, or nothing if it does not answer in time.
async fn replica_sample(r: &ReplicaConfig) -> (Option<bool>, Option<i64>) {
    let ask = async {
        let client = connect_quickly(&r.dsn, "pgmaint-metrics", Duration::from_secs(2)).await?;
        anyhow::Ok(replica::read_state(&client).await?)
    };
    match tokio::time::timeout(REPLICA_PATIENCE, ask).await {
        Ok(Ok(st)) => {
            let paused = !matches!(
                st.pause_state,
                PauseState::NotPaused | PauseState::NotInRecovery
            );
            (Some(paused), Some(st.backlog_bytes))
        }
        Ok(Err(e)) => {
            tracing::debug!(replica = %r.name, error = %format!("{e:#}"), "replica not sampled");
            (None, None)
        }
        Err(_) => {
            tracing::debug!(replica = %r.name, "replica not sampled: no answer within 3s");
            (None, None)
        }
    }
}

/// Everything the primary knows: slot histories, pause times, run and queue counts,
/// the scheduler's lease. Replica samples are left empty (`None`).
pub async fn gather_primary(cfg: &Config, primary: &Client, holder: &str) -> Result<MetricsState> {
    let names: Vec<String> = cfg
        .tasks
        .iter()
        .map(|t| t.name.clone())
        .chain(cfg.dumps.iter().map(|d| d.name.clone()))
        .collect();
    let history = schedule_history::read(primary, &names)
        .await
        .context("reading pgmaint.task_slots")?;
    let tasks = names
        .iter()
        .map(|n| match history.get(n) {
            Some(h) => TaskSample {
                name: n.clone(),
                last_success: h.last_success_at,
                last_duration_seconds: h.last_duration_seconds,
                consecutive_failures: h.consecutive_failures,
                findings: h.last_findings,
            },
            None => TaskSample {
                name: n.clone(),
                last_success: None,
                last_duration_seconds: None,
                consecutive_failures: 0,
                findings: None,
            },
        })
        .collect();
    let pauses = pause_seconds(primary).await?;
    let replicas = cfg
        .replicas
        .iter()
        .map(|r| ReplicaSample {
            name: r.name.clone(),
            paused: None,
            backlog_bytes: None,
            pause_seconds: pauses.get(&r.name).copied().unwrap_or(0.0),
        })
        .collect();
    let runs = counts(
        primary,
        "pgmaint.runs",
        uploader::RunState::ALL.map(|s| s.as_str()),
    )
    .await?;
    let uploads = counts(
        primary,
        "pgmaint.upload_tasks",
        uploader::UploadState::ALL.map(|s| s.as_str()),
    )
    .await?;
    let leader: bool = primary
        .query_opt(
            "SELECT holder = $1 AND expires_at > now() FROM pgmaint.leader WHERE name = 'scheduler'",
            &[&holder],
        )
        .await
        .context("reading pgmaint.leader")?
        .is_some_and(|r| r.get(0));
    Ok(MetricsState {
        replicas,
        tasks,
        runs,
        uploads,
        leader,
        primary_up: true,
        ..Default::default()
    })
}

/// Seconds since the running run holding each replica's lease paused it (from the
/// pause request until the pause is confirmed and recorded: the replica may already
/// stand still then).
async fn pause_seconds(primary: &Client) -> Result<BTreeMap<String, f64>> {
    let rows = primary
        .query(
            "SELECT l.replica,
                    extract(epoch FROM now() - coalesce(r.paused_at, r.pause_requested_at))::float8
               FROM pgmaint.replica_leases l JOIN pgmaint.runs r ON r.id = l.run_id
              WHERE r.state = 'running' AND r.resumed_at IS NULL
                AND coalesce(r.paused_at, r.pause_requested_at) IS NOT NULL",
            &[],
        )
        .await
        .context("reading pgmaint.replica_leases")?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get::<_, f64>(1).max(0.0)))
        .collect())
}

/// Rows of `table` (one of ours, not from config) by state, every state in `all`
/// present.
async fn counts<const N: usize>(
    primary: &Client,
    table: &'static str,
    all: [&'static str; N],
) -> Result<BTreeMap<String, i64>> {
    let mut out: BTreeMap<String, i64> = all.iter().map(|s| (s.to_string(), 0)).collect();
    let sql = format!("SELECT state, count(*) FROM {table} GROUP BY state");
    for row in primary
        .query(&sql, &[])
        .await
        .with_context(|| format!("counting {table}"))?
    {
        out.insert(row.get(0), row.get(1));
    }
    Ok(out)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabel {
    replica: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabel {
    task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The state in the Prometheus text format 0.0.4, from a registry built for it alone.
pub fn render(s: &MetricsState) -> String {
    let mut registry = Registry::default();
    register_replicas(&mut registry, &s.replicas);
    register_tasks(&mut registry, &s.tasks);
    // Runs that ended, by how: a counter only goes up, and `running` would go down.
    let ended = s
        .runs
        .iter()
        .filter(|(state, _)| state.as_str() != "running");
    register_counters(
        &mut registry,
        "pgmaint_runs",
        "pgmaint runs recorded on the primary, by state",
        ended.map(|(state, n)| {
            let label = StateLabel {
                state: state.clone(),
            };
            (label, u64::try_from(*n).unwrap_or(0))
        }),
    );
    let uploads = Family::<StateLabel, Gauge>::default();
    for (state, n) in &s.uploads {
        let label = StateLabel {
            state: state.clone(),
        };
        uploads.get_or_create(&label).set(*n);
    }
    registry.register(
        "pgmaint_upload_tasks",
        "Upload tasks in the queue, by state",
        uploads,
    );
    register_flag(
        &mut registry,
        "pgmaint_scheduler_leader",
        "1 if this daemon holds the scheduler's lease (pgmaint.leader), unexpired",
        s.leader,
    );
    register_failover(&mut registry, s);
    let mut text = String::new();
    prometheus_client::encoding::text::encode_registry(&mut text, &registry)
        .expect("writing to a String does not fail");
    openmetrics_to_prometheus_text(&text)
}

/// A counter family by one label; `name` without `_total` (prometheus-client appends
/// it to a counter's name).
fn register_counters<L>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    values: impl Iterator<Item = (L, u64)>,
) where
    L: EncodeLabelSet + Clone + std::fmt::Debug + std::hash::Hash + Eq + Send + Sync + 'static,
{
    let family = Family::<L, Counter>::default();
    for (label, n) in values {
        family.get_or_create(&label).inc_by(n);
    }
    registry.register(name, help, family);
}

/// A gauge that is 1 or 0.
fn register_flag(registry: &mut Registry, name: &str, help: &str, on: bool) {
    let flag = Gauge::<i64>::default();
    flag.set(i64::from(on));
    registry.register(name, help, flag);
}

fn register_failover(registry: &mut Registry, s: &MetricsState) {
    register_flag(
        registry,
        "pgmaint_primary_up",
        "1 if this daemon reaches the primary",
        s.primary_up,
    );
    register_counters(
        registry,
        "pgmaint_failovers",
        "Automatic failovers this daemon attempted, by result",
        s.failovers.iter().map(|(result, n)| {
            let label = ResultLabel {
                result: result.clone(),
            };
            (label, *n)
        }),
    );
    if let Some(secs) = s.last_failover_seconds {
        let last = FloatGauge::default();
        last.set(secs);
        registry.register(
            "pgmaint_failover_seconds",
            "How long the last automatic failover took, from the primary's first failed check to the new primary in use",
            last,
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

fn register_replicas(registry: &mut Registry, replicas: &[ReplicaSample]) {
    let paused = Family::<ReplicaLabel, Gauge>::default();
    let backlog = Family::<ReplicaLabel, Gauge>::default();
    let pause = Family::<ReplicaLabel, FloatGauge>::default();
    for r in replicas {
        let label = ReplicaLabel {
            replica: r.name.clone(),
        };
        if let Some(p) = r.paused {
            paused.get_or_create(&label).set(i64::from(p));
        }
        if let Some(b) = r.backlog_bytes {
            backlog.get_or_create(&label).set(b);
        }
        pause.get_or_create(&label).set(r.pause_seconds);
    }
    registry.register(
        "pgmaint_replica_paused",
        "1 if the replica's pg_get_wal_replay_pause_state() is not 'not paused'",
        paused,
    );
    registry.register(
        "pgmaint_replica_replay_backlog_bytes",
        "WAL received but not replayed by the replica (receive LSN - replay LSN)",
        backlog,
    );
    registry.register(
        "pgmaint_replica_pause_seconds",
        "How long the running pgmaint run holding the replica's lease has had it paused; 0 if none",
        pause,
    );
}

fn register_tasks(registry: &mut Registry, tasks: &[TaskSample]) {
    let success = Family::<TaskLabel, FloatGauge>::default();
    let duration = Family::<TaskLabel, FloatGauge>::default();
    let failures = Family::<TaskLabel, Gauge>::default();
    let findings = Family::<TaskLabel, Gauge>::default();
    for t in tasks {
        let label = TaskLabel {
            task: t.name.clone(),
        };
        if let Some(at) = t.last_success {
            let secs = at.timestamp_millis() as f64 / 1000.0;
            success.get_or_create(&label).set(secs);
        }
        if let Some(d) = t.last_duration_seconds {
            duration.get_or_create(&label).set(d);
        }
        failures.get_or_create(&label).set(t.consecutive_failures);
        if let Some(f) = t.findings {
            findings.get_or_create(&label).set(f);
        }
    }
    registry.register(
        "pgmaint_task_last_success_timestamp_seconds",
        "When the task's (or dump's) last succeeded scheduled slot finished, Unix time",
        success,
    );
    registry.register(
        "pgmaint_task_last_duration_seconds",
        "How long the task's last finished scheduled slot took",
        duration,
    );
    registry.register(
        "pgmaint_task_consecutive_failures",
        "Failed scheduled slots of the task since its last succeeded one",
        failures,
    );
    registry.register(
        "pgmaint_task_findings",
        "What the task's last finished scheduled slot found",
        findings,
    );
}

/// OpenMetrics text to Prometheus text 0.0.4: a counter's `# HELP`/`# TYPE` lines name
/// its `_total` samples, and there is no `# EOF`.
fn openmetrics_to_prometheus_text(text: &str) -> String {
    let counters: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn state() -> MetricsState {
        MetricsState {
            replicas: vec![
                ReplicaSample {
                    name: "r1".into(),
                    paused: Some(true),
                    backlog_bytes: Some(16384),
                    pause_seconds: 12.5,
                },
                ReplicaSample {
                    name: "r2".into(),
                    paused: None,
                    backlog_bytes: None,
                    pause_seconds: 0.0,
                },
            ],
            tasks: vec![
                TaskSample {
                    name: "blob-integrity".into(),
                    last_success: Some(t("2026-11-30T01:30:42.5Z")),
                    last_duration_seconds: Some(42.5),
                    consecutive_failures: 0,
                    findings: Some(5),
                },
                TaskSample {
                    name: "nightly-dump".into(),
                    last_success: None,
                    last_duration_seconds: None,
                    consecutive_failures: 3,
                    findings: None,
                },
            ],
            runs: [("succeeded", 7), ("failed", 1), ("running", 0)]
                .map(|(s, n)| (s.to_string(), n))
                .into(),
            uploads: [("waiting", 2), ("completed", 9), ("failed", 0)]
                .map(|(s, n)| (s.to_string(), n))
                .into(),
            leader: true,
            primary_up: true,
            failovers: FAILOVER_RESULTS
                .iter()
                .map(|r| (r.to_string(), u64::from(*r == "promoted")))
                .collect(),
            last_failover_seconds: Some(14.5),
        }
    }

    const CONTRACT: [&str; 13] = [
        "pgmaint_primary_up",
        "pgmaint_failovers_total",
        "pgmaint_failover_seconds",
        "pgmaint_replica_paused",
        "pgmaint_replica_replay_backlog_bytes",
        "pgmaint_replica_pause_seconds",
        "pgmaint_task_last_success_timestamp_seconds",
        "pgmaint_task_last_duration_seconds",
        "pgmaint_task_consecutive_failures",
        "pgmaint_task_findings",
        "pgmaint_runs_total",
        "pgmaint_upload_tasks",
        "pgmaint_scheduler_leader",
    ];

    fn parse(text: &str) -> prometheus_parse::Scrape {
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
    }

    fn value(scrape: &prometheus_parse::Scrape, name: &str, label: (&str, &str)) -> Option<f64> {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{name}: unexpected {other:?}"),
            })
    }

    #[test]
    fn the_text_parses_and_has_exactly_the_contract_names() {
        let text = render(&state());
        let scrape = parse(&text);
        let mut names: Vec<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
        names.sort();
        names.dedup();
        let mut want = CONTRACT.to_vec();
        want.sort();
        assert_eq!(names, want, "{text}");
        // Every HELP and TYPE names a sample, as 0.0.4 wants; no OpenMetrics trailer.
        for line in text.lines().filter(|l| l.starts_with('#')) {
            let name = line.split(' ').nth(2).unwrap();
            assert!(CONTRACT.contains(&name), "{line}");
        }
        assert!(!text.contains("# EOF"));
        assert!(
            text.contains("# TYPE pgmaint_runs_total counter\n"),
            "{text}"
        );
        assert!(matches!(
            scrape
                .samples
                .iter()
                .find(|s| s.metric == "pgmaint_runs_total")
                .unwrap()
                .value,
            prometheus_parse::Value::Counter(_)
        ));
    }

    #[test]
    fn the_values_are_those_of_the_state() {
        let scrape = parse(&render(&state()));
        let v = |name, label| value(&scrape, name, label);
        assert_eq!(v("pgmaint_replica_paused", ("replica", "r1")), Some(1.0));
        assert_eq!(
            v("pgmaint_replica_replay_backlog_bytes", ("replica", "r1")),
            Some(16384.0)
        );
        assert_eq!(
            v("pgmaint_replica_pause_seconds", ("replica", "r1")),
            Some(12.5)
        );
        // An unreachable replica: no paused or backlog sample, a pause time of 0.
        assert_eq!(v("pgmaint_replica_paused", ("replica", "r2")), None);
        assert_eq!(
            v("pgmaint_replica_replay_backlog_bytes", ("replica", "r2")),
            None
        );
        assert_eq!(
            v("pgmaint_replica_pause_seconds", ("replica", "r2")),
            Some(0.0)
        );
        let task = ("task", "blob-integrity");
        let success = t("2026-11-30T01:30:42.5Z").timestamp_millis() as f64 / 1000.0;
        assert_eq!(
            v("pgmaint_task_last_success_timestamp_seconds", task),
            Some(success)
        );
        assert_eq!(v("pgmaint_task_last_duration_seconds", task), Some(42.5));
        assert_eq!(v("pgmaint_task_consecutive_failures", task), Some(0.0));
        assert_eq!(v("pgmaint_task_findings", task), Some(5.0));
        // Never succeeded: failures counted, no success time.
        let dump = ("task", "nightly-dump");
        assert_eq!(v("pgmaint_task_consecutive_failures", dump), Some(3.0));
        assert_eq!(v("pgmaint_task_last_success_timestamp_seconds", dump), None);
        assert_eq!(v("pgmaint_runs_total", ("state", "succeeded")), Some(7.0));
        assert_eq!(
            v("pgmaint_runs_total", ("state", "running")),
            None,
            "runs that ended only"
        );
        assert_eq!(v("pgmaint_upload_tasks", ("state", "waiting")), Some(2.0));
        assert_eq!(v("pgmaint_upload_tasks", ("state", "failed")), Some(0.0));
        let leader = scrape
            .samples
            .iter()
            .find(|s| s.metric == "pgmaint_scheduler_leader");
        assert!(matches!(leader.unwrap().value, prometheus_parse::Value::Gauge(v) if v == 1.0));
    }

    #[test]
    fn a_task_removed_from_config_vanishes_from_the_next_scrape() {
        let mut s = state();
        s.tasks.retain(|t| t.name != "nightly-dump");
        assert!(!render(&s).contains("nightly-dump"));
    }
}
