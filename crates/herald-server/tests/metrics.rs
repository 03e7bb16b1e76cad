//! `/metrics` against a real server: each scenario (publish → deliver → ack, evictions,
//! resumes that succeed and fail, a gap, a flow-control stall, rejected frames and closes,
//! HTTP errors) moves exactly the series it should, by exactly the expected amount, and
//! nothing else. Every series is documented in docs/metrics.md.
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Client, Event, Server, WAIT};
use herald_protocol::{ErrorCode, EvictReason, ResumeError, ServerFrame};
use serde_json::json;

type Samples = BTreeMap<String, f64>;

/// No server pings during a test: they would add bytes.
const QUIET: (&str, &str) = ("SESSION__HEARTBEAT_MS", "60000");

/// Every sample of the Prometheus text, by series (`name{labels}`).
fn parse(text: &str) -> Samples {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, rest) = l.rsplit_once(' ')?;
            Some((series.to_string(), rest.trim().parse().ok()?))
        })
        .collect()
}

async fn scrape(s: &Server) -> Samples {
    let (status, text) = s.get_text("/metrics").await;
    assert_eq!(status, 200, "{text}");
    parse(&text)
}

/// Series whose movement depends on timing or batching, checked separately: byte counts
/// (exact, in `publish_deliver_ack…`), store commit histograms (invariants), and the
/// buckets and sums of latency histograms (their `_count` is compared exactly), and the open
/// TCP connections (the scrapes' own HTTP connections move it).
fn volatile(series: &str) -> bool {
    series.starts_with("herald_tcp_connections")
        || series.starts_with("herald_ws_received_bytes")
        || series.starts_with("herald_ws_sent_bytes")
        || series.starts_with("herald_store_commit_")
        || series.ends_with("_sum")
        || series.contains("_bucket{")
}

