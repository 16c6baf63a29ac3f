//! A job's life, as every part of Rewind sees it: its phase (one enum, never a string), the
//! status the registry keeps, the job manifest written to the destination, and the one-object
//! summary (what `rewind run --json` prints, what the coordinator stores when a job finishes,
//! what `rewind submit --wait --json` prints: one type so they never drift).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::ShardId;
use crate::job::{FlowCounts, JobSpec, OutputFileEntry, OutputKeys};
use crate::shard_store::ShardCounts;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobPhase {
    /// Workers claim its shards.
    Running,
    /// Cancel asked for: workers stop its attempts; the coordinator ends it once none runs.
    Cancelling,
    Succeeded,
    Failed,
    /// Stopped by the user: committed shards' files stay, listed in the manifest; no `_SUCCESS`.
    Cancelled,
}

impl JobPhase {
    pub const ALL: [JobPhase; 5] = [
        JobPhase::Running,
        JobPhase::Cancelling,
        JobPhase::Succeeded,
        JobPhase::Failed,
        JobPhase::Cancelled,
    ];

    /// The name on the wire, in etcd and in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            JobPhase::Running => "running",
            JobPhase::Cancelling => "cancelling",
            JobPhase::Succeeded => "succeeded",
            JobPhase::Failed => "failed",
            JobPhase::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobPhase> {
        JobPhase::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Succeeded, failed or cancelled: nothing more happens to the job.
    pub fn finished(self) -> bool {
        matches!(
            self,
            JobPhase::Succeeded | JobPhase::Failed | JobPhase::Cancelled
        )
    }
}

impl std::fmt::Display for JobPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's status as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub phase: JobPhase,
    /// The job's tenant (listing filters on it without reading the job's record).
    #[serde(default)]
    pub org: String,
    pub shards: u64,
    pub created_ms: i64,
    #[serde(default)]
    pub finished_ms: Option<i64>,
    #[serde(default)]
    pub message: Option<String>,
    /// The final summary, once finished.
    #[serde(default)]
    pub summary: Option<Summary>,
}

/// Checks of a job's sink before the job exists, so that a bad sink fails the submit and not
/// every shard. The binary provides them (the Kafka checks live with the Kafka sink).
pub trait SinkCheck: Send + Sync {
    /// Settings the sink refuses (a bad request). Quick, no network.
    fn check_settings(&self, spec: &JobSpec) -> Result<(), String>;
    /// The sink answers and is ready (brokers, topic, transactions). Blocking; may take seconds.
    /// May record in the spec what the job's workers need from it (Kafka: where the control
    /// topic stood).
    fn preflight(&self, spec: &mut JobSpec) -> Result<(), String>;
    /// The destination as the job's commit sees it: a table destination (Delta) is opened,
    /// and created on first use, here. Blocking.
    fn destination(
        &self,
        _spec: &JobSpec,
        dest: std::sync::Arc<dyn crate::storage::OutputStore>,
    ) -> Result<std::sync::Arc<dyn crate::storage::OutputStore>, crate::storage::StorageError> {
        Ok(dest)
    }
    /// A guarded replay's dependent sinks, Druid and webhooks answer, before anything is
    /// cleared. Blocking.
    fn guard(&self, _spec: &JobSpec, _s3: &crate::S3Options) -> Result<(), String> {
        Ok(())
    }
    /// Whether this process can finish distributed ingests ([`SinkCheck::ingest_finish`]);
    /// a coordinator that cannot refuses them at submit.
    fn finishes_ingests(&self) -> bool {
        false
    }
    /// A distributed ingest's end, after its commit: publish into the trusted zone, record the
    /// change, move the consumed objects. Idempotent (run again after a crash). Blocking.
    fn ingest_finish(
        &self,
        _spec: &JobSpec,
        _s3: &crate::S3Options,
        _manifest: &JobManifest,
    ) -> Result<(), String> {
        Err("this process cannot finish ingests".into())
    }
}

