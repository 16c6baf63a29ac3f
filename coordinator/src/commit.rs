//! The job commit: runs once every shard is done or failed.
//!
//! 1. Read the manifest of every committed shard (the done record points to it).
//! 2. Delete every object under the job's prefix (outputs, failed and unrecoverable outputs) that
//!    no committed manifest references: leftovers of failed or fenced attempts.
//! 3. Write the job manifest (every file with size and rows, totals, failed shards).
//! 4. Write `_SUCCESS` only when every shard is done. Readers trust a job after `_SUCCESS`.

use std::collections::{BTreeMap, HashSet};

use rewind_common::job::{OutputFileEntry, ShardManifest, add_counts};
use rewind_common::lifecycle::{FailedShard, JobManifest, JobPhase};
use rewind_common::output::staged;
use rewind_common::shard_store::{ShardCounts, ShardState};
use rewind_common::storage::{OutputStore, StorageError};
use rewind_common::{JobSpec, OutputKeys, ShardId};

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("shard {shard}: manifest {key} is missing or unreadable: {why}")]
    Manifest {
        shard: ShardId,
        key: String,
        why: String,
    },
    #[error("shard {0} is not finished")]
    Unfinished(ShardId),
    #[error("recording the job's change: {0}")]
    Change(String),
}

impl From<rewind_common::change::ChangeError> for CommitError {
    fn from(e: rewind_common::change::ChangeError) -> Self {
        match e {
            rewind_common::change::ChangeError::Storage(s) => CommitError::Storage(s),
            other => CommitError::Change(other.to_string()),
        }
    }
}

/// Commits a job whose shards are all finished (done or failed).
pub fn commit_job(
    spec: &JobSpec,
    shards: &[(ShardId, ShardState)],
    output: &dyn OutputStore,
    sides: &[&dyn OutputStore],
) -> Result<JobManifest, CommitError> {
    commit(spec, shards, output, sides, false)
}

/// Ends a cancelled job once no attempt is in flight: orphans swept, manifest written with state
/// `cancelled` (unfinished shards are counted as not done), never `_SUCCESS`.
pub fn commit_cancelled(
    spec: &JobSpec,
    shards: &[(ShardId, ShardState)],
    output: &dyn OutputStore,
    sides: &[&dyn OutputStore],
) -> Result<JobManifest, CommitError> {
    commit(spec, shards, output, sides, true)
}

/// Shard manifests read at once (a year of hours on S3 is thousands of GETs): up to
/// `MANIFEST_READS` at a time, returned in the order given.
const MANIFEST_READS: usize = 16;

fn read_manifests(
    output: &dyn OutputStore,
    done: &[(ShardId, &str)],
    objects: PerObject,
) -> Result<Vec<(String, ShardManifest)>, CommitError> {
    let read = |(shard, key): &(ShardId, &str)| -> Result<(String, ShardManifest), CommitError> {
        let bad = |why: String| CommitError::Manifest {
            shard: *shard,
            key: key.to_string(),
            why,
        };
        let body = output.get(key)?.ok_or_else(|| bad("not found".into()))?;
        let mut m: ShardManifest = serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?;
        if objects == PerObject::Drop {
            m.objects = Vec::new();
            m.skipped_objects = Vec::new();
        }
        Ok((key.to_string(), m))
    };
    if done.len() <= 1 {
        return done.iter().map(read).collect();
    }
    let per = done.len().div_ceil(MANIFEST_READS);
    std::thread::scope(|s| {
        let parts: Vec<_> = done
            .chunks(per)
            .map(|chunk| s.spawn(move || chunk.iter().map(read).collect::<Result<Vec<_>, _>>()))
            .collect();
        let mut all = Vec::with_capacity(done.len());
        for part in parts {
            all.extend(
                part.join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))?,
            );
        }
        Ok(all)
    })
}

/// Whether a commit keeps each shard manifest's per-object statistics. A recovery's commit
/// does not use them (they stay in the shard manifests), and a year of hours of 100 small
/// objects each held ~130 MB of them at once (peak RSS 556 MB, `BENCH_CASES=year-100
/// python3 bench/memory.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PerObject {
    Keep,
    Drop,
}

