//! The writer thread: the only code that writes to the database.
//!
//! Every write of the store arrives here as a [`Command`], in submission order, over one
//! channel. The thread blocks for the first command, drains whatever else is already queued
//! (up to `max_batch`) without waiting, runs the whole batch in ONE transaction, commits, and
//! only then answers each command. Under `synchronous=FULL` that makes all concurrent
//! publishers share one fsync (group commit).
//!
//! It owns the per-stream offset counter: the last offset assigned to each stream, kept in
//! memory (loaded lazily from `streams.last`). A failed commit rolls the transaction back and
//! forgets the counters the batch moved, so they are reloaded from the rolled-back table and
//! the next append continues with no hole.
//!
//! A command SQLite rejects on its own merits (a constraint, a value out of range) is undone
//! alone and answered with [`StoreError::Corrupt`] (the batch is rerun with a savepoint per
//! command); only errors of the storage itself (full disk, I/O) fail the batch, and then every
//! command of it gets [`StoreError::Unavailable`].
//!
//! It must never block on anything but SQLite: answers go through oneshot channels and the
//! commit listener is required to be quick.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
// Commit latency is measured on the writer's own OS thread, outside any runtime.
#[allow(clippy::disallowed_types)]
use std::time::Instant;

use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use super::{retention, Shared};
use crate::model::*;
use crate::{CommitListener, StoreError};

/// A write, as submitted by the store.
#[derive(Debug, Clone)]
pub(super) enum Write {
    Append(NewMessage),
    PutSession(SessionRecord),
    DeleteSession(String),
    SetCursor {
        uid: String,
        device: String,
        offset: u64,
        ts: u64,
    },
    /// A cursor move nobody waits on: deferred (see [`Deferred`]).
    AdvanceCursor {
        uid: String,
        device: String,
        offset: u64,
        ts: u64,
    },
    /// Deferred (see [`Deferred`]).
    RecordSent(SentRange),
    /// An event and its webhook targets (one outbox row each), in one commit.
    AppendEvent(NewEvent, Vec<String>),
    /// Removes a delivery from the outbox (delivered, or given up).
    RemoveDelivery(u64),
    DeliveryFailed {
        id: u64,
        next_attempt_ms: u64,
        error: String,
    },
    Trim {
        now_ms: u64,
        policy: Retention,
    },
    /// Writes nothing: answered once everything queued before it is committed (deferred
    /// writes included).
    Barrier,
}

/// The result of a committed write.
#[derive(Debug)]
pub(super) enum Done {
    Appended(AppendOutcome),
    Event(Event),
    Trimmed(Vec<Trimmed>),
    /// Failed attempts of an outbox delivery.
    Attempts(u32),
    Unit,
}

/// Where a command's answer goes; `None` for writes nobody waits on (their failure is
/// logged here).
pub(super) type Reply<T> = Option<oneshot::Sender<Result<T, StoreError>>>;

/// What the store sends to the writer thread.
// Nearly every command is a `Write`: boxing it would add an allocation per write to make
// the rare `Close` smaller.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(super) enum Command {
    Write(Write, Reply<Done>),
    /// Commit what came before, checkpoint the WAL, stop. Later commands get `Closed`.
    Close(oneshot::Sender<Result<(), StoreError>>),
}

/// Starts the writer thread on `conn`.
pub(super) fn spawn(
    conn: Connection,
    queue: mpsc::UnboundedReceiver<Command>,
    max_batch: usize,
    retention: Retention,
    listener: Arc<dyn CommitListener>,
    shared: Arc<Shared>,
    checkpointer: Checkpointer,
) -> Result<JoinHandle<()>, StoreError> {
    let writer = Writer {
        conn,
        queue,
        max_batch,
        retention,
        offsets: HashMap::new(),
        listener,
        shared,
        checkpointer: Some(checkpointer),
        deferred: Deferred::default(),
        by_sender_upto: None,
    };
    std::thread::Builder::new()
        .name("herald-store-writer".into())
        .spawn(move || writer.run())
        .map_err(|e| StoreError::Unavailable(format!("cannot start the store writer thread: {e}")))
}

