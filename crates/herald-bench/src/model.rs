//! What every scenario asks of a system and what it gets back. Each system (herald, the raw
//! relay, each peer) implements [`System`]; scenarios only talk to this trait, so a table can
//! put them side by side.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use hdrhistogram::Histogram;
use serde::Serialize;

/// Scenario 1: P publisher/subscriber pairs, each publisher sending to its own subscriber.
#[derive(Debug, Clone, Serialize)]
pub struct PairsParams {
    pub pairs: usize,
    pub body_bytes: usize,
    /// Total offered rate in messages/s across all pairs; `None` = saturation (each publisher
    /// keeps `window` unacknowledged publishes in flight).
    pub rate: Option<u64>,
    pub window: usize,
    /// How long publishers send; then the run drains (bounded) and counts.
    pub duration: Duration,
}

/// What a pairs run measured. Latencies are in microseconds.
#[derive(Debug, Clone)]
pub struct PairsOutcome {
    /// Publishes the system acknowledged.
    pub acked: u64,
    /// Distinct acknowledged messages that reached their subscriber.
    pub delivered: u64,
    /// Acknowledged messages that never reached their subscriber (must be 0).
    pub lost: u64,
    /// Messages a subscriber received more than once (must be 0).
    pub duplicates: u64,
    /// From the first publish to the last acknowledgement.
    pub elapsed: Duration,
    /// End to end: intended send time (so a stalled sender is not hidden) to subscriber receipt.
    pub e2e_us: Histogram<u64>,
    /// Publish to acknowledgement.
    pub ack_us: Histogram<u64>,
}

/// Scenario 2: one channel/subject/topic to N subscribers.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutParams {
    pub subscribers: usize,
    pub body_bytes: usize,
    /// Messages published to the channel (one publisher).
    pub messages: u64,
    /// Offered publish rate in messages/s; `None` = as fast as acknowledgements allow.
    pub rate: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct FanoutOutcome {
    pub published: u64,
    /// Total deliveries counted across subscribers (expected: published × subscribers).
    pub deliveries: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// First publish to last delivery.
    pub elapsed: Duration,
    /// Publish to each subscriber's receipt.
    pub latency_us: Histogram<u64>,
}

/// A system under test, started fresh (its own empty data directory) for each measurement.
#[async_trait]
pub trait System: Send {
    /// Name in tables and JSON, e.g. `herald (fsync)`, `NATS JetStream`.
    fn name(&self) -> String;
    /// One sentence: what an acknowledgement guarantees (fsync or not), shown next to figures.
    fn ack_guarantee(&self) -> &'static str;
    /// What fan-out means for this system, if it differs from its pairs semantics.
    fn fanout_note(&self) -> Option<&'static str> {
        None
    }
    /// Starts the system on loopback with its data under `dir` (created and empty).
    async fn start(&mut self, dir: &Path) -> anyhow::Result<()>;
    async fn pairs(&mut self, p: &PairsParams) -> anyhow::Result<PairsOutcome>;
    /// Fan-out; systems that do not take part return [`Unsupported`].
    async fn fanout(&mut self, _p: &FanoutParams) -> anyhow::Result<FanoutOutcome> {
        Err(Unsupported.into())
    }
    /// Stops the system and its processes (also done on drop, as a safety net).
    async fn stop(&mut self) -> anyhow::Result<()>;
    /// Process ids of the running server(s), so a scenario can read their CPU time (a figure
    /// that drifts less with machine load than throughput does). Empty = not reported.
    fn server_pids(&self) -> Vec<u32> {
        Vec::new()
    }
}

/// A scenario the system does not take part in.
#[derive(Debug, thiserror::Error)]
#[error("scenario not supported by this system")]
pub struct Unsupported;

/// Latency histogram in microseconds, 1 µs .. 60 s, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}
