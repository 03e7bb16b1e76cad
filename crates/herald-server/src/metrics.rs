//! Metrics of the transports (WebSocket bytes and closes, HTTP API errors). The engine's own
//! metrics live in `herald_core::metrics`; both are registered in `app.rs` and documented in
//! `docs/metrics.md`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CloseCode {
    pub(crate) code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ErrCode {
    pub(crate) code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Reason {
    pub(crate) reason: &'static str,
}

/// Cheap to clone: every field shares its value with the clones.
#[derive(Clone, Debug, Default)]
pub(crate) struct ServerMetrics {
    /// Payload bytes of WebSocket text and binary frames received.
    pub(crate) ws_received_bytes: Counter,
    /// Payload bytes of WebSocket text frames sent.
    pub(crate) ws_sent_bytes: Counter,
    /// Close frames the server sent, by close code.
    pub(crate) ws_closes: Family<CloseCode, Counter>,
    /// HTTP API error answers (`{"error":{"code":…}}`), by code.
    pub(crate) http_errors: Family<ErrCode, Counter>,
    /// Connections the listener refused or closed to make room, by reason.
    pub(crate) connections_refused: Family<Reason, Counter>,
    /// Connections open now (HTTP and WebSocket), as the listener counts them.
    pub(crate) connections_open: prometheus_client::metrics::gauge::Gauge,
}

impl ServerMetrics {
    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "herald_ws_received_bytes",
            "Payload bytes of WebSocket frames received from clients",
            self.ws_received_bytes.clone(),
        );
        r.register(
            "herald_ws_sent_bytes",
            "Payload bytes of WebSocket text frames sent to clients",
            self.ws_sent_bytes.clone(),
        );
        r.register(
            "herald_ws_closes",
            "WebSocket close frames sent by the server, by close code",
            self.ws_closes.clone(),
        );
        r.register(
            "herald_http_errors",
            "HTTP API error answers, by error code",
            self.http_errors.clone(),
        );
        r.register(
            "herald_connections_refused",
            "TCP connections refused (max_connections, max_connections_per_ip) or closed without a request to make room (evicted_idle), by reason",
            self.connections_refused.clone(),
        );
        r.register(
            "herald_tcp_connections",
            "Open TCP connections, HTTP and WebSocket (what server.max_connections counts)",
            self.connections_open.clone(),
        );
    }

    pub(crate) fn connection_refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&Reason { reason })
            .inc();
    }

    pub(crate) fn closed(&self, code: u16) {
        self.ws_closes.get_or_create(&CloseCode { code }).inc();
    }

    pub(crate) fn http_error(&self, code: &'static str) {
        self.http_errors.get_or_create(&ErrCode { code }).inc();
    }
}
