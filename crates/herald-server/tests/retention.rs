//! Retention: trimmed ranges are announced with `gap` frames for exactly what is gone, gaps
//! are recorded and counted, offsets are never reused, and gaps do not use up flow control.
mod common;

use std::time::Duration;

use common::{Client, Event, Server};
use herald_protocol::{Gap, GapReason, ServerFrame};
use serde_json::{json, Value};

fn offsets(v: &Value) -> Vec<u64> {
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| m["o"].as_u64().expect("o"))
        .collect()
}

/// The next frame that is not a ping or an answer.
async fn next_delivery(c: &mut Client) -> ServerFrame {
    loop {
        match c.next().await {
            Event::Frame(ServerFrame::Ping | ServerFrame::Ok(_)) => continue,
            Event::Frame(f) => return f,
            Event::Closed(code) => panic!("closed ({code:?}) while waiting for a delivery"),
        }
    }
}

async fn expect_gap(c: &mut Client) -> Gap {
    match next_delivery(c).await {
        ServerFrame::Gap(g) => g,
        other => panic!("expected gap, got {other:?}"),
    }
}

/// Publishes `n` messages over HTTP; returns their ids.
async fn publish_n(s: &Server, to: &str, n: u64) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 1..=n {
        let (status, v) = s.post("/v1/publish", json!({"to":to,"body":i})).await;
        assert_eq!(status, 200, "{v}");
        ids.push(v["id"].as_str().expect("id").to_string());
    }
    ids
}

#[tokio::test]
async fn channel_count_retention_announces_the_trimmed_range_before_retained_messages() {
    let s = Server::start(&[
        ("RETENTION__CHANNEL_MAX_MESSAGES", "3"),
        ("RETENTION__TRIM_INTERVAL_MS", "100"),
    ]);
    publish_n(&s, "chan:x", 10).await;
    let h = s.wait_for("/v1/streams/chan:x", |v| v["first"] == 8).await;
    assert_eq!(h["last"], 10);
    assert_eq!(offsets(&h), [8, 9, 10]);

    let mut bob = Client::connect(&s, "bob", "b1").await;
    let ok = bob.subscribe("x", Some(0)).await;
    assert_eq!(ok.o, Some(10));
    assert_eq!(
        expect_gap(&mut bob).await,
        Gap {
            s: "chan:x".into(),
            from: 1,
            to: 7,
            reason: GapReason::Retention
        }
    );
    for want in 8..=10 {
        match next_delivery(&mut bob).await {
            ServerFrame::Msg(m) => assert_eq!((m.s.as_str(), m.o), ("chan:x", want)),
            other => panic!("expected msg {want}, got {other:?}"),
        }
    }
    bob.ack("chan:x", 10).await;
    bob.expect_silence(Duration::from_millis(200)).await;

    // Recorded in the event feed and counted.
    let ev = s
        .wait_for("/v1/events?type=gap", |v| {
            !v["items"].as_array().expect("items").is_empty()
        })
        .await;
    let e = &ev["items"][0];
    assert_eq!(e["kind"], "gap");
    assert_eq!(e["uid"], "bob");
    assert_eq!(e["session"], bob.w().session.as_str());
    assert_eq!(
        e["data"],
        json!({"s":"chan:x","from":1,"to":7,"reason":"retention"})
    );
    s.wait_metric("herald_gaps_total", |v| v == 1.0).await;

    // Starting inside the retained range needs no gap.
    let mut carol = Client::connect(&s, "carol", "c1").await;
    carol.subscribe("x", Some(7)).await;
    match next_delivery(&mut carol).await {
        ServerFrame::Msg(m) => assert_eq!(m.o, 8),
        other => panic!("no gap expected from 7, got {other:?}"),
    }
    // Trimmed messages are gone from the HTTP API too.
    let (_, v) = s.get("/v1/messages?s=chan:x").await;
    assert_eq!(offsets(&v), [8, 9, 10]);
}

#[tokio::test]
async fn channel_age_retention_trims_everything_and_offsets_continue() {
    let s = Server::start(&[
        ("RETENTION__CHANNEL_MAX_AGE_MS", "300"),
        ("RETENTION__TRIM_INTERVAL_MS", "100"),
    ]);
    publish_n(&s, "chan:y", 3).await;
    let h = s.wait_for("/v1/streams/chan:y", |v| v["first"] == 4).await;
    assert_eq!(h["last"], 3, "last is kept when everything is trimmed");
    assert!(offsets(&h).is_empty());

    // A subscriber replaying from 0 learns that 1..=3 are gone, then goes live.
    let mut bob = Client::connect(&s, "bob", "b1").await;
    let ok = bob.subscribe("y", Some(0)).await;
    assert_eq!(ok.o, Some(3));
    let g = expect_gap(&mut bob).await;
    assert_eq!((g.s.as_str(), g.from, g.to), ("chan:y", 1, 3));

    // Offsets are never reused.
    let (_, p) = s
        .post("/v1/publish", json!({"to":"chan:y","body":"new"}))
        .await;
    assert_eq!(p["o"], 4, "{p}");
    match next_delivery(&mut bob).await {
        ServerFrame::Msg(m) => assert_eq!(m.o, 4),
        other => panic!("expected msg 4, got {other:?}"),
    }
}

