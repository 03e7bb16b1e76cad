//! The operator CLI (`herald trace|messages|sessions|kick|events`) run as the real binary
//! against a real server: the delivery timeline and every non-delivery reason it reports,
//! search, sessions and kicks, the event feed and following it, and the error paths.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Client, Event, Server, WAIT};
use herald_core::clock::format_utc;
use herald_protocol::{EvictReason, ServerFrame};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// What one run of the CLI produced.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "herald failed: {self:#?}");
        &self.stdout
    }
}

/// `herald <args>` with no HERALD_SERVER/HERALD_API_KEY from the test's environment, plus
/// `env`.
fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(args)
        .env_remove("HERALD_SERVER")
        .env_remove("HERALD_API_KEY")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

async fn run_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = command(args, env);
    let out = tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || cmd.output().expect("run herald")),
    )
    .await
    .expect("herald finished in time")
    .expect("join");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `herald <args> --server <s>`.
async fn herald(s: &Server, args: &[&str]) -> Run {
    let url = format!("http://{}", s.addr);
    let mut all = args.to_vec();
    all.extend(["--server", url.as_str()]);
    run_env(&all, &[]).await
}

/// A running `herald events --follow` and the lines it printed.
struct Follower {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Follower {
    fn start(s: &Server, args: &[&str]) -> Follower {
        let url = format!("http://{}", s.addr);
        let mut all = vec!["events", "--follow", "--server", url.as_str()];
        all.extend(args);
        let mut child = command(&all, &[])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn herald events --follow");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Follower { child, lines }
    }

