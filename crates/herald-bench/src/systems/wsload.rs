//! The WebSocket load clients shared by herald and the raw relay, so both are driven by the same
//! code: the same connection handling, pacing, pipelining, body layout and bookkeeping. Only the
//! few protocol differences live in [`Flavor`] (hello/welcome, how an acknowledgement looks, and
//! whether subscribers ack).
//!
//! Every body is a JSON string `"<pair>.<seq>.<intended-ns>.xxx…"` padded to the body size, so a
//! subscriber can dedupe, detect loss and compute latency from the *intended* send time without
//! any side channel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::model::{latency_histogram, FanoutOutcome, FanoutParams, PairsOutcome, PairsParams};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type WsRx = SplitStream<Ws>;

/// How long, after the last publish was answered, subscribers may take to receive everything
/// before the missing messages are counted as lost.
const DRAIN: Duration = Duration::from_secs(10);
/// How long publishers wait for outstanding acknowledgements after they stop sending.
const ACK_DRAIN: Duration = Duration::from_secs(10);
/// How many WebSocket connections are opened at the same time.
const CONNECT_PARALLELISM: usize = 64;
/// Pacing tick for fixed-rate runs: a plain OS thread wakes the publishers this often (tokio's
/// timer has 1 ms granularity, which alone would add up to 1 ms to every e2e figure).
const PACE_TICK: Duration = Duration::from_micros(100);

/// The protocol differences between the systems driven by this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// herald's wire protocol: hello/welcome, `ok` per `pub`, subscribers ack cumulatively.
    Herald,
    /// The raw relay: no hello, the relay answers each forwarded WebSocket message with the
    /// number of lines it carried; subscribers never ack.
    Relay,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) flavor: Flavor,
    /// herald: `ws://127.0.0.1:P/v1/ws`; relay: `ws://127.0.0.1:P`.
    pub(crate) base: String,
}

/// One line of a server (or relay) frame, borrowed; unknown fields are ignored.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    t: &'a str,
    #[serde(default)]
    o: Option<u64>,
    #[serde(default, borrow)]
    body: Option<&'a str>,
    #[serde(default, borrow)]
    code: Option<&'a str>,
}

/// The body string (without quotes) for message `seq` of `pair`, padded to `body_bytes` bytes
/// of JSON (quotes included).
fn body(pair: usize, seq: u64, intended_ns: u64, body_bytes: usize) -> String {
    let mut s = format!("{pair}.{seq}.{intended_ns}.");
    while s.len() + 2 < body_bytes {
        s.push('x');
    }
    s
}

/// `(seq, intended_ns)` from a body made by [`body`].
fn parse_body(b: &str) -> Option<(u64, u64)> {
    let mut it = b.split('.');
    let _pair = it.next()?;
    let seq = it.next()?.parse().ok()?;
    let ns = it.next()?.parse().ok()?;
    Some((seq, ns))
}

/// Nanoseconds since `t0`.
fn ns_since(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A growable bit set over message sequence numbers.
#[derive(Default, Clone)]
struct Bits(Vec<u64>);

impl Bits {
    /// Sets bit `i`; returns whether it was already set.
    fn set(&mut self, i: u64) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        let was = self.0[w] & (1 << b) != 0;
        self.0[w] |= 1 << b;
        was
    }
    fn get(&self, i: u64) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        self.0.get(w).is_some_and(|x| x & (1 << b) != 0)
    }
}

async fn connect(url: &str) -> anyhow::Result<Ws> {
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .with_context(|| format!("connect {url}: timed out"))?
    .with_context(|| format!("connect {url}"))?;
    Ok(ws)
}

