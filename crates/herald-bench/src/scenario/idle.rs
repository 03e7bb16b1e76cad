//! Scenario 3: idle WebSocket sessions. N clients each say hello, get their welcome and then
//! only answer the server's pings; the server's resident memory before and after tells what
//! one idle connection costs.
//!
//! One source address has ~28k ephemeral ports toward one server port, so client sockets are
//! bound to 127.0.0.2, 127.0.0.3, … ([`PER_SOURCE_ADDR`] each). Both processes need an fd per
//! connection: the bench raises its soft limit to the hard limit before spawning herald (which
//! inherits it), and a size the hard limit cannot hold is reported as not possible, with the
//! command that would raise it.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpSocket;
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::procs::{self, Herald};

/// Client sockets per source address (the ephemeral range here is ~28k ports).
const PER_SOURCE_ADDR: usize = 20_000;
/// File descriptors each process needs beyond one per connection (logs, store, listener…).
const FD_SLACK: u64 = 256;

pub struct Opts {
    /// Numbers of idle sessions, each measured on a fresh server.
    pub sizes: Vec<usize>,
    /// Handshakes in progress at once (the listen backlog is 1024 at most by default).
    pub connect_concurrency: usize,
    /// Wait after the last welcome before reading memory, so the server settles.
    pub settle: Duration,
    /// Then hold the sessions this long (longer than the 25 s heartbeat proves that pings are
    /// answered and sessions kept), and read memory again.
    pub hold: Duration,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            sizes: vec![10_000, 50_000, 100_000],
            connect_concurrency: 256,
            settle: Duration::from_secs(2),
            hold: Duration::from_secs(30),
        }
    }
}

impl Opts {
    pub fn smoke() -> Opts {
        Opts {
            sizes: vec![200],
            connect_concurrency: 64,
            settle: Duration::from_millis(200),
            hold: Duration::ZERO,
        }
    }
}

/// The result for one size.
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    sessions: usize,
    /// `None` when this size was not measured; `note` says why.
    established: Option<usize>,
    rss_before_kib: Option<u64>,
    rss_after_kib: Option<u64>,
    kib_per_conn: Option<f64>,
    /// After `hold` (at least one heartbeat): sessions still open and memory then.
    alive_after_hold: Option<usize>,
    rss_after_hold_kib: Option<u64>,
    kib_per_conn_after_hold: Option<f64>,
    connect_secs: Option<f64>,
    connects_per_sec: Option<f64>,
    note: Option<String>,
}

impl Row {
    fn skipped(sessions: usize, note: String) -> Row {
        Row {
            sessions,
            established: None,
            rss_before_kib: None,
            rss_after_kib: None,
            kib_per_conn: None,
            alive_after_hold: None,
            rss_after_hold_kib: None,
            kib_per_conn_after_hold: None,
            connect_secs: None,
            connects_per_sec: None,
            note: Some(note),
        }
    }
}

pub async fn run(opts: &Opts, out_dir: &Path) -> anyhow::Result<Value> {
    let (soft, hard) = procs::raise_fd_limit()?;
    let somaxconn = read_trimmed("/proc/sys/net/core/somaxconn");
    let port_range = read_trimmed("/proc/sys/net/ipv4/ip_local_port_range");
    println!(
        "idle: fd limit soft {soft} / hard {hard}; somaxconn {somaxconn}; ephemeral ports {port_range}"
    );
    let mut rows = Vec::new();
    for &n in &opts.sizes {
        let need = n as u64 + FD_SLACK;
        if need > hard {
            let note = format!(
                "not possible on this machine: fd hard limit {hard} < {need} needed by each of \
                 the bench and herald; raise it as root (e.g. `ulimit -Hn {}` in the shell that \
                 starts the bench, or `nofile` in /etc/security/limits.conf), then rerun",
                (n as u64 + FD_SLACK).next_power_of_two().max(262_144)
            );
            println!("idle {n}: {note}");
            rows.push(Row::skipped(n, note));
            continue;
        }
        let row = match one_size(opts, n, out_dir).await {
            Ok(r) => r,
            Err(e) => Row::skipped(n, format!("failed: {e:#}")),
        };
        rows.push(row);
    }
    print_table(&rows);
    let out = json!({
        "scenario": "idle",
        "system": "herald (fsync)",
        "fd_limit": {"soft": soft, "hard": hard},
        "somaxconn": somaxconn,
        "ip_local_port_range": port_range,
        "heartbeat": "server default (25 s ping, client answers pong)",
        "target_kib_per_conn": 10,
        "markdown": markdown(&rows),
        "rows": rows,
    });
    std::fs::write(
        out_dir.join("idle.json"),
        serde_json::to_string_pretty(&out)?,
    )?;
    Ok(out)
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join("-"))
        .unwrap_or_else(|_| "?".into())
}

