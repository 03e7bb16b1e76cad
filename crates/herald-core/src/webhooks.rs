//! Which webhooks an event goes to: the decision of what to enqueue in the durable outbox.
//!
//! The engine asks [`targets`] for every event it records and hands the answer to the store,
//! which writes the event and one outbox row per target in one commit. Sending is the
//! server's job; this module knows no HTTP.

use herald_store::NewEvent;

/// Event kinds the engine records, for validating webhook subscriptions.
pub const EVENT_KINDS: &[&str] = &[
    "eviction",
    "resume_failed",
    "gap",
    "kick",
    "identity_rejected",
    WEBHOOK_FAILED,
];

/// The kind of the event recorded when a webhook delivery keeps failing.
pub const WEBHOOK_FAILED: &str = "webhook_failed";

/// Subscribes to every kind.
pub const ALL_KINDS: &str = "*";

/// One configured webhook, as far as routing is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRoute {
    /// The webhook's URL; also its identity in the outbox.
    pub target: String,
    /// Event kinds it wants; [`ALL_KINDS`] matches every kind.
    pub kinds: Vec<String>,
}

impl WebhookRoute {
    /// Whether this webhook gets `e`. A `webhook_failed` event is never sent to the webhook
    /// it reports on: that one is failing, and a report about it would fail too.
    pub fn wants(&self, e: &NewEvent) -> bool {
        let kind_matches = self.kinds.iter().any(|k| k == ALL_KINDS || *k == e.kind);
        kind_matches && !(e.kind == WEBHOOK_FAILED && failed_webhook(e) == Some(&self.target))
    }
}

/// The webhook a `webhook_failed` event reports on (`data.webhook`).
pub fn failed_webhook(e: &NewEvent) -> Option<&String> {
    match e.data.get("webhook") {
        Some(serde_json::Value::String(url)) => Some(url),
        _ => None,
    }
}

/// The targets of every route that wants `e`, in configuration order.
pub fn targets(routes: &[WebhookRoute], e: &NewEvent) -> Vec<String> {
    routes
        .iter()
        .filter(|r| r.wants(e))
        .map(|r| r.target.clone())
        .collect()
}

impl crate::Engine {
    /// Records a `webhook_failed` event (the server's webhook dispatcher reports here). `data`
    /// must name the failing webhook as `data.webhook`, so the report is not queued for it.
    pub fn record_webhook_failed(&self, data: serde_json::Value) {
        self.record_event(WEBHOOK_FAILED, None, None, None, None, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, data: serde_json::Value) -> NewEvent {
        NewEvent {
            ts: 1,
            kind: kind.into(),
            uid: None,
            device: None,
            session: None,
            conn: None,
            data,
        }
    }

    fn route(target: &str, kinds: &[&str]) -> WebhookRoute {
        WebhookRoute {
            target: target.into(),
            kinds: kinds.iter().map(|k| k.to_string()).collect(),
        }
    }

    #[test]
    fn kinds_and_wildcard_select_targets() {
        let routes = [
            route("http://a", &["*"]),
            route("http://b", &["eviction", "kick"]),
            route("http://c", &["gap"]),
        ];
        let to = |kind| targets(&routes, &event(kind, serde_json::json!({})));
        assert_eq!(to("eviction"), ["http://a", "http://b"]);
        assert_eq!(to("gap"), ["http://a", "http://c"]);
        assert_eq!(to("resume_failed"), ["http://a"]);
        assert!(targets(&[], &event("gap", serde_json::json!({}))).is_empty());
    }

    #[test]
    fn a_failure_report_never_goes_to_the_failing_webhook() {
        let routes = [route("http://a", &["*"]), route("http://b", &["*"])];
        let about_a = event(WEBHOOK_FAILED, serde_json::json!({"webhook": "http://a"}));
        assert_eq!(targets(&routes, &about_a), ["http://b"]);
        let about_b = event(WEBHOOK_FAILED, serde_json::json!({"webhook": "http://b"}));
        assert_eq!(targets(&routes, &about_b), ["http://a"]);
    }
}
