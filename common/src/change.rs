//! The change log of a destination: every job that writes to it, and every rollback and
//! re-apply, is a recorded change (`<dest>/_rewind/changes/<id>.json`, written last: a change is
//! in the log exactly when it took effect), listing each object it touched with what was there
//! before and after. A rollback is the inverse of a change, computed from that record and done
//! against the store; it is itself a change, so history is only ever appended to.
//!
//! How content comes back, per store:
//! - a versioned bucket: by versions. An object a change added is removed with a delete marker
//!   (undone by deleting the marker: nothing copied); an object it replaced is restored by a
//!   server-side copy of the prior version.
//! - an unversioned bucket or a local directory: what a change displaces is moved (renamed; on
//!   S3 copied server-side, then deleted) to `_rewind/staging/<change>/<key>.kept`, where it
//!   stays until `rewind changes expire` drops it.
//!
//! - a table (a Delta Lake destination): data files are never moved or deleted; a change adds
//!   and removes them in one commit of the table's log (`TableEffect`), and its inverse is the
//!   commit that removes what it added and adds back what it removed. Readers of the table see
//!   each change whole, and the table's own history keeps every version.
//!
//! Every rollback and re-apply first writes its intent (`_rewind/intents/<id>.json`); each step
//! is idempotent and decided by what the store holds, so a process killed at any moment leaves a
//! state the next command on the destination completes (it finishes pending intents first).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::lifecycle::JobManifest;
use crate::shard_store::ShardCounts;
use crate::storage::{ObjectMeta, OutputStore, StorageError};
use crate::table::{TableEffect, TableFile, TableLog};

/// Where the log lives in a destination.
pub const CHANGES: &str = "_rewind/changes/";
/// Rollbacks and re-applies under way (written first, removed last).
pub const INTENTS: &str = "_rewind/intents/";
/// Changes whose kept content `expire` dropped.
pub const EXPIRED: &str = "_rewind/expired/";

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// A job that wrote Parquet.
    Recover,
    /// A job that replayed into Kafka (its records cannot be taken back).
    Replay,
    /// A keyed repair of existing files.
    Repair,
    /// The inverse of an earlier change.
    Rollback,
    /// A rolled-back change applied again (the inverse of its rollback).
    Reapply,
}

impl std::fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChangeKind::Recover => "recover",
            ChangeKind::Replay => "replay",
            ChangeKind::Repair => "repair",
            ChangeKind::Rollback => "rollback",
            ChangeKind::Reapply => "reapply",
        })
    }
}

/// What a key held at one side of a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Content {
    /// Nothing. In a versioned bucket, `marker` is the delete marker that made it so.
    Absent {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        marker: Option<String>,
    },
    /// An object.
    Present(Held),
}

impl Content {
    pub const ABSENT: Content = Content::Absent { marker: None };

    pub fn is_present(&self) -> bool {
        matches!(self, Content::Present(_))
    }

    fn held(&self) -> Option<&Held> {
        match self {
            Content::Present(h) => Some(h),
            Content::Absent { .. } => None,
        }
    }
}

/// An object's content: enough to recognise it, and where it is kept while displaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Its S3 VersionId, in a versioned bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Rows, for Parquet files whose manifest says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Where the content waits while displaced (stores without versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<String>,
}

impl Held {
    fn of(meta: &ObjectMeta) -> Held {
        Held {
            size: meta.size,
            etag: meta.etag.clone(),
            version: meta.version.clone(),
            rows: None,
            kept: None,
        }
    }

    /// Whether `meta` is this content: the same version, or the same tag and size (a version
    /// restored by a copy is other version of the same bytes).
    fn is(&self, meta: &ObjectMeta) -> bool {
        if self.version.is_some() && self.version == meta.version {
            return true;
        }
        match (&self.etag, &meta.etag) {
            (Some(a), Some(b)) => a == b && self.size == meta.size,
            _ => self.version.is_none() && meta.version.is_none() && self.size == meta.size,
        }
    }
}

/// One object a change touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Touch {
    pub key: String,
    pub before: Content,
    pub after: Content,
}

/// What a Kafka replay delivered (it cannot be undone in Kafka).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaEffect {
    pub topic: String,
    pub records: u64,
    /// First and last offset of its records, by partition.
    #[serde(default)]
    pub partitions: BTreeMap<i32, crate::output::OffsetRange>,
    /// False when a shard resumed after an earlier attempt's delivery: the ranges then miss
    /// that attempt's records (the records themselves are counted).
    #[serde(default = "crate::output::yes")]
    pub ranges_complete: bool,
}

/// What a replay into another stream service delivered (Kinesis, Pub/Sub; it cannot be undone
/// there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEffect {
    /// `kinesis` or `pubsub`.
    pub service: String,
    /// The stream's name or ARN.
    pub stream: String,
    pub records: u64,
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Sortable: `YYYYMMDDTHHMMSS.mmmZ-<job id>` for a job's change, `…Z-xxxx` (random hex) for
    /// others; later changes sort after earlier ones.
    pub id: String,
    pub kind: ChangeKind,
    /// The job, for job changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// When it took effect, ms since the epoch.
    pub at_ms: i64,
    /// The token subject that asked for it, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<String>,
    /// Rollbacks and re-applies: the change whose effect this one inverts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undoes: Option<String>,
    /// Rollbacks and re-applies: the data change they are about (rolled back, applied again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The job's spec as its manifest has it (secrets are references or masked there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<ShardCounts>,
    pub objects: Vec<Touch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaEffect>,
    /// A replay into a Kinesis stream or a Pub/Sub topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamEffect>,
    /// On a table destination: the commit of the table's log that made the change (the data
    /// files it added and removed; `objects` then holds only the other objects it wrote).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<TableEffect>,
    /// A landing-zone ingest: the landing objects it consumed (moved to `processed` once this
    /// change was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest: Option<IngestEffect>,
    /// A retry of a job's failed shards (`rewind retry`): the job's change it completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<String>,
}

/// What a landing-zone ingest consumed: each pending object (key below the landing zone, tag,
/// size) and where it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestEffect {
    pub pending: String,
    pub processed: String,
    pub consumed: Vec<ObjectMeta>,
}

impl Change {
    fn key(&self) -> String {
        change_key(&self.id)
    }

    /// Objects and table files it touched.
    pub fn touched(&self) -> usize {
        self.objects.len()
            + self
                .table
                .as_ref()
                .map_or(0, |t| t.added.len() + t.removed.len())
    }

    fn keys(&self) -> BTreeSet<&str> {
        let table = self
            .table
            .iter()
            .flat_map(|t| t.added.iter().chain(&t.removed));
        self.objects
            .iter()
            .map(|t| t.key.as_str())
            .chain(table.map(|f| f.key.as_str()))
            .collect()
    }
}

/// The inverse of a table effect, as a commit still to make.
fn inverse_plan(e: &TableEffect, operation: &str) -> TablePlan {
    TablePlan {
        operation: operation.to_string(),
        add: e.removed.clone(),
        remove: e.added.clone(),
    }
}

/// A commit of the table's log a change makes (a repair's rewrite, a rollback's inverse).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TablePlan {
    operation: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    add: Vec<TableFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    remove: Vec<TableFile>,
}

/// The transaction id of change `id`'s commit: the commit is made once, however often the
/// command runs.
fn app_id(id: &str) -> String {
    format!("rewind-change-{id}")
}

/// Makes the commit of `plan` for change `id` (or finds it made); its effect.
fn commit_table(
    store: &dyn OutputStore,
    plan: &TablePlan,
    app_id: String,
) -> Result<TableEffect, ChangeError> {
    let table = table_of(store)?;
    let version = table.commit(&app_id, &plan.operation, &plan.add, &plan.remove)?;
    Ok(TableEffect {
        format: table.format(),
        version,
        app_id,
        added: plan.add.clone(),
        removed: plan.remove.clone(),
    })
}

