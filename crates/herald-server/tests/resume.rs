//! Resuming sessions: positions, redelivery, resent requests, and every way a resume can fail
//! (bad_key, unknown, expired, bye, kicked), each recorded as an event.
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Client, Server};
use herald_protocol::{close, EvictReason, Msg, ResumeError, Welcome};
use serde_json::{json, Value};

/// Offsets per stream, in arrival order.
fn by_stream(msgs: &[Msg]) -> BTreeMap<String, Vec<u64>> {
    let mut m: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for msg in msgs {
        m.entry(msg.s.clone()).or_default().push(msg.o);
    }
    m
}

fn body(m: &Msg) -> Value {
    serde_json::from_str(m.body.get()).expect("body is JSON")
}

/// Waits until the inbox message `id` is acknowledged by `device` in the durable trace.
async fn wait_inbox_acked(s: &Server, id: &str, device: &str) {
    s.wait_for(&format!("/v1/messages/{id}"), |v| {
        v["recipients"].as_array().is_some_and(|r| {
            r.iter()
                .any(|r| r["device"] == device && r["state"] == "acked")
        })
    })
    .await;
}

/// The `resume_failed` event for `session`, once recorded.
async fn resume_failed_event(s: &Server, session: &str) -> Value {
    let v = s
        .wait_for("/v1/events?type=resume_failed&limit=1000", |v| {
            v["items"]
                .as_array()
                .is_some_and(|i| i.iter().any(|e| e["session"] == session))
        })
        .await;
    v["items"]
        .as_array()
        .and_then(|i| i.iter().find(|e| e["session"] == session).cloned())
        .expect("event")
}

/// Sends `hello` with a resume of `w`'s session but `key`, expecting a welcome.
async fn resume_with_key(s: &Server, w: &Welcome, key: &str) -> Client {
    Client::hello(
        s,
        json!({"t":"hello","v":1,"uid":w.uid,"device":w.device,
               "resume":{"session":w.session,"key":key}}),
    )
    .await
}

/// Resumes `w` expecting a refusal that starts a new session with `err`.
async fn expect_resume_error(s: &Server, w: &Welcome, err: ResumeError) -> Client {
    let c = Client::resume(s, w).await;
    assert!(!c.w().resumed, "resume must not be granted: {:?}", c.w());
    assert_eq!(c.w().resume_error, Some(err));
    assert_ne!(c.w().session, w.session, "a new session was made");
    assert_eq!(c.w().acked_seq, 0);
    assert!(c.w().subs.is_empty(), "subscriptions are gone");
    c
}

#[tokio::test]
async fn resume_after_a_cut_keeps_the_session_and_redelivers_only_what_was_not_acked() {
    let s = Server::start(&[]);
    let mut bob = Client::connect(&s, "bob", "b1").await;
    assert_eq!(bob.subscribe("room", None).await.o, Some(0)); // seq 1
    let mut alice = Client::connect(&s, "alice", "a1").await;
    let mut inbox_ids = Vec::new();
    for i in 1..=3 {
        alice.publish_ok("chan:room", json!({"room": i})).await;
        inbox_ids.push(
            alice
                .publish_ok("user:bob", json!({"dm": i}))
                .await
                .id
                .expect("id"),
        );
    }
    let got = by_stream(&bob.msgs(6).await);
    assert_eq!(got["chan:room"], [1, 2, 3]);
    assert_eq!(got["inbox"], [1, 2, 3]);
    bob.publish_ok("chan:elsewhere", json!("mine")).await; // seq 2
    bob.ack("chan:room", 2).await;
    bob.ack("inbox", 1).await;
    bob.sync().await;
    wait_inbox_acked(&s, &inbox_ids[0], "b1").await;
    let w = bob.w().clone();
    bob.cut();

    // Published while bob is away (or about to be noticed away).
    alice.publish_ok("chan:room", json!({"room": 4})).await;
    alice.publish_ok("user:bob", json!({"dm": 4})).await;

    let mut bob = Client::resume(&s, &w).await;
    let w2 = bob.w().clone();
    assert!(w2.resumed);
    assert_eq!(w2.resume_error, None);
    assert_eq!(w2.session, w.session);
    assert_eq!(w2.key, w.key);
    assert_ne!(w2.conn, w.conn);
    assert_eq!((w2.uid.as_str(), w2.device.as_str()), ("bob", "b1"));
    assert_eq!(w2.acked_seq, 2, "the last seq the server processed");
    assert_eq!(w2.subs.len(), 1);
    assert_eq!(w2.subs["room"].o, 2, "the acknowledged channel position");

    // Everything after the acknowledged positions, nothing before, in order per stream.
    let msgs = bob.msgs(5).await;
    let got = by_stream(&msgs);
    assert_eq!(got["chan:room"], [3, 4]);
    assert_eq!(got["inbox"], [2, 3, 4]);
    for m in &msgs {
        let b = body(m);
        let n = if m.s == "inbox" { &b["dm"] } else { &b["room"] };
        assert_eq!(n, m.o, "offset {} of {} carries its own body", m.o, m.s);
    }
    bob.expect_silence(Duration::from_millis(300)).await;
    // The session's seq numbering continues after acked_seq.
    bob.seq = w2.acked_seq;
    let ok = bob.publish_ok("chan:elsewhere", json!("again")).await;
    assert_eq!((ok.seq, ok.o), (3, Some(2)));
}

