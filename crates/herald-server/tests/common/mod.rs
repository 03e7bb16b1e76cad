//! Test harness: boots the real `herald` binary on 127.0.0.1:0 with its own data directory,
//! and speaks real WebSocket frames to it. Waits are on events with timeouts, never sleeps.
#![allow(dead_code, unreachable_pub)]
pub mod proxy;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_protocol::decode::decode_server_frame;
use herald_protocol::{ServerFrame, Welcome};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Default wait for an expected frame.
pub const WAIT: Duration = Duration::from_secs(10);

/// Optional ways to start a server; the default changes nothing.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Write the server's stderr (its logs) to this file instead of inheriting it.
    pub stderr_to: Option<PathBuf>,
    /// `RUST_LOG` for the server (default: `HERALD_TEST_LOG`, else `warn`).
    pub rust_log: Option<String>,
    /// Extra `herald serve` arguments, e.g. `["--log-format", "json"]`.
    pub args: Vec<String>,
    /// A command that runs the server, e.g. `["prlimit", "--nofile=1024:1024"]`.
    pub prefix: Vec<String>,
}

/// A running server process.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub dir: PathBuf,
    env: Vec<(String, String)>,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts a dev-mode server with `HERALD_…` overrides (e.g. `("SESSION__HEARTBEAT_MS","300")`).
    pub fn start(env: &[(&str, &str)]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut s = Server::start_in(&dir, env, true);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on an existing data dir (for restarts).
    pub fn start_in(dir: &Path, env: &[(&str, &str)], dev: bool) -> Server {
        Server::start_with(dir, env, dev, &Options::default())
    }

    /// Starts a dev-mode server in a fresh temp dir with extra [`Options`] (log capture…).
    pub fn start_opts(env: &[(&str, &str)], opts: &Options) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut s = Server::start_with(&dir, env, true, opts);
        s._tmp = Some(tmp);
        s
    }

    /// [`Server::start_in`] with [`Options`]; `Options::default()` is exactly `start_in`.
    pub fn start_with(dir: &Path, env: &[(&str, &str)], dev: bool, opts: &Options) -> Server {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (format!("HERALD_{k}"), v.to_string()))
            .collect();
        let mut cmd = match opts.prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_herald"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_herald")),
        };
        let rust_log = opts
            .rust_log
            .clone()
            .unwrap_or_else(|| std::env::var("HERALD_TEST_LOG").unwrap_or_else(|_| "warn".into()));
        let stderr = match &opts.stderr_to {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("create stderr file")),
            None => Stdio::inherit(),
        };
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(dir)
            .args(&opts.args)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::piped())
            .stderr(stderr);
        // Fast durability keeps the suite quick; the crash test sets fsync itself.
        cmd.env("HERALD_STORAGE__DURABILITY", "os");
        if dev {
            cmd.arg("--dev");
        }
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn herald");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(a) = l
                        .strip_prefix("herald listening on http://")
                        .or_else(|| l.strip_prefix("herald listening on https://"))
                    {
                        break a.trim().to_string();
                    }
                }
                _ => panic!("herald exited before listening (see stderr above)"),
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            addr,
            dir: dir.to_path_buf(),
            env,
            _tmp: None,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// kill -9.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for exit; returns the exit status success.
    pub fn terminate(&mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").arg("-TERM").arg(&pid).status();
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// Restarts on the same data dir with the same settings (after kill or terminate).
    pub fn restart(&mut self) {
        let env: Vec<(String, String)> = self.env.clone();
        let pairs: Vec<(&str, &str)> = env
            .iter()
            .map(|(k, v)| (k.trim_start_matches("HERALD_"), v.as_str()))
            .collect();
        let mut next = Server::start_in(&self.dir, &pairs, true);
        // `next` now holds the old (exited) child and is dropped.
        std::mem::swap(&mut self.child, &mut next.child);
        self.addr = next.addr.clone();
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = reqwest::get(self.http(path)).await.expect("http get");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(self.http(path))
            .json(&body)
            .send()
            .await
            .expect("http post");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// POSTs raw bytes with an optional content type; the answer as JSON when it parses,
    /// otherwise as a JSON string of the text.
    pub async fn post_raw(
        &self,
        path: &str,
        body: Vec<u8>,
        content_type: Option<&str>,
    ) -> (u16, Value) {
        let mut req = reqwest::Client::new().post(self.http(path)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let r = req.send().await.expect("http post");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .delete(self.http(path))
            .send()
            .await
            .expect("http delete");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// GET as text (for `/metrics`).
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(self.http(path)).await.expect("http get");
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }

    /// Polls `GET path` until it answers 200 with a body satisfying `ok`; returns that body.
    /// Panics after [`WAIT`] with the last answer.
    pub async fn wait_for(&self, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (status, v) = self.get(path).await;
            if status == 200 && ok(&v) {
                return v;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("GET {path}: condition not met within {WAIT:?}; last answer {status} {v}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `/metrics` until `series` (name with labels, e.g. `herald_gaps_total`) has a
    /// value satisfying `ok`; returns it. Panics after [`WAIT`].
    pub async fn wait_metric(&self, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (_, text) = self.get_text("/metrics").await;
            let v = metric(&text, series);
            if let Some(v) = v.filter(|v| ok(*v)) {
                return v;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "metric {series}: condition not met within {WAIT:?}; last value {v:?}\n{text}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The value of one series in Prometheus text (`name` or `name{labels}` exactly as printed).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the server did to the connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Frame(ServerFrame),
    Closed(Option<u16>),
}

/// A raw protocol client.
pub struct Client {
    ws: Ws,
    queue: VecDeque<Event>,
    pub seq: u64,
    pub welcome: Option<Welcome>,
    /// WebSocket text frames received so far (one may hold several newline-separated objects).
    pub text_frames: u64,
    /// Payload bytes of the text frames received so far.
    pub received_bytes: u64,
    /// Payload bytes of the text and binary frames sent so far.
    pub sent_bytes: u64,
}

impl Client {
    /// Opens a WebSocket without saying hello.
    pub async fn raw(server: &Server) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(server.ws_url())
            .await
            .expect("ws connect");
        Client::from_ws(ws)
    }

    /// Wraps a WebSocket the caller opened (custom headers…).
    pub fn from_ws(ws: Ws) -> Client {
        Client {
            ws,
            queue: VecDeque::new(),
            seq: 0,
            welcome: None,
            text_frames: 0,
            received_bytes: 0,
            sent_bytes: 0,
        }
    }

    /// Connects in dev mode as `uid` on `device`, expecting a welcome.
    pub async fn connect(server: &Server, uid: &str, device: &str) -> Client {
        Client::hello(server, json!({"t":"hello","v":1,"uid":uid,"device":device})).await
    }

    /// Sends `hello` and expects a welcome.
    pub async fn hello(server: &Server, hello: Value) -> Client {
        let mut c = Client::raw(server).await;
        c.send(hello).await;
        match c.next().await {
            Event::Frame(ServerFrame::Welcome(w)) => {
                c.welcome = Some(*w);
                c
            }
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    /// Resumes `prev`'s session.
    pub async fn resume(server: &Server, w: &Welcome) -> Client {
        Client::hello(
            server,
            json!({"t":"hello","v":1,"uid":w.uid,"device":w.device,
                   "resume":{"session":w.session,"key":w.key}}),
        )
        .await
    }

    pub fn w(&self) -> &Welcome {
        self.welcome.as_ref().expect("welcome")
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    pub async fn send_text(&mut self, t: String) {
        self.sent_bytes += t.len() as u64;
        self.ws
            .send(Message::Text(t.into()))
            .await
            .expect("ws send");
    }

    /// Sends any WebSocket message (e.g. a binary frame).
    pub async fn send_message(&mut self, m: Message) {
        if let Message::Text(t) = &m {
            self.sent_bytes += t.len() as u64;
        } else if let Message::Binary(b) = &m {
            self.sent_bytes += b.len() as u64;
        }
        self.ws.send(m).await.expect("ws send");
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Sends a pub; returns its seq.
    pub async fn publish(&mut self, to: &str, body: Value) -> u64 {
        let seq = self.next_seq();
        self.send(json!({"t":"pub","seq":seq,"to":to,"body":body}))
            .await;
        seq
    }

    /// Publishes and waits for the `ok`.
    pub async fn publish_ok(&mut self, to: &str, body: Value) -> herald_protocol::OkFrame {
        let seq = self.publish(to, body).await;
        self.expect_ok(seq).await
    }

    pub async fn subscribe(&mut self, chan: &str, from: Option<u64>) -> herald_protocol::OkFrame {
        let seq = self.next_seq();
        let mut f = json!({"t":"sub","seq":seq,"chan":chan});
        if let Some(from) = from {
            f["from"] = json!(from);
        }
        self.send(f).await;
        self.expect_ok(seq).await
    }

    /// Sends a request object with the next `seq` filled in; returns that seq.
    pub async fn request(&mut self, mut v: Value) -> u64 {
        let seq = self.next_seq();
        v["seq"] = json!(seq);
        self.send(v).await;
        seq
    }

    /// A ping round trip: everything sent before it has been handled by the server when it
    /// returns. Frames received meanwhile stay queued, in order.
    pub async fn round_trip(&mut self) {
        self.send(json!({"t":"ping"})).await;
        let mut held = VecDeque::new();
        loop {
            match self.next().await {
                Event::Frame(ServerFrame::Pong) => break,
                Event::Closed(c) => panic!("closed ({c:?}) while waiting for pong"),
                other => held.push_back(other),
            }
        }
        while let Some(e) = held.pop_back() {
            self.queue.push_front(e);
        }
    }

    pub async fn ack(&mut self, s: &str, o: u64) {
        self.send(json!({"t":"ack","s":s,"o":o})).await;
    }

    /// The next server event (frame or close), waiting up to [`WAIT`].
    pub async fn next(&mut self) -> Event {
        self.next_within(WAIT)
            .await
            .expect("timed out waiting for a server frame")
    }

    pub async fn next_within(&mut self, d: Duration) -> Option<Event> {
        if let Some(e) = self.queue.pop_front() {
            return Some(e);
        }
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match m {
                Some(Ok(Message::Text(t))) => {
                    self.text_frames += 1;
                    self.received_bytes += t.len() as u64;
                    for f in decode_server_frame(t.as_str()) {
                        self.queue
                            .push_back(Event::Frame(f.expect("server frame decodes")));
                    }
                }
                Some(Ok(Message::Close(c))) => {
                    self.queue
                        .push_back(Event::Closed(c.map(|c| u16::from(c.code))));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => self.queue.push_back(Event::Closed(None)),
            }
            if let Some(e) = self.queue.pop_front() {
                return Some(e);
            }
        }
    }

    /// Skips pings; returns the next other event.
    pub async fn next_non_ping(&mut self) -> Event {
        loop {
            match self.next().await {
                Event::Frame(ServerFrame::Ping) => continue,
                e => return e,
            }
        }
    }

    /// Waits for the answer to `seq`, keeping other frames queued in order.
    pub async fn answer(&mut self, seq: u64) -> ServerFrame {
        let mut held = VecDeque::new();
        let found = loop {
            match self.next().await {
                Event::Frame(ServerFrame::Ok(o)) if o.seq == seq => break ServerFrame::Ok(o),
                Event::Frame(ServerFrame::Err(e)) if e.seq == Some(seq) => {
                    break ServerFrame::Err(e)
                }
                Event::Closed(c) => panic!("closed ({c:?}) while waiting for answer to seq {seq}"),
                other => held.push_back(other),
            }
        };
        while let Some(e) = held.pop_back() {
            self.queue.push_front(e);
        }
        found
    }

    pub async fn expect_ok(&mut self, seq: u64) -> herald_protocol::OkFrame {
        match self.answer(seq).await {
            ServerFrame::Ok(o) => o,
            other => panic!("expected ok for seq {seq}, got {other:?}"),
        }
    }

    pub async fn expect_err(&mut self, seq: u64) -> herald_protocol::ErrFrame {
        match self.answer(seq).await {
            ServerFrame::Err(e) => e,
            other => panic!("expected err for seq {seq}, got {other:?}"),
        }
    }

    /// The next `msg` (skipping pings and answers); panics on anything else.
    pub async fn expect_msg(&mut self) -> herald_protocol::Msg {
        loop {
            match self.next().await {
                Event::Frame(ServerFrame::Msg(m)) => return m,
                Event::Frame(ServerFrame::Ping | ServerFrame::Ok(_)) => continue,
                other => panic!("expected msg, got {other:?}"),
            }
        }
    }

    /// Collects `n` messages.
    pub async fn msgs(&mut self, n: usize) -> Vec<herald_protocol::Msg> {
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            v.push(self.expect_msg().await);
        }
        v
    }

    /// Asserts nothing but pings arrives within `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match self.next_within(left).await {
                None | Some(Event::Frame(ServerFrame::Ping)) => {}
                Some(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }

    /// Waits for the connection to close; returns the close code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.next().await {
                Event::Closed(c) => return c,
                Event::Frame(_) => continue,
            }
        }
    }

    /// Waits for an `evicted` frame then the close.
    pub async fn expect_evicted(&mut self) -> (herald_protocol::Evicted, Option<u16>) {
        loop {
            match self.next().await {
                Event::Frame(ServerFrame::Evicted(e)) => {
                    let code = self.expect_close().await;
                    return (e, code);
                }
                Event::Frame(_) => continue,
                Event::Closed(c) => panic!("closed ({c:?}) without an evicted frame"),
            }
        }
    }

    /// Drops the TCP connection without a close handshake.
    pub fn cut(self) {
        drop(self);
    }
}

/// Polling helpers for state that is only observable over HTTP (sessions, events, metrics).
impl Server {
    /// The `/v1/sessions?uid=` entry of session `id`, if open.
    pub async fn session_info(&self, uid: &str, id: &str) -> Option<Value> {
        let (_, v) = self.get(&format!("/v1/sessions?uid={uid}")).await;
        v["items"]
            .as_array()
            .and_then(|items| items.iter().find(|s| s["id"] == id).cloned())
    }

    /// Waits until the server has noticed that session `id` has no connection any more
    /// (state `disconnected`, or closed and gone from the list).
    pub async fn wait_detached(&self, uid: &str, id: &str) {
        self.wait_for(&format!("/v1/sessions?uid={uid}"), |v| {
            v["items"]
                .as_array()
                .and_then(|items| items.iter().find(|s| s["id"] == id))
                .is_none_or(|s| s["state"] != "connected")
        })
        .await;
    }

    /// The value of one Prometheus sample, e.g. `herald_evictions_total{reason="replaced"}`
    /// (0 when absent).
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = reqwest::get(self.http("/metrics"))
            .await
            .expect("http get /metrics")
            .text()
            .await
            .unwrap_or_default();
        text.lines()
            .filter_map(|l| l.strip_prefix(sample))
            .filter_map(|rest| rest.strip_prefix(' '))
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .next()
            .unwrap_or(0.0)
    }
}

impl Client {
    /// Opens a WebSocket and sends `hello` without waiting for the answer (for refusals).
    pub async fn hello_raw(server: &Server, hello: Value) -> Client {
        let mut c = Client::raw(server).await;
        c.send(hello).await;
        c
    }

    /// The `hello` that resumes `w`'s session.
    pub fn resume_hello(w: &Welcome) -> Value {
        json!({"t":"hello","v":1,"uid":w.uid,"device":w.device,
               "resume":{"session":w.session,"key":w.key}})
    }

    /// Sends without panicking; false if the connection is gone.
    pub async fn try_send(&mut self, v: Value) -> bool {
        let t = v.to_string();
        self.sent_bytes += t.len() as u64;
        self.ws.send(Message::Text(t.into())).await.is_ok()
    }

    /// Sends a ping and waits for the pong: every frame sent before it has been handled.
    pub async fn sync(&mut self) {
        self.send(json!({"t":"ping"})).await;
        let mut held = VecDeque::new();
        loop {
            match self.next().await {
                Event::Frame(ServerFrame::Pong) => break,
                Event::Frame(ServerFrame::Ping) => {}
                Event::Closed(c) => panic!("closed ({c:?}) while waiting for pong"),
                other => held.push_back(other),
            }
        }
        while let Some(e) = held.pop_back() {
            self.queue.push_front(e);
        }
    }
}

impl Client {
    /// Expects the very next frame to be `evicted` (no welcome before it), then the close.
    pub async fn expect_evicted_first(&mut self) -> (herald_protocol::Evicted, Option<u16>) {
        match self.next_non_ping().await {
            Event::Frame(ServerFrame::Evicted(e)) => {
                let code = self.expect_close().await;
                (e, code)
            }
            other => panic!("expected an evicted frame first, got {other:?}"),
        }
    }
}
