//! A fault-injecting TCP proxy for the chaos suite: it listens on 127.0.0.1:0, forwards every
//! accepted connection to the current upstream (a real `herald` process), and lets the test
//! break the network at runtime through [`Proxy`]: cut every connection, stall them silently
//! (half-open: no bytes move, nothing is closed), add latency, throttle, refuse new
//! connections, or run a seeded random fault schedule ([`Chaos`]). Every fault is counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How many faults of each kind were injected so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Connections cut (each connection counts once).
    pub cuts: u64,
    /// Stalls started (one per connection stalled).
    pub stalls: u64,
    /// Latency periods started.
    pub delays: u64,
    /// Throttle periods started.
    pub throttles: u64,
    /// Connections refused while `refuse(true)` was on.
    pub refused: u64,
    /// Upstream restarts announced with [`Proxy::restarted`] (kill -9 of the server).
    pub kills: u64,
}

impl Faults {
    pub fn total(&self) -> u64 {
        self.cuts + self.stalls + self.delays + self.throttles + self.refused + self.kills
    }
}

impl std::fmt::Display for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (cuts {}, stalls {}, delays {}, throttles {}, refused {}, server kills {})",
            self.total(),
            self.cuts,
            self.stalls,
            self.delays,
            self.throttles,
            self.refused,
            self.kills
        )
    }
}

/// One live connection pair.
struct Conn {
    /// `true` = cut now.
    cut: watch::Sender<bool>,
    /// Forwarding is stopped until this instant (both directions).
    stall_until: Arc<Mutex<Option<Instant>>>,
}

struct Inner {
    upstream: Mutex<String>,
    refuse: AtomicBool,
    delay_ms: AtomicU64,
    /// Bytes per second per direction and connection; 0 = unlimited.
    throttle_bps: AtomicU64,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Conn>>,
    faults: Mutex<Faults>,
}

