//! Helpers shared by the store tests: a recording commit listener (that can hold the writer
//! thread to force batching), message builders, and store openers.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::Poll;

use herald_store::sqlite::{SqliteConfig, SqliteStore};
use herald_store::*;
use tokio::sync::Notify;

/// Records every committed batch. Can be armed to park the writer thread inside the next
/// `committed` call, so the test can queue commands that will then share one batch.
#[derive(Default)]
pub(crate) struct Recorder {
    pub(crate) batches: Mutex<Vec<Vec<Arc<StoredMessage>>>>,
    /// What the listener was told retention trimmed at append time, in order.
    pub(crate) trimmed: Mutex<Vec<Trimmed>>,
    hold: Mutex<Option<mpsc::Receiver<()>>>,
    parked: Notify,
}

impl CommitListener for Recorder {
    fn committed(&self, messages: &[Arc<StoredMessage>]) {
        self.batches.lock().unwrap().push(messages.to_vec());
        let hold = self.hold.lock().unwrap().take();
        if let Some(release) = hold {
            self.parked.notify_one();
            let _ = release.recv();
        }
    }

    fn trimmed(&self, streams: &[Trimmed]) {
        self.trimmed.lock().unwrap().extend_from_slice(streams);
    }
}

impl Recorder {
    /// Every message the listener saw, in the order it saw them.
    pub(crate) fn messages(&self) -> Vec<Arc<StoredMessage>> {
        self.batches
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// Parks the writer in its next listener call; send on the returned channel (or drop
    /// it) to let it go.
    pub(crate) fn arm(&self) -> mpsc::Sender<()> {
        let (tx, rx) = mpsc::channel();
        *self.hold.lock().unwrap() = Some(rx);
        tx
    }

    /// Waits until the writer is parked by [`Recorder::arm`].
    pub(crate) async fn parked(&self) {
        self.parked.notified().await;
    }
}

/// Polls `fut` once: enough for a store call to hand its command to the writer.
pub(crate) async fn poll_once<F: Future + ?Sized>(mut fut: Pin<&mut F>) {
    std::future::poll_fn(|cx| {
        let _ = fut.as_mut().poll(cx);
        Poll::Ready(())
    })
    .await
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh message id.
pub(crate) fn next_id() -> String {
    format!("m_{}", NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

/// A message with a fresh id and a small JSON body.
pub(crate) fn msg(stream: &str, from: &str, ts: u64) -> NewMessage {
    let id = next_id();
    NewMessage {
        stream: stream.into(),
        body: Body::from_json(format!(r#"{{"id":"{id}","text":"hello"}}"#)).unwrap(),
        id,
        from: from.into(),
        ts,
        receipt: false,
        idem: None,
        session_seq: None,
    }
}

/// A message carrying idempotency key `key`.
pub(crate) fn keyed(stream: &str, from: &str, ts: u64, key: &str) -> NewMessage {
    NewMessage {
        idem: Some(key.into()),
        ..msg(stream, from, ts)
    }
}

pub(crate) fn db_path(dir: &Path) -> PathBuf {
    dir.join("data").join("herald.db")
}

/// Defaults for tests: OS durability (fast), the database under `dir/data/`.
pub(crate) fn config(dir: &Path) -> SqliteConfig {
    SqliteConfig {
        durability: Durability::Os,
        ..SqliteConfig::new(db_path(dir))
    }
}

pub(crate) fn open_with(cfg: SqliteConfig) -> (SqliteStore, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let store = SqliteStore::open(cfg, recorder.clone()).unwrap();
    (store, recorder)
}

pub(crate) fn open(dir: &Path) -> (SqliteStore, Arc<Recorder>) {
    open_with(config(dir))
}

/// The stored message of an outcome that must not be a duplicate.
pub(crate) fn stored(outcome: AppendOutcome) -> Arc<StoredMessage> {
    match outcome {
        AppendOutcome::Stored(m) => m,
        dup @ AppendOutcome::Duplicate { .. } => panic!("expected a new message, got {dup:?}"),
    }
}

/// Every retained message of `stream`.
pub(crate) async fn all(store: &SqliteStore, stream: &str) -> Vec<Arc<StoredMessage>> {
    store.read(stream, 0, usize::MAX).await.unwrap()
}

pub(crate) fn offsets(messages: &[Arc<StoredMessage>]) -> Vec<u64> {
    messages.iter().map(|m| m.offset).collect()
}

pub(crate) fn session(id: &str, acked_seq: u64) -> SessionRecord {
    SessionRecord {
        id: id.into(),
        key: format!("key-{id}"),
        uid: "alice".into(),
        device: "phone".into(),
        created_ms: 1_000,
        last_seen_ms: 2_000,
        acked_seq,
        reconnect_timeout_ms: 60_000,
        state: SessionState::Connected,
        closed_reason: None,
        closed_by: None,
        subs: [("room1".to_string(), 4u64)].into_iter().collect(),
        sub_start: [("room1".to_string(), 2u64)].into_iter().collect(),
    }
}

/// A retention policy with every rule disabled.
pub(crate) fn keep_all() -> Retention {
    Retention {
        channel_max_messages: 0,
        channel_max_age_ms: 0,
        inbox_max_age_ms: 0,
        dedupe_window_ms: 0,
        tombstone_ms: 0,
    }
}