/// No sink checks (Parquet needs none; tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSinkCheck;

impl SinkCheck for NoSinkCheck {
    fn check_settings(&self, _: &JobSpec) -> Result<(), String> {
        Ok(())
    }
    fn preflight(&self, _: &mut JobSpec) -> Result<(), String> {
        Ok(())
    }
}

/// What a coordinator accepts, whatever a request asks: limits that protect the servers are the
/// server's. A request may ask for less (its own `max_range_hours`), never for more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest range a job may cover, in hours.
    pub max_range_hours: u64,
    /// The largest event a job may ask its workers to hold.
    pub max_event_bytes: usize,
}

impl Default for Limits {
    /// A coordinator's defaults: a leap year, 64 MiB.
    fn default() -> Self {
        Limits {
            max_range_hours: crate::range::DEFAULT_MAX_HOURS,
            max_event_bytes: 64 << 20,
        }
    }
}

impl Limits {
    /// `rewind run`: the user runs their own process; only the hard ceilings hold.
    pub fn local() -> Self {
        Limits {
            max_range_hours: u64::MAX,
            max_event_bytes: crate::request::MAX_EVENT_BYTES_CEILING,
        }
    }
}

/// The values of one per-tenant coordinator flag: `N` for every tenant and `ORG=N` for one
/// (overriding N). A value of 0 is none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerTenant {
    pub every: Option<u64>,
    pub tenants: std::collections::BTreeMap<String, u64>,
}

impl PerTenant {
    /// From the values of `flag` (named in errors).
    pub fn parse(flag: &str, values: &[String]) -> Result<PerTenant, String> {
        let mut out = PerTenant::default();
        for v in values {
            let bad = || {
                format!(
                    "invalid {flag} {v:?}: expected N (every tenant) or ORG=N, N a whole number \
                     (0: none)"
                )
            };
            match v.split_once('=') {
                None => {
                    out.every = Some(v.trim().parse().map_err(|_| bad())?);
                }
                Some((org, n)) => {
                    let org =
                        crate::OrgId::parse(org.trim()).map_err(|e| format!("{}: {e}", bad()))?;
                    out.tenants
                        .insert(org.to_string(), n.trim().parse().map_err(|_| bad())?);
                }
            }
        }
        Ok(out)
    }

    /// The value for `org`, if any.
    pub fn of(&self, org: &str) -> Option<u64> {
        self.tenants
            .get(org)
            .copied()
            .or(self.every)
            .filter(|n| *n > 0)
    }
}

/// The coordinator's caps on how many shards of one tenant (org) run at once across the fleet
/// (`rewind coordinator --tenant-max-shards`): one for every tenant, and per-tenant values that
/// override it. A cap of 0 is no cap. Stamped into each job it accepts
/// (`JobSpec::tenant_max_shards`); workers claim within it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantCaps(PerTenant);

impl TenantCaps {
    /// From `--tenant-max-shards` values: `N` (every tenant) or `ORG=N` (one tenant).
    pub fn parse(values: &[String]) -> Result<TenantCaps, String> {
        PerTenant::parse("--tenant-max-shards", values).map(TenantCaps)
    }

    /// The cap on `org`'s running shards, if any.
    pub fn of(&self, org: &str) -> Option<u32> {
        self.0.of(org).map(|n| n.min(u32::MAX as u64) as u32)
    }
}

/// The coordinator's budgets a tenant's jobs share across the fleet (`rewind coordinator
/// --tenant-replay-events-per-sec`, `--tenant-replay-bytes-per-sec`,
/// `--tenant-source-requests-per-sec`). Stamped into each job it accepts
/// (`JobSpec::tenant_budget`): a limit that protects shared servers is the server's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantBudgets {
    pub replay_events_per_sec: PerTenant,
    pub replay_bytes_per_sec: PerTenant,
    pub source_requests_per_sec: PerTenant,
}

