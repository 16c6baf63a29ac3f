//! Planning: a job is split into one shard per hour of its range, and each shard's hour prefix
//! is listed once, when the job is planned: the listing pins the objects (key, size, ETag,
//! VersionId) that every attempt of the shard reads.

use std::sync::Arc;

use rewind_common::job::{PackedPlan, ShardPlan};
use rewind_common::storage::{ObjectMeta, ObjectSource, OutputStore, StorageError};
use rewind_common::{JobSpec, OutputKeys, ShardId};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Hour prefixes listed (and plan objects written) at the same time.
pub const PLAN_CONCURRENCY: usize = 16;

/// One planned shard and the prefix it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedShard {
    pub id: ShardId,
    pub prefix: String,
}

/// One shard per hour of the range; with a layout by day, one per day (the shard's id is the
/// day's first hour in the range).
pub fn plan(spec: &JobSpec) -> Vec<PlannedShard> {
    let daily = spec.layout.is_daily();
    spec.range
        .hours()
        .filter(|hour| !daily || hour.hour() == 0 || *hour == spec.range.first)
        .map(|hour| PlannedShard {
            id: ShardId(hour),
            prefix: spec.layout.prefix(hour, &spec.org),
        })
        .collect()
}

/// Runs `f` on the blocking pool for every item, `PLAN_CONCURRENCY` at a time; results in order.
async fn concurrently<T, R>(
    items: Vec<T>,
    f: impl Fn(T) -> Result<R, StorageError> + Send + Sync + 'static,
) -> Result<Vec<R>, StorageError>
where
    T: Send + 'static,
    R: Send + 'static,
{
    let f = Arc::new(f);
    let permits = Arc::new(Semaphore::new(PLAN_CONCURRENCY));
    let mut set = JoinSet::new();
    let n = items.len();
    for (i, item) in items.into_iter().enumerate() {
        let (f, permits) = (f.clone(), permits.clone());
        set.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let r = tokio::task::spawn_blocking(move || f(item)).await;
            (i, r)
        });
    }
    let mut out: Vec<Option<R>> = (0..n).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (i, r) = joined.map_err(|e| StorageError::Unavailable {
            what: "planning".into(),
            why: e.to_string(),
        })?;
        let r = r.map_err(|e| StorageError::Unavailable {
            what: "planning".into(),
            why: e.to_string(),
        })?;
        // The first error ends planning; dropping the set cancels the rest.
        out[i] = Some(r?);
    }
    Ok(out.into_iter().flatten().collect())
}

