//! Scenario 5: restart. A data dir holding N stored messages is built through herald's own
//! store code (`herald-store`'s SQLite backend, big group-commit batches, herald's message id
//! format), so it is byte for byte what the server would have written; then herald is started
//! on it and the time from spawn to (a) accepting TCP, (b) `/readyz` 200 and (c) a first
//! hello→welcome plus an acknowledged publish is measured, median of rounds.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use herald_store::sqlite::{SqliteConfig, SqliteStore};
use herald_store::{Body, CommitListener, Durability, NewMessage, Store, StoredMessage};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::procs::{free_port, Herald};
use crate::scenario::resume;

/// How long one start may take before the round fails.
const START_TIMEOUT: Duration = Duration::from_secs(300);

pub struct Opts {
    /// Stored-message counts.
    pub sizes: Vec<u64>,
    pub rounds: usize,
    pub body_bytes: usize,
    /// Messages are spread evenly over this many inboxes.
    pub streams: u64,
    /// Messages per store transaction while generating.
    pub batch: usize,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            sizes: vec![1_000_000, 10_000_000],
            rounds: 3,
            body_bytes: 64,
            streams: 1_000,
            batch: 100_000,
        }
    }
}

impl Opts {
    pub fn smoke() -> Opts {
        Opts {
            sizes: vec![10_000],
            rounds: 1,
            body_bytes: 64,
            streams: 100,
            batch: 10_000,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    messages: u64,
    generate_secs: f64,
    generate_msgs_per_sec: f64,
    disk_bytes: u64,
    rounds: usize,
    /// Medians of the rounds, seconds from spawn.
    listening_secs: f64,
    readyz_secs: f64,
    first_publish_secs: f64,
    /// Every round, for the record.
    samples: Vec<[f64; 3]>,
    rss_ready_kib: u64,
}

/// Tells nobody: the generator has no live subscribers.
struct NoListener;

impl CommitListener for NoListener {
    fn committed(&self, _messages: &[Arc<StoredMessage>]) {}
}

pub async fn run(opts: &Opts, out_dir: &Path) -> anyhow::Result<Value> {
    let mut rows = Vec::new();
    for &n in &opts.sizes {
        rows.push(one_size(opts, n, out_dir).await?);
    }
    print_table(&rows);
    let out = json!({
        "scenario": "restart",
        "system": "herald (fsync)",
        "method": "data generated with herald-store (SQLite, durability os, large batches), then herald started on it; times from spawn",
        "markdown": markdown(&rows),
        "rows": rows,
    });
    std::fs::write(
        out_dir.join("restart.json"),
        serde_json::to_string_pretty(&out)?,
    )?;
    Ok(out)
}

async fn one_size(opts: &Opts, n: u64, out_dir: &Path) -> anyhow::Result<Row> {
    let dir = out_dir.join(format!("restart-{n}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let data = dir.join("data");
    println!("restart: generating {n} messages …");
    let t = Instant::now();
    generate(opts, n, &data).await?;
    let generate_secs = t.elapsed().as_secs_f64();
    let disk_bytes = dir_size(&data)?;
    println!(
        "restart: generated {n} messages in {generate_secs:.1} s ({:.0} msg/s), {:.1} MB on disk",
        n as f64 / generate_secs,
        disk_bytes as f64 / 1e6
    );
    let mut samples = Vec::new();
    let mut rss_ready_kib = 0;
    for _ in 0..opts.rounds {
        let (s, rss) = start_once(&data, &dir).await?;
        println!(
            "restart {n}: listening {:.3} s, readyz {:.3} s, first publish {:.3} s",
            s[0], s[1], s[2]
        );
        samples.push(s);
        rss_ready_kib = rss;
    }
    let med = |k: usize| {
        let mut v: Vec<f64> = samples.iter().map(|s| s[k]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(Row {
        messages: n,
        generate_secs,
        generate_msgs_per_sec: n as f64 / generate_secs,
        disk_bytes,
        rounds: samples.len(),
        listening_secs: med(0),
        readyz_secs: med(1),
        first_publish_secs: med(2),
        samples,
        rss_ready_kib,
    })
}

/// Appends `n` messages through the SQLite store, `opts.batch` per transaction.
async fn generate(opts: &Opts, n: u64, data: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(data)?;
    let mut cfg = SqliteConfig::new(data.join("herald.db"));
    cfg.durability = Durability::Os;
    cfg.max_batch = opts.batch.max(1);
    let store = SqliteStore::open(cfg, Arc::new(NoListener))?;
    let body = format!("\"{}\"", "x".repeat(opts.body_bytes.saturating_sub(2)));
    // Acceptance times spread over the time it would take at 10 messages per ms, ending now
    // (well inside inbox retention), so ids (time-prefixed) grow as the server's would.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let start_ts = now.saturating_sub(n / 10);
    let per_stream = n.div_ceil(opts.streams.max(1)).max(1);
    let mut i = 0u64;
    while i < n {
        let end = (i + opts.batch as u64).min(n);
        let mut pending = Vec::with_capacity((end - i) as usize);
        for k in i..end {
            let ts = start_ts + k / 10;
            pending.push(store.append_eager(NewMessage {
                // Stream by stream (as if each inbox's messages came in a burst): every index
                // is then appended at its end, which keeps generation fast; round-robin
                // streams made each insert touch a different index page.
                stream: format!("inbox:g{}", k / per_stream),
                id: herald_core::ids::message_id(ts),
                from: "gen".into(),
                ts,
                body: Body::from_json(body.clone())?,
                receipt: false,
                idem: None,
                session_seq: None,
            }));
        }
        for p in pending {
            p.await?;
        }
        i = end;
    }
    store.close().await?;
    Ok(())
}

fn dir_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() {
            dir_size(&e.path())?
        } else {
            m.len()
        };
    }
    Ok(total)
}

/// One start: returns seconds from spawn to listening, ready, first acknowledged publish, and
/// the server's RSS then.
async fn start_once(data: &Path, log_dir: &Path) -> anyhow::Result<([f64; 3], u64)> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let t0 = Instant::now();
    let herald = Herald::spawn(data, addr, &[("STORAGE__DURABILITY", "fsync")], log_dir)?;
    let deadline = t0 + START_TIMEOUT;
    // (a) The port accepts. No notification exists for this, so poll briefly.
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!("herald did not listen within {START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let listening = t0.elapsed().as_secs_f64();
    // (b) /readyz 200.
    loop {
        if http_status(addr, "/readyz").await.ok() == Some(200) {
            break;
        }
        if Instant::now() > deadline {
            bail!("herald /readyz not 200 within {START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let ready = t0.elapsed().as_secs_f64();
    // (c) hello → welcome, then one publish acknowledged.
    let mut ws = resume::connect(addr).await?;
    resume::hello(&mut ws, "restart-probe", "d", None).await?;
    resume::publish_all(&mut ws, &["user:g0".to_string()], 1, "\"probe\"", 1, 0).await?;
    let first = t0.elapsed().as_secs_f64();
    let rss = herald.rss_kib()?;
    drop(ws);
    herald.proc.stop(Duration::from_secs(30)).await?;
    Ok(([listening, ready, first], rss))
}

/// Status code of a plain HTTP/1.1 GET.
async fn http_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status line")
}

fn print_table(rows: &[Row]) {
    println!("\nrestart — herald (fsync): seconds from spawn, median of rounds");
    println!(
        "{:>11} {:>9} {:>10} {:>9} {:>9} {:>13} {:>10} {:>9}",
        "messages",
        "disk MB",
        "gen s",
        "listen s",
        "readyz s",
        "1st publish s",
        "rss MiB",
        "rounds"
    );
    for r in rows {
        println!(
            "{:>11} {:>9.1} {:>10.1} {:>9.3} {:>9.3} {:>13.3} {:>10.1} {:>9}",
            r.messages,
            r.disk_bytes as f64 / 1e6,
            r.generate_secs,
            r.listening_secs,
            r.readyz_secs,
            r.first_publish_secs,
            r.rss_ready_kib as f64 / 1024.0,
            r.rounds
        );
    }
}

/// The table for report.md.
fn markdown(rows: &[Row]) -> String {
    let mut md = String::from(
        "Data written through herald-store (the server's own store code), then herald started on \
         it; seconds from spawn, medians of the rounds.\n\n\
         | stored messages | on disk (MB) | generated in (s) | listening (s) | /readyz 200 (s) | first publish ok (s) | RSS when ready (MiB) | rounds |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        md.push_str(&format!(
            "| {} | {:.0} | {:.1} | {:.3} | {:.3} | {:.3} | {:.1} | {} |\n",
            r.messages,
            r.disk_bytes as f64 / 1e6,
            r.generate_secs,
            r.listening_secs,
            r.readyz_secs,
            r.first_publish_secs,
            r.rss_ready_kib as f64 / 1024.0,
            r.rounds
        ));
    }
    md
}