/// The committed shards and where their manifests are.
fn done_manifests(shards: &[(ShardId, ShardState)]) -> Vec<(ShardId, &str)> {
    shards
        .iter()
        .filter_map(|(shard, state)| match state {
            ShardState::Done(done) => Some((*shard, done.manifest_key.as_str())),
            _ => None,
        })
        .collect()
}

/// The shards that failed; a shard still pending or running is an error unless the job was
/// cancelled (it then just did not finish).
fn failed_shards(
    shards: &[(ShardId, ShardState)],
    cancelled: bool,
) -> Result<Vec<FailedShard>, CommitError> {
    let mut failed = Vec::new();
    for (shard, state) in shards {
        match state {
            ShardState::Done(_) => {}
            ShardState::Failed { attempts, reason } => failed.push(FailedShard {
                shard: *shard,
                attempts: *attempts,
                reason: reason.clone(),
            }),
            ShardState::Pending { .. } | ShardState::Running { .. } if cancelled => {}
            ShardState::Pending { .. } | ShardState::Running { .. } => {
                return Err(CommitError::Unfinished(*shard));
            }
        }
    }
    Ok(failed)
}

/// How a job ended: cancelled, or succeeded when no shard failed.
fn phase(cancelled: bool, failed_shards: &[FailedShard]) -> JobPhase {
    if cancelled {
        JobPhase::Cancelled
    } else if failed_shards.is_empty() {
        JobPhase::Succeeded
    } else {
        JobPhase::Failed
    }
}

