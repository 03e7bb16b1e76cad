//! Webhooks: every recorded event reaches each subscribed webhook at least once, from the
//! durable outbox, across a crash; requests are signed; failures show in metrics and as
//! `webhook_failed` events, which never loop between failing webhooks.
// Tests fail by panicking; `unwrap` is how they say "this must work".
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use common::{metric, Client, Server, WAIT};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

const SECRET_A: &str = "secret-of-receiver-a";
const SECRET_B: &str = "secret-of-receiver-b";

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Hit {
    event_id: u64,
    kind: String,
    signature: String,
    attempt: u32,
    content_type: String,
    body: Vec<u8>,
    /// The status the receiver answered.
    status: u16,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }
}

#[derive(Default)]
struct Inbox {
    failing: AtomicBool,
    hits: Mutex<Vec<Hit>>,
}

/// A webhook receiver on 127.0.0.1:0 that records every request and answers 500 while
/// failing, 204 otherwise.
struct Receiver {
    url: String,
    inbox: Arc<Inbox>,
}

async fn receive(State(inbox): State<Arc<Inbox>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let status = if inbox.failing.load(Ordering::SeqCst) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    };
    inbox.hits.lock().unwrap().push(Hit {
        event_id: header("x-herald-event-id")
            .parse()
            .expect("event id header"),
        kind: header("x-herald-event-type"),
        signature: header("x-herald-signature"),
        attempt: header("x-herald-attempt").parse().expect("attempt header"),
        content_type: header("content-type"),
        body: body.to_vec(),
        status: status.as_u16(),
    });
    status
}

impl Receiver {
    async fn start(failing: bool) -> Receiver {
        let inbox = Arc::new(Inbox::default());
        inbox.failing.store(failing, Ordering::SeqCst);
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(inbox.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, inbox }
    }

    fn set_failing(&self, failing: bool) {
        self.inbox.failing.store(failing, Ordering::SeqCst);
    }

    fn hits(&self) -> Vec<Hit> {
        self.inbox.hits.lock().unwrap().clone()
    }

    /// Event ids answered with success.
    fn delivered(&self) -> BTreeSet<u64> {
        self.hits()
            .iter()
            .filter(|h| h.status < 300)
            .map(|h| h.event_id)
            .collect()
    }

