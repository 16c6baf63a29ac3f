//! Guarded replays: the types both modes share. A [`Guard`] is one stream's topic and the sinks
//! downstream of it ([`Dependent`]), which a guarded replay backs up and clears before each day
//! and restores if the day fails; [`GuardState`] is where such a replay is, day by day (written
//! after every step, so a process killed at any moment resumes each day where it was);
//! [`GuardRequest`] is what a client sends a coordinator (`rewind replay --guard
//! --coordinator`): the guard already resolved, and every credential by reference only.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Location, RequestError};

/// Where a day of a store source lives unless its entry says otherwise.
pub const DEFAULT_DAY_LAYOUT: &str = "{prefix}/{YYYY}-{MM}-{DD}/";

/// One stream's guard, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

    /// The source's name: its location, or `druid:DATASOURCE`.
    pub fn name(&self) -> &str {
        match self {
            Dependent::Store { name, .. } | Dependent::Druid { name, .. } => name,
        }
    }

    /// Where a store source's files are (its root and prefix).
    pub fn location(&self) -> Option<Location> {
        let Dependent::Store { root, prefix, .. } = self else {
            return None;
        };
        Some(if prefix.is_empty() {
            root.clone()
        } else {
            root.join(prefix)
        })
    }
}

/// Renders a day layout for `date` (`YYYY-MM-DD`): a key prefix below the source's root,
/// ending in `/`, without leading or doubled slashes.
pub fn render(layout: &str, prefix: &str, date: &str) -> String {
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

/// Whether a store source's day layout is usable: it names the day, and stays inside the source
/// (no `..`, never into Rewind's own `_rewind/`). `at` names the entry in the error.
pub fn check_layout(layout: &str, prefix: &str, at: &str) -> Result<(), String> {
    for needed in ["{YYYY}", "{MM}", "{DD}"] {
        if !layout.contains(needed) {
            return Err(format!(
                "{at}.layout {layout:?} must contain {{YYYY}}, {{MM}} and {{DD}}"
            ));
        }
    }
    let sample = render(layout, prefix, "2024-01-01");
    if sample.split('/').any(|seg| seg == ".." || seg == ".")
        || sample.starts_with("_rewind")
        || sample.contains("/_rewind/")
    {
        return Err(format!("{at}.layout {layout:?} leaves the source"));
    }
    Ok(())
}

impl Guard {
    /// Checks a guard that came over the wire as strictly as one read from a file: a topic,
    /// unique and usable sources.
    pub fn check(&self) -> Result<(), String> {
        if self.topic.trim().is_empty() {
            return Err(format!("{}.outputKafkaTopic is empty", self.stream));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let at = format!("{}.dependentSinkSources[{i}]", self.stream);
            match s {
                Dependent::Store {
                    name,
                    root,
                    prefix,
                    layout,
                } => {
                    let org = crate::OrgId::parse("guard").map_err(|e| e.to_string())?;
                    let whole = Location::parse("--guard", name, &org)
                        .map_err(|e| format!("{at}.prefix: {}", e.message))?;
                    let root_only = match root {
                        Location::Local(_) => prefix.is_empty(),
                        Location::S3 { prefix: p, .. }
                        | Location::Azure { prefix: p, .. }
                        | Location::Gcs { prefix: p, .. } => p.is_empty(),
                    };
                    if !root_only || s.location().as_ref() != Some(&whole) {
                        return Err(format!("{at}: its root and prefix do not make {name}"));
                    }
                    check_layout(layout, prefix, &at)?;
                }
                Dependent::Druid { datasource, .. } => {
                    if datasource.trim().is_empty() || datasource.contains('/') {
                        return Err(format!("{at}.prefix {datasource:?}: not a datasource"));
                    }
                }
            }
            if !names.insert(s.name().to_string()) {
                return Err(format!("{at}: {} is named twice", s.name()));
            }
        }
        Ok(())
    }

    /// Whether a Druid datasource is among the sources.
    pub fn has_druid(&self) -> bool {
        self.sources
            .iter()
            .any(|s| matches!(s, Dependent::Druid { .. }))
    }
}

/// A guarded replay as a client asks a coordinator for it (`rewind replay --guard
/// --coordinator`). Nothing in it is a secret: webhook URLs and Druid credentials are references
/// (`env:NAME`, `file:PATH`) resolved by the coordinator, and a Druid URL carries no userinfo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardRequest {
    pub guard: Guard,
    #[serde(default)]
    pub keep_backups: bool,
    #[serde(default)]
    pub notify: Vec<String>,
    #[serde(default)]
    pub notify_format: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub druid_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub druid_auth: Option<String>,
}

