//! Prototype of the durable write path, to choose the storage layout by measurement
//! (`docs/design.md`, "Choosing the write path").
//!
//! Writes `--messages` 1:1 messages in group-commit batches of `--batch`, fsynced, through
//! each candidate layout, and prints wall time, messages/s and the writer thread's CPU time
//! per message (from `/proc/thread-self/schedstat`):
//! - `sqlite-v2`: the statements the store ran per message before schema 3 (message row with
//!   four indexes, stream head, idempotency row, the sender's `acked_seq`, one delivery row,
//!   the cursor and the delivery's ack time);
//! - `sqlite-row`: one message row per message (offset and id indexes only; session, seq and
//!   idempotency key as columns), one cursor upsert and one delivery range per batch;
//! - `log`: an append-only file of length+checksum-framed records, one `write` and one
//!   `fdatasync` per batch (the segmented-log candidate's hot path).
//!
//! `cargo run --release -p herald-store --example write_path -- [--messages N] [--batch B]`
// A measurement tool: wall-clock time of a real disk.
#![allow(clippy::disallowed_types)]

use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use rusqlite::{params, Connection};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut messages = 100_000u64;
    let mut batch = 64u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().ok_or("missing value")?;
        match a.as_str() {
            "--messages" => messages = v.parse()?,
            "--batch" => batch = v.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let dir = tempfile::tempdir()?;
    println!(
        "{messages} messages, batches of {batch}, fsync on, in {}",
        dir.path().display()
    );
    println!(
        "{:<12} {:>10} {:>12} {:>14}",
        "layout", "wall s", "msg/s", "CPU µs/msg"
    );
    let layouts = [
        "sqlite-v2",
        "row:id",
        "row:",
        "row:ts",
        "row:sender",
        "row:idem",
        "row:id,ts,sender,idem",
        "log",
    ];
    for layout in layouts {
        let path = dir.path().join(layout.replace([':', ','], "_"));
        let cpu0 = thread_cpu_ns();
        let t0 = Instant::now();
        match layout.split_once(':') {
            Some(("row", ix)) => sqlite_row(&path, messages, batch, ix)?,
            _ if layout == "sqlite-v2" => sqlite_v2(&path, messages, batch)?,
            _ => log(&path, messages, batch)?,
        }
        let wall = t0.elapsed().as_secs_f64();
        let cpu = thread_cpu_ns().saturating_sub(cpu0) as f64 / 1000.0;
        println!(
            "{layout:<24} {wall:>8.2} {:>10.0} {:>12.2}",
            messages as f64 / wall,
            cpu / messages as f64
        );
    }
    Ok(())
}

/// Nanoseconds this thread has run on a CPU.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn body(i: u64) -> String {
    format!("{{\"text\":\"message number {i:>12} of the benchmark\"}}")
}

fn open(path: &Path, schema: &str) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    c.pragma_update(None, "synchronous", "FULL")?;
    c.pragma_update(None, "temp_store", "MEMORY")?;
    c.execute_batch(schema)?;
    Ok(c)
}

