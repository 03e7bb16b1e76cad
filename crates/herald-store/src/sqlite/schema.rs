//! The on-disk layout: tables, indexes, the schema version, and how connections are opened.
//!
//! Owns every `CREATE` statement and every connection-level `PRAGMA`. It never reads or
//! writes records; `writer.rs` and `read.rs` do. The schema is created on open
//! (`CREATE … IF NOT EXISTS`), so opening an existing database is idempotent; a database
//! written by an unknown schema version is refused rather than misread.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::{sql_error, SqliteConfig};
use crate::model::Durability;
use crate::StoreError;

/// The layout version this code reads and writes (`meta.schema_version`).
pub(super) const SCHEMA_VERSION: u32 = 3;

/// How long a connection waits for a lock held by another connection before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements each connection keeps compiled (the writer uses ~40 distinct ones;
/// `search` builds up to 32 variants).
const STATEMENT_CACHE: usize = 128;

/// All tables and indexes (schema version 3). Column notes:
/// - `streams.last` is the newest offset ever assigned and is never lowered, so offsets are
///   not reused after retention removed everything; `streams.first` is the oldest retained
///   offset (`last + 1` when empty). Messages only ever leave a stream as a prefix, so the
///   retained offsets are exactly `first..=last`. The writer keeps the heads in memory and
///   writes each touched stream's row once per commit.
/// - `messages` is the one record written per message. `body` is the raw JSON text the
///   publisher sent; `session`/`seq` are the sender session and request it answered (the
///   writer raises `sessions.acked_seq` from them once per session per commit); `idem` is the
///   publisher's idempotency key, found through the partial index `messages_by_idem`.
/// - `by_sender` is the search index by sender (`msg` is the message's rowid). It is not
///   written per message: the writer adds every message above `meta.by_sender_upto` in bulk,
///   with the deferred writes (every 200 ms at most); searches read the messages above
///   `by_sender_upto` directly. Entries of removed messages are removed with them.
/// - `idem` keeps the keys of messages retention removed, until the dedupe window passed,
///   so a publish retried after its original was trimmed is still answered as a duplicate.
/// - `sessions.acked_seq` is authoritative over the copy inside `sessions.record` (JSON),
///   because commits raise it with a plain `UPDATE`.
/// - `sent` holds one row per run of inbox offsets sent to a device in one delivery batch
///   (at most `SENT_RANGE_MAX` offsets), `acks` one row per move of a device's cursor in one
///   commit: a trace derives sent, redelivered and acknowledged (with times) from them.
/// - `events.id` is `AUTOINCREMENT` so ids are never reused after purging the newest ones.
/// - `outbox` holds webhook deliveries not yet made, one row per (event, webhook), written in
///   the event's commit; `body` is the exact JSON sent. Rows leave when delivered or given up
///   (never by retention).
/// - `devices.start_offset` / `devices.created_ms` are the cursor a device started with and
///   when it was first seen; NULL for devices recorded by version 1.
/// - `trimmed` keeps the header of each inbox message retention removed, for
///   `retention.tombstone_ms`, so a trace can say "trimmed before ack" instead of "unknown".
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS streams (
    stream TEXT PRIMARY KEY,
    first  INTEGER NOT NULL,
    last   INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS messages (
    rowid   INTEGER PRIMARY KEY,
    stream  TEXT NOT NULL,
    offset  INTEGER NOT NULL,
    id      TEXT NOT NULL,
    sender  TEXT NOT NULL,
    ts      INTEGER NOT NULL,
    body    TEXT NOT NULL,
    receipt INTEGER NOT NULL,
    session TEXT,
    seq     INTEGER,
    idem    TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_offset ON messages(stream, offset);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_id ON messages(id);
CREATE INDEX IF NOT EXISTS messages_by_ts ON messages(ts);
CREATE INDEX IF NOT EXISTS messages_by_idem ON messages(sender, idem) WHERE idem IS NOT NULL;

CREATE TABLE IF NOT EXISTS by_sender (
    sender TEXT NOT NULL,
    ts     INTEGER NOT NULL,
    msg    INTEGER NOT NULL,
    PRIMARY KEY (sender, ts, msg)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS idem (
    sender TEXT NOT NULL,
    key    TEXT NOT NULL,
    ts     INTEGER NOT NULL,
    msg_id TEXT NOT NULL,
    stream TEXT NOT NULL,
    offset INTEGER NOT NULL,
    PRIMARY KEY (sender, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idem_by_ts ON idem(ts);

CREATE TABLE IF NOT EXISTS sessions (
    id           TEXT PRIMARY KEY,
    state        TEXT NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    acked_seq    INTEGER NOT NULL,
    record       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_closed ON sessions(last_seen_ms) WHERE state = 'closed';

CREATE TABLE IF NOT EXISTS devices (
    uid          TEXT NOT NULL,
    device       TEXT NOT NULL,
    offset       INTEGER NOT NULL,
    updated_ms   INTEGER NOT NULL,
    start_offset INTEGER,
    created_ms   INTEGER,
    PRIMARY KEY (uid, device)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS trimmed (
    id         TEXT PRIMARY KEY,
    stream     TEXT NOT NULL,
    offset     INTEGER NOT NULL,
    sender     TEXT NOT NULL,
    ts         INTEGER NOT NULL,
    trimmed_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS trimmed_by_time ON trimmed(trimmed_ms);

CREATE TABLE IF NOT EXISTS sent (
    rowid   INTEGER PRIMARY KEY,
    uid     TEXT NOT NULL,
    device  TEXT NOT NULL,
    stream  TEXT NOT NULL,
    first   INTEGER NOT NULL,
    last    INTEGER NOT NULL,
    session TEXT NOT NULL,
    sent_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sent_by_device ON sent(uid, device, stream, last);

CREATE TABLE IF NOT EXISTS acks (
    rowid  INTEGER PRIMARY KEY,
    uid    TEXT NOT NULL,
    device TEXT NOT NULL,
    last   INTEGER NOT NULL,
    ts     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS acks_by_device ON acks(uid, device, last);

CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts      INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    uid     TEXT,
    device  TEXT,
    session TEXT,
    conn    TEXT,
    data    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_kind ON events(kind, id);
CREATE INDEX IF NOT EXISTS events_by_uid ON events(uid, id);
CREATE INDEX IF NOT EXISTS events_by_ts ON events(ts);

CREATE TABLE IF NOT EXISTS outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        INTEGER NOT NULL,
    kind            TEXT NOT NULL,
    target          TEXT NOT NULL,
    body            TEXT NOT NULL,
    created_ms      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_ms INTEGER NOT NULL,
    last_error      TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(next_attempt_ms, id);
";

/// Opens the single read-write connection, switches the database to WAL, applies the
/// durability and quota settings, and creates or checks the schema.
pub(super) fn open_writer(cfg: &SqliteConfig) -> Result<Connection, StoreError> {
    if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn =
        Connection::open_with_flags(&cfg.path, flags).map_err(|e| open_error(&cfg.path, e))?;
    configure(&conn)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(sql_error)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "cannot switch {} to WAL (journal_mode is {mode})",
            cfg.path.display()
        )));
    }
    let synchronous = match cfg.durability {
        Durability::Fsync => "FULL",
        Durability::Os => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)
        .map_err(sql_error)?;
    // Every write runs in its own savepoint (writer.rs). SQLite copies each page a savepoint
    // first touches into a sub-journal, which spills to a temporary file after 64 KiB: a
    // group-commit batch then pays a pwrite per page per write. In memory the sub-journal
    // lives only until COMMIT and is bounded by the batch; durability is unchanged (the WAL).
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(sql_error)?;
    // Checkpoints run on their own thread (writer::Checkpointer), not inside commits.
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(sql_error)?;
    create_schema(&conn)?;
    if let Some(bytes) = cfg.max_db_bytes {
        let page_size: u64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(sql_error)?;
        let pages = (bytes / page_size.max(1)).max(1);
        // SQLite never lowers the limit below the current size; it answers the effective value.
        let effective: u64 = conn
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
                r.get(0)
            })
            .map_err(sql_error)?;
        tracing::debug!(pages, effective, "database quota set");
    }
    Ok(conn)
}

/// Opens the checkpointer's read-write connection (the writer connection does not
/// checkpoint; see `writer::Checkpointer`).
pub(super) fn open_checkpointer(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, e))?;
    configure(&conn)?;
    Ok(conn)
}

/// Opens one read-only connection (WAL lets it read while the writer commits).
pub(super) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, e))?;
    configure(&conn)?;
    Ok(conn)
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql_error)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

