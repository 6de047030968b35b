//! `[scan]` and `[uploader]`: how scans and the upload worker run.

use std::time::Duration;

use serde::Deserialize;

use super::{duration, usage};
use crate::UsageError;

/// How scans run.
#[derive(Debug, Clone)]
pub struct ScanSettings {
    /// `lock_timeout` of every scan session.
    pub lock_timeout: Duration,
    /// Rows per fetch.
    pub batch_rows: i32,
    /// Interval of progress log lines when not on a terminal.
    pub progress_interval: Duration,
}

/// How the upload worker runs.
#[derive(Debug, Clone)]
pub struct UploaderSettings {
    /// Lease of a running upload task.
    pub lease: Duration,
    /// Attempts before a task is failed.
    pub max_attempts: i32,
    /// Concurrent slots of `pgmaint uploader`.
    pub slots: usize,
    /// Poll interval, in case a NOTIFY is missed.
    pub poll_interval: Duration,
    /// `lock_timeout` of an apply.
    pub lock_timeout: Duration,
    /// On SIGTERM/SIGINT, how long a task in hand may take to finish before it is
    /// stopped (rolled back) and released to another worker.
    pub shutdown_grace: Duration,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScan {
    lock_timeout: Option<String>,
    batch_rows: Option<i32>,
    progress_interval: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUploader {
    lease: Option<String>,
    max_attempts: Option<i32>,
    slots: Option<usize>,
    poll_interval: Option<String>,
    lock_timeout: Option<String>,
    shutdown_grace: Option<String>,
}

impl ScanSettings {
    pub(super) fn from_raw(s: &RawScan) -> Result<ScanSettings, UsageError> {
        Ok(ScanSettings {
            lock_timeout: duration("scan.lock_timeout", &s.lock_timeout, Duration::from_secs(5))?,
            batch_rows: match s.batch_rows {
                Some(n) if n < 1 => return Err(usage("scan.batch_rows: must be at least 1")),
                Some(n) => n,
                None => 2000,
            },
            progress_interval: duration(
                "scan.progress_interval",
                &s.progress_interval,
                Duration::from_secs(10),
            )?,
        })
    }
}

impl UploaderSettings {
    pub(super) fn from_raw(u: &RawUploader) -> Result<UploaderSettings, UsageError> {
        let uploader = UploaderSettings {
            lease: duration("uploader.lease", &u.lease, Duration::from_secs(60))?,
            max_attempts: match u.max_attempts {
                Some(n) if n < 1 => return Err(usage("uploader.max_attempts: must be at least 1")),
                Some(n) => n,
                None => 5,
            },
            slots: match u.slots {
                Some(0) => return Err(usage("uploader.slots: must be at least 1")),
                Some(n) => n,
                None => 2,
            },
            poll_interval: duration(
                "uploader.poll_interval",
                &u.poll_interval,
                Duration::from_secs(5),
            )?,
            lock_timeout: duration(
                "uploader.lock_timeout",
                &u.lock_timeout,
                Duration::from_secs(5),
            )?,
            shutdown_grace: duration(
                "uploader.shutdown_grace",
                &u.shutdown_grace,
                Duration::from_secs(30),
            )?,
        };
        if uploader.lease < Duration::from_secs(1) {
            return Err(usage(
                "uploader.lease: must be at least 1s (it is renewed every third of it)",
            ));
        }
        if uploader.poll_interval.is_zero() {
            return Err(usage("uploader.poll_interval: must be more than zero"));
        }
        if uploader.lock_timeout.is_zero() {
            return Err(usage(
                "uploader.lock_timeout: must be more than zero (0 would wait for locks forever)",
            ));
        }
        Ok(uploader)
    }
}
