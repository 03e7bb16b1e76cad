//! herald storage: the [`Store`] trait and its backends.
//!
//! The store owns everything that must survive a crash: messages and their per-stream offsets,
//! device inbox cursors, sessions (so they resume after a restart), idempotency keys, delivery
//! records and the event feed. It owns no delivery logic: the engine decides what to write and
//! when; the store makes it durable and says so only once it is.
//!
//! Offsets are assigned by the store at append time, per stream, contiguous from 1 and never
//! reused — not even after a failed commit (a failed batch gives its offsets back before anyone
//! saw them) or after retention trimmed everything.

pub mod error;
pub mod model;
pub mod sqlite;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;

pub use error::StoreError;
pub use model::*;

/// Receives committed messages, in commit order, right after each durable commit.
///
/// Called on the store's writer thread: implementations must be quick and never block
/// (update an in-memory tail, wake subscribers). This is the seam live fan-out hangs on;
/// a multi-node backend would publish here too.
pub trait CommitListener: Send + Sync + 'static {
    fn committed(&self, messages: &[Arc<StoredMessage>]);

    /// Retention removed a prefix of these streams in a commit (a channel's count cap holds
    /// at append time). Called on the writer thread after the commit, before any answer.
    fn trimmed(&self, streams: &[Trimmed]) {
        let _ = streams;
    }
}

/// Observes every transaction of the store's writer (for metrics): how many operations it
/// held and how long it took.
///
/// Called on the writer thread after each batch, committed or rolled back: implementations
/// must be quick and never block (bump counters, observe a histogram).
pub trait CommitObserver: Send + Sync + 'static {
    /// `ops` operations ran in one transaction for `elapsed` (from `BEGIN` to the end of
    /// `COMMIT`, or of the failed statement); `committed` is false when it was rolled back.
    fn batch(&self, ops: usize, elapsed: std::time::Duration, committed: bool);
}