    async fn next_line(&mut self) -> String {
        tokio::time::timeout(WAIT, self.lines.recv())
            .await
            .expect("the follower printed a line in time")
            .expect("the follower is still running")
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The recipient entry of `device` in a trace.
fn recipient<'a>(t: &'a Value, device: &str) -> &'a Value {
    t["recipients"]
        .as_array()
        .and_then(|r| r.iter().find(|x| x["device"] == device))
        .unwrap_or_else(|| panic!("no recipient {device} in {t}"))
}

fn time_of(v: &Value) -> String {
    format_utc(v.as_u64().unwrap_or_else(|| panic!("not a time: {v}")))
}

fn assert_has(text: &str, want: &str) {
    assert!(text.contains(want), "missing {want:?} in:\n{text}");
}

async fn publish(s: &Server, body: Value) -> String {
    let (status, p) = s.post("/v1/publish", body).await;
    assert_eq!(status, 200, "{p}");
    p["id"].as_str().expect("id").to_string()
}

// ---------------------------------------------------------------------------------------------
// herald trace

/// The report's example: a message to bob's two devices; b1 acknowledges it, b2 goes offline
/// without acknowledging, comes back and gets it again.
#[tokio::test]
async fn trace_shows_each_device_of_the_recipient_with_state_and_times() {
    let s = Server::start(&[]);
    let mut b1 = Client::connect(&s, "bob", "b1").await;
    let mut b2 = Client::connect(&s, "bob", "b2").await;
    let id = publish(
        &s,
        json!({"to":"user:bob","body":{"text":"dinner at 8?"},"from":"alice"}),
    )
    .await;
    assert_eq!(b1.expect_msg().await.id, id);
    assert_eq!(b2.expect_msg().await.id, id);
    b1.ack("inbox", 1).await;
    let w2 = b2.w().clone();
    b2.cut();
    let path = format!("/v1/messages/{id}");
    let t = s
        .wait_for(&path, |t| {
            t["summary"] == json!({"pending":0,"sent":1,"acked":1})
                && recipient(t, "b1")["attempts"] == 1
                && recipient(t, "b2")["cause"] == "offline"
        })
        .await;

    let text = herald(&s, &["trace", &id]).await.ok().to_string();
    eprintln!("$ herald trace {id}\n{text}");
    let (r1, r2) = (recipient(&t, "b1"), recipient(&t, "b2"));
    let accepted = time_of(&t["message"]["ts"]);
    assert_has(
        &text,
        &format!(
            "message   {id}\nstream    inbox:bob offset 1\nfrom      alice\n\
             accepted  {accepted} (stored durably)\nbody      {{\"text\":\"dinner at 8?\"}}\n\
             summary   2 devices: 1 acked, 1 sent, 0 pending\n"
        ),
    );
    assert_has(
        &text,
        &format!(
            "bob/b1: acked\n  {accepted}  accepted (durable)\n  {}  sent to session {} (attempt 1), ",
            time_of(&r1["sent_ms"]),
            b1.w().session
        ),
    );
    assert_has(
        &text,
        &format!("  {}  acknowledged, ", time_of(&r1["acked_ms"])),
    );
    assert_has(
        &text,
        &format!(
            "bob/b2: sent, not acknowledged\n  {accepted}  accepted (durable)\n  {}  sent to session {} (attempt 1), ",
            time_of(&r2["sent_ms"]),
            w2.session
        ),
    );
    let offline_since = s
        .session_info("bob", &w2.session)
        .await
        .expect("b2's session waits for a resume")["last_seen_ms"]
        .clone();
    assert_has(
        &text,
        &format!(
            "  not acknowledged             device offline since {}, session {} awaiting a resume; \
             it is sent again when the device comes back",
            time_of(&offline_since),
            w2.session
        ),
    );

    // --json is the API's answer, verbatim.
    let json_out = herald(&s, &["trace", &id, "--json"]).await;
    let cli: Value = serde_json::from_str(json_out.ok()).expect("JSON");
    let (_, api) = s.get(&path).await;
    assert_eq!(cli, api);

    // b2 resumes: the message is sent again (a redelivery) and awaits its ack.
    let mut b2 = Client::resume(&s, &w2).await;
    assert_eq!(b2.expect_msg().await.id, id);
    let t = s
        .wait_for(&path, |t| recipient(t, "b2")["attempts"] == 2)
        .await;
    let r2 = recipient(&t, "b2");
    assert_eq!(r2["redeliveries"], 1);
    let text = herald(&s, &["trace", &id]).await.ok().to_string();
    eprintln!("$ herald trace {id}   # after b2 resumed\n{text}");
    assert_has(
        &text,
        &format!("  {}  sent (first attempt), ", time_of(&r2["sent_ms"]),),
    );
    assert_has(
        &text,
        &format!(
            "\n  {}  redelivered 1 time (2 attempts in all), the last to session {}\n",
            time_of(&r2["last_sent_ms"]),
            w2.session,
        ),
    );
    assert_has(
        &text,
        &format!(
            "  not acknowledged             sent; waiting for the device to acknowledge (session {} is connected)",
            w2.session
        ),
    );
}

#[tokio::test]
async fn trace_says_a_device_that_started_after_the_message_is_not_applicable() {
    let s = Server::start(&[("INBOX__NEW_DEVICE_START", "latest")]);
    let mut b1 = Client::connect(&s, "bob", "b1").await;
    let id = publish(&s, json!({"to":"user:bob","body":"first","from":"alice"})).await;
    assert_eq!(b1.expect_msg().await.id, id);
    b1.ack("inbox", 1).await;
    // b2 is first seen after the message: with new_device_start = latest it starts after it.
    let mut b2 = Client::connect(&s, "bob", "b2").await;
    let later = publish(&s, json!({"to":"user:bob","body":"second","from":"alice"})).await;
    assert_eq!(
        b2.expect_msg().await.id,
        later,
        "b2 starts at the next message"
    );

    let t = s
        .wait_for(&format!("/v1/messages/{id}"), |t| {
            t["summary"] == json!({"pending":0,"sent":0,"acked":1,"skipped":1})
        })
        .await;
    let r2 = recipient(&t, "b2");
    assert_eq!(r2["state"], "skipped", "not shown as acked: {r2}");
    assert_eq!(r2["cause"], "started_after");
    assert!(r2["acked_ms"].is_null(), "{r2}");

    let text = herald(&s, &["trace", &id]).await.ok().to_string();
    assert_has(
        &text,
        "summary   2 devices: 1 acked, 0 sent, 0 pending, 1 skipped",
    );
    assert_has(&text, "bob/b2: not applicable\n");
    assert_has(
        &text,
        "  not applicable               not applicable: the device started after this message (first seen ",
    );
    assert_has(
        &text,
        "its inbox starting after offset 1; inbox.new_device_start = latest)",
    );
    // The later message is a normal delivery for b2.
    let t = s
        .wait_for(&format!("/v1/messages/{later}"), |t| {
            recipient(t, "b2")["state"] == "sent"
        })
        .await;
    assert_eq!(recipient(&t, "b1")["state"], "sent");
}

#[tokio::test]
async fn trace_says_why_offline_and_evicted_devices_did_not_get_it() {
    let s = Server::start(&[]);
    // b1 went away before the message and never came back.
    let b1 = Client::connect(&s, "bob", "b1").await;
    let s1 = b1.w().session.clone();
    b1.cut();
    s.wait_detached("bob", &s1).await;
    // b2 was kicked (with the CLI) before the message.
    let mut b2 = Client::connect(&s, "bob", "b2").await;
    let s2 = b2.w().session.clone();
    let out = herald(&s, &["kick", &s2]).await;
    assert_has(out.ok(), &format!("kicked {s2}"));
    let (ev, code) = b2.expect_evicted().await;
    assert_eq!((ev.reason, code), (EvictReason::Kicked, Some(4009)));
    // b3 is connected, gets it and does not acknowledge yet.
    let mut b3 = Client::connect(&s, "bob", "b3").await;
    let id = publish(&s, json!({"to":"user:bob","body":"hello?","from":"alice"})).await;
    assert_eq!(b3.expect_msg().await.id, id);

    let t = s
        .wait_for(&format!("/v1/messages/{id}"), |t| {
            recipient(t, "b3")["state"] == "sent"
        })
        .await;
    assert_eq!(t["summary"], json!({"pending":2,"sent":1,"acked":0}));
    let (r1, r2, r3) = (
        recipient(&t, "b1"),
        recipient(&t, "b2"),
        recipient(&t, "b3"),
    );
    assert_eq!(
        (&r1["state"], &r1["cause"]),
        (&json!("pending"), &json!("offline"))
    );
    assert_eq!(
        (&r2["state"], &r2["cause"]),
        (&json!("pending"), &json!("evicted"))
    );
    assert_eq!(
        (&r3["state"], &r3["cause"]),
        (&json!("sent"), &json!("awaiting_ack"))
    );

    let text = herald(&s, &["trace", &id]).await.ok().to_string();
    let accepted = time_of(&t["message"]["ts"]);
    assert_has(
        &text,
        &format!(
            "bob/b1: pending, not sent\n  {accepted}  accepted (durable)\n  not sent                     \
             device offline since "
        ),
    );
    assert_has(
        &text,
        &format!(
            " (never connected since the message was accepted), session {s1} awaiting a resume; \
             it is sent when the device comes back"
        ),
    );
    assert_has(
        &text,
        &format!(
            "bob/b2: pending, not sent\n  {accepted}  accepted (durable)\n  not sent                     \
             session {s2} evicted (kicked) at "
        ),
    );
    assert_has(&text, "; the device has not connected since");
    assert_has(&text, "bob/b3: sent, not acknowledged\n");

    // The kicked session is gone: kicking it again is "not found", exit 1.
    let again = herald(&s, &["kick", &s2]).await;
    assert_eq!(again.code, Some(1), "{again:#?}");
    assert_has(&again.stderr, &format!("no open session {s2}"));
}

#[tokio::test]
async fn trace_says_trimmed_before_ack_then_inside_a_gap() {
    let s = Server::start(&[
        ("RETENTION__INBOX_MAX_AGE_MS", "400"),
        ("RETENTION__TRIM_INTERVAL_MS", "100"),
    ]);
    // b2 is known but offline when the message arrives.
    let b2 = Client::connect(&s, "bob", "b2").await;
    let s2 = b2.w().session.clone();
    b2.cut();
    s.wait_detached("bob", &s2).await;
    let mut b1 = Client::connect(&s, "bob", "b1").await;
    let id = publish(
        &s,
        json!({"to":"user:bob","body":"soon gone","from":"alice"}),
    )
    .await;
    assert_eq!(b1.expect_msg().await.id, id);
    b1.ack("inbox", 1).await;
    let path = format!("/v1/messages/{id}");
    s.wait_for(&path, |t| t["summary"]["acked"] == 1).await;

    // Retention removes it before b2 acknowledged it; the trace still answers.
    let t = s
        .wait_for(&path, |t| t["message"]["trimmed_ms"].is_u64())
        .await;
    assert_eq!(
        t["summary"],
        json!({"pending":0,"sent":0,"acked":1,"trimmed":1})
    );
    assert!(t["message"]["body"].is_null(), "{t}");
    let r2 = recipient(&t, "b2");
    assert_eq!(
        (&r2["state"], &r2["cause"]),
        (&json!("trimmed"), &json!("trimmed"))
    );
    assert_eq!(recipient(&t, "b1")["state"], "acked");
    let trimmed = time_of(&t["message"]["trimmed_ms"]);
    let text = herald(&s, &["trace", &id]).await.ok().to_string();
    assert_has(
        &text,
        &format!("body      (removed by retention at {trimmed}, "),
    );
    assert_has(
        &text,
        &format!(
            "bob/b2: NOT DELIVERED: trimmed by retention\n  {}  accepted (durable)\n  \
             {trimmed}  trimmed by retention at {trimmed} before ack (never sent); device offline since ",
            time_of(&t["message"]["ts"])
        ),
    );
    assert_has(&text, "bob/b1: acked\n");

    // b2 comes back: it is told with a gap, and the trace now says so.
    let mut b2 = Client::connect(&s, "bob", "b2").await;
    match b2.next_non_ping().await {
        Event::Frame(ServerFrame::Gap(g)) => assert_eq!((g.from, g.to), (1, 1)),
        other => panic!("expected a gap, got {other:?}"),
    }
    let t = s
        .wait_for(&path, |t| recipient(t, "b2")["cause"] == "gap")
        .await;
    assert_eq!(recipient(&t, "b2")["state"], "trimmed");
    let text = herald(&s, &["trace", &id]).await.ok().to_string();
    assert_has(&text, "bob/b2: NOT DELIVERED: inside a gap\n");
    assert_has(
        &text,
        &format!(
            "  {trimmed}  inside a gap: retention removed it at {trimmed} before the device \
             acknowledged it (never sent); the device was told offsets 1-1 are gone at "
        ),
    );
    assert_has(&text, &format!("(session {})", b2.w().session));
}

#[tokio::test]
async fn trace_of_a_channel_message_counts_all_and_pages_through_sessions() {
    let s = Server::start(&[]);
    let mut subs = Vec::new();
    for (uid, dev) in [("bob", "b1"), ("carol", "c1"), ("dave", "d1")] {
        let mut c = Client::connect(&s, uid, dev).await;
        c.subscribe("room", None).await;
        subs.push(c);
    }
    let mut alice = Client::connect(&s, "alice", "a1").await;
    let id = alice
        .publish_ok("chan:room", json!("hello room"))
        .await
        .id
        .expect("id");
    for c in &mut subs {
        assert_eq!(c.expect_msg().await.id, id);
    }
    subs[0].ack("chan:room", 1).await;
    subs[0].round_trip().await;
    // erin subscribes live after the message: not a recipient of it.
    let mut erin = Client::connect(&s, "erin", "e1").await;
    erin.subscribe("room", None).await;

    let path = format!("/v1/messages/{id}");
    let t = s
        .wait_for(&path, |t| {
            t["summary"] == json!({"pending":0,"sent":2,"acked":1,"skipped":1})
        })
        .await;
    assert_eq!(t["page"], json!({"offset":0,"total":4}));
    assert_eq!(recipient(&t, "e1")["cause"], "started_after");

    let (_, page) = s.get(&format!("{path}?limit=2&offset=1")).await;
    let devices: Vec<&str> = page["recipients"]
        .as_array()
        .expect("recipients")
        .iter()
        .map(|r| r["device"].as_str().expect("device"))
        .collect();
    assert_eq!(devices, ["c1", "d1"], "sorted by uid, then paged");
    assert_eq!(
        page["summary"], t["summary"],
        "counts cover every recipient"
    );
    assert_eq!(page["page"], json!({"offset":1,"total":4}));

    let text = herald(&s, &["trace", &id, "--limit", "2"])
        .await
        .ok()
        .to_string();
    assert_has(
        &text,
        "summary   4 subscribed sessions: 1 acked, 2 sent, 0 pending, 1 skipped",
    );
    assert_has(&text, "listing   1-2 of 4; page with --offset and --limit");
    assert_has(
        &text,
        &format!("bob/b1 (session {}): acked\n", subs[0].w().session),
    );
    assert_has(
        &text,
        &format!(
            "carol/c1 (session {}): sent, not acknowledged\n",
            subs[1].w().session
        ),
    );
    assert!(!text.contains("dave/d1"), "{text}");
    let text = herald(&s, &["trace", &id, "--limit", "2", "--offset", "2"])
        .await
        .ok()
        .to_string();
    assert_has(&text, "listing   3-4 of 4; page with --offset and --limit");
    assert_has(&text, "dave/d1 (session ");
    assert_has(
        &text,
        "not applicable               not applicable: subscribed after this message (from offset 1)",
    );
}

// ---------------------------------------------------------------------------------------------
// herald messages

#[tokio::test]
async fn messages_searches_by_sender_recipient_and_time() {
    let s = Server::start(&[]);
    let wanted = publish(&s, json!({"to":"user:bob","body":"for bob","from":"alice"})).await;
    publish(
        &s,
        json!({"to":"user:bob","body":"from carol","from":"carol"}),
    )
    .await;
    let chan = publish(
        &s,
        json!({"to":"chan:room","body":"to the room","from":"alice"}),
    )
    .await;
    publish(
        &s,
        json!({"to":"user:dave","body":"for dave","from":"alice"}),
    )
    .await;

    let text = herald(
        &s,
        &[
            "messages", "--from", "alice", "--to", "user:bob", "--since", "1h",
        ],
    )
    .await
    .ok()
    .to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "a header and one message:\n{text}");
    assert!(lines[0].starts_with("ACCEPTED"), "{text}");
    assert_has(lines[1], &wanted);
    assert_has(lines[1], "inbox:bob");
    assert_has(lines[1], "alice");
    assert_has(lines[1], "\"for bob\"");

