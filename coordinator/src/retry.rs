//! Running again only the shards of a finished job that did not succeed, into the same
//! execution — the steps both `rewind retry --dest` (in one process) and a coordinator's retry
//! job share. Blocking (object-store calls).
//!
//! 1. [`prepare`]: the job's manifest says which shards are done; its plans say which it had.
//!    The change id is chosen and the manifest kept under it, then a mark
//!    (`<execution>/_rewind/retry.json`) says a retry is under way.
//! 2. The caller runs the other shards with the job's own plans (the objects it pinned).
//! 3. [`complete`]: every shard, old and new, is committed as the job commit does (the
//!    execution gets its complete manifest, and `_SUCCESS` when all are done); then the retry is
//!    recorded as a change of its own, linked to the job's, and the mark dropped.
//!
//! Killed anywhere, running it again finishes it: before the commit it runs the shards again;
//! after it, it records the change (the commit and the record are idempotent).

use std::collections::BTreeSet;

use rewind_common::change::{self, Change, Retried, RetryMark};
use rewind_common::lifecycle::{JobManifest, JobPhase};
use rewind_common::shard_store::{ShardDone, ShardState};
use rewind_common::storage::{ObjectMeta, OutputStore, StorageError};
use rewind_common::{JobId, JobSpec, OutputKeys, ShardId};

use crate::commit::{CommitError, commit_cancelled, commit_job};

#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// Nothing to retry, or not a job a retry can complete: the request is at fault.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Commit(#[from] CommitError),
    #[error("recording the retry: {0}")]
    Change(#[from] change::ChangeError),
}

/// Where the mark of a retry under way lives: in the execution.
pub fn mark_key(job: &JobId) -> String {
    format!("{}_rewind/retry.json", OutputKeys::new(job).job_prefix())
}

/// What [`prepare`] found.
#[derive(Debug)]
pub enum Prepared {
    /// Shards to run: `todo` of the `total` the job planned.
    Run {
        mark: RetryMark,
        todo: Vec<ShardId>,
        total: usize,
        manifest: Box<JobManifest>,
    },
    /// A retry was killed after its commit rewrote the manifest: only its change is left to
    /// record ([`record`]).
    Record {
        mark: RetryMark,
        manifest: Box<JobManifest>,
    },
}

fn unreadable(key: &str, e: impl std::fmt::Display) -> RetryError {
    RetryError::Storage(StorageError::Unavailable {
        what: key.to_string(),
        why: e.to_string(),
    })
}

/// Whether a retry can complete a job of this kind.
pub fn check_kind(job: &JobId, spec: &JobSpec) -> Result<(), RetryError> {
    if spec.repair.is_some()
        || spec.ingest
        || spec.guard.is_some()
        || !spec.table_format.is_parquet()
    {
        return Err(RetryError::Refused(format!(
            "job {job} is a repair, an ingest, a guarded replay or a table job: a retry runs \
             recoveries and replays"
        )));
    }
    Ok(())
}

/// Step 1 (see the module docs): what is left to run, with the mark written.
pub fn prepare(store: &dyn OutputStore, job: &JobId) -> Result<Prepared, RetryError> {
    let keys = OutputKeys::new(job);
    let (manifest_key, mark_key) = (keys.job_manifest(), mark_key(job));
    let body = store.get(&manifest_key)?.ok_or_else(|| {
        RetryError::Refused(format!(
            "no finished job {job} in this destination (no {manifest_key})"
        ))
    })?;
    let manifest: JobManifest =
        serde_json::from_slice(&body).map_err(|e| unreadable(&manifest_key, e))?;
    let mark: Option<RetryMark> = match store.get(&mark_key)? {
        None => None,
        Some(b) => Some(serde_json::from_slice(&b).map_err(|e| unreadable(&mark_key, e))?),
    };
    let now = store
        .head(&manifest_key)?
        .ok_or_else(|| unreadable(&manifest_key, "gone"))?;
    if let Some(m) = &mark
        && !same(&m.manifest, &now)
    {
        return Ok(Prepared::Record {
            mark: m.clone(),
            manifest: Box::new(manifest),
        });
    }
    if manifest.state == JobPhase::Succeeded {
        return Err(RetryError::Refused(format!(
            "job {job} succeeded: every shard is done, nothing to retry"
        )));
    }
    check_kind(job, &manifest.spec)?;
    // Every shard the job planned, and those done.
    let all: Vec<ShardId> = store
        .list(&keys.plan_prefix())?
        .iter()
        .filter_map(|o| {
            let name = o.key.rsplit('/').next()?.strip_suffix(".json")?;
            ShardId::parse(name).ok()
        })
        .collect();
    let done: BTreeSet<&String> = manifest.attempts.keys().collect();
    let todo: Vec<ShardId> = all
        .iter()
        .copied()
        .filter(|s| !done.contains(&s.to_string()))
        .collect();
    if todo.is_empty() {
        return Err(RetryError::Refused(format!(
            "every shard of job {job} is done; nothing to retry"
        )));
    }
    // The change id first, the manifest kept under it, the mark last.
    let mark = match mark {
        Some(m) => m,
        None => {
            let id = change::new_change_id(store)?;
            store.put(&change::kept_key(&id, &manifest_key), &body)?;
            let m = RetryMark {
                change: id,
                manifest: now,
            };
            store.put(&mark_key, &serde_json::to_vec(&m).unwrap_or_default())?;
            m
        }
    };
    Ok(Prepared::Run {
        mark,
        todo,
        total: all.len(),
        manifest: Box::new(manifest),
    })
}