fn sqlite_v2(path: &Path, messages: u64, batch: u64) -> rusqlite::Result<()> {
    let c = open(
        path,
        "CREATE TABLE messages (rowid INTEGER PRIMARY KEY, stream TEXT NOT NULL,
            offset INTEGER NOT NULL, id TEXT NOT NULL, sender TEXT NOT NULL, ts INTEGER NOT NULL,
            body TEXT NOT NULL, receipt INTEGER NOT NULL);
         CREATE UNIQUE INDEX m1 ON messages(stream, offset);
         CREATE UNIQUE INDEX m2 ON messages(id);
         CREATE INDEX m3 ON messages(ts);
         CREATE INDEX m4 ON messages(sender, ts);
         CREATE TABLE streams (stream TEXT PRIMARY KEY, first INTEGER, last INTEGER) WITHOUT ROWID;
         CREATE TABLE idem (sender TEXT, key TEXT, ts INTEGER, msg_id TEXT, stream TEXT,
            offset INTEGER, PRIMARY KEY (sender, key)) WITHOUT ROWID;
         CREATE INDEX i1 ON idem(ts);
         CREATE TABLE sessions (id TEXT PRIMARY KEY, acked_seq INTEGER);
         INSERT INTO sessions VALUES ('s0', 0), ('s1', 0), ('s2', 0), ('s3', 0), ('s4', 0),
            ('s5', 0), ('s6', 0), ('s7', 0), ('s8', 0), ('s9', 0);
         CREATE TABLE devices (uid TEXT, device TEXT, offset INTEGER, updated_ms INTEGER,
            PRIMARY KEY (uid, device)) WITHOUT ROWID;
         CREATE TABLE deliveries (rowid INTEGER PRIMARY KEY, msg_id TEXT, uid TEXT, device TEXT,
            stream TEXT, offset INTEGER, session TEXT, sent_ms INTEGER, acked_ms INTEGER);
         CREATE UNIQUE INDEX d1 ON deliveries(msg_id, uid, device);
         CREATE INDEX d2 ON deliveries(uid, device, stream, offset) WHERE acked_ms IS NULL;
         CREATE INDEX d3 ON deliveries(sent_ms);",
    )?;
    let mut offsets = [0u64; 10];
    let mut i = 0;
    while i < messages {
        c.execute_batch("BEGIN IMMEDIATE")?;
        for _ in 0..batch.min(messages - i) {
            let pair = (i % 10) as usize;
            offsets[pair] += 1;
            let (o, stream, id) = (
                offsets[pair],
                format!("inbox:u{pair}"),
                format!("m_{i:020}"),
            );
            let _: Option<String> = c
                .prepare_cached("SELECT msg_id FROM idem WHERE sender = ?1 AND key = ?2")?
                .query_row(params![format!("p{pair}"), format!("k{i}")], |r| r.get(0))
                .ok();
            c.prepare_cached("INSERT INTO messages (stream, offset, id, sender, ts, body, receipt) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)")?
                .execute(params![stream, o, id, format!("p{pair}"), i, body(i)])?;
            c.prepare_cached("INSERT INTO streams VALUES (?1, ?2, ?2) ON CONFLICT (stream) DO UPDATE SET last = excluded.last")?
                .execute(params![stream, o])?;
            c.prepare_cached("INSERT INTO idem VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?
                .execute(params![
                    format!("p{pair}"),
                    format!("k{i}"),
                    i,
                    id,
                    stream,
                    o
                ])?;
            c.prepare_cached("UPDATE sessions SET acked_seq = max(acked_seq, ?2) WHERE id = ?1")?
                .execute(params![format!("s{pair}"), i])?;
            c.prepare_cached("INSERT INTO deliveries (msg_id, uid, device, stream, offset, session, sent_ms) VALUES (?1, ?2, 'd', ?3, ?4, 'r', ?5)")?
                .execute(params![id, format!("u{pair}"), stream, o, i])?;
            c.prepare_cached("INSERT INTO devices VALUES (?1, 'd', ?2, ?3) ON CONFLICT (uid, device) DO UPDATE SET offset = excluded.offset WHERE excluded.offset > devices.offset")?
                .execute(params![format!("u{pair}"), o, i])?;
            c.prepare_cached("UPDATE deliveries SET acked_ms = ?4 WHERE uid = ?1 AND device = 'd' AND stream = ?2 AND offset <= ?3 AND acked_ms IS NULL")?
                .execute(params![format!("u{pair}"), stream, o, i])?;
            i += 1;
        }
        c.execute_batch("COMMIT")?;
    }
    Ok(())
}