    let out = herald(
        &s,
        &["messages", "--from", "alice", "--to", "chan:room", "--json"],
    )
    .await;
    let v: Value = serde_json::from_str(out.ok()).expect("JSON");
    let (_, api) = s.get("/v1/messages?from=alice&s=chan:room").await;
    assert_eq!(v, api, "--json is the API's answer");
    assert_eq!(v["items"][0]["id"], chan.as_str());

    // Everything from alice, oldest first.
    let text = herald(&s, &["messages", "--from", "alice"])
        .await
        .ok()
        .to_string();
    assert_eq!(text.lines().count(), 4, "{text}");
    // A window in the future matches nothing; one that ended before everything neither.
    let text = herald(&s, &["messages", "--since", "4102444800000"])
        .await
        .ok()
        .to_string();
    assert_eq!(text.trim(), "no messages match");
    let text = herald(&s, &["messages", "--until", "2001-01-01T00:00:00Z"])
        .await
        .ok()
        .to_string();
    assert_eq!(text.trim(), "no messages match");
    // --limit caps the list and says there may be more.
    let out = herald(&s, &["messages", "--limit", "1"]).await;
    assert_eq!(out.ok().lines().count(), 2);
    assert_has(&out.stderr, "showing the first 1 matches");

    // A target that is neither user: nor chan: is a usage error.
    let out = herald(&s, &["messages", "--to", "bob"]).await;
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert_has(&out.stderr, "must be user:<uid> or chan:<name>");
}

