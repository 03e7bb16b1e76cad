//! The SQLite backend: one file, WAL mode, one writer thread doing group commit, a small
//! pool of read-only connections.
//!
//! This file owns the public face ([`SqliteConfig`], [`SqliteStore`], [`StoreStats`]) and the
//! mapping from SQLite errors to [`StoreError`]. The work lives in submodules:
//! - `schema.rs`: tables, indexes, pragmas, opening connections;
//! - `writer.rs`: the writer thread — every write, offset assignment, group commit, the
//!   commit listener;
//! - `retention.rs`: what `trim` deletes (runs on the writer thread, inside its transaction);
//! - `read.rs`: the reader pool and every read query.
//!
//! Writes never touch a reader connection and reads never touch the writer's, so a slow
//! search cannot delay a commit, and a commit (fsync) never blocks a read.

mod read;
mod retention;
mod schema;
mod writer;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use async_trait::async_trait;
use rusqlite::ErrorCode;
use tokio::sync::{mpsc, oneshot};

use crate::model::*;
use crate::{CommitListener, CommitObserver, Store, StoreError};
use read::ReaderPool;
use writer::{Command, Done, Write};

/// How to open a [`SqliteStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteConfig {
    /// The database file; its parent directory is created if missing.
    pub path: PathBuf,
    /// `Fsync` runs `synchronous=FULL` (every commit fsynced), `Os` runs `NORMAL`. The
    /// journal is always WAL.
    pub durability: Durability,
    /// Most operations committed in one transaction (group commit).
    pub max_batch: usize,
    /// Read-only connections (concurrent reads).
    pub readers: usize,
    /// Size cap of the database, enforced with `PRAGMA max_page_count`. A write that would
    /// exceed it fails with [`StoreError::Unavailable`], exactly like a full disk.
    pub max_db_bytes: Option<u64>,
    /// The retention rules the writer applies at append time: `channel_max_messages` holds
    /// at every commit, and an idempotency key older than `dedupe_window_ms` is not matched.
    /// The other rules run in [`Store::trim`].
    pub retention: Retention,
}

impl SqliteConfig {
    /// Defaults: fsync durability, batches of up to 1024 operations, 2 readers, no quota,
    /// no append-time retention.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteConfig {
            path: path.into(),
            durability: Durability::Fsync,
            max_batch: 1024,
            readers: 2,
            max_db_bytes: None,
            retention: Retention::default(),
        }
    }
}

/// Counters of the writer since the store was opened (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Transactions committed.
    pub commits: u64,
    /// Operations answered `Ok` by a committed transaction.
    pub ops_committed: u64,
    /// Messages newly stored (duplicates excluded).
    pub messages_appended: u64,
    /// Transactions rolled back because they could not be made durable.
    pub failed_commits: u64,
    /// Operations in the most recent batch, committed or not.
    pub last_batch_size: u64,
    /// Time spent in committed transactions, from `BEGIN` to the end of `COMMIT`, in µs.
    pub commit_time_us: u64,
}

/// The writer's counters, shared with the store for [`SqliteStore::stats`]; each field is
/// the live value of the [`StoreStats`] field of the same name.
#[derive(Debug, Default)]
struct Counters {
    /// See [`StoreStats::commits`].
    commits: AtomicU64,
    /// See [`StoreStats::ops_committed`].
    ops_committed: AtomicU64,
    /// See [`StoreStats::messages_appended`].
    messages_appended: AtomicU64,
    /// See [`StoreStats::failed_commits`].
    failed_commits: AtomicU64,
    /// See [`StoreStats::last_batch_size`].
    last_batch_size: AtomicU64,
    /// See [`StoreStats::commit_time_us`].
    commit_time_us: AtomicU64,
}

/// State the writer thread reports back to the store.
#[derive(Debug, Default)]
struct Shared {
    /// Writer counters.
    counters: Counters,
    /// `Some(reason)` after a failed commit, until a later commit succeeds.
    failure: Mutex<Option<String>>,
    /// Told about every batch, once set (see [`SqliteStore::observe_commits`]).
    observer: OnceLock<Arc<dyn CommitObserver>>,
    /// Cursor moves queued by [`Store::advance_cursor`] and not yet committed, per (uid,
    /// device): [`Store::cursor`] sees them, so a device's next session does not get again
    /// what it acknowledged a moment ago ([`Store::devices`] and the trace report durable
    /// cursors only). The writer removes an entry once a commit covers it.
    pending_cursors: Mutex<HashMap<(String, String), u64>>,
}

impl Shared {
    fn pending_cursor(&self, uid: &str, device: &str) -> Option<u64> {
        let g = self
            .pending_cursors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.get(&(uid.to_owned(), device.to_owned())).copied()
    }
}

