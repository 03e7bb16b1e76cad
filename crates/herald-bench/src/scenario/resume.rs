//! Scenario 4: resume. K clients each hold a session; each is cut (TCP dropped, no `bye`),
//! M messages are published to each one's inbox while it is away (every `ok` awaited), then
//! each reconnects with `resume` and the time from starting the TCP connect to holding all M
//! messages (acking as it goes, as a real client does) is measured.
//!
//! Reconnects are measured one client at a time, so the figure is one client's catch-up, not
//! K clients sharing two cores.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::procs::Herald;

pub type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Everything waits at most this long for the server before the run fails.
const TIMEOUT: Duration = Duration::from_secs(60);

pub struct Opts {
    pub clients: usize,
    /// Missed-message counts, each measured on a fresh server.
    pub missed: Vec<u64>,
    /// Cut / publish / resume cycles per count.
    pub rounds: usize,
    pub body_bytes: usize,
    /// Publishes the publisher keeps unacknowledged.
    pub window: u64,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            clients: 10,
            missed: vec![1_000, 10_000],
            rounds: 3,
            body_bytes: 64,
            window: 512,
        }
    }
}

impl Opts {
    pub fn smoke() -> Opts {
        Opts {
            clients: 2,
            missed: vec![50],
            rounds: 1,
            body_bytes: 64,
            window: 64,
        }
    }
}

/// A frame from the server, only the fields the bench reads.
#[derive(Deserialize)]
pub struct Frame<'a> {
    pub t: &'a str,
    #[serde(default)]
    pub s: Option<&'a str>,
    #[serde(default)]
    pub o: Option<u64>,
    #[serde(default)]
    pub session: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub resumed: Option<bool>,
}

/// Connects to herald's WebSocket endpoint on `addr`.
pub async fn connect(addr: SocketAddr) -> anyhow::Result<Ws> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/v1/ws"), tcp).await?;
    Ok(ws)
}