// ---------------------------------------------------------------------------------------------
// herald sessions / kick

#[tokio::test]
async fn sessions_lists_a_uid_and_kick_evicts_its_connection() {
    let s = Server::start(&[]);
    let mut p1 = Client::connect(&s, "alice", "p1").await;
    p1.subscribe("room", None).await;
    let _bob = Client::connect(&s, "bob", "b1").await;
    let sid = p1.w().session.clone();

    let text = herald(&s, &["sessions", "--uid", "alice"])
        .await
        .ok()
        .to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "only alice's session:\n{text}");
    assert!(lines[0].starts_with("SESSION"), "{text}");
    for want in [
        sid.as_str(),
        "alice",
        "p1",
        "connected",
        p1.w().conn.as_str(),
        "room@0",
    ] {
        assert_has(lines[1], want);
    }
    let out = herald(&s, &["sessions", "--json"]).await;
    let v: Value = serde_json::from_str(out.ok()).expect("JSON");
    let ids: Vec<&str> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|s| s["uid"].as_str().expect("uid"))
        .collect();
    assert_eq!(ids, ["alice", "bob"]);

    let out = herald(&s, &["kick", &sid]).await;
    assert_has(out.ok(), &format!("kicked {sid}"));
    let (ev, code) = p1.expect_evicted().await;
    assert_eq!((ev.reason, code), (EvictReason::Kicked, Some(4009)));
    let text = herald(&s, &["sessions", "--uid", "alice"])
        .await
        .ok()
        .to_string();
    assert_eq!(text.trim(), "no sessions");
}