pub(super) fn create_schema(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE").map_err(sql_error)?;
    let result = create_schema_in_tx(conn);
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = conn.execute_batch(end).map_err(sql_error);
    result.and(ended)
}

fn create_schema_in_tx(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;",
    )
    .map_err(sql_error)?;
    let found: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql_error)?;
    let version = match found.as_deref() {
        None => {
            conn.execute_batch(SCHEMA).map_err(sql_error)?;
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                [SCHEMA_VERSION.to_string()],
            )
            .map_err(sql_error)?;
            return Ok(());
        }
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|v| (1..=SCHEMA_VERSION).contains(v)),
    };
    let Some(version) = version else {
        return Err(StoreError::Corrupt(format!(
            "database schema version {} is not supported (this build reads versions 1 to {SCHEMA_VERSION}); \
             it was written by a newer herald: run that version, or start with an empty data directory",
            found.unwrap_or_default()
        )));
    };
    if version < 2 {
        migrate_1_to_2(conn)?;
    }
    if version < 3 {
        // The new columns first: SCHEMA indexes them.
        conn.execute_batch(
            "ALTER TABLE messages ADD COLUMN session TEXT;
             ALTER TABLE messages ADD COLUMN seq INTEGER;
             ALTER TABLE messages ADD COLUMN idem TEXT;",
        )
        .map_err(sql_error)?;
    }
    conn.execute_batch(SCHEMA).map_err(sql_error)?;
    if version < 3 {
        migrate_2_to_3(conn)?;
    }
    if version < SCHEMA_VERSION {
        conn.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'schema_version'",
            [SCHEMA_VERSION.to_string()],
        )
        .map_err(sql_error)?;
        tracing::info!("database schema migrated from version {version} to {SCHEMA_VERSION}");
    }
    Ok(())
}