/// The state of the writer thread.
struct Writer {
    /// The only read-write connection to the database.
    conn: Connection,
    /// Commands, in submission order.
    queue: mpsc::UnboundedReceiver<Command>,
    /// Most commands taken into one transaction.
    max_batch: usize,
    /// The rules applied at append time: channel count caps (so a cap holds at every commit)
    /// and the idempotency window.
    retention: Retention,
    /// Last offset assigned per stream. Between batches it equals the committed
    /// `streams.last`; a stream absent here is loaded from the table on first use.
    offsets: HashMap<String, u64>,
    /// Told about every committed message, before any answer is sent.
    listener: Arc<dyn CommitListener>,
    /// Counters and health, read by the store.
    shared: Arc<Shared>,
    /// Stopped before the final checkpoint at shutdown.
    checkpointer: Option<Checkpointer>,
    /// Writes nobody waits on, held for a later commit.
    deferred: Deferred,
    /// The messages up to this rowid are in the `by_sender` search index (`None`: not loaded
    /// yet).
    by_sender_upto: Option<i64>,
}

/// Cursor moves of acks and sent ranges: written together at most every
/// [`Deferred::EVERY`] (or at a barrier, at close, or once [`Deferred::MAX`] are held), not in
/// every commit, so that their rows (and the index pages they dirty) are shared by many
/// commits. Losing them in a crash only means redeliveries, which clients dedupe; the trace
/// shows them once written.
// The writer's own OS thread, outside any runtime: wall-clock time.
#[allow(clippy::disallowed_types)]
#[derive(Default)]
struct Deferred {
    cursors: HashMap<(String, String), CursorMove>,
    sent: Vec<SentRange>,
    /// Messages stored since the `by_sender` search index was last extended.
    unindexed: usize,
    /// When the oldest held write (or unindexed message) arrived.
    since: Option<Instant>,
}

#[allow(clippy::disallowed_types)]
impl Deferred {
    const EVERY: std::time::Duration = std::time::Duration::from_millis(200);
    const MAX: usize = 4096;

    fn is_empty(&self) -> bool {
        self.cursors.is_empty() && self.sent.is_empty() && self.unindexed == 0
    }

    fn due(&self) -> bool {
        self.cursors.len() + self.sent.len() + self.unindexed >= Self::MAX
            || self.since.is_some_and(|t| t.elapsed() >= Self::EVERY)
    }
}

/// Copies committed WAL frames into the database on its own thread, so commits never pay for
/// a checkpoint (SQLite's automatic one runs inside the commit that crosses 1000 pages, on the
/// writer thread). PASSIVE never blocks the writer; SQLite restarts the WAL from its start
/// once a checkpoint has copied everything.
pub(super) struct Checkpointer {
    stop: std::sync::mpsc::Sender<()>,
    handle: JoinHandle<()>,
}

impl Checkpointer {
    /// How often the WAL is checkpointed.
    const EVERY: std::time::Duration = std::time::Duration::from_millis(100);

    pub(super) fn start(conn: Connection) -> Result<Checkpointer, StoreError> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("herald-store-checkpoint".into())
            .spawn(move || {
                let mut failing = false;
                // Runs until the writer drops `stop` (or sends on it).
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(Self::EVERY)
                {
                    let r = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        r.get::<_, i64>(0)
                    });
                    match r {
                        Ok(_) if failing => {
                            failing = false;
                            tracing::info!("store WAL checkpoint works again");
                        }
                        Ok(_) => {}
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!(error = %e, "store WAL checkpoint failed; the WAL grows until it works again");
                        }
                        Err(_) => {}
                    }
                }
            })
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot start the store checkpoint thread: {e}"))
            })?;
        Ok(Checkpointer { stop, handle })
    }

    fn stop(self) {
        let _ = self.stop.send(());
        if self.handle.join().is_err() {
            tracing::error!("store checkpoint thread panicked");
        }
    }
}

