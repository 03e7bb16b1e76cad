//! Webhook delivery: the dispatcher that POSTs the store's outbox to the configured webhooks.
//!
//! Which webhooks an event goes to is decided in the engine (`herald_core::webhooks`) when the
//! event is recorded, and the store writes one outbox row per webhook in the event's commit.
//! This module only sends: it takes due rows, POSTs each row's exact body signed with the
//! webhook's secret, and marks the row delivered (2xx) or failed (anything else, including
//! timeouts and refused connections), with the next attempt pushed back exponentially (capped,
//! with jitter). Rows live in the database, so deliveries not made before a crash or shutdown
//! are made after the restart: delivery is at least once, and receivers dedupe by
//! `X-Herald-Event-Id`.
//!
//! After `failed_after_attempts` failures of one delivery, a `webhook_failed` event is
//! recorded (retries go on). That event is never queued for the failing webhook itself, and
//! the failure of a `webhook_failed` delivery records no further event, so failures cannot
//! feed each other.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use herald_core::webhooks::WEBHOOK_FAILED;
use herald_core::Engine;
use herald_store::{OutboxDelivery, StoreError};
use hmac::{Hmac, Mac};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rand::Rng;
use sha2::Sha256;
use tokio::sync::broadcast::error::RecvError;
use tracing::{debug, info, warn};

use crate::config::{Config, WebhookEntry};
use crate::shutdown::ShutdownSignal;

/// Signature header: `sha256=<hex HMAC-SHA256 of the body>`.
pub(crate) const SIGNATURE_HEADER: &str = "x-herald-signature";
pub(crate) const EVENT_ID_HEADER: &str = "x-herald-event-id";
pub(crate) const EVENT_TYPE_HEADER: &str = "x-herald-event-type";
/// 1 for the first attempt of a delivery, 2 for the first retry, …
pub(crate) const ATTEMPT_HEADER: &str = "x-herald-attempt";

/// Deliveries taken from the outbox (and sent concurrently) per round.
const BATCH: usize = 64;
/// Longest sleep while nothing is due (new events also wake the dispatcher).
const IDLE_POLL: Duration = Duration::from_secs(5);
/// Pause after the store failed to answer.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// Longest error text kept per delivery.
const MAX_ERROR_LEN: usize = 500;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Webhook metrics, registered with the server's registry.
#[derive(Debug, Default)]
pub(crate) struct WebhookMetrics {
    /// Delivery attempts by result: `ok`, `error`, or `dropped` (given up).
    deliveries: Family<ResultLabel, Counter>,
    /// Deliveries waiting in the outbox.
    pending: Gauge,
}

impl WebhookMetrics {
    pub(crate) fn register(&self, r: &mut Registry) {
        // The usual results exist from the start, so alerts see a 0 rather than no series.
        for result in ["ok", "error"] {
            let _ = self.deliveries.get_or_create(&ResultLabel { result });
        }
        r.register(
            "herald_webhook_deliveries",
            "Webhook delivery attempts by result (ok, error, dropped)",
            self.deliveries.clone(),
        );
        r.register(
            "herald_webhook_pending",
            "Webhook deliveries waiting in the outbox",
            self.pending.clone(),
        );
    }

    fn count(&self, result: &'static str) {
        self.deliveries.get_or_create(&ResultLabel { result }).inc();
    }
}

/// `sha256=<lowercase hex HMAC-SHA256 of body keyed with secret>`.
pub(crate) fn signature(secret: &[u8], body: &[u8]) -> String {
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret) else {
        unreachable!("HMAC takes keys of any length")
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 2 * digest.len());
    out.push_str("sha256=");
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Delay before the next attempt after `failures` failed ones (1 or more): `initial_ms`
/// doubled per earlier failure, capped at `max_ms`, then jittered down by up to half
/// (`jitter` in `[0, 1)`), so the result is in `[d/2, d]` for the capped delay `d`.
pub(crate) fn backoff_ms(initial_ms: u64, max_ms: u64, failures: u32, jitter: f64) -> u64 {
    let doublings = failures.saturating_sub(1).min(63);
    let delay = initial_ms
        .checked_shl(doublings)
        .filter(|d| d >> doublings == initial_ms)
        .unwrap_or(u64::MAX)
        .min(max_ms)
        .max(1);
    let half = delay / 2;
    let spread = ((delay - half) as f64 * jitter.clamp(0.0, 1.0)) as u64;
    (delay - spread.min(delay - half)).max(1)
}

/// One configured webhook, ready to send to.
struct Hook {
    url: reqwest::Url,
    secret: Vec<u8>,
    timeout: Duration,
    retry_initial_ms: u64,
    retry_max_ms: u64,
    failed_after_attempts: u32,
}

impl Hook {
    fn new(w: &WebhookEntry) -> Result<Hook, String> {
        let url = reqwest::Url::parse(&w.url).map_err(|e| format!("{}: {e}", w.url))?;
        Ok(Hook {
            url,
            secret: w.secret.as_bytes().to_vec(),
            timeout: Duration::from_millis(w.timeout_ms),
            retry_initial_ms: w.retry_initial_ms,
            retry_max_ms: w.retry_max_ms,
            failed_after_attempts: w.failed_after_attempts,
        })
    }
}

