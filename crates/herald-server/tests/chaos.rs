//! Chaos suite: publishers and subscribers talk to a real server through a fault-injecting
//! proxy (cuts, half-open stalls longer than the heartbeat, latency, throttling, refused
//! connections) plus a kill -9 and restart of the server mid-stream. The scenario runs twice:
//! - with `herald-client` SDK clients, as an application uses them (the test never resends or
//!   dedupes; that is the SDK's job): the whole promise;
//! - with this file's small resilient protocol clients (reconnect + resume, resend, dedupe by
//!   offset, ack): the server's half alone, so a failure points at server or SDK.
//!
//! The verdict: every `ok`'d message reaches every intended receiver exactly once in
//! per-stream order, nothing is stored twice (the history API), and whatever cannot be
//! delivered is announced (`gap` / `Gap`).
//!
//! `HERALD_CHAOS_SECS` (default 5) sets how long faults are injected, `HERALD_CHAOS_SEED`
//! (default 42) the fault schedule and workload; `scripts/soak` runs this for minutes.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use common::proxy::{Chaos, Fault, Proxy};
use common::Server;
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use herald_client::{Client, ConnectionEvent};
use herald_protocol::decode::decode_server_frame;
use herald_protocol::{ErrFrame, Gap, Msg, OkFrame, ServerFrame, Welcome};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const HEARTBEAT_MS: u64 = 300;
const SERVER_ENV: &[(&str, &str)] = &[
    ("SESSION__HEARTBEAT_MS", "300"),
    ("SESSION__HEARTBEAT_GRACE_MS", "200"),
    ("LIMITS__REQUESTS_PER_SEC", "0"),
    // The end check reads every stream's whole history: a soak stores far more than the
    // default 10,000 messages per channel.
    ("RETENTION__CHANNEL_MAX_MESSAGES", "100000000"),
];

/// A request waiting for its answer.
#[derive(Debug, Clone)]
enum Req {
    /// `key` is both the idempotency `id` and the marker in the body.
    Pub {
        key: String,
        to: String,
        body: Value,
    },
    Sub {
        chan: String,
    },
}

/// What the resilient client hands to its owner.
#[derive(Debug)]
enum Ev {
    Answer(Req, Result<OkFrame, ErrFrame>),
    Msg(Msg),
    Gap(Gap),
}

#[derive(Debug, Default, Clone)]
struct Stats {
    connects: u64,
    resumes: u64,
    resume_errors: u64,
    /// Deliveries dropped because their offset was already handled (resume redelivery).
    redelivered: u64,
    /// Offsets skipped without a gap frame (a silent loss).
    silent_skips: u64,
    /// Offsets announced missing (gap frames).
    gap_offsets: u64,
    /// `ok … dup:true` answers without the original message (re-published with the same id).
    bare_dups: u64,
    evictions: u64,
}

/// A protocol client that survives the network: on any failure or heartbeat silence it
/// reconnects through the proxy with `resume`, resends what the server has not answered, and
/// drops redelivered offsets.
struct Resilient {
    url: String,
    uid: String,
    device: String,
    ws: Option<Ws>,
    welcome: Option<Welcome>,
    seq: u64,
    /// Unanswered requests by seq (the recovery buffer).
    pending: BTreeMap<u64, Req>,
    /// Requests resent after a resume with seq <= acked_seq: a bare `dup` answer to one of
    /// these means "processed, answer forgotten".
    replayed: HashSet<u64>,
    /// Channels subscribed (names without `chan:`).
    chans: Vec<String>,
    /// Per stream, the highest offset handled.
    last: HashMap<String, u64>,
    ready: std::collections::VecDeque<Ev>,
    /// Frames that came in the same text frame as the welcome.
    early: Vec<ServerFrame>,
    last_rx: Instant,
    /// `hello.reconnect_timeout_ms` (None: the server's).
    window_ms: Option<u64>,
    stats: Stats,
}

impl Resilient {
    fn new(url: String, uid: &str, device: &str) -> Resilient {
        Resilient {
            url,
            uid: uid.into(),
            device: device.into(),
            ws: None,
            welcome: None,
            seq: 0,
            pending: BTreeMap::new(),
            replayed: HashSet::new(),
            chans: Vec::new(),
            last: HashMap::new(),
            ready: Default::default(),
            early: Vec::new(),
            last_rx: Instant::now(),
            window_ms: None,
            stats: Stats::default(),
        }
    }

    fn request_frame(req: &Req, seq: u64) -> Value {
        match req {
            Req::Pub { key, to, body } => {
                json!({"t":"pub","seq":seq,"to":to,"body":body,"id":key})
            }
            Req::Sub { chan } => json!({"t":"sub","seq":seq,"chan":chan,"from":0}),
        }
    }

    /// Queues a request and sends it if connected (else it goes out after the reconnect).
    async fn request(&mut self, req: Req) {
        self.seq += 1;
        let seq = self.seq;
        if let Req::Sub { chan } = &req {
            self.chans.push(chan.clone());
        }
        let f = Resilient::request_frame(&req, seq);
        self.pending.insert(seq, req);
        self.send(f).await;
    }

    async fn send(&mut self, v: Value) {
        if let Some(ws) = self.ws.as_mut() {
            if ws.send(Message::Text(v.to_string().into())).await.is_err() {
                self.ws = None;
            }
        }
    }

