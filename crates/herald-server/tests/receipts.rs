//! Read receipts: a `pub` to a user with `"receipt":true` makes each acknowledging device of
//! the recipient send a durable `$herald` message to the sender's inbox.
mod common;

use std::time::Duration;

use common::{Client, Server};
use herald_protocol::{Msg, OkFrame};
use serde_json::{json, Value};

/// alice's `pub` to `to` with `receipt: true`.
async fn pub_with_receipt(alice: &mut Client, to: &str, body: Value) -> OkFrame {
    let seq = alice
        .request(json!({"t":"pub","to":to,"body":body,"receipt":true}))
        .await;
    alice.expect_ok(seq).await
}

/// The receipt carried by `m`, checked to be a `$herald` inbox message.
fn receipt(m: &Msg) -> Value {
    assert_eq!(m.s, "inbox", "receipts arrive in the sender's inbox: {m:?}");
    assert_eq!(m.from, "$herald", "{m:?}");
    let body: Value = serde_json::from_str(m.body.get()).expect("json body");
    body.get("receipt")
        .cloned()
        .unwrap_or_else(|| panic!("not a receipt: {body}"))
}

/// Items in `uid`'s inbox, as the HTTP API shows them.
async fn inbox(s: &Server, uid: &str) -> Vec<Value> {
    let (_, v) = s.get(&format!("/v1/streams/inbox:{uid}")).await;
    v["items"].as_array().expect("items").clone()
}

#[tokio::test]
async fn an_ack_by_the_recipient_sends_a_receipt_to_the_connected_sender() {
    let s = Server::start(&[]);
    let mut alice = Client::connect(&s, "alice", "a1").await;
    let mut bob = Client::connect(&s, "bob", "b1").await;

    let ok = pub_with_receipt(&mut alice, "user:bob", json!({"text":"read me"})).await;
    let id = ok.id.expect("id");
    let m = bob.expect_msg().await;
    assert_eq!(m.id, id);
    alice.expect_silence(Duration::from_millis(200)).await;
    bob.ack("inbox", m.o).await;

    let r = alice.expect_msg().await;
    assert_eq!(r.o, 1, "the receipt is alice's first inbox message");
    assert_ne!(r.id, id, "a receipt is a message of its own");
    let rc = receipt(&r);
    assert_eq!(rc["id"], id.as_str());
    assert_eq!(rc["uid"], "bob");
    assert_eq!(rc["device"], "b1");
    assert_eq!(rc["state"], "acked");
    let ts = rc["ts"].as_u64().expect("ts");
    assert!(ts >= m.ts, "acked after it was sent: {ts} < {}", m.ts);
    alice.expect_silence(Duration::from_millis(300)).await;

    // The message itself remembers it asked for receipts.
    let (_, t) = s.get(&format!("/v1/messages/{id}")).await;
    assert_eq!(t["message"]["receipt"], true);
}

#[tokio::test]
async fn an_offline_sender_gets_the_receipt_when_she_comes_back() {
    let s = Server::start(&[]);
    let mut alice = Client::connect(&s, "alice", "a1").await;
    let ok = pub_with_receipt(&mut alice, "user:bob", json!("hi")).await;
    let id = ok.id.expect("id");
    alice.send(json!({"t":"bye"})).await;
    alice.expect_close().await;

    let mut bob = Client::connect(&s, "bob", "b1").await;
    let m = bob.expect_msg().await;
    bob.ack("inbox", m.o).await;
    // Stored durably in alice's inbox while she is away…
    let v = s
        .wait_for("/v1/streams/inbox:alice", |v| v["last"] == 1)
        .await;
    assert_eq!(v["items"][0]["from"], "$herald");
    assert_eq!(v["items"][0]["body"]["receipt"]["id"], id.as_str());

    // … and delivered when she connects again (new session, same device).
    let mut alice = Client::connect(&s, "alice", "a1").await;
    let r = alice.expect_msg().await;
    let rc = receipt(&r);
    assert_eq!(
        (&rc["id"], &rc["uid"], &rc["device"], &rc["state"]),
        (&json!(id), &json!("bob"), &json!("b1"), &json!("acked"))
    );
    // Across a restart too.
    alice.ack("inbox", r.o).await;
    alice.round_trip().await;
    let mut s = s;
    drop(alice);
    drop(bob);
    s.kill();
    s.restart();
    let mut phone = Client::connect(&s, "alice", "a2").await;
    let r = phone.expect_msg().await;
    assert_eq!(
        receipt(&r)["id"],
        id.as_str(),
        "a new device reads it from the log"
    );
}