/// What one batch produced besides the answers, and the coalesced writes it still owes
/// before its `COMMIT` (see [`Writer::finish`]).
#[derive(Default)]
struct BatchEffects {
    /// Messages newly stored, in the order their offsets were assigned.
    stored: Vec<Arc<StoredMessage>>,
    /// Streams whose in-memory counter this batch moved (forgotten if it fails), with the
    /// first offset the batch assigned in each.
    touched: HashMap<String, u64>,
    /// Highest request `seq` answered per sender session: one `acked_seq` update each.
    session_seq: HashMap<String, u64>,
    /// Cursor moves per (uid, device): one device row and one ack record each.
    cursors: HashMap<(String, String), CursorMove>,
    /// Sent ranges, adjacent ones of the same device and session joined.
    sent: Vec<SentRange>,
    /// Streams the append-time count cap trimmed.
    trimmed: Vec<Trimmed>,
    /// A barrier asks for the deferred writes in this commit.
    flush_deferred: bool,
    /// Cursor moves this batch writes: once committed, they leave the store's pending view.
    cursors_written: Vec<((String, String), u64)>,
    /// The search index covers messages up to this rowid once the batch is committed.
    by_sender_upto: Option<i64>,
}

/// The coalesced cursor moves of one device in one batch.
struct CursorMove {
    /// The first offset set in the batch (a new device's start).
    start: u64,
    /// The highest offset set.
    offset: u64,
    /// When the device was first set in the batch, and when last.
    first_ts: u64,
    ts: u64,
}

/// Records a cursor move of (uid, device), keeping the highest offset.
fn cursor_move(
    moves: &mut HashMap<(String, String), CursorMove>,
    uid: String,
    device: String,
    offset: u64,
    ts: u64,
) {
    let m = moves.entry((uid, device)).or_insert(CursorMove {
        start: offset,
        offset,
        first_ts: ts,
        ts,
    });
    if offset > m.offset {
        m.offset = offset;
        m.ts = ts;
    }
}

/// Adds a sent range, joining it to the device's previous one when it continues it (same
/// session) and splitting what is longer than [`SENT_RANGE_MAX`].
fn push_sent(sent: &mut Vec<SentRange>, r: SentRange) {
    if let Some(prev) = sent
        .iter_mut()
        .rev()
        .find(|p| p.uid == r.uid && p.device == r.device && p.stream == r.stream)
    {
        if prev.session == r.session
            && prev.last + 1 == r.first
            && r.last - prev.first < SENT_RANGE_MAX
        {
            prev.last = r.last;
            prev.ts = r.ts;
            return;
        }
    }
    let mut first = r.first;
    while first <= r.last {
        let last = r.last.min(first + SENT_RANGE_MAX - 1);
        sent.push(SentRange {
            first,
            last,
            ..r.clone()
        });
        first = last + 1;
    }
}

impl Writer {
    fn run(mut self) {
        let mut commands = Vec::with_capacity(self.max_batch);
        while let Some(first) = self.queue.blocking_recv() {
            commands.push(first);
            while commands.len() < self.max_batch
                && !matches!(commands.last(), Some(Command::Close(_)))
            {
                match self.queue.try_recv() {
                    Ok(cmd) => commands.push(cmd),
                    Err(_) => break,
                }
            }
            let mut writes = Vec::with_capacity(commands.len());
            let mut replies = Vec::with_capacity(commands.len());
            let mut close = None;
            for cmd in commands.drain(..) {
                match cmd {
                    Command::Write(write, reply) => {
                        writes.push(write);
                        replies.push(reply);
                    }
                    // Draining stops at a Close, so it is always the last command.
                    Command::Close(reply) => close = Some(reply),
                }
            }
            if !writes.is_empty() {
                self.commit_batch(writes, replies);
            }
            if let Some(reply) = close {
                self.shutdown(reply);
                return;
            }
        }
        if !self.deferred.is_empty() {
            self.commit_batch(vec![Write::Barrier], vec![None]);
        }
        tracing::debug!("store writer stopping: every store handle was dropped");
    }

