//! `GET /v1/events/stream`: evictions, resume failures, gaps and kicks as Server-Sent Events,
//! with the event id as SSE id, exact resumption with `Last-Event-ID`, filters, heartbeats,
//! API-key auth, and an end at shutdown.
// Tests fail by panicking; `unwrap` is how they say "this must work".
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Client, Server, WAIT};
use serde_json::{json, Value};

/// One SSE message (comment-only messages have just `comment`).
#[derive(Debug, Clone, Default)]
struct Msg {
    id: Option<String>,
    event: Option<String>,
    data: String,
    comment: Option<String>,
}

impl Msg {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("data of {self:?}: {e}"))
    }

    fn id(&self) -> u64 {
        self.id.as_deref().expect("id").parse().expect("numeric id")
    }
}

/// A reader of one event stream.
struct Sse {
    resp: reqwest::Response,
    buf: String,
}

impl Sse {
    async fn open(s: &Server, path: &str, last_event_id: Option<u64>) -> Sse {
        Sse::open_with(s, path, last_event_id, None).await
    }

    async fn open_with(
        s: &Server,
        path: &str,
        last_event_id: Option<u64>,
        key: Option<&str>,
    ) -> Sse {
        let mut req = reqwest::Client::new().get(s.http(path));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.expect("stream request");
        assert_eq!(resp.status(), 200, "GET {path}");
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Sse {
            resp,
            buf: String::new(),
        }
    }

    /// The next message, heartbeats included; `None` when the stream ended.
    async fn next_raw(&mut self) -> Option<Msg> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                return Some(parse(&block));
            }
            let chunk = tokio::time::timeout(WAIT, self.resp.chunk())
                .await
                .expect("no SSE data within the wait")
                .expect("stream read");
            match chunk {
                Some(bytes) => self.buf.push_str(std::str::from_utf8(&bytes).unwrap()),
                None => return None,
            }
        }
    }

    /// The next event (heartbeats skipped).
    async fn next_event(&mut self) -> Msg {
        loop {
            let m = self.next_raw().await.expect("stream ended");
            if m.comment.is_none() || m.event.is_some() {
                return m;
            }
        }
    }

    /// `n` events.
    async fn events(&mut self, n: usize) -> Vec<Msg> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.next_event().await);
        }
        out
    }
}

fn parse(block: &str) -> Msg {
    let mut m = Msg::default();
    for line in block.lines() {
        if let Some(c) = line.strip_prefix(':') {
            m.comment = Some(c.trim().to_string());
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_string();
        match field {
            "id" => m.id = Some(value),
            "event" => m.event = Some(value),
            "data" => {
                if !m.data.is_empty() {
                    m.data.push('\n');
                }
                m.data.push_str(&value);
            }
            _ => {}
        }
    }
    m
}

/// Events of the feed with an id greater than `after`, oldest first.
async fn feed_after(s: &Server, after: u64) -> Vec<Value> {
    let (status, v) = s.get(&format!("/v1/events?after={after}&limit=1000")).await;
    assert_eq!(status, 200, "{v}");
    v["items"].as_array().unwrap().clone()
}

/// Waits until the feed holds `n` events after `after`; returns them.
async fn wait_feed(s: &Server, after: u64, n: usize) -> Vec<Value> {
    let v = s
        .wait_for(&format!("/v1/events?after={after}&limit=1000"), |v| {
            v["items"].as_array().unwrap().len() >= n
        })
        .await;
    v["items"].as_array().unwrap().clone()
}

/// Asserts the messages are exactly these feed items: same ids, kinds and JSON.
fn assert_same(msgs: &[Msg], items: &[Value]) {
    let ids: Vec<u64> = msgs.iter().map(Msg::id).collect();
    let want: Vec<u64> = items.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, want, "SSE ids vs the feed");
    for (m, e) in msgs.iter().zip(items) {
        assert_eq!(m.event.as_deref(), e["kind"].as_str(), "SSE event type");
        assert_eq!(&m.json(), e, "SSE data is the feed item");
    }
}

async fn resume_failure(s: &Server, uid: &str) {
    let c = Client::hello(
        s,
        json!({"t":"hello","v":1,"uid":uid,"device":"d1",
               "resume":{"session":"s_doesnotexist","key":"k"}}),
    )
    .await;
    assert!(!c.w().resumed);
}

