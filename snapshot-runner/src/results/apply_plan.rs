//! How a task's data file is applied on the primary: the `apply_kind` and `params` of
//! its row in `pgmaint.upload_tasks`. A scan says what its file is for
//! ([`crate::TaskReport::apply`]); the coordinator queues that as it is
//! ([`ApplyPlan::kind`], [`ApplyPlan::params`]); the uploader reads the queued row back
//! into a plan ([`ApplyPlan::from_queued`]) and applies it.
//!
//! The JSON in `params` outlives a version of pgmaint: tasks queued by an earlier
//! version must still apply after an upgrade. The tests below pin its shapes.

use serde::{Deserialize, Serialize};

use crate::ident::QualifiedName;

/// How an upload is applied on the primary: the `apply_kind` column of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyKind {
    /// Insert findings into `pgmaint.integrity_findings` (and re-check them).
    Findings,
    /// Replace a table by a staged copy.
    Swap,
    /// Upsert rows into a table by key.
    Merge,
}

impl ApplyKind {
    /// The name stored in the queue.
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyKind::Findings => "findings",
            ApplyKind::Swap => "swap",
            ApplyKind::Merge => "merge",
        }
    }
    /// The kind called `s`, if this version knows it.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "findings" => Some(ApplyKind::Findings),
            "swap" => Some(ApplyKind::Swap),
            "merge" => Some(ApplyKind::Merge),
            _ => None,
        }
    }
}

/// How a task's data file is to be applied on the primary, with what each way needs.
#[derive(Debug, Clone, PartialEq)]
pub enum ApplyPlan {
    /// A findings file: its rows go into `pgmaint.integrity_findings`.
    Findings(FindingsPlan),
    /// A query's result that replaces a table.
    Swap(SwapPlan),
    /// A query's result merged into a table by key.
    Merge(MergePlan),
}

/// Which check found the findings, and what it knows about them. Queued as
/// `{"check": "<kind>", …}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "check", rename_all = "snake_case")]
pub enum FindingsPlan {
    /// `row_checksum`: each finding names a row the uploader re-checks on the primary.
    RowChecksum(RowRecheck),
    /// `file_checksum`: findings about files under `root`.
    FileChecksum(FileChecksumFindings),
    /// `amcheck`: storage corruption findings.
    Amcheck(AmcheckFindings),
    /// Params this version does not recognise: an unknown check, or a queued row that
    /// lacks fields (written by hand, or by another version). Its findings are applied
    /// without a re-check, as any findings whose check is not `row_checksum`.
    #[serde(untagged)]
    Unrecognized(serde_json::Value),
}

/// What the uploader needs to re-check `row_checksum` findings on the primary, by key,
/// with the scan's computation. Names are catalog names (unquoted), not SQL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowRecheck {
    /// The relation as the findings file names it (`public.blobs`).
    pub relation: String,
    /// Schema of the table.
    pub schema: String,
    /// The table.
    pub table: String,
    /// Key column.
    pub key: String,
    /// Content column.
    pub content: String,
    /// Stored checksum column.
    pub checksum: String,
}

impl RowRecheck {
    /// SQL giving the stored checksum column `column` (already quoted) as lower-case
    /// hex text, for a column of type `type_name` in category `category` (from
    /// `pg_type`): hex text, 16-byte bytea or uuid; `None` for any other type. The
    /// scan and the re-check read a stored checksum through this, so that they agree.
    pub fn stored_md5_sql(column: &str, type_name: &str, category: &str) -> Option<String> {
        match (type_name, category) {
            ("bytea", _) => Some(format!("encode({column}, 'hex')")),
            ("uuid", _) => Some(format!("replace({column}::text, '-', '')")),
            (_, "S") => Some(format!("lower({column}::text)")),
            _ => None,
        }
    }
}

/// What a `file_checksum` scan records about its findings. For operators: the
/// uploader does not re-check files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChecksumFindings {
    /// The catalog table as the findings file names it.
    pub relation: String,
    /// Schema of the catalog table.
    pub schema: String,
    /// The catalog table.
    pub table: String,
    /// The canonical root directory the paths are relative to.
    pub root: String,
}

/// What an `amcheck` scan records about its findings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmcheckFindings {
    /// Whether the heap was checked against the indexes too.
    pub heapallindexed: bool,
}

