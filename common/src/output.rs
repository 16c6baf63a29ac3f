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

/// A shard's plan between planning and storing: its JSON (what is stored), zstd-compressed, with
/// the figures planning answers with. A job's plans are all listed before any is stored (a bad
/// source touches no destination), and as structs they cost ~200 bytes per object: a year of
/// hours of 100 objects each held ~180 MB (twice that while they were being stored). Packed, a
/// plan's keys — which share long prefixes — take ~10x less.
#[derive(Debug, Clone)]
pub struct PackedPlan {
    pub shard: ShardId,
    pub prefix: String,
    /// Objects in the plan, and their bytes.
    pub objects: u64,
    pub bytes: u64,
    json: Vec<u8>,
}

impl PackedPlan {
    pub fn pack(plan: &ShardPlan) -> PackedPlan {
        let json = serde_json::to_vec(plan)
            .unwrap_or_else(|e| unreachable!("a plan always serialises: {e}"));
        let mut packed = zstd::bulk::compress(&json, 1)
            .unwrap_or_else(|e| unreachable!("compressing into a growing buffer: {e}"));
        // (Allocated for the worst case, as large as the JSON.)
        packed.shrink_to_fit();
        PackedPlan {
            shard: plan.shard,
            prefix: plan.prefix.clone(),
            objects: plan.objects.len() as u64,
            bytes: plan.objects.iter().map(|o| o.size).sum(),
            json: packed,
        }
    }

    /// The plan as stored (JSON).
    pub fn json(&self) -> Vec<u8> {
        zstd::stream::decode_all(self.json.as_slice())
            .unwrap_or_else(|e| unreachable!("a plan packed by `pack` unpacks: {e}"))
    }

    pub fn unpack(&self) -> ShardPlan {
        serde_json::from_slice(&self.json())
            .unwrap_or_else(|e| unreachable!("a plan packed by `pack` parses: {e}"))
    }

    /// Bytes held (allocated, not just used).
    pub fn packed_len(&self) -> usize {
        self.json.capacity()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Hour;
    use crate::storage::ObjectMeta;

    fn plan(objects: usize) -> ShardPlan {
        ShardPlan {
            shard: ShardId(Hour::from_epoch_hours(475_303)),
            prefix: "main_stream/2024/04/01/07/".into(),
            objects: (0..objects)
                .map(|i| ObjectMeta {
                    key: format!(
                        "main_stream/2024/04/01/07/dataplatform-TN-1-{i:06}-2024-04-01-07-{:02}-00",
                        i % 60
                    ),
                    size: 5_000_000 + i as u64,
                    etag: Some(format!("\"{:032x}\"", i as u128 * 0x9e37_79b9_7f4a_7c15)),
                    version: (i % 3 == 0).then(|| format!("v{i}")),
                })
                .collect(),
            unlisted: (objects == 0).then(|| "listing refused: SlowDown".to_string()),
        }
    }

    /// A packed plan stores exactly the plan's JSON, unpacks to the same plan, answers its
    /// figures, and holds a fraction of the JSON (what keeps a year of plans small).
    #[test]
    fn packed_plans_store_the_same_json_and_hold_much_less() {
        for n in [0, 1, 100, 1_000] {
            let p = plan(n);
            let packed = PackedPlan::pack(&p);
            let json = serde_json::to_vec(&p).unwrap();
            assert_eq!(packed.json(), json);
            assert_eq!(packed.unpack(), p);
            assert_eq!(packed.shard, p.shard);
            assert_eq!(packed.prefix, p.prefix);
            assert_eq!(packed.objects, n as u64);
            assert_eq!(packed.bytes, p.objects.iter().map(|o| o.size).sum::<u64>());
            if n >= 100 {
                assert!(
                    packed.packed_len() * 4 < json.len(),
                    "{n} objects: {} packed bytes for {} of JSON",
                    packed.packed_len(),
                    json.len()
                );
            }
        }
    }
}
