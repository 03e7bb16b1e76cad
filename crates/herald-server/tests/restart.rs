//! Crash (kill -9) and graceful (SIGTERM) restarts on the same data directory: nothing
//! acknowledged is lost or duplicated, offsets stay contiguous, sessions resume.
mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Client, Event, Server, WAIT};
use herald_protocol::{close, Msg, OkFrame, ServerFrame, Welcome};
use serde_json::{json, Value};

/// Requests a publisher keeps in flight.
const WINDOW: u64 = 16;

/// What one publisher did before its connection ended.
struct Publisher {
    p: usize,
    welcome: Welcome,
    /// Highest seq it tried to send (sent or not).
    attempted: u64,
    /// The `ok`s it received.
    acked: Vec<OkFrame>,
    /// The close code, if it saw one.
    close: Option<Option<u16>>,
}

fn marker(p: usize, seq: u64) -> String {
    format!("p{p}-{seq}")
}

/// Even seqs go to the channel, odd ones to the user's inbox.
fn target(seq: u64, chan: &str, user: &str) -> String {
    if seq.is_multiple_of(2) {
        format!("chan:{chan}")
    } else {
        format!("user:{user}")
    }
}

fn pub_frame(p: usize, seq: u64, chan: &str, user: &str) -> Value {
    json!({"t":"pub","seq":seq,"to":target(seq, chan, user),
           "body":{"p":p,"seq":seq,"m":marker(p, seq)}})
}

/// Publishes with up to [`WINDOW`] requests in flight until the connection ends.
async fn publish_until_closed(
    mut c: Client,
    p: usize,
    chan: &'static str,
    user: &'static str,
    acked_total: Arc<AtomicUsize>,
) -> Publisher {
    let welcome = c.w().clone();
    let (mut next, mut outstanding, mut attempted) = (1u64, 0u64, 0u64);
    let mut acked = Vec::new();
    let close = 'run: loop {
        while outstanding < WINDOW {
            attempted = next;
            next += 1;
            if !c.try_send(pub_frame(p, attempted, chan, user)).await {
                break 'run None;
            }
            outstanding += 1;
        }
        match c.next_within(WAIT).await {
            Some(Event::Frame(ServerFrame::Ok(o))) => {
                outstanding -= 1;
                acked.push(o);
                acked_total.fetch_add(1, Ordering::SeqCst);
            }
            Some(Event::Frame(ServerFrame::Err(e))) => panic!("publisher {p}: unexpected {e:?}"),
            Some(Event::Frame(_)) => {}
            Some(Event::Closed(code)) => break 'run Some(code),
            None => panic!("publisher {p}: neither an answer nor a close within {WAIT:?}"),
        }
    };
    Publisher {
        p,
        welcome,
        attempted,
        acked,
        close,
    }
}

/// Starts `n` publishers (uids pub0…) and waits until `min_acked` publishes were acknowledged.
async fn start_publishers(
    s: &Server,
    n: usize,
    chan: &'static str,
    user: &'static str,
    min_acked: usize,
) -> Vec<tokio::task::JoinHandle<Publisher>> {
    let acked_total = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for p in 0..n {
        let c = Client::connect(s, &format!("pub{p}"), "d").await;
        tasks.push(tokio::spawn(publish_until_closed(
            c,
            p,
            chan,
            user,
            acked_total.clone(),
        )));
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while acked_total.load(Ordering::SeqCst) < min_acked {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} publishes acknowledged within {WAIT:?}",
            acked_total.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tasks
}

async fn join(tasks: Vec<tokio::task::JoinHandle<Publisher>>) -> Vec<Publisher> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(
            tokio::time::timeout(WAIT, t)
                .await
                .expect("publisher ends once its connection is gone")
                .expect("publisher task"),
        );
    }
    out
}

/// The whole retained history of `stream`, paging with `after`/`limit`.
async fn history(s: &Server, stream: &str) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut after = 0u64;
    loop {
        let (st, v) = s
            .get(&format!("/v1/streams/{stream}?after={after}&limit=100"))
            .await;
        assert_eq!(st, 200, "{v}");
        let items = v["items"].as_array().cloned().unwrap_or_default();
        let Some(last) = items.last() else { break };
        after = last["o"].as_u64().expect("o");
        out.extend(items);
    }
    out
}