impl GuardRequest {
    /// Checks what a coordinator can check without reaching anything.
    pub fn check(&self) -> Result<(), RequestError> {
        self.guard
            .check()
            .map_err(|e| RequestError::new("--guard", e))?;
        for (i, n) in self.notify.iter().enumerate() {
            if !(n.starts_with("env:") || n.starts_with("file:")) {
                return Err(RequestError::new(
                    "--notify",
                    format!(
                        "(#{}) a webhook URL is a credential (Slack's path is its token): give it \
                         to a coordinator by reference, env:NAME or file:PATH, resolved where the \
                         coordinator runs",
                        i + 1
                    ),
                ));
            }
        }
        if !matches!(self.notify_format.as_str(), "" | "auto" | "slack" | "json") {
            return Err(RequestError::new(
                "--notify-format",
                format!("{:?}: expected auto, slack or json", self.notify_format),
            ));
        }
        match &self.druid_url {
            Some(u) => {
                let host = u
                    .split_once("://")
                    .map(|(_, rest)| rest.split('/').next().unwrap_or_default())
                    .unwrap_or_default();
                if !(u.starts_with("http://") || u.starts_with("https://")) || host.is_empty() {
                    return Err(RequestError::new("--druid-url", "not an http(s) URL"));
                }
                if host.contains('@') {
                    return Err(RequestError::new(
                        "--druid-url",
                        "carries credentials: give them with --druid-auth env:NAME or file:PATH",
                    ));
                }
            }
            None if self.guard.has_druid() => {
                return Err(RequestError::new(
                    "--druid-url",
                    format!(
                        "stream {} has a druid source; give its URL",
                        self.guard.stream
                    ),
                ));
            }
            None => {}
        }
        if let Some(a) = &self.druid_auth
            && !(a.starts_with("env:") || a.starts_with("file:"))
        {
            return Err(RequestError::new(
                "--druid-auth",
                "give it by reference: env:NAME or file:PATH",
            ));
        }
        Ok(())
    }
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

impl GuardState {
    /// A new replay of `days`, nothing done.
    pub fn new(job: &str, guard: &Guard, topic: &str, days: &[String]) -> GuardState {
        GuardState {
            job: job.to_string(),
            stream: guard.stream.clone(),
            topic: topic.to_string(),
            days: days
                .iter()
                .map(|d| DayState {
                    day: d.clone(),
                    ..DayState::default()
                })
                .collect(),
        }
    }

    /// Whether every day has ended (succeeded, restored or left with its backup).
    pub fn finished(&self) -> bool {
        self.days.iter().all(|d| d.step.finished())
    }

    /// The outcome for a job's summary.
    pub fn outcome(&self) -> GuardOutcome {
        GuardOutcome {
            stream: self.stream.clone(),
            topic: self.topic.clone(),
            days: self
                .days
                .iter()
                .map(|d| DayOutcome {
                    day: d.day.clone(),
                    state: d.outcome().to_string(),
                    events_replayed: d.events,
                    files_deleted: d
                        .objects
                        .iter()
                        .map(|(k, v)| (k.clone(), v.len()))
                        .collect(),
                    segments_dropped: d
                        .segments
                        .iter()
                        .map(|(k, v)| (k.clone(), v.len()))
                        .collect(),
                    replay_job: d.replay_job.clone(),
                    error: d.error.clone(),
                })
                .collect(),
        }
    }
}

impl Step {
    pub fn finished(self) -> bool {
        matches!(self, Step::Finalized | Step::Restored | Step::RestoreFailed)
    }
}

impl DayState {
    /// `succeeded`, `failed_restored`, `failed_restore_failed`, or `unfinished`.
    pub fn outcome(&self) -> &'static str {
        match self.step {
            Step::Finalized => "succeeded",
            Step::Restored => "failed_restored",
            Step::RestoreFailed => "failed_restore_failed",
            _ => "unfinished",
        }
    }
}

/// What a guarded replay did, day by day (in its job's summary).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardOutcome {
    pub stream: String,
    pub topic: String,
    pub days: Vec<DayOutcome>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayOutcome {
    pub day: String,
    pub state: String,
    pub events_replayed: u64,
    /// Files cleared per store source (restored again when the day failed).
    pub files_deleted: BTreeMap<String, usize>,
    pub segments_dropped: BTreeMap<String, usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> GuardRequest {
        GuardRequest {
            guard: Guard {
                stream: "ingest".into(),
                topic: "t".into(),
                sources: vec![
                    Dependent::Store {
                        name: "s3://lake/unique".into(),
                        root: Location::S3 {
                            bucket: "lake".into(),
                            prefix: String::new(),
                        },
                        prefix: "unique/".into(),
                        layout: DEFAULT_DAY_LAYOUT.into(),
                    },
                    Dependent::Druid {
                        name: "druid:events".into(),
                        datasource: "events".into(),
                    },
                ],
            },
            keep_backups: false,
            notify: vec!["env:HOOK".into()],
            notify_format: "auto".into(),
            druid_url: Some("http://druid:8888".into()),
            druid_auth: Some("file:/run/secrets/druid".into()),
        }
    }

    /// What a coordinator is sent holds no secret, and a guard from the wire is checked as
    /// strictly as one from a file.
    #[test]
    fn a_request_holds_references_and_a_sound_guard() {
        request().check().unwrap();
        type Edit = Box<dyn Fn(&mut GuardRequest)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "--notify",
                Box::new(|r| r.notify = vec!["https://hooks.slack.com/services/T/B/x".into()]),
            ),
            (
                "--druid-url",
                Box::new(|r| r.druid_url = Some("http://u:p@druid:8888".into())),
            ),
            ("--druid-url", Box::new(|r| r.druid_url = None)),
            (
                "--druid-auth",
                Box::new(|r| r.druid_auth = Some("user:pw".into())),
            ),
            (
                "--notify-format",
                Box::new(|r| r.notify_format = "xml".into()),
            ),
            (
                "leaves the source",
                Box::new(|r| {
                    if let Dependent::Store { layout, .. } = &mut r.guard.sources[0] {
                        *layout = "{prefix}/../{YYYY}-{MM}-{DD}".into();
                    }
                }),
            ),
            (
                "do not make",
                Box::new(|r| {
                    if let Dependent::Store { prefix, .. } = &mut r.guard.sources[0] {
                        *prefix = "other/".into();
                    }
                }),
            ),
            (
                "named twice",
                Box::new(|r| {
                    let again = r.guard.sources[1].clone();
                    r.guard.sources.push(again);
                }),
            ),
            ("outputKafkaTopic", Box::new(|r| r.guard.topic = " ".into())),
        ];
        for (named, edit) in cases {
            let mut r = request();
            edit(&mut r);
            let e = r.check().unwrap_err().to_string();
            assert!(e.contains(named), "{named}: {e}");
        }
    }
}