    /// Connects (resuming when there is a session) until a welcome arrives; then resends.
    async fn connect(&mut self) {
        let mut backoff = Duration::from_millis(20);
        loop {
            if let Some(w) = self.try_connect().await {
                self.stats.connects += 1;
                self.after_welcome(w).await;
                for f in std::mem::take(&mut self.early) {
                    self.handle(f).await;
                }
                if self.ws.is_some() {
                    return;
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(400));
        }
    }

    async fn try_connect(&mut self) -> Option<Welcome> {
        let limit = Duration::from_secs(2);
        let (mut ws, _) =
            tokio::time::timeout(limit, tokio_tungstenite::connect_async(self.url.as_str()))
                .await
                .ok()?
                .ok()?;
        let mut hello = json!({"t":"hello","v":1,"uid":self.uid,"device":self.device});
        if let Some(w) = &self.welcome {
            hello["resume"] = json!({"session": w.session, "key": w.key});
        }
        if let Some(ms) = self.window_ms {
            hello["reconnect_timeout_ms"] = json!(ms);
        }
        ws.send(Message::Text(hello.to_string().into()))
            .await
            .ok()?;
        let deadline = Instant::now() + limit;
        loop {
            let m = tokio::time::timeout_at(deadline, ws.next())
                .await
                .ok()??
                .ok()?;
            let Message::Text(t) = m else {
                if let Message::Close(_) = m {
                    return None;
                }
                continue;
            };
            let mut frames = decode_server_frame(t.as_str()).into_iter();
            while let Some(f) = frames.next() {
                match f.expect("server frame decodes") {
                    ServerFrame::Welcome(w) => {
                        // Frames batched after the welcome in the same text frame (the first
                        // deliveries) are handled after it.
                        self.early = frames.map(|f| f.expect("server frame decodes")).collect();
                        self.ws = Some(ws);
                        self.last_rx = Instant::now();
                        return Some(*w);
                    }
                    ServerFrame::Evicted(e) => {
                        panic!("{}: evicted instead of resumed: {e:?}", self.uid)
                    }
                    _ => {}
                }
            }
        }
    }

    async fn after_welcome(&mut self, w: Welcome) {
        if debug() {
            eprintln!(
                "{}: welcome rt={} resumed={} acked_seq={} subs={:?} conn={} last={:?}",
                self.uid, w.reconnect_timeout_ms, w.resumed, w.acked_seq, w.subs, w.conn, self.last
            );
        }
        let asked = self.welcome.is_some();
        let acked = w.acked_seq;
        let resumed = w.resumed;
        self.welcome = Some(w);
        self.replayed.clear();
        if resumed {
            self.stats.resumes += 1;
            // Same seqs: those <= acked_seq get their cached answer (or a bare dup), the
            // others are applied now.
            let reqs: Vec<(u64, Req)> = self.pending.iter().map(|(s, r)| (*s, r.clone())).collect();
            for (seq, req) in reqs {
                if seq <= acked {
                    self.replayed.insert(seq);
                }
                self.send(Resilient::request_frame(&req, seq)).await;
            }
        } else {
            if asked {
                self.stats.resume_errors += 1;
            }
            // A new session: subscriptions are gone; resubscribe from what was handled
            // (channel history replays, or a gap says what is gone), then resend every
            // unanswered request under new seqs (pubs keep their idempotency id).
            let reqs: Vec<Req> = std::mem::take(&mut self.pending).into_values().collect();
            let chans = std::mem::take(&mut self.chans);
            for chan in chans {
                if reqs
                    .iter()
                    .any(|r| matches!(r, Req::Sub { chan: c } if *c == chan))
                {
                    self.chans.push(chan);
                    continue;
                }
                let from = self.last.get(&format!("chan:{chan}")).copied().unwrap_or(0);
                self.seq += 1;
                let seq = self.seq;
                self.chans.push(chan.clone());
                self.pending.insert(seq, Req::Sub { chan: chan.clone() });
                self.send(json!({"t":"sub","seq":seq,"chan":chan,"from":from}))
                    .await;
            }
            for req in reqs {
                self.seq += 1;
                let seq = self.seq;
                let f = Resilient::request_frame(&req, seq);
                self.pending.insert(seq, req);
                self.send(f).await;
            }
        }
    }

    /// The next event, reconnecting as needed; `None` when `d` passed without one.
    async fn step(&mut self, d: Duration) -> Option<Ev> {
        let deadline = Instant::now() + d;
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(e);
            }
            if self.ws.is_none() {
                self.connect().await;
                continue;
            }
            // Heartbeat watchdog: the server pings every HEARTBEAT_MS.
            let dead_at = self.last_rx + Duration::from_millis(HEARTBEAT_MS * 3 + 200);
            let until = deadline.min(dead_at);
            let ws = self.ws.as_mut()?;
            match tokio::time::timeout_at(until, ws.next()).await {
                Err(_) => {
                    if Instant::now() >= dead_at {
                        if debug() {
                            eprintln!("{}: watchdog: silent connection dropped", self.uid);
                        }
                        self.ws = None; // silent: half-open; drop it and resume elsewhere
                        continue;
                    }
                    return None;
                }
                Ok(Some(Ok(Message::Text(t)))) => {
                    self.last_rx = Instant::now();
                    for f in decode_server_frame(t.as_str()) {
                        self.handle(f.expect("server frame decodes")).await;
                    }
                }
                Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => {
                    self.ws = None;
                }
                Ok(Some(Ok(_))) => self.last_rx = Instant::now(),
            }
        }
    }

    async fn handle(&mut self, f: ServerFrame) {
        match f {
            ServerFrame::Ping => self.send(json!({"t":"pong"})).await,
            ServerFrame::Ok(o) => {
                let Some(req) = self.pending.remove(&o.seq) else {
                    return; // answer to a request resent after its answer arrived
                };
                let bare = o.dup && o.id.is_none();
                if bare && self.replayed.contains(&o.seq) {
                    // Processed, but the answer is gone: re-publish with the same id and a
                    // new seq; idempotency returns the original message.
                    self.stats.bare_dups += 1;
                    self.seq += 1;
                    let seq = self.seq;
                    let f = match &req {
                        Req::Sub { chan } => {
                            let from = self.last.get(&format!("chan:{chan}")).copied();
                            json!({"t":"sub","seq":seq,"chan":chan,"from":from.unwrap_or(0)})
                        }
                        r => Resilient::request_frame(r, seq),
                    };
                    self.pending.insert(seq, req);
                    self.send(f).await;
                    return;
                }
                self.ready.push_back(Ev::Answer(req, Ok(o)));
            }
            ServerFrame::Err(e) => {
                let Some(seq) = e.seq else {
                    panic!("{}: err without seq: {e:?}", self.uid)
                };
                if let Some(req) = self.pending.remove(&seq) {
                    self.ready.push_back(Ev::Answer(req, Err(e)));
                }
            }
            ServerFrame::Msg(m) => {
                let last = self.last.get(&m.s).copied().unwrap_or(0);
                if m.o <= last {
                    if debug() {
                        eprintln!("{}: {} redelivered {} (last {last})", self.uid, m.s, m.o);
                    }
                    self.stats.redelivered += 1;
                    self.send(json!({"t":"ack","s":m.s,"o":last})).await;
                    return;
                }
                if m.o > last + 1 {
                    eprintln!(
                        "{}: {} skipped silently {}..{} (conn {:?})",
                        self.uid,
                        m.s,
                        last + 1,
                        m.o - 1,
                        self.welcome.as_ref().map(|w| &w.conn)
                    );
                    self.stats.silent_skips += m.o - last - 1;
                }
                self.last.insert(m.s.clone(), m.o);
                self.send(json!({"t":"ack","s":m.s,"o":m.o})).await;
                self.ready.push_back(Ev::Msg(m));
            }
            ServerFrame::Gap(g) => {
                let last = self.last.get(&g.s).copied().unwrap_or(0);
                if g.to > last {
                    self.stats.gap_offsets += g.to - g.from.max(last + 1) + 1;
                    if g.from > last + 1 {
                        self.stats.silent_skips += g.from - last - 1;
                    }
                    self.last.insert(g.s.clone(), g.to);
                }
                self.ready.push_back(Ev::Gap(g));
            }
            ServerFrame::Evicted(e) => {
                // Only a resume of our own session could evict this connection, and we
                // never resume from two places at once.
                self.stats.evictions += 1;
                panic!("{}: evicted: {e:?}", self.uid);
            }
            ServerFrame::Welcome(_) | ServerFrame::Pong => {}
        }
    }

    /// Ends the session gracefully (best effort).
    async fn bye(&mut self) {
        self.send(json!({"t":"bye"})).await;
        if let Some(mut ws) = self.ws.take() {
            let _ = ws.close(None).await;
        }
    }
}