    /// Runs `writes` in one transaction and answers each through `replies`.
    #[allow(clippy::disallowed_types)]
    fn commit_batch(&mut self, writes: Vec<Write>, replies: Vec<Reply<Done>>) {
        let shared = Arc::clone(&self.shared);
        let counters = &shared.counters;
        counters
            .last_batch_size
            .store(writes.len() as u64, Ordering::Relaxed);
        let started = Instant::now();
        let mut effects = BatchEffects::default();
        match self.execute(writes, &mut effects) {
            Ok(answers) => {
                let elapsed = started.elapsed();
                let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
                let ok = answers.iter().filter(|a| a.is_ok()).count() as u64;
                counters.commits.fetch_add(1, Ordering::Relaxed);
                counters.ops_committed.fetch_add(ok, Ordering::Relaxed);
                counters
                    .messages_appended
                    .fetch_add(effects.stored.len() as u64, Ordering::Relaxed);
                counters.commit_time_us.fetch_add(micros, Ordering::Relaxed);
                if let Some(o) = shared.observer.get() {
                    o.batch(replies.len(), elapsed, true);
                }
                self.set_failure(None);
                if !effects.stored.is_empty() {
                    self.notify(&effects.stored);
                }
                if !effects.trimmed.is_empty() {
                    self.notify_trimmed(&effects.trimmed);
                }
                if let Some(upto) = effects.by_sender_upto {
                    self.by_sender_upto = Some(upto);
                }
                if !effects.cursors_written.is_empty() {
                    let mut pending = shared
                        .pending_cursors
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    for (key, offset) in effects.cursors_written.drain(..) {
                        if pending.get(&key).is_some_and(|&p| p <= offset) {
                            pending.remove(&key);
                        }
                    }
                }
                for (reply, answer) in replies.into_iter().zip(answers) {
                    match (reply, answer) {
                        // The caller may have stopped waiting; the write is durable regardless.
                        (Some(reply), answer) => {
                            let _ = reply.send(answer);
                        }
                        (None, Err(e)) => {
                            tracing::warn!(error = %e, "a delivery record or cursor move was rejected");
                        }
                        (None, Ok(_)) => {}
                    }
                }
            }
            Err(e) => {
                let elapsed = started.elapsed();
                self.roll_back();
                if let Some(o) = shared.observer.get() {
                    o.batch(replies.len(), elapsed, false);
                }
                for stream in effects.touched.keys() {
                    self.offsets.remove(stream);
                }
                counters.failed_commits.fetch_add(1, Ordering::Relaxed);
                let reason = e.to_string();
                let unanswered = replies.iter().filter(|r| r.is_none()).count();
                tracing::warn!(error = %reason, ops = replies.len(), unanswered,
                    "store commit failed, batch rolled back (delivery records and cursor moves of it are lost: clients get those messages again)");
                self.set_failure(Some(reason.clone()));
                for reply in replies.into_iter().flatten() {
                    let _ = reply.send(Err(StoreError::Unavailable(reason.clone())));
                }
            }
        }
    }

    /// `BEGIN`, every write, `COMMIT`. An `Err` means the batch failed and the caller must
    /// roll back.
    ///
    /// Savepoints cost a copy of every page each write touches, so the batch first runs
    /// without them. A write SQLite rejects on its own merits (rare: a constraint, a value out
    /// of range) undoes the whole transaction, and the batch is run again with one savepoint
    /// per write, so that only the rejected write fails.
    fn execute(
        &mut self,
        writes: Vec<Write>,
        effects: &mut BatchEffects,
    ) -> rusqlite::Result<Vec<Result<Done, StoreError>>> {
        let retry = (writes.len() > 1).then(|| writes.clone());
        self.exec("BEGIN IMMEDIATE")?;
        let mut answers = Vec::with_capacity(writes.len());
        for write in writes {
            match self.apply(write, effects) {
                Ok(done) => answers.push(Ok(done)),
                Err(e) if is_rejection(&e) => {
                    self.roll_back();
                    for stream in std::mem::take(effects).touched.into_keys() {
                        self.offsets.remove(&stream);
                    }
                    return match retry {
                        Some(writes) => self.execute_isolated(writes, effects),
                        None => {
                            tracing::error!(error = %e, "store rejected a write");
                            Ok(vec![Err(StoreError::Corrupt(format!(
                                "write rejected: {e}"
                            )))])
                        }
                    };
                }
                Err(e) => return Err(e),
            }
        }
        self.finish(effects)?;
        self.exec("COMMIT")?;
        Ok(answers)
    }

