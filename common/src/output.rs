//! What a job writes: the keys of its outputs in the destination, the entries of its manifests,
//! and the shard plans that pin its input.

use serde::{Deserialize, Serialize};

use crate::ids::{JobId, OrgId, ShardId};

/// The keys of a job's outputs. Everything of one job sits below `execution_id={job}/`, so two
/// executions into the same destination never mix, and deleting a job is deleting one prefix.
/// Names starting with `_` are ignored by Hive-style readers (Spark, pyarrow, DuckDB globs on
/// `*.parquet`).
#[derive(Debug, Clone)]
pub struct OutputKeys {
    job: JobId,
    /// `execution_id={job}/`, or for a job that changes a dataset in place (a distributed
    /// repair) `_rewind/jobs/{job}/`, outside every reader's view of the dataset.
    root: String,
}

impl OutputKeys {
    pub fn new(job: &JobId) -> OutputKeys {
        OutputKeys {
            job: job.clone(),
            root: format!("execution_id={job}/"),
        }
    }

    /// The keys of `spec`'s job (a repair's control files live below `_rewind/jobs/`).
    pub fn of(spec: &crate::JobSpec) -> OutputKeys {
        match &spec.repair {
            Some(_) => OutputKeys {
                job: spec.job.clone(),
                root: format!("_rewind/jobs/{}/", spec.job),
            },
            None => OutputKeys::new(&spec.job),
        }
    }

    /// `execution_id={job}/`: the prefix of every output of the job, in both stores.
    pub fn job_prefix(&self) -> String {
        self.root.clone()
    }

    /// A distributed repair's input (keys and rows), written at submit.
    pub fn repair_input(&self) -> String {
        format!("{}input.json", self.root)
    }

    /// A Parquet file of one shard attempt, in its Hive partition.
    pub fn data_file(&self, org: &OrgId, shard: ShardId, attempt: u32, n: u32) -> String {
        format!(
            "execution_id={}/org_id={}/date={}/part-{shard}-a{attempt}-{n}.zstd.parquet",
            self.job,
            org,
            shard.hour().date_string()
        )
    }

    /// A Parquet file of one shard attempt in a `--partition-by` partition (`a=x/b=y/`).
    pub fn partition_file(&self, partition: &str, shard: ShardId, attempt: u32, n: u32) -> String {
        format!(
            "execution_id={}/{partition}part-{shard}-a{attempt}-{n}.zstd.parquet",
            self.job
        )
    }

    /// The failed records of one shard attempt (in the failed-output store).
    pub fn failed_file(&self, shard: ShardId, attempt: u32) -> String {
        format!("execution_id={}/failed-{shard}-a{attempt}.jsonl", self.job)
    }

    /// The manifest a shard attempt writes before it commits.
    /// The unrecoverable events of one shard attempt (in the unrecoverable-output store).
    pub fn unrecoverable_file(&self, shard: ShardId, attempt: u32) -> String {
        format!(
            "execution_id={}/unrecoverable-{shard}-a{attempt}.jsonl",
            self.job
        )
    }

    pub fn shard_manifest(&self, shard: ShardId, attempt: u32) -> String {
        format!("{}_rewind/shards/{shard}-a{attempt}.json", self.root)
    }

    /// A Kafka replay's progress in a shard (see [`KafkaCheckpoint`]).
    pub fn checkpoint(&self, shard: ShardId) -> String {
        format!("{}_rewind/checkpoints/{shard}.json", self.root)
    }

    /// The objects a shard reads, listed and pinned when the job was planned.
    pub fn shard_plan(&self, shard: ShardId) -> String {
        format!("{}{shard}.json", self.plan_prefix())
    }

    pub fn plan_prefix(&self) -> String {
        format!("{}_rewind/plan/", self.root)
    }

    pub fn job_manifest(&self) -> String {
        format!("{}_manifest.json", self.root)
    }

    pub fn success_marker(&self) -> String {
        format!("{}_SUCCESS", self.root)
    }
}

/// One output file, as listed in manifests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFileEntry {
    pub key: String,
    pub size: u64,
    pub rows: u64,
    /// The object's VersionId when the destination bucket is versioned (rollback needs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// What one archive object contributed to a shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectStats {
    pub key: String,
    pub size: u64,
    /// The content tag and version that were read (pinned when the job was planned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Decompressed bytes decoded.
    pub decoded_bytes: u64,
    pub compression: String,
    pub events: u64,
    pub damaged: u64,
}

