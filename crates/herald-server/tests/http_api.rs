//! The HTTP API for backends and operators, against a real server process: publish, message
//! trace and search, stream history, sessions and kicks, the event feed, metrics and health.
// A real server process runs on wall-clock time; these measure it.
#![allow(clippy::disallowed_types)]
mod common;

use std::time::Duration;

use common::{metric, Client, Server};
use herald_protocol::EvictReason;
use serde_json::{json, Value};

/// `items[*].o` of a list answer.
fn offsets(v: &Value) -> Vec<u64> {
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| m["o"].as_u64().expect("o"))
        .collect()
}

fn items(v: &Value) -> &Vec<Value> {
    v["items"].as_array().expect("items")
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no error.code>")
}

/// The recipient entry of `device` in a message trace.
fn recipient<'a>(trace: &'a Value, device: &str) -> &'a Value {
    trace["recipients"]
        .as_array()
        .expect("recipients")
        .iter()
        .find(|r| r["device"] == device)
        .unwrap_or_else(|| panic!("no recipient {device} in {trace}"))
}

// ---------------------------------------------------------------------------------------------
// POST /v1/publish

#[tokio::test]
async fn publish_to_a_user_is_stored_delivered_live_and_answered_with_online() {
    let s = Server::start(&[]);
    let mut bob = Client::connect(&s, "bob", "b1").await;

    let (status, p) = s
        .post(
            "/v1/publish",
            json!({"to":"user:bob","body":{"text":"hi"},"from":"billing"}),
        )
        .await;
    assert_eq!(status, 200, "{p}");
    let id = p["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("m_"), "{p}");
    assert_eq!(p["s"], "inbox:bob");
    assert_eq!(p["o"], 1);
    assert_eq!(p["online"], 1, "bob has one connected session");
    assert!(p.get("dup").is_none(), "a first publish is not a dup: {p}");

    let m = bob.expect_msg().await;
    assert_eq!(
        (m.s.as_str(), m.o, m.id.as_str(), m.from.as_str()),
        ("inbox", 1, id.as_str(), "billing")
    );
    assert_eq!(m.body.get(), r#"{"text":"hi"}"#);

    // Without `from` the sender is `$api`; bob offline → online 0, still stored.
    drop(bob);
    s.wait_for("/v1/sessions?uid=bob", |v| {
        items(v).iter().all(|x| x["state"] == "disconnected")
    })
    .await;
    let (status, p2) = s
        .post("/v1/publish", json!({"to":"user:bob","body":[1,2]}))
        .await;
    assert_eq!(status, 200, "{p2}");
    assert_eq!(
        (p2["o"].as_u64(), p2["online"].as_u64()),
        (Some(2), Some(0))
    );

    let (_, h) = s.get("/v1/streams/inbox:bob").await;
    assert_eq!(offsets(&h), [1, 2]);
    assert_eq!(h["items"][0]["id"], id.as_str());
    assert_eq!(h["items"][0]["from"], "billing");
    assert_eq!(h["items"][0]["body"], json!({"text":"hi"}));
    assert_eq!(h["items"][1]["from"], "$api");
    assert_eq!(h["items"][1]["body"], json!([1, 2]));
}

#[tokio::test]
async fn publish_to_a_channel_is_stored_and_delivered_live_to_subscribers() {
    let s = Server::start(&[]);
    let mut bob = Client::connect(&s, "bob", "b1").await;
    bob.subscribe("room", None).await;

    let (status, p) = s
        .post("/v1/publish", json!({"to":"chan:room","body":{"x":1}}))
        .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["s"], "chan:room");
    assert_eq!(p["o"], 1);
    assert!(p.get("online").is_none(), "online is for user targets: {p}");
    let m = bob.expect_msg().await;
    assert_eq!(
        (m.s.as_str(), m.o, m.from.as_str()),
        ("chan:room", 1, "$api")
    );
    assert_eq!(m.id, p["id"].as_str().expect("id"));

    let (_, h) = s.get("/v1/streams/chan:room").await;
    assert_eq!(
        (h["first"].as_u64(), h["last"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(h["items"][0]["body"], json!({"x":1}));
}

#[tokio::test]
async fn idempotency_key_dedupes_across_http_and_websocket_publishes_of_the_same_sender() {
    let s = Server::start(&[]);
    let publish = json!({"to":"user:bob","body":"once","id":"k1","from":"alice"});
    let (_, first) = s.post("/v1/publish", publish.clone()).await;
    assert_eq!(first["o"], 1);
    assert!(first.get("dup").is_none());

    // Same key, same sender, over HTTP again: nothing stored, the original returned.
    let (status, again) = s.post("/v1/publish", publish).await;
    assert_eq!(status, 200);
    assert_eq!(again["dup"], true, "{again}");
    assert_eq!((&again["id"], &again["o"]), (&first["id"], &first["o"]));

    // … and over the WebSocket by the same uid.
    let mut alice = Client::connect(&s, "alice", "a1").await;
    let seq = alice
        .request(json!({"t":"pub","to":"user:bob","body":"once","id":"k1"}))
        .await;
    let ok = alice.expect_ok(seq).await;
    assert!(ok.dup, "{ok:?}");
    assert_eq!(ok.id.as_deref(), first["id"].as_str());
    assert_eq!((ok.s.as_deref(), ok.o), (Some("inbox"), Some(1)));

    // WebSocket first, then HTTP with the same `from`.
    let seq = alice
        .request(json!({"t":"pub","to":"chan:c","body":"ws","id":"k2"}))
        .await;
    let ws_ok = alice.expect_ok(seq).await;
    assert!(!ws_ok.dup);
    let (_, http_dup) = s
        .post(
            "/v1/publish",
            json!({"to":"chan:c","body":"ws","id":"k2","from":"alice"}),
        )
        .await;
    assert_eq!(http_dup["dup"], true, "{http_dup}");
    assert_eq!(http_dup["id"].as_str(), ws_ok.id.as_deref());
    assert_eq!(
        (http_dup["s"].as_str(), http_dup["o"].as_u64()),
        (Some("chan:c"), ws_ok.o)
    );

    // Keys are scoped to the sender: another `from` with the same key is a new message.
    let (_, carol) = s
        .post(
            "/v1/publish",
            json!({"to":"user:bob","body":"once","id":"k1","from":"carol"}),
        )
        .await;
    assert!(carol.get("dup").is_none(), "{carol}");
    assert_eq!(carol["o"], 2);

    let (_, h) = s.get("/v1/streams/user:bob").await;
    assert_eq!(offsets(&h), [1, 2], "k1 of alice was stored once");
    let (_, c) = s.get("/v1/streams/chan:c").await;
    assert_eq!(offsets(&c), [1]);
    s.wait_metric("herald_publish_duplicates_total", |v| v == 3.0)
        .await;
}

#[tokio::test]
async fn publish_rejects_bad_requests_with_codes_and_stores_nothing() {
    let s = Server::start(&[("LIMITS__MAX_BODY_BYTES", "100")]);

    // Malformed JSON: 400 bad_frame with the parser's reason.
    let (status, e) = s
        .post_raw(
            "/v1/publish",
            br#"{"to":"user:bob","body":"#.to_vec(),
            Some("application/json"),
        )
        .await;
    assert_eq!((status, error_code(&e)), (400, "bad_frame"), "{e}");
    let msg = e["error"]["msg"].as_str().expect("msg");
    assert!(
        msg.contains("EOF") && msg.contains("line 1 column"),
        "the parser's reason is passed on: {msg}"
    );

    // Missing body: an empty request, or no `body` field.
    let (status, e) = s
        .post_raw("/v1/publish", Vec::new(), Some("application/json"))
        .await;
    assert_eq!((status, error_code(&e)), (400, "bad_frame"), "{e}");
    let (status, e) = s.post("/v1/publish", json!({"to":"user:bob"})).await;
    assert_eq!((status, error_code(&e)), (400, "bad_frame"), "{e}");
    assert!(
        e["error"]["msg"]
            .as_str()
            .is_some_and(|m| m.contains("body")),
        "{e}"
    );
    let (status, e) = s.post("/v1/publish", json!({"body":1})).await;
    assert_eq!(
        (status, error_code(&e)),
        (400, "bad_frame"),
        "missing `to`: {e}"
    );

    // Bad targets.
    for to in ["bob", "user:", "chan:a b", "user:al:ice", "room:x", ""] {
        let (status, e) = s.post("/v1/publish", json!({"to":to,"body":1})).await;
        assert_eq!(
            (status, error_code(&e)),
            (400, "bad_target"),
            "to {to:?}: {e}"
        );
    }

    // Body limits: exactly max_body_bytes is fine, one more byte is 413 too_large.
    let fits = "x".repeat(98); // 98 + 2 quotes = 100 bytes of JSON
    let (status, p) = s
        .post("/v1/publish", json!({"to":"chan:big","body":fits}))
        .await;
    assert_eq!(status, 200, "{p}");
    let over = "x".repeat(99);
    let (status, e) = s
        .post("/v1/publish", json!({"to":"chan:big","body":over}))
        .await;
    assert_eq!((status, error_code(&e)), (413, "too_large"), "{e}");
    assert!(
        e["error"]["msg"]
            .as_str()
            .is_some_and(|m| m.contains("101")),
        "says how big: {e}"
    );

    // A request far over the limit is refused while it is read, in the same shape.
    let huge = "x".repeat(200 * 1024);
    let (status, e) = s
        .post("/v1/publish", json!({"to":"chan:big","body":huge}))
        .await;
    assert_eq!((status, error_code(&e)), (413, "too_large"), "{e}");

    // Not JSON at all.
    let (status, e) = s
        .post_raw("/v1/publish", b"to=user:bob".to_vec(), Some("text/plain"))
        .await;
    assert_eq!(status, 415, "{e}");
    assert_eq!(error_code(&e), "bad_frame");

    // Nothing but the one valid publish was stored.
    let (_, h) = s.get("/v1/streams/chan:big").await;
    assert_eq!(offsets(&h), [1]);
    let (_, h) = s.get("/v1/streams/user:bob").await;
    assert_eq!(h["last"], 0);
}

#[tokio::test]
async fn list_endpoints_reject_bad_numbers_and_limits() {
    let s = Server::start(&[]);
    for path in [
        "/v1/messages?limit=0",
        "/v1/messages?limit=abc",
        "/v1/messages?limit=1001",
        "/v1/messages?limit=-1",
        "/v1/messages?since=yesterday",
        "/v1/streams/chan:x?limit=0",
        "/v1/streams/chan:x?after=-1",
        "/v1/events?limit=99999",
        "/v1/events?after=x",
    ] {
        let (status, e) = s.get(path).await;
        assert_eq!((status, error_code(&e)), (400, "bad_frame"), "{path}: {e}");
    }
    for path in [
        "/v1/streams/room",
        "/v1/streams/chan:a%20b",
        "/v1/messages?s=x:y",
    ] {
        let (status, e) = s.get(path).await;
        assert_eq!((status, error_code(&e)), (400, "bad_target"), "{path}: {e}");
    }
    let (status, _) = s.get("/v1/messages?limit=1000").await;
    assert_eq!(status, 200, "the maximum limit is accepted");
}

// ---------------------------------------------------------------------------------------------
// GET /v1/messages/{id}

#[tokio::test]
async fn inbox_message_trace_shows_acked_sent_and_pending_devices() {
    let s = Server::start(&[]);
    // b3 is known (has an inbox cursor) but offline when the message is sent.
    drop(Client::connect(&s, "bob", "b3").await);
    let mut b1 = Client::connect(&s, "bob", "b1").await;
    let mut b2 = Client::connect(&s, "bob", "b2").await;
    s.wait_for("/v1/sessions?uid=bob", |v| {
        items(v)
            .iter()
            .any(|x| x["device"] == "b3" && x["state"] == "disconnected")
    })
    .await;

    let (_, p) = s
        .post(
            "/v1/publish",
            json!({"to":"user:bob","body":"trace me","from":"alice"}),
        )
        .await;
    assert_eq!(p["online"], 2);
    let id = p["id"].as_str().expect("id").to_string();
    assert_eq!(b1.expect_msg().await.id, id);
    assert_eq!(b2.expect_msg().await.id, id);
    b1.ack("inbox", 1).await;
    b1.round_trip().await;

    let path = format!("/v1/messages/{id}");
    let t = s
        .wait_for(&path, |t| {
            t["summary"] == json!({"pending":1,"sent":1,"acked":1})
                && recipient(t, "b1")["attempts"] == 1
        })
        .await;
    assert_eq!(t["message"]["id"], id.as_str());
    assert_eq!(t["message"]["s"], "inbox:bob");
    assert_eq!(t["message"]["o"], 1);
    assert_eq!(t["message"]["from"], "alice");
    assert_eq!(t["message"]["body"], "trace me");
    assert_eq!(t["recipients"].as_array().map(Vec::len), Some(3), "{t}");

    let r1 = recipient(&t, "b1");
    assert_eq!(r1["uid"], "bob");
    assert_eq!(r1["state"], "acked");
    assert_eq!(r1["session"], b1.w().session.as_str());
    assert!(r1["acked_ms"].as_u64().is_some(), "{r1}");
    let sent_ms = r1["sent_ms"].as_u64().expect("sent_ms");
    assert!(r1["acked_ms"].as_u64() >= Some(sent_ms), "{r1}");
    assert_eq!(r1["attempts"], 1);

    let r2 = recipient(&t, "b2");
    assert_eq!(r2["state"], "sent");
    assert_eq!(r2["session"], b2.w().session.as_str());
    assert!(r2["sent_ms"].as_u64().is_some(), "{r2}");
    assert_eq!(r2["attempts"], 1);
    assert!(r2["acked_ms"].is_null(), "{r2}");

    let r3 = recipient(&t, "b3");
    assert_eq!(r3["state"], "pending");
    assert_eq!(r3["attempts"], 0);
    assert!(r3["sent_ms"].is_null() && r3["acked_ms"].is_null(), "{r3}");
    assert!(r3["session"].is_null(), "never sent to any session: {r3}");

    // b2 comes back on its session: the message is sent again (attempts 2), still not acked.
    let w2 = b2.w().clone();
    b2.cut();
    let mut b2 = Client::resume(&s, &w2).await;
    assert_eq!(b2.expect_msg().await.id, id, "unacked message redelivered");
    let t = s
        .wait_for(&path, |t| recipient(t, "b2")["attempts"] == 2)
        .await;
    assert_eq!(recipient(&t, "b2")["state"], "sent");
    // Now b2 acks: two acked, b3 still pending.
    b2.ack("inbox", 1).await;
    let t = s
        .wait_for(&path, |t| {
            t["summary"] == json!({"pending":1,"sent":0,"acked":2})
        })
        .await;
    assert!(recipient(&t, "b2")["acked_ms"].as_u64().is_some());

    let (status, e) = s.get("/v1/messages/m_does_not_exist").await;
    assert_eq!((status, error_code(&e)), (404, "not_found"), "{e}");
}

#[tokio::test]
async fn channel_message_trace_lists_subscribed_sessions_by_position() {
    let s = Server::start(&[]);
    let mut bob = Client::connect(&s, "bob", "b1").await;
    bob.subscribe("room", None).await;
    let mut carol = Client::connect(&s, "carol", "c1").await;
    carol.subscribe("room", None).await;
    // frank is subscribed but disconnected: nothing is sent to him.
    let mut frank = Client::connect(&s, "frank", "f1").await;
    frank.subscribe("room", None).await;
    let frank_session = frank.w().session.clone();
    drop(frank);
    // dave is connected but not subscribed: not a recipient.
    let _dave = Client::connect(&s, "dave", "d1").await;
    s.wait_for("/v1/sessions?uid=frank", |v| {
        items(v)
            .first()
            .is_some_and(|x| x["state"] == "disconnected")
    })
    .await;

    let mut alice = Client::connect(&s, "alice", "a1").await;
    let ok = alice.publish_ok("chan:room", json!("hello room")).await;
    let id = ok.id.expect("id");
    assert_eq!(bob.expect_msg().await.o, 1);
    assert_eq!(carol.expect_msg().await.o, 1);
    bob.ack("chan:room", 1).await;
    bob.round_trip().await;

    let t = s
        .wait_for(&format!("/v1/messages/{id}"), |t| {
            t["summary"] == json!({"pending":1,"sent":1,"acked":1})
        })
        .await;
    assert_eq!(t["message"]["s"], "chan:room");
    let r = t["recipients"].as_array().expect("recipients");
    assert_eq!(r.len(), 3, "only subscribed sessions: {t}");
    let bob_r = recipient(&t, "b1");
    assert_eq!(
        (&bob_r["uid"], &bob_r["state"], &bob_r["session"]),
        (&json!("bob"), &json!("acked"), &json!(bob.w().session))
    );
    let carol_r = recipient(&t, "c1");
    assert_eq!(
        (&carol_r["state"], &carol_r["session"]),
        (&json!("sent"), &json!(carol.w().session))
    );
    let frank_r = recipient(&t, "f1");
    assert_eq!(
        (&frank_r["state"], &frank_r["session"]),
        (&json!("pending"), &json!(frank_session))
    );
    assert!(r.iter().all(|x| x["uid"] != "dave" && x["uid"] != "alice"));
}

// ---------------------------------------------------------------------------------------------
// GET /v1/messages (search) and GET /v1/streams/{s}

#[tokio::test]
async fn search_filters_by_stream_sender_time_and_limit() {
    let s = Server::start(&[]);
    let publish = |to: &str, from: &str, n: u32| json!({"to": to, "from": from, "body": {"n": n}});
    // Batch one.
    for (to, from, n) in [
        ("chan:a", "alice", 1),
        ("chan:a", "bob", 2),
        ("user:carol", "alice", 3),
    ] {
        let (status, _) = s.post("/v1/publish", publish(to, from, n)).await;
        assert_eq!(status, 200);
    }
    let (_, all) = s.get("/v1/messages").await;
    assert_eq!(items(&all).len(), 3);
    let batch_one_ts = items(&all)
        .iter()
        .map(|m| m["ts"].as_u64().expect("ts"))
        .max()
        .expect("ts");
    // Let the wall clock move past batch one, so time filters can tell the batches apart.
    while (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64)
        <= batch_one_ts
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Batch two.
    for (to, from, n) in [
        ("chan:a", "alice", 4),
        ("chan:a", "alice", 5),
        ("chan:b", "bob", 6),
    ] {
        s.post("/v1/publish", publish(to, from, n)).await;
    }
    let ns = |v: &Value| -> Vec<u64> {
        items(v)
            .iter()
            .map(|m| m["body"]["n"].as_u64().expect("n"))
            .collect()
    };

    let (_, v) = s.get("/v1/messages").await;
    assert_eq!(ns(&v), [1, 2, 3, 4, 5, 6], "everything, oldest first");
    let (_, v) = s.get("/v1/messages?s=chan:a").await;
    assert_eq!(ns(&v), [1, 2, 4, 5]);
    assert_eq!(offsets(&v), [1, 2, 3, 4]);
    assert!(items(&v).iter().all(|m| m["s"] == "chan:a"));
    let (_, v) = s.get("/v1/messages?s=chan:a&after=2").await;
    assert_eq!(offsets(&v), [3, 4]);
    let (_, v) = s.get("/v1/messages?from=alice").await;
    assert_eq!(ns(&v), [1, 3, 4, 5]);
    let (_, v) = s.get("/v1/messages?s=chan:a&from=bob").await;
    assert_eq!(ns(&v), [2]);
    for form in ["user:carol", "inbox:carol"] {
        let (_, v) = s.get(&format!("/v1/messages?s={form}")).await;
        assert_eq!(ns(&v), [3], "{form}");
        assert_eq!(v["items"][0]["s"], "inbox:carol");
    }
    let (_, v) = s
        .get(&format!("/v1/messages?since={}", batch_one_ts + 1))
        .await;
    assert_eq!(ns(&v), [4, 5, 6], "since is a lower time bound");
    let (_, v) = s.get(&format!("/v1/messages?until={batch_one_ts}")).await;
    assert_eq!(ns(&v), [1, 2, 3], "until is an inclusive upper time bound");
    let (_, v) = s
        .get(&format!(
            "/v1/messages?s=chan:a&since={}&until={}",
            batch_one_ts + 1,
            u64::MAX / 2
        ))
        .await;
    assert_eq!(ns(&v), [4, 5]);
    let (_, v) = s.get("/v1/messages?limit=2").await;
    assert_eq!(ns(&v), [1, 2], "limit keeps the oldest");
    let (_, v) = s.get("/v1/messages?from=nobody").await;
    assert!(items(&v).is_empty());
}

#[tokio::test]
async fn stream_history_pages_with_first_and_last() {
    let s = Server::start(&[]);
    for i in 1..=5 {
        s.post("/v1/publish", json!({"to":"chan:h","body":i})).await;
    }
    let (status, h) = s.get("/v1/streams/chan:h").await;
    assert_eq!(status, 200);
    assert_eq!(h["s"], "chan:h");
    assert_eq!(
        (h["first"].as_u64(), h["last"].as_u64()),
        (Some(1), Some(5))
    );
    assert_eq!(offsets(&h), [1, 2, 3, 4, 5]);
    assert_eq!(h["items"][2]["body"], 3);
    assert!(h["items"][0]["id"]
        .as_str()
        .is_some_and(|i| i.starts_with("m_")));
    assert!(h["items"][0]["ts"].as_u64().is_some());

    // Paging: after + limit, first/last always describe the whole stream.
    let (_, p1) = s.get("/v1/streams/chan:h?limit=2").await;
    assert_eq!(offsets(&p1), [1, 2]);
    let (_, p2) = s.get("/v1/streams/chan:h?after=2&limit=2").await;
    assert_eq!(offsets(&p2), [3, 4]);
    assert_eq!(
        (p2["first"].as_u64(), p2["last"].as_u64()),
        (Some(1), Some(5))
    );
    let (_, p3) = s.get("/v1/streams/chan:h?after=4&limit=2").await;
    assert_eq!(offsets(&p3), [5]);
    let (_, p4) = s.get("/v1/streams/chan:h?after=5").await;
    assert!(items(&p4).is_empty());

    // A stream never written: empty at 0.
    let (status, e) = s.get("/v1/streams/chan:never").await;
    assert_eq!(status, 200);
    assert_eq!(
        (e["first"].as_u64(), e["last"].as_u64()),
        (Some(1), Some(0))
    );
    assert!(items(&e).is_empty());

    // Inboxes by either name.
    for i in 1..=3 {
        s.post("/v1/publish", json!({"to":"user:bob","body":i}))
            .await;
    }
    for form in ["user:bob", "inbox:bob"] {
        let (status, b) = s.get(&format!("/v1/streams/{form}?after=1")).await;
        assert_eq!(status, 200, "{form}: {b}");
        assert_eq!(b["s"], "inbox:bob", "{form}");
        assert_eq!(offsets(&b), [2, 3], "{form}");
        assert_eq!(b["last"], 3);
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions and kicks

#[tokio::test]
async fn sessions_lists_connected_and_disconnected_sessions_with_state() {
    let s = Server::start(&[]);
    let mut b1 = Client::connect(&s, "bob", "b1").await;
    b1.subscribe("room", None).await;
    let b2 = Client::connect(&s, "bob", "b2").await;
    let b2_session = b2.w().session.clone();
    let _alice = Client::connect(&s, "alice", "a1").await;
    b2.cut();

    let v = s
        .wait_for("/v1/sessions?uid=bob", |v| {
            items(v)
                .iter()
                .any(|x| x["id"] == b2_session.as_str() && x["state"] == "disconnected")
        })
        .await;
    let list = items(&v);
    assert_eq!(list.len(), 2, "{v}");
    assert!(list.iter().all(|x| x["uid"] == "bob"));
    let one = list
        .iter()
        .find(|x| x["device"] == "b1")
        .expect("b1 listed");
    assert_eq!(one["id"], b1.w().session.as_str());
    assert_eq!(one["state"], "connected");
    assert_eq!(one["conn"], b1.w().conn.as_str());
    assert!(one["addr"]
        .as_str()
        .is_some_and(|a| a.starts_with("127.0.0.1:")));
    assert_eq!(one["subs"], json!({"room": 0}));
    assert_eq!(one["acked_seq"], 1, "the sub was processed");
    let two = list
        .iter()
        .find(|x| x["device"] == "b2")
        .expect("b2 listed");
    assert_eq!(two["state"], "disconnected");
    assert!(two["conn"].is_null(), "{two}");
    assert!(two["reconnect_timeout_ms"].as_u64().is_some_and(|t| t > 0));

    let (_, all) = s.get("/v1/sessions").await;
    let uids: Vec<&str> = items(&all)
        .iter()
        .map(|x| x["uid"].as_str().expect("uid"))
        .collect();
    assert_eq!(uids, ["alice", "bob", "bob"]);
    let (_, none) = s.get("/v1/sessions?uid=nobody").await;
    assert!(items(&none).is_empty());
}

#[tokio::test]
async fn kick_evicts_the_connection_and_is_recorded_in_events_and_metrics() {
    let s = Server::start(&[]);
    let mut bob = Client::connect(&s, "bob", "b1").await;
    let session = bob.w().session.clone();
    let conn = bob.w().conn.clone();
    s.wait_metric("herald_connections", |v| v == 1.0).await;

    let (status, k) = s.delete(&format!("/v1/sessions/{session}")).await;
    assert_eq!(status, 200, "{k}");
    assert_eq!(k, json!({"kicked": session}));

    let (ev, code) = bob.expect_evicted().await;
    assert_eq!(ev.reason, EvictReason::Kicked);
    assert!(
        ev.by.addr.as_deref().is_some_and(|a| a.starts_with("api:")),
        "{ev:?}"
    );
    assert_eq!(code, Some(4009));

    let evictions = s
        .wait_for("/v1/events?type=eviction&uid=bob", |v| !items(v).is_empty())
        .await;
    let e = &items(&evictions)[0];
    assert_eq!(e["kind"], "eviction");
    assert_eq!(e["data"]["reason"], "kicked");
    assert_eq!(e["session"], session.as_str());
    assert_eq!(e["conn"], conn.as_str());
    assert_eq!(e["device"], "b1");
    let kicks = s
        .wait_for("/v1/events?type=kick", |v| !items(v).is_empty())
        .await;
    let k = &items(&kicks)[0];
    assert_eq!((&k["uid"], &k["session"]), (&json!("bob"), &json!(session)));

    s.wait_metric(r#"herald_evictions_total{reason="kicked"}"#, |v| v == 1.0)
        .await;
    s.wait_metric("herald_connections", |v| v == 0.0).await;

    // The session is gone; kicking it again, or an unknown one, is 404.
    let (_, v) = s.get("/v1/sessions?uid=bob").await;
    assert!(items(&v).is_empty(), "{v}");
    let (status, e) = s.delete(&format!("/v1/sessions/{session}")).await;
    assert_eq!((status, error_code(&e)), (404, "not_found"), "{e}");
    let (status, e) = s.delete("/v1/sessions/s_nope").await;
    assert_eq!((status, error_code(&e)), (404, "not_found"), "{e}");

    // A resume of the kicked session is told so instead of being welcomed.
    let mut again = Client::raw(&s).await;
    again
        .send(json!({"t":"hello","v":1,"uid":"bob","device":"b1",
                     "resume":{"session":session,"key":bob.w().key}}))
        .await;
    let (ev, code) = again.expect_evicted().await;
    assert_eq!((ev.reason, code), (EvictReason::Kicked, Some(4009)));
}

#[tokio::test]
async fn kicking_a_disconnected_session_ends_it() {
    let s = Server::start(&[]);
    let bob = Client::connect(&s, "bob", "b1").await;
    let w = bob.w().clone();
    bob.cut();
    s.wait_for("/v1/sessions?uid=bob", |v| {
        items(v)
            .first()
            .is_some_and(|x| x["state"] == "disconnected")
    })
    .await;
    let (status, _) = s.delete(&format!("/v1/sessions/{}", w.session)).await;
    assert_eq!(status, 200);
    let (_, v) = s.get("/v1/sessions?uid=bob").await;
    assert!(items(&v).is_empty());
    let evictions = s
        .wait_for("/v1/events?type=eviction", |v| !items(v).is_empty())
        .await;
    assert_eq!(items(&evictions)[0]["data"]["reason"], "kicked");
    let mut again = Client::raw(&s).await;
    again
        .send(json!({"t":"hello","v":1,"uid":"bob","device":"b1",
                     "resume":{"session":w.session,"key":w.key}}))
        .await;
    assert_eq!(again.expect_evicted().await.0.reason, EvictReason::Kicked);
}

// ---------------------------------------------------------------------------------------------
// Events, metrics, health

#[tokio::test]
async fn events_filter_by_type_uid_and_after() {
    let s = Server::start(&[]);
    let bob = Client::connect(&s, "bob", "b1").await;
    let carol = Client::connect(&s, "carol", "c1").await;
    s.delete(&format!("/v1/sessions/{}", bob.w().session)).await;
    s.delete(&format!("/v1/sessions/{}", carol.w().session))
        .await;
    // A resume with an unknown session: resume_failed for dave.
    let dave = Client::hello(
        &s,
        json!({"t":"hello","v":1,"uid":"dave","device":"d1",
               "resume":{"session":"s_unknown","key":"k"}}),
    )
    .await;
    assert_eq!(
        dave.w().resume_error,
        Some(herald_protocol::ResumeError::Unknown)
    );

    // 2 evictions + 2 kicks + 1 resume_failed.
    let all = s.wait_for("/v1/events", |v| items(v).len() == 5).await;
    let ids: Vec<u64> = items(&all)
        .iter()
        .map(|e| e["id"].as_u64().expect("id"))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");
    for e in items(&all) {
        assert!(e["ts"].as_u64().is_some(), "{e}");
    }

    let kinds = |v: &Value| -> Vec<String> {
        items(v)
            .iter()
            .map(|e| e["kind"].as_str().expect("kind").to_string())
            .collect()
    };
    let (_, v) = s.get("/v1/events?type=eviction").await;
    assert_eq!(kinds(&v), ["eviction", "eviction"]);
    let (_, v) = s.get("/v1/events?type=resume_failed").await;
    assert_eq!(items(&v).len(), 1);
    assert_eq!(v["items"][0]["uid"], "dave");
    assert_eq!(v["items"][0]["data"]["reason"], "unknown");
    let (_, v) = s.get("/v1/events?uid=carol").await;
    assert_eq!(items(&v).len(), 2);
    assert!(items(&v).iter().all(|e| e["uid"] == "carol"));
    let (_, v) = s.get("/v1/events?type=kick&uid=bob").await;
    assert_eq!(items(&v).len(), 1);
    assert_eq!(v["items"][0]["session"], bob.w().session.as_str());

    let (_, v) = s.get(&format!("/v1/events?after={}", ids[2])).await;
    let after: Vec<u64> = items(&v)
        .iter()
        .map(|e| e["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(after, ids[3..]);
    let (_, v) = s.get(&format!("/v1/events?after={}", ids[4])).await;
    assert!(items(&v).is_empty());
    let (_, v) = s.get("/v1/events?limit=2").await;
    let newest: Vec<u64> = items(&v)
        .iter()
        .map(|e| e["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(newest, ids[3..], "limit keeps the newest, oldest first");
    let (_, v) = s.get("/v1/events?type=nothing_like_this").await;
    assert!(items(&v).is_empty());
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_the_core_series() {
    let s = Server::start(&[]);
    let (status, text) = s.get_text("/metrics").await;
    assert_eq!(status, 200);
    assert!(text.contains("# TYPE herald_publishes counter"), "{text}");
    assert_eq!(metric(&text, "herald_publishes_total"), Some(0.0));
    assert_eq!(metric(&text, "herald_connections"), Some(0.0));

    let mut bob = Client::connect(&s, "bob", "b1").await;
    bob.subscribe("room", None).await;
    let mut alice = Client::connect(&s, "alice", "a1").await;
    alice.publish_ok("chan:room", json!(1)).await;
    alice.publish_ok("user:bob", json!(2)).await;
    bob.msgs(2).await;
    s.post("/v1/publish", json!({"to":"chan:room","body":3}))
        .await;
    bob.expect_msg().await;

    assert_eq!(
        s.wait_metric("herald_publishes_total", |v| v >= 3.0).await,
        3.0
    );
    assert_eq!(
        s.wait_metric("herald_deliveries_total", |v| v >= 3.0).await,
        3.0
    );
    // Exactly one per attached connection.
    s.wait_metric("herald_connections", |v| v == 2.0).await;
    drop(alice);
    s.wait_metric("herald_connections", |v| v == 1.0).await;

    s.delete(&format!("/v1/sessions/{}", bob.w().session)).await;
    bob.expect_evicted().await;
    let (_, text) = s.get_text("/metrics").await;
    let kicked = metric(&text, r#"herald_evictions_total{reason="kicked"}"#);
    assert_eq!(kicked, Some(1.0), "{text}");
    s.wait_metric("herald_connections", |v| v == 0.0).await;
    let (_, text) = s.get_text("/metrics").await;
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
}

#[tokio::test]
async fn health_readiness_and_unknown_paths() {
    let s = Server::start(&[]);
    let (status, v) = s.get("/healthz").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "ok");
    let (status, v) = s.get("/readyz").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "ready");
    for path in ["/nope", "/v1/nope", "/v1/streams", "/v2/publish"] {
        let (status, e) = s.get(path).await;
        assert_eq!((status, error_code(&e)), (404, "not_found"), "{path}: {e}");
        assert!(e["error"]["msg"].is_string(), "{e}");
    }
    // A known path with a method it does not serve: 405, JSON too.
    let (status, e) = s.post("/healthz", json!({})).await;
    assert_eq!(status, 405, "{e}");
    assert!(e["error"]["code"].is_string(), "{e}");
    let (status, e) = s.get("/v1/publish").await;
    assert_eq!(status, 405, "{e}");
    assert!(e["error"]["msg"].is_string(), "{e}");
    // Rejections by the HTTP framework itself get the JSON shape as well: a plain GET of the
    // WebSocket endpoint, and a path segment that is not UTF-8.
    let (status, e) = s.get("/v1/ws").await;
    assert_eq!((status, error_code(&e)), (400, "bad_frame"), "{e}");
    assert!(
        e["error"]["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "{e}"
    );
    let (status, e) = s.get("/v1/messages/%FF").await;
    assert_eq!((status, error_code(&e)), (400, "bad_frame"), "{e}");
}

#[tokio::test]
async fn without_dev_mode_the_api_needs_a_key_but_health_and_metrics_do_not() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = Server::start_in(
        tmp.path(),
        &[
            ("API__KEYS", "k1,k2"),
            ("AUTH__HS256_SECRET", &"s".repeat(32)),
        ],
        false,
    );
    let http = reqwest::Client::new();
    let get = |path: &str, key: Option<&str>| {
        let mut r = http.get(s.http(path));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    let r = get("/v1/sessions", None).await.expect("get");
    assert_eq!(r.status().as_u16(), 401);
    let e: Value = r.json().await.expect("json");
    assert_eq!(error_code(&e), "unauthorized");
    let r = get("/v1/sessions", Some("wrong")).await.expect("get");
    assert_eq!(r.status().as_u16(), 401);
    for key in ["k1", "k2"] {
        let r = get("/v1/sessions", Some(key)).await.expect("get");
        assert_eq!(r.status().as_u16(), 200, "{key}");
    }
    let r = http
        .post(s.http("/v1/publish"))
        .json(&json!({"to":"chan:x","body":1}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 401, "publish needs a key too");
    let r = http
        .post(s.http("/v1/publish"))
        .bearer_auth("k2")
        .json(&json!({"to":"chan:x","body":1}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 200);
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = get(path, None).await.expect("get");
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }
}

#[tokio::test]
async fn stream_history_is_consistent_with_its_bounds_while_the_stream_grows() {
    // first/last and items describe one moment: while publishes land, every answer holds
    // exactly the offsets first..=last (nothing is trimmed here).
    let s = Server::start(&[]);
    let writer = {
        let url = s.http("/v1/publish");
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0..150 {
                let r = http
                    .post(&url)
                    .json(&json!({"to":"chan:grow","body":i}))
                    .send()
                    .await
                    .expect("publish");
                assert_eq!(r.status().as_u16(), 200);
            }
        })
    };
    let mut checked = 0;
    while !writer.is_finished() {
        let (status, h) = s.get("/v1/streams/chan:grow?limit=1000").await;
        assert_eq!(status, 200);
        let last = h["last"].as_u64().expect("last");
        let want: Vec<u64> = (1..=last).collect();
        assert_eq!(offsets(&h), want, "items disagree with last = {last}");
        checked += 1;
    }
    writer.await.expect("writer");
    assert!(checked > 0);
}