impl std::fmt::Debug for dyn CommitObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitObserver")
    }
}

/// The SQLite implementation of [`Store`]. See the module docs for the threading model.
pub struct SqliteStore {
    /// Submits commands to the writer thread; `None` only while dropping. Unbounded so a
    /// write is queued synchronously, at call time (see [`SqliteStore::append_eager`]);
    /// callers bound it by bounding what they have in flight.
    commands: Option<mpsc::UnboundedSender<Command>>,
    /// The writer thread, joined on drop.
    writer: Option<JoinHandle<()>>,
    /// Read-only connections.
    readers: Arc<ReaderPool>,
    /// Counters and health, written by the writer thread.
    shared: Arc<Shared>,
    /// Set by the first `close()`; every later call fails with [`StoreError::Closed`].
    closed: AtomicBool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.readers.path())
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `cfg.path` and starts the writer thread.
    ///
    /// `listener` is called on the writer thread after every commit that stored messages.
    pub fn open(
        cfg: SqliteConfig,
        listener: Arc<dyn CommitListener>,
    ) -> Result<SqliteStore, StoreError> {
        let conn = schema::open_writer(&cfg)?;
        let readers = Arc::new(ReaderPool::open(cfg.path.clone(), cfg.readers.max(1))?);
        let shared = Arc::new(Shared::default());
        let max_batch = cfg.max_batch.max(1);
        let (commands, queue) = mpsc::unbounded_channel();
        let checkpointer = writer::Checkpointer::start(schema::open_checkpointer(&cfg.path)?)?;
        let writer = writer::spawn(
            conn,
            queue,
            max_batch,
            cfg.retention,
            listener,
            shared.clone(),
            checkpointer,
        )?;
        tracing::info!(path = %cfg.path.display(), durability = ?cfg.durability, "store opened");
        Ok(SqliteStore {
            commands: Some(commands),
            writer: Some(writer),
            readers,
            shared,
            closed: AtomicBool::new(false),
        })
    }

    /// Reports every later batch of the writer to `observer` (commit latency and batch size
    /// metrics). Only the first observer set is kept; returns false if one was already set.
    pub fn observe_commits(&self, observer: Arc<dyn CommitObserver>) -> bool {
        self.shared.observer.set(observer).is_ok()
    }

    /// A snapshot of the writer's counters.
    pub fn stats(&self) -> StoreStats {
        let c = &self.shared.counters;
        StoreStats {
            commits: c.commits.load(Ordering::Relaxed),
            ops_committed: c.ops_committed.load(Ordering::Relaxed),
            messages_appended: c.messages_appended.load(Ordering::Relaxed),
            failed_commits: c.failed_commits.load(Ordering::Relaxed),
            last_batch_size: c.last_batch_size.load(Ordering::Relaxed),
            commit_time_us: c.commit_time_us.load(Ordering::Relaxed),
        }
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    /// Like [`Store::append`], but eager: the message is queued for the writer when this is
    /// *called*, not when the future is first polled, and appends are applied in call order.
    /// The future borrows nothing from the store.
    pub fn append_eager(
        &self,
        msg: NewMessage,
    ) -> impl Future<Output = Result<AppendOutcome, StoreError>> + Send + 'static {
        let done = self.submit(Write::Append(msg));
        async move {
            match done.await? {
                Done::Appended(outcome) => Ok(outcome),
                other => Err(mismatch(other)),
            }
        }
    }

    /// Queues `write` for the writer thread now; the future resolves once it is committed.
    fn submit(
        &self,
        write: Write,
    ) -> impl Future<Output = Result<Done, StoreError>> + Send + 'static {
        let queued = self.queue(write);
        async move {
            queued?.await.map_err(|_| {
                // The writer answers every command it takes, even on close: a dropped reply
                // means the thread died.
                StoreError::Unavailable("the store writer thread has stopped".into())
            })?
        }
    }

    fn queue(
        &self,
        write: Write,
    ) -> Result<oneshot::Receiver<Result<Done, StoreError>>, StoreError> {
        self.check_open()?;
        let commands = self.commands.as_ref().ok_or(StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        commands
            .send(Command::Write(write, Some(reply)))
            .map_err(|_| self.writer_gone())?;
        Ok(answer)
    }

    /// Queues `write` with no answer: its failure is logged by the writer.
    fn queue_unanswered(&self, write: Write) {
        let queued = self
            .check_open()
            .and_then(|()| self.commands.as_ref().ok_or(StoreError::Closed))
            .and_then(|c| {
                c.send(Command::Write(write, None))
                    .map_err(|_| self.writer_gone())
            });
        if let Err(e) = queued {
            tracing::warn!(error = %e, "a delivery record or cursor move was not queued");
        }
    }

    /// The error for a writer thread that no longer takes commands.
    fn writer_gone(&self) -> StoreError {
        if self.closed.load(Ordering::Acquire) {
            StoreError::Closed
        } else {
            StoreError::Unavailable("the store writer thread has stopped".into())
        }
    }
}