/// Whether two listings describe the same content.
fn same(a: &ObjectMeta, b: &ObjectMeta) -> bool {
    a.size == b.size && a.etag == b.etag && a.version == b.version
}

/// Step 3: commits the retried shards (`retried`, their final states) with those the job had
/// done, and records the change. `spec` is the retried job's (its id names the execution);
/// `cancelled` when the retry was cancelled (the execution keeps what it finished).
pub fn complete(
    output: &dyn OutputStore,
    sides: &[&dyn OutputStore],
    spec: &JobSpec,
    mark: &RetryMark,
    retried: &[(ShardId, ShardState)],
    cancelled: bool,
    who: Option<&str>,
) -> Result<(JobManifest, Change), RetryError> {
    let keys = OutputKeys::new(&spec.job);
    // The manifest the retry started from says which shards were done (the current one may
    // already be this retry's, after a commit run before).
    let kept = change::kept_key(&mark.change, &keys.job_manifest());
    let before: JobManifest = serde_json::from_slice(
        &output
            .get(&kept)?
            .ok_or_else(|| unreadable(&kept, "the kept job manifest is gone"))?,
    )
    .map_err(|e| unreadable(&kept, e))?;
    let mut states: Vec<(ShardId, ShardState)> = retried.to_vec();
    for (shard, attempt) in &before.attempts {
        let Ok(id) = ShardId::parse(shard) else {
            continue;
        };
        states.retain(|(s, _)| *s != id);
        states.push((
            id,
            ShardState::Done(ShardDone {
                attempt: *attempt,
                manifest_key: keys.shard_manifest(id, *attempt),
                counts: Default::default(),
            }),
        ));
    }
    states.sort_by_key(|(s, _)| *s);
    let committed = if cancelled {
        commit_cancelled(spec, &states, output, sides)?
    } else {
        commit_job(spec, &states, output, sides)?
    };
    // A test hook: die between the commit and the change (running it again records it).
    if rewind_common::failpoint("retry-committed-then-die") {
        std::process::abort();
    }
    let c = record(output, &spec.job, mark, &committed, who)?;
    Ok((committed, c))
}

/// Records the retry's change (what it added, the manifest it rewrote) and drops the mark.
pub fn record(
    store: &dyn OutputStore,
    job: &JobId,
    mark: &RetryMark,
    now: &JobManifest,
    who: Option<&str>,
) -> Result<Change, RetryError> {
    let keys = OutputKeys::new(job);
    let kept = change::kept_key(&mark.change, &keys.job_manifest());
    let before: Option<JobManifest> = store
        .get(&kept)?
        .and_then(|b| serde_json::from_slice(&b).ok());
    let listed = |m: &JobManifest| -> BTreeSet<String> {
        m.files
            .iter()
            .chain(&m.failed_files)
            .chain(&m.unrecoverable_files)
            .map(|f| f.key.clone())
            .collect()
    };
    let old = before.as_ref().map(listed).unwrap_or_default();
    let mut added: Vec<String> = listed(now).difference(&old).cloned().collect();
    if now.state == JobPhase::Succeeded {
        added.push(keys.success_marker());
    }
    let original = change::job_change(store, job.as_str())
        .ok()
        .flatten()
        .map(|c| c.id);
    let c = change::record_retry(
        store,
        &mark.change,
        Retried {
            job: job.to_string(),
            original,
            manifest_key: keys.job_manifest(),
            manifest_before: mark.manifest.clone(),
            added,
            spec: serde_json::to_value(&now.spec).ok(),
            counts: Some(now.counts.clone()),
            who: who.map(str::to_string),
        },
    )?;
    store.delete(&mark_key(job))?;
    Ok(c)
}
