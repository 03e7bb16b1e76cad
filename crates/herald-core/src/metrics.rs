//! Engine metrics (Prometheus). The engine counts; the binary registers and serves them.
//! Every series is documented in `docs/metrics.md`; keep the two in step.

use std::sync::Weak;
use std::time::Duration;

use herald_store::{CommitObserver, SessionState};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::engine::EngineInner;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

/// Buckets for message latencies, in seconds: 1 ms to about 65 s (doubling), then `+Inf`.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 17)
}

#[derive(Debug)]
pub struct Metrics {
    /// Connections currently attached to a session.
    pub connections: Gauge,
    /// Messages stored (WebSocket and HTTP publishes, receipts).
    pub publishes: Counter,
    /// Publishes answered as duplicates of an idempotency key.
    pub publish_duplicates: Counter,
    /// `msg` frames written to connections.
    pub deliveries: Counter,
    /// Deliveries of an offset the session had already been sent before (after a resume).
    pub redeliveries: Counter,
    pub acks: Counter,
    pub gaps: Counter,
    /// Times a session hit `max_inflight` and waited for acks.
    pub flow_stalls: Counter,
    pub evictions: Family<ReasonLabel, Counter>,
    pub resumes: Family<OutcomeLabel, Counter>,
    pub errors: Family<CodeLabel, Counter>,
    /// Store writes that failed (nothing acknowledged).
    pub store_failures: Counter,
    /// Seconds from a message's `ts` (stored) to its first `msg` frame to a session.
    pub delivery_latency: Histogram,
    /// Seconds from a message's `ts` to the ack that covered it (on the acking connection).
    pub ack_latency: Histogram,
    /// The store writer's transactions (see [`StoreObserver`]).
    pub store: StoreObserver,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            connections: Gauge::default(),
            publishes: Counter::default(),
            publish_duplicates: Counter::default(),
            deliveries: Counter::default(),
            redeliveries: Counter::default(),
            acks: Counter::default(),
            gaps: Counter::default(),
            flow_stalls: Counter::default(),
            evictions: Family::default(),
            resumes: Family::default(),
            errors: Family::default(),
            store_failures: Counter::default(),
            delivery_latency: Histogram::new(latency_buckets()),
            ack_latency: Histogram::new(latency_buckets()),
            store: StoreObserver::default(),
        }
    }
}

impl Metrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "herald_connections",
            "Connections attached to a session",
            self.connections.clone(),
        );
        r.register(
            "herald_publishes",
            "Messages stored",
            self.publishes.clone(),
        );
        r.register(
            "herald_publish_duplicates",
            "Publishes answered as idempotent duplicates",
            self.publish_duplicates.clone(),
        );
        r.register(
            "herald_deliveries",
            "msg frames sent",
            self.deliveries.clone(),
        );
        r.register(
            "herald_redeliveries",
            "msg frames sent again after a resume",
            self.redeliveries.clone(),
        );
        r.register("herald_acks", "ack frames applied", self.acks.clone());
        r.register("herald_gaps", "gap frames sent", self.gaps.clone());
        r.register(
            "herald_flow_stalls",
            "Times a session waited for acks at max_inflight",
            self.flow_stalls.clone(),
        );
        r.register(
            "herald_evictions",
            "Evictions by reason",
            self.evictions.clone(),
        );
        r.register(
            "herald_resumes",
            "Resume attempts by outcome",
            self.resumes.clone(),
        );
        r.register(
            "herald_errors",
            "err frames sent, by code",
            self.errors.clone(),
        );
        r.register(
            "herald_store_failures",
            "Store writes that could not be made durable",
            self.store_failures.clone(),
        );
        r.register(
            "herald_delivery_latency_seconds",
            "Seconds from a message being stored to its first msg frame to a session",
            self.delivery_latency.clone(),
        );
        r.register(
            "herald_ack_latency_seconds",
            "Seconds from a message being stored to the client's ack covering it",
            self.ack_latency.clone(),
        );
        self.store.register(r);
    }

    pub fn eviction(&self, reason: &str) {
        self.evictions
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn resume(&self, outcome: &str) {
        self.resumes
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn error(&self, code: &str) {
        self.errors
            .get_or_create(&CodeLabel {
                code: code.to_string(),
            })
            .inc();
    }

    /// Observes a message latency of `ms` milliseconds into `h`.
    pub(crate) fn observe_ms(h: &Histogram, ms: u64) {
        h.observe(ms as f64 / 1000.0);
    }
}

/// Commit latency and batch size of the store's writer, observed on its thread per
/// transaction. Cheap: a histogram observation takes a short uncontended lock.
#[derive(Debug, Clone)]
pub struct StoreObserver {
    /// Seconds per committed transaction, `BEGIN` to the end of `COMMIT` (fsync included).
    pub commit_seconds: Histogram,
    /// Operations (appends, cursor moves, session writes, events…) per committed transaction.
    pub batch_ops: Histogram,
    /// Transactions rolled back because they could not be made durable.
    pub failed_commits: Counter,
    /// Committed transactions and their microseconds in all: the histogram's count and sum,
    /// readable for the live overview (`GET /v1/overview`); not registered.
    pub commits: Counter,
    pub commit_micros: Counter,
}

impl Default for StoreObserver {
    fn default() -> Self {
        StoreObserver {
            // 50 µs to about 1.6 s.
            commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            // 1 to 4096 operations.
            batch_ops: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            failed_commits: Counter::default(),
            commits: Counter::default(),
            commit_micros: Counter::default(),
        }
    }
}

impl StoreObserver {
    fn register(&self, r: &mut Registry) {
        r.register(
            "herald_store_commit_seconds",
            "Duration of each committed store transaction (group commit), fsync included",
            self.commit_seconds.clone(),
        );
        r.register(
            "herald_store_commit_batch_size",
            "Operations per committed store transaction",
            self.batch_ops.clone(),
        );
        r.register(
            "herald_store_failed_commits",
            "Store transactions rolled back because they could not be made durable",
            self.failed_commits.clone(),
        );
    }
}

impl CommitObserver for StoreObserver {
    fn batch(&self, ops: usize, elapsed: Duration, committed: bool) {
        if committed {
            self.commit_seconds.observe(elapsed.as_secs_f64());
            self.batch_ops.observe(ops as f64);
            self.commits.inc();
            self.commit_micros.inc_by(elapsed.as_micros() as u64);
        } else {
            self.failed_commits.inc();
        }
    }
}

/// `herald_sessions{state}`, counted from the engine's sessions when scraped.
pub(crate) struct SessionGauges {
    pub(crate) engine: Weak<EngineInner>,
}

impl std::fmt::Debug for SessionGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionGauges")
    }
}

impl Collector for SessionGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (connected, disconnected) = match self.engine.upgrade() {
            Some(inner) => inner.session_counts(),
            None => (0, 0),
        };
        let family = Family::<StateLabel, Gauge>::default();
        for (state, n) in [
            (SessionState::Connected, connected),
            (SessionState::Disconnected, disconnected),
        ] {
            family
                .get_or_create(&StateLabel {
                    state: state.as_str(),
                })
                .set(n);
        }
        let metric = encoder.encode_descriptor(
            "herald_sessions",
            "Open sessions by state (connected, disconnected = inside the reconnect window).",
            None,
            family.metric_type(),
        )?;
        family.encode(metric)
    }
}