/// Durable storage for one herald node (or a cluster sharing a backend).
///
/// Every write method resolves only after its effect is durable under the configured
/// durability; an `Err` means nothing of that call became durable (see [`StoreError`]).
/// The result of an append, resolved once it is durable (or known not to be).
pub type AppendFuture = Pin<Box<dyn Future<Output = Result<AppendOutcome, StoreError>> + Send>>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Appends one message: assigns the next offset of `msg.stream`, records the idempotency
    /// key and the sender session's `seq` in the same commit. A known idempotency key
    /// (same `from`, within the dedupe window) stores nothing and returns the original.
    ///
    /// Eager: the append is queued when this method is *called*, not when the future is
    /// polled, and appends are applied in call order. The engine relies on this so that a
    /// session's recorded `seq` can never cover an earlier request that was not stored.
    fn append(&self, msg: NewMessage) -> AppendFuture;

    /// Up to `limit` retained messages of `stream` with offset > `after`, in offset order.
    async fn read(
        &self,
        stream: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<StoredMessage>>, StoreError>;

    /// The offsets currently held by `stream` (an unknown stream is empty at 0).
    async fn bounds(&self, stream: &str) -> Result<StreamBounds, StoreError>;

    /// One message by id, if still retained.
    async fn message(&self, id: &str) -> Result<Option<Arc<StoredMessage>>, StoreError>;

    /// What is left of message `id` if retention removed it (inbox messages only, kept for
    /// `retention.tombstone_ms`). Backends that keep nothing answer `None`.
    async fn trimmed_message(&self, id: &str) -> Result<Option<TrimmedMessage>, StoreError> {
        let _ = id;
        Ok(None)
    }

    /// Messages matching `q`, oldest first.
    async fn search(&self, q: &SearchQuery) -> Result<Vec<Arc<StoredMessage>>, StoreError>;

    /// Creates or replaces a session record. `acked_seq` never moves backwards.
    async fn put_session(&self, rec: SessionRecord) -> Result<(), StoreError>;

    /// Every session not yet purged (including closed ones kept as tombstones).
    async fn load_sessions(&self) -> Result<Vec<SessionRecord>, StoreError>;

    /// Removes a session record for good.
    async fn delete_session(&self, id: &str) -> Result<(), StoreError>;

    /// Moves the inbox cursor of (uid, device) forward to `offset` (never backwards) and
    /// records that the device acknowledged up to `offset` at `ts`. Creates the device if new,
    /// recording `offset` as its start and `ts` as when it was first seen. Resolves once
    /// durable.
    async fn set_cursor(
        &self,
        uid: &str,
        device: &str,
        offset: u64,
        ts: u64,
    ) -> Result<(), StoreError>;

    /// [`Store::set_cursor`] without an answer: queued now, made durable within a short
    /// while or at the next [`Store::barrier`] (the moves of one device meanwhile become one
    /// write). For acks, which
    /// nobody waits on: a lost cursor move only means a redelivery, which clients dedupe. A
    /// failure is logged by the store.
    fn advance_cursor(&self, uid: &str, device: &str, offset: u64, ts: u64);

    /// The inbox cursor of (uid, device), including moves queued by
    /// [`Store::advance_cursor`] and not yet durable; `None` for a device never seen.
    async fn cursor(&self, uid: &str, device: &str) -> Result<Option<u64>, StoreError>;

    /// All known devices of `uid` with their durable cursors.
    async fn devices(&self, uid: &str) -> Result<Vec<DeviceCursor>, StoreError>;

    /// Records that a run of inbox messages was sent to a device. Queued now, durable within
    /// a short while or at the next [`Store::barrier`]; nothing waits on it (a failure is
    /// logged by the store).
    fn record_sent(&self, range: SentRange);

    /// Per device, what happened to message `msg_id`: derived from the sent ranges covering
    /// its offset and from the device's acknowledgements.
    async fn deliveries(&self, msg_id: &str) -> Result<Vec<DeliveryRecord>, StoreError>;

    /// Appends to the event feed (evictions, resume failures, gaps, kicks).
    async fn append_event(&self, e: NewEvent) -> Result<Event, StoreError>;

    /// Appends to the event feed and, in the same commit, queues one webhook delivery per
    /// entry of `targets` (webhook URLs) in the outbox: the event is durable with its
    /// deliveries or not at all. With no targets this is [`Store::append_event`].
    async fn append_event_with_outbox(
        &self,
        e: NewEvent,
        targets: Vec<String>,
    ) -> Result<Event, StoreError>;

    /// Up to `limit` outbox deliveries due at `now_ms` (`next_attempt_ms <= now_ms`), the
    /// longest-waiting first.
    async fn due_deliveries(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<OutboxDelivery>, StoreError>;

    /// How many deliveries are pending and when the next one is due.
    async fn outbox_status(&self) -> Result<OutboxStatus, StoreError>;

    /// The delivery succeeded: removes it from the outbox.
    async fn mark_delivered(&self, id: u64) -> Result<(), StoreError>;

    /// The delivery failed: counts the attempt, records `error` and defers the next attempt
    /// to `next_attempt_ms`. Returns the number of failed attempts so far (0 if the delivery
    /// is no longer in the outbox).
    async fn mark_failed(
        &self,
        id: u64,
        next_attempt_ms: u64,
        error: &str,
    ) -> Result<u32, StoreError>;

    /// Gives a delivery up without making it (its webhook is gone, or it is too old).
    async fn drop_delivery(&self, id: u64) -> Result<(), StoreError>;

    /// Events oldest first: with `after_id`, the first `limit` after it (a follower never skips
    /// one); otherwise the newest `limit`.
    async fn events(&self, q: &EventQuery) -> Result<Vec<Event>, StoreError>;

    /// Applies retention at time `now_ms`; returns the streams whose oldest offset moved.
    async fn trim(&self, now_ms: u64, policy: &Retention) -> Result<Vec<Trimmed>, StoreError>;

    /// Resolves once every write submitted before it is durable, including those queued
    /// without an answer ([`Store::record_sent`], [`Store::advance_cursor`]), which the
    /// store may otherwise hold back to share one write among many.
    async fn barrier(&self) -> Result<(), StoreError>;

    /// `Err` with a reason while the store cannot make writes durable (for `/readyz`).
    fn health(&self) -> Result<(), String>;

    /// Flushes and closes; later calls fail with [`StoreError::Closed`].
    async fn close(&self) -> Result<(), StoreError>;
}