/// Reads text messages until one holds a frame of type `t`; returns that line and the lines
/// batched after it in the same message (the server may send deliveries right behind it).
pub async fn expect_frame(ws: &mut Ws, t: &str) -> anyhow::Result<(String, Vec<String>)> {
    let prefix = format!(r#"{{"t":"{t}""#);
    loop {
        let m = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .with_context(|| format!("no {t} within {TIMEOUT:?}"))?;
        match m {
            Some(Ok(Message::Text(text))) => {
                let mut lines = text.as_str().lines();
                while let Some(line) = lines.next() {
                    if line.starts_with(&prefix) {
                        return Ok((line.to_string(), lines.map(str::to_string).collect()));
                    }
                    if line.starts_with(r#"{"t":"err""#) {
                        bail!("server error while waiting for {t}: {line}");
                    }
                }
            }
            Some(Ok(Message::Close(c))) => bail!("closed while waiting for {t}: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("connection error while waiting for {t}: {e}"),
            None => bail!("connection ended while waiting for {t}"),
        }
    }
}

/// Sends hello (with `resume` if given); returns the welcome line and the lines that came in
/// the same message after it.
pub async fn hello(
    ws: &mut Ws,
    uid: &str,
    device: &str,
    resume: Option<(&str, &str)>,
) -> anyhow::Result<(String, Vec<String>)> {
    let hello = match resume {
        None => json!({"t":"hello","v":1,"uid":uid,"device":device}),
        Some((s, k)) => {
            json!({"t":"hello","v":1,"uid":uid,"device":device,"resume":{"session":s,"key":k}})
        }
    };
    ws.send(Message::Text(hello.to_string().into())).await?;
    expect_frame(ws, "welcome").await
}

/// Publishes `n` messages to each of `targets` with at most `window` unacknowledged, starting
/// at request `seq`; returns once every one has its `ok` (and the next `seq`).
pub async fn publish_all(
    ws: &mut Ws,
    targets: &[String],
    n: u64,
    body: &str,
    window: u64,
    mut seq: u64,
) -> anyhow::Result<u64> {
    let total = n * targets.len() as u64;
    let (mut sent, mut oks) = (0u64, 0u64);
    while oks < total {
        let mut batch = String::new();
        while sent < total && sent - oks < window {
            let to = &targets[(sent % targets.len() as u64) as usize];
            seq += 1;
            sent += 1;
            if !batch.is_empty() {
                batch.push('\n');
            }
            batch.push_str(&format!(
                r#"{{"t":"pub","seq":{seq},"to":"{to}","body":{body}}}"#
            ));
        }
        if !batch.is_empty() {
            ws.send(Message::Text(batch.into())).await?;
        }
        let m = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .context("publisher: no answer in time")?;
        match m {
            Some(Ok(Message::Text(t))) => {
                for line in t.as_str().lines() {
                    if line.starts_with(r#"{"t":"ok""#) {
                        oks += 1;
                    } else if line.starts_with(r#"{"t":"err""#) {
                        bail!("publish refused: {line}");
                    }
                }
            }
            Some(Ok(_)) => {}
            other => bail!("publisher connection ended: {other:?}"),
        }
    }
    Ok(seq)
}

/// One receiving client between rounds.
struct Sub {
    uid: String,
    session: String,
    key: String,
    /// Highest inbox offset received and acknowledged.
    acked: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    missed: u64,
    clients: usize,
    rounds: usize,
    samples: usize,
    /// Reconnect (TCP connect start) to the welcome.
    welcome_ms_p50: f64,
    /// Reconnect (TCP connect start) to holding every missed message.
    caught_up_ms_p50: f64,
    caught_up_ms_max: f64,
    /// Messages per second while catching up (median sample).
    msgs_per_sec_p50: f64,
    duplicates: u64,
    lost: u64,
    publish_secs: f64,
    /// Every sample in order (client by client, round by round): welcome ms, caught-up ms.
    samples_ms: Vec<[f64; 2]>,
}

pub async fn run(opts: &Opts, out_dir: &Path) -> anyhow::Result<Value> {
    let mut rows = Vec::new();
    for &m in &opts.missed {
        rows.push(one_count(opts, m, out_dir).await?);
    }
    print_table(&rows);
    let out = json!({
        "scenario": "resume",
        "system": "herald (fsync)",
        "method": "each client reconnects alone; time from TCP connect start to last missed message received, acking each WebSocket message cumulatively",
        "target_ms_1000": 20,
        "markdown": markdown(&rows),
        "rows": rows,
    });
    std::fs::write(
        out_dir.join("resume.json"),
        serde_json::to_string_pretty(&out)?,
    )?;
    Ok(out)
}

async fn one_count(opts: &Opts, missed: u64, out_dir: &Path) -> anyhow::Result<Row> {
    let dir = out_dir.join(format!("resume-{missed}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let herald =
        Herald::start(&dir.join("data"), &[("STORAGE__DURABILITY", "fsync")], &dir).await?;
    let body = format!("\"{}\"", "x".repeat(opts.body_bytes.saturating_sub(2)));
    let mut publisher = connect(herald.addr).await?;
    hello(&mut publisher, "resume-pub", "p", None).await?;
    let mut pub_seq = 0u64;

    let mut subs = Vec::new();
    let mut conns = Vec::new();
    for i in 0..opts.clients {
        let uid = format!("resume{i}");
        let mut ws = connect(herald.addr).await?;
        let (w, _) = hello(&mut ws, &uid, "d", None).await?;
        let f: Frame = serde_json::from_str(&w)?;
        subs.push(Sub {
            uid,
            session: f.session.context("welcome without session")?,
            key: f.key.context("welcome without key")?,
            acked: 0,
        });
        conns.push(ws);
    }
    let targets: Vec<String> = subs.iter().map(|s| format!("user:{}", s.uid)).collect();

    let mut welcome_ms = Vec::new();
    let mut caught_ms = Vec::new();
    let mut rates = Vec::new();
    let (mut dups, mut lost) = (0u64, 0u64);
    let mut publish_secs = 0.0;
    for _round in 0..opts.rounds {
        // Cut: drop the TCP connection, no bye, no close frame.
        conns.clear();
        let t = Instant::now();
        pub_seq = publish_all(
            &mut publisher,
            &targets,
            missed,
            &body,
            opts.window,
            pub_seq,
        )
        .await?;
        publish_secs += t.elapsed().as_secs_f64();
        for sub in &mut subs {
            let r = reconnect(herald.addr, sub, missed).await?;
            welcome_ms.push(r.welcome.as_secs_f64() * 1e3);
            caught_ms.push(r.caught_up.as_secs_f64() * 1e3);
            rates.push(missed as f64 / r.caught_up.as_secs_f64());
            dups += r.duplicates;
            lost += r.lost;
            conns.push(r.ws);
        }
    }
    herald.proc.stop(Duration::from_secs(10)).await?;
    let samples = caught_ms.len();
    let samples_ms = welcome_ms
        .iter()
        .zip(&caught_ms)
        .map(|(&w, &c)| [w, c])
        .collect();
    Ok(Row {
        missed,
        clients: opts.clients,
        rounds: opts.rounds,
        samples,
        welcome_ms_p50: median(&mut welcome_ms),
        caught_up_ms_p50: median(&mut caught_ms),
        caught_up_ms_max: caught_ms.iter().cloned().fold(0.0, f64::max),
        msgs_per_sec_p50: median(&mut rates),
        duplicates: dups,
        lost,
        publish_secs,
        samples_ms,
    })
}

struct Resumed {
    ws: Ws,
    welcome: Duration,
    caught_up: Duration,
    duplicates: u64,
    lost: u64,
}

/// Reconnects `sub` with resume and reads until the `missed` messages after `sub.acked` are
/// in, acknowledging after every WebSocket message.
async fn reconnect(addr: SocketAddr, sub: &mut Sub, missed: u64) -> anyhow::Result<Resumed> {
    let start = Instant::now();
    let mut ws = connect(addr).await?;
    let (w, after_welcome) = hello(&mut ws, &sub.uid, "d", Some((&sub.session, &sub.key))).await?;
    let welcome = start.elapsed();
    let f: Frame = serde_json::from_str(&w)?;
    if f.resumed != Some(true) {
        bail!("resume of {} not granted: {w}", sub.uid);
    }
    let target = sub.acked + missed;
    // On the wire a client calls its own inbox `inbox`.
    let stream = "inbox";
    let mut seen = HashSet::with_capacity(missed as usize);
    let mut dups = 0u64;
    let mut top = sub.acked;
    let mut first = Some(after_welcome.join("\n"));
    while top < target {
        let text = if let Some(t) = first.take() {
            t
        } else {
            match tokio::time::timeout(TIMEOUT, ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => t.as_str().to_string(),
                Ok(Some(Ok(_))) => continue,
                Ok(other) => bail!("{}: connection ended while catching up: {other:?}", sub.uid),
                // Bounded drain: whatever has not come by now is lost.
                Err(_) => break,
            }
        };
        let mut got = false;
        for line in text.lines().filter(|l| !l.is_empty()) {
            let f: Frame = serde_json::from_str(line)
                .with_context(|| format!("bad frame from server: {line}"))?;
            match f.t {
                "msg" if f.s == Some(stream) => {
                    let o = f.o.context("msg without o")?;
                    if o <= sub.acked || !seen.insert(o) {
                        dups += 1;
                    }
                    top = top.max(o);
                    got = true;
                }
                "ping" => ws.send(Message::Text(r#"{"t":"pong"}"#.into())).await?,
                "err" | "gap" => bail!("{}: unexpected {line}", sub.uid),
                _ => {}
            }
        }
        if got {
            let ack = format!(r#"{{"t":"ack","s":"{stream}","o":{top}}}"#);
            ws.send(Message::Text(ack.into())).await?;
        }
    }
    let caught_up = start.elapsed();
    let missing: Vec<u64> = (sub.acked + 1..=target)
        .filter(|o| !seen.contains(o))
        .collect();
    let lost = missing.len() as u64;
    if lost > 0 {
        eprintln!(
            "resume {}: {lost} of offsets {}..={target} never arrived (first {:?}, last {:?}; top {top})",
            sub.uid,
            sub.acked + 1,
            missing.first(),
            missing.last()
        );
    }
    sub.acked = top;
    Ok(Resumed {
        ws,
        welcome,
        caught_up,
        duplicates: dups,
        lost,
    })
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn print_table(rows: &[Row]) {
    println!("\nresume — herald (fsync): reconnect to caught up (target: 1,000 missed < 20 ms)");
    println!(
        "{:>7} {:>8} {:>7} {:>11} {:>13} {:>13} {:>11} {:>5} {:>5}",
        "missed",
        "clients",
        "samples",
        "welcome ms",
        "caught-up p50",
        "caught-up max",
        "msg/s p50",
        "dup",
        "lost"
    );
    for r in rows {
        println!(
            "{:>7} {:>8} {:>7} {:>11.2} {:>13.2} {:>13.2} {:>11.0} {:>5} {:>5}",
            r.missed,
            r.clients,
            r.samples,
            r.welcome_ms_p50,
            r.caught_up_ms_p50,
            r.caught_up_ms_max,
            r.msgs_per_sec_p50,
            r.duplicates,
            r.lost
        );
    }
}

/// The table for report.md.
fn markdown(rows: &[Row]) -> String {
    let mut md = String::from(
        "Each client is cut (TCP dropped, no bye) while its inbox receives the missed messages; \
         then it reconnects with resume, acking as it reads. Times from the TCP connect start; \
         target: 1,000 missed < 20 ms.\n\n\
         | missed | clients × rounds | welcome p50 (ms) | caught up p50 (ms) | caught up max (ms) | msg/s while catching up (p50) | lost | dup |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        md.push_str(&format!(
            "| {} | {} × {} | {:.2} | {:.2} | {:.2} | {:.0} | {} | {} |\n",
            r.missed,
            r.clients,
            r.rounds,
            r.welcome_ms_p50,
            r.caught_up_ms_p50,
            r.caught_up_ms_max,
            r.msgs_per_sec_p50,
            r.lost,
            r.duplicates
        ));
    }
    md
}
