//! Engine metrics (Prometheus). The engine counts; the binary registers and serves them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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

#[derive(Default, Debug)]
pub struct Metrics {
    /// Connections currently attached to a session.
    pub connections: Gauge,
    pub sessions_connected: Gauge,
    pub sessions_disconnected: Gauge,
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
}

impl Metrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "herald_connections",
            "Connections attached to a session",
            self.connections.clone(),
        );
        r.register(
            "herald_sessions_connected",
            "Sessions with a live connection",
            self.sessions_connected.clone(),
        );
        r.register(
            "herald_sessions_disconnected",
            "Sessions inside their reconnect window",
            self.sessions_disconnected.clone(),
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
}
