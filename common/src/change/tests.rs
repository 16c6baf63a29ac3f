//! The change log against a model: random sequences of changes, rollbacks, rollbacks-to and
//! re-applies, each possibly cut short by a store failure at a random step and then run
//! again, on an in-memory store with and without versions and on a local directory.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use super::*;
use crate::storage::{
    IoStats, LocalOutput, ObjectMeta, OutputFile, OutputStore, StorageError, StoredVersion, Written,
};

/// An object store in memory, with S3's versioning semantics when `versioned`, that fails every
/// mutating call once its budget of them is spent (a crash at that moment, for the caller).
#[derive(Clone)]
struct Mem {
    versioned: bool,
    state: Arc<Mutex<MemState>>,
}

/// A version: its id, and its bytes (`None`: a delete marker).
type MemVersion = (String, Option<Vec<u8>>);

#[derive(Default)]
struct MemState {
    /// Versions of each key, oldest first.
    objects: BTreeMap<String, Vec<MemVersion>>,
    next: u64,
    budget: Option<u64>,
}

fn tag(data: &[u8]) -> String {
    // FNV-1a: a content tag, like an MD5 ETag.
    let h = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("\"{h:016x}\"")
}

impl Mem {
    fn new(versioned: bool) -> Mem {
        Mem {
            versioned,
            state: Arc::default(),
        }
    }

    fn fail_after(&self, steps: Option<u64>) {
        self.state.lock().unwrap().budget = steps;
    }

