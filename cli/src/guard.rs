//! Guard configs: per stream, the topic a replay refills and the sinks downstream of it that a
//! guarded replay backs up and clears before each day and restores if the day fails. The format
//! is the one teams already write (JSON or YAML):
//!
//! ```json
//! {"ingest": {"outputKafkaTopic": "telemetry.raw",
//!             "dependentSinkSources": [{"type": "azure", "prefix": "raw"},
//!                                      {"type": "s3", "prefix": "s3://lake/unique"},
//!                                      {"type": "druid", "prefix": "telemetry-events"}]}}
//! ```
//!
//! A store source's `prefix` is a location (`s3://…`, `az://…`, a directory) or a bare prefix
//! resolved against `--guard-base TYPE=URL`; its `layout` (default `{prefix}/{YYYY}-{MM}-{DD}/`)
//! says where one day of it lives. A Druid source's `prefix` is the datasource.

use std::collections::BTreeMap;

use rewind_common::Location;
use serde::{Deserialize, Serialize};

pub const DEFAULT_DAY_LAYOUT: &str = "{prefix}/{YYYY}-{MM}-{DD}/";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StreamConfig {
    output_kafka_topic: String,
    #[serde(default)]
    dependent_sink_sources: Vec<SourceConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceConfig {
    #[serde(rename = "type")]
    kind: String,
    prefix: String,
    #[serde(default)]
    layout: Option<String>,
}

/// One stream's guard, validated.
#[derive(Debug, Clone)]
pub struct Guard {
    pub stream: String,
    pub topic: String,
    pub sources: Vec<Dependent>,
}

/// A sink downstream of the topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dependent {
    /// Files in a store: `root` is the store, `prefix` the source's part of it (may be empty),
    /// `layout` where a day of it lives below the root.
    Store {
        name: String,
        root: Location,
        prefix: String,
        layout: String,
    },
    /// A Druid datasource: its segments of a day are marked unused, then killed or marked used.
    Druid { name: String, datasource: String },
}

impl Dependent {
    /// Where day `date` (`YYYY-MM-DD`) of a store source lives below its root, ending in `/`.
    pub fn day_prefix(&self, date: &str) -> Option<String> {
        let Dependent::Store { prefix, layout, .. } = self else {
            return None;
        };
        Some(render(layout, prefix, date))
    }
}

fn render(layout: &str, prefix: &str, date: &str) -> String {
    let (y, rest) = date.split_at(4);
    let (m, d) = (&rest[1..3], &rest[4..6]);
    let mut out = layout
        .replace("{prefix}", prefix.trim_end_matches('/'))
        .replace("{YYYY}", y)
        .replace("{MM}", m)
        .replace("{DD}", d);
    while out.starts_with('/') {
        out.remove(0);
    }
    while out.contains("//") {
        out = out.replace("//", "/");
    }
    if !out.ends_with('/') {
        out.push('/');
    }
    out
}

