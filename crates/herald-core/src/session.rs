//! A session: the unit that survives disconnects. It outlives connections (a connection
//! attaches to it, and a resume re-attaches), and is persisted so it survives restarts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use herald_protocol::Evicted;
use herald_store::{SessionRecord, SessionState};
use tokio::sync::{mpsc, Notify};

/// Answers kept per session so a resent request gets its original answer.
pub const ANSWER_CACHE: usize = 256;

/// What the engine tells an attached connection.
#[derive(Debug, Clone)]
pub enum Control {
    /// Send this `evicted` frame and close with 4009. Boxed: every connection's control
    /// channel allocates a block of 32 slots up front, so the slot size is per-connection
    /// memory (an unboxed `Evicted` made it ~1.8 KB).
    Evict(Box<Evicted>),
    /// The server is shutting down: close with 1001, the session stays resumable.
    Shutdown,
}

/// The connection currently attached to a session.
#[derive(Debug)]
pub(crate) struct ConnSlot {
    pub(crate) conn_id: String,
    pub(crate) addr: String,
    pub(crate) control: mpsc::UnboundedSender<Control>,
}

pub(crate) struct SessionShared {
    pub(crate) id: String,
    /// SHA-256 of the resume secret (`sha256:<hex>`, see `resume_key`).
    pub(crate) key: String,
    pub(crate) uid: String,
    pub(crate) device: String,
    pub(crate) created_ms: u64,
    pub(crate) inner: Mutex<SessionInner>,
    /// Woken whenever `pending` drops to zero.
    pub(crate) idle: Notify,
    /// Serializes persisting, so the newest snapshot is always the one written last.
    pub(crate) persist: tokio::sync::Mutex<()>,
}

pub(crate) struct SessionInner {
    pub(crate) state: SessionState,
    pub(crate) reconnect_timeout_ms: u64,
    pub(crate) last_seen_ms: u64,
    /// Highest `seq` processed (answered).
    pub(crate) acked_seq: u64,
    /// Highest `seq` accepted for processing.
    pub(crate) submitted_seq: u64,
    /// Requests accepted but not yet answered.
    pub(crate) pending: usize,
    /// Channel → acknowledged offset.
    pub(crate) subs: BTreeMap<String, u64>,
    /// Channel → the offset its subscription started after (for traces: earlier messages
    /// were never meant for this session).
    pub(crate) sub_start: BTreeMap<String, u64>,
    pub(crate) conn: Option<ConnSlot>,
    /// Bumped at every attach; a connection whose generation is stale owns nothing.
    pub(crate) generation: u64,
    /// Recent answers by seq, oldest first.
    pub(crate) answers: VecDeque<(u64, String)>,
    /// Highest offset ever sent per stream key (counts redeliveries).
    pub(crate) sent_high: HashMap<String, u64>,
    /// Channel positions moved since the last persist.
    pub(crate) dirty: bool,
    /// Why the session closed (`expired`, `bye`, an eviction reason), once closed.
    pub(crate) closed_reason: Option<String>,
    /// The connection that caused an eviction.
    pub(crate) closed_by: Option<String>,
}

impl SessionShared {
    pub(crate) fn from_record(r: &SessionRecord) -> SessionShared {
        SessionShared {
            id: r.id.clone(),
            key: r.key.clone(),
            uid: r.uid.clone(),
            device: r.device.clone(),
            created_ms: r.created_ms,
            inner: Mutex::new(SessionInner {
                state: r.state,
                reconnect_timeout_ms: r.reconnect_timeout_ms,
                last_seen_ms: r.last_seen_ms,
                acked_seq: r.acked_seq,
                submitted_seq: r.acked_seq,
                pending: 0,
                subs: r.subs.clone(),
                sub_start: r.sub_start.clone(),
                conn: None,
                generation: 0,
                answers: VecDeque::new(),
                sent_high: HashMap::new(),
                dirty: false,
                closed_reason: r.closed_reason.clone(),
                closed_by: r.closed_by.clone(),
            }),
            idle: Notify::new(),
            persist: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, SessionInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn record_locked(&self, g: &SessionInner) -> SessionRecord {
        SessionRecord {
            id: self.id.clone(),
            key: self.key.clone(),
            uid: self.uid.clone(),
            device: self.device.clone(),
            created_ms: self.created_ms,
            last_seen_ms: g.last_seen_ms,
            acked_seq: g.acked_seq,
            reconnect_timeout_ms: g.reconnect_timeout_ms,
            state: g.state,
            closed_reason: g.closed_reason.clone(),
            closed_by: g.closed_by.clone(),
            subs: g.subs.clone(),
            sub_start: g.sub_start.clone(),
        }
    }

    /// Records the answer to `seq` and marks it processed.
    pub(crate) fn answered(&self, seq: u64, frame: &str) {
        let mut g = self.lock();
        g.acked_seq = g.acked_seq.max(seq);
        g.answers.push_back((seq, frame.to_string()));
        while g.answers.len() > ANSWER_CACHE {
            g.answers.pop_front();
        }
    }

    /// One accepted request finished.
    pub(crate) fn done(&self) {
        let mut g = self.lock();
        g.pending = g.pending.saturating_sub(1);
        if g.pending == 0 {
            drop(g);
            self.idle.notify_waiters();
        }
    }

    /// Waits until no accepted request is still being processed.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.lock().pending == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A closed session kept so a late resume learns why (not just "unknown").
#[derive(Debug, Clone)]
pub(crate) struct Tombstone {
    pub(crate) uid: String,
    pub(crate) device: String,
    pub(crate) key: String,
    /// `expired`, `bye`, or an eviction reason.
    pub(crate) reason: String,
    pub(crate) by_conn: Option<String>,
    pub(crate) at_ms: u64,
}