/// The answer of the writer did not match the command (a bug in this module).
fn mismatch(done: Done) -> StoreError {
    StoreError::Corrupt(format!(
        "store writer answered with an unexpected result: {done:?}"
    ))
}

#[async_trait]
impl Store for SqliteStore {
    fn append(&self, msg: NewMessage) -> crate::AppendFuture {
        Box::pin(self.append_eager(msg))
    }

    async fn read(
        &self,
        stream: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<StoredMessage>>, StoreError> {
        self.check_open()?;
        let stream = stream.to_owned();
        self.readers
            .run(move |c| read::stream(c, &stream, after, limit))
            .await
    }

    async fn bounds(&self, stream: &str) -> Result<StreamBounds, StoreError> {
        self.check_open()?;
        let stream = stream.to_owned();
        self.readers.run(move |c| read::bounds(c, &stream)).await
    }

    async fn message(&self, id: &str) -> Result<Option<Arc<StoredMessage>>, StoreError> {
        self.check_open()?;
        let id = id.to_owned();
        self.readers.run(move |c| read::message(c, &id)).await
    }

    async fn trimmed_message(&self, id: &str) -> Result<Option<TrimmedMessage>, StoreError> {
        self.check_open()?;
        let id = id.to_owned();
        self.readers
            .run(move |c| read::trimmed_message(c, &id))
            .await
    }

    async fn search(&self, q: &SearchQuery) -> Result<Vec<Arc<StoredMessage>>, StoreError> {
        self.check_open()?;
        let q = q.clone();
        self.readers.run(move |c| read::search(c, &q)).await
    }

    async fn put_session(&self, rec: SessionRecord) -> Result<(), StoreError> {
        unit(self.submit(Write::PutSession(rec)).await?)
    }

    async fn load_sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        self.check_open()?;
        self.readers.run(read::sessions).await
    }

    async fn delete_session(&self, id: &str) -> Result<(), StoreError> {
        unit(self.submit(Write::DeleteSession(id.to_owned())).await?)
    }

    async fn set_cursor(
        &self,
        uid: &str,
        device: &str,
        offset: u64,
        ts: u64,
    ) -> Result<(), StoreError> {
        let write = Write::SetCursor {
            uid: uid.to_owned(),
            device: device.to_owned(),
            offset,
            ts,
        };
        unit(self.submit(write).await?)
    }

    fn advance_cursor(&self, uid: &str, device: &str, offset: u64, ts: u64) {
        {
            let mut g = self
                .shared
                .pending_cursors
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let at = g
                .entry((uid.to_owned(), device.to_owned()))
                .or_insert(offset);
            *at = (*at).max(offset);
        }
        self.queue_unanswered(Write::AdvanceCursor {
            uid: uid.to_owned(),
            device: device.to_owned(),
            offset,
            ts,
        });
    }

    async fn cursor(&self, uid: &str, device: &str) -> Result<Option<u64>, StoreError> {
        self.check_open()?;
        let pending = self.shared.pending_cursor(uid, device);
        let (uid, device) = (uid.to_owned(), device.to_owned());
        let stored = self
            .readers
            .run(move |c| read::cursor(c, &uid, &device))
            .await?;
        Ok(match (stored, pending) {
            (Some(s), Some(p)) => Some(s.max(p)),
            (s, p) => s.or(p),
        })
    }

    async fn devices(&self, uid: &str) -> Result<Vec<DeviceCursor>, StoreError> {
        self.check_open()?;
        // Durable cursors only: what a trace reports as acknowledged survives a crash.
        let uid = uid.to_owned();
        self.readers.run(move |c| read::devices(c, &uid)).await
    }

    fn record_sent(&self, range: SentRange) {
        self.queue_unanswered(Write::RecordSent(range));
    }