/// Reads until a line of each type in `types` has arrived (they may share one WebSocket
/// message: the server batches queued frames).
async fn wait_for(rx: &mut WsRx, types: &[&str], what: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut seen = vec![false; types.len()];
    loop {
        let m = tokio::time::timeout_at(deadline, rx.next())
            .await
            .with_context(|| format!("no {what} within 30 s"))?;
        match m {
            Some(Ok(Message::Text(text))) => {
                for l in text.as_str().lines() {
                    let line: Line<'_> = serde_json::from_str(l)
                        .with_context(|| format!("bad line while waiting for {what}: {l}"))?;
                    if let Some(i) = types.iter().position(|t| *t == line.t) {
                        seen[i] = true;
                    }
                    if line.t == "err" {
                        bail!("server error while waiting for {what}: {l}");
                    }
                }
                if seen.iter().all(|s| *s) {
                    return Ok(());
                }
            }
            Some(Ok(Message::Close(c))) => bail!("closed while waiting for {what}: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("connection error while waiting for {what}: {e}"),
            None => bail!("connection ended while waiting for {what}"),
        }
    }
}

impl Target {
    /// Opens one client connection as `uid`, on relay `path`; with `sub_chan`, herald
    /// subscribes live to that channel (`from` omitted = live from now) and the call returns
    /// once the subscription is answered. Returns once the server is ready to route to it.
    async fn open(&self, uid: &str, path: &str, sub_chan: Option<&str>) -> anyhow::Result<Ws> {
        match self.flavor {
            Flavor::Herald => {
                let ws = connect(&self.base).await?;
                let (mut tx, mut rx) = ws.split();
                // The sub rides in the same WebSocket message as the hello: the server handles
                // it right after the welcome.
                let mut first = format!(r#"{{"t":"hello","v":1,"uid":"{uid}","device":"d"}}"#);
                if let Some(chan) = sub_chan {
                    first.push_str(&format!(
                        "\n{{\"t\":\"sub\",\"seq\":1,\"chan\":\"{chan}\"}}"
                    ));
                }
                tx.send(Message::Text(first.into())).await?;
                if sub_chan.is_some() {
                    wait_for(&mut rx, &["welcome", "ok"], "welcome and sub ok").await?;
                } else {
                    wait_for(&mut rx, &["welcome"], "welcome").await?;
                }
                tx.reunite(rx).context("reunite websocket halves")
            }
            Flavor::Relay => {
                let ws = connect(&format!("{}{path}", self.base)).await?;
                let (tx, mut rx) = ws.split();
                if !path.starts_with("/p/") && !path.starts_with("/fanpub/") {
                    // Subscribers are registered once the relay says so; publishing earlier
                    // would lose messages.
                    wait_for_relay_ready(&mut rx).await?;
                }
                tx.reunite(rx).context("reunite websocket halves")
            }
        }
    }
}

async fn wait_for_relay_ready(rx: &mut WsRx) -> anyhow::Result<()> {
    match tokio::time::timeout(Duration::from_secs(30), rx.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "ready" => Ok(()),
        other => bail!("relay did not confirm the subscription: {other:?}"),
    }
}

/// Opens `n` connections with bounded parallelism; `f(i)` gives the uid, relay path and channel.
async fn open_many(
    target: &Target,
    n: usize,
    f: impl Fn(usize) -> (String, String, Option<String>),
) -> anyhow::Result<Vec<Ws>> {
    let jobs: Vec<_> = (0..n).map(|i| (i, f(i))).collect();
    let mut opened: Vec<(usize, Ws)> = futures_util::stream::iter(jobs)
        .map(|(i, (uid, path, chan))| {
            let target = target.clone();
            async move {
                let ws = target.open(&uid, &path, chan.as_deref()).await?;
                anyhow::Ok((i, ws))
            }
        })
        .buffer_unordered(CONNECT_PARALLELISM)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    opened.sort_by_key(|(i, _)| *i);
    Ok(opened.into_iter().map(|(_, ws)| ws).collect())
}

/// Wakes fixed-rate publishers every [`PACE_TICK`] from a plain thread.
struct Pacer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pacer {
    fn start(notifies: Vec<Arc<Notify>>) -> Pacer {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(PACE_TICK);
                for n in &notifies {
                    n.notify_one();
                }
            }
        });
        Pacer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// When a publisher stops sending.
#[derive(Clone, Copy)]
enum Limit {
    For(Duration),
    Count(u64),
}

struct PubConfig {
    flavor: Flavor,
    pair: usize,
    /// `user:s3` or `chan:fan`
    to: String,
    body_bytes: usize,
    window: usize,
    /// Messages per second for this publisher; `None` = keep `window` in flight.
    rate: Option<f64>,
    limit: Limit,
    t0: Instant,
    pace: Option<Arc<Notify>>,
}

#[derive(Default)]
struct PubResult {
    /// Publishes sent (seq 1..=sent).
    sent: u64,
    acked: Bits,
    acked_count: u64,
    errors: u64,
    /// First error line seen, for the report.
    first_error: Option<String>,
    ack_us: Vec<u64>,
    first_send_ns: Option<u64>,
    last_ack_ns: u64,
}

/// One publisher: pipelines publishes (all due frames of one wake-up go in one WebSocket
/// message, `\n`-separated) and matches answers to requests in order.
async fn publisher(ws: Ws, c: PubConfig) -> anyhow::Result<PubResult> {
    let (mut tx, mut rx) = ws.split();
    let mut r = PubResult::default();
    // (seq, intended ns, actual send ns) of requests not answered yet, oldest first.
    let mut outstanding = std::collections::VecDeque::<(u64, u64, u64)>::new();
    let start_ns = ns_since(c.t0);
    let done_sending = |sent: u64, now_ns: u64| match c.limit {
        Limit::For(d) => now_ns >= start_ns + d.as_nanos() as u64,
        Limit::Count(n) => sent >= n,
    };
    let mut ack_deadline: Option<tokio::time::Instant> = None;
    let mut batch = String::new();
    loop {
        let now = ns_since(c.t0);
        let finished = done_sending(r.sent, now);
        if finished {
            if outstanding.is_empty() {
                break;
            }
            let d = *ack_deadline.get_or_insert_with(|| tokio::time::Instant::now() + ACK_DRAIN);
            if tokio::time::Instant::now() >= d {
                break;
            }
        } else {
            // How many to send now.
            let room = c.window.saturating_sub(outstanding.len()) as u64;
            // Nanoseconds between publishes at a fixed rate.
            let per = c.rate.map(|rate| 1e9 / rate);
            let due = match per {
                None => room,
                Some(per) => {
                    let due_total = ((now - start_ns) as f64 / per) as u64 + 1;
                    due_total.saturating_sub(r.sent).min(room)
                }
            };
            // Intended send time: the schedule at a fixed rate, else now.
            let intended = |seq: u64| match per {
                None => now,
                Some(per) => start_ns + ((seq - 1) as f64 * per) as u64,
            };
            let due = match c.limit {
                Limit::Count(n) => due.min(n - r.sent),
                Limit::For(_) => due,
            };
            if due > 0 {
                batch.clear();
                for _ in 0..due {
                    r.sent += 1;
                    let seq = r.sent;
                    let it = intended(seq);
                    if !batch.is_empty() {
                        batch.push('\n');
                    }
                    batch.push_str(&format!(
                        r#"{{"t":"pub","seq":{seq},"to":"{}","body":"{}"}}"#,
                        c.to,
                        body(c.pair, seq, it, c.body_bytes)
                    ));
                    outstanding.push_back((seq, it, now));
                }
                r.first_send_ns.get_or_insert(now);
                tx.send(Message::Text(std::mem::take(&mut batch).into()))
                    .await
                    .context("publisher send")?;
                continue;
            }
        }
        // Wait for answers, or for the next pacing tick.
        let pace = c.pace.clone();
        let wait_tick = async move {
            match pace {
                Some(n) if !finished => n.notified().await,
                _ => std::future::pending().await,
            }
        };
        let sleep = tokio::time::sleep_until(
            ack_deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600)),
        );
        let end_of_period = match (c.limit, c.rate) {
            (Limit::For(d), None) if !finished => {
                let left = (start_ns + d.as_nanos() as u64).saturating_sub(now);
                tokio::time::sleep(Duration::from_nanos(left))
            }
            _ => tokio::time::sleep(Duration::from_secs(3600)),
        };
        tokio::select! {
            m = rx.next() => {
                let text = match m {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Binary(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Close(cf))) => bail!("publisher {} closed by server: {cf:?}", c.pair),
                    Some(Err(e)) => bail!("publisher {}: {e}", c.pair),
                    None => bail!("publisher {}: connection ended", c.pair),
                };
                let now = ns_since(c.t0);
                match c.flavor {
                    Flavor::Relay => {
                        let k: u64 = text.as_str().trim().parse().context("relay ack count")?;
                        for _ in 0..k {
                            let Some((seq, it, _)) = outstanding.pop_front() else { bail!("relay acked more than was sent") };
                            r.acked.set(seq);
                            r.acked_count += 1;
                            r.ack_us.push(now.saturating_sub(it) / 1000);
                        }
                        r.last_ack_ns = now;
                    }
                    Flavor::Herald => {
                        for l in text.as_str().lines() {
                            let line: Line<'_> = serde_json::from_str(l).with_context(|| format!("bad line: {l}"))?;
                            match line.t {
                                "ok" | "err" => {
                                    let Some((seq, it, _)) = outstanding.pop_front() else { bail!("answer without request: {l}") };
                                    if line.t == "ok" {
                                        r.acked.set(seq);
                                        r.acked_count += 1;
                                        r.ack_us.push(now.saturating_sub(it) / 1000);
                                        r.last_ack_ns = now;
                                    } else {
                                        r.errors += 1;
                                        if r.first_error.is_none() {
                                            r.first_error = Some(format!("{} ({l})", line.code.unwrap_or("?")));
                                        }
                                    }
                                }
                                "ping" => tx.send(Message::Text(r#"{"t":"pong"}"#.into())).await?,
                                _ => {}
                            }
                        }
                    }
                }
            }
            _ = wait_tick => {}
            _ = sleep => {}
            _ = end_of_period => {}
        }
    }
    let _ = tx.send(Message::Close(None)).await;
    Ok(r)
}

