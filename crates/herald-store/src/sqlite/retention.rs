//! Retention: what `trim` removes. Runs on the writer thread, inside the writer's
//! transaction, so a trim commits (or fails) atomically with the batch it is part of.
//!
//! Messages only ever leave a stream as a prefix: `streams.first` moves up and the retained
//! offsets stay exactly `first..=last`; `streams.last` is never touched, so offsets are not
//! reused. Every rule is bounded per call ([`TRIM_BUDGET`] rows) so a large backlog cannot
//! stall the writer; the engine's periodic trim catches up over a few calls.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};

use crate::model::{Retention, Trimmed};

/// Most rows of each kind (messages, events, sessions, delivery records) that one `trim`
/// call removes.
pub(super) const TRIM_BUDGET: u64 = 10_000;

/// Key range (`>= start`, `< end`) of the channel streams: `chan:` … `chan;` (`;` follows `:`).
const CHANNELS: (&str, &str) = ("chan:", "chan;");
/// Key range of the inbox streams.
const INBOXES: (&str, &str) = ("inbox:", "inbox;");

/// Applies `policy` at `now_ms`. Returns the streams whose first offset moved, by name.
pub(super) fn trim(
    conn: &Connection,
    now_ms: u64,
    policy: &Retention,
) -> rusqlite::Result<Vec<Trimmed>> {
    trim_within(conn, now_ms, policy, TRIM_BUDGET)
}

/// [`trim`], removing at most `limit` rows of each kind.
fn trim_within(
    conn: &Connection,
    now_ms: u64,
    policy: &Retention,
    limit: u64,
) -> rusqlite::Result<Vec<Trimmed>> {
    let mut moved = BTreeMap::new();
    let mut budget = limit;
    if policy.channel_max_messages > 0 {
        trim_by_count(
            conn,
            policy.channel_max_messages,
            now_ms,
            &mut budget,
            &mut moved,
        )?;
    }
    if policy.channel_max_age_ms > 0 {
        let cutoff = now_ms.saturating_sub(policy.channel_max_age_ms);
        trim_by_age(conn, CHANNELS, cutoff, now_ms, &mut budget, &mut moved)?;
    }
    if policy.inbox_max_age_ms > 0 {
        let cutoff = now_ms.saturating_sub(policy.inbox_max_age_ms);
        trim_by_age(conn, INBOXES, cutoff, now_ms, &mut budget, &mut moved)?;
    }
    let mut forgotten = 0;
    if policy.dedupe_window_ms > 0 {
        let cutoff = now_ms.saturating_sub(policy.dedupe_window_ms);
        forgotten = conn
            .prepare_cached(
                "DELETE FROM idem WHERE (sender, key) IN
                    (SELECT sender, key FROM idem WHERE ts < ?1 LIMIT ?2)",
            )?
            .execute(params![cutoff, limit])?;
    }
    let (mut events, mut sessions, mut deliveries, mut headers) = (0, 0, 0, 0);
    if policy.tombstone_ms > 0 {
        let cutoff = now_ms.saturating_sub(policy.tombstone_ms);
        events = conn
            .prepare_cached(
                "DELETE FROM events WHERE id IN
                    (SELECT id FROM events WHERE ts < ?1 LIMIT ?2)",
            )?
            .execute(params![cutoff, limit])?;
        sessions = conn
            .prepare_cached(
                "DELETE FROM sessions WHERE id IN
                    (SELECT id FROM sessions
                     WHERE state = 'closed' AND last_seen_ms < ?1 LIMIT ?2)",
            )?
            .execute(params![cutoff, limit])?;
        // Delivery records go with their messages: ranges and ack records older than the
        // tombstone time that lie wholly below their stream's oldest retained offset. Rows are
        // walked oldest first (rowid order is time order) within the budget.
        deliveries = conn
            .prepare_cached(
                "DELETE FROM sent WHERE rowid IN
                    (SELECT s.rowid FROM sent s JOIN streams t ON t.stream = s.stream
                     WHERE s.rowid IN (SELECT rowid FROM sent ORDER BY rowid LIMIT ?2)
                       AND s.sent_ms < ?1 AND s.last < t.first)",
            )?
            .execute(params![cutoff, limit])?;
        deliveries += conn
            .prepare_cached(
                "DELETE FROM acks WHERE rowid IN
                    (SELECT a.rowid FROM acks a JOIN streams t ON t.stream = 'inbox:' || a.uid
                     WHERE a.rowid IN (SELECT rowid FROM acks ORDER BY rowid LIMIT ?2)
                       AND a.ts < ?1 AND a.last < t.first)",
            )?
            .execute(params![cutoff, limit])?;
        headers = conn
            .prepare_cached(
                "DELETE FROM trimmed WHERE id IN
                    (SELECT id FROM trimmed WHERE trimmed_ms < ?1 LIMIT ?2)",
            )?
            .execute(params![cutoff, limit])?;
    }
    tracing::debug!(
        streams = moved.len(),
        messages = limit - budget,
        forgotten,
        events,
        sessions,
        deliveries,
        headers,
        "store trimmed"
    );
    Ok(moved.into_values().collect())
}