#[tokio::test]
async fn each_acknowledging_device_sends_its_own_receipt() {
    let s = Server::start(&[]);
    let mut alice = Client::connect(&s, "alice", "a1").await;
    let mut b1 = Client::connect(&s, "bob", "b1").await;
    let mut b2 = Client::connect(&s, "bob", "b2").await;
    let ok = pub_with_receipt(&mut alice, "user:bob", json!("both")).await;
    assert_eq!(ok.online, Some(2));
    let id = ok.id.expect("id");

    let m1 = b1.expect_msg().await;
    b1.ack("inbox", m1.o).await;
    let r1 = receipt(&alice.expect_msg().await);
    assert_eq!((&r1["id"], &r1["device"]), (&json!(id), &json!("b1")));

    let m2 = b2.expect_msg().await;
    b2.ack("inbox", m2.o).await;
    let r2 = receipt(&alice.expect_msg().await);
    assert_eq!((&r2["id"], &r2["device"]), (&json!(id), &json!("b2")));
    alice.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(inbox(&s, "alice").await.len(), 2);
}

#[tokio::test]
async fn acking_again_does_not_duplicate_a_receipt() {
    let s = Server::start(&[]);
    let mut alice = Client::connect(&s, "alice", "a1").await;
    let mut bob = Client::connect(&s, "bob", "b1").await;
    let ok = pub_with_receipt(&mut alice, "user:bob", json!("once")).await;
    let id = ok.id.expect("id");
    let m = bob.expect_msg().await;
    bob.ack("inbox", m.o).await;
    bob.ack("inbox", m.o).await;
    let r = receipt(&alice.expect_msg().await);
    assert_eq!(r["id"], id.as_str());

    // Resume right after the ack (the message may be redelivered if the cursor write is still
    // in flight) and acknowledge whatever comes again.
    let w = bob.w().clone();
    bob.cut();
    let mut bob = Client::resume(&s, &w).await;
    if let Some(common::Event::Frame(herald_protocol::ServerFrame::Msg(again))) =
        bob.next_within(Duration::from_millis(200)).await
    {
        assert_eq!(again.id, id);
    }
    bob.ack("inbox", m.o).await;
    bob.round_trip().await;
    // A new session of the same device acknowledges it again.
    drop(bob);
    let mut bob = Client::connect(&s, "bob", "b1").await;
    bob.ack("inbox", m.o).await;
    bob.round_trip().await;

    alice.expect_silence(Duration::from_millis(400)).await;
    let items = inbox(&s, "alice").await;
    assert_eq!(
        items.len(),
        1,
        "one receipt per (message, device): {items:?}"
    );
}

#[tokio::test]
async fn a_pub_without_receipt_sends_none() {
    let s = Server::start(&[]);
    let mut alice = Client::connect(&s, "alice", "a1").await;
    let mut bob = Client::connect(&s, "bob", "b1").await;
    let plain = alice.publish_ok("user:bob", json!("no receipt")).await;
    let seq = alice
        .request(json!({"t":"pub","to":"user:bob","body":"explicitly none","receipt":false}))
        .await;
    alice.expect_ok(seq).await;
    let m = bob.msgs(2).await;
    bob.ack("inbox", m[1].o).await;
    bob.round_trip().await;
    let (_, t) = s
        .get(&format!("/v1/messages/{}", plain.id.expect("id")))
        .await;
    assert_eq!(t["message"]["receipt"], false);

    // Control: a message that asks for one produces exactly one, and it is the first.
    let ok = pub_with_receipt(&mut alice, "user:bob", json!("with")).await;
    let m3 = bob.expect_msg().await;
    bob.ack("inbox", m3.o).await;
    let r = alice.expect_msg().await;
    assert_eq!(r.o, 1, "nothing came before the receipt that was asked for");
    assert_eq!(receipt(&r)["id"], json!(ok.id));
    alice.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(inbox(&s, "alice").await.len(), 1);
}

#[tokio::test]
async fn channel_messages_never_produce_receipts() {
    let s = Server::start(&[]);
    let mut alice = Client::connect(&s, "alice", "a1").await;
    let mut bob = Client::connect(&s, "bob", "b1").await;
    bob.subscribe("room", None).await;
    let ok = pub_with_receipt(&mut alice, "chan:room", json!("to the room")).await;
    let m = bob.expect_msg().await;
    assert_eq!(m.s, "chan:room");
    bob.ack("chan:room", m.o).await;
    bob.round_trip().await;
    let (_, t) = s.get(&format!("/v1/messages/{}", ok.id.expect("id"))).await;
    assert_eq!(
        t["message"]["receipt"], false,
        "not recorded as wanting one"
    );

    // Control: a user message with a receipt afterwards is the first thing alice gets.
    let ok = pub_with_receipt(&mut alice, "user:bob", json!("direct")).await;
    let m = bob.expect_msg().await;
    bob.ack("inbox", m.o).await;
    let r = alice.expect_msg().await;
    assert_eq!(r.o, 1);
    assert_eq!(receipt(&r)["id"], json!(ok.id));
    alice.expect_silence(Duration::from_millis(300)).await;
}