/// One `ok`'d publish.
#[derive(Debug, Clone)]
struct Published {
    key: String,
    /// `chan:x` or `inbox:<uid>`.
    stream: String,
    o: u64,
}

#[derive(Debug, Default)]
struct PubReport {
    sent: u64,
    ok: Vec<Published>,
    failed: Vec<(String, String)>,
    stats: Stats,
}

async fn publisher(
    url: String,
    idx: usize,
    seed: u64,
    targets: Vec<String>,
    mut stop: watch::Receiver<bool>,
) -> PubReport {
    let mut rng = StdRng::seed_from_u64(seed ^ (idx as u64).wrapping_mul(0x9E37_79B9));
    let mut c = Resilient::new(url, &format!("pub{idx}"), "d");
    c.window_ms = short_window(idx);
    c.connect().await;
    let mut report = PubReport::default();
    let window = 16;
    let every = Duration::from_millis(8);
    let mut next_at = Instant::now();
    let mut n = 0u64;
    loop {
        let stopped = *stop.borrow();
        // Answers are recorded when their event is taken from `ready`.
        if stopped && c.pending.is_empty() && c.ready.is_empty() {
            break;
        }
        if !stopped && c.pending.len() < window && Instant::now() >= next_at {
            n += 1;
            let key = format!("p{idx}-{n}");
            let to = targets[rng.random_range(0..targets.len())].clone();
            let body = json!({"k": key, "p": idx, "n": n});
            c.request(Req::Pub { key, to, body }).await;
            report.sent += 1;
            next_at += every;
            continue;
        }
        let wait = if stopped {
            Duration::from_millis(100)
        } else {
            next_at
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        };
        tokio::select! {
            ev = c.step(wait) => {
                if let Some(Ev::Answer(Req::Pub { key, to, .. }, res)) = ev {
                    match res {
                        Ok(o) => {
                            let stream = match to.strip_prefix("user:") {
                                Some(uid) => format!("inbox:{uid}"),
                                None => to.clone(),
                            };
                            let o = o.o.expect("pub ok has an offset");
                            report.ok.push(Published { key, stream, o });
                        }
                        Err(e) => report.failed.push((key, format!("{:?}: {}", e.code, e.msg))),
                    }
                }
            }
            _ = stop.changed(), if !stopped => {}
        }
    }
    c.bye().await;
    report.stats = c.stats;
    report
}

#[derive(Debug, Default)]
struct SubReport {
    uid: String,
    /// Per stream key as delivered (`chan:x` / `inbox`), the (offset, marker) handled in order.
    got: HashMap<String, Vec<(u64, String)>>,
    /// Announced gaps: (stream, from, to).
    gaps: Vec<(String, u64, u64)>,
    stats: Stats,
    /// The targets were not all reached before the deadline.
    timed_out: bool,
}