/// Why a dispatcher could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DispatcherError {
    #[error("invalid webhook url {0}")]
    Url(String),
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Sends the outbox. See the module docs.
pub(crate) struct Dispatcher {
    engine: Engine,
    /// By URL, the webhook's identity in the outbox.
    hooks: HashMap<String, Hook>,
    client: reqwest::Client,
    metrics: Arc<WebhookMetrics>,
    /// Deliveries older than this are given up; 0 = never.
    max_age_ms: u64,
}

impl Dispatcher {
    pub(crate) fn new(
        engine: Engine,
        cfg: &Config,
        metrics: Arc<WebhookMetrics>,
    ) -> Result<Dispatcher, DispatcherError> {
        let hooks = cfg
            .webhooks
            .iter()
            .map(|w| Ok((w.url.clone(), Hook::new(w).map_err(DispatcherError::Url)?)))
            .collect::<Result<HashMap<_, _>, DispatcherError>>()?;
        let client = reqwest::Client::builder()
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            // A redirect is an answer the webhook should fix, not follow blindly.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Dispatcher {
            engine,
            hooks,
            client,
            metrics,
            max_age_ms: cfg.retention.tombstone_ms,
        })
    }

    /// Delivers until `stop` fires. Rows in flight at that moment stay in the outbox and are
    /// sent again after the restart.
    pub(crate) async fn run(self, mut stop: ShutdownSignal) {
        let mut wake = Some(self.engine.subscribe_events());
        if !self.hooks.is_empty() {
            info!(webhooks = self.hooks.len(), "webhook dispatcher started");
        }
        loop {
            let (pause, pending) = tokio::select! {
                p = self.step() => p,
                _ = stop.wait() => return,
            };
            if self.hooks.is_empty() && pending == Some(0) {
                // Nothing configured and nothing left from an earlier configuration: no
                // event will ever be queued.
                return;
            }
            if pause.is_zero() {
                continue;
            }
            let woken = async {
                match wake.as_mut() {
                    Some(rx) => match rx.recv().await {
                        Ok(_) | Err(RecvError::Lagged(_)) => true,
                        Err(RecvError::Closed) => false,
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                open = woken => if !open { wake = None },
                _ = stop.wait() => return,
            }
        }
    }

    /// One round: sends what is due. Returns how long to wait before the next round (zero
    /// when more may be due right away) and, when it was read, how many deliveries are
    /// pending.
    async fn step(&self) -> (Duration, Option<u64>) {
        let now = self.engine.now_ms();
        let store = self.engine.store();
        match store.due_deliveries(now, BATCH).await {
            Ok(due) if !due.is_empty() => {
                let full = due.len() == BATCH;
                join_all(due.into_iter().map(|d| self.deliver(d))).await;
                if full {
                    return (Duration::ZERO, None);
                }
            }
            Ok(_) => {}
            Err(e) => return (self.store_failed(&e), None),
        }
        match store.outbox_status().await {
            Ok(status) => {
                self.metrics
                    .pending
                    .set(i64::try_from(status.pending).unwrap_or(i64::MAX));
                let now = self.engine.now_ms();
                let pause = match status.next_attempt_ms {
                    Some(next) if next <= now => Duration::ZERO,
                    Some(next) => Duration::from_millis(next - now).min(IDLE_POLL),
                    None => IDLE_POLL,
                };
                (pause, Some(status.pending))
            }
            Err(e) => (self.store_failed(&e), None),
        }
    }

    fn store_failed(&self, e: &StoreError) -> Duration {
        if !matches!(e, StoreError::Closed) {
            warn!(error = %e, "webhook outbox unreadable; retrying");
        }
        STORE_RETRY
    }

    /// Sends one delivery and records the outcome.
    async fn deliver(&self, d: OutboxDelivery) {
        let store = self.engine.store();
        let Some(hook) = self.hooks.get(&d.target) else {
            warn!(webhook = %d.target, event_id = d.event_id,
                "webhook delivery dropped: the webhook is no longer configured");
            self.drop_delivery(&d).await;
            return;
        };
        let now = self.engine.now_ms();
        if self.max_age_ms > 0 && now.saturating_sub(d.created_ms) > self.max_age_ms {
            warn!(webhook = %d.target, event_id = d.event_id, attempts = d.attempts,
                last_error = d.last_error.as_deref().unwrap_or(""),
                "webhook delivery dropped: older than retention.tombstone_ms");
            self.drop_delivery(&d).await;
            return;
        }
        let attempt = d.attempts.saturating_add(1);
        match self.post(hook, &d, attempt).await {
            Ok(()) => {
                self.metrics.count("ok");
                if d.attempts > 0 {
                    info!(webhook = %d.target, event_id = d.event_id, attempt,
                        "webhook delivered after retries");
                }
                if let Err(e) = store.mark_delivered(d.id).await {
                    // Sent but not marked: it will be sent again (at least once).
                    warn!(error = %e, webhook = %d.target, event_id = d.event_id,
                        "webhook delivered but not marked; it will be sent again");
                }
            }
            Err(error) => {
                self.metrics.count("error");
                let jitter = rand::rng().random::<f64>();
                let delay = backoff_ms(hook.retry_initial_ms, hook.retry_max_ms, attempt, jitter);
                let next = now.saturating_add(delay);
                debug!(webhook = %d.target, event_id = d.event_id, attempt, %error,
                    retry_in_ms = delay, "webhook delivery failed");
                match store.mark_failed(d.id, next, &error).await {
                    Ok(failures) if failures == hook.failed_after_attempts => {
                        self.report_failure(&d, failures, &error, next)
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(error = %e, webhook = %d.target, event_id = d.event_id,
                            "webhook failure could not be recorded")
                    }
                }
            }
        }
    }

    /// POSTs the delivery's body. `Err` says why it did not count as delivered.
    async fn post(&self, hook: &Hook, d: &OutboxDelivery, attempt: u32) -> Result<(), String> {
        let response = self
            .client
            .post(hook.url.clone())
            .timeout(hook.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature(&hook.secret, d.body.as_bytes()))
            .header(EVENT_ID_HEADER, d.event_id.to_string())
            .header(EVENT_TYPE_HEADER, d.kind.as_str())
            .header(ATTEMPT_HEADER, attempt.to_string())
            .body(d.body.clone())
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {status}"))
        }
    }

    /// Records `webhook_failed` once a delivery reached the webhook's failure threshold.
    fn report_failure(&self, d: &OutboxDelivery, attempts: u32, error: &str, next: u64) {
        warn!(webhook = %d.target, event_id = d.event_id, event_type = %d.kind, attempts,
            %error, "webhook delivery keeps failing; still retrying");
        if d.kind == WEBHOOK_FAILED {
            // A report about a report would let two failing webhooks feed each other.
            return;
        }
        self.engine.record_webhook_failed(serde_json::json!({
            "webhook": d.target,
            "event_id": d.event_id,
            "event_type": d.kind,
            "attempts": attempts,
            "error": error,
            "next_attempt_ms": next,
        }));
    }

    async fn drop_delivery(&self, d: &OutboxDelivery) {
        self.metrics.count("dropped");
        if let Err(e) = self.engine.store().drop_delivery(d.id).await {
            warn!(error = %e, event_id = d.event_id, "webhook delivery could not be dropped");
        }
    }
}

