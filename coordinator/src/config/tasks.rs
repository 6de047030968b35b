//! `[[tasks]]`: each task's name, kind and timing, and its kind's fields. The kind's
//! spec checks its own fields (`snapshot_runner::TaskSpec::from_fields`); this module
//! says where a field at fault is (`tasks[2].key`) and which task it belongs to.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use snapshot_runner::ident::QualifiedName;
use snapshot_runner::{FieldProblem, TaskFields, TaskSpec};

use super::daemon::schedule_of;
use super::{usage, valid_name};
use crate::schedule::Schedule;
use crate::units::parse_duration;
use crate::UsageError;

/// One task.
#[derive(Debug, Clone)]
pub struct TaskConfig {
    /// Unique name; also the data file name.
    pub name: String,
    /// What it does.
    pub spec: TaskSpec,
    /// Stop cleanly with partial results after this long.
    pub soft_timeout: Option<Duration>,
    /// `tasks[].replica`: the only replica this task runs on.
    pub replica: Option<String>,
    /// When `pgmaint daemon` runs it (`every` or `at`); `None`: only by hand.
    pub schedule: Option<Schedule>,
}

/// A `[[tasks]]` entry as written. The kind-specific fields are those of
/// [`TaskFields`] (documented there); they are repeated here because serde refuses
/// unknown fields only of a struct that declares every field itself.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTask {
    name: Option<String>,
    kind: Option<String>,
    soft_timeout: Option<String>,
    every: Option<String>,
    at: Option<String>,
    replica: Option<String>,
    table: Option<String>,
    key: Option<String>,
    content: Option<String>,
    checksum: Option<String>,
    parallelism: Option<usize>,
    path: Option<String>,
    size: Option<String>,
    root: Option<PathBuf>,
    age_in_days: Option<u32>,
    ingested_at: Option<String>,
    files_per_run: Option<u64>,
    query: Option<String>,
    target: Option<String>,
    merge_key: Option<Vec<String>>,
    tables: Option<Vec<String>>,
    heapallindexed: Option<bool>,
    max_findings: Option<u64>,
}

impl RawTask {
    fn fields(&self) -> TaskFields {
        TaskFields {
            table: self.table.clone(),
            key: self.key.clone(),
            content: self.content.clone(),
            checksum: self.checksum.clone(),
            parallelism: self.parallelism,
            path: self.path.clone(),
            size: self.size.clone(),
            root: self.root.clone(),
            age_in_days: self.age_in_days,
            ingested_at: self.ingested_at.clone(),
            files_per_run: self.files_per_run,
            query: self.query.clone(),
            target: self.target.clone(),
            merge_key: self.merge_key.clone(),
            tables: self.tables.clone(),
            heapallindexed: self.heapallindexed,
            max_findings: self.max_findings,
        }
    }
}

/// Every task, in config order: names unique, swap targets not shared.
pub(super) fn parse_tasks(
    raw: &[RawTask],
    tz: chrono_tz::Tz,
) -> Result<Vec<TaskConfig>, UsageError> {
    let mut tasks: Vec<TaskConfig> = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        let task = parse_task(i, t, tz)?;
        if tasks.iter().any(|x| x.name == task.name) {
            return Err(usage(format!(
                "tasks[{i}].name: duplicate task name {:?}",
                task.name
            )));
        }
        tasks.push(task);
    }
    check_shared_targets(&tasks)?;
    Ok(tasks)
}

fn parse_task(i: usize, t: &RawTask, tz: chrono_tz::Tz) -> Result<TaskConfig, UsageError> {
    let at = |f: &str| format!("tasks[{i}].{f}");
    let name = t
        .name
        .clone()
        .ok_or_else(|| usage(format!("{}: missing", at("name"))))?;
    if !valid_name(&name) {
        return Err(usage(format!(
            "{}: {name:?} is not a valid task name (1-63 letters, digits, - _ .; it names the data file)",
            at("name")
        )));
    }
    let kind = t
        .kind
        .clone()
        .ok_or_else(|| usage(format!("{}: missing (task {name:?})", at("kind"))))?;
    let spec = TaskSpec::from_fields(&kind, &t.fields())
        .map_err(|e| usage(field_message(&at(e.field), &name, &kind, &e.problem)))?;
    let duration = |field: &str, v: &Option<String>| {
        v.as_ref()
            .map(|s| parse_duration(s).map_err(|e| usage(format!("{}: {e}", at(field)))))
            .transpose()
    };
    Ok(TaskConfig {
        soft_timeout: duration("soft_timeout", &t.soft_timeout)?,
        schedule: schedule_of(&format!("tasks[{i}]"), &t.every, &t.at, tz)?,
        replica: t.replica.clone(),
        name,
        spec,
    })
}

/// The message of a field error, at `at` (`tasks[2].key`) of task `name` of kind
/// `kind`. A missing field or a conflict names the task; a bad value speaks for itself.
fn field_message(at: &str, name: &str, kind: &str, problem: &FieldProblem) -> String {
    match problem {
        FieldProblem::Missing { or: None } => format!("{at}: missing (task {name:?}, kind {kind})"),
        FieldProblem::Missing { or: Some(or) } => {
            format!("{at}: missing, or {or} (task {name:?}, kind {kind})")
        }
        FieldProblem::Invalid(why) => format!("{at}: {why}"),
        FieldProblem::Conflict(why) => format!("{at}: {why} (task {name:?})"),
        FieldProblem::UnknownKind { kind, known } => format!(
            "{at}: unknown kind {kind:?} (task {name:?}; known kinds: {})",
            known.join(", ")
        ),
        FieldProblem::NotOfKind { kind, fields } => format!(
            "{at}: not a field of kind {kind} (task {name:?}; its fields: {})",
            fields.join(", ")
        ),
    }
}

/// A swap replaces the whole target, so it must be the only task writing it: another
/// task's rows would be wiped by every swap, and the older-snapshot check of a swap
/// would hold back on that task's newer snapshots. Several merges may share a target
/// (each task's rows are its own). Names are compared as the catalog spells them
/// (`t`, `public.t` and `"public"."t"` are one table); a name that does not parse is
/// reported when the task runs.
fn check_shared_targets(tasks: &[TaskConfig]) -> Result<(), UsageError> {
    let writes = |t: &TaskConfig| match &t.spec {
        TaskSpec::Materialize(m) => QualifiedName::parse(&m.target).ok().map(|target| {
            (
                target,
                if m.merge_key.is_some() {
                    "merge"
                } else {
                    "swap"
                },
            )
        }),
        _ => None,
    };
    for (i, task) in tasks.iter().enumerate() {
        let Some((target, kind)) = writes(task) else {
            continue;
        };
        for earlier in &tasks[..i] {
            match writes(earlier) {
                Some((t, k)) if t == target && (k == "swap" || kind == "swap") => {
                    return Err(usage(format!(
                        "tasks[{i}].target: {target} is written by task {:?} ({k}) and task {:?} ({kind}); a swap \
                         replaces the whole table, so only merges (merge_key) may share a target",
                        earlier.name, task.name
                    )))
                }
                _ => {}
            }
        }
    }
    Ok(())
}