#[tokio::test]
async fn messages_published_while_disconnected_are_delivered_after_resume() {
    let s = Server::start(&[]);
    let mut bob = Client::connect(&s, "bob", "b1").await;
    bob.subscribe("room", None).await;
    let w = bob.w().clone();
    bob.cut();
    s.wait_detached("bob", &w.session).await;

    let mut alice = Client::connect(&s, "alice", "a1").await;
    let ok = alice.publish_ok("user:bob", json!("while away")).await;
    assert_eq!(ok.online, Some(0), "bob's only session is disconnected");
    alice
        .publish_ok("chan:room", json!("room while away"))
        .await;
    // Also through the HTTP API.
    let (st, _) = s
        .post(
            "/v1/publish",
            json!({"to":"user:bob","body":"api while away"}),
        )
        .await;
    assert_eq!(st, 200);

    let mut bob = Client::resume(&s, &w).await;
    assert!(bob.w().resumed);
    assert_eq!(bob.w().subs["room"].o, 0);
    let msgs = bob.msgs(3).await;
    let got = by_stream(&msgs);
    assert_eq!(got["inbox"], [1, 2]);
    assert_eq!(got["chan:room"], [1]);
    let inbox: Vec<&str> = msgs
        .iter()
        .filter(|m| m.s == "inbox")
        .map(|m| m.body.get())
        .collect();
    assert_eq!(inbox, [r#""while away""#, r#""api while away""#]);
    bob.expect_silence(Duration::from_millis(200)).await;

    // And live delivery continues on the resumed connection.
    alice.publish_ok("chan:room", json!("live")).await;
    assert_eq!(bob.expect_msg().await.o, 2);
}

#[tokio::test]
async fn resent_requests_are_not_applied_again_and_get_their_original_answer() {
    let s = Server::start(&[]);
    let mut c = Client::connect(&s, "alice", "a1").await;
    let w = c.w().clone();
    for i in 1..=5 {
        assert_eq!(c.publish("chan:log", json!({"n": i})).await, i);
    }
    // Cut before reading any answer, but only once the server processed all five.
    s.wait_for("/v1/sessions?uid=alice", |v| {
        v["items"].as_array().is_some_and(|i| {
            i.iter()
                .any(|x| x["id"] == w.session.as_str() && x["acked_seq"] == 5)
        })
    })
    .await;
    c.cut();

    let mut c = Client::resume(&s, &w).await;
    assert!(c.w().resumed);
    assert_eq!(c.w().acked_seq, 5);
    // The client resends every buffered request above acked_seq: none here.
    assert_eq!((1..=5u64).filter(|&q| q > c.w().acked_seq).count(), 0);

    let history = s.get("/v1/streams/chan:log?limit=100").await.1;
    let items = history["items"].as_array().expect("items").clone();
    assert_eq!(items.len(), 5);
    assert_eq!(history["last"], 5);

    // A resent seq anyway (a client that did not trust acked_seq): the original answer.
    c.send(json!({"t":"pub","seq":3,"to":"chan:log","body":{"n":3}}))
        .await;
    let ok = c.expect_ok(3).await;
    assert!(!ok.dup, "the cached original answer, not a bare dup");
    assert_eq!(ok.id.as_deref(), items[2]["id"].as_str());
    assert_eq!(ok.s.as_deref(), Some("chan:log"));
    assert_eq!(ok.o, Some(3));
    // All of them again, batched in one frame: each gets its own original answer.
    let batch: Vec<String> = (1..=5)
        .map(|i| json!({"t":"pub","seq":i,"to":"chan:log","body":{"n":i}}).to_string())
        .collect();
    c.send_text(batch.join("\n")).await;
    for i in 1..=5u64 {
        let ok = c.expect_ok(i).await;
        assert_eq!(ok.o, Some(i));
        assert_eq!(ok.id.as_deref(), items[i as usize - 1]["id"].as_str());
    }
    let history = s.get("/v1/streams/chan:log?limit=100").await.1;
    assert_eq!(history["items"].as_array().map(Vec::len), Some(5));
    assert_eq!(history["last"], 5, "nothing stored twice");
    c.expect_silence(Duration::from_millis(200)).await;

    // The next new request is applied normally.
    c.seq = 5;
    assert_eq!(c.publish_ok("chan:log", json!({"n": 6})).await.o, Some(6));
}

#[tokio::test]
async fn a_cut_mid_pipeline_then_resending_above_acked_seq_stores_each_request_exactly_once() {
    let s = Server::start(&[]);
    let mut c = Client::connect(&s, "alice", "a1").await;
    let w = c.w().clone();
    let batch: Vec<String> = (1..=30)
        .map(|i| json!({"t":"pub","seq":i,"to":"chan:pipe","body":{"n":i}}).to_string())
        .collect();
    c.send_text(batch[..15].join("\n")).await;
    for f in &batch[15..] {
        c.send_text(f.clone()).await;
    }
    c.cut(); // whatever the server had read and processed by now

    let mut c = Client::resume(&s, &w).await;
    assert!(c.w().resumed);
    let k = c.w().acked_seq;
    assert!(k <= 30);
    for i in k + 1..=30 {
        c.send_text(batch[i as usize - 1].clone()).await;
    }
    for i in k + 1..=30 {
        assert_eq!(c.expect_ok(i).await.o, Some(i), "seq {i}");
    }
    // Anything at or below acked_seq is answered without being applied again.
    for i in 1..=k {
        c.send_text(batch[i as usize - 1].clone()).await;
        let ok = c.expect_ok(i).await;
        assert!(ok.o == Some(i) || ok.dup, "seq {i}: {ok:?}");
    }
    let history = s.get("/v1/streams/chan:pipe?limit=100").await.1;
    let ns: Vec<u64> = history["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| {
            assert_eq!(m["body"]["n"], m["o"], "offsets follow seq order");
            m["body"]["n"].as_u64().unwrap_or(0)
        })
        .collect();
    assert_eq!(
        ns,
        (1..=30).collect::<Vec<u64>>(),
        "each request exactly once"
    );
}

#[tokio::test]
async fn resume_with_a_bad_key_makes_a_new_session_and_records_bad_key() {
    let s = Server::start(&[]);
    let mut c = Client::connect(&s, "alice", "phone").await;
    c.subscribe("room", None).await;
    let w = c.w().clone();
    c.cut();
    s.wait_detached("alice", &w.session).await;

    // From another device: refused, the old session is left untouched.
    let mut forged = w.clone();
    forged.device = "laptop".into();
    let n = resume_with_key(&s, &forged, "not-the-key").await;
    assert!(!n.w().resumed);
    assert_eq!(n.w().resume_error, Some(ResumeError::BadKey));
    assert_ne!(n.w().session, w.session);
    assert!(n.w().subs.is_empty());
    assert_eq!(n.w().acked_seq, 0);
    let e = resume_failed_event(&s, &w.session).await;
    assert_eq!(e["data"]["reason"], "bad_key");
    assert_eq!(e["conn"], n.w().conn.as_str());
    assert_eq!(e["uid"], "alice");
    let c = Client::resume(&s, &w).await;
    assert!(c.w().resumed, "the right key still resumes it");
    assert!(c.w().subs.contains_key("room"));
    let w = c.w().clone();
    c.cut();
    s.wait_detached("alice", &w.session).await;

    // From the same device: the new session is a fresh login of that device, and under
    // identity.policy = multi it replaces the old session (herald's documented choice).
    let n = resume_with_key(&s, &w, "still-not-the-key").await;
    assert_eq!(n.w().resume_error, Some(ResumeError::BadKey));
    let mut late = Client::hello_raw(&s, Client::resume_hello(&w)).await;
    let (ev, code) = late.expect_evicted_first().await;
    assert_eq!(ev.reason, EvictReason::Replaced);
    assert_eq!(ev.by.conn.as_deref(), Some(n.w().conn.as_str()));
    assert_eq!(code, Some(close::EVICTED));
}

#[tokio::test]
async fn resume_of_an_unknown_session_or_of_another_uid_is_unknown() {
    let s = Server::start(&[]);
    let mut alice = Client::connect(&s, "alice", "a1").await;
    let mut w = alice.w().clone();

    let mut bogus = w.clone();
    bogus.session = "s_does_not_exist".into();
    bogus.device = "a2".into(); // a fresh login of a1 would replace alice's session
    let c = expect_resume_error(&s, &bogus, ResumeError::Unknown).await;
    let e = resume_failed_event(&s, "s_does_not_exist").await;
    assert_eq!(e["data"]["reason"], "unknown");
    assert_eq!(e["conn"], c.w().conn.as_str());

    // bob holding alice's session id and key gets nothing of hers.
    w.uid = "bob".into();
    w.device = "b1".into();
    let b = expect_resume_error(&s, &w, ResumeError::Unknown).await;
    assert_eq!(b.w().uid, "bob");
    let v = s
        .wait_for("/v1/events?type=resume_failed&uid=bob", |v| {
            v["items"].as_array().is_some_and(|i| !i.is_empty())
        })
        .await;
    assert_eq!(v["items"][0]["session"], alice.w().session.as_str());
    assert_eq!(v["items"][0]["data"]["reason"], "unknown");
    alice.expect_silence(Duration::from_millis(150)).await;
    alice.sync().await;
}

#[tokio::test]
async fn resume_after_the_reconnect_window_is_expired() {
    let s = Server::start(&[("SESSION__RECONNECT_TIMEOUT_MS", "300")]);
    // Inside the window: resumed.
    let c = Client::connect(&s, "alice", "a1").await;
    assert_eq!(c.w().reconnect_timeout_ms, 300);
    let w = c.w().clone();
    c.cut();
    s.wait_detached("alice", &w.session).await;
    let mut c = Client::resume(&s, &w).await;
    assert!(c.w().resumed);
    c.subscribe("room", None).await;

    // Past it: expired, with a new session.
    let w = c.w().clone();
    c.cut();
    s.wait_detached("alice", &w.session).await;
    tokio::time::sleep(Duration::from_millis(400)).await; // let the window pass
    expect_resume_error(&s, &w, ResumeError::Expired).await;
    let e = resume_failed_event(&s, &w.session).await;
    assert_eq!(e["data"]["reason"], "expired");
}

#[tokio::test]
async fn a_clients_smaller_reconnect_timeout_is_honoured() {
    let s = Server::start(&[]); // server window: 60 s
    let hello = |device: &str, rt: Option<u64>| {
        let mut h = json!({"t":"hello","v":1,"uid":"alice","device":device});
        if let Some(rt) = rt {
            h["reconnect_timeout_ms"] = json!(rt);
        }
        h
    };
    let short = Client::hello(&s, hello("short", Some(250))).await;
    assert_eq!(short.w().reconnect_timeout_ms, 250);
    let long = Client::hello(&s, hello("long", Some(3_600_000))).await;
    assert_eq!(
        long.w().reconnect_timeout_ms,
        60_000,
        "capped by the server"
    );
    let dflt = Client::hello(&s, hello("default", None)).await;
    assert_eq!(dflt.w().reconnect_timeout_ms, 60_000);

    let (ws, wl) = (short.w().clone(), long.w().clone());
    short.cut();
    long.cut();
    s.wait_detached("alice", &ws.session).await;
    s.wait_detached("alice", &wl.session).await;
    tokio::time::sleep(Duration::from_millis(350)).await; // past the client's window only
    expect_resume_error(&s, &ws, ResumeError::Expired).await;
    assert!(Client::resume(&s, &wl).await.w().resumed);
}

#[tokio::test]
async fn reconnect_timeout_zero_ends_the_session_at_disconnect() {
    let s = Server::start(&[]);
    let c = Client::hello(
        &s,
        json!({"t":"hello","v":1,"uid":"alice","device":"a1","reconnect_timeout_ms":0}),
    )
    .await;
    assert_eq!(c.w().reconnect_timeout_ms, 0);
    let w = c.w().clone();
    c.cut();
    // No window: the session is closed as soon as the server sees the disconnect.
    s.wait_for("/v1/sessions?uid=alice", |v| {
        v["items"].as_array().is_some_and(|i| i.is_empty())
    })
    .await;
    expect_resume_error(&s, &w, ResumeError::Expired).await;
    let e = resume_failed_event(&s, &w.session).await;
    assert_eq!(e["data"]["reason"], "expired");
}

#[tokio::test]
async fn bye_ends_the_session_at_once_and_a_resume_is_expired() {
    let s = Server::start(&[]);
    let mut c = Client::connect(&s, "alice", "a1").await;
    c.subscribe("room", None).await;
    let w = c.w().clone();
    c.send(json!({"t":"bye"})).await;
    assert_eq!(c.expect_close().await, Some(1000));
    expect_resume_error(&s, &w, ResumeError::Expired).await;
    assert!(s.session_info("alice", &w.session).await.is_none());
    let e = resume_failed_event(&s, &w.session).await;
    assert_eq!(e["data"]["reason"], "expired");
}

#[tokio::test]
async fn resume_of_a_kicked_session_gets_evicted_kicked() {
    let s = Server::start(&[]);
    let mut c = Client::connect(&s, "alice", "a1").await;
    let w = c.w().clone();
    let (st, v) = s.delete(&format!("/v1/sessions/{}", w.session)).await;
    assert_eq!(st, 200);
    assert_eq!(v["kicked"], w.session.as_str());
    let (ev, code) = c.expect_evicted().await;
    assert_eq!(ev.reason, EvictReason::Kicked);
    assert_eq!(ev.by.conn, None, "kicked by an operator, not a connection");
    assert!(ev.by.addr.as_deref().is_some_and(|a| a.starts_with("api:")));
    assert_eq!(code, Some(close::EVICTED));

    let mut late = Client::hello_raw(&s, Client::resume_hello(&w)).await;
    let (ev, code) = late.expect_evicted_first().await;
    assert_eq!(ev.reason, EvictReason::Kicked);
    assert_eq!(code, Some(close::EVICTED));

    let (st, v) = s.delete(&format!("/v1/sessions/{}", w.session)).await;
    assert_eq!(st, 404);
    assert_eq!(v["error"]["code"], "not_found");

    let e = resume_failed_event(&s, &w.session).await;
    assert_eq!(e["data"]["reason"], "evicted");
    assert_eq!(e["data"]["evicted"], "kicked");
    let v = s
        .wait_for("/v1/events?type=eviction", |v| {
            v["items"].as_array().is_some_and(|i| !i.is_empty())
        })
        .await;
    assert_eq!(v["items"][0]["session"], w.session.as_str());
    assert_eq!(v["items"][0]["data"]["reason"], "kicked");
    assert_eq!(
        s.metric("herald_evictions_total{reason=\"kicked\"}").await,
        1.0
    );
    // A fresh login of the device is welcome again.
    assert!(!Client::connect(&s, "alice", "a1").await.w().resumed);
}