/// Parses a guard file's text and picks `stream`. `bases` resolves bare prefixes by type
/// (`azure` -> `az://container`, `s3` -> `s3://bucket`). Every problem names the stream, the
/// entry and the field.
pub fn load(
    text: &str,
    file: &str,
    stream: &str,
    bases: &BTreeMap<String, String>,
) -> Result<Guard, String> {
    let all: BTreeMap<String, StreamConfig> = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(json) => serde_yaml_ng::from_str(text)
            .map_err(|yaml| format!("{file}: neither JSON ({json}) nor YAML ({yaml})"))?,
    };
    let known = all.keys().cloned().collect::<Vec<_>>().join(", ");
    let cfg = all
        .get(stream)
        .ok_or_else(|| format!("--stream {stream}: not in {file} (it has: {known})"))?;
    let topic = cfg.output_kafka_topic.trim();
    if topic.is_empty() {
        return Err(format!("{file}: {stream}.outputKafkaTopic is empty"));
    }
    let org = rewind_common::OrgId::parse("guard").map_err(|e| e.to_string())?;
    let mut sources = Vec::new();
    for (i, s) in cfg.dependent_sink_sources.iter().enumerate() {
        let at = format!("{file}: {stream}.dependentSinkSources[{i}]");
        let prefix = s.prefix.trim();
        if prefix.is_empty() {
            return Err(format!("{at}.prefix is empty"));
        }
        let dep = match s.kind.as_str() {
            "druid" => {
                if s.layout.is_some() {
                    return Err(format!("{at}.layout: a Druid source has no layout"));
                }
                Dependent::Druid {
                    name: format!("druid:{prefix}"),
                    datasource: prefix.to_string(),
                }
            }
            kind @ ("azure" | "s3" | "local") => {
                let scheme = match kind {
                    "azure" => Some("az://"),
                    "s3" => Some("s3://"),
                    _ => None,
                };
                let url = match scheme {
                    Some(sc) if !prefix.starts_with(sc) => {
                        if prefix.contains("://") {
                            return Err(format!(
                                "{at}.prefix {prefix:?}: a {kind} source is {sc}…"
                            ));
                        }
                        let base = bases.get(kind).ok_or_else(|| {
                            format!(
                                "{at}.prefix {prefix:?} is not a {sc} URL: give one, or \
                                 --guard-base {kind}={sc}…"
                            )
                        })?;
                        format!("{}/{prefix}", base.trim_end_matches('/'))
                    }
                    _ => prefix.to_string(),
                };
                let loc = Location::parse("--guard", &url, &org)
                    .map_err(|e| format!("{at}.prefix: {}", e.message))?;
                let (root, prefix) = match &loc {
                    Location::S3 { bucket, prefix } => (
                        Location::S3 {
                            bucket: bucket.clone(),
                            prefix: String::new(),
                        },
                        prefix.clone(),
                    ),
                    Location::Azure { container, prefix } => (
                        Location::Azure {
                            container: container.clone(),
                            prefix: String::new(),
                        },
                        prefix.clone(),
                    ),
                    Location::Local(_) => (loc.clone(), String::new()),
                };
                let layout = s
                    .layout
                    .clone()
                    .unwrap_or_else(|| DEFAULT_DAY_LAYOUT.into());
                for needed in ["{YYYY}", "{MM}", "{DD}"] {
                    if !layout.contains(needed) {
                        return Err(format!(
                            "{at}.layout {layout:?} must contain {{YYYY}}, {{MM}} and {{DD}}"
                        ));
                    }
                }
                let sample = render(&layout, &prefix, "2024-01-01");
                if sample.split('/').any(|seg| seg == ".." || seg == ".")
                    || sample.starts_with("_rewind")
                    || sample.contains("/_rewind/")
                {
                    return Err(format!("{at}.layout {layout:?} leaves the source"));
                }
                Dependent::Store {
                    name: loc.to_string(),
                    root,
                    prefix,
                    layout,
                }
            }
            other => {
                return Err(format!(
                    "{at}.type {other:?}: expected azure, s3, local or druid"
                ));
            }
        };
        sources.push(dep);
    }
    Ok(Guard {
        stream: stream.to_string(),
        topic: topic.to_string(),
        sources,
    })
}

/// Where a guarded replay is, day by day: written to the state store after every step, so a
/// process killed at any moment resumes each day where it was (`--resume JOB`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardState {
    pub job: String,
    pub stream: String,
    pub topic: String,
    pub days: Vec<DayState>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Nothing done yet.
    #[default]
    Pending,
    /// What each source holds for the day is listed (the backup's contents).
    Planned,
    /// Every listed object moved to the backup; segments marked unused.
    Cleared,
    /// The replay ran; `ok` says whether it delivered the whole day.
    Replayed,
    /// Succeeded: backups deleted (or kept), segments killed.
    Finalized,
    /// Failed: every object back in place, segments used again.
    Restored,
    /// Failed, and the restore failed too: the backup stays where `error` says.
    RestoreFailed,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayState {
    pub day: String,
    pub step: Step,
    /// Per source (by name): the objects of the day (keys below the source's root, sizes), or
    /// the segment ids.
    #[serde(default)]
    pub objects: BTreeMap<String, Vec<(String, u64)>>,
    #[serde(default)]
    pub segments: BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_job: Option<String>,
    #[serde(default)]
    pub ok: bool,
    #[serde(default)]
    pub events: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub started_ms: i64,
    #[serde(default)]
    pub finished_ms: i64,
}

