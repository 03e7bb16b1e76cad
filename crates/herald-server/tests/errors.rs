//! Every `err` code a client can provoke and every close code herald uses (except 4009/4010,
//! covered with identity), plus batching in both directions and duplicate `seq` handling.
// A real server process runs on wall-clock time; these measure it.
#![allow(clippy::disallowed_types)]
mod common;

use std::time::{Duration, Instant};

use common::{Client, Event, Server};
use herald_protocol::{ErrFrame, ErrorCode, OkFrame, ServerFrame};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// The next frame that is not a ping; panics if the connection closes.
async fn frame(c: &mut Client) -> ServerFrame {
    match c.next_non_ping().await {
        Event::Frame(f) => f,
        Event::Closed(code) => panic!("connection closed ({code:?}), expected a frame"),
    }
}

/// The next frame, which must be an `err`.
async fn err_frame(c: &mut Client) -> ErrFrame {
    match frame(c).await {
        ServerFrame::Err(e) => e,
        other => panic!("expected err, got {other:?}"),
    }
}

/// A ping round trip: the connection is up and has handled everything sent before.
async fn roundtrip(c: &mut Client) {
    c.send(json!({"t":"ping"})).await;
    match frame(c).await {
        ServerFrame::Pong => {}
        other => panic!("expected pong, got {other:?}"),
    }
}

/// The next event after skipping pings must be a close; returns its code.
async fn closed(c: &mut Client) -> Option<u16> {
    match c.next_non_ping().await {
        Event::Closed(code) => code,
        other => panic!("expected the connection to close, got {other:?}"),
    }
}

/// Offsets stored in a stream, via the HTTP API (dev mode: no key).
async fn stored_offsets(s: &Server, stream: &str) -> Vec<u64> {
    let (status, v) = s.get(&format!("/v1/streams/{stream}?limit=1000")).await;
    assert_eq!(status, 200, "{v}");
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| m["o"].as_u64().expect("o"))
        .collect()
}

fn pub_frame(seq: u64, to: &str, body: Value) -> String {
    json!({"t":"pub","seq":seq,"to":to,"body":body}).to_string()
}