fn table_of(store: &dyn OutputStore) -> Result<std::sync::Arc<dyn TableLog>, ChangeError> {
    store.table().ok_or_else(|| {
        ChangeError::Refused(format!(
            "the change is a commit of a table's log, and {} holds no table",
            store.describe()
        ))
    })
}

/// Whether a change's effect holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeState {
    Applied,
    RolledBack,
}

/// Why a change operation could not be done.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("no change {0} in the destination's log")]
    NotFound(String),
    /// The request cannot be done as asked (nothing to roll back, a Kafka replay, ...).
    #[error("{0}")]
    Refused(String),
    /// Later changes, or writes outside Rewind, touched the same objects.
    #[error("{0}")]
    Conflict(String),
    #[error("{key}: {why}")]
    Unreadable { key: String, why: String },
}

/// What `expire` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expired {
    /// Changes whose kept content was dropped now.
    pub expired: Vec<String>,
    /// Of those, changes that can no longer be rolled back (or re-applied) because of it.
    pub now_permanent: Vec<String>,
    /// Kept objects and old versions deleted.
    pub objects_deleted: u64,
}

/// A change as `rewind changes` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    #[serde(flatten)]
    pub change: Change,
    pub state: ChangeState,
    /// Whether rolling it back (applied) or applying it again (rolled back) can be done now;
    /// `why_not` says what stands in the way.
    pub reversible: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why_not: Option<String>,
}

/// A rollback, re-apply or repair under way.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Intent {
    id: String,
    kind: ChangeKind,
    /// Rollbacks and re-applies: the change inverted, and the change they are about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    undoes: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    who: Option<String>,
    /// Changes Rewind makes itself (repairs): the objects written or removed, with what each
    /// key held when the change was planned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ops: Vec<Planned>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spec: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    counts: Option<ShardCounts>,
    /// Changes Rewind makes itself on a table: the commit to make.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    table: Option<TablePlan>,
}

/// One object a change made by Rewind itself sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    /// `key` gets the finished object staged at `from` (moved there).
    Put {
        key: String,
        from: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rows: Option<u64>,
    },
    /// `key` is removed.
    Delete { key: String },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// An op with the content its key held when the change was planned.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Planned {
    #[serde(flatten)]
    op: Op,
    before: Content,
}

/// What a change made by Rewind itself is, besides its objects.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    pub job: Option<String>,
    pub who: Option<String>,
    pub spec: Option<serde_json::Value>,
    pub counts: Option<ShardCounts>,
}

/// The log of one destination.
pub struct Log<'a> {
    store: &'a dyn OutputStore,
}

impl<'a> Log<'a> {
    pub fn new(store: &'a dyn OutputStore) -> Log<'a> {
        Log { store }
    }

    /// Every change, oldest first.
    pub fn changes(&self) -> Result<Vec<Change>, ChangeError> {
        let mut out = Vec::new();
        for id in self.ids()? {
            out.extend(self.read(&id)?);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Ids of the changes whose kept content was dropped.
    pub fn expired(&self) -> Result<BTreeSet<String>, ChangeError> {
        Ok(self
            .store
            .list(EXPIRED)?
            .into_iter()
            .filter_map(|o| {
                o.key
                    .strip_prefix(EXPIRED)?
                    .strip_suffix(".json")
                    .map(str::to_string)
            })
            .collect())
    }

    fn intents(&self) -> Result<Vec<Intent>, ChangeError> {
        let mut out = Vec::new();
        for o in self.store.list(INTENTS)? {
            let Some(body) = self.store.get(&o.key)? else {
                continue;
            };
            let intent: Intent =
                serde_json::from_slice(&body).map_err(|e| ChangeError::Unreadable {
                    key: o.key.clone(),
                    why: e.to_string(),
                })?;
            out.push(intent);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn write(&self, change: &Change) -> Result<(), ChangeError> {
        let body = serde_json::to_vec_pretty(change).map_err(|e| ChangeError::Unreadable {
            key: change.key(),
            why: e.to_string(),
        })?;
        self.store.put(&change.key(), &body)?;
        Ok(())
    }

    /// The changes with their state and whether they can be reversed now.
    pub fn list(&self) -> Result<Vec<Listed>, ChangeError> {
        let changes = self.changes()?;
        let states = states(&changes);
        let mut out = Vec::new();
        for c in changes.iter().rev() {
            let state = states[&c.id];
            let why_not = self.why_not(&changes, &states, c)?;
            out.push(Listed {
                change: c.clone(),
                state,
                reversible: why_not.is_none(),
                why_not,
            });
        }
        Ok(out)
    }

    /// What stands in the way of reversing `c` (rolling it back when applied, applying it
    /// again when rolled back), from the log and from what the store still holds.
    fn why_not(
        &self,
        changes: &[Change],
        states: &BTreeMap<String, ChangeState>,
        c: &Change,
    ) -> Result<Option<String>, ChangeError> {
        if c.kind == ChangeKind::Rollback {
            return Ok(Some(format!(
                "a rollback; reapply {} to undo it",
                c.target.as_deref().unwrap_or("its change")
            )));
        }
        if c.kind == ChangeKind::Replay {
            return Ok(Some("a Kafka replay cannot be undone in Kafka".into()));
        }
        if c.kind == ChangeKind::Reapply && states[&c.id] == ChangeState::RolledBack {
            return Ok(Some(format!(
                "rolled back; reapply {}",
                c.target.as_deref().unwrap_or("its change")
            )));
        }
        let about = match c.kind {
            ChangeKind::Reapply => find(changes, c.target.as_deref().unwrap_or(""))?,
            _ => c,
        };
        let inverse = match states[&c.id] {
            ChangeState::Applied => effective(changes, states, about),
            ChangeState::RolledBack => match rollback_of(changes, states, &about.id) {
                Some(r) => r,
                None => return Ok(Some("no applied rollback of it".into())),
            },
        };
        if let Some(later) = conflicts(changes, states, inverse) {
            return Ok(Some(later));
        }
        for t in &inverse.objects {
            if let Some(missing) = self.unavailable(&t.key, &t.before)? {
                return Ok(Some(missing));
            }
        }
        if let Some(e) = &inverse.table {
            for f in &e.removed {
                if self.store.head(&f.key)?.is_none() {
                    return Ok(Some(format!(
                        "{} is gone from the store (vacuumed?)",
                        f.key
                    )));
                }
            }
        }
        Ok(None)
    }

    /// Whether the content a rollback would bring back is gone (kept copy or version removed,
    /// e.g. by a bucket lifecycle rule).
    fn unavailable(&self, key: &str, before: &Content) -> Result<Option<String>, ChangeError> {
        let Some(h) = before.held() else {
            return Ok(None);
        };
        if let Some(kept) = &h.kept {
            return Ok(self
                .store
                .head(kept)?
                .is_none()
                .then(|| format!("the kept copy of {key} ({kept}) is gone")));
        }
        if let Some(v) = &h.version {
            let there = self.store.versions(key)?.iter().any(|s| &s.version == v);
            return Ok((!there).then(|| format!("version {v} of {key} is gone")));
        }
        Ok(Some(format!("nothing kept to restore {key} from")))
    }

    /// A new id, later than every change and intent in the log (clocks of different machines
    /// may disagree; the log's order is the order changes took effect).
    /// A job's change ends in the job id (found by listing alone); others in 4 random hex digits.
    fn new_id<'i>(
        &self,
        ids: impl IntoIterator<Item = &'i str>,
        job: Option<&str>,
    ) -> Result<String, ChangeError> {
        let mut ms = crate::lifecycle::now_ms();
        let intents = self.intents()?;
        let last = ids.into_iter().filter_map(id_ms).max();
        let last_intent = intents.iter().filter_map(|i| id_ms(&i.id)).max();
        if let Some(last) = last.max(last_intent) {
            ms = ms.max(last + 1);
        }
        let t = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
        let suffix = match job {
            Some(job) => job.to_string(),
            None => {
                let random = crate::JobId::generate();
                random
                    .as_str()
                    .rsplit('-')
                    .next()
                    .unwrap_or("0000")
                    .to_string()
            }
        };
        Ok(format!("{}-{suffix}", t.format("%Y%m%dT%H%M%S%.3fZ")))
    }

    /// The ids in the log, by listing it (no change is read).
    fn ids(&self) -> Result<Vec<String>, ChangeError> {
        Ok(self
            .store
            .list(CHANGES)?
            .into_iter()
            .filter_map(|o| {
                o.key
                    .strip_prefix(CHANGES)?
                    .strip_suffix(".json")
                    .filter(|id| !id.contains('/'))
                    .map(str::to_string)
            })
            .collect())
    }

    /// The id of a job's change, when it has one.
    fn job_change(&self, job: &str) -> Result<Option<String>, ChangeError> {
        let tail = format!("-{job}");
        Ok(self.ids()?.into_iter().find(|id| id.ends_with(&tail)))
    }

    fn read(&self, id: &str) -> Result<Option<Change>, ChangeError> {
        let key = change_key(id);
        let Some(body) = self.store.get(&key)? else {
            return Ok(None);
        };
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| ChangeError::Unreadable {
                key,
                why: e.to_string(),
            })
    }
}

/// Where change `id` is recorded.
fn change_key(id: &str) -> String {
    format!("{CHANGES}{id}.json")
}

/// The time of a change id.
fn id_ms(id: &str) -> Option<i64> {
    let stamp = id.split('-').next()?;
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%S%.3fZ")
        .ok()
        .map(|t| t.and_utc().timestamp_millis())
}

/// The state of every change: rolled back when a later change that inverts it is applied.
pub fn states(changes: &[Change]) -> BTreeMap<String, ChangeState> {
    let mut out = BTreeMap::new();
    // Newest first: a change's state depends only on later ones.
    for c in changes.iter().rev() {
        let undone = changes.iter().any(|d| {
            d.undoes.as_deref() == Some(c.id.as_str())
                && out.get(&d.id) == Some(&ChangeState::Applied)
        });
        let state = if undone {
            ChangeState::RolledBack
        } else {
            ChangeState::Applied
        };
        out.insert(c.id.clone(), state);
    }
    out
}

/// The applied rollback about `id` (the newest): inverting it applies `id` again.
fn rollback_of<'c>(
    changes: &'c [Change],
    states: &BTreeMap<String, ChangeState>,
    id: &str,
) -> Option<&'c Change> {
    changes.iter().rev().find(|d| {
        d.kind == ChangeKind::Rollback
            && d.target.as_deref() == Some(id)
            && states[&d.id] == ChangeState::Applied
    })
}

/// The change whose record describes the effect of applied change `c` as it is now: its newest
/// applied re-apply, or `c` itself. Inverting it rolls `c` back.
fn effective<'c>(
    changes: &'c [Change],
    states: &BTreeMap<String, ChangeState>,
    c: &'c Change,
) -> &'c Change {
    changes
        .iter()
        .rev()
        .find(|d| {
            d.kind == ChangeKind::Reapply
                && d.target.as_deref() == Some(c.id.as_str())
                && states[&d.id] == ChangeState::Applied
        })
        .unwrap_or(c)
}