impl FindingsPlan {
    /// How to re-check the findings on the primary, for `row_checksum` findings.
    pub fn recheck(&self) -> Option<&RowRecheck> {
        match self {
            FindingsPlan::RowChecksum(r) => Some(r),
            _ => None,
        }
    }

    fn from_params(params: &serde_json::Value) -> Self {
        // The untagged fallback takes whatever the tagged variants do not.
        serde_json::from_value(params.clone())
            .unwrap_or_else(|_| FindingsPlan::Unrecognized(params.clone()))
    }
}

/// `swap`: replace `target` by the file's rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SwapPlan {
    /// The table replaced.
    pub target: TargetTable,
}

/// `merge`: upsert the file's rows into `target`, matching rows on `key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MergePlan {
    /// The table merged into.
    pub target: TargetTable,
    /// Key columns: catalog names, as in the result file's header; never empty.
    pub key: Vec<String>,
}

/// The table a swap or merge writes, named as in config (SQL syntax: `public.t`,
/// `"Sales"."Totals"`). Queued as written; parsed when the plan is made or read back,
/// so a plan never holds a name that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetTable {
    written: String,
    name: QualifiedName,
}

impl TargetTable {
    /// Parse a table name in SQL syntax.
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(TargetTable {
            name: QualifiedName::parse(text)?,
            written: text.to_string(),
        })
    }

    /// The table, as the catalog spells it.
    pub fn name(&self) -> &QualifiedName {
        &self.name
    }

    /// The name as config wrote it.
    pub fn as_written(&self) -> &str {
        &self.written
    }
}

impl Serialize for TargetTable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.written)
    }
}

/// A queued row that does not make an [`ApplyPlan`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// `apply_kind` names a kind this version does not know.
    #[error("unknown apply kind {0:?}")]
    UnknownKind(String),
    /// `params` lack what the kind needs, or hold it in the wrong shape.
    #[error("{0}")]
    Params(String),
}

impl ApplyPlan {
    /// The queue's `apply_kind` of this plan.
    pub fn kind(&self) -> ApplyKind {
        match self {
            ApplyPlan::Findings(_) => ApplyKind::Findings,
            ApplyPlan::Swap(_) => ApplyKind::Swap,
            ApplyPlan::Merge(_) => ApplyKind::Merge,
        }
    }

    /// The queue's `params` of this plan: the one place a plan becomes JSON.
    pub fn params(&self) -> serde_json::Value {
        let value = match self {
            ApplyPlan::Findings(p) => serde_json::to_value(p),
            ApplyPlan::Swap(p) => serde_json::to_value(p),
            ApplyPlan::Merge(p) => serde_json::to_value(p),
        };
        value.expect("an apply plan is plain JSON")
    }

    /// Read a queued row (`apply_kind`, `params`) back into a plan: the one place
    /// queued JSON becomes a plan.
    pub fn from_queued(kind: &str, params: &serde_json::Value) -> Result<Self, PlanError> {
        let kind = ApplyKind::parse(kind).ok_or_else(|| PlanError::UnknownKind(kind.into()))?;
        Ok(match kind {
            ApplyKind::Findings => ApplyPlan::Findings(FindingsPlan::from_params(params)),
            ApplyKind::Swap => ApplyPlan::Swap(SwapPlan {
                target: queued_target(kind, params)?,
            }),
            ApplyKind::Merge => ApplyPlan::Merge(MergePlan {
                target: queued_target(kind, params)?,
                key: queued_key(params)?,
            }),
        })
    }
}

/// `params.target` of a swap or merge.
fn queued_target(kind: ApplyKind, params: &serde_json::Value) -> Result<TargetTable, PlanError> {
    let text = params
        .get("target")
        .and_then(|v| v.as_str())
        .ok_or_else(|| {
            PlanError::Params(format!("{} task without params.target", kind.as_str()))
        })?;
    TargetTable::parse(text).map_err(|e| PlanError::Params(format!("params.target: {e}")))
}