/// The offsets of the records a Kafka replay produced into one partition, first and last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetRange {
    pub first: i64,
    pub last: i64,
}

impl OffsetRange {
    /// Both ranges and what lies between.
    pub fn span(self, other: OffsetRange) -> OffsetRange {
        OffsetRange {
            first: self.first.min(other.first),
            last: self.last.max(other.last),
        }
    }
}

/// Adds `from`'s ranges into `into`, partition by partition.
pub fn add_ranges(
    into: &mut std::collections::BTreeMap<i32, OffsetRange>,
    from: &std::collections::BTreeMap<i32, OffsetRange>,
) {
    for (p, r) in from {
        into.entry(*p).and_modify(|x| *x = x.span(*r)).or_insert(*r);
    }
}

/// Written by a shard attempt next to its outputs; the shard's done record points to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardManifest {
    pub job: JobId,
    pub shard: ShardId,
    pub attempt: u32,
    pub prefix: String,
    pub files: Vec<OutputFileEntry>,
    pub failed_file: Option<OutputFileEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unrecoverable_file: Option<OutputFileEntry>,
    pub objects: Vec<ObjectStats>,
    pub skipped_objects: Vec<String>,
    pub counts: crate::shard_store::ShardCounts,
    /// Failed records by reason code.
    pub failed_by_reason: std::collections::BTreeMap<String, u64>,
    /// Filtered events by reason: event_type, domain, filter, arrival, flow, duplicate.
    #[serde(default)]
    pub filtered_by_reason: std::collections::BTreeMap<String, u64>,
    /// A Kafka replay: where this attempt's records went, by partition. An attempt that resumed
    /// after an earlier one's delivery (`counts.delivered_before`-style resumes) only knows its
    /// own records: see `kafka_ranges_complete`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub kafka_offsets: std::collections::BTreeMap<i32, OffsetRange>,
    /// Whether `kafka_offsets` covers every record of the shard (no earlier attempt delivered
    /// part of it).
    #[serde(default = "crate::output::yes")]
    pub kafka_ranges_complete: bool,
    /// A distributed repair's shard: the files it read that change, and the keys it found.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repaired: Vec<RepairedFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub found_keys: Vec<String>,
    /// Files it read (footers of the others only).
    #[serde(default)]
    pub files_read: u64,
    #[serde(default)]
    pub bytes_written: u64,
}

/// A file a repair shard rewrote (or emptied), as the job commit applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairedFile {
    pub key: String,
    /// Where its new content is (staged, or a new table file); `None` when no row is left.
    pub staged: Option<String>,
    pub size: u64,
    pub rows_before: u64,
    pub rows_after: u64,
    pub deleted: u64,
    pub updated: u64,
    /// The file as it was read: the change is refused if another writer replaced it since.
    pub seen: crate::storage::ObjectMeta,
}

pub(crate) fn yes() -> bool {
    true
}

pub(crate) fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The objects one shard reads, listed when the job was planned (the coordinator core stores one
/// per shard below the execution's `_rewind/plan/`). Workers read exactly these versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlan {
    pub shard: ShardId,
    pub prefix: String,
    pub objects: Vec<crate::storage::ObjectMeta>,
    /// Why the prefix could not be listed when the job was planned: the shard's attempts list
    /// it themselves (and fail with the reason if they cannot either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlisted: Option<String>,
}

/// Where an attempt writes an output before the job commit makes it visible under `key`: below
/// the execution's `_rewind/staging/`, with a `.pending` suffix. Hive-style readers skip `_`
/// directories, and no `*.parquet` / `*.jsonl` glob matches, so what an attempt wrote is never
/// read as the job's output unless the commit promoted it — also when a worker frozen past its
/// lease wakes up after the commit and finishes a file.
pub fn staged(key: &str) -> String {
    match key.split_once('/') {
        Some((execution, rest)) if execution.starts_with("execution_id=") => {
            format!("{execution}/_rewind/staging/{rest}.pending")
        }
        _ => format!("_rewind/staging/{key}.pending"),
    }
}