#[tokio::test]
async fn live_events_arrive_with_ids_and_types_and_resume_exactly_with_last_event_id() {
    let s = Server::start(&[
        ("RETENTION__CHANNEL_MAX_MESSAGES", "2"),
        ("RETENTION__TRIM_INTERVAL_MS", "100"),
    ]);
    let mut sse = Sse::open(&s, "/v1/events/stream", None).await;

    // An eviction, a resume failure and a gap.
    let _first = Client::connect(&s, "alice", "p1").await;
    let second = Client::connect(&s, "alice", "p1").await;
    resume_failure(&s, "bob").await;
    for i in 0..5 {
        let (status, v) = s
            .post("/v1/publish", json!({"to":"chan:room","body":i}))
            .await;
        assert_eq!(status, 200, "{v}");
    }
    s.wait_for("/v1/streams/chan:room", |v| v["first"] == 4)
        .await;
    let mut carol = Client::connect(&s, "carol", "c1").await;
    carol.subscribe("room", Some(0)).await;

    let items = wait_feed(&s, 0, 3).await;
    let got = sse.events(3).await;
    assert_same(&got, &items);
    let mut kinds: Vec<&str> = got.iter().map(|m| m.event.as_deref().unwrap()).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["eviction", "gap", "resume_failed"]);
    let eviction = got
        .iter()
        .find(|m| m.event.as_deref() == Some("eviction"))
        .unwrap();
    assert_eq!(eviction.json()["uid"], "alice");
    assert_eq!(eviction.json()["data"]["reason"], "replaced");
    let gap = got
        .iter()
        .find(|m| m.event.as_deref() == Some("gap"))
        .unwrap();
    assert_eq!(
        gap.json()["data"],
        json!({"s":"chan:room","from":1,"to":3,"reason":"retention"})
    );
    let last = got.last().unwrap().id();
    drop(sse);

    // While disconnected: a kick (with its eviction) and another resume failure.
    let (status, v) = s
        .delete(&format!("/v1/sessions/{}", second.w().session))
        .await;
    assert_eq!(status, 200, "{v}");
    resume_failure(&s, "dave").await;
    let missed = wait_feed(&s, last, 3).await;

    // Reconnecting with Last-Event-ID gives exactly the missed ones, then live ones.
    let mut sse = Sse::open(&s, "/v1/events/stream", Some(last)).await;
    let replayed = sse.events(missed.len()).await;
    assert_same(&replayed, &missed);
    let missed_kinds: Vec<&str> = missed.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    for k in ["eviction", "kick", "resume_failed"] {
        assert!(missed_kinds.contains(&k), "{missed_kinds:?}");
    }
    let newest = replayed.last().unwrap().id();
    resume_failure(&s, "erin").await;
    let next = sse.next_event().await;
    assert_same(&[next], &feed_after(&s, newest).await);
}

#[tokio::test]
async fn filters_replay_from_after_heartbeats_and_bad_requests() {
    let s = Server::start(&[("API__EVENTS_HEARTBEAT_MS", "200")]);
    let _a1 = Client::connect(&s, "alice", "p1").await;
    let _a2 = Client::connect(&s, "alice", "p1").await;
    let _a3 = Client::connect(&s, "alice", "p1").await;
    resume_failure(&s, "bob").await;
    let all = wait_feed(&s, 0, 3).await;
    let evictions: Vec<Value> = all
        .iter()
        .filter(|e| e["kind"] == "eviction")
        .cloned()
        .collect();
    assert_eq!(evictions.len(), 2);

    // ?after= replays stored events, filtered by type; then only heartbeats while idle.
    let mut sse = Sse::open(&s, "/v1/events/stream?after=0&type=eviction", None).await;
    assert_same(&sse.events(2).await, &evictions);
    let beat = sse.next_raw().await.unwrap();
    assert_eq!(beat.comment.as_deref(), Some("heartbeat"), "{beat:?}");
    assert!(beat.id.is_none() && beat.event.is_none());

    // By uid.
    let mut by_uid = Sse::open(&s, "/v1/events/stream?after=0&uid=bob", None).await;
    let bob = by_uid.next_event().await;
    assert_eq!(bob.event.as_deref(), Some("resume_failed"));
    assert_eq!(bob.json()["uid"], "bob");

    // Last-Event-ID wins over ?after=.
    let first = all[0]["id"].as_u64().unwrap();
    let mut both = Sse::open(&s, "/v1/events/stream?after=999", Some(first)).await;
    assert_same(&both.events(all.len() - 1).await, &all[1..]);

    // Without either, only what is recorded from now on.
    let mut live = Sse::open(&s, "/v1/events/stream", None).await;
    resume_failure(&s, "carol").await;
    let m = live.next_event().await;
    assert_eq!(m.json()["uid"], "carol");
    assert!(m.id() > all.last().unwrap()["id"].as_u64().unwrap());
    // The filtered follower saw it go by without sending it.
    let beat = sse.next_raw().await.unwrap();
    assert!(beat.event.is_none(), "{beat:?}");

    for (path, header) in [
        ("/v1/events/stream?after=abc", None),
        ("/v1/events/stream", Some("x")),
    ] {
        let mut req = reqwest::Client::new().get(s.http(path));
        if let Some(h) = header {
            req = req.header("last-event-id", h);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "bad_frame", "{v}");
    }
}

#[tokio::test]
async fn the_stream_needs_an_api_key_and_ends_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start_in(dir.path(), &[("API__KEYS", "k1")], false);
    let r = reqwest::get(s.http("/v1/events/stream")).await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unauthorized");
    let r = reqwest::Client::new()
        .get(s.http("/v1/events/stream"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let mut sse = Sse::open_with(&s, "/v1/events/stream", None, Some("k1")).await;
    let started = tokio::time::Instant::now();
    assert!(s.terminate(), "clean exit with a stream open");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited on the stream"
    );
    assert!(sse.next_raw().await.is_none(), "the stream ended");
}