/// Later changes in effect that touched the objects of `c`: inverting `c` would undo theirs
/// too. (An applied rollback and the change it undid cancel out.)
fn conflicts(
    changes: &[Change],
    states: &BTreeMap<String, ChangeState>,
    c: &Change,
) -> Option<String> {
    let keys = c.keys();
    let later: Vec<&str> = changes
        .iter()
        .filter(|d| d.id > c.id && states[&d.id] == ChangeState::Applied)
        .filter(|d| d.kind != ChangeKind::Rollback)
        .filter(|d| d.keys().iter().any(|k| keys.contains(k)))
        .map(|d| d.id.as_str())
        .collect();
    (!later.is_empty()).then(|| {
        format!(
            "later changes touched the same objects and are in effect: {} (roll them back \
             first, or use --to)",
            later.join(", ")
        )
    })
}

/// Records a finished job's change: every object of its execution readers see (data, failed
/// and unrecoverable files in the destination, manifest, `_SUCCESS`). Idempotent: a commit run
/// again finds its change. Nothing is recorded for a job that made nothing visible.
pub fn record_job(
    store: &dyn OutputStore,
    manifest: &JobManifest,
    who: Option<&str>,
) -> Result<Option<Change>, ChangeError> {
    // On the commit path: the log is listed, not read (it only grows).
    let log = Log::new(store);
    let ids = log.ids()?;
    let tail = format!("-{}", manifest.job_id);
    if let Some(id) = ids.iter().find(|id| id.ends_with(&tail)) {
        return log.read(id);
    }
    let prefix = format!("execution_id={}/", manifest.job_id);
    let internal = format!("{prefix}_rewind/");
    // A table destination: the job's data files join the table in one commit of its log (once:
    // its transaction id is the job's), and stay out of `objects` (they are never moved).
    let table = match store.table() {
        // (A cancelled job adds nothing: an interrupted `rewind run` removes its files.)
        Some(t) if !manifest.files.is_empty() && manifest.state != crate::JobPhase::Cancelled => {
            let columns = t.partition_columns()?;
            let plan = TablePlan {
                operation: "WRITE".into(),
                add: manifest
                    .files
                    .iter()
                    .map(|f| TableFile {
                        key: f.key.clone(),
                        size: f.size,
                        rows: Some(f.rows),
                        partition: crate::table::partition_of(&f.key, &columns),
                    })
                    .collect(),
                remove: Vec::new(),
            };
            Some(commit_table(
                store,
                &plan,
                format!("rewind-job-{}", manifest.job_id),
            )?)
        }
        _ => None,
    };
    let in_table: BTreeSet<&str> = table
        .iter()
        .flat_map(|t| t.added.iter().map(|f| f.key.as_str()))
        .collect();
    let rows: BTreeMap<&str, (u64, Option<&str>)> = manifest
        .files
        .iter()
        .chain(&manifest.failed_files)
        .chain(&manifest.unrecoverable_files)
        .map(|f| (f.key.as_str(), (f.rows, f.version.as_deref())))
        .collect();
    let versioned = store.versioned()?;
    let mut objects = Vec::new();
    for o in store.list(&prefix)? {
        if o.key.starts_with(&internal) || in_table.contains(o.key.as_str()) {
            continue;
        }
        let mut held = Held::of(&o);
        if let Some((n, version)) = rows.get(o.key.as_str()) {
            held.rows = Some(*n);
            held.version = held.version.or(version.map(str::to_string));
        }
        // (Some stores list no tags; a versioned bucket lists no versions.)
        if (versioned && held.version.is_none()) || held.etag.is_none() {
            let head = store.head(&o.key)?;
            held.etag = held.etag.or(head.as_ref().and_then(|m| m.etag.clone()));
            held.version = held.version.or(head.and_then(|m| m.version));
        }
        objects.push(Touch {
            key: o.key,
            before: Content::ABSENT,
            after: Content::Present(held),
        });
    }
    if objects.is_empty() && table.is_none() {
        return Ok(None);
    }
    let kafka = match &manifest.spec.sink {
        crate::job::SinkSpec::Kafka(k) => Some(KafkaEffect {
            topic: k.topic.clone(),
            records: manifest.counts.acknowledged,
            partitions: manifest.kafka_offsets.clone(),
            ranges_complete: manifest.kafka_ranges_complete,
        }),
        _ => None,
    };
    let stream = match &manifest.spec.sink {
        crate::job::SinkSpec::Kinesis(k) => Some(StreamEffect {
            service: "kinesis".into(),
            stream: k.stream.clone(),
            records: manifest.counts.acknowledged,
        }),
        crate::job::SinkSpec::PubSub(k) => Some(StreamEffect {
            service: "pubsub".into(),
            stream: k.topic.clone(),
            records: manifest.counts.acknowledged,
        }),
        _ => None,
    };
    let change = Change {
        id: log.new_id(ids.iter().map(String::as_str), Some(&manifest.job_id))?,
        kind: if kafka.is_some() || stream.is_some() {
            ChangeKind::Replay
        } else {
            ChangeKind::Recover
        },
        job: Some(manifest.job_id.clone()),
        at_ms: crate::lifecycle::now_ms(),
        who: who.map(str::to_string),
        undoes: None,
        target: None,
        spec: serde_json::to_value(&manifest.spec).ok(),
        counts: Some(manifest.counts.clone()),
        objects,
        kafka,
        stream,
        table,
        ingest: None,
        retries: None,
    };
    log.write(&change)?;
    Ok(Some(change))
}

