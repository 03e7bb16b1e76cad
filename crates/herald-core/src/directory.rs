//! Who holds which session: the identity/ownership seam.
//!
//! Every question "which sessions does uid X have, and may this login proceed?" goes through
//! [`Directory`]: the per-uid serialization of identity decisions, the open sessions of a uid,
//! lookups by session id, and the tombstones of closed sessions. This build holds it in memory
//! for one node. A cluster backend replaces this module (per-uid locks and session ownership in
//! Redis, with remote evictions sent to the owning node); the engine only calls the methods
//! below, so it does not change.
//!
//! Lock order: the directory's lock before any session's `inner` lock; never across `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use herald_store::SessionState;
use tokio::sync::OwnedMutexGuard;

use crate::session::{SessionShared, Tombstone};

#[derive(Default)]
struct Maps {
    /// Sessions not closed.
    sessions: HashMap<String, Arc<SessionShared>>,
    /// uid → device → session id.
    by_uid: HashMap<String, HashMap<String, String>>,
    /// Closed sessions, kept for `tombstone_ms` so late resumes learn why.
    tombstones: HashMap<String, Tombstone>,
}

/// What a session id refers to.
pub(crate) enum Found {
    Open(Arc<SessionShared>),
    Closed(Tombstone),
    Unknown,
}

#[derive(Default)]
pub(crate) struct Directory {
    maps: Mutex<Maps>,
    /// One async lock per uid with an identity decision in progress.
    uid_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Directory {
    fn maps(&self) -> MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serializes identity decisions (open, kick) for `uid`. Hold the guard across the decision.
    pub(crate) async fn lock_uid(&self, uid: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut g = self.uid_locks.lock().unwrap_or_else(|p| p.into_inner());
            g.retain(|_, l| Arc::strong_count(l) > 1);
            g.entry(uid.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Registers an open session (new, or restored at start).
    pub(crate) fn insert(&self, s: Arc<SessionShared>) {
        let mut m = self.maps();
        m.by_uid
            .entry(s.uid.clone())
            .or_default()
            .insert(s.device.clone(), s.id.clone());
        m.sessions.insert(s.id.clone(), s);
    }

    /// Keeps a tombstone (restored at start).
    pub(crate) fn insert_tombstone(&self, id: String, t: Tombstone) {
        self.maps().tombstones.insert(id, t);
    }

    pub(crate) fn find(&self, id: &str) -> Found {
        let m = self.maps();
        if let Some(s) = m.sessions.get(id) {
            Found::Open(s.clone())
        } else if let Some(t) = m.tombstones.get(id) {
            Found::Closed(t.clone())
        } else {
            Found::Unknown
        }
    }

    pub(crate) fn get(&self, id: &str) -> Option<Arc<SessionShared>> {
        self.maps().sessions.get(id).cloned()
    }

    /// Open sessions of `uid`.
    pub(crate) fn of_uid(&self, uid: &str) -> Vec<Arc<SessionShared>> {
        let m = self.maps();
        m.by_uid.get(uid).map_or_else(Vec::new, |devs| {
            devs.values()
                .filter_map(|id| m.sessions.get(id).cloned())
                .collect()
        })
    }

    /// Every open session.
    pub(crate) fn all(&self) -> Vec<Arc<SessionShared>> {
        self.maps().sessions.values().cloned().collect()
    }

    /// Marks `s` closed (under the directory lock, so no lookup sees a closed session as
    /// open) and keeps its tombstone.
    pub(crate) fn close(&self, s: &SessionShared, reason: &str, by: Option<String>, now_ms: u64) {
        let mut m = self.maps();
        {
            let mut g = s.lock();
            g.state = SessionState::Closed;
            g.closed_reason = Some(reason.to_string());
            g.closed_by = by.clone();
            g.last_seen_ms = now_ms;
        }
        m.sessions.remove(&s.id);
        if let Some(devs) = m.by_uid.get_mut(&s.uid) {
            if devs.get(&s.device) == Some(&s.id) {
                devs.remove(&s.device);
            }
            if devs.is_empty() {
                m.by_uid.remove(&s.uid);
            }
        }
        m.tombstones.insert(
            s.id.clone(),
            Tombstone {
                uid: s.uid.clone(),
                device: s.device.clone(),
                key: s.key.clone(),
                reason: reason.to_string(),
                by_conn: by,
                at_ms: now_ms,
            },
        );
    }

    /// Forgets tombstones older than `keep_ms` (0 keeps them forever).
    pub(crate) fn purge_tombstones(&self, now_ms: u64, keep_ms: u64) {
        if keep_ms > 0 {
            self.maps()
                .tombstones
                .retain(|_, t| now_ms.saturating_sub(t.at_ms) < keep_ms);
        }
    }

    /// The most recently closed session of each device of `uid` (for traces). Scans the
    /// tombstones: an operator query, not a hot path.
    pub(crate) fn last_closed(&self, uid: &str) -> HashMap<String, (String, Tombstone)> {
        let m = self.maps();
        let mut out: HashMap<String, (String, Tombstone)> = HashMap::new();
        for (id, t) in m.tombstones.iter().filter(|(_, t)| t.uid == uid) {
            let newer = out
                .get(&t.device)
                .is_none_or(|(_, known)| known.at_ms <= t.at_ms);
            if newer {
                out.insert(t.device.clone(), (id.clone(), t.clone()));
            }
        }
        out
    }

    pub(crate) fn tombstone_count(&self) -> usize {
        self.maps().tombstones.len()
    }
}