impl TenantBudgets {
    /// `org`'s budget, if any of them is set for it.
    pub fn of(&self, org: &str) -> Option<crate::job::TenantBudget> {
        let b = crate::job::TenantBudget {
            replay_events_per_sec: self.replay_events_per_sec.of(org),
            replay_bytes_per_sec: self.replay_bytes_per_sec.of(org),
            source_requests_per_sec: self.source_requests_per_sec.of(org),
        };
        (b != crate::job::TenantBudget::default()).then_some(b)
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedShard {
    pub shard: ShardId,
    pub attempts: u32,
    pub reason: String,
}

/// The job manifest, written at `execution_id={job}/_manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobManifest {
    pub job_id: String,
    /// Succeeded, failed or cancelled.
    pub state: JobPhase,
    pub spec: JobSpec,
    pub shards: u64,
    pub shards_done: u64,
    pub failed_shards: Vec<FailedShard>,
    pub counts: ShardCounts,
    pub failed_by_reason: BTreeMap<String, u64>,
    #[serde(default)]
    pub filtered_by_reason: BTreeMap<String, u64>,
    pub files: Vec<OutputFileEntry>,
    pub failed_files: Vec<OutputFileEntry>,
    #[serde(default)]
    pub unrecoverable_files: Vec<OutputFileEntry>,
    pub orphans_deleted: u64,
    /// The committed attempt of each done shard, by shard id: what a worker whose commit's
    /// answer was lost asks once the job has ended (its shard state is gone by then).
    #[serde(default)]
    pub attempts: BTreeMap<String, u32>,
    /// A Kafka replay: the offsets its records got, by partition (from the committed attempts).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kafka_offsets: BTreeMap<i32, crate::output::OffsetRange>,
    /// Whether those ranges cover every record: false when a shard resumed after an earlier
    /// attempt's delivery (that attempt's offsets are not known to the one that committed).
    #[serde(default = "crate::output::yes")]
    pub kafka_ranges_complete: bool,
    /// A distributed repair: what it changed, and the change it recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<RepairOutcome>,
}

/// What a distributed keyed repair did (the report `rewind repair` prints).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairOutcome {
    /// The recorded change (none when nothing changed, or when a shard failed: a repair is
    /// applied whole or not at all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
    pub files_in_dataset: u64,
    pub files_read: u64,
    pub files_rewritten: u64,
    pub files_removed: u64,
    pub rows_deleted: u64,
    pub rows_updated: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Keys asked for that no row had (the first 1,000).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delete_keys_not_found: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub update_keys_not_found: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub job_id: String,
    pub state: JobPhase,
    pub org: String,
    pub start: String,
    pub end: String,
    pub source: String,
    pub dest: String,
    pub output: String,
    pub failed_output: String,
    #[serde(default)]
    pub unrecoverable_output: String,
    pub shards: u64,
    pub shards_done: u64,
    pub shards_failed: u64,
    pub objects: u64,
    pub objects_skipped: u64,
    pub bytes: u64,
    pub recovered: u64,
    pub filtered: u64,
    pub failed: u64,
    #[serde(default)]
    pub unrecoverable: u64,
    /// Events and damaged ranges decoded: recovered + filtered + failed + unrecoverable.
    #[serde(default)]
    pub decoded: u64,
    /// Of the recovered: repaired by a flow.
    #[serde(default)]
    pub repaired: u64,
    /// Of the filtered: duplicates dropped by `--dedup`.
    #[serde(default)]
    pub duplicates: u64,
    /// Kafka sink: records produced and acknowledged by the brokers (committed shards).
    #[serde(default)]
    pub produced: u64,
    #[serde(default)]
    pub acknowledged: u64,
    /// Storage requests retried after transient failures (throttling, 5xx, resets).
    #[serde(default)]
    pub retries: u64,
    /// A stream replay's sink: kafka, kinesis or pubsub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<String>,
    /// A stream replay: what each event's delivery promises (at-least-once: a retried shard
    /// may send some records again; exactly-once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<String>,
    /// Kinesis, Pub/Sub: records sent again after the service refused them for the moment
    /// (throttled, 5xx, a reset).
    #[serde(default, skip_serializing_if = "crate::output::is_zero")]
    pub sink_retries: u64,
    pub failed_by_reason: BTreeMap<String, u64>,
    /// event_type, domain, filter, arrival, flow, duplicate.
    #[serde(default)]
    pub filtered_by_reason: BTreeMap<String, u64>,
    /// What each flow did, by flow name.
    #[serde(default)]
    pub flows: BTreeMap<String, FlowCounts>,
    pub files: usize,
    pub duration_s: f64,
    pub mb_per_s: f64,
    pub failed_shards: Vec<FailedShard>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<RepairOutcome>,
    /// A guarded replay's days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<crate::guard::GuardOutcome>,
    /// The change the job (or a retry of it) recorded in the destination's log, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
}