/// Lists every shard's prefix and pins what is there. Never lists outside the job's hours.
/// Denied access fails the whole plan (no shard could do better); any other listing failure is
/// recorded in that shard's plan, so the other hours still run. Each plan is packed as soon as
/// its prefix is listed: a job's listings are held until they are stored.
pub async fn pin(
    source: Arc<dyn ObjectSource>,
    spec: &JobSpec,
) -> Result<Vec<PackedPlan>, StorageError> {
    if spec.layout.is_undated() {
        return Ok(packed(undated_plans(source, spec).await?));
    }
    let shards = plan(spec);
    let only = spec.object.clone();
    let plans = concurrently(shards, move |s| {
        let (mut objects, unlisted) = match source.list(&s.prefix) {
            Ok(objects) => (objects, None),
            Err(e @ StorageError::Denied { .. }) => return Err(e),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        if let Some(key) = &only {
            objects.retain(|o| &o.key == key);
        }
        Ok(PackedPlan::pack(&ShardPlan {
            shard: s.id,
            prefix: s.prefix,
            objects,
            unlisted,
        }))
    })
    .await?;
    // (With --object, a plan holds that object or nothing.)
    if let Some(key) = &spec.object
        && plans.iter().all(|p| p.objects == 0)
    {
        return Err(StorageError::NotFound {
            what: format!("--object {key} in the job's hours"),
        });
    }
    Ok(plans)
}

/// Plans packed ([`PackedPlan`]).
pub fn packed(plans: Vec<ShardPlan>) -> Vec<PackedPlan> {
    plans.iter().map(PackedPlan::pack).collect()
}

/// An undated layout's shards (Kafka Connect's default partitioner): everything below its
/// prefix, listed once, in key order, grouped by size; the workers pick records by their
/// archived timestamps.
async fn undated_plans(
    source: Arc<dyn ObjectSource>,
    spec: &JobSpec,
) -> Result<Vec<ShardPlan>, StorageError> {
    let prefix = spec.layout.prefix(spec.range.first, &spec.org);
    let only = spec.object.clone();
    let mut objects = tokio::task::spawn_blocking(move || source.list(&prefix))
        .await
        .map_err(|e| StorageError::Unavailable {
            what: "listing the archive".into(),
            why: e.to_string(),
        })??;
    if let Some(key) = &only {
        objects.retain(|o| &o.key == key);
    }
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(grouped(objects, INGEST_SHARD_OBJECTS, INGEST_SHARD_BYTES))
}

/// Objects a landing-zone ingest shard reads at most, and bytes.
pub const INGEST_SHARD_OBJECTS: usize = 256;
pub const INGEST_SHARD_BYTES: u64 = 256 << 20;

/// The shards of a landing-zone ingest: every object below the source, whatever its name
/// (names with a segment starting `_` or `.` are markers and hidden files, left alone), in key
/// order, in groups of up to 256 objects and 256 MiB (ids are hours from the epoch: shard `n`
/// is hour `n`).
pub async fn ingest_plans(source: Arc<dyn ObjectSource>) -> Result<Vec<ShardPlan>, StorageError> {
    let mut objects = tokio::task::spawn_blocking(move || source.list(""))
        .await
        .map_err(|e| StorageError::Unavailable {
            what: "listing the landing zone".into(),
            why: e.to_string(),
        })??;
    objects.retain(|o| !o.key.split('/').any(|s| s.starts_with(['_', '.'])));
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(grouped(objects, INGEST_SHARD_OBJECTS, INGEST_SHARD_BYTES))
}

/// Objects in order, in groups of up to `n` objects and `bytes` bytes, each group one shard
/// (ids are hours from the epoch: shard `i` is hour `i`).
fn grouped(objects: Vec<ObjectMeta>, n: usize, max_bytes: u64) -> Vec<ShardPlan> {
    let mut plans: Vec<ShardPlan> = Vec::new();
    let mut bytes = 0;
    for o in objects {
        let full = plans
            .last()
            .is_none_or(|p| p.objects.len() >= n || bytes + o.size > max_bytes);
        if full {
            plans.push(ShardPlan {
                shard: ShardId(rewind_common::Hour::from_epoch_hours(plans.len() as i64)),
                prefix: String::new(),
                objects: Vec::new(),
                unlisted: None,
            });
            bytes = 0;
        }
        bytes += o.size;
        plans.last_mut().expect("a plan").objects.push(o);
    }
    plans
}

/// Files a distributed repair shard rewrites at most, and bytes.
pub const REPAIR_SHARD_FILES: usize = 16;
pub const REPAIR_SHARD_BYTES: u64 = 1 << 30;

/// The shards of a distributed repair: the dataset's files (its table's, for a Delta table)
/// in groups of up to 16 files and 1 GiB, each group one shard (ids are hours from the epoch:
/// shard `n` is hour `n`).
pub fn repair_plans(output: &dyn OutputStore) -> Result<Vec<ShardPlan>, StorageError> {
    let files = rewind_common::storage::dataset_files(output)?;
    Ok(grouped(files, REPAIR_SHARD_FILES, REPAIR_SHARD_BYTES))
}

/// Writes one plan object per shard into the job's `_rewind/plan/` (distributed mode: the
/// workers read them). The plans are shared, not copied.
pub async fn store_plans(
    output: Arc<dyn OutputStore>,
    spec: &JobSpec,
    plans: Arc<Vec<PackedPlan>>,
) -> Result<(), StorageError> {
    let keys = OutputKeys::of(spec);
    concurrently((0..plans.len()).collect(), move |i| {
        let p = &plans[i];
        output.put(&keys.shard_plan(p.shard), &p.json()).map(|_| ())
    })
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rewind_common::{HourRange, JobId, Layout, OrgId};

    #[test]
    fn one_shard_per_hour_with_distinct_prefixes() {
        let spec = JobSpec {
            job: JobId::generate(),
            org: OrgId::parse("TN-1").unwrap(),
            range: HourRange::parse("2024-02-28T22", "2024-03-01", 1000).unwrap(),
            layout: Layout::default(),
            arrival_filter: false,
            max_event_bytes: 1 << 20,
            max_attempts: 3,
            treatment: Default::default(),
            sink: Default::default(),
            object: None,
            places: rewind_common::request::JobLocations::new(
                rewind_common::Location::Local("/nonexistent/source".into()),
                rewind_common::Location::Local("/nonexistent/dest".into()),
            ),
            table_format: Default::default(),
            repair: None,
            guard: None,
            tenant_max_shards: None,
            tenant_budget: None,
            partition_by: None,
            ingest: false,
            ingest_to: None,
        };
        let shards = plan(&spec);
        assert_eq!(shards.len(), 2 + 24 + 24);
        assert_eq!(shards[0].prefix, "main_stream/2024/02/28/22/");
        assert_eq!(shards[2].prefix, "main_stream/2024/02/29/00/");
        assert_eq!(shards.last().unwrap().id.to_string(), "2024030123");
        let mut prefixes: Vec<_> = shards.iter().map(|s| &s.prefix).collect();
        prefixes.dedup();
        assert_eq!(prefixes.len(), shards.len());
    }
}