/// Series that moved between `a` and `b` (absent = 0), volatile ones excluded.
fn moved(a: &Samples, b: &Samples) -> BTreeMap<String, f64> {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| !volatile(k))
        .filter_map(|k| {
            let d = b.get(k).copied().unwrap_or(0.0) - a.get(k).copied().unwrap_or(0.0);
            (d != 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

/// Waits until the series moved since `before` are exactly `want` (series → delta);
/// returns the scrape that matched. Panics after [`WAIT`] showing what moved.
async fn expect_moves(s: &Server, before: &Samples, want: &[(&str, f64)]) -> Samples {
    let want: BTreeMap<String, f64> = want.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = scrape(s).await;
        let got = moved(before, &now);
        if got == want {
            return now;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("series moved {got:#?}\nexpected {want:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn d(a: &Samples, b: &Samples, series: &str) -> f64 {
    b.get(series).copied().unwrap_or(0.0) - a.get(series).copied().unwrap_or(0.0)
}

const CONNECTED: &str = r#"herald_sessions{state="connected"}"#;
const DISCONNECTED: &str = r#"herald_sessions{state="disconnected"}"#;

fn evictions(reason: &str) -> String {
    format!(r#"herald_evictions_total{{reason="{reason}"}}"#)
}
fn resumes(outcome: &str) -> String {
    format!(r#"herald_resumes_total{{outcome="{outcome}"}}"#)
}
fn errors(code: &str) -> String {
    format!(r#"herald_errors_total{{code="{code}"}}"#)
}
fn closes(code: u16) -> String {
    format!(r#"herald_ws_closes_total{{code="{code}"}}"#)
}
fn http_errors(code: &str) -> String {
    format!(r#"herald_http_errors_total{{code="{code}"}}"#)
}

/// Every metric family the server exposes has a row in docs/metrics.md.
async fn assert_documented(s: &Server) {
    let (_, text) = s.get_text("/metrics").await;
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/metrics.md"
    ))
    .expect("docs/metrics.md");
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut parts = line.split_whitespace();
        let (name, kind) = (parts.next().expect("name"), parts.next().expect("type"));
        let row = match kind {
            "counter" => format!("| `{name}_total` | counter |"),
            other => format!("| `{name}` | {other} |"),
        };
        assert!(doc.contains(&row), "docs/metrics.md has no row {row:?}");
    }
}

#[tokio::test]
async fn every_documented_series_is_exposed_from_the_start() {
    let s = Server::start(&[]);
    assert_documented(&s).await;
    let (_, text) = s.get_text("/metrics").await;
    let samples = parse(&text);
    for series in [
        "herald_connections",
        CONNECTED,
        DISCONNECTED,
        "herald_publishes_total",
        "herald_deliveries_total",
        "herald_redeliveries_total",
        "herald_acks_total",
        "herald_gaps_total",
        "herald_flow_stalls_total",
        "herald_delivery_latency_seconds_count",
        "herald_ack_latency_seconds_count",
        "herald_store_commit_seconds_count",
        "herald_store_commit_batch_size_count",
        "herald_ws_received_bytes_total",
        "herald_ws_sent_bytes_total",
    ] {
        assert!(samples.contains_key(series), "{series} missing:\n{text}");
    }
}

#[tokio::test]
async fn publish_deliver_ack_moves_exactly_the_delivery_series() {
    let s = Server::start(&[QUIET]);
    let mut bob = Client::connect(&s, "bob", "b1").await;
    let mut alice = Client::connect(&s, "alice", "a1").await;
    let t0 = expect_moves(
        &s,
        &Samples::new(),
        &[("herald_connections", 2.0), (CONNECTED, 2.0)],
    )
    .await;
    let (bob_in, bob_out) = (bob.received_bytes, bob.sent_bytes);
    let (alice_in, alice_out) = (alice.received_bytes, alice.sent_bytes);

    let ok = alice.publish_ok("user:bob", json!({"text": "hi"})).await;
    let m = bob.expect_msg().await;
    assert_eq!(Some(m.o), ok.o);
    bob.ack("inbox", m.o).await;
    bob.sync().await;
    alice.sync().await;

    let t1 = expect_moves(
        &s,
        &t0,
        &[
            ("herald_publishes_total", 1.0),
            ("herald_deliveries_total", 1.0),
            ("herald_acks_total", 1.0),
            ("herald_delivery_latency_seconds_count", 1.0),
            ("herald_ack_latency_seconds_count", 1.0),
        ],
    )
    .await;
    // Bytes: exactly the WebSocket payloads the two clients sent and received.
    let sent = (bob.sent_bytes - bob_out + alice.sent_bytes - alice_out) as f64;
    let received = (bob.received_bytes - bob_in + alice.received_bytes - alice_in) as f64;
    assert_eq!(d(&t0, &t1, "herald_ws_received_bytes_total"), sent);
    assert_eq!(d(&t0, &t1, "herald_ws_sent_bytes_total"), received);
    // Latencies are observed with the engine clock: a local round trip is well under 5 s.
    let le5 = r#"herald_delivery_latency_seconds_bucket{le="4.096"}"#;
    assert_eq!(d(&t0, &t1, le5), 1.0, "{t1:#?}");
    let le5 = r#"herald_ack_latency_seconds_bucket{le="4.096"}"#;
    assert_eq!(d(&t0, &t1, le5), 1.0, "{t1:#?}");
    // The store commits at least the append, the delivery record and the cursor move (the
    // last two in the background), with one observation per transaction in each of its two
    // histograms.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = scrape(&s).await;
        let commits = d(&t0, &now, "herald_store_commit_seconds_count");
        let sizes = d(&t0, &now, "herald_store_commit_batch_size_count");
        let ops = d(&t0, &now, "herald_store_commit_batch_size_sum");
        if commits >= 1.0 && sizes == commits && ops >= 3.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "commits {commits}, batch sizes {sizes}, ops {ops}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A second message, redelivered after a resume (never acked): a redelivery, and its
    // latency is observed once (the first send only).
    alice.publish_ok("user:bob", json!(2)).await;
    bob.expect_msg().await;
    let w = bob.w().clone();
    drop(bob);
    s.wait_detached("bob", &w.session).await;
    let t2 = scrape(&s).await;
    let mut bob = Client::resume(&s, &w).await;
    assert_eq!(bob.expect_msg().await.o, 2);
    expect_moves(
        &s,
        &t2,
        &[
            (&resumes("resumed"), 1.0),
            ("herald_deliveries_total", 1.0),
            ("herald_redeliveries_total", 1.0),
            ("herald_connections", 1.0),
            (CONNECTED, 1.0),
            (DISCONNECTED, -1.0),
        ],
    )
    .await;
}

#[tokio::test]
async fn evictions_and_resumes_count_by_reason_and_outcome() {
    let s = Server::start(&[QUIET]);
    let mut first = Client::connect(&s, "bob", "b1").await;
    let t0 = expect_moves(
        &s,
        &Samples::new(),
        &[("herald_connections", 1.0), (CONNECTED, 1.0)],
    )
    .await;

    // A fresh login on the same device replaces the session.
    let mut second = Client::connect(&s, "bob", "b1").await;
    let (ev, code) = first.expect_evicted().await;
    assert_eq!((ev.reason, code), (EvictReason::Replaced, Some(4009)));
    let t1 = expect_moves(
        &s,
        &t0,
        &[(&evictions("replaced"), 1.0), (&closes(4009), 1.0)],
    )
    .await;

    // Resumed elsewhere: the session moves to a new connection.
    let third = Client::resume(&s, second.w()).await;
    assert!(third.w().resumed);
    let (ev, _) = second.expect_evicted().await;
    assert_eq!(ev.reason, EvictReason::ResumedElsewhere);
    let t2 = expect_moves(
        &s,
        &t1,
        &[
            (&resumes("resumed"), 1.0),
            (&evictions("resumed_elsewhere"), 1.0),
            (&closes(4009), 1.0),
        ],
    )
    .await;

    // Failed resumes: a wrong key and an unknown session start new sessions.
    let mut hello = Client::resume_hello(third.w());
    hello["device"] = json!("b2");
    hello["resume"]["key"] = json!("not-the-key");
    let bad = Client::hello(&s, hello).await;
    assert_eq!(bad.w().resume_error, Some(ResumeError::BadKey));
    let mut hello = Client::resume_hello(third.w());
    hello["device"] = json!("b3");
    hello["resume"]["session"] = json!("s_never_existed");
    let unknown = Client::hello(&s, hello).await;
    assert_eq!(unknown.w().resume_error, Some(ResumeError::Unknown));
    let t3 = expect_moves(
        &s,
        &t2,
        &[
            (&resumes("bad_key"), 1.0),
            (&resumes("unknown"), 1.0),
            ("herald_connections", 2.0),
            (CONNECTED, 2.0),
        ],
    )
    .await;

    // Resuming the replaced session: refused with `evicted`, no new connection.
    let mut refused = Client::hello_raw(&s, Client::resume_hello(first.w())).await;
    let (ev, code) = refused.expect_evicted_first().await;
    assert_eq!((ev.reason, code), (EvictReason::Replaced, Some(4009)));
    let t4 = expect_moves(&s, &t3, &[(&resumes("evicted"), 1.0), (&closes(4009), 1.0)]).await;

    // A kick from the API.
    let mut unknown = unknown;
    let (status, _) = s
        .delete(&format!("/v1/sessions/{}", unknown.w().session))
        .await;
    assert_eq!(status, 200);
    let (ev, _) = unknown.expect_evicted().await;
    assert_eq!(ev.reason, EvictReason::Kicked);
    expect_moves(
        &s,
        &t4,
        &[
            (&evictions("kicked"), 1.0),
            (&closes(4009), 1.0),
            ("herald_connections", -1.0),
            (CONNECTED, -1.0),
        ],
    )
    .await;

    // An expired resume: the session asked for a 100 ms reconnect window.
    let short = Client::hello(
        &s,
        json!({"t":"hello","v":1,"uid":"bob","device":"b4","reconnect_timeout_ms":100}),
    )
    .await;
    let w = short.w().clone();
    drop(short);
    s.wait_detached("bob", &w.session).await;
    // Let the 100 ms window pass (wall-clock time; nothing to wait on).
    tokio::time::sleep(Duration::from_millis(150)).await;
    let t6 = scrape(&s).await;
    let late = Client::hello(&s, Client::resume_hello(&w)).await;
    assert_eq!(late.w().resume_error, Some(ResumeError::Expired));
    // The disconnected session may already have been expired by the upkeep tick.
    let left = t6.get(DISCONNECTED).copied().unwrap_or(0.0);
    let mut want = vec![
        (resumes("expired"), 1.0),
        ("herald_connections".to_string(), 1.0),
        (CONNECTED.to_string(), 1.0),
    ];
    if left > 0.0 {
        want.push((DISCONNECTED.to_string(), -left));
    }
    let want: Vec<(&str, f64)> = want.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    expect_moves(&s, &t6, &want).await;
    assert_documented(&s).await;
    // Still connected: dropping them earlier would have moved the gauges.
    assert!(bad.w().session != late.w().session);
}

#[tokio::test]
async fn a_gap_and_a_flow_control_stall_are_counted_once_each() {
    let s = Server::start(&[
        QUIET,
        ("SESSION__MAX_INFLIGHT", "2"),
        ("RETENTION__CHANNEL_MAX_MESSAGES", "2"),
        ("RETENTION__TRIM_INTERVAL_MS", "100"),
    ]);
    let mut alice = Client::connect(&s, "alice", "a1").await;
    let mut bob = Client::connect(&s, "bob", "b1").await;

    // Flow control: three messages, two in flight, then the session waits for an ack.
    let t0 = scrape(&s).await;
    for i in 1..=3 {
        alice.publish_ok("user:bob", json!(i)).await;
    }
    let got = bob.msgs(2).await;
    bob.expect_silence(Duration::from_millis(200)).await;
    let t1 = expect_moves(
        &s,
        &t0,
        &[
            ("herald_publishes_total", 3.0),
            ("herald_deliveries_total", 2.0),
            ("herald_delivery_latency_seconds_count", 2.0),
            ("herald_flow_stalls_total", 1.0),
        ],
    )
    .await;
    bob.ack("inbox", got[1].o).await;
    assert_eq!(bob.expect_msg().await.o, 3);
    bob.ack("inbox", 3).await;
    bob.sync().await;
    let t2 = expect_moves(
        &s,
        &t1,
        &[
            ("herald_deliveries_total", 1.0),
            ("herald_delivery_latency_seconds_count", 1.0),
            ("herald_acks_total", 2.0),
            ("herald_ack_latency_seconds_count", 3.0),
        ],
    )
    .await;

    // A gap: five messages in a channel keeping two; a reader from 0 gets gap 1-3, then 4, 5.
    for i in 1..=5 {
        alice.publish_ok("chan:g", json!(i)).await;
    }
    s.wait_for("/v1/streams/chan:g", |v| v["first"] == 4).await;
    let t3 = scrape(&s).await;
    bob.subscribe("g", Some(0)).await;
    match bob.next_non_ping().await {
        Event::Frame(ServerFrame::Gap(g)) => assert_eq!((g.from, g.to), (1, 3)),
        other => panic!("expected a gap, got {other:?}"),
    }
    assert_eq!(
        bob.msgs(2).await.iter().map(|m| m.o).collect::<Vec<_>>(),
        [4, 5]
    );
    // Two channel messages in flight: max_inflight again, one more stall.
    expect_moves(
        &s,
        &t3,
        &[
            ("herald_gaps_total", 1.0),
            ("herald_deliveries_total", 2.0),
            ("herald_delivery_latency_seconds_count", 2.0),
            ("herald_flow_stalls_total", 1.0),
        ],
    )
    .await;
    assert_eq!(
        d(&t0, &t2, "herald_gaps_total"),
        0.0,
        "no gap before the trim"
    );
}

#[tokio::test]
async fn rejected_frames_count_by_code_and_closes_by_close_code() {
    let s = Server::start(&[
        QUIET,
        ("LIMITS__MAX_BODY_BYTES", "100"),
        ("SESSION__HELLO_TIMEOUT_MS", "300"),
    ]);
    let mut c = Client::connect(&s, "alice", "a1").await;
    let t0 = scrape(&s).await;

    // Rejections on an established connection: the connection stays.
    let seq = c.publish("bob", json!(1)).await;
    assert_eq!(c.expect_err(seq).await.code, ErrorCode::BadTarget);
    let seq = c.publish("chan:x", json!("x".repeat(200))).await;
    assert_eq!(c.expect_err(seq).await.code, ErrorCode::TooLarge);
    let seq = c.request(json!({"t":"unsub","chan":"never"})).await;
    assert_eq!(c.expect_err(seq).await.code, ErrorCode::NotSubscribed);
    c.send_text("{oops".into()).await;
    c.send(json!({"t":"frobnicate"})).await;
    c.sync().await;
    expect_moves(
        &s,
        &t0,
        &[
            (&errors("bad_target"), 1.0),
            (&errors("too_large"), 1.0),
            (&errors("not_subscribed"), 1.0),
            (&errors("bad_frame"), 1.0),
            (&errors("unknown_type"), 1.0),
        ],
    )
    .await;

    // Rejections that close: a first frame that is not hello, a hello without credentials,
    // and no hello at all.
    let t1 = scrape(&s).await;
    let mut c2 = Client::raw(&s).await;
    c2.send(json!({"t":"ping"})).await;
    assert_eq!(c2.expect_close().await, Some(4000));
    let mut c3 = Client::hello_raw(&s, json!({"t":"hello","v":1})).await;
    assert_eq!(c3.expect_close().await, Some(4003));
    let mut c4 = Client::raw(&s).await;
    assert_eq!(c4.expect_close().await, Some(4001));
    expect_moves(
        &s,
        &t1,
        &[
            (&errors("bad_frame"), 1.0),
            (&closes(4000), 1.0),
            (&errors("unauthorized"), 1.0),
            (&closes(4003), 1.0),
            (&closes(4001), 1.0),
        ],
    )
    .await;

    // HTTP API errors are counted by code, apart from the WebSocket ones.
    let t2 = scrape(&s).await;
    let (status, _) = s.get("/v1/nothing-here").await;
    assert_eq!(status, 404);
    let (status, _) = s.post("/v1/publish", json!({"to":"bob","body":1})).await;
    assert_eq!(status, 400);
    expect_moves(
        &s,
        &t2,
        &[
            (&http_errors("not_found"), 1.0),
            (&http_errors("bad_target"), 1.0),
        ],
    )
    .await;
    // The labelled families exist now: each is documented too.
    assert_documented(&s).await;
}

#[tokio::test]
async fn rate_limit_and_identity_refusals_count_their_codes_and_closes() {
    let s = Server::start(&[
        QUIET,
        ("LIMITS__REQUESTS_PER_SEC", "1"),
        ("LIMITS__REQUEST_BURST", "1"),
        ("LIMITS__RATE_LIMIT_STRIKES", "1"),
        ("IDENTITY__POLICY", "reject_new"),
    ]);
    let mut c = Client::connect(&s, "alice", "a1").await;
    let t0 = scrape(&s).await;
    let refused = json!({"t":"hello","v":1,"uid":"alice","device":"a2"});
    let mut other = Client::hello_raw(&s, refused).await;
    assert_eq!(other.expect_close().await, Some(4010));
    let batch = [1u64, 2]
        .map(|seq| json!({"t":"unsub","seq":seq,"chan":"none"}).to_string())
        .join("\n");
    c.send_text(batch).await;
    assert_eq!(c.expect_err(1).await.code, ErrorCode::NotSubscribed);
    assert_eq!(c.expect_err(2).await.code, ErrorCode::RateLimited);
    assert_eq!(c.expect_close().await, Some(4029));
    expect_moves(
        &s,
        &t0,
        &[
            (&errors("identity_in_use"), 1.0),
            (&closes(4010), 1.0),
            (&errors("not_subscribed"), 1.0),
            (&errors("rate_limited"), 1.0),
            (&closes(4029), 1.0),
            ("herald_connections", -1.0),
            (CONNECTED, -1.0),
            (DISCONNECTED, 1.0),
        ],
    )
    .await;
}