/// `ix`: the secondary indexes besides `(stream, offset)`, comma-separated: `id` (unique),
/// `ts`, `sender` (`(sender, ts)`), `idem` (partial `(sender, idem)`, with a lookup per
/// message as a duplicate check does).
fn sqlite_row(path: &Path, messages: u64, batch: u64, ix: &str) -> rusqlite::Result<()> {
    let c = open(
        path,
        "CREATE TABLE messages (rowid INTEGER PRIMARY KEY, stream TEXT NOT NULL,
            offset INTEGER NOT NULL, id TEXT NOT NULL, sender TEXT NOT NULL, ts INTEGER NOT NULL,
            body TEXT NOT NULL, receipt INTEGER NOT NULL, session TEXT, seq INTEGER, idem TEXT);
         CREATE UNIQUE INDEX m1 ON messages(stream, offset);
         CREATE TABLE devices (uid TEXT, device TEXT, offset INTEGER, updated_ms INTEGER,
            PRIMARY KEY (uid, device)) WITHOUT ROWID;
         CREATE TABLE sent (rowid INTEGER PRIMARY KEY, uid TEXT, device TEXT, stream TEXT,
            first INTEGER, last INTEGER, session TEXT, sent_ms INTEGER);",
    )?;
    let has = |name: &str| ix.split(',').any(|i| i == name);
    for (name, sql) in [
        ("id", "CREATE UNIQUE INDEX m2 ON messages(id)"),
        ("ts", "CREATE INDEX m3 ON messages(ts)"),
        ("sender", "CREATE INDEX m4 ON messages(sender, ts)"),
        (
            "idem",
            "CREATE INDEX m5 ON messages(sender, idem) WHERE idem IS NOT NULL",
        ),
    ] {
        if has(name) {
            c.execute_batch(sql)?;
        }
    }
    let search = has("idem");
    let mut offsets = [0u64; 10];
    let mut i = 0;
    while i < messages {
        c.execute_batch("BEGIN IMMEDIATE")?;
        let mut high = [0u64; 10];
        for _ in 0..batch.min(messages - i) {
            let pair = (i % 10) as usize;
            offsets[pair] += 1;
            high[pair] = offsets[pair];
            let (o, stream, id) = (
                offsets[pair],
                format!("inbox:u{pair}"),
                format!("m_{i:020}"),
            );
            if search {
                let _: Option<String> = c
                    .prepare_cached("SELECT id FROM messages WHERE sender = ?1 AND idem = ?2")?
                    .query_row(params![format!("p{pair}"), format!("k{i}")], |r| r.get(0))
                    .ok();
            }
            c.prepare_cached("INSERT INTO messages (stream, offset, id, sender, ts, body, receipt, session, seq, idem) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9)")?
                .execute(params![stream, o, id, format!("p{pair}"), i, body(i), format!("s{pair}"), i, format!("k{i}")])?;
            i += 1;
        }
        for (pair, &o) in high.iter().enumerate().filter(|(_, &o)| o > 0) {
            c.prepare_cached("INSERT INTO sent (uid, device, stream, first, last, session, sent_ms) VALUES (?1, 'd', ?2, ?3, ?3, 'r', ?4)")?
                .execute(params![format!("u{pair}"), format!("inbox:u{pair}"), o, i])?;
            c.prepare_cached("INSERT INTO devices VALUES (?1, 'd', ?2, ?3) ON CONFLICT (uid, device) DO UPDATE SET offset = excluded.offset WHERE excluded.offset > devices.offset")?
                .execute(params![format!("u{pair}"), o, i])?;
        }
        c.execute_batch("COMMIT")?;
    }
    Ok(())
}

fn log(path: &Path, messages: u64, batch: u64) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)?;
    // Preallocated: an fdatasync then has no file size (metadata) to write.
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        f.write_all(&zeros)?;
    }
    f.sync_all()?;
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    let mut offsets = [0u64; 10];
    let mut buf = Vec::with_capacity(1 << 16);
    let mut written = 0u64;
    let mut i = 0;
    while i < messages {
        buf.clear();
        for _ in 0..batch.min(messages - i) {
            let pair = (i % 10) as usize;
            offsets[pair] += 1;
            let start = buf.len();
            buf.extend_from_slice(&[0u8; 8]);
            for field in [
                format!("inbox:u{pair}"),
                format!("m_{i:020}"),
                format!("p{pair}"),
                format!("s{pair}"),
                format!("k{i}"),
                body(i),
            ] {
                buf.extend_from_slice(&(field.len() as u32).to_le_bytes());
                buf.extend_from_slice(field.as_bytes());
            }
            buf.extend_from_slice(&offsets[pair].to_le_bytes());
            buf.extend_from_slice(&i.to_le_bytes());
            let len = (buf.len() - start - 8) as u32;
            let sum = checksum(&buf[start + 8..]);
            buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
            buf[start + 4..start + 8].copy_from_slice(&sum.to_le_bytes());
            i += 1;
        }
        if written + buf.len() as u64 > 64 << 20 {
            // Past the preallocated segment: start over (a real log rolls to a new one).
            use std::io::Seek as _;
            f.seek(std::io::SeekFrom::Start(0))?;
            written = 0;
        }
        f.write_all(&buf)?;
        f.sync_data()?;
        written += buf.len() as u64;
    }
    Ok(())
}

/// CRC-32 (IEEE), table-driven: the prototype's record checksum.
fn checksum(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}
