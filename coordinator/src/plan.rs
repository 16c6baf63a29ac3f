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
        return undated_plans(source, spec).await;
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
/// archived timestamps. Each group is packed as soon as it is full: the listing is held a page
/// at a time, not whole.
async fn undated_plans(
    source: Arc<dyn ObjectSource>,
    spec: &JobSpec,
) -> Result<Vec<PackedPlan>, StorageError> {
    let prefix = spec.layout.prefix(spec.range.first, &spec.org);
    let only = spec.object.clone();
    listed_in_groups("listing the archive", move |groups| {
        source.list_pages(&prefix, &mut |page| {
            for o in page {
                if only.as_ref().is_none_or(|key| &o.key == key) {
                    groups.push(o);
                }
            }
            Ok(())
        })
    })
    .await
}

/// Objects a landing-zone ingest shard reads at most, and bytes.
pub const INGEST_SHARD_OBJECTS: usize = 256;
pub const INGEST_SHARD_BYTES: u64 = 256 << 20;

/// The shards of a landing-zone ingest: every object below the source, whatever its name
/// (names with a segment starting `_` or `.` are markers and hidden files, left alone), in key
/// order, in groups of up to 256 objects and 256 MiB (ids are hours from the epoch: shard `n`
/// is hour `n`), each packed as soon as it is full.
pub async fn ingest_plans(source: Arc<dyn ObjectSource>) -> Result<Vec<PackedPlan>, StorageError> {
    listed_in_groups("listing the landing zone", move |groups| {
        source.list_pages("", &mut |page| {
            for o in page {
                if !o.key.split('/').any(|s| s.starts_with(['_', '.'])) {
                    groups.push(o);
                }
            }
            Ok(())
        })
    })
    .await
}

/// Runs a paged listing (`list`, which pushes objects in key order) on a blocking thread into
/// ingest-sized groups, packed as they fill.
async fn listed_in_groups(
    what: &'static str,
    list: impl FnOnce(&mut Groups<PackedPlan>) -> Result<(), StorageError> + Send + 'static,
) -> Result<Vec<PackedPlan>, StorageError> {
    tokio::task::spawn_blocking(move || {
        let mut groups = Groups::new(INGEST_SHARD_OBJECTS, INGEST_SHARD_BYTES, |p| {
            PackedPlan::pack(&p)
        });
        list(&mut groups)?;
        Ok(groups.finish())
    })
    .await
    .map_err(|e| StorageError::Unavailable {
        what: what.into(),
        why: e.to_string(),
    })?
}

/// Objects in order, in groups of up to `n` objects and `bytes` bytes, each group one shard
/// (ids are hours from the epoch: shard `i` is hour `i`).
fn grouped(objects: Vec<ObjectMeta>, n: usize, max_bytes: u64) -> Vec<ShardPlan> {
    let mut groups = Groups::new(n, max_bytes, |p| p);
    for o in objects {
        groups.push(o);
    }
    groups.finish()
}

/// Objects pushed in order into groups of up to `n` objects and `max_bytes` bytes; each group,
/// once full, sealed (`seal`: kept as it is, or packed).
struct Groups<T> {
    n: usize,
    max_bytes: u64,
    open: Option<(ShardPlan, u64)>,
    sealed: Vec<T>,
    seal: fn(ShardPlan) -> T,
}

impl<T> Groups<T> {
    fn new(n: usize, max_bytes: u64, seal: fn(ShardPlan) -> T) -> Self {
        Groups {
            n,
            max_bytes,
            open: None,
            sealed: Vec::new(),
            seal,
        }
    }

    fn push(&mut self, o: ObjectMeta) {
        if let Some((plan, bytes)) = &self.open
            && (plan.objects.len() >= self.n || bytes + o.size > self.max_bytes)
        {
            let (plan, _) = self.open.take().expect("an open group");
            self.sealed.push((self.seal)(plan));
        }
        let index = self.sealed.len() as i64;
        let (plan, bytes) = self.open.get_or_insert_with(|| {
            (
                ShardPlan {
                    shard: ShardId(rewind_common::Hour::from_epoch_hours(index)),
                    prefix: String::new(),
                    objects: Vec::new(),
                    unlisted: None,
                },
                0,
            )
        });
        *bytes += o.size;
        plan.objects.push(o);
    }

    fn finish(mut self) -> Vec<T> {
        if let Some((plan, _)) = self.open.take() {
            self.sealed.push((self.seal)(plan));
        }
        self.sealed
    }
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

    fn object(key: &str, size: u64) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size,
            etag: Some(format!("\"{key}\"")),
            version: None,
        }
    }

    /// Groups close at `n` objects or before `max_bytes` would be passed, in order; an object
    /// larger than the limit is a group of its own; ids count hours from the epoch.
    #[test]
    fn groups_close_by_count_and_bytes_in_order() {
        let sizes = [40, 40, 40, 10, 150, 5, 5, 5, 5];
        let objects: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, s)| object(&format!("k{i}"), *s))
            .collect();
        let plans = grouped(objects.clone(), 3, 100);
        let keys: Vec<Vec<&str>> = plans
            .iter()
            .map(|p| p.objects.iter().map(|o| o.key.as_str()).collect())
            .collect();
        assert_eq!(
            keys,
            [
                vec!["k0", "k1"],
                vec!["k2", "k3"],
                vec!["k4"],
                vec!["k5", "k6", "k7"],
                vec!["k8"]
            ]
        );
        for (i, p) in plans.iter().enumerate() {
            assert_eq!(p.shard.0, rewind_common::Hour::from_epoch_hours(i as i64));
        }
        // Packed as they fill: the same plans.
        let mut packed = Groups::new(3, 100, |p| PackedPlan::pack(&p));
        for o in objects {
            packed.push(o);
        }
        let packed = packed.finish();
        assert_eq!(packed.len(), plans.len());
        for (p, plan) in packed.iter().zip(&plans) {
            assert_eq!(p.unpack(), *plan);
        }
    }

    /// A landing zone is grouped from a paged listing: markers and hidden files left out, every
    /// other object in one group, in key order.
    #[tokio::test]
    async fn an_ingest_groups_a_paged_listing_without_markers() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "b/2.json",
            "a/1.json",
            "_SUCCESS",
            "a/.hidden",
            "c/_tmp/x",
            "c/3.json",
        ] {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, name).unwrap();
        }
        let source: Arc<dyn ObjectSource> =
            Arc::new(rewind_common::storage::LocalSource::new(dir.path()).unwrap());
        let plans = ingest_plans(source).await.unwrap();
        assert_eq!(plans.len(), 1);
        let plan = plans[0].unpack();
        let keys: Vec<_> = plan.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["a/1.json", "b/2.json", "c/3.json"]);
    }
}