/// Receives until every stream reached its target offset (set by the test at the end).
async fn subscriber(
    url: String,
    uid: String,
    chans: Vec<String>,
    mut targets: watch::Receiver<Option<HashMap<String, HashMap<String, u64>>>>,
) -> SubReport {
    let mut c = Resilient::new(url, &uid, "d");
    c.window_ms = short_window(uid.trim_start_matches("sub").parse().unwrap_or(0));
    c.connect().await;
    for chan in &chans {
        c.request(Req::Sub { chan: chan.clone() }).await;
    }
    let mut report = SubReport {
        uid,
        ..Default::default()
    };
    let mut deadline: Option<Instant> = None;
    loop {
        let t = targets
            .borrow()
            .as_ref()
            .map(|all| all[&report.uid].clone());
        if let Some(t) = t {
            let done = t
                .iter()
                .all(|(s, o)| c.last.get(s).copied().unwrap_or(0) >= *o);
            // Handled offsets are recorded when their event is taken from `ready`.
            if done && c.pending.is_empty() && c.ready.is_empty() {
                break;
            }
            let d = *deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(20));
            if Instant::now() >= d {
                report.timed_out = true;
                break;
            }
        }
        tokio::select! {
            ev = c.step(Duration::from_millis(100)) => match ev {
                Some(Ev::Msg(m)) => {
                    let body: Value = serde_json::from_str(m.body.get()).expect("body json");
                    let k = body["k"].as_str().unwrap_or("?").to_string();
                    report.got.entry(m.s.clone()).or_default().push((m.o, k));
                }
                Some(Ev::Gap(g)) => report.gaps.push((g.s, g.from, g.to)),
                Some(Ev::Answer(req, Err(e))) => panic!("{}: {req:?} failed: {e:?}", report.uid),
                Some(Ev::Answer(_, Ok(_))) | None => {}
            },
            _ = targets.changed() => {}
        }
    }
    c.bye().await;
    report.stats = c.stats;
    report
}