impl Summary {
    pub fn new(spec: &JobSpec, m: &JobManifest, elapsed: Duration) -> Summary {
        let keys = OutputKeys::of(spec);
        let p = &spec.places;
        let secs = elapsed.as_secs_f64();
        Summary {
            job_id: spec.job.to_string(),
            state: m.state,
            org: spec.org.to_string(),
            start: spec.range.first.to_string(),
            end: spec.range.last.to_string(),
            source: p.source.to_string(),
            dest: p.dest.to_string(),
            output: p.dest.join(&keys.job_prefix()).to_string(),
            failed_output: p.failed.join(&keys.job_prefix()).to_string(),
            unrecoverable_output: p.unrecoverable.join(&keys.job_prefix()).to_string(),
            shards: m.shards,
            shards_done: m.shards_done,
            shards_failed: m.failed_shards.len() as u64,
            objects: m.counts.objects,
            objects_skipped: m.counts.objects_skipped,
            bytes: m.counts.bytes,
            recovered: m.counts.recovered,
            filtered: m.counts.filtered,
            failed: m.counts.failed,
            unrecoverable: m.counts.unrecoverable,
            decoded: m.counts.decoded,
            repaired: m.counts.repaired,
            duplicates: m.counts.duplicates,
            produced: m.counts.produced,
            acknowledged: m.counts.acknowledged,
            retries: m.counts.retries,
            sink: spec.sink.name().map(str::to_string),
            delivery: spec.sink.delivery().map(str::to_string),
            sink_retries: m.counts.sink_retries,
            failed_by_reason: m.failed_by_reason.clone(),
            filtered_by_reason: m.filtered_by_reason.clone(),
            flows: m.counts.flows.clone(),
            files: m.files.len(),
            duration_s: (secs * 1000.0).round() / 1000.0,
            mb_per_s: ((m.counts.bytes as f64 / 1e6 / secs.max(1e-9)) * 10.0).round() / 10.0,
            failed_shards: m.failed_shards.clone(),
            repair: m.repair.clone(),
            guard: None,
            change: None,
        }
    }