/// The backup key of `key` (below the source's root) for job `job` and day `day`.
pub fn backup_key(prefix: &str, job: &str, day: &str, key: &str) -> String {
    let p = prefix.trim_end_matches('/');
    let base = if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    };
    format!("{base}_rewind/backup/{job}/{day}/{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"{"ingest": {"outputKafkaTopic": "telemetry.raw", "dependentSinkSources": [
        {"type": "azure", "prefix": "raw"},
        {"type": "s3", "prefix": "s3://lake/unique", "layout": "{prefix}/dt={YYYY}-{MM}-{DD}"},
        {"type": "druid", "prefix": "telemetry-events"}]},
        "failed": {"outputKafkaTopic": "telemetry.raw", "dependentSinkSources": []}}"#;

    fn bases() -> BTreeMap<String, String> {
        BTreeMap::from([("azure".to_string(), "az://sinks".to_string())])
    }

    #[test]
    fn streams_resolve_their_sources_and_day_prefixes() {
        let g = load(CFG, "guard.json", "ingest", &bases()).unwrap();
        assert_eq!(g.topic, "telemetry.raw");
        assert_eq!(g.sources.len(), 3);
        assert!(matches!(&g.sources[0], Dependent::Store { name, .. } if name == "az://sinks/raw"));
        assert_eq!(
            g.sources[0].day_prefix("2024-04-01").unwrap(),
            "raw/2024-04-01/"
        );
        assert_eq!(
            g.sources[1].day_prefix("2024-04-01").unwrap(),
            "unique/dt=2024-04-01/"
        );
        assert_eq!(g.sources[2].day_prefix("2024-04-01"), None);
        assert_eq!(
            backup_key("raw/", "j1", "2024-04-01", "raw/2024-04-01/a.json"),
            "raw/_rewind/backup/j1/2024-04-01/raw/2024-04-01/a.json"
        );
        let yaml = "ingest:\n  outputKafkaTopic: t\n  dependentSinkSources:\n    - type: local\n      prefix: /data/raw\n";
        let g = load(yaml, "g.yaml", "ingest", &BTreeMap::new()).unwrap();
        assert_eq!(
            g.sources[0].day_prefix("2024-04-01").unwrap(),
            "2024-04-01/"
        );
    }

    #[test]
    fn bad_entries_are_named() {
        let cases = [
            (CFG, "nope", "--stream nope"),
            (CFG, "ingest", "--guard-base azure"), // no base for the bare azure prefix
            (
                r#"{"s": {"outputKafkaTopic": "t", "dependentSinkSources": [{"type": "ftp", "prefix": "x"}]}}"#,
                "s",
                "s.dependentSinkSources[0].type",
            ),
            (
                r#"{"s": {"outputKafkaTopic": "t", "dependentSinkSources": [{"type": "s3", "prefix": "s3://bkt/p", "layout": "{YYYY}/{MM}"}]}}"#,
                "s",
                "[0].layout",
            ),
            (
                r#"{"s": {"outputKafkaTopic": "t", "dependentSinkSources": [{"type": "s3", "prefix": "az://c/p"}]}}"#,
                "s",
                "[0].prefix",
            ),
            (
                r#"{"s": {"outputKafkaTopic": "t", "extra": 1}}"#,
                "s",
                "extra",
            ),
            (
                r#"{"s": {"outputKafkaTopic": ""}}"#,
                "s",
                "outputKafkaTopic",
            ),
        ];
        for (text, stream, named) in cases {
            let e = load(text, "g.json", stream, &BTreeMap::new()).unwrap_err();
            assert!(e.contains(named), "{named}: {e}");
        }
    }
}