/// The proxy; clones share it. Dropping the last clone does not stop the accept loop: call
/// [`Proxy::shutdown`].
#[derive(Clone)]
pub struct Proxy {
    /// `127.0.0.1:port` to connect to instead of the server.
    pub addr: String,
    inner: Arc<Inner>,
    accept: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Proxy {
    /// Starts a proxy in front of `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let inner = Arc::new(Inner {
            upstream: Mutex::new(upstream.to_string()),
            refuse: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            throttle_bps: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            faults: Mutex::new(Faults::default()),
        });
        let i = inner.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let i = i.clone();
                tokio::spawn(async move { i.serve(client).await });
            }
        });
        Proxy {
            addr,
            inner,
            accept: Arc::new(Mutex::new(Some(accept))),
        }
    }

    /// `ws://…/v1/ws` through the proxy.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// Forwards new connections to `upstream` from now on (after a server restart).
    pub fn set_upstream(&self, upstream: &str) {
        *lock(&self.inner.upstream) = upstream.to_string();
    }

    /// Records a kill -9 of the upstream as a fault.
    pub fn restarted(&self, upstream: &str) {
        self.set_upstream(upstream);
        lock(&self.inner.faults).kills += 1;
    }

    /// Closes every live connection now, both sides; returns how many.
    pub fn cut_all(&self) -> usize {
        let conns: Vec<Conn> = lock(&self.inner.conns).drain().map(|(_, c)| c).collect();
        for c in &conns {
            let _ = c.cut.send(true);
        }
        lock(&self.inner.faults).cuts += conns.len() as u64;
        conns.len()
    }

    /// Stops forwarding on every live connection, in both directions, for `d`, without closing
    /// anything (half-open as both ends see it). Returns how many connections were stalled.
    pub fn stall(&self, d: Duration) -> usize {
        let until = Instant::now() + d;
        let conns = lock(&self.inner.conns);
        for c in conns.values() {
            *lock(&c.stall_until) = Some(until);
        }
        lock(&self.inner.faults).stalls += conns.len() as u64;
        conns.len()
    }

    /// Added latency before each forwarded chunk (0 = none).
    pub fn delay(&self, d: Duration) {
        if !d.is_zero() {
            lock(&self.inner.faults).delays += 1;
        }
        self.inner
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Limits each direction of each connection to `bytes_per_sec` (0 = unlimited).
    pub fn throttle(&self, bytes_per_sec: u64) {
        if bytes_per_sec > 0 {
            lock(&self.inner.faults).throttles += 1;
        }
        self.inner
            .throttle_bps
            .store(bytes_per_sec, Ordering::SeqCst);
    }

    /// While on, new connections are closed as soon as they are accepted.
    pub fn refuse(&self, on: bool) {
        self.inner.refuse.store(on, Ordering::SeqCst);
    }

    /// Ends stalls, latency, throttling and refusal (live connections keep going).
    pub fn heal(&self) {
        self.refuse(false);
        self.inner.delay_ms.store(0, Ordering::SeqCst);
        self.inner.throttle_bps.store(0, Ordering::SeqCst);
        for c in lock(&self.inner.conns).values() {
            *lock(&c.stall_until) = None;
        }
    }

    /// Live connection pairs.
    pub fn live(&self) -> usize {
        lock(&self.inner.conns).len()
    }

    pub fn faults(&self) -> Faults {
        *lock(&self.inner.faults)
    }

    /// Cuts one live connection chosen by `pick` (an index into the live ones, by id order).
    fn cut_one(&self, pick: usize) -> bool {
        let mut conns = lock(&self.inner.conns);
        let mut ids: Vec<u64> = conns.keys().copied().collect();
        if ids.is_empty() {
            return false;
        }
        ids.sort_unstable();
        let id = ids[pick % ids.len()];
        if let Some(c) = conns.remove(&id) {
            let _ = c.cut.send(true);
            lock(&self.inner.faults).cuts += 1;
        }
        true
    }

    /// Stalls one live connection chosen by `pick` for `d`.
    fn stall_one(&self, pick: usize, d: Duration) -> bool {
        let conns = lock(&self.inner.conns);
        let mut ids: Vec<u64> = conns.keys().copied().collect();
        if ids.is_empty() {
            return false;
        }
        ids.sort_unstable();
        let id = ids[pick % ids.len()];
        if let Some(c) = conns.get(&id) {
            *lock(&c.stall_until) = Some(Instant::now() + d);
            lock(&self.inner.faults).stalls += 1;
        }
        true
    }

    /// Runs `chaos` against this proxy until the returned task is stopped.
    pub fn run(&self, chaos: Chaos) -> ChaosTask {
        let proxy = self.clone();
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut plan = chaos.schedule();
            loop {
                let (wait, fault) = plan.next_fault();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop_rx.changed() => break,
                }
                // A fault with a span holds until the span ends (or the schedule is stopped),
                // then is lifted.
                let span = match fault {
                    Fault::CutOne(pick) => {
                        proxy.cut_one(pick);
                        continue;
                    }
                    Fault::CutAll => {
                        proxy.cut_all();
                        continue;
                    }
                    Fault::StallOne(pick, d) => {
                        proxy.stall_one(pick, d);
                        continue;
                    }
                    Fault::Delay(d, span) => {
                        proxy.delay(d);
                        span
                    }
                    Fault::Throttle(bps, span) => {
                        proxy.throttle(bps);
                        span
                    }
                    Fault::Refuse(span) => {
                        proxy.refuse(true);
                        span
                    }
                };
                let stopped = tokio::select! {
                    _ = tokio::time::sleep(span) => false,
                    _ = stop_rx.changed() => true,
                };
                match fault {
                    Fault::Delay(..) => proxy.delay(Duration::ZERO),
                    Fault::Throttle(..) => proxy.throttle(0),
                    _ => proxy.refuse(false),
                }
                if stopped {
                    break;
                }
            }
        });
        ChaosTask {
            stop: stop_tx,
            task,
        }
    }

    /// Stops accepting and cuts everything.
    pub fn shutdown(&self) {
        if let Some(t) = lock(&self.accept).take() {
            t.abort();
        }
        self.cut_all();
    }
}

/// A seeded random fault schedule.
#[derive(Debug, Clone, Copy)]
pub struct Chaos {
    pub seed: u64,
    /// Mean faults per second.
    pub rate: f64,
    /// How long a stall lasts (make it longer than heartbeat + grace).
    pub stall: Duration,
}

impl Chaos {
    /// Cuts (one or all connections), stalls, latency spikes and throttling at random times,
    /// `rate` per second on average, the sequence fixed by `seed`.
    pub fn random(seed: u64, rate: f64) -> Chaos {
        Chaos {
            seed,
            rate,
            stall: Duration::from_millis(1500),
        }
    }

    pub fn stall_for(mut self, d: Duration) -> Chaos {
        self.stall = d;
        self
    }
}

impl Chaos {
    /// The fault sequence this seed produces (what [`Proxy::run`] injects, in order).
    pub fn schedule(&self) -> Schedule {
        Schedule {
            rng: StdRng::seed_from_u64(self.seed),
            mean_ms: (1000.0 / self.rate.max(0.001)) as u64,
            stall: self.stall,
        }
    }
}