#[tokio::test]
async fn inbox_age_retention_gives_a_returning_device_a_gap_for_exactly_what_it_missed() {
    let s = Server::start(&[
        ("RETENTION__INBOX_MAX_AGE_MS", "1500"),
        ("RETENTION__TRIM_INTERVAL_MS", "100"),
    ]);
    // bob's phone receives and acknowledges message 1, then goes offline.
    let mut phone = Client::connect(&s, "bob", "phone").await;
    let first = publish_n(&s, "user:bob", 1).await;
    assert_eq!(phone.expect_msg().await.o, 1);
    phone.ack("inbox", 1).await;
    // The device's durable cursor has moved once the trace says acked.
    s.wait_for(&format!("/v1/messages/{}", first[0]), |t| {
        t["summary"]["acked"] == 1
    })
    .await;
    drop(phone);
    // Messages 2 and 3 arrive while it is away, and expire.
    publish_n(&s, "user:bob", 2).await;
    s.wait_for("/v1/streams/inbox:bob", |v| v["first"] == 4)
        .await;
    // Messages 4 and 5 are retained.
    publish_n(&s, "user:bob", 2).await;

    let mut phone = Client::connect(&s, "bob", "phone").await;
    let g = expect_gap(&mut phone).await;
    assert_eq!(
        (g.s.as_str(), g.from, g.to, g.reason),
        ("inbox", 2, 3, GapReason::Retention),
        "the gap covers what this device had not acknowledged, nothing more"
    );
    for want in [4, 5] {
        match next_delivery(&mut phone).await {
            ServerFrame::Msg(m) => assert_eq!((m.s.as_str(), m.o), ("inbox", want)),
            other => panic!("expected msg {want}, got {other:?}"),
        }
    }
    let ev = s
        .wait_for("/v1/events?type=gap&uid=bob", |v| {
            !v["items"].as_array().expect("items").is_empty()
        })
        .await;
    assert_eq!(
        ev["items"][0]["data"],
        json!({"s":"inbox","from":2,"to":3,"reason":"retention"})
    );
    assert_eq!(ev["items"][0]["device"], "phone");
}

#[tokio::test]
async fn a_gap_does_not_count_against_max_inflight() {
    let s = Server::start(&[
        ("RETENTION__CHANNEL_MAX_MESSAGES", "3"),
        ("RETENTION__TRIM_INTERVAL_MS", "100"),
        ("SESSION__MAX_INFLIGHT", "2"),
    ]);
    publish_n(&s, "chan:x", 10).await;
    s.wait_for("/v1/streams/chan:x", |v| v["first"] == 8).await;

    let mut bob = Client::connect(&s, "bob", "b1").await;
    bob.subscribe("x", Some(0)).await;
    let g = expect_gap(&mut bob).await;
    assert_eq!((g.from, g.to), (1, 7));
    // The 7 announced offsets are not in flight: two messages fit the window.
    let m = bob.msgs(2).await;
    assert_eq!((m[0].o, m[1].o), (8, 9));
    // Then flow control holds the third until an ack.
    bob.expect_silence(Duration::from_millis(300)).await;
    bob.ack("chan:x", 9).await;
    assert_eq!(bob.expect_msg().await.o, 10);
}

#[tokio::test]
async fn trimming_runs_at_the_configured_interval() {
    // retention.trim_interval_ms below the engine's one-second upkeep must still be honoured.
    let s = Server::start(&[
        ("RETENTION__CHANNEL_MAX_MESSAGES", "1"),
        ("RETENTION__TRIM_INTERVAL_MS", "100"),
    ]);
    let started = tokio::time::Instant::now();
    for round in 1..=4u64 {
        publish_n(&s, "chan:t", 2).await;
        let want = 2 * round;
        s.wait_for("/v1/streams/chan:t", |v| v["first"] == want)
            .await;
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2000),
        "4 trims at a 100 ms interval took {took:?}"
    );
}

#[tokio::test]
async fn a_stream_held_in_memory_still_announces_what_retention_removed() {
    // bob keeps chan:x live (its recent messages are cached in memory); retention must apply to
    // what a later reader is served all the same.
    let s = Server::start(&[
        ("RETENTION__CHANNEL_MAX_MESSAGES", "3"),
        ("RETENTION__TRIM_INTERVAL_MS", "100"),
    ]);
    let mut bob = Client::connect(&s, "bob", "b1").await;
    bob.subscribe("x", None).await;
    publish_n(&s, "chan:x", 10).await;
    assert_eq!(bob.msgs(10).await.last().map(|m| m.o), Some(10));
    s.wait_for("/v1/streams/chan:x", |v| v["first"] == 8).await;

    let mut carol = Client::connect(&s, "carol", "c1").await;
    carol.subscribe("x", Some(0)).await;
    let g = expect_gap(&mut carol).await;
    assert_eq!(
        (g.from, g.to),
        (1, 7),
        "trimmed offsets are not served from memory"
    );
    let m = carol.msgs(3).await;
    assert_eq!(m.iter().map(|m| m.o).collect::<Vec<_>>(), [8, 9, 10]);
}