    /// [`Writer::execute`] with each write in its own savepoint: a rejected write is undone
    /// alone and answered with [`StoreError::Corrupt`].
    fn execute_isolated(
        &mut self,
        writes: Vec<Write>,
        effects: &mut BatchEffects,
    ) -> rusqlite::Result<Vec<Result<Done, StoreError>>> {
        self.exec("BEGIN IMMEDIATE")?;
        let mut answers = Vec::with_capacity(writes.len());
        for write in writes {
            self.exec("SAVEPOINT op")?;
            match self.apply(write, effects) {
                Ok(done) => {
                    self.exec("RELEASE op")?;
                    answers.push(Ok(done));
                }
                Err(e) if is_rejection(&e) => {
                    self.exec("ROLLBACK TO op")?;
                    self.exec("RELEASE op")?;
                    tracing::error!(error = %e, "store rejected a write");
                    answers.push(Err(StoreError::Corrupt(format!("write rejected: {e}"))));
                }
                Err(e) => return Err(e),
            }
        }
        self.finish(effects)?;
        self.exec("COMMIT")?;
        Ok(answers)
    }

    /// The coalesced writes of a batch, right before its `COMMIT`: each touched stream's
    /// head, each sender session's `acked_seq`, each moved cursor, the sent ranges, and the
    /// channel count cap. A failure here fails the whole batch.
    fn finish(&mut self, effects: &mut BatchEffects) -> rusqlite::Result<()> {
        if !self.deferred.is_empty() && (effects.flush_deferred || self.deferred.due()) {
            let deferred = std::mem::take(&mut self.deferred);
            if deferred.unindexed > 0 {
                self.index_by_sender(effects)?;
            }
            for ((uid, device), m) in deferred.cursors {
                let e = effects.cursors.entry((uid, device)).or_insert(CursorMove {
                    start: m.start,
                    offset: m.offset,
                    first_ts: m.first_ts,
                    ts: m.ts,
                });
                if m.offset > e.offset {
                    e.offset = m.offset;
                    e.ts = m.ts;
                }
                if m.first_ts < e.first_ts {
                    e.start = m.start;
                    e.first_ts = m.first_ts;
                }
            }
            for r in deferred.sent {
                push_sent(&mut effects.sent, r);
            }
        }
        for (stream, &first) in &effects.touched {
            let last = self.offsets.get(stream).copied().unwrap_or(first);
            self.conn
                .prepare_cached(
                    "INSERT INTO streams (stream, first, last) VALUES (?1, ?2, ?3)
                     ON CONFLICT (stream) DO UPDATE SET last = excluded.last",
                )?
                .execute(params![stream, first, last])?;
        }
        for (session, seq) in effects.session_seq.drain() {
            self.conn
                .prepare_cached("UPDATE sessions SET acked_seq = max(acked_seq, ?2) WHERE id = ?1")?
                .execute(params![session, seq])?;
        }
        effects.cursors_written = effects
            .cursors
            .iter()
            .map(|(k, m)| (k.clone(), m.offset))
            .collect();
        for ((uid, device), m) in effects.cursors.drain() {
            self.conn
                .prepare_cached(
                    "INSERT INTO devices (uid, device, offset, updated_ms, start_offset, created_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (uid, device) DO UPDATE SET
                        offset = excluded.offset,
                        updated_ms = excluded.updated_ms
                     WHERE excluded.offset > devices.offset",
                )?
                .execute(params![uid, device, m.offset, m.ts, m.start, m.first_ts])?;
            self.conn
                .prepare_cached("INSERT INTO acks (uid, device, last, ts) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![uid, device, m.offset, m.ts])?;
        }
        for r in effects.sent.drain(..) {
            self.conn
                .prepare_cached(
                    "INSERT INTO sent (uid, device, stream, first, last, session, sent_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    r.uid, r.device, r.stream, r.first, r.last, r.session, r.ts
                ])?;
        }
        let cap = self.retention.channel_max_messages;
        if cap > 0 {
            let now = effects.stored.last().map_or(0, |m| m.ts);
            for (stream, _) in effects
                .touched
                .iter()
                .filter(|(s, _)| s.starts_with("chan:"))
            {
                let last = self.offsets.get(stream).copied().unwrap_or(0);
                if let Some(t) = retention::cap(&self.conn, stream, last, cap, now)? {
                    effects.trimmed.push(t);
                }
            }
        }
        Ok(())
    }

    fn exec(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    }

    /// Ends a failed transaction (SQLite may already have rolled it back itself).
    fn roll_back(&self) {
        if self.conn.is_autocommit() {
            return;
        }
        if let Err(e) = self.conn.execute_batch("ROLLBACK") {
            tracing::error!(error = %e, "store rollback failed");
        }
    }

