//! Logs of a real server run with `--log-format json` and `RUST_LOG=debug`. Each connect,
//! resume (granted or failed), eviction, kick and disconnect is exactly one INFO/WARN line
//! carrying `event`, `uid`, `device`, `session`, `conn`, `addr` and `reason`. Message-level
//! lines (`pub accepted`, `delivered`, `acked`) are DEBUG lines carrying `msg_id`.
mod common;

use std::path::Path;
use std::time::Duration;

use common::{Client, Options, Server, WAIT};
use herald_protocol::{EvictReason, ResumeError};
use serde_json::{json, Value};

/// Every JSON line of the log file (non-JSON lines fail the test).
fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The lines whose `fields.event` is `event`.
fn events<'a>(all: &'a [Value], event: &str) -> Vec<&'a Value> {
    all.iter()
        .filter(|l| l["fields"]["event"] == event)
        .collect()
}

fn field<'a>(line: &'a Value, name: &str) -> &'a str {
    line["fields"][name]
        .as_str()
        .unwrap_or_else(|| panic!("no string field {name:?} in {line}"))
}

/// Waits until the log holds `want` lines of each event type; returns all lines.
async fn wait_for_events(path: &Path, want: &[(&str, usize)]) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let all = lines(path);
        let counts: Vec<(&str, usize)> = want
            .iter()
            .map(|(e, _)| (*e, events(&all, e).len()))
            .collect();
        if counts == want {
            return all;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("event lines {counts:?}, expected {want:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn one_json_line_per_connection_event_with_who_where_and_why() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = tmp.path().join("herald.log");
    let opts = Options {
        stderr_to: Some(log.clone()),
        rust_log: Some("debug".into()),
        args: vec!["--log-format".into(), "json".into()],
        ..Options::default()
    };
    let s = Server::start_opts(&[("SESSION__HEARTBEAT_MS", "60000")], &opts);

    // c1 connects; c2 replaces it (same device); c3 resumes c2's session.
    let mut c1 = Client::connect(&s, "bob", "b1").await;
    let w1 = c1.w().clone();
    let mut c2 = Client::connect(&s, "bob", "b1").await;
    assert_eq!(c1.expect_evicted().await.0.reason, EvictReason::Replaced);
    let w2 = c2.w().clone();
    let mut c3 = Client::resume(&s, &w2).await;
    assert_eq!(
        c2.expect_evicted().await.0.reason,
        EvictReason::ResumedElsewhere
    );
    // A wrong key on another device: a failed resume, then a new session (c4).
    let mut hello = Client::resume_hello(&w2);
    hello["device"] = json!("b2");
    hello["resume"]["key"] = json!("wrong");
    let mut c4 = Client::hello(&s, hello).await;
    assert_eq!(c4.w().resume_error, Some(ResumeError::BadKey));
    // Resuming the replaced session: refused before any welcome.
    let mut c5 = Client::hello_raw(&s, Client::resume_hello(&w1)).await;
    c5.expect_evicted_first().await;
    // A kick of c4's session.
    let (status, _) = s.delete(&format!("/v1/sessions/{}", c4.w().session)).await;
    assert_eq!(status, 200);
    assert_eq!(c4.expect_evicted().await.0.reason, EvictReason::Kicked);

    // Message level: alice → bob (c3), delivered and acked.
    let mut alice = Client::connect(&s, "alice", "a1").await;
    let ok = alice.publish_ok("user:bob", json!("hi")).await;
    let id = ok.id.clone().expect("id");
    let m = c3.expect_msg().await;
    c3.ack("inbox", m.o).await;
    c3.sync().await;
    // bye ends c3's session; alice hangs up.
    c3.send(json!({"t":"bye"})).await;
    assert_eq!(c3.expect_close().await, Some(1000));
    alice
        .send_message(tokio_tungstenite::tungstenite::Message::Close(None))
        .await;
    alice.expect_close().await;

    let all = wait_for_events(
        &log,
        &[
            ("connect", 4),
            ("resume", 1),
            ("resume_failed", 2),
            ("eviction", 3),
            ("kick", 1),
            ("disconnect", 5),
        ],
    )
    .await;

    // Every such line has the who/where/why fields, at INFO or WARN.
    for event in [
        "connect",
        "resume",
        "resume_failed",
        "eviction",
        "kick",
        "disconnect",
    ] {
        for l in events(&all, event) {
            for f in ["uid", "device", "session", "conn", "addr"] {
                field(l, f);
            }
            assert!(!l["fields"]["reason"].is_null(), "no reason: {l}");
            let level = l["level"].as_str().expect("level");
            let want = if matches!(event, "resume_failed" | "eviction") {
                "WARN"
            } else {
                "INFO"
            };
            assert_eq!(level, want, "{l}");
        }
    }

    let addr_of = |conn: &str| -> String {
        let l = all
            .iter()
            .find(|l| {
                matches!(l["fields"]["event"].as_str(), Some("connect" | "resume"))
                    && l["fields"]["conn"] == conn
            })
            .unwrap_or_else(|| panic!("no connect line for {conn}"));
        field(l, "addr").to_string()
    };

    // connect: c1, c2, c4, alice — each once, with the session it got.
    let connects = events(&all, "connect");
    for w in [&w1, &w2, c4.w(), alice.w()] {
        let l: Vec<_> = connects
            .iter()
            .filter(|l| l["fields"]["conn"] == w.conn.as_str())
            .collect();
        assert_eq!(l.len(), 1, "{}: {connects:#?}", w.conn);
        assert_eq!(field(l[0], "session"), w.session);
        assert_eq!(field(l[0], "uid"), w.uid);
        assert_eq!(field(l[0], "device"), w.device);
        assert_eq!(field(l[0], "reason"), "new");
        assert!(field(l[0], "addr").starts_with("127.0.0.1:"));
    }
    let c4_line = connects
        .iter()
        .find(|l| l["fields"]["conn"] == c4.w().conn.as_str())
        .expect("c4");
    assert_eq!(field(c4_line, "resume_error"), "bad_key");

    // resume: c3 took over c2's session.
    let r = events(&all, "resume");
    assert_eq!(field(r[0], "conn"), c3.w().conn);
    assert_eq!(field(r[0], "session"), w2.session);
    assert_eq!(field(r[0], "reason"), "resumed");

    // resume_failed: the wrong key (b2), then the evicted session (b1, before any welcome).
    let rf = events(&all, "resume_failed");
    assert_eq!(
        rf.iter().map(|l| field(l, "reason")).collect::<Vec<_>>(),
        ["bad_key", "evicted"]
    );
    assert_eq!(field(rf[0], "device"), "b2");
    assert_eq!(
        field(rf[0], "conn"),
        c4.w().conn,
        "the connection that asked"
    );
    assert_eq!(field(rf[1], "session"), w1.session);

    // evictions: c1 replaced, c2 resumed elsewhere, c4 kicked — each names the evicted
    // connection and its address.
    let ev = events(&all, "eviction");
    let got: Vec<(&str, &str, &str)> = ev
        .iter()
        .map(|l| (field(l, "reason"), field(l, "conn"), field(l, "session")))
        .collect();
    assert_eq!(
        got,
        [
            ("replaced", w1.conn.as_str(), w1.session.as_str()),
            ("resumed_elsewhere", w2.conn.as_str(), w2.session.as_str()),
            ("kicked", c4.w().conn.as_str(), c4.w().session.as_str()),
        ]
    );
    for l in &ev {
        assert_eq!(field(l, "addr"), addr_of(field(l, "conn")));
    }

    // kick: who was kicked, from where.
    let k = events(&all, "kick");
    assert_eq!(field(k[0], "session"), c4.w().session);
    assert_eq!(field(k[0], "conn"), c4.w().conn);
    assert_eq!(field(k[0], "device"), "b2");
    assert!(field(k[0], "by").starts_with("api:"), "{}", k[0]);

    // disconnect: one per connection that got a welcome (c5 never did), with the close code.
    let dis = events(&all, "disconnect");
    for (w, code) in [(&w1, 4009), (&w2, 4009), (c4.w(), 4009), (c3.w(), 1000)] {
        let l: Vec<_> = dis
            .iter()
            .filter(|l| l["fields"]["conn"] == w.conn.as_str())
            .collect();
        assert_eq!(l.len(), 1, "{}: {dis:#?}", w.conn);
        assert_eq!(l[0]["fields"]["code"], code, "{}", l[0]);
        assert_eq!(field(l[0], "device"), w.device);
        assert_eq!(field(l[0], "addr"), addr_of(&w.conn));
    }
    let a: Vec<_> = dis
        .iter()
        .filter(|l| l["fields"]["conn"] == alice.w().conn.as_str())
        .collect();
    assert_eq!(a.len(), 1);

    // Message level, at DEBUG, each with the message id.
    let debug = |msg: &str| -> Vec<&Value> {
        all.iter()
            .filter(|l| l["fields"]["message"] == msg && l["fields"]["msg_id"] == id.as_str())
            .collect()
    };
    let accepted = debug("pub accepted");
    assert_eq!(accepted.len(), 1, "{all:#?}");
    assert_eq!(accepted[0]["level"], "DEBUG");
    assert_eq!(field(accepted[0], "from"), "alice");
    assert_eq!(field(accepted[0], "s"), "inbox:bob");
    let delivered = debug("delivered");
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0]["level"], "DEBUG");
    assert_eq!(field(delivered[0], "conn"), c3.w().conn);
    let acked = debug("acked");
    assert_eq!(acked.len(), 1);
    assert_eq!(acked[0]["level"], "DEBUG");
    assert_eq!(field(acked[0], "device"), "b1");
}
