//! What the three peer systems (NATS JetStream, Redis Streams, Mosquitto) share: the message
//! body, the publish pacing and in-flight window, and the bookkeeping that turns acks and
//! receipts into lost/duplicate counts and histograms. Each peer file only says how to send one
//! message and how its subscribers receive, so the three are measured the same way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::Notify;

use crate::model::{latency_histogram, FanoutOutcome, PairsOutcome};

/// Bytes of the body header: pair id (u32), sequence (u64), intended send time in µs (u64).
pub(crate) const HEADER_BYTES: usize = 20;

/// How long publishers wait for outstanding acks after the sending phase, and subscribers for
/// the next receipt while acked messages are missing. Acked but never delivered = lost.
pub(crate) const DRAIN: Duration = Duration::from_secs(10);

/// How long a publisher waits for its outstanding acks once it stopped sending.
pub(crate) const ACK_DRAIN: Duration = Duration::from_secs(30);

/// Upper bound on the subscribers' drain while deliveries still make progress (a slow
/// fan-out keeps delivering long after the last ack; stopping at 10 s would call it loss).
pub(crate) const DRAIN_CAP: Duration = Duration::from_secs(180);

/// Publish window for fan-out (its params have none): acks in flight from the one publisher.
pub(crate) const FANOUT_WINDOW: usize = 64;

/// Connections opened at once when a scenario needs many.
pub(crate) const CONNECT_PARALLELISM: usize = 128;

/// The shared time origin: bodies carry µs since it, so any task can compute latency.
#[derive(Clone, Copy)]
pub(crate) struct Clock(Instant);

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock(Instant::now())
    }
    pub(crate) fn now_us(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }
    pub(crate) fn us_of(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.0).as_micros() as u64
    }
}

/// Encodes a body of `size` bytes (at least [`HEADER_BYTES`]; smaller sizes are padded up to
/// the header, which the caller states).
pub(crate) fn encode(pair: u32, seq: u64, intended_us: u64, size: usize) -> Vec<u8> {
    let mut b = vec![b'x'; size.max(HEADER_BYTES)];
    b[0..4].copy_from_slice(&pair.to_le_bytes());
    b[4..12].copy_from_slice(&seq.to_le_bytes());
    b[12..20].copy_from_slice(&intended_us.to_le_bytes());
    b
}

/// `(pair, seq, intended_us)` from a body, `None` if it is too short.
pub(crate) fn decode(b: &[u8]) -> Option<(u32, u64, u64)> {
    let pair = u32::from_le_bytes(b.get(0..4)?.try_into().ok()?);
    let seq = u64::from_le_bytes(b.get(4..12)?.try_into().ok()?);
    let at = u64::from_le_bytes(b.get(12..20)?.try_into().ok()?);
    Some((pair, seq, at))
}

/// A growable bit set over sequence numbers.
#[derive(Default, Clone)]
pub(crate) struct Bits(Vec<u64>);

impl Bits {
    /// Sets `i`; returns whether it was already set.
    pub(crate) fn set(&mut self, i: u64) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        let was = self.0[w] & (1 << b) != 0;
        self.0[w] |= 1 << b;
        was
    }
    /// Members of `self` missing from `other`.
    pub(crate) fn missing_from(&self, other: &Bits) -> u64 {
        self.0
            .iter()
            .enumerate()
            .map(|(i, w)| (w & !other.0.get(i).copied().unwrap_or(0)).count_ones() as u64)
            .sum()
    }
    pub(crate) fn count(&self) -> u64 {
        self.0.iter().map(|w| w.count_ones() as u64).sum()
    }
}

/// When each publish is due: every `interval` after `start` (offset by a per-publisher phase
/// so publishers do not fire together), or `None` at saturation.
#[derive(Clone, Copy)]
pub(crate) struct Pacer {
    start: tokio::time::Instant,
    interval: Option<Duration>,
    phase: Duration,
}

impl Pacer {
    /// `rate` is the total across `publishers`; this is publisher `index`'s share.
    pub(crate) fn new(
        start: tokio::time::Instant,
        rate: Option<u64>,
        publishers: usize,
        index: usize,
    ) -> Pacer {
        let interval = rate
            .filter(|r| *r > 0)
            .map(|r| Duration::from_secs_f64(publishers as f64 / r as f64));
        let phase = interval
            .map(|i| i.mul_f64(index as f64 / publishers.max(1) as f64))
            .unwrap_or_default();
        Pacer {
            start,
            interval,
            phase,
        }
    }
    fn due(&self, seq: u64) -> Option<tokio::time::Instant> {
        self.interval
            .map(|i| self.start + self.phase + i.mul_f64(seq as f64))
    }
}

/// One publisher's work order.
pub(crate) struct PubPlan {
    pub(crate) pair: u32,
    pub(crate) body_bytes: usize,
    pub(crate) window: usize,
    pub(crate) pacer: Pacer,
    /// No publish is started at or after this instant.
    pub(crate) end: tokio::time::Instant,
    /// Stop after this many publishes (fan-out); `None` = until `end`.
    pub(crate) max_messages: Option<u64>,
    pub(crate) clock: Clock,
}