/// Records a landing-zone ingest's change: the data files it published into the dataset (new
/// objects: a rollback deletes them) and the landing objects it consumed. Idempotent like
/// [`record_job`]: run again, it finds the change of `job`.
pub fn record_ingest(
    store: &dyn OutputStore,
    job: &str,
    files: &[crate::job::OutputFileEntry],
    effect: IngestEffect,
    spec: Option<serde_json::Value>,
    counts: Option<ShardCounts>,
) -> Result<Change, ChangeError> {
    let log = Log::new(store);
    let ids = log.ids()?;
    let tail = format!("-{job}");
    if let Some(id) = ids.iter().find(|id| id.ends_with(&tail))
        && let Some(c) = log.read(id)?
    {
        return Ok(c);
    }
    let mut objects = Vec::new();
    for f in files {
        let meta = store
            .head(&f.key)?
            .ok_or_else(|| ChangeError::Refused(format!("{} was published and is gone", f.key)))?;
        let mut held = Held::of(&meta);
        held.rows = Some(f.rows);
        objects.push(Touch {
            key: f.key.clone(),
            before: Content::ABSENT,
            after: Content::Present(held),
        });
    }
    let change = Change {
        id: log.new_id(ids.iter().map(String::as_str), Some(job))?,
        kind: ChangeKind::Recover,
        job: Some(job.to_string()),
        at_ms: crate::lifecycle::now_ms(),
        who: None,
        undoes: None,
        target: None,
        spec,
        counts,
        objects,
        kafka: None,
        stream: None,
        table: None,
        ingest: Some(effect),
        retries: None,
    };
    log.write(&change)?;
    Ok(change)
}

/// A new change id for a change the caller makes itself and records later ([`record_retry`]):
/// chosen first, so what it displaces can be kept under it before anything moves.
pub fn new_change_id(store: &dyn OutputStore) -> Result<String, ChangeError> {
    let log = Log::new(store);
    let ids = log.ids()?;
    log.new_id(ids.iter().map(String::as_str), None)
}

/// What a retry of a job's failed shards changed, for [`record_retry`].
#[derive(Debug, Clone)]
pub struct Retried {
    pub job: String,
    /// The job's change it completes (its id), when the job recorded one.
    pub original: Option<String>,
    /// The job manifest as it was, and where a copy of it is kept (`kept_key(id, key)`).
    pub manifest_key: String,
    pub manifest_before: ObjectMeta,
    /// The objects the retry made visible (data, failed and unrecoverable files, `_SUCCESS`).
    pub added: Vec<String>,
    pub spec: Option<serde_json::Value>,
    pub counts: Option<ShardCounts>,
    /// The token subject that asked for it, when there was one.
    pub who: Option<String>,
}

/// A retry of a job's failed shards under way: the change id it will record and the job
/// manifest it started from (a copy is kept under `kept_key(change, manifest key)`). Kept in
/// `<execution>/_rewind/retry.json` and, for a coordinator's retry, in the job's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryMark {
    pub change: String,
    pub manifest: ObjectMeta,
}

/// Records a retry of a job's failed shards as a change of its own, linked to the job's
/// (`target`): the files it added (a rollback deletes them) and the job manifest it rewrote (a
/// rollback brings the earlier one back from its kept copy). Idempotent: a change `id` already
/// in the log is returned.
pub fn record_retry(store: &dyn OutputStore, id: &str, r: Retried) -> Result<Change, ChangeError> {
    let log = Log::new(store);
    if log.ids()?.iter().any(|i| i == id)
        && let Some(c) = log.read(id)?
    {
        return Ok(c);
    }
    let mut objects = Vec::new();
    for key in &r.added {
        let meta = store
            .head(key)?
            .ok_or_else(|| ChangeError::Refused(format!("{key} was added and is gone")))?;
        objects.push(Touch {
            key: key.clone(),
            before: Content::ABSENT,
            after: Content::Present(Held::of(&meta)),
        });
    }
    let now = store
        .head(&r.manifest_key)?
        .ok_or_else(|| ChangeError::Refused(format!("{} is gone", r.manifest_key)))?;
    let mut before = Held::of(&r.manifest_before);
    before.kept = Some(kept_key(id, &r.manifest_key));
    objects.push(Touch {
        key: r.manifest_key.clone(),
        before: Content::Present(before),
        after: Content::Present(Held::of(&now)),
    });
    let change = Change {
        id: id.to_string(),
        kind: ChangeKind::Recover,
        job: Some(r.job.clone()),
        at_ms: crate::lifecycle::now_ms(),
        who: r.who,
        undoes: None,
        target: None,
        spec: r.spec,
        counts: r.counts,
        objects,
        kafka: None,
        stream: None,
        table: None,
        ingest: None,
        retries: r.original.or(Some(r.job.clone())),
    };
    log.write(&change)?;
    Ok(change)
}

/// The change a job recorded, found by listing the log (its id ends with the job id: job
/// commits and a distributed repair's commit name their job).
pub fn job_change(store: &dyn OutputStore, job: &str) -> Result<Option<Change>, ChangeError> {
    let log = Log::new(store);
    match log.job_change(job)? {
        Some(id) => log.read(&id),
        None => Ok(None),
    }
}