/// Checks `items` are offsets 1, 2, 3 … with unique markers in per-publisher seq order;
/// returns marker → offset.
fn check_stream(stream: &str, items: &[Value]) -> HashMap<String, u64> {
    let mut at = HashMap::new();
    let mut last_seq: BTreeMap<u64, u64> = BTreeMap::new();
    for (i, m) in items.iter().enumerate() {
        let o = m["o"].as_u64().expect("o");
        assert_eq!(o, i as u64 + 1, "{stream}: offsets contiguous from 1");
        let b = &m["body"];
        let marker = b["m"].as_str().expect("marker").to_string();
        let (p, seq) = (b["p"].as_u64().expect("p"), b["seq"].as_u64().expect("seq"));
        if let Some(prev) = last_seq.insert(p, seq) {
            assert!(
                prev < seq,
                "{stream}: publisher {p} seq {seq} stored after seq {prev}"
            );
        }
        if let Some(first) = at.insert(marker.clone(), o) {
            panic!("{stream}: {marker} stored twice (offsets {first} and {o})");
        }
    }
    at
}

/// Every acknowledged publish is present, at the offset its `ok` named.
fn check_acknowledged(
    pubs: &[Publisher],
    chan: &HashMap<String, u64>,
    inbox: &HashMap<String, u64>,
) -> usize {
    let mut n = 0;
    for p in pubs {
        for ok in &p.acked {
            let m = marker(p.p, ok.seq);
            let stream = match ok.s.as_deref() {
                Some("inbox") => inbox,
                Some(s) if s.starts_with("chan:") => chan,
                other => panic!("unexpected ok.s {other:?}"),
            };
            assert_eq!(
                stream.get(&m).copied(),
                ok.o,
                "acknowledged {m} must be stored at the offset its ok named"
            );
            n += 1;
        }
    }
    n
}

fn offsets(msgs: &[Msg], s: &str) -> Vec<u64> {
    msgs.iter().filter(|m| m.s == s).map(|m| m.o).collect()
}

async fn wait_inbox_acked(s: &Server, id: &str, device: &str) {
    s.wait_for(&format!("/v1/messages/{id}"), |v| {
        v["recipients"].as_array().is_some_and(|r| {
            r.iter()
                .any(|r| r["device"] == device && r["state"] == "acked")
        })
    })
    .await;
}