    /// Applies one write. In-memory state (offsets, `effects`) changes only once every
    /// statement of the write succeeded, so a rejected write leaves nothing behind.
    #[allow(clippy::disallowed_types)]
    fn apply(&mut self, write: Write, effects: &mut BatchEffects) -> rusqlite::Result<Done> {
        match write {
            Write::Append(msg) => self.append(msg, effects).map(Done::Appended),
            Write::PutSession(rec) => self.put_session(&rec).map(|()| Done::Unit),
            Write::DeleteSession(id) => {
                self.conn
                    .prepare_cached("DELETE FROM sessions WHERE id = ?1")?
                    .execute([id])?;
                Ok(Done::Unit)
            }
            Write::SetCursor {
                uid,
                device,
                offset,
                ts,
            } => {
                cursor_move(&mut effects.cursors, uid, device, offset, ts);
                Ok(Done::Unit)
            }
            Write::AdvanceCursor {
                uid,
                device,
                offset,
                ts,
            } => {
                self.deferred.since.get_or_insert_with(Instant::now);
                cursor_move(&mut self.deferred.cursors, uid, device, offset, ts);
                Ok(Done::Unit)
            }
            Write::RecordSent(r) => {
                self.deferred.since.get_or_insert_with(Instant::now);
                push_sent(&mut self.deferred.sent, r);
                Ok(Done::Unit)
            }
            Write::AppendEvent(e, targets) => self.append_event(e, &targets).map(Done::Event),
            Write::RemoveDelivery(id) => {
                self.conn
                    .prepare_cached("DELETE FROM outbox WHERE id = ?1")?
                    .execute([id])?;
                Ok(Done::Unit)
            }
            Write::DeliveryFailed {
                id,
                next_attempt_ms,
                error,
            } => self
                .delivery_failed(id, next_attempt_ms, &error)
                .map(Done::Attempts),
            Write::Trim { now_ms, policy } => {
                // The newest policy is also the one applied at append time.
                self.retention = policy;
                retention::trim(&self.conn, now_ms, &policy).map(Done::Trimmed)
            }
            Write::Barrier => {
                effects.flush_deferred = true;
                Ok(Done::Unit)
            }
        }
    }

    #[allow(clippy::disallowed_types)]
    fn append(
        &mut self,
        msg: NewMessage,
        effects: &mut BatchEffects,
    ) -> rusqlite::Result<AppendOutcome> {
        if let Some(key) = &msg.idem {
            if let Some((id, stream, offset)) = self.original(&msg.from, key, msg.ts)? {
                self.bump_session(effects, msg.session_seq.as_ref());
                return Ok(AppendOutcome::Duplicate { id, stream, offset });
            }
        }
        let offset = self.last_offset(&msg.stream)? + 1;
        let (session, seq) = match &msg.session_seq {
            Some((s, q)) => (Some(s.as_str()), Some(*q)),
            None => (None, None),
        };
        self.conn
            .prepare_cached(
                "INSERT INTO messages (stream, offset, id, sender, ts, body, receipt, session, seq, idem)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                msg.stream,
                offset,
                msg.id,
                msg.from,
                msg.ts,
                msg.body.get(),
                msg.receipt,
                session,
                seq,
                msg.idem,
            ])?;
        self.bump_session(effects, msg.session_seq.as_ref());