// ---------------------------------------------------------------------------------------------
// herald events

#[tokio::test]
async fn events_lists_and_follows_evictions_without_skipping() {
    let s = Server::start(&[]);
    // One eviction before anyone follows.
    let mut first = Client::connect(&s, "alice", "p1").await;
    let _second = Client::connect(&s, "alice", "p1").await;
    first.expect_evicted().await;
    s.wait_for("/v1/events?type=eviction", |v| {
        v["items"].as_array().is_some_and(|i| i.len() == 1)
    })
    .await;

    let text = herald(&s, &["events", "--type", "eviction", "--uid", "alice"])
        .await
        .ok()
        .to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    for want in [" eviction ", "uid=alice", "device=p1", "reason=replaced"] {
        assert_has(lines[0], want);
    }
    let text = herald(&s, &["events", "--uid", "nobody"])
        .await
        .ok()
        .to_string();
    assert_eq!(text.trim(), "no events match");

    // A follower prints the existing one, then each new eviction as it happens, in order.
    let mut f = Follower::start(&s, &["--type", "eviction", "--json"]);
    let old: Value = serde_json::from_str(&f.next_line().await).expect("JSON line");
    assert_eq!(old["data"]["reason"], "replaced");
    let mut evicted = Vec::new();
    for i in 0..3 {
        let dev = format!("d{i}");
        let mut a = Client::connect(&s, "bob", &dev).await;
        let b = Client::connect(&s, "bob", &dev).await;
        a.expect_evicted().await;
        evicted.push((a.w().session.clone(), b));
    }
    let mut last = old["id"].as_u64().expect("id");
    for (session, _) in &evicted {
        let e: Value = serde_json::from_str(&f.next_line().await).expect("JSON line");
        assert_eq!(e["kind"], "eviction");
        assert_eq!(
            e["session"],
            session.as_str(),
            "in order, none skipped: {e}"
        );
        let id = e["id"].as_u64().expect("id");
        assert!(id > last, "ids increase: {id} after {last}");
        last = id;
    }
    drop(f);

    // Text mode: a kick shows up as two lines naming the session, the eviction and the kick
    // (recorded in either order).
    let mut f = Follower::start(&s, &["--uid", "carol"]);
    let carol = Client::connect(&s, "carol", "c1").await;
    let sid = carol.w().session.clone();
    herald(&s, &["kick", &sid]).await.ok();
    let mut seen = vec![f.next_line().await, f.next_line().await];
    seen.sort();
    for line in &seen {
        assert_has(line, &format!("session={sid}"));
    }
    assert!(
        seen.iter()
            .any(|l| l.contains(" eviction ") && l.contains("reason=kicked")),
        "{seen:#?}"
    );
    assert!(seen.iter().any(|l| l.contains(" kick ")), "{seen:#?}");
}

