//! Reads: a small pool of read-only connections and every query the store answers.
//!
//! WAL lets these connections read while the writer commits; each read sees the database as
//! of its last commit, so a read started after a write's future resolved sees that write.
//! Queries run on tokio's blocking pool (`spawn_blocking`), at most one per connection; they
//! never write and never touch the writer's connection.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};
use tokio::sync::Semaphore;

use super::{schema, sql_error, sql_int};
use crate::model::*;
use crate::StoreError;

/// `limit` of `search` and `events` when the query says 0.
const DEFAULT_LIMIT: usize = 100;
/// Largest `limit` of `search`.
const MAX_SEARCH_LIMIT: usize = 1000;

/// Read-only connections, handed out one query at a time.
pub(super) struct ReaderPool {
    /// The database file (to open replacement connections).
    path: PathBuf,
    /// Connections not running a query. Never more than the number of permits.
    idle: Mutex<Vec<Connection>>,
    /// One permit per connection; closed by [`ReaderPool::close`].
    permits: Arc<Semaphore>,
}

impl ReaderPool {
    /// Opens `size` connections to `path` (after the writer created the database).
    pub(super) fn open(path: PathBuf, size: usize) -> Result<ReaderPool, StoreError> {
        let idle = (0..size)
            .map(|_| schema::open_reader(&path))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ReaderPool {
            path,
            idle: Mutex::new(idle),
            permits: Arc::new(Semaphore::new(size)),
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Refuses further reads (they fail with [`StoreError::Closed`]) and closes idle
    /// connections; running queries finish and drop theirs.
    pub(super) fn close(&self) {
        self.permits.close();
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }

    /// Runs `query` on a pooled connection on the blocking thread pool.
    pub(super) async fn run<T, F>(self: &Arc<Self>, query: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            // Held until the query is done, even if the caller stopped waiting.
            let _permit = permit;
            let conn = pool.take()?;
            let result = query(&conn);
            pool.give_back(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store read task failed: {e}")))?
    }

    /// An idle connection, or a new one if one was lost (a panicked query).
    fn take(&self) -> Result<Connection, StoreError> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        match idle {
            Some(conn) => Ok(conn),
            None => schema::open_reader(&self.path),
        }
    }

    fn give_back(&self, conn: Connection) {
        if self.permits.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
    }
}

/// Columns of a message row, in the order of [`MESSAGE_COLUMNS`].
type MessageRow = (String, u64, String, String, u64, String, bool);

const MESSAGE_COLUMNS: &str = "stream, offset, id, sender, ts, body, receipt";

fn message_row(r: &Row<'_>) -> rusqlite::Result<MessageRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

fn to_message(row: MessageRow) -> Result<Arc<StoredMessage>, StoreError> {
    let (stream, offset, id, from, ts, body, receipt) = row;
    let body = Body::from_json(body)
        .map_err(|e| StoreError::Corrupt(format!("body of message {id}: {e}")))?;
    Ok(Arc::new(StoredMessage {
        stream,
        offset,
        id,
        from,
        ts,
        body,
        receipt,
    }))
}

fn to_messages(rows: Vec<MessageRow>) -> Result<Vec<Arc<StoredMessage>>, StoreError> {
    rows.into_iter().map(to_message).collect()
}

/// Messages of `stream` after offset `after`, oldest first.
pub(super) fn stream(
    conn: &Connection,
    stream: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<Arc<StoredMessage>>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let rows = conn
        .prepare_cached(
            "SELECT stream, offset, id, sender, ts, body, receipt FROM messages
             WHERE stream = ?1 AND offset > ?2 ORDER BY offset LIMIT ?3",
        )
        .and_then(|mut stmt| {
            stmt.query_map(
                params![stream, sql_int(after), sql_int(limit as u64)],
                message_row,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql_error)?;
    to_messages(rows)
}

/// `first..=last` of `stream`; an unknown stream is `{first: 1, last: 0}` (empty).
pub(super) fn bounds(conn: &Connection, stream: &str) -> Result<StreamBounds, StoreError> {
    let found: Option<(u64, u64)> = conn
        .prepare_cached("SELECT first, last FROM streams WHERE stream = ?1")
        .and_then(|mut stmt| {
            stmt.query_row([stream], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(sql_error)?;
    let (first, last) = found.unwrap_or((1, 0));
    Ok(StreamBounds { first, last })
}

pub(super) fn message(
    conn: &Connection,
    id: &str,
) -> Result<Option<Arc<StoredMessage>>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT stream, offset, id, sender, ts, body, receipt FROM messages WHERE id = ?1",
        )
        .and_then(|mut stmt| stmt.query_row([id], message_row).optional())
        .map_err(sql_error)?;
    row.map(to_message).transpose()
}

/// The header of inbox message `id` if retention removed it (and it was not purged yet).
pub(super) fn trimmed_message(
    conn: &Connection,
    id: &str,
) -> Result<Option<TrimmedMessage>, StoreError> {
    conn.prepare_cached(
        "SELECT id, stream, offset, sender, ts, trimmed_ms FROM trimmed WHERE id = ?1",
    )
    .and_then(|mut stmt| {
        stmt.query_row([id], |r| {
            Ok(TrimmedMessage {
                id: r.get(0)?,
                stream: r.get(1)?,
                offset: r.get(2)?,
                from: r.get(3)?,
                ts: r.get(4)?,
                trimmed_ms: r.get(5)?,
            })
        })
        .optional()
    })
    .map_err(sql_error)
}

/// A `WHERE` clause built from optional filters, with positional parameters.
#[derive(Default)]
struct Filter {
    /// Conditions joined with `AND`, each with its `?`s.
    clauses: Vec<&'static str>,
    /// The values of the `?`s, in the order they appear.
    params: Vec<Value>,
}

impl Filter {
    fn text(&mut self, clause: &'static str, v: &Option<String>) {
        if let Some(v) = v {
            self.clauses.push(clause);
            self.params.push(Value::Text(v.clone()));
        }
    }

    fn int(&mut self, clause: &'static str, v: Option<u64>) {
        if let Some(v) = v {
            self.clauses.push(clause);
            self.params.push(Value::Integer(sql_int(v)));
        }
    }

    fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }
}

/// Messages matching `q`, oldest first: by offset within one stream, otherwise by time.
/// `after` applies only together with `stream`; `until_ms` is inclusive.
pub(super) fn search(
    conn: &Connection,
    q: &SearchQuery,
) -> Result<Vec<Arc<StoredMessage>>, StoreError> {
    let mut f = Filter::default();
    f.text("stream = ?", &q.stream);
    if let Some(sender) = &q.from_uid {
        // The index covers messages up to `by_sender_upto`; newer ones are read directly.
        f.clauses.push(
            "(rowid IN (SELECT msg FROM by_sender WHERE sender = ?)
              OR (rowid > (SELECT coalesce(max(CAST(value AS INTEGER)), 0) FROM meta
                           WHERE key = 'by_sender_upto') AND sender = ?))",
        );
        f.params.push(Value::Text(sender.clone()));
        f.params.push(Value::Text(sender.clone()));
    }
    if q.stream.is_some() {
        f.int("offset > ?", q.after);
    }
    f.int("ts >= ?", q.since_ms);
    f.int("ts <= ?", q.until_ms);
    let order = if q.stream.is_some() {
        "offset"
    } else {
        "ts, stream, offset"
    };
    let limit = match q.limit {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_SEARCH_LIMIT),
    };
    // The limit is a parameter so that the statement cache keys on the filter shape only.
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages{} ORDER BY {order} LIMIT ?",
        f.sql()
    );
    f.params.push(Value::Integer(sql_int(limit as u64)));
    let rows = conn
        .prepare_cached(&sql)
        .and_then(|mut stmt| {
            stmt.query_map(params_from_iter(f.params.iter()), message_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql_error)?;
    to_messages(rows)
}

/// Every session record; `acked_seq` comes from its own column (appends bump it there).
pub(super) fn sessions(conn: &Connection) -> Result<Vec<SessionRecord>, StoreError> {
    let rows: Vec<(String, u64, String)> = conn
        .prepare_cached("SELECT id, acked_seq, record FROM sessions ORDER BY id")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .map_err(sql_error)?;
    rows.into_iter()
        .map(|(id, acked_seq, record)| {
            let mut rec: SessionRecord = serde_json::from_str(&record)
                .map_err(|e| StoreError::Corrupt(format!("session {id}: {e}")))?;
            rec.acked_seq = acked_seq;
            Ok(rec)
        })
        .collect()
}

pub(super) fn cursor(
    conn: &Connection,
    uid: &str,
    device: &str,
) -> Result<Option<u64>, StoreError> {
    conn.prepare_cached("SELECT offset FROM devices WHERE uid = ?1 AND device = ?2")
        .and_then(|mut stmt| stmt.query_row([uid, device], |r| r.get(0)).optional())
        .map_err(sql_error)
}

pub(super) fn devices(conn: &Connection, uid: &str) -> Result<Vec<DeviceCursor>, StoreError> {
    conn.prepare_cached(
        "SELECT uid, device, offset, updated_ms, start_offset, created_ms FROM devices
         WHERE uid = ?1 ORDER BY device",
    )
    .and_then(|mut stmt| {
        stmt.query_map([uid], |r| {
            Ok(DeviceCursor {
                uid: r.get(0)?,
                device: r.get(1)?,
                offset: r.get(2)?,
                updated_ms: r.get(3)?,
                start_offset: r.get(4)?,
                created_ms: r.get(5)?,
            })
        })?
        .collect()
    })
    .map_err(sql_error)
}

/// What happened to `msg_id` per device of its inbox's owner: derived from the sent ranges
/// covering its offset (a range per send; more than one means redelivered) and the device's
/// acknowledgements (the first cursor move at or past the offset, else the cursor itself).
/// Channel messages have no per-device records.
pub(super) fn deliveries(
    conn: &Connection,
    msg_id: &str,
) -> Result<Vec<DeliveryRecord>, StoreError> {
    let at: Option<(String, u64)> = conn
        .prepare_cached(
            "SELECT stream, offset FROM messages WHERE id = ?1
             UNION ALL SELECT stream, offset FROM trimmed WHERE id = ?1 LIMIT 1",
        )
        .and_then(|mut stmt| {
            stmt.query_row([msg_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(sql_error)?;
    let Some((stream, offset)) = at else {
        return Ok(Vec::new());
    };
    let Some(uid) = stream.strip_prefix("inbox:") else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for d in devices(conn, uid)? {
        let sends: Vec<(String, u64)> = conn
            .prepare_cached(
                "SELECT session, sent_ms FROM sent
                 WHERE uid = ?1 AND device = ?2 AND stream = ?3
                   AND last >= ?4 AND last < ?5 AND first <= ?4
                 ORDER BY rowid",
            )
            .and_then(|mut stmt| {
                stmt.query_map(
                    params![
                        uid,
                        d.device,
                        stream,
                        offset,
                        offset.saturating_add(SENT_RANGE_MAX)
                    ],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?
                .collect::<rusqlite::Result<_>>()
            })
            .map_err(sql_error)?;
        let (Some(first), Some(latest)) = (sends.first(), sends.last()) else {
            continue;
        };
        let mut acked_ms: Option<u64> = conn
            .prepare_cached(
                "SELECT ts FROM acks WHERE uid = ?1 AND device = ?2 AND last >= ?3
                 ORDER BY last LIMIT 1",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![uid, d.device, offset], |r| r.get(0))
                    .optional()
            })
            .map_err(sql_error)?;
        if acked_ms.is_none() && d.offset >= offset {
            // Acknowledged no later than the cursor's last move (records purged meanwhile).
            acked_ms = Some(d.updated_ms);
        }
        let state = if acked_ms.is_some() {
            DeliveryState::Acked
        } else {
            DeliveryState::Sent
        };
        out.push(DeliveryRecord {
            msg_id: msg_id.to_owned(),
            uid: uid.to_owned(),
            device: d.device.clone(),
            session: latest.0.clone(),
            state,
            first_sent_ms: first.1,
            last_sent_ms: sends.iter().map(|s| s.1).max().unwrap_or(first.1),
            attempts: u32::try_from(sends.len()).unwrap_or(u32::MAX),
            acked_ms,
        });
    }
    Ok(out)
}

/// Matching events, oldest first: with `after_id` the first `q.limit` (0 → 100) after it, so a
/// follower paging forward never skips any; without it the newest `q.limit`.
pub(super) fn events(conn: &Connection, q: &EventQuery) -> Result<Vec<Event>, StoreError> {
    let mut f = Filter::default();
    f.text("kind = ?", &q.kind);
    f.text("uid = ?", &q.uid);
    f.int("ts >= ?", q.since_ms);
    f.int("id > ?", q.after_id);
    let limit = match q.limit {
        0 => DEFAULT_LIMIT,
        n => n,
    };
    let sql = format!(
        "SELECT id, ts, kind, uid, device, session, conn, data FROM events{}
         ORDER BY id {} LIMIT ?",
        f.sql(),
        if q.after_id.is_some() { "ASC" } else { "DESC" }
    );
    f.params.push(Value::Integer(sql_int(limit as u64)));
    type EventRow = (u64, NewEvent, String);
    let rows: Vec<EventRow> = conn
        .prepare_cached(&sql)
        .and_then(|mut stmt| {
            stmt.query_map(params_from_iter(f.params.iter()), |r| {
                let event = NewEvent {
                    ts: r.get(1)?,
                    kind: r.get(2)?,
                    uid: r.get(3)?,
                    device: r.get(4)?,
                    session: r.get(5)?,
                    conn: r.get(6)?,
                    data: serde_json::Value::Null,
                };
                Ok((r.get(0)?, event, r.get(7)?))
            })?
            .collect()
        })
        .map_err(sql_error)?;
    let mut events = rows
        .into_iter()
        .map(|(id, mut event, data)| {
            event.data = serde_json::from_str(&data)
                .map_err(|e| StoreError::Corrupt(format!("data of event {id}: {e}")))?;
            Ok(Event { id, event })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    if q.after_id.is_none() {
        events.reverse();
    }
    Ok(events)
}

/// Outbox deliveries with `next_attempt_ms <= now_ms`, the longest-waiting first.
pub(super) fn due_deliveries(
    conn: &Connection,
    now_ms: u64,
    limit: usize,
) -> Result<Vec<OutboxDelivery>, StoreError> {
    conn.prepare_cached(
        "SELECT id, event_id, kind, target, body, created_ms, attempts, next_attempt_ms,
                last_error
         FROM outbox WHERE next_attempt_ms <= ?1 ORDER BY next_attempt_ms, id LIMIT ?2",
    )
    .and_then(|mut stmt| {
        stmt.query_map(params![sql_int(now_ms), sql_int(limit as u64)], |r| {
            Ok(OutboxDelivery {
                id: r.get(0)?,
                event_id: r.get(1)?,
                kind: r.get(2)?,
                target: r.get(3)?,
                body: r.get(4)?,
                created_ms: r.get(5)?,
                attempts: r.get(6)?,
                next_attempt_ms: r.get(7)?,
                last_error: r.get(8)?,
            })
        })?
        .collect()
    })
    .map_err(sql_error)
}

/// How many deliveries wait in the outbox and when the next one is due.
pub(super) fn outbox_status(conn: &Connection) -> Result<OutboxStatus, StoreError> {
    conn.prepare_cached("SELECT count(*), min(next_attempt_ms) FROM outbox")
        .and_then(|mut stmt| {
            stmt.query_row([], |r| {
                Ok(OutboxStatus {
                    pending: r.get(0)?,
                    next_attempt_ms: r.get(1)?,
                })
            })
        })
        .map_err(sql_error)
}