/// Drops the change of a job whose output was removed before the command that ran it returned
/// (an interrupted `rewind run`): it never took effect for anyone. Whether there was one.
pub fn forget_job(store: &dyn OutputStore, job: &str) -> Result<bool, ChangeError> {
    match Log::new(store).job_change(job)? {
        Some(id) => {
            store.delete(&change_key(&id))?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Finishes rollbacks and re-applies a killed process left under way. Returns what they
/// recorded.
pub fn resume_pending(store: &dyn OutputStore) -> Result<Vec<Change>, ChangeError> {
    lock::with_lock(store, "resume", || finish_pending(store))
}

/// [`resume_pending`] under a lock already held.
fn finish_pending(store: &dyn OutputStore) -> Result<Vec<Change>, ChangeError> {
    let log = Log::new(store);
    let mut done = Vec::new();
    for intent in log.intents()? {
        done.push(carry_out(&log, &intent)?);
    }
    Ok(done)
}

/// What a rollback or re-apply did: the change it recorded, or the one that had done it already
/// (`already`: the command was run again).
#[derive(Debug, Clone)]
pub struct Done {
    pub change: Change,
    pub already: bool,
}

/// Rolls back `id`, or the newest applied change that is not itself a rollback. Run again after
/// being stopped, it finishes the same rollback (and with `id`, says it is done).
pub fn rollback(
    store: &dyn OutputStore,
    id: Option<&str>,
    who: Option<&str>,
) -> Result<Done, ChangeError> {
    lock::with_lock(store, "rollback", || rollback_as(store, id, who, false))
}

/// What [`rollback`] would do, done to nothing: the change it would record (id `dry-run`), after
/// the same checks.
pub fn preview_rollback(store: &dyn OutputStore, id: Option<&str>) -> Result<Done, ChangeError> {
    rollback_as(store, id, None, true)
}

/// The change inverting `inverse_of` would record, as a dry run shows it (id `dry-run`; where
/// displaced content would be kept is decided when it runs).
fn preview(kind: ChangeKind, inverse_of: &Change, about: &str, who: Option<&str>) -> Change {
    Change {
        id: "dry-run".into(),
        kind,
        job: None,
        at_ms: crate::lifecycle::now_ms(),
        who: who.map(str::to_string),
        undoes: Some(inverse_of.id.clone()),
        target: Some(about.to_string()),
        spec: None,
        counts: None,
        objects: inverse_of
            .objects
            .iter()
            .map(|t| Touch {
                key: t.key.clone(),
                before: t.after.clone(),
                after: t.before.clone(),
            })
            .collect(),
        kafka: None,
        stream: None,
        table: inverse_of.table.as_ref().map(|e| TableEffect {
            format: e.format,
            version: None,
            app_id: app_id("dry-run"),
            added: e.removed.clone(),
            removed: e.added.clone(),
        }),
        ingest: None,
        retries: None,
    }
}

/// A dry run cannot see past a change under way (its intent): it says so.
fn nothing_under_way(store: &dyn OutputStore) -> Result<(), ChangeError> {
    match Log::new(store).intents()?.first() {
        Some(i) => Err(ChangeError::Refused(format!(
            "a {} ({}) is under way: run any change command without --dry-run to finish it first",
            i.kind, i.id
        ))),
        None => Ok(()),
    }
}

fn rollback_as(
    store: &dyn OutputStore,
    id: Option<&str>,
    who: Option<&str>,
    dry: bool,
) -> Result<Done, ChangeError> {
    let resumed = if dry {
        nothing_under_way(store)?;
        Vec::new()
    } else {
        finish_pending(store)?
    };
    if id.is_none()
        && let Some(r) = resumed
            .into_iter()
            .rev()
            .find(|c| c.kind == ChangeKind::Rollback)
    {
        return Ok(Done {
            change: r,
            already: false,
        });
    }
    let log = Log::new(store);
    let changes = log.changes()?;
    let states = states(&changes);
    let target = match id {
        Some(id) => find(&changes, id)?,
        None => changes
            .iter()
            .rev()
            .find(|c| c.kind != ChangeKind::Rollback && states[&c.id] == ChangeState::Applied)
            .ok_or_else(|| ChangeError::Refused("no applied change to roll back".into()))?,
    };
    undo(&log, &changes, &states, target, who, dry)
}

/// What `rollback --to` did: the rollbacks it recorded, newest first, and the Kafka replays
/// after the change it could not undo (their records stay in Kafka).
#[derive(Debug, Clone, Default)]
pub struct RolledBackTo {
    pub rollbacks: Vec<Change>,
    pub replays_kept: Vec<String>,
}

/// Rolls back every applied change after `id`, newest first. Run again after being stopped, it
/// finishes (what is rolled back already stays so).
pub fn rollback_to(
    store: &dyn OutputStore,
    id: &str,
    who: Option<&str>,
) -> Result<RolledBackTo, ChangeError> {
    lock::with_lock(store, "rollback --to", || {
        rollback_to_locked(store, id, who)
    })
}

fn rollback_to_locked(
    store: &dyn OutputStore,
    id: &str,
    who: Option<&str>,
) -> Result<RolledBackTo, ChangeError> {
    let resumed = finish_pending(store)?;
    let log = Log::new(store);
    find(&log.changes()?, id)?;
    let mut done = RolledBackTo {
        rollbacks: resumed
            .into_iter()
            .filter(|c| c.kind == ChangeKind::Rollback)
            .collect(),
        ..RolledBackTo::default()
    };
    loop {
        let changes = log.changes()?;
        let states = states(&changes);
        // (A re-apply of the change itself after it is not "after" it: it stays applied.)
        let mut later = changes.iter().rev().filter(|c| {
            c.id.as_str() > id
                && c.kind != ChangeKind::Rollback
                && c.target.as_deref() != Some(id)
                && states[&c.id] == ChangeState::Applied
        });
        let Some(next) = later.find(|c| {
            c.kind != ChangeKind::Replay || {
                if !done.replays_kept.contains(&c.id) {
                    done.replays_kept.push(c.id.clone());
                }
                false
            }
        }) else {
            return Ok(done);
        };
        let step = undo(&log, &changes, &states, next, who, false)?;
        if step.already {
            return Err(ChangeError::Refused(format!(
                "{} did not change while rolling back to {id}",
                next.id
            )));
        }
        done.rollbacks.push(step.change);
    }
}

/// What [`rollback_to`] would roll back, newest first (the log's view: each object's check
/// against the store happens when it runs).
pub fn preview_rollback_to(store: &dyn OutputStore, id: &str) -> Result<RolledBackTo, ChangeError> {
    nothing_under_way(store)?;
    let log = Log::new(store);
    let changes = log.changes()?;
    find(&changes, id)?;
    let states = states(&changes);
    let mut out = RolledBackTo::default();
    // A re-applied change and its re-apply are one effect: rolled back once.
    let mut covered = BTreeSet::new();
    for c in changes.iter().rev().filter(|c| {
        c.id.as_str() > id
            && c.kind != ChangeKind::Rollback
            && c.target.as_deref() != Some(id)
            && states[&c.id] == ChangeState::Applied
    }) {
        if c.kind == ChangeKind::Replay {
            out.replays_kept.push(c.id.clone());
            continue;
        }
        let about = match c.kind {
            ChangeKind::Reapply => c.target.clone().unwrap_or_default(),
            _ => c.id.clone(),
        };
        if !covered.insert(about.clone()) {
            continue;
        }
        out.rollbacks
            .push(preview(ChangeKind::Rollback, c, &about, None));
    }
    Ok(out)
}

/// Applies a rolled-back change again (the inverse of its rollback). Run again, it says it is
/// done.
pub fn reapply(store: &dyn OutputStore, id: &str, who: Option<&str>) -> Result<Done, ChangeError> {
    lock::with_lock(store, "reapply", || reapply_as(store, id, who, false))
}

/// What [`reapply`] would do, done to nothing.
pub fn preview_reapply(store: &dyn OutputStore, id: &str) -> Result<Done, ChangeError> {
    reapply_as(store, id, None, true)
}

fn reapply_as(
    store: &dyn OutputStore,
    id: &str,
    who: Option<&str>,
    dry: bool,
) -> Result<Done, ChangeError> {
    if dry {
        nothing_under_way(store)?;
    } else {
        finish_pending(store)?;
    }
    let log = Log::new(store);
    let changes = log.changes()?;
    let states = states(&changes);
    let target = find(&changes, id)?;
    if matches!(target.kind, ChangeKind::Rollback | ChangeKind::Reapply) {
        return Err(ChangeError::Refused(format!(
            "{id} is a {}; reapply the change it is about ({})",
            target.kind,
            target.target.as_deref().unwrap_or("?")
        )));
    }
    if states[id] == ChangeState::Applied {
        let now = effective(&changes, &states, target);
        if now.id != target.id {
            return Ok(Done {
                change: now.clone(),
                already: true,
            });
        }
        return Err(ChangeError::Refused(format!(
            "{id} is applied; it was never rolled back"
        )));
    }
    let rollback = rollback_of(&changes, &states, id)
        .ok_or_else(|| ChangeError::Refused(format!("{id} has no applied rollback")))?;
    if let Some(c) = conflicts(&changes, &states, rollback) {
        return Err(ChangeError::Conflict(format!("cannot reapply {id}: {c}")));
    }
    Ok(Done {
        change: begin(&log, &changes, ChangeKind::Reapply, rollback, id, who, dry)?,
        already: false,
    })
}

fn find<'c>(changes: &'c [Change], id: &str) -> Result<&'c Change, ChangeError> {
    changes
        .iter()
        .find(|c| c.id == id)
        .ok_or_else(|| ChangeError::NotFound(id.to_string()))
}

/// Rolls back one applied change: checks, then the inverse.
fn undo(
    log: &Log<'_>,
    changes: &[Change],
    states: &BTreeMap<String, ChangeState>,
    target: &Change,
    who: Option<&str>,
    dry: bool,
) -> Result<Done, ChangeError> {
    let id = target.id.as_str();
    match target.kind {
        ChangeKind::Rollback => {
            return Err(ChangeError::Refused(format!(
                "{id} is a rollback; to undo it, reapply {}",
                target
                    .target
                    .as_deref()
                    .unwrap_or("the change it rolled back")
            )));
        }
        ChangeKind::Replay => {
            let (service, into) = match (&target.kafka, &target.stream) {
                (Some(k), _) => ("Kafka", k.topic.as_str()),
                (None, Some(s)) if s.service == "pubsub" => ("Pub/Sub", s.stream.as_str()),
                (None, Some(s)) => ("Kinesis", s.stream.as_str()),
                (None, None) => ("Kafka", "?"),
            };
            return Err(ChangeError::Refused(format!(
                "{id} is a {service} replay into {into}: its records cannot be taken back from \
                 {service} (guarded replays clear and restore what consumers wrote downstream)"
            )));
        }
        _ => {}
    }
    // Rolling back a re-apply rolls back the change it applied again.
    let about = match target.kind {
        ChangeKind::Reapply => find(changes, target.target.as_deref().unwrap_or(""))?,
        _ => target,
    };
    if states[&about.id] == ChangeState::RolledBack
        && let Some(r) = rollback_of(changes, states, &about.id)
    {
        return Ok(Done {
            change: r.clone(),
            already: true,
        });
    }
    if states[id] == ChangeState::RolledBack {
        return Err(ChangeError::Refused(format!("{id} is rolled back already")));
    }
    let inverse_of = effective(changes, states, about);
    if let Some(c) = conflicts(changes, states, inverse_of) {
        return Err(ChangeError::Conflict(format!(
            "cannot roll back {}: {c}",
            about.id
        )));
    }
    Ok(Done {
        change: begin(
            log,
            changes,
            ChangeKind::Rollback,
            inverse_of,
            &about.id,
            who,
            dry,
        )?,
        already: false,
    })
}

/// Checks the store against the change to invert, records the intent and carries it out.
fn begin(
    log: &Log<'_>,
    changes: &[Change],
    kind: ChangeKind,
    inverse_of: &Change,
    about: &str,
    who: Option<&str>,
    dry: bool,
) -> Result<Change, ChangeError> {
    // Refuse before touching anything when an object is not what the change left (written
    // outside Rewind) or what it would bring back is gone.
    let versioned = log.store.versioned()?;
    let mut problems = Vec::new();
    for t in &inverse_of.objects {
        let now = log.store.head(&t.key)?;
        if !holds(now.as_ref(), &t.after) {
            problems.push(format!(
                "{} is not what {} left ({})",
                t.key,
                inverse_of.id,
                describe(now.as_ref())
            ));
        } else if let Some(missing) = log.unavailable(&t.key, &t.before)? {
            problems.push(missing);
        } else if versioned
            && t.after.is_present()
            && t.after.held().is_some_and(|h| h.version.is_none())
        {
            problems.push(format!("{} has no recorded version", t.key));
        }
        if problems.len() >= 10 {
            break;
        }
    }
    if let Some(e) = &inverse_of.table {
        problems.extend(table_problems(log.store, e, &inverse_of.id)?);
    }
    if !problems.is_empty() {
        return Err(ChangeError::Conflict(format!(
            "cannot {kind} {about}: {}",
            problems.join("; ")
        )));
    }
    if dry {
        return Ok(preview(kind, inverse_of, about, who));
    }
    let intent = Intent {
        id: log.new_id(changes.iter().map(|c| c.id.as_str()), None)?,
        kind,
        undoes: Some(inverse_of.id.clone()),
        target: Some(about.to_string()),
        who: who.map(str::to_string),
        ops: Vec::new(),
        job: None,
        spec: None,
        counts: None,
        table: None,
    };
    start(log, &intent)
}

/// What stands in the way of inverting table effect `e` of change `id` now: a file it added
/// is no longer in the table, one it removed is in it again or gone from the store.
fn table_problems(
    store: &dyn OutputStore,
    e: &TableEffect,
    id: &str,
) -> Result<Vec<String>, ChangeError> {
    let files = table_of(store)?.files()?;
    let mut problems = Vec::new();
    for f in &e.added {
        if !files.contains_key(&f.key) {
            problems.push(format!("{} is not in the table as {id} left it", f.key));
        }
    }
    for f in &e.removed {
        if files.contains_key(&f.key) {
            problems.push(format!("{} is in the table again", f.key));
        } else if store.head(&f.key)?.is_none() {
            problems.push(format!("{} is gone from the store (vacuumed?)", f.key));
        }
    }
    problems.truncate(10);
    Ok(problems)
}

/// Records an intent, then carries it out.
fn start(log: &Log<'_>, intent: &Intent) -> Result<Change, ChangeError> {
    let body = serde_json::to_vec_pretty(intent).map_err(|e| ChangeError::Unreadable {
        key: intent.id.clone(),
        why: e.to_string(),
    })?;
    log.store.put(&intent_key(&intent.id), &body)?;
    step_done();
    carry_out(log, intent)
}

/// Makes a change of Rewind's own (a repair): every `Put` moves its staged object onto its key
/// and every `Delete` removes its key, what was there before kept for a rollback (as a version,
/// or under this change's staging). One recorded change; a process stopped half-way leaves an
/// intent the next command on the destination completes.
pub fn apply(
    store: &dyn OutputStore,
    kind: ChangeKind,
    meta: Meta,
    ops: Vec<Op>,
) -> Result<Change, ChangeError> {
    apply_over(store, kind, meta, ops, &BTreeMap::new())
}

/// [`apply`], for ops computed from what the caller read: a key in `read` must still be what it
/// was then (another writer changed it meanwhile: refused, nothing moves), so a change never
/// overwrites content it did not see.
pub fn apply_over(
    store: &dyn OutputStore,
    kind: ChangeKind,
    meta: Meta,
    ops: Vec<Op>,
    read: &BTreeMap<String, ObjectMeta>,
) -> Result<Change, ChangeError> {
    lock::with_lock(store, "repair", || {
        apply_locked(store, kind, meta, ops, read)
    })
}

fn apply_locked(
    store: &dyn OutputStore,
    kind: ChangeKind,
    meta: Meta,
    ops: Vec<Op>,
    read: &BTreeMap<String, ObjectMeta>,
) -> Result<Change, ChangeError> {
    finish_pending(store)?;
    let log = Log::new(store);
    let changes = log.changes()?;
    let mut seen = BTreeSet::new();
    let mut planned = Vec::with_capacity(ops.len());
    for op in ops {
        if !seen.insert(op.key().to_string()) {
            return Err(ChangeError::Refused(format!(
                "{} is set twice in one change",
                op.key()
            )));
        }
        if let Op::Put { from, key, .. } = &op
            && store.head(from)?.is_none()
        {
            return Err(ChangeError::Refused(format!(
                "the new content of {key} ({from}) is not there"
            )));
        }
        let now = store.head(op.key())?;
        if let Some(seen) = read.get(op.key())
            && !now.as_ref().is_some_and(|m| Held::of(seen).is(m))
        {
            return Err(ChangeError::Conflict(format!(
                "{} changed since it was read ({}); run again to work on what it holds now",
                op.key(),
                describe(now.as_ref())
            )));
        }
        let before = match now {
            Some(m) => Content::Present(Held::of(&m)),
            None => Content::ABSENT,
        };
        planned.push(Planned { op, before });
    }
    let intent = Intent {
        id: log.new_id(changes.iter().map(|c| c.id.as_str()), meta.job.as_deref())?,
        kind,
        undoes: None,
        target: None,
        who: meta.who,
        ops: planned,
        job: meta.job,
        spec: meta.spec,
        counts: meta.counts,
        table: None,
    };
    start(&log, &intent)
}

/// Makes a change of Rewind's own on a table destination (a repair): one commit of the table's
/// log adding `add` and removing `remove` (files written already, under new names: nothing is
/// moved or overwritten). Refused, nothing committed, when a file to remove is no longer in the
/// table (another writer changed it since it was read). Interrupted, the next command on the
/// destination makes the same commit once (its transaction id is the change's).
pub fn apply_table(
    store: &dyn OutputStore,
    kind: ChangeKind,
    meta: Meta,
    operation: &str,
    add: Vec<TableFile>,
    remove: Vec<TableFile>,
) -> Result<Change, ChangeError> {
    lock::with_lock(store, "repair", || {
        finish_pending(store)?;
        let files = table_of(store)?.files()?;
        if let Some(gone) = remove.iter().find(|f| !files.contains_key(&f.key)) {
            return Err(ChangeError::Conflict(format!(
                "{} left the table since it was read; run again to work on what it holds now",
                gone.key
            )));
        }
        for f in &add {
            if store.head(&f.key)?.is_none() {
                return Err(ChangeError::Refused(format!("{} is not there", f.key)));
            }
        }
        let log = Log::new(store);
        let changes = log.changes()?;
        let intent = Intent {
            id: log.new_id(changes.iter().map(|c| c.id.as_str()), meta.job.as_deref())?,
            kind,
            undoes: None,
            target: None,
            who: meta.who,
            ops: Vec::new(),
            job: meta.job,
            spec: meta.spec,
            counts: meta.counts,
            table: Some(TablePlan {
                operation: operation.to_string(),
                add,
                remove,
            }),
        };
        start(&log, &intent)
    })
}

/// Carries out one op of a change of Rewind's own; run again, it finds its steps done.
fn forward(
    store: &dyn OutputStore,
    versioned: bool,
    p: &Planned,
    id: &str,
) -> Result<Touch, ChangeError> {
    let key = p.op.key();
    let conflict = |what: String| ChangeError::Conflict(format!("{key}: {what}"));
    // 1. What the key held moves aside (a version stays by itself).
    let mut before = p.before.clone();
    if let Content::Present(h) = &mut before {
        if versioned {
            if h.version.is_none() {
                return Err(conflict("no version of it to keep".into()));
            }
        } else {
            let keep = kept_key(id, key);
            if store.head(&keep)?.is_some() {
                settle_move(store, key, &p.before)?;
            } else {
                let now = store.head(key)?;
                if !holds(now.as_ref(), &p.before) {
                    return Err(conflict(format!(
                        "changed since the change was planned ({})",
                        describe(now.as_ref())
                    )));
                }
                store.promote(key, &keep)?;
                step_done();
            }
            let kept = store
                .head(&keep)?
                .ok_or_else(|| conflict(format!("{keep} is missing")))?;
            *h = Held {
                kept: Some(keep),
                ..Held::of(&kept)
            };
        }
    }
    // 2. The new content comes in (done when the staged object is gone and the key is there).
    let after = match &p.op {
        Op::Put { from, rows, .. } => {
            if store.head(from)?.is_some() {
                store.promote(from, key)?;
                step_done();
            } else if versioned
                && p.before.is_present()
                && holds(store.head(key)?.as_ref(), &p.before)
            {
                // Neither moved in nor there: never record the old content as the new.
                return Err(conflict(format!("its new content {from} is gone")));
            }
            let now = store
                .head(key)?
                .ok_or_else(|| conflict(format!("neither {from} nor the key is there")))?;
            Content::Present(Held {
                rows: *rows,
                ..Held::of(&now)
            })
        }
        Op::Delete { .. } => {
            if versioned {
                match store.head(key)? {
                    Some(_) => {
                        let marker = store.remove(key)?;
                        step_done();
                        Content::Absent { marker }
                    }
                    None => Content::Absent {
                        marker: store
                            .versions(key)?
                            .first()
                            .filter(|v| v.delete_marker)
                            .map(|v| v.version.clone()),
                    },
                }
            } else {
                Content::ABSENT
            }
        }
    };
    Ok(Touch {
        key: key.to_string(),
        before,
        after,
    })
}

fn intent_key(id: &str) -> String {
    format!("{INTENTS}{id}.json")
}

fn describe(now: Option<&ObjectMeta>) -> String {
    match now {
        None => "it is absent".into(),
        Some(m) => format!(
            "found {} bytes, tag {}, version {}",
            m.size,
            m.etag.as_deref().unwrap_or("-"),
            m.version.as_deref().unwrap_or("-")
        ),
    }
}

/// Whether what the store holds at a key is `content`.
fn holds(now: Option<&ObjectMeta>, content: &Content) -> bool {
    match (now, content) {
        (None, Content::Absent { .. }) => true,
        (Some(m), Content::Present(h)) => h.is(m),
        _ => false,
    }
}

/// A test hook: `REWIND_FAILPOINT=change-step-then-die` aborts the process after the Nth step
/// that changes the store (`REWIND_FAILPOINT_AFTER`, default 1), to test every moment.
fn step_done() {
    crate::step_failpoint("change-step-then-die");
}

/// Carries out an intent: inverts every object of the change it undoes, records the change,
/// drops the intent. Every step is decided by what the store holds, so it can be run again
/// after being stopped at any point.
fn carry_out(log: &Log<'_>, intent: &Intent) -> Result<Change, ChangeError> {
    let changes = log.changes()?;
    if let Some(done) = changes.iter().find(|c| c.id == intent.id) {
        // Recorded before the process stopped: only the intent is left.
        log.store.delete(&intent_key(&intent.id))?;
        return Ok(done.clone());
    }
    let versioned = log.store.versioned()?;
    let mut objects = Vec::new();
    let mut table = None;
    if let Some(undoes) = &intent.undoes {
        let inverse_of = find(&changes, undoes)?;
        // The table first: its readers see the change undone in one commit.
        if let Some(e) = &inverse_of.table {
            let op = match intent.kind {
                ChangeKind::Reapply => "REAPPLY",
                _ => "ROLLBACK",
            };
            table = Some(commit_table(
                log.store,
                &inverse_plan(e, op),
                app_id(&intent.id),
            )?);
            step_done();
        }
        for t in &inverse_of.objects {
            let touch = if versioned {
                invert_versioned(log.store, t)?
            } else {
                invert_kept(log.store, t, &intent.id)?
            };
            objects.push(touch);
        }
    }
    if let Some(plan) = &intent.table {
        table = Some(commit_table(log.store, plan, app_id(&intent.id))?);
        step_done();
    }
    for p in &intent.ops {
        objects.push(forward(log.store, versioned, p, &intent.id)?);
    }
    let change = Change {
        id: intent.id.clone(),
        kind: intent.kind,
        job: intent.job.clone(),
        at_ms: crate::lifecycle::now_ms(),
        who: intent.who.clone(),
        undoes: intent.undoes.clone(),
        target: intent.target.clone(),
        spec: intent.spec.clone(),
        counts: intent.counts.clone(),
        objects,
        kafka: None,
        stream: None,
        table,
        ingest: None,
        retries: None,
    };
    log.write(&change)?;
    step_done();
    log.store.delete(&intent_key(&intent.id))?;
    Ok(change)
}

/// The staging key where change `id` keeps what it displaced from `key`. (`.kept`: no reader's
/// `*.parquet` glob matches it.)
pub fn kept_key(id: &str, key: &str) -> String {
    format!("_rewind/staging/{id}/{key}.kept")
}

/// A move (a copy, then a delete, on S3) stopped between its two steps leaves the content both
/// at `key` and at its kept copy: the delete is done now.
/// (`moved` is what the key held before the move, as recorded.)
fn settle_move(store: &dyn OutputStore, key: &str, moved: &Content) -> Result<(), ChangeError> {
    let now = store.head(key)?;
    if now.is_some() && holds(now.as_ref(), moved) {
        store.delete(key)?;
        step_done();
    }
    Ok(())
}

/// Inverts one object in a store without versions: the content the change left moves to this
/// change's staging, the content before comes back from where it was kept.
fn invert_kept(store: &dyn OutputStore, t: &Touch, id: &str) -> Result<Touch, ChangeError> {
    let conflict = |what: String| ChangeError::Conflict(format!("{}: {what}", t.key));
    let keep = kept_key(id, &t.key);
    // 1. Move away what the change left (done when its kept copy exists).
    let mut new_before = Content::ABSENT;
    if t.after.is_present() {
        let kept = match store.head(&keep)? {
            Some(k) => {
                settle_move(store, &t.key, &t.after)?;
                k
            }
            None => {
                let now = store.head(&t.key)?;
                if !holds(now.as_ref(), &t.after) {
                    return Err(conflict(format!(
                        "changed outside Rewind ({})",
                        describe(now.as_ref())
                    )));
                }
                store.promote(&t.key, &keep)?;
                step_done();
                store.head(&keep)?.ok_or_else(|| {
                    conflict(format!("{keep} is missing right after moving it there"))
                })?
            }
        };
        let mut held = Held::of(&kept);
        held.rows = t.after.held().and_then(|h| h.rows);
        held.kept = Some(keep);
        new_before = Content::Present(held);
    }
    // 2. Bring back what was there before (done when its kept copy is gone and the key is
    // there).
    let new_after = match &t.before {
        Content::Absent { .. } => {
            if let Some(now) = store.head(&t.key)? {
                return Err(conflict(format!(
                    "written outside Rewind meanwhile ({})",
                    describe(Some(&now))
                )));
            }
            Content::ABSENT
        }
        Content::Present(h) => {
            let from = h.kept.as_deref().ok_or_else(|| {
                ChangeError::Refused(format!("{}: nothing kept to restore it from", t.key))
            })?;
            if store.head(from)?.is_some() {
                store.promote(from, &t.key)?;
                step_done();
            }
            let now = store.head(&t.key)?.ok_or_else(|| {
                ChangeError::Refused(format!(
                    "{}: its kept copy {from} is gone (expired?)",
                    t.key
                ))
            })?;
            let mut held = Held::of(&now);
            held.rows = h.rows;
            Content::Present(held)
        }
    };
    Ok(Touch {
        key: t.key.clone(),
        before: new_before,
        after: new_after,
    })
}

/// Inverts one object in a versioned bucket: the content the change left stays as a version;
/// the content before becomes current again (a delete marker removed, or a server-side copy of
/// the prior version).
fn invert_versioned(store: &dyn OutputStore, t: &Touch) -> Result<Touch, ChangeError> {
    let conflict = |what: String| ChangeError::Conflict(format!("{}: {what}", t.key));
    let now = store.head(&t.key)?;
    // What the change left stays as the version that is current now.
    let new_before = match (&t.after, &now) {
        (Content::Present(h), Some(m)) if h.is(m) => Content::Present(Held {
            rows: h.rows,
            ..Held::of(m)
        }),
        (Content::Present(h), _) => Content::Present(Held {
            kept: None,
            ..h.clone()
        }),
        (Content::Absent { .. }, _) => Content::ABSENT,
    };
    if !holds(now.as_ref(), &t.after) {
        // Done already (stopped before the change was recorded)? The key then holds the content
        // before.
        let versions = store.versions(&t.key)?;
        let done = match (&t.before, now.as_ref()) {
            (Content::Absent { .. }, None) => {
                let marker = versions
                    .first()
                    .filter(|v| v.delete_marker)
                    .map(|v| v.version.clone());
                return Ok(Touch {
                    key: t.key.clone(),
                    before: new_before,
                    after: Content::Absent { marker },
                });
            }
            // The content before is there: restored by a copy (a new version of it) or by
            // removing a delete marker (the version itself).
            (Content::Present(h), Some(m)) => h.is(m).then(|| Held {
                rows: h.rows,
                ..Held::of(m)
            }),
            _ => None,
        };
        return match done {
            Some(held) => Ok(Touch {
                key: t.key.clone(),
                before: new_before,
                after: Content::Present(held),
            }),
            None => Err(conflict(format!(
                "changed outside Rewind ({})",
                describe(now.as_ref())
            ))),
        };
    }
    let new_after = match (&t.before, &t.after) {
        (Content::Absent { .. }, _) => {
            let marker = store.remove(&t.key)?;
            step_done();
            Content::Absent { marker }
        }
        (Content::Present(h), after) => {
            let version = h.version.as_deref().ok_or_else(|| {
                ChangeError::Refused(format!("{}: no version recorded to restore", t.key))
            })?;
            // Removed by a delete marker right after the version to restore: deleting the
            // marker brings it back, nothing copied.
            let mut restored = false;
            if let Content::Absent {
                marker: Some(marker),
            } = after
            {
                let versions = store.versions(&t.key)?;
                if versions.first().is_some_and(|v| &v.version == marker)
                    && versions.get(1).is_some_and(|v| v.version == version)
                {
                    store.delete_version(&t.key, marker)?;
                    step_done();
                    restored = true;
                }
            }
            if !restored {
                store.restore_version(&t.key, version)?;
                step_done();
            }
            let now = store
                .head(&t.key)?
                .ok_or_else(|| conflict("gone right after restoring it".into()))?;
            Content::Present(Held {
                rows: h.rows,
                ..Held::of(&now)
            })
        }
    };
    Ok(Touch {
        key: t.key.clone(),
        before: new_before,
        after: new_after,
    })
}

/// Drops what changes older than `before_ms` keep for their reversal: kept copies, and in a
/// versioned bucket the noncurrent versions they would restore (never one a newer change
/// still needs, nor a current one). Says which changes that makes permanent: they can no longer
/// be rolled back (applied changes) or applied again (rolled-back ones).
pub fn expire(store: &dyn OutputStore, before_ms: i64) -> Result<Expired, ChangeError> {
    lock::with_lock(store, "changes expire", || expire_locked(store, before_ms))
}

fn expire_locked(store: &dyn OutputStore, before_ms: i64) -> Result<Expired, ChangeError> {
    finish_pending(store)?;
    let log = Log::new(store);
    let changes = log.changes()?;
    let states = states(&changes);
    let done = log.expired()?;
    let (old, young): (Vec<&Change>, Vec<&Change>) = changes
        .iter()
        .filter(|c| !done.contains(&c.id))
        .partition(|c| c.at_ms < before_ms);
    // What the changes that stay reversible may still bring back.
    let needed: BTreeSet<(&str, Option<&str>, Option<&str>)> = young
        .iter()
        .flat_map(|c| &c.objects)
        .filter_map(|t| {
            let h = t.before.held()?;
            Some((t.key.as_str(), h.version.as_deref(), h.kept.as_deref()))
        })
        .collect();
    let mut report = Expired::default();
    for c in old {
        let mut dropped = false;
        for t in &c.objects {
            let Some(h) = t.before.held() else {
                continue;
            };
            if needed.contains(&(t.key.as_str(), h.version.as_deref(), h.kept.as_deref())) {
                continue;
            }
            if let Some(kept) = &h.kept {
                if store.head(kept)?.is_some() {
                    store.delete(kept)?;
                    report.objects_deleted += 1;
                    dropped = true;
                }
            } else if let Some(v) = &h.version {
                let current = store.head(&t.key)?.and_then(|m| m.version);
                let there = store.versions(&t.key)?.iter().any(|s| &s.version == v);
                if there && current.as_deref() != Some(v.as_str()) {
                    store.delete_version(&t.key, v)?;
                    report.objects_deleted += 1;
                    dropped = true;
                }
            }
        }
        store.put(&format!("{EXPIRED}{}.json", c.id), b"{}")?;
        report.expired.push(c.id.clone());
        // Whose reversal needed what was dropped: an applied change's own rollback; an applied
        // rollback's re-apply of its change.
        if dropped && states[&c.id] == ChangeState::Applied {
            report.now_permanent.push(match c.kind {
                ChangeKind::Rollback | ChangeKind::Reapply => {
                    c.target.clone().unwrap_or_else(|| c.id.clone())
                }
                _ => c.id.clone(),
            });
        }
    }
    Ok(report)
}

mod lock;
pub use lock::{LOCK, STALE_AFTER};

#[cfg(test)]
mod tests;