/// An error and its causes, `: `-separated and bounded ("connection refused" is usually a
/// cause, not the top error).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    if text.len() > MAX_ERROR_LEN {
        let mut cut = MAX_ERROR_LEN;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // RFC 4231, test case 1: a 20-byte key of 0x0b.
        assert_eq!(
            signature(&[0x0b; 20], b"Hi There"),
            "sha256=b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        // Any change of the body changes it.
        assert_ne!(
            signature(b"k", b"{\"id\":1}"),
            signature(b"k", b"{\"id\":1} ")
        );
        // Keys longer than the block size are fine.
        assert!(signature(&[7; 200], b"x").starts_with("sha256="));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        // No jitter: the full delay.
        let d: Vec<u64> = (1..=8).map(|n| backoff_ms(100, 1000, n, 0.0)).collect();
        assert_eq!(d, [100, 200, 400, 800, 1000, 1000, 1000, 1000]);
        // Huge attempt counts neither overflow nor exceed the cap.
        assert_eq!(backoff_ms(100, 1000, u32::MAX, 0.0), 1000);
        assert_eq!(backoff_ms(u64::MAX / 2, u64::MAX, 70, 0.0), u64::MAX);
        // Zero failures is treated as the first.
        assert_eq!(backoff_ms(100, 1000, 0, 0.0), 100);
    }

    #[test]
    fn jitter_stays_within_half_of_the_delay() {
        for n in 1..=10 {
            let full = backoff_ms(100, 5000, n, 0.0);
            for j in [0.0, 0.1, 0.5, 0.9, 0.999_999, 1.0, 7.0, -1.0] {
                let d = backoff_ms(100, 5000, n, j);
                assert!(d <= full && d >= full / 2, "n={n} j={j}: {d} vs {full}");
            }
            assert!(backoff_ms(100, 5000, n, 0.99) < full || full == 1);
        }
        assert_eq!(backoff_ms(1, 1, 1, 0.99), 1, "never zero");
    }

    #[test]
    fn error_chain_names_the_cause() {
        #[derive(Debug, thiserror::Error)]
        #[error("request failed")]
        struct Top(#[source] std::io::Error);
        let e = Top(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        assert_eq!(error_chain(&e), "request failed: connection refused");
        let long = std::io::Error::other("é".repeat(400));
        assert!(error_chain(&long).len() <= MAX_ERROR_LEN);
    }
}