#[derive(Default)]
struct SubResult {
    seen: Bits,
    distinct: u64,
    duplicates: u64,
    e2e_us: Vec<u64>,
    last_recv_ns: u64,
}

/// One subscriber: records every message, acks (herald) cumulatively once per WebSocket message
/// read, and stops once it has `expected` distinct messages or when told to.
async fn subscriber(
    ws: Ws,
    flavor: Flavor,
    ack_stream: &'static str,
    t0: Instant,
    mut expected: watch::Receiver<Option<u64>>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<SubResult> {
    let (mut tx, mut rx) = ws.split();
    let mut r = SubResult::default();
    let mut acked_o = 0u64;
    loop {
        if expected.borrow().is_some_and(|n| r.distinct >= n) || *stop.borrow() {
            break;
        }
        tokio::select! {
            m = rx.next() => {
                let text = match m {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(cf))) => bail!("subscriber closed by server: {cf:?}"),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => bail!("subscriber: {e}"),
                    None => bail!("subscriber: connection ended"),
                };
                let now = ns_since(t0);
                let mut max_o = acked_o;
                for l in text.as_str().lines() {
                    let line: Line<'_> = serde_json::from_str(l).with_context(|| format!("bad line: {l}"))?;
                    match line.t {
                        // herald delivers `msg`; the relay forwards the publisher's `pub` line.
                        "msg" | "pub" => {
                            if let Some(o) = line.o {
                                max_o = max_o.max(o);
                            }
                            let (seq, it) = line.body.and_then(parse_body).with_context(|| format!("unexpected body: {l}"))?;
                            if r.seen.set(seq) {
                                r.duplicates += 1;
                            } else {
                                r.distinct += 1;
                                r.e2e_us.push(now.saturating_sub(it) / 1000);
                            }
                        }
                        "ping" => tx.send(Message::Text(r#"{"t":"pong"}"#.into())).await?,
                        "err" => bail!("subscriber got an error: {l}"),
                        _ => {}
                    }
                }
                r.last_recv_ns = now;
                if flavor == Flavor::Herald && max_o > acked_o {
                    acked_o = max_o;
                    tx.send(Message::Text(format!(r#"{{"t":"ack","s":"{ack_stream}","o":{acked_o}}}"#).into())).await?;
                }
            }
            c = expected.changed() => { if c.is_err() { break; } }
            c = stop.changed() => { if c.is_err() { break; } }
        }
    }
    let _ = tx.send(Message::Close(None)).await;
    Ok(r)
}

fn histogram(samples: impl IntoIterator<Item = u64>) -> hdrhistogram::Histogram<u64> {
    let mut h = latency_histogram();
    for v in samples {
        h.saturating_record(v.max(1));
    }
    h
}

/// Waits for the subscriber tasks; after [`DRAIN`] tells the rest to stop (their missing
/// messages then count as lost).
async fn join_subscribers(
    subs: Vec<tokio::task::JoinHandle<anyhow::Result<SubResult>>>,
    stop: &watch::Sender<bool>,
) -> anyhow::Result<Vec<SubResult>> {
    let stopper = async {
        tokio::time::sleep(DRAIN).await;
        let _ = stop.send(true);
        std::future::pending::<()>().await
    };
    let all = futures_util::future::join_all(subs);
    let joined = tokio::select! {
        j = all => j,
        _ = stopper => unreachable!("the stopper never completes"),
    };
    joined
        .into_iter()
        .map(|j| j.context("subscriber task panicked")?)
        .collect()
}

/// Scenario 1 against herald or the relay.
pub(crate) async fn run_pairs(target: &Target, p: &PairsParams) -> anyhow::Result<PairsOutcome> {
    let subs = open_many(target, p.pairs, |i| {
        (format!("s{i}"), format!("/s/{i}"), None)
    })
    .await?;
    let pubs = open_many(target, p.pairs, |i| {
        (format!("p{i}"), format!("/p/{i}"), None)
    })
    .await?;
    let t0 = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut expect_txs = Vec::new();
    let mut sub_tasks = Vec::new();
    for ws in subs {
        let (etx, erx) = watch::channel(None);
        expect_txs.push(etx);
        sub_tasks.push(tokio::spawn(subscriber(
            ws,
            target.flavor,
            "inbox",
            t0,
            erx,
            stop_rx.clone(),
        )));
    }
    let rate = p.rate.map(|r| r as f64 / p.pairs as f64);
    let notifies: Vec<Arc<Notify>> = (0..p.pairs).map(|_| Arc::new(Notify::new())).collect();
    let pacer = rate.map(|_| Pacer::start(notifies.clone()));
    let mut pub_tasks = Vec::new();
    for (i, ws) in pubs.into_iter().enumerate() {
        let c = PubConfig {
            flavor: target.flavor,
            pair: i,
            to: format!("user:s{i}"),
            body_bytes: p.body_bytes,
            window: p.window,
            rate,
            limit: Limit::For(p.duration),
            t0,
            pace: rate.map(|_| notifies[i].clone()),
        };
        pub_tasks.push(tokio::spawn(publisher(ws, c)));
    }
    let mut pub_results = Vec::new();
    for (i, t) in pub_tasks.into_iter().enumerate() {
        let r = t.await.context("publisher task panicked")??;
        let _ = expect_txs[i].send(Some(r.sent));
        pub_results.push(r);
    }
    drop(pacer);
    let sub_results = join_subscribers(sub_tasks, &stop_tx).await?;
    drop(expect_txs);

    let mut o = PairsOutcome {
        acked: 0,
        delivered: 0,
        lost: 0,
        duplicates: 0,
        elapsed: Duration::ZERO,
        e2e_us: latency_histogram(),
        ack_us: latency_histogram(),
    };
    let mut errors = 0;
    let mut first_error = None;
    let first = pub_results
        .iter()
        .filter_map(|r| r.first_send_ns)
        .min()
        .unwrap_or(0);
    let last = pub_results.iter().map(|r| r.last_ack_ns).max().unwrap_or(0);
    o.elapsed = Duration::from_nanos(last.saturating_sub(first));
    for (pr, sr) in pub_results.iter().zip(&sub_results) {
        o.acked += pr.acked_count;
        errors += pr.errors;
        if first_error.is_none() {
            first_error.clone_from(&pr.first_error);
        }
        for seq in 1..=pr.sent {
            if pr.acked.get(seq) {
                if sr.seen.get(seq) {
                    o.delivered += 1;
                } else {
                    o.lost += 1;
                }
            }
        }
        o.duplicates += sr.duplicates;
        o.e2e_us.add(histogram(sr.e2e_us.iter().copied()))?;
        o.ack_us.add(histogram(pr.ack_us.iter().copied()))?;
    }
    if errors > 0 {
        bail!(
            "{errors} publishes were answered with err, first: {}",
            first_error.unwrap_or_default()
        );
    }
    Ok(o)
}

/// Scenario 2 against herald or the relay: one channel `fan`, `subscribers` connections, one
/// publisher.
pub(crate) async fn run_fanout(target: &Target, p: &FanoutParams) -> anyhow::Result<FanoutOutcome> {
    let subs = open_many(target, p.subscribers, |i| {
        (
            format!("f{i}"),
            "/fan/fan".to_string(),
            Some("fan".to_string()),
        )
    })
    .await?;
    let mut pubs = open_many(target, 1, |_| {
        ("fp".to_string(), "/fanpub/fan".to_string(), None)
    })
    .await?;
    let pub_ws = pubs.pop().context("publisher connection")?;
    let t0 = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (etx, erx) = watch::channel(None);
    let sub_tasks: Vec<_> = subs
        .into_iter()
        .map(|ws| {
            tokio::spawn(subscriber(
                ws,
                target.flavor,
                "chan:fan",
                t0,
                erx.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    let notify = Arc::new(Notify::new());
    let pacer = p.rate.map(|_| Pacer::start(vec![notify.clone()]));
    let c = PubConfig {
        flavor: target.flavor,
        pair: 0,
        to: "chan:fan".into(),
        body_bytes: p.body_bytes,
        window: 64,
        rate: p.rate.map(|r| r as f64),
        limit: Limit::Count(p.messages),
        t0,
        pace: p.rate.map(|_| notify.clone()),
    };
    let pr = publisher(pub_ws, c).await?;
    drop(pacer);
    let _ = etx.send(Some(pr.sent));
    let sub_results = join_subscribers(sub_tasks, &stop_tx).await?;
    if pr.errors > 0 {
        bail!(
            "{} publishes were answered with err, first: {}",
            pr.errors,
            pr.first_error.unwrap_or_default()
        );
    }
    let mut o = FanoutOutcome {
        published: pr.acked_count,
        deliveries: 0,
        lost: 0,
        duplicates: 0,
        elapsed: Duration::ZERO,
        latency_us: latency_histogram(),
    };
    let first = pr.first_send_ns.unwrap_or(0);
    let mut last = 0;
    for sr in &sub_results {
        o.deliveries += sr.distinct;
        o.duplicates += sr.duplicates;
        last = last.max(sr.last_recv_ns);
        for seq in 1..=pr.sent {
            if pr.acked.get(seq) && !sr.seen.get(seq) {
                o.lost += 1;
            }
        }
        for &v in &sr.e2e_us {
            o.latency_us.saturating_record(v.max(1));
        }
    }
    o.elapsed = Duration::from_nanos(last.saturating_sub(first));
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_padded_and_parses_back() {
        let b = body(3, 17, 123_456, 64);
        assert_eq!(b.len() + 2, 64);
        assert_eq!(parse_body(&b), Some((17, 123_456)));
    }

    #[test]
    fn bits_count_duplicates() {
        let mut b = Bits::default();
        assert!(!b.set(1000));
        assert!(b.set(1000));
        assert!(b.get(1000) && !b.get(999));
    }
}