async fn one_size(opts: &Opts, n: usize, out_dir: &Path) -> anyhow::Result<Row> {
    let dir = out_dir.join(format!("idle-{n}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let herald =
        Herald::start(&dir.join("data"), &[("STORAGE__DURABILITY", "fsync")], &dir).await?;
    // Let the freshly started server finish its start-up allocations before the baseline.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = herald.rss_kib()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let established = Arc::new(AtomicUsize::new(0));
    let alive = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(opts.connect_concurrency.max(1)));
    let (fail_tx, mut fail_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = gate.clone().acquire_owned().await?;
        let ctx = Client {
            server: herald.addr,
            source: source_addr(i)?,
            uid: i,
            established: established.clone(),
            alive: alive.clone(),
            stop: stop_rx.clone(),
            fail: fail_tx.clone(),
        };
        tasks.push(tokio::spawn(ctx.run(permit)));
        if let Ok(e) = fail_rx.try_recv() {
            let _ = stop_tx.send(true);
            anyhow::bail!(
                "a client failed while connecting ({} welcomed): {e}",
                established.load(Ordering::Relaxed)
            );
        }
    }
    // Every permit back = every handshake finished (or failed).
    let _all = gate
        .acquire_many(opts.connect_concurrency.max(1) as u32)
        .await?;
    let connect_secs = started.elapsed().as_secs_f64();
    let est = established.load(Ordering::Relaxed);
    if est < n {
        let first = fail_rx.try_recv().unwrap_or_default();
        let _ = stop_tx.send(true);
        anyhow::bail!("only {est} of {n} sessions welcomed; first failure: {first}");
    }
    tokio::time::sleep(opts.settle).await;
    let rss_after = herald.rss_kib()?;
    let per = (rss_after.saturating_sub(rss_before)) as f64 / n as f64;
    let (alive_after_hold, rss_hold, per_hold) = if opts.hold > Duration::ZERO {
        tokio::time::sleep(opts.hold).await;
        let r = herald.rss_kib()?;
        (
            Some(alive.load(Ordering::Relaxed)),
            Some(r),
            Some(r.saturating_sub(rss_before) as f64 / n as f64),
        )
    } else {
        (None, None, None)
    };
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    herald.proc.stop(Duration::from_secs(10)).await?;
    let note = fail_rx
        .try_recv()
        .ok()
        .map(|e| format!("client failure: {e}"));
    Ok(Row {
        sessions: n,
        established: Some(est),
        rss_before_kib: Some(rss_before),
        rss_after_kib: Some(rss_after),
        kib_per_conn: Some(per),
        alive_after_hold,
        rss_after_hold_kib: rss_hold,
        kib_per_conn_after_hold: per_hold,
        connect_secs: Some(connect_secs),
        connects_per_sec: Some(n as f64 / connect_secs),
        note,
    })
}

/// 127.0.0.2 for the first [`PER_SOURCE_ADDR`] clients, then 127.0.0.3, …
fn source_addr(i: usize) -> anyhow::Result<Ipv4Addr> {
    let k = u32::try_from(2 + i / PER_SOURCE_ADDR).context("too many clients")?;
    anyhow::ensure!(k < 0x00ff_ffff, "too many clients for 127.0.0.0/8");
    Ok(Ipv4Addr::from(0x7f00_0000u32 + k))
}

/// One idle client: kept small (one task, minimal tungstenite buffers).
struct Client {
    server: SocketAddr,
    source: Ipv4Addr,
    uid: usize,
    established: Arc<AtomicUsize>,
    alive: Arc<AtomicUsize>,
    stop: watch::Receiver<bool>,
    fail: tokio::sync::mpsc::UnboundedSender<String>,
}

impl Client {
    async fn run(mut self, permit: tokio::sync::OwnedSemaphorePermit) {
        let ws = match self.connect().await {
            Ok(ws) => ws,
            Err(e) => {
                let _ = self.fail.send(format!("client {}: {e:#}", self.uid));
                return;
            }
        };
        self.established.fetch_add(1, Ordering::Relaxed);
        self.alive.fetch_add(1, Ordering::Relaxed);
        drop(permit);
        let (mut sink, mut stream) = ws.split();
        loop {
            tokio::select! {
                _ = self.stop.changed() => break,
                m = stream.next() => match m {
                    Some(Ok(Message::Text(t))) => {
                        if t.as_str().lines().any(|l| l.starts_with(r#"{"t":"ping""#))
                            && sink.send(Message::Text(r#"{"t":"pong"}"#.into())).await.is_err()
                        {
                            let _ = self.fail.send(format!("client {}: pong not sent", self.uid));
                            break;
                        }
                    }
                    Some(Ok(Message::Close(c))) => {
                        let _ = self.fail.send(format!("client {}: server closed: {c:?}", self.uid));
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        let _ = self.fail.send(format!("client {}: {e}", self.uid));
                        break;
                    }
                    None => {
                        let _ = self.fail.send(format!("client {}: connection ended", self.uid));
                        break;
                    }
                }
            }
        }
        self.alive.fetch_sub(1, Ordering::Relaxed);
    }

    async fn connect(
        &self,
    ) -> anyhow::Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
        let sock = TcpSocket::new_v4()?;
        sock.bind(SocketAddr::V4(SocketAddrV4::new(self.source, 0)))
            .with_context(|| format!("bind {}", self.source))?;
        let tcp = tokio::time::timeout(Duration::from_secs(30), sock.connect(self.server))
            .await
            .context("TCP connect timed out")??;
        let cfg = WebSocketConfig::default()
            .read_buffer_size(1024)
            .write_buffer_size(0)
            .max_write_buffer_size(64 * 1024);
        let url = format!("ws://{}/v1/ws", self.server);
        let (mut ws, _) = tokio::time::timeout(
            Duration::from_secs(30),
            tokio_tungstenite::client_async_with_config(url, tcp, Some(cfg)),
        )
        .await
        .context("WebSocket handshake timed out")??;
        let hello = format!(
            r#"{{"t":"hello","v":1,"uid":"idle{}","device":"d"}}"#,
            self.uid
        );
        ws.send(Message::Text(hello.into())).await?;
        let welcome = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .context("no welcome within 30 s")?;
        match welcome {
            Some(Ok(Message::Text(t))) if t.as_str().starts_with(r#"{"t":"welcome""#) => Ok(ws),
            other => anyhow::bail!("expected welcome, got {other:?}"),
        }
    }
}

fn print_table(rows: &[Row]) {
    println!("\nidle sessions — herald (fsync), server VmRSS per connection (target ≤ 10 KB)");
    println!(
        "{:>9} {:>11} {:>11} {:>11} {:>9} {:>13} {:>10} {:>11}",
        "sessions",
        "welcomed",
        "rss0 KiB",
        "rss KiB",
        "KiB/conn",
        "KiB/conn+hold",
        "alive+hold",
        "connects/s"
    );
    for r in rows {
        if r.established.is_none() {
            println!("{:>9}  {}", r.sessions, r.note.as_deref().unwrap_or(""));
            continue;
        }
        let f = |v: Option<f64>, p: usize| v.map_or("-".into(), |v| format!("{v:.p$}"));
        let u = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
        println!(
            "{:>9} {:>11} {:>11} {:>11} {:>9} {:>13} {:>10} {:>11}",
            r.sessions,
            r.established.map_or("-".into(), |v| v.to_string()),
            u(r.rss_before_kib),
            u(r.rss_after_kib),
            f(r.kib_per_conn, 2),
            f(r.kib_per_conn_after_hold, 2),
            r.alive_after_hold.map_or("-".into(), |v| v.to_string()),
            f(r.connects_per_sec, 0),
        );
        if let Some(n) = &r.note {
            println!("{:>9}  {n}", "");
        }
    }
}

/// The table for report.md.
fn markdown(rows: &[Row]) -> String {
    let mut md = String::from(
        "Server VmRSS (`/proc/<pid>/status`) before and after N idle sessions (hello, welcome, \
         then only ping/pong), per connection; target ≤ 10 KB.\n\n\
         | sessions | established | RSS before (KiB) | RSS after (KiB) | KiB per connection | after holding | connects/s | note |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
    let u = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    for r in rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.sessions,
            r.established.map_or("-".to_string(), |v| v.to_string()),
            u(r.rss_before_kib),
            u(r.rss_after_kib),
            f(r.kib_per_conn, 2),
            f(r.kib_per_conn_after_hold, 2),
            f(r.connects_per_sec, 0),
            r.note.as_deref().unwrap_or("")
        ));
    }
    md
}