/// One injected fault; `usize` picks a live connection (index modulo the live count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    CutOne(usize),
    CutAll,
    StallOne(usize, Duration),
    /// Latency per chunk, for a span.
    Delay(Duration, Duration),
    /// Bytes per second, for a span.
    Throttle(u64, Duration),
    /// New connections refused, for a span.
    Refuse(Duration),
}

/// The seeded sequence of (wait before it, fault).
pub struct Schedule {
    rng: StdRng,
    mean_ms: u64,
    stall: Duration,
}

impl Schedule {
    pub fn next_fault(&mut self) -> (Duration, Fault) {
        let rng = &mut self.rng;
        // Uniform in [0.5, 1.5] × the mean interval.
        let wait = Duration::from_millis(rng.random_range(self.mean_ms / 2..=self.mean_ms * 3 / 2));
        let pick = rng.random_range(0..1024usize);
        let ms =
            |rng: &mut StdRng, lo: u64, hi: u64| Duration::from_millis(rng.random_range(lo..=hi));
        let fault = match rng.random_range(0..100u32) {
            0..35 => Fault::CutOne(pick),
            35..48 => Fault::CutAll,
            48..72 => Fault::StallOne(pick, self.stall),
            72..84 => {
                let d = ms(rng, 5, 60);
                Fault::Delay(d, ms(rng, 100, 600))
            }
            84..94 => {
                let bps = rng.random_range(2_000..=50_000);
                Fault::Throttle(bps, ms(rng, 100, 500))
            }
            _ => Fault::Refuse(ms(rng, 100, 400)),
        };
        (wait, fault)
    }
}

/// A running [`Chaos`] schedule.
pub struct ChaosTask {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ChaosTask {
    /// Stops injecting new faults (the one in progress ends at once).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    async fn serve(self: Arc<Self>, client: TcpStream) {
        if self.refuse.load(Ordering::SeqCst) {
            lock(&self.faults).refused += 1;
            drop(client);
            return;
        }
        let upstream_addr = lock(&self.upstream).clone();
        let Ok(upstream) = TcpStream::connect(&upstream_addr).await else {
            // The server is down (killed): the client sees its connection closed.
            return;
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (cut_tx, cut_rx) = watch::channel(false);
        let stall_until = Arc::new(Mutex::new(None));
        lock(&self.conns).insert(
            id,
            Conn {
                cut: cut_tx,
                stall_until: stall_until.clone(),
            },
        );
        let (cr, cw) = client.into_split();
        let (ur, uw) = upstream.into_split();
        let up = pump(self.clone(), cr, uw, cut_rx.clone(), stall_until.clone());
        let down = pump(self.clone(), ur, cw, cut_rx, stall_until);
        // Either direction ending (EOF, error, cut) ends the pair: both sockets are dropped.
        tokio::select! {
            _ = up => {}
            _ = down => {}
        }
        lock(&self.conns).remove(&id);
    }
}

/// Forwards one direction until EOF, an error or a cut.
async fn pump(
    inner: Arc<Inner>,
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
    stall_until: Arc<Mutex<Option<Instant>>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !wait_stall(&stall_until, &mut cut).await {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = cut.changed() => return,
        };
        // A stall that began while reading holds these bytes too.
        if !wait_stall(&stall_until, &mut cut).await {
            return;
        }
        let delay = inner.delay_ms.load(Ordering::SeqCst);
        if delay > 0 && !pause(Duration::from_millis(delay), &mut cut).await {
            return;
        }
        let bps = inner.throttle_bps.load(Ordering::SeqCst);
        if let Some(us) = (n as u64 * 1_000_000).checked_div(bps) {
            if !pause(Duration::from_micros(us), &mut cut).await {
                return;
            }
        }
        tokio::select! {
            r = to.write_all(&buf[..n]) => if r.is_err() { return },
            _ = cut.changed() => return,
        }
    }
}

/// Sleeps `d` unless cut first; false when cut.
async fn pause(d: Duration, cut: &mut watch::Receiver<bool>) -> bool {
    if *cut.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = cut.changed() => false,
    }
}

/// Waits while the connection is stalled; false when cut meanwhile.
async fn wait_stall(stall_until: &Mutex<Option<Instant>>, cut: &mut watch::Receiver<bool>) -> bool {
    loop {
        if *cut.borrow() {
            return false;
        }
        let until = *lock(stall_until);
        match until {
            Some(t) if t > Instant::now() => {
                // Re-check at least every 50 ms so `heal` ends a stall promptly.
                let step = (t - Instant::now()).min(Duration::from_millis(50));
                if !pause(step, cut).await {
                    return false;
                }
            }
            _ => return true,
        }
    }
}