// ---------------------------------------------------------------------------------------------
// errors

#[tokio::test]
async fn a_server_that_is_down_is_named_with_a_hint() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    for args in [
        vec!["trace", "m_1"],
        vec!["messages"],
        vec!["sessions"],
        vec!["kick", "s_1"],
        vec!["events"],
    ] {
        let mut all = args.clone();
        all.extend(["--server", url.as_str()]);
        let out = run_env(&all, &[]).await;
        assert_eq!(out.code, Some(1), "{args:?}: {out:#?}");
        assert!(out.stdout.is_empty(), "{out:#?}");
        assert_eq!(out.stderr.lines().count(), 1, "one line: {out:#?}");
        assert_has(
            &out.stderr,
            &format!("cannot reach the herald server at {url}"),
        );
        assert_has(&out.stderr, "--server URL or HERALD_SERVER");
    }
    // HERALD_SERVER is the default for --server.
    let out = run_env(&["sessions"], &[("HERALD_SERVER", url.as_str())]).await;
    assert_eq!(out.code, Some(1));
    assert_has(&out.stderr, &url);
    // A malformed URL is a usage error.
    let out = run_env(&["sessions", "--server", "ftp://example"], &[]).await;
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert_has(&out.stderr, "is not an http:// URL");
}

#[tokio::test]
async fn unknown_ids_and_missing_api_keys_fail_with_exit_1() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = Server::start_in(
        tmp.path(),
        &[
            (
                "AUTH__HS256_SECRET",
                "a-test-secret-that-is-at-least-32-bytes",
            ),
            ("API__KEYS", "key-one"),
        ],
        false,
    );
    let url = format!("http://{}", s.addr);

    let out = herald(&s, &["sessions"]).await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
    assert_has(
        &out.stderr,
        &format!("the server at {url} refused the request"),
    );
    assert_has(&out.stderr, "(401)");
    assert_has(&out.stderr, "--api-key KEY or set HERALD_API_KEY");

    let out = herald(&s, &["sessions", "--api-key", "wrong"]).await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert_has(
        &out.stderr,
        "Check the key given with --api-key or HERALD_API_KEY",
    );

    assert_has(
        herald(&s, &["sessions", "--api-key", "key-one"]).await.ok(),
        "no sessions",
    );
    let out = run_env(
        &["sessions", "--server", &url],
        &[("HERALD_API_KEY", "key-one")],
    )
    .await;
    assert_has(out.ok(), "no sessions");

    let out = herald(&s, &["trace", "m_nope", "--api-key", "key-one"]).await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stdout.is_empty());
    assert_has(&out.stderr, "herald: no message m_nope");
    let out = herald(&s, &["kick", "s_nope", "--api-key", "key-one"]).await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert_has(&out.stderr, "herald: no open session s_nope");

    // Usage errors exit 2.
    let out = herald(&s, &["trace"]).await;
    assert_eq!(out.code, Some(2), "{out:#?}");
    let out = herald(&s, &["messages", "--since", "yesterday"]).await;
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert_has(&out.stderr, "is not a time");
}

/// A follower started before any matching event exists prints nothing, then picks up the
/// first one on a later poll.
#[tokio::test]
async fn a_follower_with_nothing_yet_picks_up_the_first_event() {
    let s = Server::start(&[]);
    let mut f = Follower::start(&s, &["--type", "kick"]);
    let c = Client::connect(&s, "zoe", "z1").await;
    let sid = c.w().session.clone();
    let (status, _) = s.delete(&format!("/v1/sessions/{sid}")).await;
    assert_eq!(status, 200);
    let line = f.next_line().await;
    assert_has(&line, " kick ");
    assert_has(&line, &format!("session={sid}"));
    // Nothing else matches: the eviction that went with the kick is filtered out.
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), f.lines.recv())
            .await
            .is_err(),
        "only the kick"
    );
}