/// Connects an SDK client, retrying while the network is faulty (as an application would: the
/// first connection has no session to keep yet).
async fn sdk_connect(url: &str, uid: &str, window_ms: Option<u64>) -> Client {
    loop {
        let mut b = Client::builder(url).dev_uid(uid).device("d");
        if let Some(ms) = window_ms {
            b = b.reconnect_timeout(Duration::from_millis(ms));
        }
        match b.connect().await {
            Ok(c) => return c,
            Err(e) => {
                if debug() {
                    eprintln!("{uid}: first connect failed: {e}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Counts an SDK connection event into `stats`.
fn count_event(uid: &str, stats: &mut Stats, ev: &ConnectionEvent) {
    if debug() {
        eprintln!("{uid}: {ev:?}");
    }
    match ev {
        ConnectionEvent::Connected { resumed } => {
            stats.connects += 1;
            if *resumed {
                stats.resumes += 1;
            }
        }
        ConnectionEvent::ResumeFailed { .. } => stats.resume_errors += 1,
        ConnectionEvent::Gap { from, to, .. } => stats.gap_offsets += to - from + 1,
        ConnectionEvent::Evicted { .. } => stats.evictions += 1,
        _ => {}
    }
}

/// An SDK publisher: up to 16 `publish` calls in flight, one started every 8 ms, each recorded
/// when it resolves. Nothing is resent by the test: recovery is the SDK's job.
async fn sdk_publisher(
    url: String,
    idx: usize,
    seed: u64,
    targets: Vec<String>,
    mut stop: watch::Receiver<bool>,
) -> PubReport {
    let mut rng = StdRng::seed_from_u64(seed ^ (idx as u64).wrapping_mul(0x9E37_79B9));
    let uid = format!("pub{idx}");
    let client = sdk_connect(&url, &uid, short_window(idx)).await;
    let mut events = client.events().expect("events are taken once");
    let events_uid = uid.clone();
    let counted = tokio::spawn(async move {
        let mut stats = Stats::default();
        while let Some(ev) = events.recv().await {
            count_event(&events_uid, &mut stats, &ev);
        }
        stats
    });
    let mut report = PubReport::default();
    let window = 16;
    let every = Duration::from_millis(8);
    let mut next_at = Instant::now();
    let mut n = 0u64;
    let mut inflight = FuturesUnordered::new();
    loop {
        let stopped = *stop.borrow();
        if stopped && inflight.is_empty() {
            break;
        }
        if !stopped && inflight.len() < window && Instant::now() >= next_at {
            n += 1;
            let key = format!("p{idx}-{n}");
            let to = targets[rng.random_range(0..targets.len())].clone();
            let body = json!({"k": key, "p": idx, "n": n});
            let c = client.clone();
            inflight.push(async move {
                let res = c.publish(&to, body).await;
                (key, to, res)
            });
            report.sent += 1;
            next_at += every;
            continue;
        }
        tokio::select! {
            Some((key, to, res)) = inflight.next(), if !inflight.is_empty() => match res {
                Ok(p) => {
                    let stream = match to.strip_prefix("user:") {
                        Some(uid) => format!("inbox:{uid}"),
                        None => p.stream.clone(),
                    };
                    if p.dup {
                        report.stats.bare_dups += 1;
                    }
                    report.ok.push(Published { key, stream, o: p.offset });
                }
                Err(e) => report.failed.push((key, e.to_string())),
            },
            _ = tokio::time::sleep_until(next_at), if !stopped && inflight.len() < window => {}
            _ = stop.changed(), if !stopped => {}
        }
    }
    client.close().await;
    let dups = report.stats.bare_dups;
    report.stats = counted.await.expect("event counter");
    // For the SDK this counts publishes answered as a resend of an already stored id.
    report.stats.bare_dups = dups;
    report
}

/// An SDK subscriber: takes deliveries and events as an application would, until every stream
/// reached its target offset (delivered, or announced by a `Gap` event).
async fn sdk_subscriber(
    url: String,
    uid: String,
    chans: Vec<String>,
    mut targets: watch::Receiver<Option<HashMap<String, HashMap<String, u64>>>>,
) -> SubReport {
    let idx = uid.trim_start_matches("sub").parse().unwrap_or(0);
    let client = sdk_connect(&url, &uid, short_window(idx)).await;
    let mut deliveries = client.deliveries().expect("deliveries are taken once");
    let mut events = client.events().expect("events are taken once");
    // Subscribing waits for answers while deliveries keep flowing.
    let subscribing = {
        let c = client.clone();
        tokio::spawn(async move {
            for chan in chans {
                c.subscribe(&chan, Some(0)).await?;
            }
            Ok::<_, herald_client::Error>(())
        })
    };
    let mut report = SubReport {
        uid,
        ..Default::default()
    };
    // Per stream, the highest offset delivered or announced.
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut deadline: Option<Instant> = None;
    loop {
        let t = targets
            .borrow()
            .as_ref()
            .map(|all| all[&report.uid].clone());
        if let Some(t) = t {
            let done = t
                .iter()
                .all(|(s, o)| last.get(s).copied().unwrap_or(0) >= *o);
            if done && subscribing.is_finished() {
                break;
            }
            let d = *deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(20));
            if Instant::now() >= d {
                report.timed_out = true;
                break;
            }
        }
        tokio::select! {
            d = deliveries.recv() => {
                let Some(d) = d else {
                    panic!("{}: the client stopped: {:?}", report.uid, client.stopped());
                };
                let k = d.body["k"].as_str().unwrap_or("?").to_string();
                let l = last.entry(d.stream.clone()).or_default();
                *l = (*l).max(d.offset);
                report.got.entry(d.stream).or_default().push((d.offset, k));
            }
            Some(ev) = events.recv() => {
                count_event(&report.uid, &mut report.stats, &ev);
                if let ConnectionEvent::Gap { stream, from, to } = ev {
                    let l = last.entry(stream.clone()).or_default();
                    *l = (*l).max(to);
                    report.gaps.push((stream, from, to));
                }
            }
            _ = targets.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    if let Err(e) = subscribing.await.expect("subscribe task") {
        panic!("{}: subscribe failed: {e}", report.uid);
    }
    client.close().await;
    while let Some(ev) = events.recv().await {
        count_event(&report.uid, &mut report.stats, &ev);
    }
    report
}

/// The whole history of `stream` as (offset, marker).
async fn history(s: &Server, stream: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let (status, v) = s
            .get(&format!("/v1/streams/{stream}?after={after}&limit=1000"))
            .await;
        assert_eq!(status, 200, "history of {stream}: {v}");
        let items = v["items"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            return out;
        }
        for it in items {
            let o = it["o"].as_u64().expect("offset");
            let k = it["body"]["k"].as_str().unwrap_or("?").to_string();
            out.push((o, k));
            after = o;
        }
    }
}

/// Client 2 of each group asks for a 250 ms reconnect window: a stall, a refusal or the
/// server restart outlasts it, so its resumes fail (`expired`) and it recovers through a new
/// session: resubscribing from what it handled and resending its publishes by idempotency id.
fn short_window(idx: usize) -> Option<u64> {
    (idx == 2).then_some(250)
}

fn debug() -> bool {
    std::env::var("HERALD_CHAOS_DEBUG").is_ok()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Which clients the chaos scenario drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clients {
    /// The SDK (`herald-client`), as an application uses it: the whole promise, both halves.
    Sdk,
    /// This file's raw protocol client: the server's half, frame by frame.
    Raw,
}

/// N publishers and M subscribers over two channels and the subscribers' inboxes, all of them
/// `herald-client` SDK clients, random faults for `HERALD_CHAOS_SECS`, one kill -9 + restart of
/// the server per started minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_sdk_clients_survive_faults_and_kill9() {
    run_chaos(Clients::Sdk).await;
}

/// The same scenario with raw protocol clients, so a failure can be told apart: server or SDK.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_publishers_and_subscribers_survive_faults_and_kill9() {
    run_chaos(Clients::Raw).await;
}

async fn run_chaos(clients: Clients) {
    let secs = env_u64("HERALD_CHAOS_SECS", 5);
    let seed = env_u64("HERALD_CHAOS_SEED", 42);
    let (n_pub, n_sub) = (3usize, 3usize);
    let started = Instant::now();

    let mut server = Server::start(SERVER_ENV);
    let proxy = Proxy::start(&server.addr).await;
    let url = proxy.ws_url();
    let chans = vec!["room0".to_string(), "room1".to_string()];
    let subs: Vec<String> = (0..n_sub).map(|i| format!("sub{i}")).collect();
    let mut targets: Vec<String> = chans.iter().map(|c| format!("chan:{c}")).collect();
    targets.extend(subs.iter().map(|u| format!("user:{u}")));

    let (tgt_tx, tgt_rx) = watch::channel(None);
    let sub_tasks: Vec<_> = subs
        .iter()
        .map(|u| match clients {
            Clients::Sdk => tokio::spawn(sdk_subscriber(
                url.clone(),
                u.clone(),
                chans.clone(),
                tgt_rx.clone(),
            )),
            Clients::Raw => tokio::spawn(subscriber(
                url.clone(),
                u.clone(),
                chans.clone(),
                tgt_rx.clone(),
            )),
        })
        .collect();
    let (stop_tx, stop_rx) = watch::channel(false);
    let pub_tasks: Vec<_> = (0..n_pub)
        .map(|i| match clients {
            Clients::Sdk => tokio::spawn(sdk_publisher(
                url.clone(),
                i,
                seed,
                targets.clone(),
                stop_rx.clone(),
            )),
            Clients::Raw => tokio::spawn(publisher(
                url.clone(),
                i,
                seed,
                targets.clone(),
                stop_rx.clone(),
            )),
        })
        .collect();

    // Faults: a seeded random schedule for the whole period, the kill -9 halfway.
    let faults_from = Instant::now();
    let chaos = proxy.run(Chaos::random(seed, 4.0).stall_for(Duration::from_millis(1200)));
    // One kill -9 + restart per started minute of faults (one in a short run), evenly spaced.
    let kills = (secs / 60).max(1);
    let total = Duration::from_secs(secs);
    for k in 1..=kills {
        let at = total * k as u32 / (kills as u32 + 1);
        tokio::time::sleep_until(faults_from + at).await;
        tokio::task::block_in_place(|| {
            server.kill();
            server.restart();
        });
        proxy.restarted(&server.addr);
    }
    tokio::time::sleep_until(faults_from + total).await;
    chaos.stop().await;
    proxy.heal();

    // Publishers stop and wait for every answer; nothing is abandoned.
    stop_tx.send(true).expect("publishers listen");
    let mut pubs = Vec::new();
    for t in pub_tasks {
        pubs.push(
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("publisher got every answer")
                .expect("publisher task"),
        );
    }

    // What the server stored: every stream's history, checked for duplicates.
    let mut stored: HashMap<String, Vec<(u64, String)>> = HashMap::new();
    for t in &targets {
        let key = match t.strip_prefix("user:") {
            Some(uid) => format!("inbox:{uid}"),
            None => t.clone(),
        };
        stored.insert(key.clone(), history(&server, &key).await);
    }
    let mut stored_twice = 0u64;
    for (s, items) in &stored {
        let mut seen = HashSet::new();
        for (o, k) in items {
            if !seen.insert(k) {
                eprintln!("stored twice: {s} offset {o} marker {k}");
                stored_twice += 1;
            }
        }
    }

    // Subscribers: run until each stream reaches the server's last offset.
    let mut want = HashMap::new();
    for (s, items) in &stored {
        want.insert(s.clone(), items.last().map_or(0, |(o, _)| *o));
    }
    let mut per_sub: HashMap<String, HashMap<String, u64>> = HashMap::new();
    for u in &subs {
        let mut t = HashMap::new();
        for c in &chans {
            t.insert(format!("chan:{c}"), want[&format!("chan:{c}")]);
        }
        t.insert("inbox".to_string(), want[&format!("inbox:{u}")]);
        per_sub.insert(u.clone(), t);
    }
    tgt_tx.send(Some(per_sub)).expect("subscribers listen");
    let mut reports = Vec::new();
    for t in sub_tasks {
        reports.push(t.await.expect("subscriber task"));
    }

    // The verdict.
    let mut lost = 0u64;
    let mut duplicates = stored_twice;
    let mut delivered = 0u64;
    let mut announced = 0u64;
    let mut problems: Vec<String> = Vec::new();
    let sent: u64 = pubs.iter().map(|p| p.sent).sum();
    let oks: Vec<&Published> = pubs.iter().flat_map(|p| p.ok.iter()).collect();
    let failed: u64 = pubs.iter().map(|p| p.failed.len() as u64).sum();
    // Every ok'd message is stored where its ok said.
    let stored_at: HashSet<(&str, u64, &str)> = stored
        .iter()
        .flat_map(|(s, items)| items.iter().map(move |(o, k)| (s.as_str(), *o, k.as_str())))
        .collect();
    for p in &oks {
        if !stored_at.contains(&(p.stream.as_str(), p.o, p.key.as_str())) {
            eprintln!("lost by the server: {p:?}");
            lost += 1;
        }
    }
    for r in &reports {
        if r.timed_out {
            problems.push(format!("{} did not reach its targets", r.uid));
        }
        announced += r.stats.gap_offsets;
        for (s, got) in &r.got {
            delivered += got.len() as u64;
            let mut seen = HashSet::new();
            for (_, k) in got {
                if !seen.insert(k) {
                    eprintln!("{}: {s}: delivered twice: {k}", r.uid);
                    duplicates += 1;
                }
            }
            if !got.windows(2).all(|w| w[0].0 < w[1].0) {
                problems.push(format!("{}: {s} out of order", r.uid));
            }
        }
        let got_at: HashSet<(&str, u64, &str)> = r
            .got
            .iter()
            .flat_map(|(s, got)| got.iter().map(move |(o, k)| (s.as_str(), *o, k.as_str())))
            .collect();
        let announced_in = |s: &str, o: u64| {
            r.gaps
                .iter()
                .any(|(gs, from, to)| gs == s && (*from..=*to).contains(&o))
        };
        for p in &oks {
            let s = match p.stream.strip_prefix("inbox:") {
                Some(uid) if uid == r.uid => "inbox".to_string(),
                Some(_) => continue,
                None => p.stream.clone(),
            };
            if got_at.contains(&(s.as_str(), p.o, p.key.as_str())) {
                continue;
            }
            if announced_in(&s, p.o) {
                continue;
            }
            eprintln!("{}: never received {p:?}", r.uid);
            lost += 1;
        }
        if r.stats.evictions > 0 {
            problems.push(format!("{} was evicted", r.uid));
        }
        if r.stats.silent_skips > 0 {
            problems.push(format!(
                "{}: {} offsets skipped without a gap",
                r.uid, r.stats.silent_skips
            ));
        }
    }
    for p in &pubs {
        if p.stats.evictions > 0 {
            problems.push("a publisher was evicted".to_string());
        }
    }
    let faults = proxy.faults();
    let reconnects: u64 = pubs
        .iter()
        .map(|p| &p.stats)
        .chain(reports.iter().map(|r| &r.stats))
        .map(|s| s.connects.saturating_sub(1))
        .sum();
    let resume_errors: u64 = pubs
        .iter()
        .map(|p| &p.stats)
        .chain(reports.iter().map(|r| &r.stats))
        .map(|s| s.resume_errors)
        .sum();
    let redelivered: u64 = reports.iter().map(|r| r.stats.redelivered).sum();
    let bare_dups: u64 = pubs.iter().map(|p| p.stats.bare_dups).sum();
    proxy.shutdown();

    println!("chaos ({clients:?} clients): seed {seed}, {secs} s of faults, {n_pub} publishers, {n_sub} subscribers, ran {:.1} s", started.elapsed().as_secs_f64());
    println!(
        "reconnects: {reconnects}, resume errors: {resume_errors}, gaps announced (offsets): {announced}, \
         redeliveries dropped by offset: {redelivered}, publishes answered as dups of a stored id: {bare_dups}"
    );
    println!("publish ok: {}, publish err: {failed}", oks.len());
    println!("sent: {sent}");
    println!("delivered: {delivered}");
    println!("faults injected: {faults}");
    println!("lost: {lost}");
    println!("duplicates: {duplicates}");

    assert!(problems.is_empty(), "{problems:#?}");
    assert!(faults.total() > 0, "no fault was injected");
    assert!(reconnects > 0, "no client ever reconnected");
    assert_eq!(
        oks.len() as u64 + failed,
        sent,
        "every publish was answered"
    );
    assert_eq!(
        failed,
        0,
        "publishes failed: {:?}",
        pubs.iter()
            .flat_map(|p| p.failed.iter())
            .collect::<Vec<_>>()
    );
    assert_eq!(lost, 0, "lost messages");
    assert_eq!(duplicates, 0, "duplicates");
}

/// Opens a WebSocket through the proxy and says hello (resuming `resume` if given).
async fn raw_hello(url: &str, resume: Option<&Welcome>) -> (Ws, Welcome) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("ws connect through the proxy");
    let mut hello = json!({"t":"hello","v":1,"uid":"solo","device":"d"});
    if let Some(w) = resume {
        hello["resume"] = json!({"session": w.session, "key": w.key});
    }
    ws.send(Message::Text(hello.to_string().into()))
        .await
        .expect("send hello");
    loop {
        match raw_next(&mut ws, common::WAIT).await {
            Some(ServerFrame::Welcome(w)) => return (ws, *w),
            Some(ServerFrame::Ping) => {}
            other => panic!("expected welcome, got {other:?}"),
        }
    }
}

/// The next frame within `d` (`None` when the connection closed); pings are answered.
async fn raw_next(ws: &mut Ws, d: Duration) -> Option<ServerFrame> {
    let deadline = Instant::now() + d;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a frame or a close before the deadline");
        match m {
            Some(Ok(Message::Text(t))) => {
                let f = decode_server_frame(t.as_str())
                    .into_iter()
                    .next()
                    .expect("one frame")
                    .expect("decodes");
                if f == ServerFrame::Ping {
                    let _ = ws
                        .send(Message::Text(json!({"t":"pong"}).to_string().into()))
                        .await;
                    continue;
                }
                return Some(f);
            }
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// Each fault of the proxy does what the chaos scenario relies on, observed from both ends:
/// latency and throttling slow a round trip down, a stall is half-open (the server's
/// heartbeat ends the connection while the proxy keeps the client's side open), a cut closes
/// both sides, refusal closes new connections, and after kill -9 + restart the proxy forwards
/// to the new server and the session resumes. Every fault is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_faults_are_seen_by_client_and_server() {
    let mut server = Server::start(SERVER_ENV);
    let proxy = Proxy::start(&server.addr).await;
    let url = proxy.ws_url();
    let (mut ws, w) = raw_hello(&url, None).await;
    assert_eq!(proxy.live(), 1);

    // Latency: each chunk waits 150 ms, so a ping round trip takes at least 300 ms.
    proxy.delay(Duration::from_millis(150));
    let t0 = Instant::now();
    ws.send(Message::Text(json!({"t":"ping"}).to_string().into()))
        .await
        .expect("send ping");
    assert_eq!(
        raw_next(&mut ws, common::WAIT).await,
        Some(ServerFrame::Pong)
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    proxy.delay(Duration::ZERO);

    // Throttling: 2 KB upstream at 8 KB/s takes at least 250 ms before the server answers.
    proxy.throttle(8_000);
    let t0 = Instant::now();
    let body = "x".repeat(2_000);
    ws.send(Message::Text(
        json!({"t":"pub","seq":1,"to":"chan:t","body":body})
            .to_string()
            .into(),
    ))
    .await
    .expect("send pub");
    match raw_next(&mut ws, common::WAIT).await {
        Some(ServerFrame::Ok(o)) => assert_eq!(o.seq, 1),
        other => panic!("expected ok, got {other:?}"),
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    proxy.throttle(0);

    // Stall (half-open): the server hears nothing for longer than heartbeat + grace and
    // detaches the session, while the proxy still holds the client's socket open.
    let t0 = Instant::now();
    assert_eq!(proxy.stall(Duration::from_millis(2000)), 1);
    server.wait_detached("solo", &w.session).await;
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "the server noticed the silence during the stall (heartbeat 300 + grace 200 ms), not \
         when it ended: {:?}",
        t0.elapsed()
    );
    assert_eq!(proxy.live(), 1, "a stall closes nothing");
    // When the stall ends the proxy forwards the server's close: the client learns it.
    assert_eq!(raw_next(&mut ws, common::WAIT).await, None);

    // The session resumes through the proxy.
    let (mut ws, w2) = raw_hello(&url, Some(&w)).await;
    assert!(w2.resumed, "{w2:?}");
    assert_eq!(w2.acked_seq, 1);

    // Cut: both sides closed at once.
    assert_eq!(proxy.cut_all(), 1);
    assert_eq!(raw_next(&mut ws, common::WAIT).await, None);
    server.wait_detached("solo", &w.session).await;

    // Refused: the connection is closed before the WebSocket handshake.
    proxy.refuse(true);
    assert!(tokio_tungstenite::connect_async(url.as_str())
        .await
        .is_err());
    proxy.refuse(false);

    // kill -9 and restart: the proxy forwards to the new port and the session resumes.
    let (ws, _) = raw_hello(&url, Some(&w)).await;
    tokio::task::block_in_place(|| {
        server.kill();
        server.restart();
    });
    proxy.restarted(&server.addr);
    drop(ws);
    let (_ws, w3) = raw_hello(&url, Some(&w)).await;
    assert!(w3.resumed, "{w3:?}");
    assert_eq!(w3.session, w.session);

    let f = proxy.faults();
    assert_eq!(
        (f.delays, f.throttles, f.stalls, f.cuts, f.refused, f.kills),
        (1, 1, 1, 1, 1, 1),
        "{f}"
    );
    proxy.shutdown();
}

/// A fault schedule is a function of its seed: the same seed gives the same faults at the same
/// intervals (so a failing soak can be replayed with its printed seed), another seed does not,
/// and every kind of fault occurs.
#[test]
fn chaos_schedule_is_fixed_by_its_seed() {
    let run = |seed| {
        let mut plan = Chaos::random(seed, 4.0).schedule();
        (0..200).map(|_| plan.next_fault()).collect::<Vec<_>>()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
    let faults = run(7);
    let kinds = |f: &Fault| match f {
        Fault::CutOne(_) => 0,
        Fault::CutAll => 1,
        Fault::StallOne(_, d) => {
            assert!(
                *d > Duration::from_millis(HEARTBEAT_MS + 200),
                "stall outlives the heartbeat"
            );
            2
        }
        Fault::Delay(..) => 3,
        Fault::Throttle(..) => 4,
        Fault::Refuse(_) => 5,
    };
    let seen: HashSet<u32> = faults.iter().map(|(_, f)| kinds(f)).collect();
    assert_eq!(seen.len(), 6, "{faults:?}");
    // Mean rate 4/s: waits within [125, 375] ms.
    assert!(faults
        .iter()
        .all(|(w, _)| (125..=375).contains(&(w.as_millis() as u64))));
}

/// What cannot be delivered is announced, under faults: while a subscriber is cut off (its
/// connection cut, reconnects refused) retention trims its channel; when it comes back —
/// first by resuming, then, with a 250 ms window, through a failed resume (`expired`) and a
/// resubscription from its last offset — each offset is either delivered exactly once, in
/// order, or inside a `gap` frame, and nothing is skipped silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_trimmed_while_away_is_announced_as_gap() {
    let mut env: Vec<_> = SERVER_ENV
        .iter()
        .copied()
        .filter(|(k, _)| *k != "RETENTION__CHANNEL_MAX_MESSAGES")
        .collect();
    env.push(("RETENTION__CHANNEL_MAX_MESSAGES", "20"));
    env.push(("RETENTION__TRIM_INTERVAL_MS", "100"));
    let server = Server::start(&env);
    let proxy = Proxy::start(&server.addr).await;
    let mut c = Resilient::new(proxy.ws_url(), "gapper", "d");
    c.connect().await;
    c.request(Req::Sub { chan: "g".into() }).await;
    let mut got: Vec<u64> = Vec::new();
    let mut gaps: Vec<Gap> = Vec::new();
    let handle = |ev: Option<Ev>, got: &mut Vec<u64>, gaps: &mut Vec<Gap>| match ev {
        Some(Ev::Msg(m)) => got.push(m.o),
        Some(Ev::Gap(g)) => gaps.push(g),
        Some(Ev::Answer(r, Err(e))) => panic!("{r:?}: {e:?}"),
        _ => {}
    };
    let mut n = 0;
    for round in 0..2 {
        if round == 1 {
            // Reconnect once with a 250 ms window: the next outage outlasts it.
            c.window_ms = Some(250);
            let before = c.stats.connects;
            proxy.cut_all();
            while c.stats.connects == before {
                let ev = c.step(Duration::from_millis(50)).await;
                handle(ev, &mut got, &mut gaps);
            }
        }
        // Cut the subscriber off: its connection is cut, new ones are refused.
        proxy.refuse(true);
        proxy.cut_all();
        let cut_at = Instant::now();
        for _ in 0..100 {
            n += 1;
            let (status, v) = server
                .post(
                    "/v1/publish",
                    json!({"to":"chan:g","body":{"k":format!("m{n}")}}),
                )
                .await;
            assert_eq!(status, 200, "{v}");
        }
        // Retention keeps the last 20: wait until the rest is gone.
        server
            .wait_for("/v1/streams/chan:g", |v| {
                v["first"].as_u64().is_some_and(|f| f + 19 >= n)
            })
            .await;
        // Outlast the 250 ms reconnect window of round 1 (wall-clock time must pass).
        tokio::time::sleep_until(cut_at + Duration::from_millis(400)).await;
        proxy.refuse(false);
        let deadline = Instant::now() + common::WAIT;
        while c.last.get("chan:g").copied().unwrap_or(0) < n || !c.ready.is_empty() {
            assert!(Instant::now() < deadline, "not caught up: {:?}", c.last);
            let ev = c.step(Duration::from_millis(50)).await;
            handle(ev, &mut got, &mut gaps);
        }
    }
    // Every offset exactly once: delivered, or announced in a gap.
    assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
    for o in 1..=n {
        let delivered = got.contains(&o);
        let announced = gaps.iter().any(|g| (g.from..=g.to).contains(&o));
        assert!(
            delivered ^ announced,
            "offset {o}: delivered {delivered}, announced {announced}"
        );
    }
    assert_eq!(c.stats.silent_skips, 0);
    assert!(gaps.len() >= 2, "a gap per outage: {gaps:?}");
    assert!(c.stats.resume_errors >= 1, "{:?}", c.stats);
    assert!(c.stats.resumes >= 1, "{:?}", c.stats);
    proxy.shutdown();
}
