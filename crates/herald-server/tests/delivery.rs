//! Publishing, subscribing, acknowledging and replay, against a real server process.
mod common;

use std::time::Duration;

use common::{Client, Server};
use herald_protocol::ServerFrame;
use serde_json::json;

#[tokio::test]
async fn channel_messages_reach_subscribers_in_order_with_contiguous_offsets() {
    let s = Server::start(&[]);
    let mut bob = Client::connect(&s, "bob", "b1").await;
    let ok = bob.subscribe("room1", None).await;
    assert_eq!(ok.s.as_deref(), Some("chan:room1"));
    assert_eq!(ok.o, Some(0));
    let mut alice = Client::connect(&s, "alice", "a1").await;
    for i in 1..=5u64 {
        let ok = alice.publish_ok("chan:room1", json!({"i": i})).await;
        assert_eq!(ok.s.as_deref(), Some("chan:room1"));
        assert_eq!(ok.o, Some(i));
        assert!(ok.id.as_deref().is_some_and(|id| id.starts_with("m_")));
    }
    let msgs = bob.msgs(5).await;
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m.s, "chan:room1");
        assert_eq!(m.o, i as u64 + 1);
        assert_eq!(m.from, "alice");
        assert_eq!(m.body.get(), format!(r#"{{"i":{}}}"#, i + 1));
    }
}

#[tokio::test]
async fn offline_inbox_is_delivered_on_connect_and_acked_messages_are_not_redelivered() {
    let s = Server::start(&[]);
    // bob's device is known (cursor exists) but bob is offline.
    drop(Client::connect(&s, "bob", "phone").await);
    let mut alice = Client::connect(&s, "alice", "a1").await;
    let ok = alice.publish_ok("user:bob", json!({"text": "hi"})).await;
    assert_eq!(ok.s.as_deref(), Some("inbox"));
    assert_eq!(
        ok.online,
        Some(0),
        "bob was offline: the sender knows at once"
    );
    let ok2 = alice.publish_ok("user:bob", json!({"text": "again"})).await;
    assert_eq!(ok2.o, Some(2));

    let mut bob = Client::connect(&s, "bob", "phone").await;
    let m = bob.msgs(2).await;
    assert_eq!(
        (m[0].s.as_str(), m[0].o, m[0].from.as_str()),
        ("inbox", 1, "alice")
    );
    assert_eq!(m[1].o, 2);
    bob.ack("inbox", 1).await;
    // Resolve the ack before disconnecting: a ping round trip orders it.
    bob.send(json!({"t":"ping"})).await;
    assert!(matches!(
        bob.next_non_ping().await,
        common::Event::Frame(ServerFrame::Pong)
    ));
    drop(bob);

    // A new session for the same device starts after its durable cursor.
    let mut bob = Client::connect(&s, "bob", "phone").await;
    let m = bob.expect_msg().await;
    assert_eq!(m.o, 2, "offset 1 was acknowledged by this device");
    bob.ack("inbox", 2).await;
    bob.expect_silence(Duration::from_millis(300)).await;

    // Another device of bob's starts at the oldest retained message.
    let mut tablet = Client::connect(&s, "bob", "tablet").await;
    assert_eq!(
        tablet.msgs(2).await.iter().map(|m| m.o).collect::<Vec<_>>(),
        [1, 2]
    );
}

#[tokio::test]
async fn sub_from_replays_history_then_goes_live() {
    let s = Server::start(&[]);
    let mut alice = Client::connect(&s, "alice", "a1").await;
    for i in 1..=4 {
        alice.publish_ok("chan:news", json!(i)).await;
    }
    let mut bob = Client::connect(&s, "bob", "b1").await;
    let ok = bob.subscribe("news", Some(2)).await;
    assert_eq!(ok.o, Some(4));
    assert_eq!(
        bob.msgs(2).await.iter().map(|m| m.o).collect::<Vec<_>>(),
        [3, 4]
    );
    alice.publish_ok("chan:news", json!(5)).await;
    assert_eq!(bob.expect_msg().await.o, 5);
}