    async fn deliveries(&self, msg_id: &str) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.check_open()?;
        let msg_id = msg_id.to_owned();
        self.readers
            .run(move |c| read::deliveries(c, &msg_id))
            .await
    }

    async fn append_event(&self, e: NewEvent) -> Result<Event, StoreError> {
        self.append_event_with_outbox(e, Vec::new()).await
    }

    async fn append_event_with_outbox(
        &self,
        e: NewEvent,
        targets: Vec<String>,
    ) -> Result<Event, StoreError> {
        match self.submit(Write::AppendEvent(e, targets)).await? {
            Done::Event(event) => Ok(event),
            other => Err(mismatch(other)),
        }
    }

    async fn due_deliveries(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<OutboxDelivery>, StoreError> {
        self.check_open()?;
        self.readers
            .run(move |c| read::due_deliveries(c, now_ms, limit))
            .await
    }

    async fn outbox_status(&self) -> Result<OutboxStatus, StoreError> {
        self.check_open()?;
        self.readers.run(read::outbox_status).await
    }

    async fn mark_delivered(&self, id: u64) -> Result<(), StoreError> {
        unit(self.submit(Write::RemoveDelivery(id)).await?)
    }

    async fn mark_failed(
        &self,
        id: u64,
        next_attempt_ms: u64,
        error: &str,
    ) -> Result<u32, StoreError> {
        let write = Write::DeliveryFailed {
            id,
            next_attempt_ms,
            error: error.to_owned(),
        };
        match self.submit(write).await? {
            Done::Attempts(n) => Ok(n),
            other => Err(mismatch(other)),
        }
    }

    async fn drop_delivery(&self, id: u64) -> Result<(), StoreError> {
        unit(self.submit(Write::RemoveDelivery(id)).await?)
    }

    async fn events(&self, q: &EventQuery) -> Result<Vec<Event>, StoreError> {
        self.check_open()?;
        let q = q.clone();
        self.readers.run(move |c| read::events(c, &q)).await
    }

    async fn trim(&self, now_ms: u64, policy: &Retention) -> Result<Vec<Trimmed>, StoreError> {
        let write = Write::Trim {
            now_ms,
            policy: *policy,
        };
        match self.submit(write).await? {
            Done::Trimmed(trimmed) => Ok(trimmed),
            other => Err(mismatch(other)),
        }
    }

    async fn barrier(&self) -> Result<(), StoreError> {
        unit(self.submit(Write::Barrier).await?)
    }

    fn health(&self) -> Result<(), String> {
        if self.closed.load(Ordering::Acquire) {
            return Err("store is closed".into());
        }
        if self.commands.as_ref().is_none_or(|c| c.is_closed()) {
            return Err("store writer thread has stopped".into());
        }
        match self.shared.failure.lock() {
            Ok(failure) => match failure.as_ref() {
                Some(reason) => Err(reason.clone()),
                None => Ok(()),
            },
            Err(_) => Err("store health state is poisoned".into()),
        }
    }

    async fn close(&self) -> Result<(), StoreError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Err(StoreError::Closed);
        }
        let commands = self.commands.as_ref().ok_or(StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        let result = if commands.send(Command::Close(reply)).is_err() {
            Err(StoreError::Unavailable(
                "the store writer thread had stopped before close".into(),
            ))
        } else {
            answer.await.unwrap_or_else(|_| {
                Err(StoreError::Unavailable(
                    "the store writer thread stopped while closing".into(),
                ))
            })
        };
        self.readers.close();
        tracing::info!(path = %self.readers.path().display(), ok = result.is_ok(), "store closed");
        result
    }
}

fn unit(done: Done) -> Result<(), StoreError> {
    match done {
        Done::Unit => Ok(()),
        other => Err(mismatch(other)),
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the queue makes the writer finish what it holds and stop.
        self.commands = None;
        if let Some(writer) = self.writer.take() {
            // The last handle may be dropped by the commit listener, on the writer thread
            // itself: joining would wait for ourselves.
            if writer.thread().id() != std::thread::current().id() && writer.join().is_err() {
                tracing::error!("store writer thread panicked");
            }
        }
    }
}

/// Maps a SQLite error to a [`StoreError`]: undecodable data is `Corrupt`, everything else
/// (I/O, full disk, locks) is `Unavailable`.
fn sql_error(e: rusqlite::Error) -> StoreError {
    if is_corruption(&e) {
        StoreError::Corrupt(e.to_string())
    } else {
        StoreError::Unavailable(e.to_string())
    }
}

/// Whether `e` means the bytes on disk are not what this code wrote.
fn is_corruption(e: &rusqlite::Error) -> bool {
    use rusqlite::Error as E;
    match e {
        E::SqliteFailure(f, _) => {
            matches!(f.code, ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
        }
        E::FromSqlConversionFailure(..)
        | E::IntegralValueOutOfRange(..)
        | E::InvalidColumnType(..)
        | E::Utf8Error(..) => true,
        _ => false,
    }
}

/// Converts a query bound to SQLite's integer type, saturating (a bound beyond `i64::MAX`
/// matches the same rows as `i64::MAX`).
fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