/// What one publisher saw.
pub(crate) struct PubLog {
    pub(crate) acked: Bits,
    pub(crate) acked_count: u64,
    pub(crate) sent: u64,
    /// Publishes that failed or were not acknowledged within [`ACK_DRAIN`] (not acked).
    pub(crate) failed: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) ack_us: Histogram<u64>,
    pub(crate) first_send: Option<Instant>,
    pub(crate) last_ack: Option<Instant>,
}

/// Publishes until `plan.end` (or `max_messages`), keeping at most `window` unacknowledged,
/// paced by `plan.pacer`. `send` starts one publish of the given body; its future resolves when
/// the system acknowledged it. Latency is measured from the intended send time, so a stalled
/// publisher shows up in the figures instead of hiding (coordinated omission).
pub(crate) async fn publish_loop<F>(plan: PubPlan, mut send: F) -> PubLog
where
    F: FnMut(Vec<u8>) -> BoxFuture<'static, anyhow::Result<()>>,
{
    let mut log = PubLog {
        acked: Bits::default(),
        acked_count: 0,
        sent: 0,
        failed: 0,
        first_error: None,
        ack_us: latency_histogram(),
        first_send: None,
        last_ack: None,
    };
    let mut inflight = FuturesUnordered::new();
    let mut seq = 0u64;
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let on_ack = |log: &mut PubLog, (s, at, res): (u64, u64, anyhow::Result<()>)| match res {
        Ok(()) => {
            let t = Instant::now();
            log.acked.set(s);
            log.acked_count += 1;
            log.last_ack = Some(t);
            log.ack_us
                .saturating_record(plan.clock.us_of(t).saturating_sub(at));
        }
        Err(e) => {
            log.failed += 1;
            log.first_error.get_or_insert_with(|| format!("{e:#}"));
        }
    };
    loop {
        // Take every ack that is already there before deciding what to do next.
        while let Some(Some(done)) = inflight.next().now_or_never() {
            on_ack(&mut log, done);
        }
        let now = tokio::time::Instant::now();
        let due = plan.pacer.due(seq);
        let more = now < plan.end
            && plan.max_messages.is_none_or(|m| seq < m)
            && due.is_none_or(|d| d < plan.end);
        if !more && inflight.is_empty() {
            break;
        }
        if !more && drain_deadline.is_none() {
            drain_deadline = Some(now + ACK_DRAIN);
        }
        let can_send = more && inflight.len() < plan.window.max(1);
        if can_send && due.is_none_or(|d| d <= now) {
            // Due now (or saturation): send without a timer (timers tick at 1 ms).
            let intended = due.map(|d| d.into_std()).unwrap_or_else(Instant::now);
            let at = plan.clock.us_of(intended);
            let body = encode(plan.pair, seq, at, plan.body_bytes);
            log.first_send.get_or_insert_with(Instant::now);
            let fut = send(body);
            let s = seq;
            inflight.push(async move { (s, at, fut.await) });
            seq += 1;
            log.sent += 1;
            continue;
        }
        let wake = due.unwrap_or(now).min(plan.end);
        tokio::select! {
            biased;
            Some(done) = inflight.next(), if !inflight.is_empty() => on_ack(&mut log, done),
            _ = tokio::time::sleep_until(wake), if can_send => {}
            _ = tokio::time::sleep_until(plan.end), if more && !can_send => {}
            _ = tokio::time::sleep_until(drain_deadline.unwrap_or(now)), if drain_deadline.is_some() => {
                log.failed += inflight.len() as u64;
                log.first_error.get_or_insert_with(|| {
                    format!("{} publishes not acknowledged within {ACK_DRAIN:?}", inflight.len())
                });
                break;
            }
        }
    }
    log
}

/// One subscriber's receipts.
#[derive(Default)]
pub(crate) struct Recv {
    pub(crate) seen: Bits,
    pub(crate) dups: u64,
    /// Bodies that did not decode or carried another pair's id.
    pub(crate) foreign: u64,
}

/// All subscribers of one run: receipts per subscriber, one latency histogram, and a wake-up
/// for the drain wait.
pub(crate) struct Sinks {
    pub(crate) clock: Clock,
    pub(crate) recv: Vec<Mutex<Recv>>,
    pub(crate) latency: Mutex<Histogram<u64>>,
    pub(crate) receipts: AtomicU64,
    /// When the latest receipt happened, µs on `clock`.
    pub(crate) last_us: AtomicU64,
    pub(crate) notify: Notify,
}

impl Sinks {
    pub(crate) fn new(clock: Clock, subscribers: usize) -> Arc<Sinks> {
        Arc::new(Sinks {
            clock,
            recv: (0..subscribers)
                .map(|_| Mutex::new(Recv::default()))
                .collect(),
            latency: Mutex::new(latency_histogram()),
            receipts: AtomicU64::new(0),
            last_us: AtomicU64::new(0),
            notify: Notify::new(),
        })
    }