/// Promotes staged outputs to their names, several at a time (on S3 each is a server-side copy).
fn promote_all(
    mut files: Vec<(&dyn OutputStore, &mut OutputFileEntry)>,
) -> Result<(), CommitError> {
    if files.is_empty() {
        return Ok(());
    }
    let per = files.len().div_ceil(MANIFEST_READS);
    std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks_mut(per)
            .map(|chunk| {
                s.spawn(move || {
                    for (store, f) in chunk.iter_mut() {
                        let written = store.promote(&staged(&f.key), &f.key)?;
                        f.size = written.size;
                        f.version = written.version;
                    }
                    Ok::<_, StorageError>(())
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?;
        }
        Ok(())
    })
}

fn commit(
    spec: &JobSpec,
    shards: &[(ShardId, ShardState)],
    output: &dyn OutputStore,
    sides: &[&dyn OutputStore],
    cancelled: bool,
) -> Result<JobManifest, CommitError> {
    if spec.repair.is_some() {
        return commit_repair(spec, shards, output, cancelled);
    }
    let keys = OutputKeys::new(&spec.job);
    let done = done_manifests(shards);
    let mut manifests = read_manifests(output, &done, PerObject::Drop)?;
    // The committed attempts' outputs become visible now, and only now: attempts write staged
    // names, so a stale attempt (a worker frozen past its lease) can never add a visible file,
    // not even after this commit. Idempotent: a commit run again finds them promoted.
    let (failed_store, unrecoverable_store) = match sides {
        [f, u, ..] => (*f, *u),
        [f] => (*f, *f),
        [] => (output, output),
    };
    let mut to_promote: Vec<(&dyn OutputStore, &mut OutputFileEntry)> = Vec::new();
    for (_, m) in manifests.iter_mut() {
        for f in m.files.iter_mut() {
            to_promote.push((output, f));
        }
        if let Some(f) = m.failed_file.as_mut() {
            to_promote.push((failed_store, f));
        }
        if let Some(f) = m.unrecoverable_file.as_mut() {
            to_promote.push((unrecoverable_store, f));
        }
    }
    promote_all(to_promote)?;
    let attempts = shards
        .iter()
        .filter_map(|(shard, state)| match state {
            ShardState::Done(done) => Some((shard.to_string(), done.attempt)),
            _ => None,
        })
        .collect();
    let failed_shards = failed_shards(shards, cancelled)?;

    let mut keep: HashSet<String> = HashSet::new();
    let mut keep_failed: HashSet<String> = HashSet::new();
    let mut counts = ShardCounts::default();
    let mut by_reason = BTreeMap::new();
    let mut filtered_by_reason = BTreeMap::new();
    let mut files = Vec::new();
    let mut kafka_offsets = BTreeMap::new();
    let mut kafka_ranges_complete = true;
    let mut failed_files = Vec::new();
    let mut unrecoverable_files = Vec::new();
    for (key, m) in &manifests {
        keep.insert(key.clone());
        for f in &m.files {
            keep.insert(f.key.clone());
            files.push(f.clone());
        }
        if let Some(f) = &m.failed_file {
            keep_failed.insert(f.key.clone());
            failed_files.push(f.clone());
        }
        if let Some(f) = &m.unrecoverable_file {
            keep_failed.insert(f.key.clone());
            unrecoverable_files.push(f.clone());
        }
        counts.add(&m.counts);
        rewind_common::output::add_ranges(&mut kafka_offsets, &m.kafka_offsets);
        kafka_ranges_complete &= m.kafka_ranges_complete;
        add_counts(&mut by_reason, &m.failed_by_reason, |a, b| *a += b);
        add_counts(&mut filtered_by_reason, &m.filtered_by_reason, |a, b| {
            *a += b
        });
    }

    // Orphans: anything under the job's prefix that no committed shard references.
    let prefix = keys.job_prefix();
    let mut orphans = 0;
    let control = [keys.job_manifest(), keys.success_marker()];
    // The shard plans stay: they record what the job was pinned to read.
    let plans = keys.plan_prefix();
    for o in output.list(&prefix)? {
        // (keep_failed too: the failed output may be the same store as the output.)
        if !keep.contains(&o.key)
            && !keep_failed.contains(&o.key)
            && !control.contains(&o.key)
            && !o.key.starts_with(&plans)
        {
            output.delete(&o.key)?;
            orphans += 1;
        }
    }
    for side in sides {
        for o in side.list(&prefix)? {
            if !keep_failed.contains(&o.key) && !keep.contains(&o.key) && !control.contains(&o.key)
            {
                side.delete(&o.key)?;
                orphans += 1;
            }
        }
    }
    // Writes a killed attempt started and never finished (temporary files, incomplete
    // multipart uploads) are invisible to listings, and would stay (and be billed) forever.
    // Not being able to (a store without ListMultipartUploads, a role without the permission)
    // does not fail the job: its outputs are complete; a bucket lifecycle rule
    // (AbortIncompleteMultipartUpload) is then the way to clean up.
    for store in std::iter::once(output).chain(sides.iter().copied()) {
        match store.sweep_unfinished(&prefix) {
            Ok(n) => orphans += n,
            Err(e) => tracing::warn!(
                store = %store.describe(),
                error = %e,
                "cannot discard unfinished writes of killed attempts"
            ),
        }
    }

    files.sort_by(|a, b| a.key.cmp(&b.key));
    failed_files.sort_by(|a, b| a.key.cmp(&b.key));
    unrecoverable_files.sort_by(|a, b| a.key.cmp(&b.key));
    let state = phase(cancelled, &failed_shards);
    let manifest = JobManifest {
        job_id: spec.job.to_string(),
        state,
        spec: spec.clone(),
        shards: shards.len() as u64,
        shards_done: manifests.len() as u64,
        failed_shards,
        counts,
        failed_by_reason: by_reason,
        filtered_by_reason,
        files,
        failed_files,
        unrecoverable_files,
        orphans_deleted: orphans,
        attempts,
        kafka_offsets,
        kafka_ranges_complete,
        repair: None,
    };
    let body = serde_json::to_vec_pretty(&manifest).map_err(|e| CommitError::Manifest {
        shard: ShardId(spec.range.first),
        key: keys.job_manifest(),
        why: e.to_string(),
    })?;
    output.put(&keys.job_manifest(), &body)?;
    // A test hook: die between the job manifest and `_SUCCESS` (the next leader commits again).
    if rewind_common::failpoint("crash-before-success-marker") {
        std::process::abort();
    }
    if state == JobPhase::Succeeded {
        output.put(&keys.success_marker(), b"")?;
    }
    Ok(manifest)
}

/// The commit of a distributed repair: every shard rewrote (and staged) its files; the whole
/// rewrite becomes one recorded change of the dataset (`change::apply_over`, or one commit of a
/// Delta table's log), refused if a file changed since its shard read it. All or nothing: with
/// a shard failed or the job cancelled, nothing is applied and the staged files are dropped.
fn commit_repair(
    spec: &JobSpec,
    shards: &[(ShardId, ShardState)],
    output: &dyn OutputStore,
    cancelled: bool,
) -> Result<JobManifest, CommitError> {
    use rewind_common::change::{self, ChangeKind, Meta, Op};
    use rewind_common::lifecycle::RepairOutcome;
    use rewind_common::table::TableFile;
    let keys = OutputKeys::of(spec);
    let done = done_manifests(shards);
    // (A repair shard's objects are the dataset files it read: counted below.)
    let manifests = read_manifests(output, &done, PerObject::Keep)?;
    let failed_shards = failed_shards(shards, cancelled)?;
    let input: rewind_common::job::RepairInput = match output.get(&keys.repair_input())? {
        Some(b) => serde_json::from_slice(&b).map_err(|e| CommitError::Change(e.to_string()))?,
        None => Default::default(),
    };
    let plans: u64 = shards.len() as u64;
    let mut outcome = RepairOutcome::default();
    let mut counts = ShardCounts::default();
    let mut found: HashSet<String> = HashSet::new();
    let (mut ops, mut read) = (Vec::new(), BTreeMap::new());
    let (mut adds, mut removes) = (Vec::new(), Vec::new());
    let table = output.table();
    let table_files = match &table {
        Some(t) => t.files()?,
        None => BTreeMap::new(),
    };
    let mut staged = Vec::new();
    for (_, m) in &manifests {
        counts.add(&m.counts);
        outcome.files_read += m.files_read;
        outcome.bytes_written += m.bytes_written;
        outcome.files_in_dataset += m.objects.len() as u64;
        found.extend(m.found_keys.iter().cloned());
        for f in &m.repaired {
            outcome.rows_deleted += f.deleted;
            outcome.rows_updated += f.updated;
            staged.extend(f.staged.clone());
            read.insert(f.key.clone(), f.seen.clone());
            if let Some(old) = table_files.get(&f.key) {
                removes.push(old.clone());
                if let Some(new) = &f.staged {
                    adds.push(TableFile {
                        key: new.clone(),
                        size: f.size,
                        rows: Some(f.rows_after),
                        partition: old.partition.clone(),
                    });
                }
            }
            match &f.staged {
                None => {
                    outcome.files_removed += 1;
                    ops.push(Op::Delete { key: f.key.clone() });
                }
                Some(from) => {
                    outcome.files_rewritten += 1;
                    ops.push(Op::Put {
                        key: f.key.clone(),
                        from: from.clone(),
                        rows: Some(f.rows_after),
                    });
                }
            }
        }
    }
    outcome.bytes_read = counts.bytes;
    outcome.delete_keys_not_found = input
        .delete
        .iter()
        .filter(|k| !found.contains(*k))
        .take(1000)
        .cloned()
        .collect();
    let complete = !cancelled && failed_shards.is_empty();
    if complete && !ops.is_empty() {
        let meta = Meta {
            job: Some(spec.job.to_string()),
            who: None,
            spec: serde_json::to_value(spec).ok(),
            counts: None,
        };
        // A commit run again (the next leader) first finishes an apply the last one left
        // under way, then finds its change by the job id its id ends with.
        change::resume_pending(output)?;
        let already = change::job_change(output, spec.job.as_str())?;
        let recorded = match already {
            Some(c) => c,
            None => {
                let applied = match &table {
                    Some(_) => {
                        let op = if adds.is_empty() { "DELETE" } else { "UPDATE" };
                        change::apply_table(output, ChangeKind::Repair, meta, op, adds, removes)
                    }
                    None => change::apply_over(output, ChangeKind::Repair, meta, ops, &read),
                };
                match applied {
                    Ok(c) => c,
                    // Refused before its intent (a file changed since its shard read it): the
                    // staged files are nobody's.
                    Err(
                        e @ (change::ChangeError::Conflict(_) | change::ChangeError::Refused(_)),
                    ) => {
                        for key in &staged {
                            let _ = output.delete(key);
                        }
                        return Err(e.into());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        outcome.change = Some(recorded.id);
    } else {
        // Nothing applied: what the shards staged is nobody's.
        for key in &staged {
            output.delete(key)?;
        }
    }
    let state = phase(cancelled, &failed_shards);
    let manifest = JobManifest {
        job_id: spec.job.to_string(),
        state,
        spec: spec.clone(),
        shards: plans,
        shards_done: manifests.len() as u64,
        failed_shards,
        counts,
        failed_by_reason: BTreeMap::new(),
        filtered_by_reason: BTreeMap::new(),
        files: Vec::new(),
        failed_files: Vec::new(),
        unrecoverable_files: Vec::new(),
        orphans_deleted: 0,
        attempts: BTreeMap::new(),
        kafka_offsets: BTreeMap::new(),
        kafka_ranges_complete: true,
        repair: Some(outcome),
    };
    let body =
        serde_json::to_vec_pretty(&manifest).map_err(|e| CommitError::Change(e.to_string()))?;
    output.put(&keys.job_manifest(), &body)?;
    if state == JobPhase::Succeeded {
        output.put(&keys.success_marker(), b"")?;
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rewind_common::shard_store::ShardDone;
    use rewind_common::storage::LocalOutput;
    use rewind_common::{HourRange, JobId, Layout, OrgId};

    fn spec() -> JobSpec {
        JobSpec {
            job: JobId::generate(),
            org: OrgId::parse("TN-1").unwrap(),
            range: HourRange::parse("2024-01-01T00", "2024-01-01T01", 10).unwrap(),
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
        }
    }

    fn manifest(
        spec: &JobSpec,
        shard: ShardId,
        attempt: u32,
        files: Vec<OutputFileEntry>,
    ) -> ShardManifest {
        ShardManifest {
            job: spec.job.clone(),
            shard,
            attempt,
            prefix: String::new(),
            files,
            failed_file: None,
            unrecoverable_file: None,
            objects: vec![],
            skipped_objects: vec![],
            counts: ShardCounts {
                recovered: 5,
                ..Default::default()
            },
            failed_by_reason: BTreeMap::new(),
            filtered_by_reason: BTreeMap::new(),
            kafka_offsets: BTreeMap::new(),
            kafka_ranges_complete: true,
            repaired: vec![],
            found_keys: vec![],
            files_read: 0,
            bytes_written: 0,
        }
    }

    #[test]
    fn deletes_orphans_and_marks_success_only_when_all_done() {
        let dir = tempfile::tempdir().unwrap();
        let out = LocalOutput::new(dir.path());
        let failed = LocalOutput::new(dir.path().join("_failed"));
        let spec = spec();
        let keys = OutputKeys::new(&spec.job);
        let hours: Vec<ShardId> = spec.range.hours().map(ShardId).collect();
        // Attempt 1 of shard 0 died and left a file; attempt 2 committed.
        let dead = keys.data_file(&spec.org, hours[0], 1, 0);
        let live = keys.data_file(&spec.org, hours[0], 2, 0);
        out.put(&dead, b"dead").unwrap();
        out.put(&live, b"live").unwrap();
        // Attempt 1 was killed while writing its next file: a temporary file stays behind.
        let unfinished = dir
            .path()
            .join(&live)
            .with_file_name(".part-1.parquet.4242-7.tmp");
        std::fs::write(&unfinished, b"half a file").unwrap();
        failed.put(&keys.failed_file(hours[0], 1), b"{}\n").unwrap();
        let m = manifest(
            &spec,
            hours[0],
            2,
            vec![OutputFileEntry {
                key: live.clone(),
                size: 4,
                rows: 5,
                version: None,
            }],
        );
        let mkey = keys.shard_manifest(hours[0], 2);
        out.put(&mkey, &serde_json::to_vec(&m).unwrap()).unwrap();
        let done = ShardState::Done(ShardDone {
            attempt: 2,
            manifest_key: mkey,
            counts: m.counts.clone(),
        });
        let failed_state = ShardState::Failed {
            attempts: 3,
            reason: "boom".into(),
        };

        let result = commit_job(
            &spec,
            &[(hours[0], done.clone()), (hours[1], failed_state)],
            &out,
            &[&failed],
        )
        .unwrap();
        assert_eq!(result.state, JobPhase::Failed);
        assert_eq!(result.orphans_deleted, 3);
        assert!(!unfinished.exists(), "the killed attempt's unfinished file");
        assert_eq!(result.failed_shards[0].reason, "boom");
        assert!(out.get(&dead).unwrap().is_none());
        assert!(out.get(&live).unwrap().is_some());
        assert!(out.get(&keys.job_manifest()).unwrap().is_some());
        assert!(
            out.get(&keys.success_marker()).unwrap().is_none(),
            "no _SUCCESS for a failed job"
        );

        let (other, _) = (hours[1], ());
        let m2 = manifest(&spec, other, 1, vec![]);
        let m2key = keys.shard_manifest(other, 1);
        out.put(&m2key, &serde_json::to_vec(&m2).unwrap()).unwrap();
        let done2 = ShardState::Done(ShardDone {
            attempt: 1,
            manifest_key: m2key,
            counts: m2.counts.clone(),
        });
        let ok = commit_job(&spec, &[(hours[0], done), (other, done2)], &out, &[&failed]).unwrap();
        assert_eq!(ok.state, JobPhase::Succeeded);
        assert_eq!(ok.counts.recovered, 10);
        assert_eq!(ok.files.len(), 1);
        assert!(out.get(&keys.success_marker()).unwrap().is_some());
    }

    /// Many shards: manifests are read concurrently, every one of them, in the shards' order;
    /// one missing among them fails the commit naming that shard.
    #[test]
    fn many_shard_manifests_are_all_read_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let out = LocalOutput::new(dir.path());
        let mut spec = spec();
        spec.range = HourRange::parse("2024-01-01T00", "2024-01-03T02", 100).unwrap();
        let keys = OutputKeys::new(&spec.job);
        let mut shards = Vec::new();
        for (i, hour) in spec.range.hours().enumerate() {
            let shard = ShardId(hour);
            let mut m = manifest(&spec, shard, 1, vec![]);
            m.counts.recovered = i as u64 + 1;
            let key = keys.shard_manifest(shard, 1);
            out.put(&key, &serde_json::to_vec(&m).unwrap()).unwrap();
            let done = ShardDone {
                attempt: 1,
                manifest_key: key,
                counts: m.counts.clone(),
            };
            shards.push((shard, ShardState::Done(done)));
        }
        let n = shards.len() as u64;
        assert_eq!(n, 51);
        let job = commit_job(&spec, &shards, &out, &[]).unwrap();
        assert_eq!(job.state, JobPhase::Succeeded);
        assert_eq!(job.counts.recovered, n * (n + 1) / 2);

        let ShardState::Done(gone) = &shards[37].1 else {
            unreachable!()
        };
        std::fs::remove_file(dir.path().join(&gone.manifest_key)).unwrap();
        match commit_job(&spec, &shards, &out, &[]) {
            Err(CommitError::Manifest { shard, why, .. }) => {
                assert_eq!(shard, shards[37].0);
                assert_eq!(why, "not found");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_unfinished_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let out = LocalOutput::new(dir.path());
        let spec = spec();
        let shard = ShardId(spec.range.first);
        let running = ShardState::Running {
            attempt: 1,
            worker: "w".into(),
        };
        assert!(matches!(
            commit_job(&spec, &[(shard, running)], &out, &[&out]),
            Err(CommitError::Unfinished(_))
        ));
    }
}