/// Channels holding more than `max` messages lose their oldest ones.
fn trim_by_count(
    conn: &Connection,
    max: u64,
    now_ms: u64,
    budget: &mut u64,
    moved: &mut BTreeMap<String, Trimmed>,
) -> rusqlite::Result<()> {
    let over: Vec<(String, u64, u64)> = conn
        .prepare_cached(
            "SELECT stream, first, last FROM streams
             WHERE stream >= ?1 AND stream < ?2 AND last - first >= ?3",
        )?
        .query_map(params![CHANNELS.0, CHANNELS.1, max], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    for (stream, first, last) in over {
        if *budget == 0 {
            break;
        }
        let keep_from = last.saturating_sub(max) + 1;
        remove_prefix(conn, stream, first, keep_from, now_ms, budget, moved)?;
    }
    Ok(())
}

/// The count cap of channel `stream` (whose newest offset is `last`), applied in the commit
/// that appended to it: the oldest messages beyond `max` go now, not at the next periodic
/// trim. `None` when nothing was over the cap.
pub(super) fn cap(
    conn: &Connection,
    stream: &str,
    last: u64,
    max: u64,
    now_ms: u64,
) -> rusqlite::Result<Option<Trimmed>> {
    let first: Option<u64> = conn
        .prepare_cached("SELECT first FROM streams WHERE stream = ?1")?
        .query_row([stream], |r| r.get(0))
        .optional()?;
    let Some(first) = first else {
        return Ok(None);
    };
    let keep_from = last.saturating_sub(max) + 1;
    if keep_from <= first {
        return Ok(None);
    }
    let mut moved = BTreeMap::new();
    let mut budget = TRIM_BUDGET;
    remove_prefix(
        conn,
        stream.to_owned(),
        first,
        keep_from,
        now_ms,
        &mut budget,
        &mut moved,
    )?;
    Ok(moved.into_values().next())
}

/// Streams of `range` lose their leading messages older than `cutoff` (ts < cutoff). The
/// walk stops at the first message young enough to keep, so a younger message is never
/// removed even if an older one follows it (clocks are not perfectly monotonic).
fn trim_by_age(
    conn: &Connection,
    range: (&str, &str),
    cutoff: u64,
    now_ms: u64,
    budget: &mut u64,
    moved: &mut BTreeMap<String, Trimmed>,
) -> rusqlite::Result<()> {
    if *budget == 0 || cutoff == 0 {
        return Ok(());
    }
    // The oldest expired messages, found through the ts index: at most `budget` rows read.
    let mut candidates: BTreeMap<String, u64> = BTreeMap::new();
    {
        let mut stmt = conn.prepare_cached(
            "SELECT stream, offset FROM messages INDEXED BY messages_by_ts
             WHERE ts < ?1 AND stream >= ?2 AND stream < ?3
             ORDER BY ts LIMIT ?4",
        )?;
        let mut rows = stmt.query(params![cutoff, range.0, range.1, *budget])?;
        while let Some(row) = rows.next()? {
            let (stream, offset): (String, u64) = (row.get(0)?, row.get(1)?);
            let newest = candidates.entry(stream).or_insert(offset);
            *newest = (*newest).max(offset);
        }
    }
    for (stream, newest_old) in candidates {
        if *budget == 0 {
            break;
        }
        let first: Option<u64> = conn
            .prepare_cached("SELECT first FROM streams WHERE stream = ?1")?
            .query_row([&stream], |r| r.get(0))
            .optional()?;
        let Some(first) = first else { continue };
        if newest_old < first {
            continue;
        }
        let upto = newest_old.min(first.saturating_add(*budget - 1));
        let mut keep_from = first;
        {
            let mut stmt = conn.prepare_cached(
                "SELECT offset, ts FROM messages
                 WHERE stream = ?1 AND offset >= ?2 AND offset <= ?3 ORDER BY offset",
            )?;
            let mut rows = stmt.query(params![stream, first, upto])?;
            while let Some(row) = rows.next()? {
                let (offset, ts): (u64, u64) = (row.get(0)?, row.get(1)?);
                if ts >= cutoff {
                    break;
                }
                keep_from = offset + 1;
            }
        }
        remove_prefix(conn, stream, first, keep_from, now_ms, budget, moved)?;
    }
    Ok(())
}

/// Deletes offsets `first..keep_from` of `stream` (at most `budget` of them) and moves
/// `streams.first`. An inbox keeps the header of each removed message in `trimmed` (channels
/// do not: their volume is unbounded and their readers are sessions, not durable devices).
fn remove_prefix(
    conn: &Connection,
    stream: String,
    first: u64,
    keep_from: u64,
    now_ms: u64,
    budget: &mut u64,
    moved: &mut BTreeMap<String, Trimmed>,
) -> rusqlite::Result<()> {
    let keep_from = keep_from.min(first.saturating_add(*budget));
    if keep_from <= first {
        return Ok(());
    }
    if stream.starts_with(INBOXES.0) {
        conn.prepare_cached(
            "INSERT OR REPLACE INTO trimmed (id, stream, offset, sender, ts, trimmed_ms)
             SELECT id, stream, offset, sender, ts, ?4 FROM messages
             WHERE stream = ?1 AND offset >= ?2 AND offset < ?3",
        )?
        .execute(params![stream, first, keep_from, now_ms])?;
    }
    // Idempotency keys outlive their messages until the dedupe window passed.
    conn.prepare_cached(
        "INSERT INTO idem (sender, key, ts, msg_id, stream, offset)
         SELECT sender, idem, ts, id, stream, offset FROM messages
         WHERE stream = ?1 AND offset >= ?2 AND offset < ?3 AND idem IS NOT NULL
         ON CONFLICT (sender, key) DO UPDATE SET
            ts = excluded.ts, msg_id = excluded.msg_id, stream = excluded.stream,
            offset = excluded.offset
         WHERE excluded.ts >= idem.ts",
    )?
    .execute(params![stream, first, keep_from])?;
    conn.prepare_cached(
        "DELETE FROM by_sender WHERE (sender, ts, msg) IN
            (SELECT sender, ts, rowid FROM messages
             WHERE stream = ?1 AND offset >= ?2 AND offset < ?3)",
    )?
    .execute(params![stream, first, keep_from])?;
    let removed = conn
        .prepare_cached("DELETE FROM messages WHERE stream = ?1 AND offset >= ?2 AND offset < ?3")?
        .execute(params![stream, first, keep_from])? as u64;
    conn.prepare_cached("UPDATE streams SET first = ?2 WHERE stream = ?1")?
        .execute(params![stream, keep_from])?;
    *budget = budget.saturating_sub(keep_from - first);
    let entry = moved.entry(stream.clone()).or_insert(Trimmed {
        stream,
        first: keep_from,
        removed: 0,
    });
    entry.first = keep_from;
    entry.removed += removed;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::sqlite::schema;

    fn db_with(streams: &[(&str, u64)]) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        schema::create_schema(&conn).unwrap();
        for &(stream, n) in streams {
            for offset in 1..=n {
                conn.execute(
                    "INSERT INTO messages (stream, offset, id, sender, ts, body, receipt)
                     VALUES (?1, ?2, ?3, 'a', ?2, '1', 0)",
                    params![stream, offset, format!("{stream}/{offset}")],
                )
                .unwrap();
            }
            conn.execute(
                "INSERT INTO streams (stream, first, last) VALUES (?1, 1, ?2)",
                params![stream, n],
            )
            .unwrap();
        }
        conn
    }

    fn first(conn: &Connection, stream: &str) -> u64 {
        conn.query_row(
            "SELECT first FROM streams WHERE stream = ?1",
            [stream],
            |r| r.get(0),
        )
        .unwrap()
    }

    fn count(conn: &Connection, stream: &str) -> u64 {
        conn.query_row(
            "SELECT count(*) FROM messages WHERE stream = ?1",
            [stream],
            |r| r.get(0),
        )
        .unwrap()
    }

    fn policy(max_messages: u64, max_age_ms: u64) -> Retention {
        Retention {
            channel_max_messages: max_messages,
            channel_max_age_ms: max_age_ms,
            inbox_max_age_ms: max_age_ms,
            dedupe_window_ms: 0,
            tombstone_ms: 0,
        }
    }

    #[test]
    fn a_call_removes_at_most_its_budget_and_the_next_one_continues() {
        let conn = db_with(&[("chan:a", 10), ("chan:b", 10)]);
        let keep_two = policy(2, 0);

        let moved = trim_within(&conn, 0, &keep_two, 5).unwrap();
        let moved: Vec<_> = moved
            .iter()
            .map(|t| (t.stream.as_str(), t.first, t.removed))
            .collect();
        assert_eq!(moved, [("chan:a", 6, 5)]);
        assert_eq!((first(&conn, "chan:a"), count(&conn, "chan:a")), (6, 5));

        trim_within(&conn, 0, &keep_two, 5).unwrap();
        trim_within(&conn, 0, &keep_two, 5).unwrap();
        trim_within(&conn, 0, &keep_two, 5).unwrap();
        for stream in ["chan:a", "chan:b"] {
            assert_eq!(
                (first(&conn, stream), count(&conn, stream)),
                (9, 2),
                "{stream}"
            );
        }
        assert!(trim_within(&conn, 0, &keep_two, 5).unwrap().is_empty());
    }

    #[test]
    fn age_rule_is_bounded_too() {
        // ts = offset, so at now 100 with max age 50 everything is expired.
        let conn = db_with(&[("inbox:a", 7)]);
        let moved = trim_within(&conn, 100, &policy(0, 50), 3).unwrap();
        assert_eq!(moved[0].first, 4);
        assert_eq!(count(&conn, "inbox:a"), 4);
        let moved = trim_within(&conn, 100, &policy(0, 50), 100).unwrap();
        assert_eq!((moved[0].first, moved[0].removed), (8, 4));
        assert_eq!(count(&conn, "inbox:a"), 0);
    }
}