    /// Records that subscriber `sub` received `body`; `expect_pair` checks the routing (pairs).
    pub(crate) fn record(&self, sub: usize, body: &[u8], expect_pair: Option<u32>) {
        let now = self.clock.now_us();
        let Some(r) = self.recv.get(sub) else { return };
        let mut r = r
            .lock()
            .expect("receipt lock is never poisoned: no panics while held");
        match decode(body) {
            Some((pair, seq, at)) if expect_pair.is_none_or(|p| p == pair) => {
                if r.seen.set(seq) {
                    r.dups += 1;
                } else {
                    drop(r);
                    self.latency
                        .lock()
                        .expect("histogram lock is never poisoned: no panics while held")
                        .saturating_record(now.saturating_sub(at));
                }
            }
            _ => r.foreign += 1,
        }
        self.receipts.fetch_add(1, Ordering::Relaxed);
        self.last_us.fetch_max(now, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// Acked messages subscriber `sub` has not received; `expected` is what it should get.
    fn missing(&self, sub: usize, expected: &Bits) -> u64 {
        self.recv.get(sub).map_or(expected.count(), |r| {
            expected.missing_from(&r.lock().expect("receipt lock is never poisoned").seen)
        })
    }

    /// Waits until every subscriber has every message in its expected set, or until no
    /// receipt arrived for [`DRAIN`] (delivery stalled), or [`DRAIN_CAP`] in all.
    pub(crate) async fn drain<'a>(&self, expected: impl Fn(usize) -> &'a Bits) {
        let cap = tokio::time::Instant::now() + DRAIN_CAP;
        loop {
            let missing: u64 = (0..self.recv.len())
                .map(|i| self.missing(i, expected(i)))
                .sum();
            if missing == 0 {
                return;
            }
            let idle = (tokio::time::Instant::now() + DRAIN).min(cap);
            if tokio::time::timeout_at(idle, self.notify.notified())
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Builds the pairs outcome: publisher `i` feeds subscriber `i`.
pub(crate) fn pairs_outcome(logs: &[PubLog], sinks: &Sinks) -> PairsOutcome {
    let mut acked = 0;
    let mut lost = 0;
    let mut dups = 0;
    let mut ack_us = latency_histogram();
    for (i, log) in logs.iter().enumerate() {
        acked += log.acked_count;
        lost += sinks.missing(i, &log.acked);
        let _ = ack_us.add(&log.ack_us);
    }
    for r in &sinks.recv {
        dups += r.lock().expect("receipt lock is never poisoned").dups;
    }
    report_anomalies(logs, sinks);
    PairsOutcome {
        acked,
        delivered: acked - lost,
        lost,
        duplicates: dups,
        elapsed: span(logs),
        e2e_us: sinks
            .latency
            .lock()
            .expect("histogram lock is never poisoned")
            .clone(),
        ack_us,
    }
}

/// Builds the fan-out outcome: one publisher feeds every subscriber.
pub(crate) fn fanout_outcome(log: &PubLog, sinks: &Sinks) -> FanoutOutcome {
    let mut lost = 0;
    let mut dups = 0;
    for i in 0..sinks.recv.len() {
        lost += sinks.missing(i, &log.acked);
        dups += sinks.recv[i]
            .lock()
            .expect("receipt lock is never poisoned")
            .dups;
    }
    let n = sinks.recv.len() as u64;
    let deliveries = log.acked_count * n - lost;
    let elapsed = log.first_send.map_or(Duration::ZERO, |f| {
        let last = sinks.last_us.load(Ordering::Relaxed);
        Duration::from_micros(last.saturating_sub(sinks.clock.us_of(f)))
    });
    report_anomalies(std::slice::from_ref(log), sinks);
    FanoutOutcome {
        published: log.acked_count,
        deliveries,
        lost,
        duplicates: dups,
        elapsed,
        latency_us: sinks
            .latency
            .lock()
            .expect("histogram lock is never poisoned")
            .clone(),
    }
}

/// First publish to last acknowledgement across publishers.
fn span(logs: &[PubLog]) -> Duration {
    let first = logs.iter().filter_map(|l| l.first_send).min();
    let last = logs.iter().filter_map(|l| l.last_ack).max();
    match (first, last) {
        (Some(f), Some(l)) => l.saturating_duration_since(f),
        _ => Duration::ZERO,
    }
}

/// Failed publishes and foreign bodies are not part of the outcome's fields; say them.
fn report_anomalies(logs: &[PubLog], sinks: &Sinks) {
    let failed: u64 = logs.iter().map(|l| l.failed).sum();
    if failed > 0 {
        let why = logs
            .iter()
            .find_map(|l| l.first_error.clone())
            .unwrap_or_default();
        eprintln!("warning: {failed} publishes were not acknowledged (first: {why})");
    }
    let foreign: u64 = sinks
        .recv
        .iter()
        .map(|r| r.lock().expect("receipt lock is never poisoned").foreign)
        .sum();
    if foreign > 0 {
        eprintln!("warning: {foreign} received bodies were malformed or misrouted");
    }
}
