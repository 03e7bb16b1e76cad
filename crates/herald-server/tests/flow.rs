//! Flow control: at most `session.max_inflight` unacknowledged deliveries per session; acks
//! release more; a slow reader loses nothing and slows nobody else.
mod common;

use std::time::Duration;

use common::{Client, Server};
use serde_json::json;

const QUIET: Duration = Duration::from_millis(300);

fn offsets(msgs: &[herald_protocol::Msg]) -> Vec<u64> {
    msgs.iter().map(|m| m.o).collect()
}

#[tokio::test]
async fn max_inflight_holds_inbox_deliveries_until_acks_release_them() {
    let s = Server::start(&[("SESSION__MAX_INFLIGHT", "3")]);
    let mut alice = Client::connect(&s, "alice", "a1").await;
    for i in 1..=10 {
        alice.publish_ok("user:bob", json!({"i": i})).await;
    }
    let mut bob = Client::connect(&s, "bob", "b1").await;
    assert_eq!(bob.w().limits.max_inflight, 3);

    let mut got = bob.msgs(3).await;
    assert_eq!(offsets(&got), [1, 2, 3]);
    bob.expect_silence(QUIET).await;

    // Acks are cumulative: acking 2 frees exactly two slots.
    bob.ack("inbox", 2).await;
    let m = bob.msgs(2).await;
    assert_eq!(offsets(&m), [4, 5]);
    got.extend(m);
    bob.expect_silence(QUIET).await;

    // A stale ack (below what was acked) frees nothing.
    bob.ack("inbox", 1).await;
    bob.expect_silence(QUIET).await;

    bob.ack("inbox", 5).await;
    let m = bob.msgs(3).await;
    assert_eq!(offsets(&m), [6, 7, 8]);
    got.extend(m);
    bob.expect_silence(QUIET).await;

    bob.ack("inbox", 8).await;
    let m = bob.msgs(2).await;
    assert_eq!(offsets(&m), [9, 10]);
    got.extend(m);
    bob.ack("inbox", 10).await;
    bob.expect_silence(QUIET).await;

    assert_eq!(offsets(&got), (1..=10).collect::<Vec<_>>());
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.body.get(), format!(r#"{{"i":{}}}"#, i + 1));
        assert_eq!(m.from, "alice");
    }

    // Live deliveries obey the same window.
    for i in 11..=15 {
        alice.publish_ok("user:bob", json!({"i": i})).await;
    }
    assert_eq!(offsets(&bob.msgs(3).await), [11, 12, 13]);
    bob.expect_silence(QUIET).await;
    bob.ack("inbox", 13).await;
    assert_eq!(offsets(&bob.msgs(2).await), [14, 15]);
    bob.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_slow_subscriber_far_behind_the_memory_tail_gets_every_message_once_in_order() {
    // The in-memory tail holds 1024 messages per stream; 3000 pushes the reader onto the store.
    let total = 3000u64;
    let window = 64u64;
    let s = Server::start(&[
        ("SESSION__MAX_INFLIGHT", "64"),
        ("LIMITS__REQUEST_BURST", "10000"),
        ("LIMITS__PUBLISHES_PER_UID_PER_SEC", "0"),
    ]);
    let mut bob = Client::connect(&s, "bob", "b1").await;
    bob.subscribe("firehose", None).await;
    let mut alice = Client::connect(&s, "alice", "a1").await;

    // Publish everything while bob holds his acks.
    let mut seq = 0u64;
    for chunk in (1..=total).collect::<Vec<_>>().chunks(500) {
        let text: Vec<String> = chunk
            .iter()
            .map(|&i| {
                seq += 1;
                json!({"t":"pub","seq":seq,"to":"chan:firehose","body":{"i": i}}).to_string()
            })
            .collect();
        alice.send_text(text.join("\n")).await;
    }
    for seq in 1..=total {
        assert_eq!(alice.expect_ok(seq).await.o, Some(seq));
    }
    let first = bob.msgs(window as usize).await;
    assert_eq!(offsets(&first), (1..=window).collect::<Vec<_>>());
    bob.expect_silence(Duration::from_millis(200)).await;

    // Now read at the client's pace: ack each window as it arrives.
    let mut got = first;
    while (got.len() as u64) < total {
        let last = got.last().map(|m| m.o).expect("some");
        bob.ack("chan:firehose", last).await;
        let want = (total - got.len() as u64).min(window) as usize;
        got.extend(bob.msgs(want).await);
    }
    bob.ack("chan:firehose", total).await;
    bob.expect_silence(QUIET).await;
    assert_eq!(offsets(&got), (1..=total).collect::<Vec<_>>());
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.body.get(), format!(r#"{{"i":{}}}"#, i + 1));
    }
}

#[tokio::test]
async fn a_subscriber_that_never_acks_does_not_hold_up_another() {
    let s = Server::start(&[("SESSION__MAX_INFLIGHT", "3")]);
    let mut stuck = Client::connect(&s, "carol", "c1").await;
    stuck.subscribe("room", None).await;
    let mut bob = Client::connect(&s, "bob", "b1").await;
    bob.subscribe("room", None).await;
    let mut alice = Client::connect(&s, "alice", "a1").await;
    for i in 1..=10 {
        alice.publish_ok("chan:room", json!({"i": i})).await;
    }
    let mut got = Vec::new();
    while got.len() < 10 {
        let m = bob.expect_msg().await;
        bob.ack("chan:room", m.o).await;
        got.push(m.o);
    }
    assert_eq!(got, (1..=10).collect::<Vec<_>>());
    // The stuck subscriber has its window and nothing more.
    assert_eq!(offsets(&stuck.msgs(3).await), [1, 2, 3]);
    stuck.expect_silence(QUIET).await;
    // …and loses nothing once it acks.
    stuck.ack("chan:room", 3).await;
    assert_eq!(offsets(&stuck.msgs(3).await), [4, 5, 6]);
}
