//! One change command at a time per destination: `_rewind/lock.json`, created with a
//! conditional write (S3 `If-None-Match: *`, a local `create_new`), refreshed while held, removed
//! when done. A lock its holder can no longer hold is broken: on the same host when the holding
//! process is gone (a killed rollback run again goes on at once), elsewhere when it was not
//! refreshed for [`STALE_AFTER`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ChangeError;
use crate::storage::OutputStore;

pub const LOCK: &str = "_rewind/lock.json";
/// A lock not refreshed for this long is a dead holder's.
pub const STALE_AFTER: Duration = Duration::from_secs(600);
/// How often a holder refreshes it.
const REFRESH: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Holder {
    host: String,
    pid: u32,
    /// Tells two holders in one process apart.
    nonce: String,
    command: String,
    since_ms: i64,
    refreshed_ms: i64,
}

fn host() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// The locks this process holds now (their nonces): one of ours that is not among them was
/// left by a release that failed.
static HELD: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn holding(nonce: &str) -> bool {
    HELD.lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|n| n == nonce)
}

/// Whether a process of this host is alive (Linux: its /proc entry).
fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Runs `f` holding the destination's lock for `command`: taken first (breaking one a dead
/// holder left; refused when a live holder has it), refreshed while `f` runs, released after.
pub fn with_lock<T>(
    store: &dyn OutputStore,
    command: &str,
    f: impl FnOnce() -> Result<T, ChangeError>,
) -> Result<T, ChangeError> {
    let me = take(store, command)?;
    HELD.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(me.nonce.clone());
    let out = std::thread::scope(|s| {
        // Dropping the sender stops the refresher at once.
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let holder = me.clone();
        s.spawn(move || refresh(store, holder, stopped));
        let out = f();
        drop(stop);
        out
    });
    // Released only if it is still ours (a holder thought dead may have been broken).
    let ours = store
        .get(LOCK)
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice::<Holder>(&b).ok())
        .is_some_and(|h| h.nonce == me.nonce);
    if ours {
        let _ = store.delete(LOCK);
    }
    HELD.lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|n| n != &me.nonce);
    out
}

fn refresh(store: &dyn OutputStore, mut me: Holder, stopped: std::sync::mpsc::Receiver<()>) {
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(REFRESH) {
        me.refreshed_ms = crate::lifecycle::now_ms();
        if let Ok(body) = serde_json::to_vec(&me) {
            let _ = store.put(LOCK, &body);
        }
    }
}

fn take(store: &dyn OutputStore, command: &str) -> Result<Holder, ChangeError> {
    let now = crate::lifecycle::now_ms();
    let me = Holder {
        host: host(),
        pid: std::process::id(),
        nonce: crate::JobId::generate().to_string(),
        command: command.to_string(),
        since_ms: now,
        refreshed_ms: now,
    };
    let body = serde_json::to_vec(&me).unwrap_or_default();
    for _ in 0..3 {
        if store.put_if_absent(LOCK, &body)? {
            return Ok(me);
        }
        let Some(seen) = store.get(LOCK)? else {
            continue; // released meanwhile
        };
        let held: Option<Holder> = serde_json::from_slice(&seen).ok();
        let stale = match &held {
            None => true,
            Some(h) if h.host == me.host && h.pid == me.pid => !holding(&h.nonce),
            Some(h) if h.host == me.host => !alive(h.pid),
            Some(h) => crate::lifecycle::now_ms() - h.refreshed_ms > STALE_AFTER.as_millis() as i64,
        };
        if let (false, Some(h)) = (stale, &held) {
            return Err(ChangeError::Refused(format!(
                "another {} (process {} on {}) has been changing this destination since {}; run \
                 one change command at a time (the lock of a holder that died is broken at once \
                 on its host, after {} minutes without refresh elsewhere)",
                h.command,
                h.pid,
                h.host,
                chrono::DateTime::from_timestamp_millis(h.since_ms)
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                    .unwrap_or_default(),
                STALE_AFTER.as_secs() / 60
            )));
        }
        // A dead holder's: broken, if it is still the same lock.
        if store.get(LOCK)?.as_deref() == Some(&seen[..]) {
            tracing::warn!(holder = ?held, "breaking the lock of a dead holder");
            store.delete(LOCK)?;
        }
    }
    Err(ChangeError::Refused(
        "could not take the destination's lock: others keep taking it".into(),
    ))
}