/// `params.key` of a merge: a non-empty list of column names.
fn queued_key(params: &serde_json::Value) -> Result<Vec<String>, PlanError> {
    params
        .get("key")
        .and_then(|v| v.as_array())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            PlanError::Params("merge task without params.key (a list of key columns)".into())
        })?
        .iter()
        .map(|k| {
            k.as_str()
                .map(str::to_string)
                .ok_or_else(|| PlanError::Params("params.key: not a list of column names".into()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target(text: &str) -> TargetTable {
        TargetTable::parse(text).unwrap()
    }

    /// The plans the scans make, and the JSON queued for them by the version before
    /// the plan was typed (built with `json!` in each scan). Both directions must hold.
    fn queued_shapes() -> Vec<(ApplyPlan, &'static str, serde_json::Value)> {
        vec![
            (
                ApplyPlan::Findings(FindingsPlan::RowChecksum(RowRecheck {
                    relation: "public.blobs".into(),
                    schema: "public".into(),
                    table: "blobs".into(),
                    key: "id".into(),
                    content: "payload".into(),
                    checksum: "payload_md5".into(),
                })),
                "findings",
                json!({
                    "relation": "public.blobs",
                    "check": "row_checksum",
                    "schema": "public",
                    "table": "blobs",
                    "key": "id",
                    "content": "payload",
                    "checksum": "payload_md5",
                }),
            ),
            (
                ApplyPlan::Findings(FindingsPlan::FileChecksum(FileChecksumFindings {
                    relation: "\"Store\".files".into(),
                    schema: "Store".into(),
                    table: "files".into(),
                    root: "/srv/store".into(),
                })),
                "findings",
                json!({
                    "relation": "\"Store\".files",
                    "check": "file_checksum",
                    "schema": "Store",
                    "table": "files",
                    "root": "/srv/store",
                }),
            ),
            (
                ApplyPlan::Findings(FindingsPlan::Amcheck(AmcheckFindings {
                    heapallindexed: true,
                })),
                "findings",
                json!({ "check": "amcheck", "heapallindexed": true }),
            ),
            (
                ApplyPlan::Swap(SwapPlan {
                    target: target("\"Totals\""),
                }),
                "swap",
                json!({ "target": "\"Totals\"" }),
            ),
            (
                ApplyPlan::Merge(MergePlan {
                    target: target("public.sales"),
                    key: vec!["Day".into(), "region".into()],
                }),
                "merge",
                json!({ "target": "public.sales", "key": ["Day", "region"] }),
            ),
        ]
    }

    #[test]
    fn plans_are_queued_as_the_previous_version_queued_them() {
        for (plan, kind, json) in queued_shapes() {
            assert_eq!(plan.kind().as_str(), kind);
            assert_eq!(plan.params(), json, "{kind}");
            // The same text too (keys in the same order), not merely equal values.
            assert_eq!(plan.params().to_string(), json.to_string(), "{kind}");
        }
    }

    #[test]
    fn tasks_queued_by_the_previous_version_read_back_into_the_same_plans() {
        for (plan, kind, json) in queued_shapes() {
            assert_eq!(ApplyPlan::from_queued(kind, &json), Ok(plan));
        }
    }

    #[test]
    fn findings_params_of_another_shape_apply_without_a_recheck() {
        for params in [
            json!({ "relation": "files", "check": "file_checksum" }),
            json!({ "relation": "public.blobs", "check": "row_checksum", "key": "id" }),
            json!({ "check": "vacuum_stats" }),
            json!({}),
        ] {
            let plan = ApplyPlan::from_queued("findings", &params).unwrap();
            assert_eq!(
                plan,
                ApplyPlan::Findings(FindingsPlan::Unrecognized(params.clone()))
            );
            assert_eq!(plan.params(), params, "kept as queued");
        }
    }

    #[test]
    fn a_swap_or_merge_without_what_it_needs_is_refused_naming_the_param() {
        let err = |kind: &str, params: serde_json::Value| {
            ApplyPlan::from_queued(kind, &params)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("truncate", json!({})),
            "unknown apply kind \"truncate\""
        );
        assert_eq!(err("swap", json!({})), "swap task without params.target");
        assert_eq!(
            err("merge", json!({ "target": 1, "key": ["id"] })),
            "merge task without params.target"
        );
        assert!(err("swap", json!({ "target": "a.b.c" })).starts_with("params.target: "));
        assert_eq!(
            err("merge", json!({ "target": "t", "key": [] })),
            "merge task without params.key (a list of key columns)"
        );
        assert_eq!(
            err("merge", json!({ "target": "t", "key": ["id", 2] })),
            "params.key: not a list of column names"
        );
    }

    #[test]
    fn apply_kinds_round_trip() {
        for k in [ApplyKind::Findings, ApplyKind::Swap, ApplyKind::Merge] {
            assert_eq!(ApplyKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(ApplyKind::parse("truncate"), None);
    }
}