    /// A guarded replay's summary: its days (each ran as a job of its own, named in its day), and
    /// the events the brokers acknowledged over the days that succeeded.
    pub fn guarded(
        spec: &JobSpec,
        state: JobPhase,
        outcome: crate::guard::GuardOutcome,
        elapsed: Duration,
    ) -> Summary {
        let p = &spec.places;
        let replayed: u64 = outcome
            .days
            .iter()
            .filter(|d| d.state == "succeeded")
            .map(|d| d.events_replayed)
            .sum();
        Summary {
            job_id: spec.job.to_string(),
            state,
            org: spec.org.to_string(),
            start: spec.range.first.to_string(),
            end: spec.range.last.to_string(),
            source: p.source.to_string(),
            dest: p.dest.to_string(),
            output: p
                .dest
                .join(&format!("_rewind/guards/{}.json", spec.job))
                .to_string(),
            failed_output: String::new(),
            unrecoverable_output: String::new(),
            shards: 0,
            shards_done: 0,
            shards_failed: 0,
            objects: 0,
            objects_skipped: 0,
            bytes: 0,
            recovered: replayed,
            filtered: 0,
            failed: 0,
            unrecoverable: 0,
            decoded: replayed,
            repaired: 0,
            duplicates: 0,
            produced: replayed,
            acknowledged: replayed,
            retries: 0,
            sink: spec.sink.name().map(str::to_string),
            delivery: spec.sink.delivery().map(str::to_string),
            sink_retries: 0,
            failed_by_reason: BTreeMap::new(),
            filtered_by_reason: BTreeMap::new(),
            flows: BTreeMap::new(),
            files: 0,
            duration_s: (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            mb_per_s: 0.0,
            failed_shards: Vec::new(),
            repair: None,
            guard: Some(outcome),
            change: None,
        }
    }

    /// Its event and object counts, as the one counts type.
    pub fn counts(&self) -> ShardCounts {
        ShardCounts {
            objects: self.objects,
            objects_skipped: self.objects_skipped,
            bytes: self.bytes,
            recovered: self.recovered,
            filtered: self.filtered,
            failed: self.failed,
            unrecoverable: self.unrecoverable,
            decoded: self.decoded,
            repaired: self.repaired,
            duplicates: self.duplicates,
            produced: self.produced,
            acknowledged: self.acknowledged,
            flows: self.flows.clone(),
            retries: self.retries,
            sink_retries: self.sink_retries,
        }
    }

    /// The human-readable report, one line per item.
    pub fn human(&self) -> Vec<String> {
        if let Some(g) = &self.guard {
            let failed = g.days.iter().filter(|d| d.state != "succeeded").count();
            let mut lines = vec![format!(
                "guarded replay {} of {} into {} {}: {} of {} days succeeded, {} events replayed",
                self.job_id,
                g.stream,
                g.topic,
                self.state.as_str(),
                g.days.len() - failed,
                g.days.len(),
                self.acknowledged
            )];
            for d in &g.days {
                lines.push(format!(
                    "  {} {}: {} events{}{}",
                    d.day,
                    d.state,
                    d.events_replayed,
                    d.replay_job
                        .as_deref()
                        .map(|j| format!(" (job {j})"))
                        .unwrap_or_default(),
                    d.error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ));
            }
            return lines;
        }
        if let Some(r) = &self.repair {
            let mut lines = vec![format!(
                "repair {} {}: {} shards ({} failed); changed {} of {} files ({} read): {} rows deleted, {} updated",
                self.job_id,
                self.state.as_str(),
                self.shards,
                self.shards_failed,
                r.files_rewritten + r.files_removed,
                r.files_in_dataset,
                r.files_read,
                r.rows_deleted,
                r.rows_updated
            )];
            if !r.delete_keys_not_found.is_empty() {
                lines.push(format!(
                    "keys to delete that no row has ({}): {}",
                    r.delete_keys_not_found.len(),
                    r.delete_keys_not_found.join(", ")
                ));
            }
            if !r.update_keys_not_found.is_empty() {
                lines.push(format!(
                    "rows whose key no row has, not inserted ({}): {}",
                    r.update_keys_not_found.len(),
                    r.update_keys_not_found.join(", ")
                ));
            }
            lines.push(match &r.change {
                Some(c) => format!(
                    "recorded as change {c} (rewind rollback --dest {} {c})",
                    self.dest
                ),
                None => "nothing changed".into(),
            });
            return lines;
        }
        let mut lines = vec![
            format!(
                "job {} {}: {} shards ({} failed), {} objects, {:.1} MB in {:.2}s ({:.1} MB/s)",
                self.job_id,
                match self.state {
                    JobPhase::Succeeded => "succeeded".to_string(),
                    other => other.as_str().to_uppercase(),
                },
                self.shards,
                self.shards_failed,
                self.objects,
                self.bytes as f64 / 1e6,
                self.duration_s,
                self.mb_per_s
            ),
            format!(
                "events: {} recovered, {} filtered, {} failed, {} unrecoverable",
                self.recovered, self.filtered, self.failed, self.unrecoverable
            ),
            format!("output: {}", self.output),
        ];
        if self.repaired > 0 || !self.flows.is_empty() {
            lines.push(format!("repaired by flows: {}", self.repaired));
            for (name, c) in &self.flows {
                lines.push(format!(
                    "  flow {name}: {} matched, {} repaired, {} failed, {} unrecoverable, {} filtered",
                    c.matched, c.repaired, c.failed, c.unrecoverable, c.filtered
                ));
            }
        }
        if self.produced > 0 {
            lines.push(format!(
                "{}: {} records sent, {} acknowledged{}",
                self.sink.as_deref().unwrap_or("kafka"),
                self.produced,
                self.acknowledged,
                match self.sink_retries {
                    0 => String::new(),
                    n => format!(", {n} put again after throttling or failures"),
                }
            ));
        }
        match self.delivery.as_deref() {
            Some("at-least-once") => lines.push(
                "delivery: at-least-once — every event was acknowledged before its shard \
                 committed; a shard that was retried may have sent some records twice"
                    .into(),
            ),
            Some(d) => lines.push(format!("delivery: {d}")),
            None => {}
        }
        if !self.filtered_by_reason.is_empty() {
            lines.push(format!("filtered: {:?}", self.filtered_by_reason));
        }
        if self.unrecoverable > 0 {
            lines.push(format!(
                "unrecoverable events: {}",
                self.unrecoverable_output
            ));
        }
        if self.failed > 0 {
            lines.push(format!(
                "failed records: {} ({:?})",
                self.failed_output, self.failed_by_reason
            ));
        }
        if self.retries > 0 {
            lines.push(format!(
                "storage: {} requests retried after transient failures",
                self.retries
            ));
        }
        if self.objects_skipped > 0 {
            lines.push(format!(
                "skipped {} objects named for another org",
                self.objects_skipped
            ));
        }
        for f in &self.failed_shards {
            lines.push(format!(
                "shard {} failed after {} attempts: {}",
                f.shard, f.attempts, f.reason
            ));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::TenantCaps;

    #[test]
    fn tenant_caps_parse_a_default_and_per_tenant_overrides() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let caps = TenantCaps::parse(&v(&["8", "acme=2", " beta = 0 "])).unwrap();
        assert_eq!(caps.of("acme"), Some(2));
        assert_eq!(caps.of("beta"), None, "0 is no cap, even over the default");
        assert_eq!(caps.of("gamma"), Some(8));
        assert_eq!(TenantCaps::parse(&[]).unwrap().of("acme"), None);
        for bad in ["eight", "acme=two", "a/b=1", "=3", "-1"] {
            let e = TenantCaps::parse(&v(&[bad])).unwrap_err();
            assert!(e.contains("--tenant-max-shards") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn tenant_budgets_stamp_only_what_is_set_for_the_tenant() {
        use super::{PerTenant, TenantBudgets};
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let flag = "--tenant-replay-bytes-per-sec";
        let budgets = TenantBudgets {
            replay_bytes_per_sec: PerTenant::parse(flag, &v(&["1000000", "acme=0"])).unwrap(),
            source_requests_per_sec: PerTenant::parse("-r", &v(&["acme=50"])).unwrap(),
            ..TenantBudgets::default()
        };
        let acme = budgets.of("acme").unwrap();
        assert_eq!(
            (acme.replay_bytes_per_sec, acme.source_requests_per_sec),
            (None, Some(50))
        );
        let beta = budgets.of("beta").unwrap();
        assert_eq!(
            (beta.replay_bytes_per_sec, beta.source_requests_per_sec),
            (Some(1_000_000), None)
        );
        assert_eq!(TenantBudgets::default().of("acme"), None);
        let e = PerTenant::parse(flag, &v(&["10MB"])).unwrap_err();
        assert!(e.contains(flag) && e.contains("10MB"), "{e}");
    }
}
