//! Identity policies (multi, max_devices, single, reject_new), resume takeovers, and how every
//! eviction is announced: `evicted` frame + close 4009, the event feed and the metrics.
mod common;

use std::time::Duration;

use common::{Client, Event, Server};
use herald_protocol::{close, ErrorCode, EvictReason, ServerFrame};
use serde_json::{json, Value};

/// The `eviction` event of `session`, waiting for it to be recorded (events are written
/// asynchronously).
async fn eviction_event(s: &Server, session: &str) -> Value {
    let v = s
        .wait_for("/v1/events?type=eviction&limit=1000", |v| {
            v["items"]
                .as_array()
                .is_some_and(|items| items.iter().any(|e| e["session"] == session))
        })
        .await;
    let items = v["items"].as_array().cloned().unwrap_or_default();
    let mine: Vec<&Value> = items.iter().filter(|e| e["session"] == session).collect();
    assert_eq!(
        mine.len(),
        1,
        "one eviction event per evicted session: {mine:?}"
    );
    mine[0].clone()
}

/// All `eviction` events, once there are exactly `n` of them (and never more).
async fn eviction_events(s: &Server, n: usize) -> Vec<Value> {
    let v = s
        .wait_for("/v1/events?type=eviction&limit=1000", |v| {
            v["items"].as_array().is_some_and(|i| i.len() >= n)
        })
        .await;
    let items = v["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), n, "eviction events: {items:?}");
    items
}

fn evictions(reason: &str) -> String {
    format!("herald_evictions_total{{reason=\"{reason}\"}}")
}

/// Asserts the connection is still attached and working: a publish round trip.
async fn still_working(c: &mut Client) {
    let ok = c.publish_ok("chan:alive", json!("still here")).await;
    assert!(ok.o.is_some());
}

fn policy(p: &str) -> [(&str, &str); 1] {
    [("IDENTITY__POLICY", p)]
}

#[tokio::test]
async fn multi_two_devices_of_one_uid_coexist_and_both_receive_inbox_messages() {
    let s = Server::start(&[]);
    let mut phone = Client::connect(&s, "alice", "phone").await;
    let mut laptop = Client::connect(&s, "alice", "laptop").await;
    assert_ne!(phone.w().session, laptop.w().session);

    let mut bob = Client::connect(&s, "bob", "b1").await;
    let ok = bob
        .publish_ok("user:alice", json!({"text": "hi both"}))
        .await;
    assert_eq!(
        ok.online,
        Some(2),
        "both devices of alice are connected at once"
    );
    let m1 = phone.expect_msg().await;
    let m2 = laptop.expect_msg().await;
    for m in [&m1, &m2] {
        assert_eq!((m.s.as_str(), m.o, m.from.as_str()), ("inbox", 1, "bob"));
        assert_eq!(m.body.get(), r#"{"text":"hi both"}"#);
    }
    assert_eq!(m1.id, m2.id);

    // Neither knocked the other out.
    phone.expect_silence(Duration::from_millis(200)).await;
    laptop.expect_silence(Duration::from_millis(50)).await;
    still_working(&mut phone).await;
    still_working(&mut laptop).await;
    let v = s.get("/v1/sessions?uid=alice").await.1;
    let states: Vec<&str> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|s| s["state"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(states, ["connected", "connected"]);
    assert_eq!(s.metric(&evictions("replaced")).await, 0.0);
    assert_eq!(s.metric(&evictions("device_limit")).await, 0.0);
}

#[tokio::test]
async fn multi_fresh_login_on_the_same_device_evicts_the_old_connection_with_replaced() {
    let s = Server::start(&[]);
    let mut old = Client::connect(&s, "alice", "phone").await;
    let mut other = Client::connect(&s, "alice", "laptop").await;
    let mut new = Client::connect(&s, "alice", "phone").await;
    assert_ne!(
        new.w().session,
        old.w().session,
        "a fresh login is a new session"
    );
    assert!(!new.w().resumed);

    let (ev, code) = old.expect_evicted().await;
    assert_eq!(ev.reason, EvictReason::Replaced);
    assert_eq!(ev.by.conn.as_deref(), Some(new.w().conn.as_str()));
    assert!(ev
        .by
        .addr
        .as_deref()
        .is_some_and(|a| a.starts_with("127.0.0.1:")));
    assert_eq!(code, Some(close::EVICTED));

    // The other device is untouched; the new connection works and gets the inbox.
    other.expect_silence(Duration::from_millis(100)).await;
    still_working(&mut new).await;
    let mut bob = Client::connect(&s, "bob", "b1").await;
    let ok = bob.publish_ok("user:alice", json!("after")).await;
    assert_eq!(ok.online, Some(2));
    assert_eq!(new.expect_msg().await.body.get(), r#""after""#);
    assert_eq!(other.expect_msg().await.body.get(), r#""after""#);

    let e = eviction_event(&s, &old.w().session).await;
    assert_eq!(e["kind"], "eviction");
    assert_eq!(e["uid"], "alice");
    assert_eq!(e["device"], "phone");
    assert_eq!(e["conn"], old.w().conn.as_str());
    assert_eq!(e["data"]["reason"], "replaced");
    assert_eq!(e["data"]["by"]["conn"], new.w().conn.as_str());
    eviction_events(&s, 1).await;
    assert_eq!(s.metric(&evictions("replaced")).await, 1.0);
}

#[tokio::test]
async fn multi_fresh_login_on_the_same_device_replaces_a_disconnected_session_too() {
    let s = Server::start(&[]);
    let old = Client::connect(&s, "alice", "phone").await;
    let w_old = old.w().clone();
    old.cut();
    s.wait_detached("alice", &w_old.session).await;

    let new = Client::connect(&s, "alice", "phone").await;
    // The old session is gone: its late resume learns why instead of getting a welcome.
    let mut late = Client::hello_raw(&s, Client::resume_hello(&w_old)).await;
    let (ev, code) = late.expect_evicted_first().await;
    assert_eq!(ev.reason, EvictReason::Replaced);
    assert_eq!(ev.by.conn.as_deref(), Some(new.w().conn.as_str()));
    assert_eq!(code, Some(close::EVICTED));

    let e = eviction_event(&s, &w_old.session).await;
    assert_eq!(e["data"]["reason"], "replaced");
    assert_eq!(e["conn"], Value::Null, "it had no connection when replaced");
    assert_eq!(s.metric(&evictions("replaced")).await, 1.0);
}

#[tokio::test]
async fn max_devices_a_third_device_evicts_a_disconnected_device_before_an_older_connected_one() {
    let s = Server::start(&[("IDENTITY__MAX_DEVICES", "2")]);
    let mut d1 = Client::connect(&s, "alice", "d1").await;
    let d2 = Client::connect(&s, "alice", "d2").await;
    let w2 = d2.w().clone();
    // d2 was active more recently than d1, but it is disconnected: it goes first.
    d2.cut();
    s.wait_detached("alice", &w2.session).await;

    let mut d3 = Client::connect(&s, "alice", "d3").await;
    d1.expect_silence(Duration::from_millis(200)).await;
    still_working(&mut d1).await;
    still_working(&mut d3).await;

    let mut late = Client::hello_raw(&s, Client::resume_hello(&w2)).await;
    let (ev, code) = late.expect_evicted_first().await;
    assert_eq!(ev.reason, EvictReason::DeviceLimit);
    assert_eq!(ev.by.conn.as_deref(), Some(d3.w().conn.as_str()));
    assert_eq!(code, Some(close::EVICTED));

    let e = eviction_event(&s, &w2.session).await;
    assert_eq!(e["data"]["reason"], "device_limit");
    assert_eq!(e["device"], "d2");
    assert_eq!(e["data"]["by"]["conn"], d3.w().conn.as_str());
    eviction_events(&s, 1).await;
    assert_eq!(s.metric(&evictions("device_limit")).await, 1.0);

    let v = s.get("/v1/sessions?uid=alice").await.1;
    let mut devices: Vec<&str> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|s| s["device"].as_str().unwrap_or(""))
        .collect();
    devices.sort_unstable();
    assert_eq!(
        devices,
        ["d1", "d3"],
        "never more than max_devices sessions"
    );
}

#[tokio::test]
async fn max_devices_a_third_device_evicts_the_longest_idle_connected_device() {
    let s = Server::start(&[("IDENTITY__MAX_DEVICES", "2")]);
    let mut d1 = Client::connect(&s, "alice", "d1").await;
    let mut d2 = Client::connect(&s, "alice", "d2").await;
    // d1 is older but was active after d2 connected: d2 is the longest idle.
    // (A few ms so the millisecond activity clock tells them apart.)
    tokio::time::sleep(Duration::from_millis(5)).await;
    d1.sync().await;
    tokio::time::sleep(Duration::from_millis(5)).await;

    let mut d3 = Client::connect(&s, "alice", "d3").await;
    let (ev, code) = d2.expect_evicted().await;
    assert_eq!(ev.reason, EvictReason::DeviceLimit);
    assert_eq!(ev.by.conn.as_deref(), Some(d3.w().conn.as_str()));
    assert_eq!(code, Some(close::EVICTED));
    d1.expect_silence(Duration::from_millis(150)).await;
    still_working(&mut d1).await;
    still_working(&mut d3).await;

    let e = eviction_event(&s, &d2.w().session).await;
    assert_eq!(e["data"]["reason"], "device_limit");
    assert_eq!(e["conn"], d2.w().conn.as_str());
    eviction_events(&s, 1).await;
    assert_eq!(s.metric(&evictions("device_limit")).await, 1.0);
}

#[tokio::test]
async fn single_policy_a_second_device_evicts_the_first_with_replaced() {
    let s = Server::start(&policy("single"));
    let mut first = Client::connect(&s, "alice", "phone").await;
    let mut second = Client::connect(&s, "alice", "laptop").await;
    let (ev, code) = first.expect_evicted().await;
    assert_eq!(ev.reason, EvictReason::Replaced);
    assert_eq!(ev.by.conn.as_deref(), Some(second.w().conn.as_str()));
    assert_eq!(code, Some(close::EVICTED));
    still_working(&mut second).await;

    // A disconnected session of the uid is replaced as well; it learns it on resume.
    let w2 = second.w().clone();
    second.cut();
    s.wait_detached("alice", &w2.session).await;
    let mut third = Client::connect(&s, "alice", "tablet").await;
    let mut late = Client::hello_raw(&s, Client::resume_hello(&w2)).await;
    let (ev, code) = late.expect_evicted_first().await;
    assert_eq!(ev.reason, EvictReason::Replaced);
    assert_eq!(ev.by.conn.as_deref(), Some(third.w().conn.as_str()));
    assert_eq!(code, Some(close::EVICTED));
    still_working(&mut third).await;

    // Other uids are not affected by alice's logins.
    let mut bob = Client::connect(&s, "bob", "phone").await;
    third.expect_silence(Duration::from_millis(100)).await;
    still_working(&mut bob).await;

    let e1 = eviction_event(&s, &first.w().session).await;
    assert_eq!(e1["data"]["reason"], "replaced");
    assert_eq!(e1["data"]["by"]["conn"], w2.conn.as_str());
    let e2 = eviction_event(&s, &w2.session).await;
    assert_eq!(e2["data"]["by"]["conn"], third.w().conn.as_str());
    eviction_events(&s, 2).await;
    assert_eq!(s.metric(&evictions("replaced")).await, 2.0);
}

#[tokio::test]
async fn reject_new_refuses_a_second_login_while_the_first_is_connected() {
    let s = Server::start(&policy("reject_new"));
    let mut first = Client::connect(&s, "alice", "phone").await;
    let w1 = first.w().clone();

    // Another device, then the same device: both refused with identity_in_use + 4010.
    for device in ["laptop", "phone"] {
        let mut c =
            Client::hello_raw(&s, json!({"t":"hello","v":1,"uid":"alice","device":device})).await;
        match c.next().await {
            Event::Frame(ServerFrame::Err(e)) => {
                assert_eq!(e.code, ErrorCode::IdentityInUse);
                assert_eq!(e.seq, None);
            }
            other => panic!("expected err identity_in_use, got {other:?}"),
        }
        assert_eq!(c.expect_close().await, Some(close::IDENTITY_IN_USE));
    }

    // The first connection never noticed and keeps working.
    first.expect_silence(Duration::from_millis(150)).await;
    still_working(&mut first).await;
    let mut bob = Client::connect(&s, "bob", "b1").await;
    assert_eq!(
        bob.publish_ok("user:alice", json!("hi")).await.online,
        Some(1)
    );
    assert_eq!(first.expect_msg().await.body.get(), r#""hi""#);
    assert_eq!(s.metric(&evictions("replaced")).await, 0.0);

    // Once it is disconnected (not bye) a new login is admitted and replaces it…
    first.cut();
    s.wait_detached("alice", &w1.session).await;
    let mut next = Client::connect(&s, "alice", "laptop").await;
    assert!(!next.w().resumed);
    assert_ne!(next.w().session, w1.session);
    still_working(&mut next).await;

    // …so the old session's resume learns it was replaced.
    let mut late = Client::hello_raw(&s, Client::resume_hello(&w1)).await;
    let (ev, code) = late.expect_evicted_first().await;
    assert_eq!(ev.reason, EvictReason::Replaced);
    assert_eq!(ev.by.conn.as_deref(), Some(next.w().conn.as_str()));
    assert_eq!(code, Some(close::EVICTED));
    // (A new device starts at the oldest inbox message.)
    assert_eq!(next.expect_msg().await.o, 1);
    next.expect_silence(Duration::from_millis(100)).await;

    let e = eviction_event(&s, &w1.session).await;
    assert_eq!(e["data"]["reason"], "replaced");
    assert_eq!(e["data"]["by"]["conn"], next.w().conn.as_str());
    eviction_events(&s, 1).await;
    assert_eq!(s.metric(&evictions("replaced")).await, 1.0);
}

#[tokio::test]
async fn resume_takes_its_own_session_over_in_every_policy() {
    for p in ["multi", "single", "reject_new"] {
        let s = Server::start(&policy(p));
        let mut old = Client::connect(&s, "alice", "phone").await;
        old.subscribe("room", None).await;

        // The old connection is still open (say, half-open after a network change).
        let mut new = Client::resume(&s, old.w()).await;
        assert!(new.w().resumed, "{p}: resume with the right key is granted");
        assert_eq!(new.w().resume_error, None);
        assert_eq!(new.w().session, old.w().session, "{p}");
        assert_ne!(new.w().conn, old.w().conn, "{p}");
        assert_eq!(new.w().acked_seq, 1, "{p}");
        assert!(new.w().subs.contains_key("room"), "{p}");

        let (ev, code) = old.expect_evicted().await;
        assert_eq!(ev.reason, EvictReason::ResumedElsewhere, "{p}");
        assert_eq!(ev.by.conn.as_deref(), Some(new.w().conn.as_str()), "{p}");
        assert_eq!(code, Some(close::EVICTED), "{p}");

        // The session carries on: its subscription delivers on the new connection.
        let mut bob = Client::connect(&s, "bob", "b1").await;
        bob.publish_ok("chan:room", json!(p)).await;
        let m = new.expect_msg().await;
        assert_eq!((m.s.as_str(), m.o), ("chan:room", 1), "{p}");
        still_working(&mut new).await;

        let e = eviction_event(&s, &old.w().session).await;
        assert_eq!(e["data"]["reason"], "resumed_elsewhere", "{p}");
        assert_eq!(e["conn"], old.w().conn.as_str(), "{p}");
        assert_eq!(e["data"]["by"]["conn"], new.w().conn.as_str(), "{p}");
        eviction_events(&s, 1).await;
        assert_eq!(s.metric(&evictions("resumed_elsewhere")).await, 1.0, "{p}");
        assert_eq!(s.metric(&evictions("replaced")).await, 0.0, "{p}");
    }
}
