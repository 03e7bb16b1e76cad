//! The Rust SDK (`herald-client`) against the real server: deliveries exactly once and in order
//! across network cuts, server restarts and failed resumes; evictions stop the client; a full
//! recovery buffer makes `publish` wait; acks are sent once the app has taken a message.
//! These are the checks behind the sentences of docs/client.md.
#![allow(clippy::unwrap_used)]
// The JWT `exp` claim needs wall-clock time.
#![allow(clippy::disallowed_types)]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::proxy::Proxy;
use common::Server;
use herald_client::{
    Client, ConnectionEvent, Deliveries, Delivery, Error, Events, EvictReason, FileDeviceStore,
    ReconnectStrategy,
};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn builder(url: &str, uid: &str) -> herald_client::ClientBuilder {
    Client::builder(url)
        .dev_uid(uid)
        .reconnect(ReconnectStrategy::fixed(Duration::from_millis(50)))
        .connect_timeout(Duration::from_secs(2))
}

async fn connect(url: &str, uid: &str, device: &str) -> (Client, Deliveries, Events) {
    let c = builder(url, uid)
        .device(device)
        .connect()
        .await
        .expect("connect");
    let d = c.deliveries().expect("deliveries");
    let e = c.events().expect("events");
    (c, d, e)
}

/// Receives `n` deliveries (each within [`WAIT`]).
async fn take(d: &mut Deliveries, n: usize) -> Vec<Delivery> {
    let mut out = Vec::new();
    while out.len() < n {
        match timeout(WAIT, d.recv()).await {
            Ok(Some(x)) => out.push(x),
            Ok(None) => panic!("deliveries ended after {}: {out:?}", out.len()),
            Err(_) => panic!("only {} of {n} deliveries: {out:?}", out.len()),
        }
    }
    out
}

/// Asserts no delivery arrives within `d`.
async fn expect_no_delivery(deliveries: &mut Deliveries, d: Duration) {
    if let Ok(Some(x)) = timeout(d, deliveries.recv()).await {
        panic!("unexpected delivery {x:?}");
    }
}

/// Waits for the first event matching `pred`; returns every event seen up to it.
async fn wait_event(
    ev: &mut Events,
    pred: impl Fn(&ConnectionEvent) -> bool,
) -> Vec<ConnectionEvent> {
    let mut seen = Vec::new();
    loop {
        match timeout(WAIT, ev.recv()).await {
            Ok(Some(e)) => {
                let hit = pred(&e);
                seen.push(e);
                if hit {
                    return seen;
                }
            }
            Ok(None) => panic!("events ended; seen {seen:?}"),
            Err(_) => panic!("event not seen within {WAIT:?}; seen {seen:?}"),
        }
    }
}

fn offsets(ds: &[Delivery]) -> BTreeMap<String, Vec<u64>> {
    let mut m: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for d in ds {
        m.entry(d.stream.clone()).or_default().push(d.offset);
    }
    m
}

async fn http_publish(s: &Server, to: &str, body: Value) -> Value {
    let (st, v) = s.post("/v1/publish", json!({"to": to, "body": body})).await;
    assert_eq!(st, 200, "{v}");
    v
}

