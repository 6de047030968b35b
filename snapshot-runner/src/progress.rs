//! Progress of long scans: an indicatif bar on a terminal, periodic tracing lines
//! otherwise (cron, systemd, CI).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy)]
pub enum ProgressMode {
    /// A bar on stderr.
    Bar,
    /// A tracing line every so often.
    Log(Duration),
}

impl ProgressMode {
    /// A bar if stderr is a terminal, else log lines every `interval`.
    pub fn detect(interval: Duration) -> Self {
        if std::io::stderr().is_terminal() {
            ProgressMode::Bar
        } else {
            ProgressMode::Log(interval)
        }
    }
}

/// Shared counters of one task; workers add to them, the reporter shows them.
#[derive(Default)]
pub struct Counters {
    /// Rows or files done.
    pub items: AtomicU64,
    /// Bytes read.
    pub bytes: AtomicU64,
    /// Findings so far.
    pub findings: AtomicU64,
    /// The most findings the task may have (`max_findings`); 0: no limit.
    max_findings: u64,
}

impl Counters {
    /// Counters of a task that may have at most `max_findings` findings (0: no limit).
    pub fn with_max_findings(max_findings: u64) -> Self {
        Counters {
            max_findings,
            ..Counters::default()
        }
    }

    /// Count one more finding, about to be written. `false` (and nothing counted) if
    /// that would be more than `max_findings`: the task must then stop and fail.
    pub fn admit_finding(&self) -> bool {
        let before = self.findings.fetch_add(1, Ordering::Relaxed);
        if self.max_findings != 0 && before >= self.max_findings {
            self.findings.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Add one batch.
    pub fn add(&self, items: u64, bytes: u64) {
        self.items.fetch_add(items, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Shows one task's progress until dropped.
pub struct ProgressReporter {
    stop: tokio_util::sync::CancellationToken,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl ProgressReporter {
    /// Start reporting `counters` of task `task`; `total` is the expected item count
    /// (an estimate is fine), `unit` names the items ("rows", "files").
    pub fn start(
        mode: ProgressMode,
        task: &str,
        unit: &'static str,
        total: Option<u64>,
        counters: Arc<Counters>,
    ) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let task = task.to_string();
        let stopped = stop.clone();
        let handle = tokio::spawn(async move {
            let started = Instant::now();
            match mode {
                ProgressMode::Bar => {
                    let bar = match total {
                        Some(t) if t > 0 => ProgressBar::new(t),
                        _ => ProgressBar::new_spinner(),
                    };
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{prefix:>16} [{bar:30}] {human_pos}/{human_len} {msg} {elapsed} eta {eta}",
                        )
                        .expect("valid template")
                        .progress_chars("=> "),
                    );
                    bar.set_prefix(task);
                    loop {
                        let items = counters.items.load(Ordering::Relaxed);
                        let bytes = counters.bytes.load(Ordering::Relaxed);
                        if total.is_some_and(|t| items > t) {
                            bar.set_length(items);
                        }
                        bar.set_position(items);
                        bar.set_message(format!(
                            "{unit}, {}, {} findings",
                            indicatif::HumanBytes(bytes),
                            counters.findings.load(Ordering::Relaxed)
                        ));
                        tokio::select! {
                            _ = stopped.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        }
                    }
                    bar.finish_and_clear();
                }
                ProgressMode::Log(every) => loop {
                    tokio::select! {
                        _ = stopped.cancelled() => break,
                        _ = tokio::time::sleep(every) => {}
                    }
                    let items = counters.items.load(Ordering::Relaxed);
                    let bytes = counters.bytes.load(Ordering::Relaxed);
                    let secs = started.elapsed().as_secs_f64().max(0.001);
                    let pct = total
                        .filter(|t| *t > 0)
                        .map(|t| format!("{:.1}%", 100.0 * items as f64 / t as f64))
                        .unwrap_or_else(|| "-".into());
                    // Remaining items at the rate so far; unknown without a total or a rate.
                    let eta = match total {
                        Some(t) if items > 0 && t > items => {
                            let left = (t - items) as f64 * secs / items as f64;
                            format!("{}s", left.round() as u64)
                        }
                        Some(_) if items > 0 => "0s".to_string(),
                        _ => "-".to_string(),
                    };
                    tracing::info!(
                        task = %task,
                        done = items,
                        unit,
                        percent = %pct,
                        mb = bytes / 1_000_000,
                        mb_per_s = format!("{:.1}", bytes as f64 / 1e6 / secs),
                        findings = counters.findings.load(Ordering::Relaxed),
                        eta = %eta,
                        "progress"
                    );
                },
            }
        });
        ProgressReporter {
            stop,
            handle: Some(handle),
        }
    }

    /// Stop and wait for the reporter to clear its bar.
    pub async fn finish(mut self) {
        self.stop.cancel();
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}

impl Drop for ProgressReporter {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
