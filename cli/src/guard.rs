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
use rewind_common::guard::check_layout;
pub use rewind_common::guard::{
    DEFAULT_DAY_LAYOUT, DayState, Dependent, Guard, GuardState, Step, backup_key,
};
use serde::Deserialize;

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
            kind @ ("azure" | "s3" | "gcs" | "local") => {
                let scheme = match kind {
                    "azure" => Some("az://"),
                    "s3" => Some("s3://"),
                    "gcs" => Some("gs://"),
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
                    Some(_) => prefix.to_string(),
                    // A directory as an absolute path: a coordinator's processes run elsewhere.
                    None => crate::absolute_location(prefix),
                };
                let loc = Location::parse("--guard", &url, &org)
                    .map_err(|e| format!("{at}.prefix: {}", e.message))?;
                let (root, prefix) = match loc.key_prefix() {
                    Some(prefix) => (loc.with_prefix(String::new()), prefix.to_string()),
                    None => (loc.clone(), String::new()),
                };
                let layout = s
                    .layout
                    .clone()
                    .unwrap_or_else(|| DEFAULT_DAY_LAYOUT.into());
                check_layout(&layout, &prefix, &at)?;
                Dependent::Store {
                    name: loc.to_string(),
                    root,
                    prefix,
                    layout,
                }
            }
            other => {
                return Err(format!(
                    "{at}.type {other:?}: expected azure, s3, gcs, local or druid"
                ));
            }
        };
        sources.push(dep);
    }
    let guard = Guard {
        stream: stream.to_string(),
        topic: topic.to_string(),
        sources,
    };
    guard.check().map_err(|e| format!("{file}: {e}"))?;
    Ok(guard)
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
        // A GCS sink, by URL and as a bare prefix below its --guard-base.
        let gcs = r#"{"s": {"outputKafkaTopic": "t", "dependentSinkSources": [
            {"type": "gcs", "prefix": "gs://lake/unique"}, {"type": "gcs", "prefix": "raw"}]}}"#;
        let base = BTreeMap::from([("gcs".to_string(), "gs://sinks".to_string())]);
        let g = load(gcs, "g.json", "s", &base).unwrap();
        assert!(
            matches!(&g.sources[0], Dependent::Store { name, .. } if name == "gs://lake/unique")
        );
        assert!(matches!(&g.sources[1], Dependent::Store { name, .. } if name == "gs://sinks/raw"));
        assert_eq!(
            g.sources[1].day_prefix("2024-04-01").unwrap(),
            "raw/2024-04-01/"
        );
        let wrong = r#"{"s": {"outputKafkaTopic": "t", "dependentSinkSources": [{"type": "gcs", "prefix": "s3://b/p"}]}}"#;
        let e = load(wrong, "g.json", "s", &base).unwrap_err();
        assert!(e.contains("a gcs source is gs://"), "{e}");
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