    /// Polls until `ok(hits)` holds; panics after [`WAIT`].
    async fn wait(&self, what: &str, ok: impl Fn(&[Hit]) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !ok(&self.hits()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "receiver {}: {what} not seen within {WAIT:?}; hits: {:?}",
                self.url,
                self.hits()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A URL nothing listens on (bound, then released).
async fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    drop(l);
    url
}

/// A `[[webhooks]]` entry with fast retries.
fn hook(url: &str, events: &str, secret: &str) -> String {
    format!(
        "[[webhooks]]\nurl = \"{url}\"\nevents = {events}\nsecret = \"{secret}\"\n\
         timeout_ms = 2000\nretry_initial_ms = 50\nretry_max_ms = 200\nfailed_after_attempts = 2\n\n"
    )
}

fn write_config(dir: &Path, entries: &[String]) -> PathBuf {
    let path = dir.join("herald.toml");
    std::fs::write(&path, entries.concat()).unwrap();
    path
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// Every event of the feed, oldest first.
async fn feed(s: &Server) -> Vec<Value> {
    let (status, v) = s.get("/v1/events?after=0&limit=1000").await;
    assert_eq!(status, 200, "{v}");
    v["items"].as_array().expect("items").clone()
}

fn about(e: &Value) -> &str {
    e["data"]["webhook"].as_str().unwrap_or_default()
}

async fn metric_value(s: &Server, series: &str) -> f64 {
    let (_, text) = s.get_text("/metrics").await;
    metric(&text, series).unwrap_or(0.0)
}

const OK: &str = "herald_webhook_deliveries_total{result=\"ok\"}";
const ERROR: &str = "herald_webhook_deliveries_total{result=\"error\"}";
const DROPPED: &str = "herald_webhook_deliveries_total{result=\"dropped\"}";
const PENDING: &str = "herald_webhook_pending";

#[tokio::test]
async fn every_event_reaches_the_webhook_at_least_once_across_a_crash() {
    let a = Receiver::start(true).await;
    let dead = dead_url().await;
    let cfg = tempfile::tempdir().unwrap();
    let path = write_config(
        cfg.path(),
        &[
            hook(&a.url, "[\"*\"]", SECRET_A),
            hook(&dead, "[\"eviction\"]", SECRET_B),
        ],
    );
    let mut s = Server::start(&[("CONFIG", path.to_str().unwrap())]);

    // While the receiver answers 500 and the other webhook is not listening: two
    // replacements and a kick.
    let _first = Client::connect(&s, "alice", "p1").await;
    let _second = Client::connect(&s, "alice", "p1").await;
    let third = Client::connect(&s, "alice", "p1").await;
    let (status, v) = s
        .delete(&format!("/v1/sessions/{}", third.w().session))
        .await;
    assert_eq!(status, 200, "{v}");
    s.wait_for("/v1/events?type=eviction", |v| {
        v["items"].as_array().unwrap().len() == 3
    })
    .await;
    s.wait_for("/v1/events?type=kick", |v| {
        v["items"].as_array().unwrap().len() == 1
    })
    .await;

    // The failures are visible: attempts at the receiver, metrics, and webhook_failed events
    // for both webhooks.
    a.wait("failed attempts", |h| {
        h.iter().filter(|h| h.status == 500).count() >= 4
    })
    .await;
    s.wait_metric(ERROR, |v| v >= 4.0).await;
    s.wait_metric(PENDING, |v| v >= 4.0).await;
    let (a_url, dead_url) = (a.url.clone(), dead.clone());
    let failed = s
        .wait_for("/v1/events?type=webhook_failed", move |v| {
            let items = v["items"].as_array().unwrap();
            items.iter().any(|e| about(e) == a_url) && items.iter().any(|e| about(e) == dead_url)
        })
        .await;
    let report = failed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| about(e) == a.url)
        .unwrap()
        .clone();
    assert_eq!(report["data"]["attempts"], 2);
    assert!(
        report["data"]["error"].as_str().unwrap().contains("500"),
        "{report}"
    );
    assert!(report["data"]["event_id"].as_u64().is_some());
    let dead_report = failed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| about(e) == dead)
        .unwrap()
        .clone();
    assert_eq!(dead_report["data"]["event_type"], "eviction");
    let before_crash: Vec<u64> = feed(&s)
        .await
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert!(a.delivered().is_empty());

    // Crash, restart, and only then the receiver comes back.
    s.kill();
    s.restart();
    a.set_failing(false);

    // Every event reaches it, except reports about its own failures; only the dead
    // webhook's three evictions stay pending.
    let deadline = tokio::time::Instant::now() + WAIT;
    let expected = loop {
        let events = feed(&s).await;
        let expected: BTreeMap<u64, Value> = events
            .into_iter()
            .filter(|e| !(e["kind"] == "webhook_failed" && about(e) == a.url))
            .map(|e| (e["id"].as_u64().unwrap(), e))
            .collect();
        let delivered = a.delivered();
        let pending = metric_value(&s, PENDING).await;
        if expected.keys().all(|id| delivered.contains(id)) && pending == 3.0 {
            break expected;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not delivered within {WAIT:?}: expected {:?}, delivered {delivered:?}, pending {pending}",
            expected.keys().collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Nothing was delivered before the crash: what was recorded then arrived after it.
    let survived = before_crash
        .iter()
        .filter(|id| expected.contains_key(id))
        .count();
    assert!(
        survived >= 5,
        "3 evictions, a kick, a report: {before_crash:?}"
    );
    let kinds: BTreeSet<&str> = expected
        .values()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        ["eviction", "kick", "webhook_failed"]
            .iter()
            .all(|k| kinds.contains(k)),
        "{kinds:?}"
    );

    // Every request: signed over the exact body, headers matching the body, the body being
    // the feed's item; never a report about this receiver.
    let hits = a.hits();
    for h in &hits {
        assert_eq!(h.signature, sign(SECRET_A, &h.body), "signature of {h:?}");
        assert_eq!(h.content_type, "application/json");
        assert_ne!(h.signature, sign(SECRET_B, &h.body));
        let body = h.json();
        assert_eq!(body["id"].as_u64(), Some(h.event_id));
        assert_eq!(body["kind"].as_str(), Some(h.kind.as_str()));
        assert_eq!(
            Some(&body),
            expected.get(&h.event_id),
            "body is the feed item"
        );
        if h.kind == "webhook_failed" {
            assert_eq!(about(&body), dead, "only reports about the other webhook");
        }
    }
    // The crash-surviving deliveries were retries.
    assert!(hits.iter().any(|h| h.status < 300 && h.attempt > 1));
    s.wait_metric(OK, |v| v >= expected.len() as f64).await;
}

#[tokio::test]
async fn failure_reports_never_loop_between_failing_webhooks() {
    let a = Receiver::start(true).await;
    let b = Receiver::start(true).await;
    let cfg = tempfile::tempdir().unwrap();
    let path = write_config(
        cfg.path(),
        &[
            hook(&a.url, "[\"*\"]", SECRET_A),
            hook(&b.url, "[\"*\"]", SECRET_B),
        ],
    );
    let s = Server::start(&[("CONFIG", path.to_str().unwrap())]);
    let _first = Client::connect(&s, "alice", "p1").await;
    let _second = Client::connect(&s, "alice", "p1").await;

    // Each webhook gets the other's failure report, and fails it past the threshold too.
    for r in [&a, &b] {
        r.wait("a report retried past the threshold", |h| {
            h.iter()
                .any(|h| h.kind == "webhook_failed" && h.attempt >= 4)
        })
        .await;
    }
    let events = feed(&s).await;
    let eviction = events.iter().find(|e| e["kind"] == "eviction").unwrap();
    let reports: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "webhook_failed")
        .collect();
    assert_eq!(
        reports.len(),
        2,
        "one report per webhook, none about reports: {reports:?}"
    );
    let mut about_whom: Vec<&str> = reports.iter().map(|e| about(e)).collect();
    about_whom.sort_unstable();
    let mut urls = vec![a.url.as_str(), b.url.as_str()];
    urls.sort_unstable();
    assert_eq!(about_whom, urls);
    for r in &reports {
        assert_eq!(r["data"]["event_id"], eviction["id"]);
    }
    for (r, secret) in [(&a, SECRET_A), (&b, SECRET_B)] {
        for h in r.hits() {
            assert_eq!(h.signature, sign(secret, &h.body));
            if h.kind == "webhook_failed" {
                assert_ne!(
                    about(&h.json()),
                    r.url,
                    "a report reached the webhook it is about"
                );
            }
        }
    }
    assert_eq!(metric_value(&s, OK).await, 0.0);
}

#[tokio::test]
async fn deliveries_for_a_removed_webhook_are_dropped_after_a_restart() {
    let a = Receiver::start(true).await;
    let cfg = tempfile::tempdir().unwrap();
    let with = write_config(cfg.path(), &[hook(&a.url, "[\"eviction\"]", SECRET_A)]);
    let without = cfg.path().join("empty.toml");
    std::fs::write(&without, "").unwrap();
    let mut s = Server::start(&[("CONFIG", with.to_str().unwrap())]);
    let _first = Client::connect(&s, "alice", "p1").await;
    let _second = Client::connect(&s, "alice", "p1").await;
    a.wait("a failed attempt", |h| !h.is_empty()).await;
    s.wait_metric(PENDING, |v| v == 1.0).await;
    s.kill();

    let s2 = Server::start_in(&s.dir, &[("CONFIG", without.to_str().unwrap())], true);
    s2.wait_metric(DROPPED, |v| v == 1.0).await;
    s2.wait_metric(PENDING, |v| v == 0.0).await;
    assert_eq!(metric_value(&s2, ERROR).await, 0.0);
}