const FSYNC: [(&str, &str); 2] = [
    ("STORAGE__DURABILITY", "fsync"),
    ("LIMITS__REQUESTS_PER_SEC", "0"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_no_acknowledged_publish_and_resent_requests_apply_once() {
    let mut s = Server::start(&FSYNC);
    let tasks = start_publishers(&s, 4, "crash", "carol", 200).await;
    s.kill(); // mid-stream: every publisher has requests in flight
    let pubs = join(tasks).await;
    s.restart();

    // Every acknowledged publish survived, once, in order.
    let chan = check_stream("chan:crash", &history(&s, "chan:crash").await);
    let inbox = check_stream("inbox:carol", &history(&s, "user:carol").await);
    let n = check_acknowledged(&pubs, &chan, &inbox);
    assert!(n >= 200, "{n} acknowledged");
    assert!(
        pubs.iter().all(|p| p.attempted > p.acked.len() as u64),
        "the kill hit every publisher with requests in flight"
    );

    // Each publisher resumes and resends what is above acked_seq: then every request it
    // ever sent is stored exactly once.
    for p in &pubs {
        let mut c = Client::resume(&s, &p.welcome).await;
        assert!(c.w().resumed, "publisher {}: session survived kill -9", p.p);
        let k = c.w().acked_seq;
        let max_ok = p.acked.iter().map(|o| o.seq).max().unwrap_or(0);
        assert!(
            k >= max_ok,
            "publisher {}: acked_seq {k} below an acknowledged seq {max_ok}",
            p.p
        );
        assert!(k <= p.attempted);
        for seq in k + 1..=p.attempted {
            c.send(pub_frame(p.p, seq, "crash", "carol")).await;
        }
        for seq in k + 1..=p.attempted {
            c.expect_ok(seq).await;
        }
        if k > 0 {
            // Processed before the crash: not applied again (the answer cache died with
            // the process, so a bare dup).
            c.send(pub_frame(p.p, k, "crash", "carol")).await;
            let ok = c.expect_ok(k).await;
            assert!(ok.dup || ok.o.is_some(), "{ok:?}");
        }
    }
    let chan = check_stream("chan:crash", &history(&s, "chan:crash").await);
    let inbox = check_stream("inbox:carol", &history(&s, "user:carol").await);
    for p in &pubs {
        for seq in 1..=p.attempted {
            let m = marker(p.p, seq);
            let found = if seq.is_multiple_of(2) { &chan } else { &inbox };
            assert!(found.contains_key(&m), "{m} missing after resend");
        }
    }
    let total: u64 = pubs.iter().map(|p| p.attempted).sum();
    assert_eq!((chan.len() + inbox.len()) as u64, total, "nothing extra");
}

#[tokio::test]
async fn a_session_from_before_kill_9_resumes_after_restart() {
    let mut s = Server::start(&FSYNC);
    let mut carol = Client::connect(&s, "carol", "c1").await;
    carol.subscribe("news", None).await; // seq 1
    let mut alice = Client::connect(&s, "alice", "a1").await;
    let mut inbox_ids = Vec::new();
    for i in 1..=3 {
        alice.publish_ok("chan:news", json!({"news": i})).await;
        let ok = alice.publish_ok("user:carol", json!({"dm": i})).await;
        inbox_ids.push(ok.id.expect("id"));
    }
    let got = carol.msgs(6).await;
    assert_eq!(offsets(&got, "chan:news"), [1, 2, 3]);
    assert_eq!(offsets(&got, "inbox"), [1, 2, 3]);
    carol.ack("inbox", 1).await;
    carol.ack("chan:news", 2).await;
    carol.sync().await;
    wait_inbox_acked(&s, &inbox_ids[0], "c1").await;
    let w = carol.w().clone();
    let wa = alice.w().clone();
    // dan only subscribes and unsubscribes (answered, nothing else to persist his session).
    let mut dan = Client::connect(&s, "dan", "d1").await;
    dan.subscribe("x", None).await; // seq 1
    dan.subscribe("y", Some(0)).await; // seq 2
    dan.send(json!({"t":"unsub","seq":3,"chan":"y"})).await;
    dan.expect_ok(3).await;
    let wd = dan.w().clone();

    s.kill();
    assert_eq!(
        carol.expect_close().await,
        None,
        "no close frame from a killed server"
    );
    s.restart();

    let v = s.get("/v1/sessions?uid=carol").await.1;
    assert_eq!(v["items"][0]["id"], w.session.as_str());
    assert_eq!(
        v["items"][0]["state"], "disconnected",
        "after a restart every session waits for its resume"
    );

    let mut carol = Client::resume(&s, &w).await;
    let w2 = carol.w().clone();
    assert!(w2.resumed);
    assert_eq!(w2.session, w.session);
    assert_eq!(w2.acked_seq, 1);
    // The channel ack may or may not have been persisted before the crash; either way the
    // redelivery starts right after the position the welcome reports.
    let at = w2.subs.get("news").expect("subscription kept").o;
    assert!(at <= 2, "position {at} beyond what was acknowledged");
    let expect_chan: Vec<u64> = (at + 1..=3).collect();
    let got = carol.msgs(expect_chan.len() + 2).await;
    assert_eq!(offsets(&got, "chan:news"), expect_chan);
    assert_eq!(offsets(&got, "inbox"), [2, 3], "unacked inbox redelivered");
    carol.expect_silence(Duration::from_millis(200)).await;

    // Every answered request counts as processed after the crash too: acked_seq covers
    // them and resending them applies nothing again.
    let mut dan = Client::resume(&s, &wd).await;
    assert!(dan.w().resumed);
    assert_eq!(
        dan.w().acked_seq,
        3,
        "sub, sub, unsub were answered before the crash"
    );
    assert_eq!(dan.w().subs.keys().collect::<Vec<_>>(), ["x"]);
    dan.send(json!({"t":"sub","seq":1,"chan":"x"})).await;
    dan.send(json!({"t":"sub","seq":2,"chan":"y","from":0}))
        .await;
    dan.send(json!({"t":"unsub","seq":3,"chan":"y"})).await;
    for seq in 1..=3 {
        let ok = dan.expect_ok(seq).await;
        assert!(ok.dup, "seq {seq} applied again after the restart: {ok:?}");
    }

    // Offsets continue after the restart, live delivery works.
    let mut alice = Client::resume(&s, &wa).await;
    assert_eq!(alice.w().acked_seq, 6);
    alice.seq = 6;
    assert_eq!(
        alice.publish_ok("chan:news", json!({"news": 4})).await.o,
        Some(4)
    );
    assert_eq!(carol.expect_msg().await.o, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_with_1001_exits_0_and_sessions_resume_without_loss() {
    let s = Server::start(&[("LIMITS__REQUESTS_PER_SEC", "0")]);
    let mut carol = Client::connect(&s, "carol", "c1").await;
    carol.subscribe("news", None).await; // seq 1
    let mut alice = Client::connect(&s, "alice", "a1").await;
    let mut inbox_ids = Vec::new();
    for i in 1..=20 {
        alice.publish_ok("chan:news", json!({"news": i})).await;
        let ok = alice.publish_ok("user:carol", json!({"dm": i})).await;
        inbox_ids.push(ok.id.expect("id"));
    }
    let got = carol.msgs(40).await;
    assert_eq!(offsets(&got, "chan:news"), (1..=20).collect::<Vec<_>>());
    carol.ack("chan:news", 15).await;
    carol.ack("inbox", 10).await;
    carol.sync().await;
    wait_inbox_acked(&s, &inbox_ids[9], "c1").await;
    let (w, wa) = (carol.w().clone(), alice.w().clone());

    // Publishers are busy while the signal arrives.
    let tasks = start_publishers(&s, 3, "load", "dave", 100).await;
    let (mut s, exited_ok) = tokio::task::spawn_blocking(move || {
        let mut s = s;
        let ok = s.terminate();
        (s, ok)
    })
    .await
    .expect("terminate");
    assert!(exited_ok, "SIGTERM: the process exits 0");
    assert_eq!(carol.expect_close().await, Some(close::GOING_AWAY));
    assert_eq!(alice.expect_close().await, Some(close::GOING_AWAY));
    let pubs = join(tasks).await;
    for p in &pubs {
        if let Some(code) = p.close {
            assert_eq!(code, Some(close::GOING_AWAY), "publisher {}", p.p);
        }
    }
    s.restart();

    let chan = check_stream("chan:load", &history(&s, "chan:load").await);
    let inbox = check_stream("inbox:dave", &history(&s, "user:dave").await);
    assert!(check_acknowledged(&pubs, &chan, &inbox) >= 100);
    assert_eq!(history(&s, "chan:news").await.len(), 20);
    assert_eq!(history(&s, "user:carol").await.len(), 20);

    let mut carol = Client::resume(&s, &w).await;
    let w2 = carol.w().clone();
    assert!(w2.resumed);
    assert_eq!(w2.session, w.session);
    assert_eq!(w2.acked_seq, 1);
    assert_eq!(
        w2.subs.get("news").map(|p| p.o),
        Some(15),
        "a graceful shutdown persists channel positions"
    );
    let got = carol.msgs(5 + 10).await;
    assert_eq!(offsets(&got, "chan:news"), (16..=20).collect::<Vec<_>>());
    assert_eq!(offsets(&got, "inbox"), (11..=20).collect::<Vec<_>>());
    carol.expect_silence(Duration::from_millis(200)).await;

    let alice = Client::resume(&s, &wa).await;
    assert!(alice.w().resumed);
    assert_eq!(alice.w().acked_seq, 40);
    for p in &pubs {
        let c = Client::resume(&s, &p.welcome).await;
        assert!(c.w().resumed, "publisher {}", p.p);
        let max_ok = p.acked.iter().map(|o| o.seq).max().unwrap_or(0);
        assert!(c.w().acked_seq >= max_ok);
    }
}

/// A server that was down longer than a session's reconnect window must not expire the session
/// for it: clients could not reconnect while it was down, so the window restarts at boot.
#[tokio::test]
async fn a_restart_gives_sessions_a_full_reconnect_window_from_boot() {
    let mut s = Server::start(&[("SESSION__RECONNECT_TIMEOUT_MS", "1500")]);
    let c = Client::connect(&s, "wendy", "w1").await;
    let w = c.w().clone();
    drop(c);
    s.kill();
    // Longer than the window: by wall clock alone the session would be expired.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    s.restart();
    let c = Client::resume(&s, &w).await;
    assert!(
        c.w().resumed,
        "resumed within the window counted from boot: {:?}",
        c.w()
    );
    assert_eq!(c.w().session, w.session);
}