/// Items of a stream's history.
async fn history(s: &Server, stream: &str) -> Vec<Value> {
    let (st, v) = s.get(&format!("/v1/streams/{stream}?limit=1000")).await;
    assert_eq!(st, 200, "{v}");
    v["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn publish_subscribe_and_deliveries() {
    let s = Server::start(&[]);
    let (alice, mut ad, mut ae) = connect(&s.ws_url(), "alice", "a1").await;
    let (bob, _bd, _be) = connect(&s.ws_url(), "bob", "b1").await;
    assert_eq!(
        wait_event(&mut ae, |_| true).await,
        vec![ConnectionEvent::Connecting]
    );
    assert_eq!(
        wait_event(&mut ae, |_| true).await,
        vec![ConnectionEvent::Connected { resumed: false }]
    );
    let sub = alice.subscribe("room", None).await.unwrap();
    assert_eq!((sub.stream.as_str(), sub.offset), ("chan:room", 0));

    let p = bob.publish("chan:room", json!({"n": 1})).await.unwrap();
    assert_eq!(
        (p.stream.as_str(), p.offset, p.dup),
        ("chan:room", 1, false)
    );
    let p2 = bob.publish("user:alice", json!("hi")).await.unwrap();
    assert_eq!(
        (p2.stream.as_str(), p2.offset, p2.online),
        ("inbox", 1, Some(1))
    );

    let got = take(&mut ad, 2).await;
    let chan = got.iter().find(|d| d.stream == "chan:room").unwrap();
    assert_eq!(
        (chan.offset, &chan.from, &chan.body),
        (1, &"bob".to_string(), &json!({"n": 1}))
    );
    assert_eq!(chan.id, p.id);
    let inbox = got.iter().find(|d| d.stream == "inbox").unwrap();
    assert_eq!((inbox.offset, &inbox.body), (1, &json!("hi")));

    // A bad target is refused locally, a forbidden one by the server.
    assert!(matches!(
        bob.publish("nowhere", json!(1)).await,
        Err(Error::Invalid(_))
    ));
    alice.unsubscribe("room").await.unwrap();
    match alice.unsubscribe("room").await {
        Err(Error::Server { code, .. }) => assert_eq!(code, "not_subscribed"),
        other => panic!("{other:?}"),
    }
    bob.publish("chan:room", json!({"n": 2})).await.unwrap();
    expect_no_delivery(&mut ad, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn offline_inbox_is_delivered_on_connect_in_order() {
    let s = Server::start(&[]);
    for i in 1..=5 {
        http_publish(&s, "user:carol", json!({"i": i})).await;
    }
    let (_carol, mut cd, _ce) = connect(&s.ws_url(), "carol", "c1").await;
    let got = take(&mut cd, 5).await;
    assert_eq!(offsets(&got)["inbox"], vec![1, 2, 3, 4, 5]);
    assert_eq!(got[4].body, json!({"i": 5}));
    expect_no_delivery(&mut cd, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn network_cut_resumes_with_nothing_lost_or_duplicated() {
    let s = Server::start(&[]);
    let proxy = Proxy::start(&s.addr).await;
    let (alice, mut ad, mut ae) = connect(&proxy.ws_url(), "alice", "a1").await;
    let (bob, _bd, _be) = connect(&s.ws_url(), "bob", "b1").await;
    alice.subscribe("room", None).await.unwrap();
    wait_event(&mut ae, |e| {
        *e == ConnectionEvent::Connected { resumed: false }
    })
    .await;

    for i in 1..=10 {
        bob.publish("chan:room", json!(i)).await.unwrap();
        bob.publish("user:alice", json!(i)).await.unwrap();
    }
    let mut got = take(&mut ad, 12).await;
    // Alice publishes, and the connection is cut before (some of) the answers arrive.
    let pubs: Vec<_> = (0..5)
        .map(|i| {
            let a = alice.clone();
            tokio::spawn(async move { a.publish("chan:out", json!(i)).await })
        })
        .collect();
    proxy.cut_all();
    for i in 11..=20 {
        bob.publish("chan:room", json!(i)).await.unwrap();
        bob.publish("user:alice", json!(i)).await.unwrap();
    }
    let seen = wait_event(&mut ae, |e| {
        *e == ConnectionEvent::Connected { resumed: true }
    })
    .await;
    assert!(
        seen.iter()
            .any(|e| matches!(e, ConnectionEvent::Disconnected { .. })),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, ConnectionEvent::Reconnecting { attempt: 1, .. })),
        "{seen:?}"
    );
    got.extend(take(&mut ad, 40 - got.len()).await);
    expect_no_delivery(&mut ad, Duration::from_millis(300)).await;
    let o = offsets(&got);
    assert_eq!(o["chan:room"], (1..=20).collect::<Vec<u64>>());
    assert_eq!(o["inbox"], (1..=20).collect::<Vec<u64>>());

    let mut stored = Vec::new();
    for p in pubs {
        let p = p.await.unwrap().expect("publish resolves after the resume");
        stored.push(p.offset);
    }
    stored.sort_unstable();
    assert_eq!(stored, vec![1, 2, 3, 4, 5], "each publish stored once");
    assert_eq!(
        history(&s, "chan:out").await.len(),
        5,
        "the server stored nothing twice"
    );
}

#[tokio::test]
async fn half_open_connection_is_detected_by_the_heartbeat_watchdog() {
    let s = Server::start(&[("SESSION__HEARTBEAT_MS", "300")]);
    let proxy = Proxy::start(&s.addr).await;
    let alice = builder(&proxy.ws_url(), "alice")
        .device("a1")
        .heartbeat_grace(Duration::from_millis(300))
        .connect()
        .await
        .unwrap();
    let mut ad = alice.deliveries().unwrap();
    let mut ae = alice.events().unwrap();
    wait_event(&mut ae, |e| {
        *e == ConnectionEvent::Connected { resumed: false }
    })
    .await;
    proxy.stall(Duration::from_secs(60));
    http_publish(&s, "user:alice", json!("during the stall")).await;
    let seen = wait_event(&mut ae, |e| {
        *e == ConnectionEvent::Connected { resumed: true }
    })
    .await;
    assert!(
        seen.iter().any(|e| matches!(e, ConnectionEvent::Disconnected { reason } if reason.contains("heartbeat"))),
        "{seen:?}"
    );
    let got = take(&mut ad, 1).await;
    assert_eq!(got[0].body, json!("during the stall"));
    assert!(alice.publish("user:alice", json!(2)).await.is_ok());
}

#[tokio::test]
async fn resume_after_server_restart() {
    let mut s = Server::start(&[]);
    let proxy = Proxy::start(&s.addr).await;
    let (alice, mut ad, mut ae) = connect(&proxy.ws_url(), "alice", "a1").await;
    alice.subscribe("room", None).await.unwrap();
    http_publish(&s, "chan:room", json!(1)).await;
    let mut got = take(&mut ad, 1).await;

    s.kill();
    wait_event(&mut ae, |e| {
        matches!(e, ConnectionEvent::Disconnected { .. })
    })
    .await;
    s.restart();
    proxy.set_upstream(&s.addr);
    let seen = wait_event(&mut ae, |e| matches!(e, ConnectionEvent::Connected { .. })).await;
    assert_eq!(
        seen.last(),
        Some(&ConnectionEvent::Connected { resumed: true }),
        "sessions survive a restart: {seen:?}"
    );
    http_publish(&s, "chan:room", json!(2)).await;
    http_publish(&s, "user:alice", json!(3)).await;
    got.extend(take(&mut ad, 2).await);
    let o = offsets(&got);
    assert_eq!(o["chan:room"], vec![1, 2]);
    assert_eq!(o["inbox"], vec![1]);
    let p = alice.publish("chan:room", json!(4)).await.unwrap();
    assert_eq!(p.offset, 3);
}

#[tokio::test]
async fn resume_failed_resubscribes_and_replays_what_was_missed() {
    let s = Server::start(&[]);
    let proxy = Proxy::start(&s.addr).await;
    let alice = builder(&proxy.ws_url(), "alice")
        .device("a1")
        .reconnect_timeout(Duration::from_millis(1))
        .connect()
        .await
        .unwrap();
    let mut ad = alice.deliveries().unwrap();
    let mut ae = alice.events().unwrap();
    alice.subscribe("room", None).await.unwrap();
    for i in 1..=3 {
        http_publish(&s, "chan:room", json!(i)).await;
    }
    let mut got = take(&mut ad, 3).await;

    proxy.refuse(true);
    proxy.cut_all();
    wait_event(&mut ae, |e| {
        matches!(e, ConnectionEvent::Reconnecting { .. })
    })
    .await;
    for i in 4..=6 {
        http_publish(&s, "chan:room", json!(i)).await;
    }
    // A publish made while disconnected waits in the buffer and is sent to the new session.
    let a = alice.clone();
    let queued = tokio::spawn(async move { a.publish("chan:room", json!("queued")).await });
    proxy.refuse(false);
    let seen = wait_event(&mut ae, |e| {
        matches!(e, ConnectionEvent::ResumeFailed { .. })
    })
    .await;
    assert_eq!(
        seen.last(),
        Some(&ConnectionEvent::ResumeFailed {
            reason: "expired".into()
        })
    );
    assert!(
        seen.contains(&ConnectionEvent::Connected { resumed: false }),
        "{seen:?}"
    );
    let p = queued.await.unwrap().unwrap();
    assert_eq!(p.offset, 7);
    got.extend(take(&mut ad, 4).await);
    expect_no_delivery(&mut ad, Duration::from_millis(300)).await;
    assert_eq!(offsets(&got)["chan:room"], (1..=7).collect::<Vec<u64>>());
    assert_eq!(history(&s, "chan:room").await.len(), 7);
}

#[tokio::test]
async fn resume_failed_reports_a_gap_for_what_retention_trimmed() {
    let s = Server::start(&[
        ("RETENTION__CHANNEL_MAX_MESSAGES", "3"),
        ("RETENTION__TRIM_INTERVAL_MS", "100"),
    ]);
    let proxy = Proxy::start(&s.addr).await;
    let alice = builder(&proxy.ws_url(), "alice")
        .device("a1")
        .reconnect_timeout(Duration::ZERO)
        .connect()
        .await
        .unwrap();
    let mut ad = alice.deliveries().unwrap();
    let mut ae = alice.events().unwrap();
    alice.subscribe("room", None).await.unwrap();
    http_publish(&s, "chan:room", json!(1)).await;
    http_publish(&s, "chan:room", json!(2)).await;
    let mut got = take(&mut ad, 2).await;

    proxy.refuse(true);
    proxy.cut_all();
    wait_event(&mut ae, |e| {
        matches!(e, ConnectionEvent::Reconnecting { .. })
    })
    .await;
    for i in 3..=8 {
        http_publish(&s, "chan:room", json!(i)).await;
    }
    s.wait_for("/v1/streams/chan:room", |v| v["first"] == json!(6))
        .await;
    proxy.refuse(false);
    // reconnect_timeout 0: no resume is asked; the new session recovers the same way.
    let seen = wait_event(&mut ae, |e| matches!(e, ConnectionEvent::Gap { .. })).await;
    assert_eq!(
        seen.last(),
        Some(&ConnectionEvent::Gap {
            stream: "chan:room".into(),
            from: 3,
            to: 5
        })
    );
    got.extend(take(&mut ad, 3).await);
    assert_eq!(offsets(&got)["chan:room"], vec![1, 2, 6, 7, 8]);
}

#[tokio::test]
async fn eviction_by_a_twin_stops_the_client_without_reconnecting() {
    let s = Server::start(&[("IDENTITY__POLICY", "single")]);
    let (first, _fd, mut fe) = connect(&s.ws_url(), "alice", "a1").await;
    let (second, mut sd, mut se) = connect(&s.ws_url(), "alice", "a2").await;
    let seen = wait_event(&mut fe, |e| matches!(e, ConnectionEvent::Evicted { .. })).await;
    match seen.last() {
        Some(ConnectionEvent::Evicted { reason, by }) => {
            assert_eq!(*reason, EvictReason::Replaced);
            assert_eq!(
                by.conn.as_deref(),
                Some(second.session().unwrap().conn.as_str())
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fe.recv().await, Some(ConnectionEvent::Closed));
    assert_eq!(fe.recv().await, None, "no reconnect after an eviction");
    let err = first.publish("user:bob", json!(1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Evicted {
                reason: EvictReason::Replaced,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("will not reconnect"), "{err}");
    assert!(matches!(
        first.subscribe("x", None).await,
        Err(Error::Evicted { .. })
    ));

    // The survivor keeps working and is never evicted back.
    second
        .publish("user:alice", json!("still here"))
        .await
        .unwrap();
    assert_eq!(take(&mut sd, 1).await[0].body, json!("still here"));
    let (_, v) = s.get("/v1/events?type=eviction").await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
    wait_event(&mut se, |e| {
        *e == ConnectionEvent::Connected { resumed: false }
    })
    .await;
    assert!(se.try_recv().is_none());
}

#[tokio::test]
async fn a_full_recovery_buffer_makes_publish_wait_until_the_server_is_back() {
    let mut s = Server::start(&[]);
    let proxy = Proxy::start(&s.addr).await;
    let alice = builder(&proxy.ws_url(), "alice")
        .device("a1")
        .recovery_buffer(2)
        .connect()
        .await
        .unwrap();
    let mut ae = alice.events().unwrap();
    s.kill();
    wait_event(&mut ae, |e| {
        matches!(e, ConnectionEvent::Disconnected { .. })
    })
    .await;
    let pubs: Vec<_> = (0..5)
        .map(|i| {
            let a = alice.clone();
            tokio::spawn(async move { a.publish("chan:buf", json!(i)).await })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    while alice.unanswered() < 2 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(alice.unanswered(), 2, "never more than the buffer");
    assert!(
        pubs.iter().all(|p| !p.is_finished()),
        "publish waits, it does not fail or drop"
    );

    s.restart();
    proxy.set_upstream(&s.addr);
    // Every failed attempt while the server was down was announced, numbered 1, 2, 3 …
    let seen = wait_event(&mut ae, |e| matches!(e, ConnectionEvent::Connected { .. })).await;
    assert_eq!(
        seen.last(),
        Some(&ConnectionEvent::Connected { resumed: true })
    );
    let attempts: Vec<u32> = seen
        .iter()
        .filter_map(|e| match e {
            ConnectionEvent::Reconnecting { attempt, next_in } => {
                assert_eq!(*next_in, Duration::from_millis(50), "the fixed strategy");
                Some(*attempt)
            }
            _ => None,
        })
        .collect();
    assert!(attempts.len() >= 2, "{seen:?}");
    assert_eq!(attempts, (1..=attempts.len() as u32).collect::<Vec<_>>());
    let mut offsets = Vec::new();
    for p in pubs {
        offsets.push(timeout(WAIT, p).await.unwrap().unwrap().unwrap().offset);
    }
    offsets.sort_unstable();
    assert_eq!(offsets, vec![1, 2, 3, 4, 5]);
    assert_eq!(history(&s, "chan:buf").await.len(), 5);
    assert_eq!(alice.unanswered(), 0);
}

#[tokio::test]
async fn acks_are_sent_once_the_app_has_received_the_message() {
    let s = Server::start(&[]);
    let (_alice, mut ad, _ae) = connect(&s.ws_url(), "alice", "a1").await;
    let v = http_publish(&s, "user:alice", json!("m")).await;
    let id = v["id"].as_str().unwrap().to_string();
    let path = format!("/v1/messages/{id}");
    s.wait_for(&path, |v| v["summary"]["sent"] == json!(1))
        .await;
    // Sent but not taken by the app: not acknowledged, however long (ack_interval is 50 ms).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, v) = s.get(&path).await;
    assert_eq!(v["summary"]["acked"], json!(0), "{v}");
    assert_eq!(take(&mut ad, 1).await[0].id, id);
    let v = s
        .wait_for(&path, |v| v["summary"]["acked"] == json!(1))
        .await;
    assert_eq!(v["recipients"][0]["device"], json!("a1"));

    // A batch: many messages taken, acknowledged through the cumulative ack of the last one.
    let mut last = String::new();
    for i in 0..100 {
        last = http_publish(&s, "user:alice", json!(i)).await["id"]
            .as_str()
            .unwrap()
            .to_string();
    }
    take(&mut ad, 100).await;
    s.wait_for(&format!("/v1/messages/{last}"), |v| {
        v["summary"]["acked"] == json!(1)
    })
    .await;
}

#[tokio::test]
async fn the_device_id_and_inbox_cursor_survive_a_process_restart() {
    let s = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let c = builder(&s.ws_url(), "dora")
        .device_store(FileDeviceStore::new(dir.path()))
        .connect()
        .await
        .unwrap();
    let device = c.session().unwrap().device;
    assert!(device.starts_with("d_"), "server-allocated: {device}");
    let mut d = c.deliveries().unwrap();
    http_publish(&s, "user:dora", json!(1)).await;
    let v = http_publish(&s, "user:dora", json!(2)).await;
    take(&mut d, 2).await;
    s.wait_for(
        &format!("/v1/messages/{}", v["id"].as_str().unwrap()),
        |v| v["summary"]["acked"] == json!(1),
    )
    .await;
    c.close().await;

    http_publish(&s, "user:dora", json!(3)).await;
    let c2 = builder(&s.ws_url(), "dora")
        .device_store(FileDeviceStore::new(dir.path()))
        .connect()
        .await
        .unwrap();
    assert_eq!(c2.session().unwrap().device, device);
    let mut d2 = c2.deliveries().unwrap();
    let got = take(&mut d2, 1).await;
    assert_eq!((got[0].offset, &got[0].body), (3, &json!(3)));
    expect_no_delivery(&mut d2, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn close_sends_bye_and_later_requests_fail() {
    let s = Server::start(&[]);
    let (c, _d, mut e) = connect(&s.ws_url(), "erin", "e1").await;
    let session = c.session().unwrap().session;
    c.close().await;
    wait_event(&mut e, |e| *e == ConnectionEvent::Closed).await;
    assert_eq!(e.recv().await, None);
    assert_eq!(c.publish("user:erin", json!(1)).await, Err(Error::Closed));
    // bye ends the session at once: nothing left to resume.
    s.wait_for("/v1/sessions?uid=erin", |v| {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["id"] != json!(session))
    })
    .await;
}

#[tokio::test]
async fn a_refused_login_fails_connect() {
    let s = Server::start(&[("IDENTITY__POLICY", "reject_new")]);
    let (_a, _d, _e) = connect(&s.ws_url(), "fay", "f1").await;
    let err = builder(&s.ws_url(), "fay")
        .device("f2")
        .connect()
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::Refused { code, .. } if code == "identity_in_use"),
        "{err}"
    );
}

#[tokio::test]
async fn a_session_replaced_while_disconnected_learns_it_on_resume_and_stops() {
    let s = Server::start(&[("IDENTITY__POLICY", "single")]);
    let proxy = Proxy::start(&s.addr).await;
    let (first, _fd, mut fe) = connect(&proxy.ws_url(), "gus", "g1").await;
    proxy.refuse(true);
    proxy.cut_all();
    wait_event(&mut fe, |e| {
        matches!(e, ConnectionEvent::Reconnecting { .. })
    })
    .await;
    let (_second, _sd, _se) = connect(&s.ws_url(), "gus", "g2").await;
    proxy.refuse(false);
    let seen = wait_event(&mut fe, |e| matches!(e, ConnectionEvent::Evicted { .. })).await;
    assert!(
        matches!(
            seen.last(),
            Some(ConnectionEvent::Evicted {
                reason: EvictReason::Replaced,
                ..
            })
        ),
        "{seen:?}"
    );
    assert_eq!(fe.recv().await, Some(ConnectionEvent::Closed));
    assert_eq!(
        fe.recv().await,
        None,
        "no fresh login that would evict the twin back"
    );
    assert!(matches!(
        first.publish("user:gus", json!(1)).await,
        Err(Error::Evicted { .. })
    ));
    let (_, v) = s.get("/v1/events?type=eviction").await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
}

#[tokio::test]
async fn repeated_cuts_during_traffic_lose_and_duplicate_nothing() {
    let s = Server::start(&[]);
    let proxy = Proxy::start(&s.addr).await;
    let (alice, _ad, _ae) = connect(&proxy.ws_url(), "alice", "a1").await;
    let (bob, mut bd, mut be) = connect(&proxy.ws_url(), "bob", "b1").await;
    bob.subscribe("r", None).await.unwrap();
    const N: u64 = 200;
    let publisher = tokio::spawn(async move {
        let mut out = Vec::new();
        for i in 0..N {
            let to = if i % 2 == 0 { "chan:r" } else { "user:bob" };
            out.push(alice.publish(to, json!(i)).await.expect("publish resolves"));
        }
        out
    });
    let mut cuts = 0;
    while !publisher.is_finished() && cuts < 10 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        proxy.cut_all();
        cuts += 1;
    }
    let published = timeout(WAIT, publisher).await.unwrap().unwrap();
    assert_eq!(published.len() as u64, N);
    let got = take(&mut bd, N as usize).await;
    expect_no_delivery(&mut bd, Duration::from_millis(300)).await;
    let o = offsets(&got);
    assert_eq!(
        o["chan:r"],
        (1..=N / 2).collect::<Vec<u64>>(),
        "exactly once, in order"
    );
    assert_eq!(
        o["inbox"],
        (1..=N / 2).collect::<Vec<u64>>(),
        "exactly once, in order"
    );
    let bodies: Vec<u64> = got.iter().map(|d| d.body.as_u64().unwrap()).collect();
    let mut sorted = bodies.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..N).collect::<Vec<u64>>());
    assert_eq!(
        history(&s, "chan:r").await.len() as u64,
        N / 2,
        "stored once"
    );
    assert_eq!(
        history(&s, "inbox:bob").await.len() as u64,
        N / 2,
        "stored once"
    );
    // Every cut was reported, none silently.
    let mut disconnects = 0;
    while let Some(e) = be.try_recv() {
        if matches!(e, ConnectionEvent::Disconnected { .. }) {
            disconnects += 1;
        }
        assert!(
            !matches!(
                e,
                ConnectionEvent::ResumeFailed { .. } | ConnectionEvent::Gap { .. }
            ),
            "{e:?}"
        );
    }
    assert!(disconnects >= 1, "cuts: {cuts}");
}

#[tokio::test]
async fn a_token_logs_in_and_a_bad_token_is_refused() {
    const SECRET: &str = "sdk-test-secret-0123456789-abcdefghij";
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_in(dir.path(), &[("AUTH__HS256_SECRET", SECRET)], false);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = |secret: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"sub": "hana", "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let c = Client::builder(s.ws_url())
        .token(token(SECRET))
        .device("h1")
        .connect()
        .await
        .unwrap();
    assert_eq!(c.session().unwrap().uid, "hana");
    assert_eq!(c.publish("user:hana", json!(1)).await.unwrap().offset, 1);

    let err = Client::builder(s.ws_url())
        .token(token("another-secret-0123456789-abcdefghijkl"))
        .connect()
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::Refused { code, .. } if code == "unauthorized"),
        "{err}"
    );
    let err = Client::builder(s.ws_url()).connect().await.err().unwrap();
    assert!(
        matches!(err, Error::Invalid(_)),
        "credentials are required: {err}"
    );
}

#[tokio::test]
async fn connect_to_nothing_fails_at_once() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let err = builder(&format!("ws://{addr}/v1/ws"), "ivy")
        .connect()
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::Connect(_)), "{err}");
}
