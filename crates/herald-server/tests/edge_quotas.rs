//! Quotas, each named by its setting and answered with a code: subscriptions per session
//! (`quota_exceeded`), publishes per uid per second over all its connections and new
//! sessions per uid per minute (`rate_limited`). Against a real server process.
// A real server process runs on wall-clock time.
#![allow(clippy::disallowed_types)]
mod common;

use common::{Client, Event, Server};
use herald_protocol::{close, ErrorCode, ServerFrame};
use serde_json::json;

#[tokio::test]
async fn subscriptions_per_session_are_capped() {
    let s = Server::start(&[("LIMITS__MAX_SUBS_PER_SESSION", "3")]);
    let mut c = Client::connect(&s, "ivy", "i1").await;
    for chan in ["a", "b", "c"] {
        c.subscribe(chan, None).await;
    }
    let seq = c.request(json!({"t":"sub","chan":"d"})).await;
    let e = c.expect_err(seq).await;
    assert_eq!(e.code, ErrorCode::QuotaExceeded, "{e:?}");
    assert!(e.msg.contains("limits.max_subs_per_session"), "{e:?}");
    // Subscribing again to a channel it has is not a new subscription.
    c.subscribe("a", None).await;
    let seq = c.request(json!({"t":"unsub","chan":"a"})).await;
    c.expect_ok(seq).await;
    c.subscribe("d", None).await;
}

#[tokio::test]
async fn publishes_per_uid_are_limited_across_connections() {
    let s = Server::start(&[("LIMITS__PUBLISHES_PER_UID_PER_SEC", "5")]);
    let mut c1 = Client::connect(&s, "jo", "phone").await;
    let mut c2 = Client::connect(&s, "jo", "laptop").await;
    let mut seqs = Vec::new();
    let t0 = tokio::time::Instant::now();
    for i in 0..5 {
        seqs.push((
            1,
            c1.request(json!({"t":"pub","to":"chan:x","body":i})).await,
        ));
        seqs.push((
            2,
            c2.request(json!({"t":"pub","to":"chan:x","body":i})).await,
        ));
    }
    let (mut ok, mut limited) = (0, 0);
    for (who, seq) in seqs {
        let c = if who == 1 { &mut c1 } else { &mut c2 };
        match c.answer(seq).await {
            ServerFrame::Ok(_) => ok += 1,
            ServerFrame::Err(e) => {
                assert_eq!(e.code, ErrorCode::RateLimited, "{e:?}");
                assert!(e.msg.contains("limits.publishes_per_uid_per_sec"), "{e:?}");
                limited += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    // 5 at once, plus what refilled (5 per second) while the ten were answered.
    let refilled = (t0.elapsed().as_secs_f64() * 5.0).ceil() as usize;
    assert!(
        ok >= 5 && ok <= 5 + refilled,
        "ok {ok}, limited {limited}, refilled {refilled}"
    );
    assert!(limited >= 1, "nothing was limited: ok {ok}");
    assert_eq!(ok + limited, 10);
    // Another uid has its own allowance.
    let mut k = Client::connect(&s, "kim", "k1").await;
    k.publish_ok("chan:x", json!(1)).await;
    // Refused publishes were not stored.
    let (_, h) = s.get("/v1/streams/chan:x").await;
    assert_eq!(h["items"].as_array().map(Vec::len), Some(ok + 1), "{h}");
}

#[tokio::test]
async fn new_sessions_per_uid_per_minute_are_limited_but_resumes_are_not() {
    let s = Server::start(&[("LIMITS__SESSIONS_PER_UID_PER_MIN", "3")]);
    let mut first = None;
    for d in ["d1", "d2", "d3"] {
        let c = Client::connect(&s, "lee", d).await;
        first.get_or_insert_with(|| c.w().clone());
    }
    let mut fourth =
        Client::hello_raw(&s, json!({"t":"hello","v":1,"uid":"lee","device":"d4"})).await;
    match fourth.next().await {
        Event::Frame(ServerFrame::Err(e)) => {
            assert_eq!(e.code, ErrorCode::RateLimited, "{e:?}");
            assert!(e.msg.contains("limits.sessions_per_uid_per_min"), "{e:?}");
        }
        other => panic!("expected err rate_limited, got {other:?}"),
    }
    assert_eq!(fourth.expect_close().await, Some(close::RATE_LIMITED));
    // A resume is not a new session.
    let w = first.expect("first welcome");
    let r = Client::resume(&s, &w).await;
    assert!(r.w().resumed, "{:?}", r.w());
    // Other uids are unaffected.
    Client::connect(&s, "max", "m1").await;
}