#[tokio::test]
async fn malformed_json_gets_bad_frame_with_the_parser_reason_and_the_connection_stays_up() {
    let s = Server::start(&[]);
    let mut c = Client::connect(&s, "alice", "a1").await;

    c.send_text(r#"{"t":"pub","seq":1,"to":"chan:x""#.into())
        .await;
    let e = err_frame(&mut c).await;
    assert_eq!(e.code, ErrorCode::BadFrame);
    assert_eq!(e.seq, None, "the seq of unparseable JSON is unknown");
    assert!(
        e.msg.contains("invalid JSON") && e.msg.contains("EOF"),
        "the parser's reason: {}",
        e.msg
    );

    c.send_text("[1,2]".into()).await;
    let e = err_frame(&mut c).await;
    assert_eq!(e.code, ErrorCode::BadFrame);
    assert!(e.msg.contains("JSON object"), "{}", e.msg);

    // A missing field: the seq could be read, so the err carries it.
    c.send_text(r#"{"t":"pub","seq":7,"to":"chan:x"}"#.into())
        .await;
    let e = err_frame(&mut c).await;
    assert_eq!((e.code, e.seq), (ErrorCode::BadFrame, Some(7)));
    assert!(e.msg.contains("body"), "{}", e.msg);
    c.send_text(r#"{"t":"sub","seq":8}"#.into()).await;
    let e = err_frame(&mut c).await;
    assert_eq!((e.code, e.seq), (ErrorCode::BadFrame, Some(8)));
    assert!(e.msg.contains("chan"), "{}", e.msg);
    c.send_text(r#"{"seq":9,"chan":"x"}"#.into()).await;
    let e = err_frame(&mut c).await;
    assert_eq!((e.code, e.seq), (ErrorCode::BadFrame, Some(9)));
    assert!(e.msg.contains("`t`"), "{}", e.msg);

    // Still connected and working.
    c.seq = 9;
    let ok = c.publish_ok("chan:x", json!("fine")).await;
    assert_eq!(ok.o, Some(1), "nothing malformed was stored");
}

#[tokio::test]
async fn unknown_type_is_answered_with_its_seq() {
    let s = Server::start(&[]);
    let mut c = Client::connect(&s, "alice", "a1").await;
    c.send(json!({"t":"frobnicate","seq":1})).await;
    let e = err_frame(&mut c).await;
    assert_eq!((e.code, e.seq), (ErrorCode::UnknownType, Some(1)));
    assert!(e.msg.contains("frobnicate"), "{}", e.msg);
    roundtrip(&mut c).await;
}

#[tokio::test]
async fn bad_targets_are_refused_with_their_seq_and_nothing_is_stored() {
    let s = Server::start(&[]);
    let mut c = Client::connect(&s, "alice", "a1").await;
    c.send_text(pub_frame(1, "bob", json!("x"))).await;
    let e = c.expect_err(1).await;
    assert_eq!(e.code, ErrorCode::BadTarget);
    c.send_text(pub_frame(2, "user:a b", json!("x"))).await;
    assert_eq!(c.expect_err(2).await.code, ErrorCode::BadTarget);
    c.send(json!({"t":"sub","seq":3,"chan":"a b"})).await;
    let e = c.expect_err(3).await;
    assert_eq!(e.code, ErrorCode::BadTarget);
    assert!(e.msg.contains(' '), "names the bad character: {}", e.msg);
    c.send(json!({"t":"unsub","seq":4,"chan":"a b"})).await;
    assert_eq!(c.expect_err(4).await.code, ErrorCode::BadTarget);
    c.send(json!({"t":"ack","s":"chan:a b","o":1})).await;
    let e = err_frame(&mut c).await;
    assert_eq!((e.code, e.seq), (ErrorCode::BadTarget, None));
    assert!(stored_offsets(&s, "inbox:bob").await.is_empty());
    // bad_target is not a malformed frame: it never counts toward max_bad_frames.
    roundtrip(&mut c).await;
}

#[tokio::test]
async fn too_large_body_is_refused_with_its_seq_and_not_stored() {
    let s = Server::start(&[("LIMITS__MAX_BODY_BYTES", "100")]);
    let mut bob = Client::connect(&s, "bob", "b1").await;
    bob.subscribe("big", None).await;
    let mut alice = Client::connect(&s, "alice", "a1").await;
    assert_eq!(alice.w().limits.max_body_bytes, 100);
    let seq = alice.publish("chan:big", json!("x".repeat(200))).await;
    let e = alice.expect_err(seq).await;
    assert_eq!(e.code, ErrorCode::TooLarge);
    assert!(e.msg.contains("100"), "names the limit: {}", e.msg);
    // Exactly at the limit is fine (a JSON string of 98 chars + 2 quotes = 100 bytes).
    let ok = alice.publish_ok("chan:big", json!("y".repeat(98))).await;
    assert_eq!(ok.o, Some(1), "the refused message took no offset");
    let m = bob.expect_msg().await;
    assert_eq!(m.o, 1);
    assert!(m.body.get().starts_with("\"y"));
    bob.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(stored_offsets(&s, "chan:big").await, [1]);
}

#[tokio::test]
async fn unsub_and_ack_of_a_channel_not_subscribed_get_not_subscribed() {
    let s = Server::start(&[]);
    let mut c = Client::connect(&s, "alice", "a1").await;
    c.send(json!({"t":"unsub","seq":1,"chan":"never"})).await;
    let e = c.expect_err(1).await;
    assert_eq!(e.code, ErrorCode::NotSubscribed);
    assert!(e.msg.contains("chan:never"), "{}", e.msg);

    c.ack("chan:never", 3).await;
    let e = err_frame(&mut c).await;
    assert_eq!((e.code, e.seq), (ErrorCode::NotSubscribed, None));

    // Subscribed then unsubscribed: both are refused again.
    c.seq = 1;
    c.subscribe("room", None).await;
    c.ack("chan:room", 0).await;
    c.send(json!({"t":"unsub","seq":3,"chan":"room"})).await;
    assert_eq!(c.expect_ok(3).await.s.as_deref(), Some("chan:room"));
    c.send(json!({"t":"unsub","seq":4,"chan":"room"})).await;
    assert_eq!(c.expect_err(4).await.code, ErrorCode::NotSubscribed);
    c.ack("chan:room", 1).await;
    let e = err_frame(&mut c).await;
    assert_eq!((e.code, e.seq), (ErrorCode::NotSubscribed, None));
}

#[tokio::test]
async fn rate_limited_pubs_get_rate_limited_with_their_seq_and_are_not_stored() {
    let s = Server::start(&[
        ("LIMITS__REQUESTS_PER_SEC", "5"),
        ("LIMITS__REQUEST_BURST", "5"),
    ]);
    let mut c = Client::connect(&s, "alice", "a1").await;
    let burst: Vec<String> = (1..=20).map(|i| pub_frame(i, "chan:r", json!(i))).collect();
    c.send_text(burst.join("\n")).await;
    let mut ok = Vec::new();
    let mut limited = Vec::new();
    for seq in 1..=20u64 {
        // Answers come in request order.
        match frame(&mut c).await {
            ServerFrame::Ok(o) => {
                assert_eq!(o.seq, seq);
                ok.push(o);
            }
            ServerFrame::Err(e) => {
                assert_eq!(e.seq, Some(seq));
                assert_eq!(e.code, ErrorCode::RateLimited, "{}", e.msg);
                limited.push(seq);
            }
            other => panic!("expected an answer to seq {seq}, got {other:?}"),
        }
    }
    assert!(
        (5..=7).contains(&ok.len()),
        "the burst of 5 (plus a token refilled at most) passes: {} ok",
        ok.len()
    );
    assert_eq!(ok.len() + limited.len(), 20);
    // The first requests took the burst; stored offsets are contiguous.
    for (i, o) in ok.iter().enumerate() {
        if i < 5 {
            assert_eq!(o.seq, i as u64 + 1);
        }
        assert_eq!(o.o, Some(i as u64 + 1));
    }
    let n = ok.len() as u64;
    assert_eq!(
        stored_offsets(&s, "chan:r").await,
        (1..=n).collect::<Vec<_>>(),
        "rate-limited requests were not stored"
    );
    // Below rate_limit_strikes (default 100): the connection stays up.
    roundtrip(&mut c).await;
}

#[tokio::test]
async fn consecutive_rate_limit_strikes_close_4029_and_an_accepted_request_resets_them() {
    // A bucket of one token refilled at 2/s: however long a wait, it admits exactly one request.
    let s = Server::start(&[
        ("LIMITS__REQUESTS_PER_SEC", "2"),
        ("LIMITS__REQUEST_BURST", "1"),
        ("LIMITS__RATE_LIMIT_STRIKES", "3"),
    ]);
    let mut c = Client::connect(&s, "alice", "a1").await;
    // unsub of an unknown channel is answered at once (not_subscribed) when admitted.
    let unsubs = |from: u64, to: u64| {
        (from..=to)
            .map(|seq| json!({"t":"unsub","seq":seq,"chan":"none"}).to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    c.send_text(unsubs(1, 3)).await;
    assert_eq!(c.expect_err(1).await.code, ErrorCode::NotSubscribed);
    for seq in 2..=3 {
        let e = c.expect_err(seq).await;
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert!(e.msg.contains("requests_per_sec"), "{}", e.msg);
    }
    // Two strikes so far. Let the token refill: the next request is admitted and resets the
    // count, so two more strikes do not close the connection.
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.send_text(unsubs(4, 6)).await;
    assert_eq!(c.expect_err(4).await.code, ErrorCode::NotSubscribed);
    assert_eq!(c.expect_err(5).await.code, ErrorCode::RateLimited);
    assert_eq!(c.expect_err(6).await.code, ErrorCode::RateLimited);
    roundtrip(&mut c).await;
    // The third consecutive strike closes the connection.
    c.send_text(unsubs(7, 7)).await;
    assert_eq!(c.expect_err(7).await.code, ErrorCode::RateLimited);
    assert_eq!(closed(&mut c).await, Some(4029));
}

#[tokio::test]
async fn a_full_store_answers_unavailable_loses_nothing_acknowledged_and_keeps_serving() {
    let s = Server::start(&[
        ("STORAGE__MAX_DB_BYTES", "262144"),
        ("RETENTION__TRIM_INTERVAL_MS", "100"),
    ]);
    let mut bob = Client::connect(&s, "bob", "b1").await;
    bob.subscribe("big", None).await;
    let mut alice = Client::connect(&s, "alice", "a1").await;
    let (status, _) = s.get("/readyz").await;
    assert_eq!(status, 200);

    // ~4 KiB bodies, one at a time, until the quota refuses one.
    let mut acked = Vec::new();
    let failed = loop {
        assert!(acked.len() < 400, "the quota never filled up");
        let seq = alice
            .publish(
                "chan:big",
                json!(format!("{:04}{}", acked.len() + 1, "x".repeat(4000))),
            )
            .await;
        match alice.answer(seq).await {
            ServerFrame::Ok(o) => acked.push(o.o.expect("o")),
            ServerFrame::Err(e) => {
                assert_eq!(e.seq, Some(seq));
                break e;
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(failed.code, ErrorCode::Unavailable, "{}", failed.msg);
    assert!(failed.msg.contains("not stored"), "{}", failed.msg);
    assert!(acked.len() >= 5, "some publishes fit: {}", acked.len());
    let n = acked.len() as u64;
    assert_eq!(acked, (1..=n).collect::<Vec<_>>());

    let (status, v) = s.get("/readyz").await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["status"], "unavailable");
    assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
    // Other writes (retention trims every 100 ms) succeeding must not make it look ready while
    // messages still cannot be stored: let several trims run, then look again.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (status, v) = s.get("/readyz").await;
    assert_eq!(status, 503, "still unable to store messages: {v}");

    // Nothing acknowledged is missing, and nothing unacknowledged appeared.
    assert_eq!(stored_offsets(&s, "chan:big").await, acked);
    // Both connections stay up, and deliveries of what was stored keep flowing.
    roundtrip(&mut alice).await;
    let got = bob.msgs(acked.len()).await;
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.o, i as u64 + 1);
        assert!(m.body.get().starts_with(&format!("\"{:04}x", i + 1)));
    }
    bob.expect_silence(Duration::from_millis(200)).await;
    roundtrip(&mut bob).await;
}

#[tokio::test]
async fn first_frame_not_hello_or_wrong_version_closes_4000() {
    let s = Server::start(&[]);
    let mut c = Client::raw(&s).await;
    c.send_text(pub_frame(1, "chan:x", json!(1))).await;
    let e = err_frame(&mut c).await;
    assert_eq!(e.code, ErrorCode::BadFrame);
    assert!(e.msg.contains("hello"), "{}", e.msg);
    assert_eq!(closed(&mut c).await, Some(4000));

    let mut c = Client::raw(&s).await;
    c.send(json!({"t":"hello","v":2,"uid":"alice","device":"a1"}))
        .await;
    let e = err_frame(&mut c).await;
    assert_eq!(e.code, ErrorCode::BadFrame);
    assert!(e.msg.contains("version 2"), "{}", e.msg);
    assert_eq!(closed(&mut c).await, Some(4000));

    let mut c = Client::raw(&s).await;
    c.send_text("not json".into()).await;
    assert_eq!(err_frame(&mut c).await.code, ErrorCode::BadFrame);
    assert_eq!(closed(&mut c).await, Some(4000));
    assert!(stored_offsets(&s, "chan:x").await.is_empty());
}

#[tokio::test]
async fn max_bad_frames_malformed_frames_close_4000_other_errors_do_not_count() {
    let s = Server::start(&[("SESSION__MAX_BAD_FRAMES", "3")]);
    let mut c = Client::connect(&s, "alice", "a1").await;
    // Refused requests that are well-formed do not count.
    for seq in 1..=5u64 {
        c.send_text(pub_frame(seq, "nobody", json!(1))).await;
        assert_eq!(c.expect_err(seq).await.code, ErrorCode::BadTarget);
    }
    c.send_text("{oops".into()).await;
    assert_eq!(err_frame(&mut c).await.code, ErrorCode::BadFrame);
    c.send(json!({"t":"nope"})).await;
    assert_eq!(err_frame(&mut c).await.code, ErrorCode::UnknownType);
    roundtrip(&mut c).await;
    // The third malformed frame: its err, then close 4000.
    c.send_text("}".into()).await;
    assert_eq!(err_frame(&mut c).await.code, ErrorCode::BadFrame);
    assert_eq!(closed(&mut c).await, Some(4000));
}

#[tokio::test]
async fn no_hello_within_hello_timeout_closes_4001() {
    let s = Server::start(&[("SESSION__HELLO_TIMEOUT_MS", "200")]);
    let started = Instant::now();
    let mut c = Client::raw(&s).await;
    assert_eq!(c.expect_close().await, Some(4001));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[tokio::test]
async fn authentication_failure_on_a_non_dev_server_closes_4003() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = Server::start_in(
        tmp.path(),
        &[(
            "AUTH__HS256_SECRET",
            "errors-test-secret-of-at-least-32-bytes!",
        )],
        false,
    );
    let mut c = Client::raw(&s).await;
    c.send(json!({"t":"hello","v":1,"uid":"alice","device":"a1"}))
        .await;
    let e = err_frame(&mut c).await;
    assert_eq!(e.code, ErrorCode::Unauthorized);
    assert!(e.msg.contains("token"), "{}", e.msg);
    assert_eq!(closed(&mut c).await, Some(4003));
    let mut c = Client::raw(&s).await;
    c.send(json!({"t":"hello","v":1,"token":"not.a.jwt"})).await;
    assert_eq!(err_frame(&mut c).await.code, ErrorCode::Unauthorized);
    assert_eq!(closed(&mut c).await, Some(4003));
}

#[tokio::test]
async fn a_silent_client_is_closed_4008_after_heartbeat_plus_grace() {
    let s = Server::start(&[
        ("SESSION__HEARTBEAT_MS", "200"),
        ("SESSION__HEARTBEAT_GRACE_MS", "200"),
    ]);
    let mut c = Client::connect(&s, "alice", "a1").await;
    assert_eq!(c.w().heartbeat_ms, 200);
    let started = Instant::now();
    let mut pings = 0;
    let code = loop {
        match c.next().await {
            Event::Frame(ServerFrame::Ping) => pings += 1,
            Event::Closed(code) => break code,
            other => panic!("unexpected {other:?}"),
        }
    };
    let waited = started.elapsed();
    assert_eq!(code, Some(4008));
    assert!(pings >= 1, "the server pinged before giving up");
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_secs(4),
        "closed after {waited:?}; expected about heartbeat_ms + grace = 400 ms"
    );
    // The session survives the dead connection: it can be resumed.
    let w = c.w().clone();
    let r = Client::resume(&s, &w).await;
    assert!(r.w().resumed);
}

#[tokio::test]
async fn the_server_pings_every_heartbeat_and_answering_pong_keeps_the_connection() {
    let s = Server::start(&[
        ("SESSION__HEARTBEAT_MS", "200"),
        ("SESSION__HEARTBEAT_GRACE_MS", "200"),
    ]);
    let mut c = Client::connect(&s, "alice", "a1").await;
    let started = Instant::now();
    let mut at = Vec::new();
    // 1.5 s is well past the 400 ms deadline of a silent client.
    let until = Duration::from_millis(1500);
    while started.elapsed() < until {
        let left = until.saturating_sub(started.elapsed());
        match c.next_within(left).await {
            None => break,
            Some(Event::Frame(ServerFrame::Ping)) => {
                at.push(started.elapsed());
                c.send(json!({"t":"pong"})).await;
            }
            Some(other) => panic!("unexpected {other:?} (pongs should keep the connection)"),
        }
    }
    assert!(
        (4..=9).contains(&at.len()),
        "about one ping per 200 ms over 1.5 s: {at:?}"
    );
    assert!(at[0] >= Duration::from_millis(100), "{at:?}");
    for w in at.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(100),
            "pings too close: {at:?}"
        );
    }
    let mean = (at[at.len() - 1] - at[0]) / (at.len() as u32 - 1);
    assert!(
        mean >= Duration::from_millis(150) && mean <= Duration::from_millis(400),
        "mean interval {mean:?}"
    );
    roundtrip(&mut c).await;
    // Stop answering: the deadline applies again.
    assert_eq!(c.expect_close().await, Some(4008));
}

#[tokio::test]
async fn a_frame_over_max_frame_bytes_closes_1009() {
    let s = Server::start(&[
        ("LIMITS__MAX_FRAME_BYTES", "4096"),
        ("LIMITS__MAX_BODY_BYTES", "2048"),
    ]);
    let mut c = Client::connect(&s, "alice", "a1").await;
    assert_eq!(c.w().limits.max_frame_bytes, 4096);
    // Under the frame limit but over the body limit: an err, the connection stays.
    let seq = c.publish("chan:x", json!("b".repeat(3000))).await;
    assert_eq!(c.expect_err(seq).await.code, ErrorCode::TooLarge);
    c.publish_ok("chan:x", json!("b".repeat(2000))).await;
    // Over the frame limit: closed 1009.
    c.send_text(pub_frame(3, "chan:x", json!("c".repeat(5000))))
        .await;
    let code = loop {
        match c.next().await {
            Event::Frame(ServerFrame::Err(e)) => assert_eq!(e.code, ErrorCode::TooLarge),
            Event::Frame(ServerFrame::Ping) => {}
            Event::Closed(code) => break code,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, Some(1009));
    assert_eq!(stored_offsets(&s, "chan:x").await, [1]);
}

#[tokio::test]
async fn a_binary_frame_gets_bad_frame_and_the_connection_stays() {
    let s = Server::start(&[]);
    let mut c = Client::connect(&s, "alice", "a1").await;
    c.send_message(Message::Binary(br#"{"t":"ping"}"#.to_vec().into()))
        .await;
    let e = err_frame(&mut c).await;
    assert_eq!((e.code, e.seq), (ErrorCode::BadFrame, None));
    assert!(e.msg.contains("binary"), "{}", e.msg);
    roundtrip(&mut c).await;
}

#[tokio::test]
async fn a_second_hello_gets_bad_frame_and_changes_nothing() {
    let s = Server::start(&[]);
    let mut c = Client::connect(&s, "alice", "a1").await;
    c.send(json!({"t":"hello","v":1,"uid":"mallory","device":"m1"}))
        .await;
    let e = err_frame(&mut c).await;
    assert_eq!(e.code, ErrorCode::BadFrame);
    assert!(e.msg.contains("hello"), "{}", e.msg);
    let ok = c.publish_ok("user:bob", json!("hi")).await;
    assert_eq!(ok.s.as_deref(), Some("inbox"));
    let mut bob = Client::connect(&s, "bob", "b1").await;
    assert_eq!(
        bob.expect_msg().await.from,
        "alice",
        "still alice after the second hello"
    );
}

#[tokio::test]
async fn several_requests_in_one_text_frame_get_their_answers_in_order() {
    let s = Server::start(&[]);
    let mut c = Client::connect(&s, "alice", "a1").await;
    // A pub (answered after the store commits), an unsub that fails at once, and a sub:
    // the answers still come in request order.
    let batch = [
        pub_frame(1, "chan:nb", json!({"n": 1})),
        json!({"t":"unsub","seq":2,"chan":"never"}).to_string(),
        json!({"t":"sub","seq":3,"chan":"nb","from":0}).to_string(),
    ]
    .join("\n");
    c.send_text(batch).await;
    match frame(&mut c).await {
        ServerFrame::Ok(OkFrame { seq: 1, o, .. }) => assert_eq!(o, Some(1)),
        other => panic!("expected ok 1, got {other:?}"),
    }
    let e = err_frame(&mut c).await;
    assert_eq!((e.seq, e.code), (Some(2), ErrorCode::NotSubscribed));
    match frame(&mut c).await {
        // The sub was applied while the pub was still being committed: its `o` (the last
        // offset when it was applied) may or may not include it; from=0 replays it either way.
        ServerFrame::Ok(OkFrame { seq: 3, s, o, .. }) => {
            assert_eq!(s.as_deref(), Some("chan:nb"));
            assert!(matches!(o, Some(0 | 1)), "{o:?}");
        }
        other => panic!("expected ok 3, got {other:?}"),
    }
    assert_eq!(c.expect_msg().await.o, 1);
    c.expect_silence(Duration::from_millis(200)).await;

    // Requests batched after the hello in its frame are handled too.
    let mut d = Client::raw(&s).await;
    let batch = [
        json!({"t":"hello","v":1,"uid":"bob","device":"b1"}).to_string(),
        pub_frame(1, "chan:nb", json!({"n": 2})),
    ]
    .join("\n");
    d.send_text(batch).await;
    assert!(matches!(frame(&mut d).await, ServerFrame::Welcome(_)));
    assert_eq!(d.expect_ok(1).await.o, Some(2));
}

#[tokio::test]
async fn server_batches_deliveries_into_frames_and_keeps_their_order() {
    let s = Server::start(&[]);
    let mut alice = Client::connect(&s, "alice", "a1").await;
    let n = 500u64;
    let batch: Vec<String> = (1..=n)
        .map(|i| pub_frame(i, "chan:many", json!({"i": i})))
        .collect();
    alice.send_text(batch.join("\n")).await;
    for seq in 1..=n {
        assert_eq!(alice.expect_ok(seq).await.o, Some(seq));
    }
    alice.seq = n;

    // Replay: the backlog goes out in few frames, several messages per frame.
    let mut bob = Client::connect(&s, "bob", "b1").await;
    let before = bob.text_frames;
    bob.subscribe("many", Some(0)).await;
    let msgs = bob.msgs(n as usize).await;
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m.o, i as u64 + 1);
        assert_eq!(m.body.get(), format!(r#"{{"i":{}}}"#, i + 1));
    }
    let frames = bob.text_frames - before;
    assert!(
        frames < n / 5,
        "{n} deliveries (and the sub ok) came in {frames} frames: the server batches"
    );
    // Live deliveries keep their order too.
    let batch: Vec<String> = (n + 1..=n + 200)
        .map(|i| pub_frame(i, "chan:many", json!({"i": i})))
        .collect();
    alice.send_text(batch.join("\n")).await;
    let live = bob.msgs(200).await;
    assert_eq!(
        live.iter().map(|m| m.o).collect::<Vec<_>>(),
        (n + 1..=n + 200).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_seq_already_processed_gets_its_original_answer_and_is_not_applied_again() {
    let s = Server::start(&[]);
    let mut c = Client::connect(&s, "alice", "a1").await;
    c.send_text(pub_frame(1, "chan:d", json!("first"))).await;
    let first = c.expect_ok(1).await;
    assert_eq!(first.o, Some(1));
    c.send_text(pub_frame(2, "bob", json!("bad"))).await;
    let bad = c.expect_err(2).await;
    assert_eq!(bad.code, ErrorCode::BadTarget);
    c.send(json!({"t":"sub","seq":3,"chan":"d"})).await;
    let sub = c.expect_ok(3).await;

    // Resent with other contents: the original answers, nothing applied.
    c.send_text(pub_frame(1, "chan:d", json!("again"))).await;
    assert_eq!(c.expect_ok(1).await, first);
    c.send_text(pub_frame(2, "chan:d", json!("now valid")))
        .await;
    assert_eq!(
        c.expect_err(2).await,
        bad,
        "an err answer counts as processed"
    );
    c.send(json!({"t":"unsub","seq":3,"chan":"d"})).await;
    assert_eq!(c.expect_ok(3).await, sub, "seq 3 stays the sub");
    c.seq = 3;
    assert_eq!(c.publish_ok("chan:d", json!("second")).await.o, Some(2));
    // Still subscribed (the resent seq 3 was not applied as an unsub).
    let m = c.expect_msg().await;
    assert_eq!((m.o, m.body.get()), (2, "\"second\""));
    assert_eq!(stored_offsets(&s, "chan:d").await, [1, 2]);

    // Past the answer cache (256 answers), a processed seq gets a bare dup ok.
    let batch: Vec<String> = (5..=265)
        .map(|i| pub_frame(i, "chan:other", json!(i)))
        .collect();
    c.send_text(batch.join("\n")).await;
    c.expect_ok(265).await;
    c.send_text(pub_frame(1, "chan:d", json!("late"))).await;
    let dup = c.expect_ok(1).await;
    assert_eq!(
        dup,
        OkFrame {
            seq: 1,
            dup: true,
            ..Default::default()
        }
    );
    assert_eq!(stored_offsets(&s, "chan:d").await, [1, 2]);
    // The resume reports the highest processed seq.
    let w = c.w().clone();
    drop(c);
    let r = Client::resume(&s, &w).await;
    assert_eq!(r.w().acked_seq, 265);
}

#[tokio::test]
async fn a_resent_processed_request_gets_its_original_answer_even_when_over_the_rate() {
    let s = Server::start(&[
        ("LIMITS__REQUESTS_PER_SEC", "1"),
        ("LIMITS__REQUEST_BURST", "2"),
    ]);
    let mut c = Client::connect(&s, "alice", "a1").await;
    let first = c.publish_ok("chan:d", json!(1)).await;
    c.publish_ok("chan:d", json!(2)).await;
    // The bucket is empty now. A resend of seq 1 is not a new request: it is answered from the
    // cache (not rate_limited, which would tell the client to publish it again).
    c.send_text(pub_frame(1, "chan:d", json!("again"))).await;
    assert_eq!(c.expect_ok(1).await, first);
    c.send_text(pub_frame(3, "chan:d", json!(3))).await;
    assert_eq!(c.expect_err(3).await.code, ErrorCode::RateLimited);
    // Asked again, seq 1 still has its original answer.
    c.send_text(pub_frame(1, "chan:d", json!("again"))).await;
    assert_eq!(c.expect_ok(1).await, first);
    assert_eq!(stored_offsets(&s, "chan:d").await, [1, 2]);
}

#[tokio::test]
async fn a_client_flooding_requests_still_receives_the_4029_close() {
    let s = Server::start(&[
        ("LIMITS__REQUESTS_PER_SEC", "5"),
        ("LIMITS__REQUEST_BURST", "5"),
        ("LIMITS__RATE_LIMIT_STRIKES", "3"),
    ]);
    let mut c = Client::connect(&s, "alice", "a1").await;
    // Keep sending well after the server decided to close: its close frame must not be lost
    // to a connection reset caused by the unread input.
    let mut seq = 0u64;
    for _ in 0..200 {
        let frame: Vec<String> = (0..20)
            .map(|_| {
                seq += 1;
                json!({"t":"unsub","seq":seq,"chan":"none"}).to_string()
            })
            .collect();
        c.send_text(frame.join("\n")).await;
    }
    let mut limited = 0;
    let code = loop {
        match c.next().await {
            Event::Frame(ServerFrame::Err(e)) if e.code == ErrorCode::RateLimited => limited += 1,
            Event::Frame(ServerFrame::Err(e)) => assert_eq!(e.code, ErrorCode::NotSubscribed),
            Event::Frame(ServerFrame::Ping) => {}
            Event::Closed(code) => break code,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, Some(4029));
    assert_eq!(limited, 3, "closed at the third consecutive strike");
}

#[tokio::test]
async fn an_oversized_hello_gets_too_large_and_closes_1009() {
    let s = Server::start(&[
        ("LIMITS__MAX_FRAME_BYTES", "4096"),
        ("LIMITS__MAX_BODY_BYTES", "2048"),
    ]);
    let mut c = Client::raw(&s).await;
    let pad = "x".repeat(5000);
    c.send_text(format!(
        r#"{{"t":"hello","v":1,"uid":"alice","pad":"{pad}"}}"#
    ))
    .await;
    let code = loop {
        match c.next().await {
            Event::Frame(ServerFrame::Err(e)) => assert_eq!(e.code, ErrorCode::TooLarge),
            Event::Closed(code) => break code,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, Some(1009));
}