/// Version 1 → 2: the devices table learns where each device started. Runs inside the schema
/// transaction, so a failed migration leaves the old version intact.
fn migrate_1_to_2(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "ALTER TABLE devices ADD COLUMN start_offset INTEGER;
         ALTER TABLE devices ADD COLUMN created_ms INTEGER;",
    )
    .map_err(sql_error)
}

/// Version 2 → 3: one record per message. Idempotency keys are copied from the `idem` table
/// into their message rows (the table keeps them too, where trimmed keys now live); per-message delivery rows become one-offset sent ranges (a row sent
/// more than once keeps its first and its last send) and acknowledgement times become
/// cursor moves. Runs inside the schema transaction.
fn migrate_2_to_3(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "UPDATE messages SET idem = (SELECT i.key FROM idem i WHERE i.msg_id = messages.id)
             WHERE id IN (SELECT msg_id FROM idem);
         INSERT INTO sent (uid, device, stream, first, last, session, sent_ms)
             SELECT uid, device, stream, offset, offset, session, first_sent_ms FROM deliveries;
         INSERT INTO sent (uid, device, stream, first, last, session, sent_ms)
             SELECT uid, device, stream, offset, offset, session, last_sent_ms FROM deliveries
             WHERE attempts > 1;
         INSERT INTO acks (uid, device, last, ts)
             SELECT uid, device, offset, acked_ms FROM deliveries WHERE acked_ms IS NOT NULL
             ORDER BY acked_ms;
         DROP TABLE deliveries;
         DROP INDEX IF EXISTS messages_by_sender;
         INSERT INTO by_sender (sender, ts, msg) SELECT sender, ts, rowid FROM messages;
         INSERT OR REPLACE INTO meta (key, value)
             SELECT 'by_sender_upto', CAST(coalesce(max(rowid), 0) AS TEXT) FROM messages;",
    )
    .map_err(sql_error)
}

fn open_error(path: &Path, e: rusqlite::Error) -> StoreError {
    match sql_error(e) {
        StoreError::Unavailable(m) => {
            StoreError::Unavailable(format!("cannot open {}: {m}", path.display()))
        }
        other => other,
    }
}