    fn spend(s: &mut MemState) -> Result<(), StorageError> {
        match &mut s.budget {
            Some(0) => Err(StorageError::Unavailable {
                what: "mem".into(),
                why: "injected failure".into(),
            }),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn write(&self, key: &str, data: Option<Vec<u8>>) -> Result<Option<String>, StorageError> {
        let mut s = self.state.lock().unwrap();
        Self::spend(&mut s)?;
        s.next += 1;
        let id = format!("v{}", s.next);
        let versions = s.objects.entry(key.to_string()).or_default();
        if !self.versioned {
            versions.clear();
            if data.is_none() {
                return Ok(None);
            }
        }
        versions.push((id.clone(), data));
        Ok(self.versioned.then_some(id))
    }

    fn latest(&self, key: &str) -> Option<(String, Vec<u8>)> {
        let s = self.state.lock().unwrap();
        let (id, data) = s.objects.get(key)?.last()?;
        data.clone().map(|d| (id.clone(), d))
    }

    fn meta(&self, key: &str) -> Option<ObjectMeta> {
        self.latest(key).map(|(id, d)| ObjectMeta {
            key: key.to_string(),
            size: d.len() as u64,
            etag: Some(tag(&d)),
            version: self.versioned.then_some(id),
        })
    }
}

struct MemFile {
    store: Mem,
    key: String,
    buf: Vec<u8>,
}

impl Write for MemFile {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl OutputFile for MemFile {
    fn finish(self: Box<Self>) -> Result<Written, StorageError> {
        let size = self.buf.len() as u64;
        let version = self.store.write(&self.key, Some(self.buf))?;
        Ok(Written { size, version })
    }
}

impl OutputStore for Mem {
    fn describe(&self) -> String {
        "mem".into()
    }
    fn create(&self, key: &str) -> Result<Box<dyn OutputFile>, StorageError> {
        Ok(Box::new(MemFile {
            store: self.clone(),
            key: key.into(),
            buf: Vec::new(),
        }))
    }
    fn put(&self, key: &str, bytes: &[u8]) -> Result<Written, StorageError> {
        let version = self.write(key, Some(bytes.to_vec()))?;
        Ok(Written {
            size: bytes.len() as u64,
            version,
        })
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.latest(key).map(|(_, d)| d))
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let keys: Vec<String> = self
            .state
            .lock()
            .unwrap()
            .objects
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        Ok(keys.iter().filter_map(|k| self.meta(k)).collect())
    }
    fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.remove(key).map(drop)
    }
    fn remove(&self, key: &str) -> Result<Option<String>, StorageError> {
        if self.latest(key).is_none() && !self.versioned {
            return Ok(None);
        }
        self.write(key, None)
    }
    fn promote(&self, from: &str, to: &str) -> Result<Written, StorageError> {
        // Like S3: a copy, then a delete (a failure can fall between the two).
        if let Some((_, data)) = self.latest(from) {
            let size = data.len() as u64;
            let version = self.write(to, Some(data))?;
            self.remove(from)?;
            return Ok(Written { size, version });
        }
        let m = self
            .meta(to)
            .ok_or(StorageError::NotFound { what: from.into() })?;
        Ok(Written {
            size: m.size,
            version: m.version,
        })
    }
    fn sweep_unfinished(&self, _: &str) -> Result<u64, StorageError> {
        Ok(0)
    }
    fn with_stats(&self, _: Arc<IoStats>) -> Arc<dyn OutputStore> {
        Arc::new(self.clone())
    }
    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        Ok(self.meta(key))
    }
    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<bool, StorageError> {
        if self.latest(key).is_some() {
            return Ok(false);
        }
        self.put(key, bytes).map(|_| true)
    }
    fn versioned(&self) -> Result<bool, StorageError> {
        Ok(self.versioned)
    }
    fn versions(&self, key: &str) -> Result<Vec<StoredVersion>, StorageError> {
        assert!(self.versioned, "versions of an unversioned store");
        let s = self.state.lock().unwrap();
        Ok(s.objects
            .get(key)
            .map(|v| {
                v.iter()
                    .rev()
                    .map(|(id, d)| StoredVersion {
                        version: id.clone(),
                        delete_marker: d.is_none(),
                        size: d.as_ref().map_or(0, |d| d.len() as u64),
                        etag: d.as_ref().map(|d| tag(d)),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
    fn restore_version(&self, key: &str, version: &str) -> Result<Written, StorageError> {
        let data = {
            let s = self.state.lock().unwrap();
            s.objects
                .get(key)
                .and_then(|v| v.iter().find(|(id, _)| id == version))
                .and_then(|(_, d)| d.clone())
                .ok_or(StorageError::NotFound { what: key.into() })?
        };
        let size = data.len() as u64;
        let version = self.write(key, Some(data))?;
        Ok(Written { size, version })
    }
    fn delete_version(&self, key: &str, version: &str) -> Result<(), StorageError> {
        let mut s = self.state.lock().unwrap();
        Self::spend(&mut s)?;
        if let Some(v) = s.objects.get_mut(key) {
            v.retain(|(id, _)| id != version);
        }
        Ok(())
    }
}

/// What readers see: every object outside `_rewind/`.
fn visible(store: &dyn OutputStore) -> BTreeMap<String, Vec<u8>> {
    store
        .list("")
        .unwrap()
        .into_iter()
        .filter(|o| !o.key.starts_with("_rewind/") && !o.key.contains("/_rewind/"))
        .map(|o| {
            let body = store.get(&o.key).unwrap().unwrap();
            (o.key, body)
        })
        .collect()
}

/// Makes a change of `writes` (a key's new bytes, or `None`: delete it): stages the new
/// contents, then applies them as one change.
fn change(store: &dyn OutputStore, writes: &BTreeMap<String, Option<Vec<u8>>>) -> Change {
    let ops = stage(store, writes);
    apply(store, ChangeKind::Repair, Meta::default(), ops).unwrap()
}

fn stage(store: &dyn OutputStore, writes: &BTreeMap<String, Option<Vec<u8>>>) -> Vec<Op> {
    writes
        .iter()
        .map(|(key, data)| match data {
            Some(d) => {
                let from = format!("_rewind/incoming/{key}.{}", tag(d).trim_matches('"'));
                store.put(&from, d).unwrap();
                Op::Put {
                    key: key.clone(),
                    from,
                    rows: None,
                }
            }
            None => Op::Delete { key: key.clone() },
        })
        .collect()
}

fn writes(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<Vec<u8>>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.map(|v| v.as_bytes().to_vec())))
        .collect()
}

fn content(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

/// Two changes, rollbacks of each, a refused rollback, re-apply and rollback --to, on `store`.
fn walk_through(store: &dyn OutputStore) {
    let first = change(store, &writes(&[("a", Some("a1")), ("b", Some("b1"))]));
    let second = change(store, &writes(&[("b", Some("b2")), ("c", Some("c2"))]));
    assert_eq!(
        visible(store),
        content(&[("a", "a1"), ("b", "b2"), ("c", "c2")])
    );
    // The first cannot go while the second, touching b, is in effect.
    let refused = rollback(store, Some(&first.id), None).unwrap_err();
    assert!(
        matches!(&refused, ChangeError::Conflict(m) if m.contains(&second.id)),
        "{refused}"
    );
    // A dry run names what the rollback will do and changes nothing.
    let preview = preview_rollback(store, None).unwrap();
    assert_eq!(preview.change.id, "dry-run");
    assert_eq!(
        visible(store),
        content(&[("a", "a1"), ("b", "b2"), ("c", "c2")])
    );
    assert!(
        Log::new(store).changes().unwrap().len() == 2,
        "nothing recorded"
    );
    let r2 = rollback(store, None, None).unwrap();
    assert!(!r2.already);
    let keys = |c: &Change| c.objects.iter().map(|t| t.key.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&preview.change), keys(&r2.change));
    assert_eq!(
        preview
            .change
            .objects
            .iter()
            .map(|t| t.after.is_present())
            .collect::<Vec<_>>(),
        r2.change
            .objects
            .iter()
            .map(|t| t.after.is_present())
            .collect::<Vec<_>>()
    );
    assert_eq!(r2.change.target.as_deref(), Some(second.id.as_str()));
    assert_eq!(visible(store), content(&[("a", "a1"), ("b", "b1")]));
    // Run again with the id: done already.
    let again = rollback(store, Some(&second.id), None).unwrap();
    assert!(again.already);
    assert_eq!(again.change.id, r2.change.id);
    let re = reapply(store, &second.id, None).unwrap();
    assert!(!re.already);
    assert_eq!(
        visible(store),
        content(&[("a", "a1"), ("b", "b2"), ("c", "c2")])
    );
    let planned = preview_rollback_to(store, &first.id).unwrap();
    assert_eq!(planned.rollbacks.len(), 1);
    let to = rollback_to(store, &first.id, None).unwrap();
    assert_eq!(to.rollbacks.len(), 1);
    assert_eq!(visible(store), content(&[("a", "a1"), ("b", "b1")]));
    // Newest first, each with its state; the log only grows.
    let listed = Log::new(store).list().unwrap();
    let kinds: Vec<(ChangeKind, ChangeState)> =
        listed.iter().map(|l| (l.change.kind, l.state)).collect();
    assert_eq!(
        kinds,
        vec![
            (ChangeKind::Rollback, ChangeState::Applied),
            (ChangeKind::Reapply, ChangeState::RolledBack),
            // Its re-apply rolled back, the first rollback holds again.
            (ChangeKind::Rollback, ChangeState::Applied),
            (ChangeKind::Repair, ChangeState::RolledBack),
            (ChangeKind::Repair, ChangeState::Applied),
        ]
    );
    assert!(listed[3].reversible, "{:?}", listed[3].why_not);
    assert!(listed[4].reversible, "{:?}", listed[4].why_not);
    let all = rollback(store, None, None).unwrap();
    assert_eq!(all.change.target.as_deref(), Some(first.id.as_str()));
    assert!(visible(store).is_empty());
}

#[test]
fn changes_roll_back_and_apply_again_in_memory_with_versions() {
    walk_through(&Mem::new(true));
}

#[test]
fn changes_roll_back_and_apply_again_in_memory_without_versions() {
    walk_through(&Mem::new(false));
}

#[test]
fn changes_roll_back_and_apply_again_in_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalOutput::new(dir.path());
    walk_through(&store);
    // What a rollback displaced is kept outside every reader's glob.
    let kept: Vec<String> = store
        .list("_rewind/staging/")
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert!(!kept.is_empty());
    assert!(kept.iter().all(|k| k.ends_with(".kept")), "{kept:?}");
}

#[test]
fn a_write_outside_rewind_is_named_and_nothing_moves() {
    let store = Mem::new(false);
    let first = change(&store, &writes(&[("a", Some("a1")), ("b", Some("b1"))]));
    store.put("b", b"edited by hand").unwrap();
    let before = visible(&store);
    let err = rollback(&store, Some(&first.id), None).unwrap_err();
    assert!(
        matches!(&err, ChangeError::Conflict(m) if m.contains("b is not what")),
        "{err}"
    );
    assert_eq!(visible(&store), before, "nothing moved");
}

#[test]
fn expiry_drops_kept_content_and_says_what_became_permanent() {
    for versioned in [false, true] {
        let store = Mem::new(versioned);
        let pause = || std::thread::sleep(std::time::Duration::from_millis(3));
        let first = change(&store, &writes(&[("a", Some("a1"))]));
        pause();
        let second = change(&store, &writes(&[("a", Some("a2"))]));
        pause();
        let third = change(&store, &writes(&[("b", Some("b3"))]));
        let report = expire(&store, third.at_ms).unwrap();
        assert_eq!(report.expired, vec![first.id.clone(), second.id.clone()]);
        // The first added a (nothing to keep); the second replaced a1, which is dropped.
        assert_eq!(report.now_permanent, vec![second.id.clone()]);
        let listed = Log::new(&store).list().unwrap();
        let second_listed = listed.iter().find(|l| l.change.id == second.id).unwrap();
        assert!(!second_listed.reversible);
        assert!(
            rollback(&store, Some(&second.id), None).is_err(),
            "versioned: {versioned}"
        );
        assert_eq!(visible(&store), content(&[("a", "a2"), ("b", "b3")]));
    }
}

/// One change command at a time: a live holder's lock refuses a second command (here the same
/// process, as a second process would be), a dead holder's is broken, and none is left after.
#[test]
fn the_lock_refuses_a_second_command_and_breaks_a_dead_holders() {
    let store = Mem::new(false);
    change(&store, &writes(&[("a", Some("a1"))]));
    // A holder that is alive (this process) and refreshed just now.
    let now = crate::lifecycle::now_ms();
    let live = serde_json::json!({"host": "elsewhere", "pid": 1, "nonce": "x",
        "command": "rollback", "since_ms": now, "refreshed_ms": now});
    store.put(LOCK, live.to_string().as_bytes()).unwrap();
    let err = rollback(&store, None, None).unwrap_err().to_string();
    assert!(
        err.contains("another rollback") && err.contains("elsewhere"),
        "{err}"
    );
    assert_eq!(visible(&store), content(&[("a", "a1")]), "nothing moved");
    // The same holder, silent for longer than the lock lives.
    let old = now - STALE_AFTER.as_millis() as i64 - 1;
    let dead = serde_json::json!({"host": "elsewhere", "pid": 1, "nonce": "x",
        "command": "rollback", "since_ms": old, "refreshed_ms": old});
    store.put(LOCK, dead.to_string().as_bytes()).unwrap();
    rollback(&store, None, None).unwrap();
    assert!(visible(&store).is_empty());
    assert!(store.head(LOCK).unwrap().is_none(), "released");
}

#[test]
fn ids_sort_in_the_order_changes_took_effect() {
    let store = Mem::new(false);
    let ids: Vec<String> = (0..5)
        .map(|i| change(&store, &writes(&[("k", Some(&format!("v{i}")))])).id)
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    assert!(ids.windows(2).all(|w| w[0] != w[1]));
}

/// One step of a random history.
#[derive(Debug, Clone)]
enum Step {
    /// Keys 0..4 get new bytes (true) or are deleted (false).
    Apply(Vec<(u8, bool)>),
    Rollback(Option<usize>),
    RollbackTo(usize),
    Reapply(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => prop::collection::vec((0u8..4, prop::bool::weighted(0.8)), 1..4).prop_map(Step::Apply),
        2 => prop::option::of(0usize..8).prop_map(Step::Rollback),
        1 => (0usize..8).prop_map(Step::RollbackTo),
        2 => (0usize..8).prop_map(Step::Reapply),
    ]
}

/// The model: what each data change set, and whether it is in effect.
struct Model {
    now: BTreeMap<String, Vec<u8>>,
    changes: Vec<ModelChange>,
    clock: u64,
}

struct ModelChange {
    id: String,
    before: BTreeMap<String, Option<Vec<u8>>>,
    after: BTreeMap<String, Option<Vec<u8>>>,
    applied: bool,
    created: u64,
    at: u64,
}

impl Model {
    fn matches(&self, side: &BTreeMap<String, Option<Vec<u8>>>) -> bool {
        side.iter().all(|(k, v)| self.now.get(k) == v.as_ref())
    }

    fn set(&mut self, side: &BTreeMap<String, Option<Vec<u8>>>) {
        for (k, v) in side {
            match v {
                Some(v) => self.now.insert(k.clone(), v.clone()),
                None => self.now.remove(k),
            };
        }
    }

    /// Whether a change in effect since `i` last changed state touched the same keys (undoing
    /// or re-doing `i` now would undo theirs).
    fn later_in_effect(&self, i: usize) -> bool {
        let c = &self.changes[i];
        self.changes.iter().enumerate().any(|(j, d)| {
            j != i && d.applied && d.at > c.at && d.after.keys().any(|k| c.after.contains_key(k))
        })
    }

    /// Rolls back change `i` when it may be; whether it was.
    fn roll_back(&mut self, i: usize) -> bool {
        let c = &self.changes[i];
        if !c.applied || !self.matches(&c.after) || self.later_in_effect(i) {
            return false;
        }
        let before = c.before.clone();
        self.set(&before);
        self.clock += 1;
        let c = &mut self.changes[i];
        c.applied = false;
        c.at = self.clock;
        true
    }
}

/// Runs `op` with the store failing after `fail` mutating steps; when it failed, runs `again`
/// with no failure (the user running the command again).
fn with_fault<T>(
    store: &Mem,
    fail: Option<u64>,
    op: impl Fn() -> Result<T, ChangeError>,
) -> Result<T, ChangeError> {
    store.fail_after(fail);
    let first = op();
    store.fail_after(None);
    match first {
        Err(ChangeError::Storage(_)) => op(),
        other => other,
    }
}

fn run_history(versioned: bool, steps: Vec<(Step, Option<u64>)>) -> Result<(), TestCaseError> {
    let store = Mem::new(versioned);
    let mut model = Model {
        now: BTreeMap::new(),
        changes: Vec::new(),
        clock: 0,
    };
    let mut counter = 0u32;
    for (step, fail) in steps {
        match step {
            Step::Apply(keys) => {
                let mut w = BTreeMap::new();
                for (k, put) in keys {
                    let key = format!("k{k}");
                    if put {
                        counter += 1;
                        let bytes = format!("{key}-{counter}").into_bytes();
                        w.insert(key, Some(bytes));
                    } else if model.now.contains_key(&key) {
                        w.insert(key, None);
                    }
                }
                if w.is_empty() {
                    continue;
                }
                let ops = stage(&store, &w);
                // Run again, a change stopped after its intent is finished by the next command;
                // one stopped before it is made anew.
                let done = with_fault(&store, fail, || match resume_pending(&store)?.pop() {
                    Some(c) => Ok(c),
                    None => apply(&store, ChangeKind::Repair, Meta::default(), ops.clone()),
                })
                .unwrap();
                let before = w
                    .keys()
                    .map(|k| (k.clone(), model.now.get(k).cloned()))
                    .collect();
                model.set(&w);
                model.clock += 1;
                model.changes.push(ModelChange {
                    id: done.id,
                    before,
                    after: w,
                    applied: true,
                    created: model.clock,
                    at: model.clock,
                });
            }
            Step::Rollback(which) => {
                let target = match which {
                    Some(i) if !model.changes.is_empty() => Some(i % model.changes.len()),
                    Some(_) => continue,
                    None => (0..model.changes.len())
                        .filter(|&i| model.changes[i].applied)
                        .max_by_key(|&i| model.changes[i].at),
                };
                let id = which.and(target).map(|i| model.changes[i].id.clone());
                let got = with_fault(&store, fail, || rollback(&store, id.as_deref(), None));
                match target {
                    None => prop_assert!(got.is_err(), "nothing to roll back: {got:?}"),
                    Some(i) if !model.changes[i].applied => {
                        prop_assert!(got.is_ok_and(|d| d.already), "rolled back already")
                    }
                    Some(i) => {
                        let may = model.roll_back(i);
                        prop_assert_eq!(got.is_ok(), may, "rollback of {}: {:?}", i, got);
                    }
                }
            }
            Step::RollbackTo(i) => {
                if model.changes.is_empty() {
                    continue;
                }
                let i = i % model.changes.len();
                let id = model.changes[i].id.clone();
                let preview = preview_rollback_to(&store, &id).unwrap();
                let got = with_fault(&store, fail, || rollback_to(&store, &id, None));
                // Newest first, every applied change made after `i` (by when it took effect).
                let cut = model.changes[i].created;
                let mut later: Vec<usize> = (0..model.changes.len())
                    .filter(|&j| j != i && model.changes[j].applied && model.changes[j].at > cut)
                    .collect();
                later.sort_by_key(|&j| std::cmp::Reverse(model.changes[j].at));
                if got.is_ok() {
                    prop_assert_eq!(preview.rollbacks.len(), later.len(), "the dry run's list");
                }
                let mut all = true;
                for j in later {
                    if !model.roll_back(j) {
                        all = false;
                        break;
                    }
                }
                prop_assert_eq!(
                    got.is_ok(),
                    all,
                    "rollback --to {}: {:?}",
                    i,
                    got.map(|d| d.rollbacks.len())
                );
            }
            Step::Reapply(i) => {
                if model.changes.is_empty() {
                    continue;
                }
                let i = i % model.changes.len();
                let id = model.changes[i].id.clone();
                let was_rolled_back = !model.changes[i].applied;
                let got = with_fault(&store, fail, || reapply(&store, &id, None));
                let c = &model.changes[i];
                if !was_rolled_back {
                    // Applied: done already when it was re-applied before, refused otherwise.
                    prop_assert!(got.as_ref().map_or(true, |d| d.already), "{got:?}");
                } else if model.matches(&c.before) && !model.later_in_effect(i) {
                    prop_assert!(got.is_ok(), "reapply of {}: {:?}", i, got);
                    let after = c.after.clone();
                    model.set(&after);
                    model.clock += 1;
                    let c = &mut model.changes[i];
                    c.applied = true;
                    c.at = model.clock;
                } else {
                    prop_assert!(
                        got.is_err(),
                        "reapply of {} over other content: {:?}",
                        i,
                        got
                    );
                }
            }
        }
        prop_assert_eq!(&visible(&store), &model.now);
        prop_assert!(store.list(INTENTS).unwrap().is_empty(), "no intent left");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn histories_match_the_model_with_versions(
        steps in prop::collection::vec((step(), prop::option::weighted(0.3, 0u64..12)), 1..24)
    ) {
        run_history(true, steps)?;
    }

    #[test]
    fn histories_match_the_model_without_versions(
        steps in prop::collection::vec((step(), prop::option::weighted(0.3, 0u64..12)), 1..24)
    ) {
        run_history(false, steps)?;
    }
}