        self.offsets.insert(msg.stream.clone(), offset);
        effects.touched.entry(msg.stream.clone()).or_insert(offset);
        self.deferred.unindexed += 1;
        self.deferred.since.get_or_insert_with(Instant::now);
        let stored = Arc::new(StoredMessage {
            stream: msg.stream,
            offset,
            id: msg.id,
            from: msg.from,
            ts: msg.ts,
            body: msg.body,
            receipt: msg.receipt,
        });
        effects.stored.push(stored.clone());
        Ok(AppendOutcome::Stored(stored))
    }

    /// Adds the messages stored since the last run to the `by_sender` search index, in one
    /// statement (not one per message), and records how far it reaches. The new reach is
    /// taken over once the batch commits (see [`BatchEffects::by_sender_upto`]).
    fn index_by_sender(&mut self, effects: &mut BatchEffects) -> rusqlite::Result<()> {
        let upto = match self.by_sender_upto {
            Some(u) => u,
            None => self
                .conn
                .prepare_cached(
                    "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'by_sender_upto'",
                )?
                .query_row([], |r| r.get(0))
                .optional()?
                .unwrap_or(0),
        };
        let newest: i64 = self
            .conn
            .prepare_cached("SELECT coalesce(max(rowid), 0) FROM messages")?
            .query_row([], |r| r.get(0))?;
        if newest > upto {
            self.conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO by_sender (sender, ts, msg)
                     SELECT sender, ts, rowid FROM messages WHERE rowid > ?1 ORDER BY sender, ts",
                )?
                .execute([upto])?;
            self.conn
                .prepare_cached(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('by_sender_upto', ?1)",
                )?
                .execute([newest.to_string()])?;
        }
        self.by_sender_upto = Some(upto);
        effects.by_sender_upto = Some(newest.max(upto));
        Ok(())
    }

    /// The message `from` published under idempotency key `key` within the dedupe window of
    /// `now`: a retained message, or the key of one retention removed. Sees rows written
    /// earlier in this same batch (one transaction).
    fn original(
        &self,
        from: &str,
        key: &str,
        now: u64,
    ) -> rusqlite::Result<Option<(String, String, u64)>> {
        let window = self.retention.dedupe_window_ms;
        let fresh = |ts: u64| window == 0 || ts.saturating_add(window) >= now;
        let row = |r: &rusqlite::Row<'_>| -> rusqlite::Result<(String, String, u64, u64)> {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        };
        let retained = self
            .conn
            .prepare_cached(
                "SELECT id, stream, offset, ts FROM messages
                 WHERE sender = ?1 AND idem = ?2 ORDER BY rowid DESC LIMIT 1",
            )?
            .query_row(params![from, key], row)
            .optional()?
            .filter(|o| fresh(o.3));
        let trimmed = self
            .conn
            .prepare_cached(
                "SELECT msg_id, stream, offset, ts FROM idem WHERE sender = ?1 AND key = ?2",
            )?
            .query_row(params![from, key], row)
            .optional()?
            .filter(|o| fresh(o.3));
        let newest = match (retained, trimmed) {
            (Some(a), Some(b)) => Some(if b.3 > a.3 { b } else { a }),
            (a, b) => a.or(b),
        };
        Ok(newest.map(|(id, stream, offset, _)| (id, stream, offset)))
    }

    /// The last offset assigned to `stream` (0 if never written), cached after the first look.
    fn last_offset(&mut self, stream: &str) -> rusqlite::Result<u64> {
        if let Some(last) = self.offsets.get(stream) {
            return Ok(*last);
        }
        let last: u64 = self
            .conn
            .prepare_cached("SELECT last FROM streams WHERE stream = ?1")?
            .query_row([stream], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        self.offsets.insert(stream.to_owned(), last);
        Ok(last)
    }

    /// Records the sender session's request `seq` as processed, written once per session by
    /// [`Writer::finish`] (a no-op there for an unknown session).
    fn bump_session(&self, effects: &mut BatchEffects, session_seq: Option<&(String, u64)>) {
        if let Some((session, seq)) = session_seq {
            let at = effects.session_seq.entry(session.clone()).or_insert(*seq);
            *at = (*at).max(*seq);
        }
    }

    fn put_session(&self, rec: &SessionRecord) -> rusqlite::Result<()> {
        let record = serde_json::to_string(rec)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        self.conn
            .prepare_cached(
                "INSERT INTO sessions (id, state, last_seen_ms, acked_seq, record)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (id) DO UPDATE SET
                    state = excluded.state,
                    last_seen_ms = excluded.last_seen_ms,
                    acked_seq = max(sessions.acked_seq, excluded.acked_seq),
                    record = excluded.record",
            )?
            .execute(params![
                rec.id,
                rec.state.as_str(),
                rec.last_seen_ms,
                rec.acked_seq,
                record
            ])?;
        Ok(())
    }

    fn append_event(&self, e: NewEvent, targets: &[String]) -> rusqlite::Result<Event> {
        self.conn
            .prepare_cached(
                "INSERT INTO events (ts, kind, uid, device, session, conn, data)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                e.ts,
                e.kind,
                e.uid,
                e.device,
                e.session,
                e.conn,
                e.data.to_string()
            ])?;
        let rowid = self.conn.last_insert_rowid();
        let id =
            u64::try_from(rowid).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, rowid))?;
        let event = Event { id, event: e };
        if !targets.is_empty() {
            // The exact bytes every webhook receives (and signs over): the event as the feed
            // shows it.
            let body = serde_json::to_string(&event)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            let mut insert = self.conn.prepare_cached(
                "INSERT INTO outbox (event_id, kind, target, body, created_ms, attempts,
                                     next_attempt_ms, last_error)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, ?5, NULL)",
            )?;
            for target in targets {
                insert.execute(params![
                    event.id,
                    event.event.kind,
                    target,
                    body,
                    event.event.ts
                ])?;
            }
        }
        Ok(event)
    }

    /// Counts a failed attempt of an outbox delivery; returns the attempts so far (0 when the
    /// delivery is gone).
    fn delivery_failed(&self, id: u64, next_attempt_ms: u64, error: &str) -> rusqlite::Result<u32> {
        self.conn
            .prepare_cached(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = ?2, last_error = ?3
                 WHERE id = ?1 RETURNING attempts",
            )?
            .query_row(params![id, next_attempt_ms, error], |r| r.get(0))
            .optional()
            .map(Option::unwrap_or_default)
    }

    /// Tells the listener about a committed batch. A panicking listener is logged, not
    /// allowed to kill the writer.
    fn notify(&self, stored: &[Arc<StoredMessage>]) {
        let listener = &self.listener;
        let call = std::panic::catch_unwind(AssertUnwindSafe(|| listener.committed(stored)));
        if call.is_err() {
            tracing::error!(messages = stored.len(), "store commit listener panicked");
        }
    }

    /// Tells the listener which streams the count cap trimmed in the committed batch.
    fn notify_trimmed(&self, trimmed: &[Trimmed]) {
        let listener = &self.listener;
        let call = std::panic::catch_unwind(AssertUnwindSafe(|| listener.trimmed(trimmed)));
        if call.is_err() {
            tracing::error!(streams = trimmed.len(), "store commit listener panicked");
        }
    }

    fn set_failure(&self, reason: Option<String>) {
        let mut failure = self
            .shared
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if reason.is_none() && failure.is_some() {
            tracing::info!("store commits succeed again");
        }
        *failure = reason;
    }

    /// Refuses whatever is still queued, checkpoints the WAL into the database file and
    /// answers `reply`. The connection closes when the thread returns.
    fn shutdown(&mut self, reply: oneshot::Sender<Result<(), StoreError>>) {
        self.queue.close();
        while let Ok(cmd) = self.queue.try_recv() {
            match cmd {
                Command::Write(_, Some(r)) => {
                    let _ = r.send(Err(StoreError::Closed));
                }
                Command::Write(_, None) => {}
                Command::Close(r) => {
                    let _ = r.send(Err(StoreError::Closed));
                }
            }
        }
        if !self.deferred.is_empty() {
            // The deferred writes go in a last commit of their own.
            self.commit_batch(vec![Write::Barrier], vec![None]);
        }
        if let Some(c) = self.checkpointer.take() {
            c.stop();
        }
        let checkpoint = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            });
        let result = match checkpoint {
            Ok(0) => Ok(()),
            Ok(_) => {
                // Readers still held snapshots: the WAL is kept and replayed on next open.
                tracing::warn!("store close: WAL checkpoint could not complete (busy)");
                Ok(())
            }
            Err(e) => Err(StoreError::Unavailable(format!(
                "WAL checkpoint failed: {e}"
            ))),
        };
        let _ = reply.send(result);
    }
}

/// Whether SQLite refused this write on its own merits (the storage itself is fine, so only
/// the write is undone and the rest of the batch commits).
fn is_rejection(e: &rusqlite::Error) -> bool {
    use rusqlite::Error as E;
    match e {
        E::SqliteFailure(f, _) => matches!(
            f.code,
            ErrorCode::ConstraintViolation | ErrorCode::TooBig | ErrorCode::TypeMismatch
        ),
        E::ToSqlConversionFailure(_)
        | E::FromSqlConversionFailure(..)
        | E::IntegralValueOutOfRange(..)
        | E::InvalidColumnType(..)
        | E::Utf8Error(..) => true,
        _ => false,
    }
}
