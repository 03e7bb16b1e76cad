//! Property test of the engine's promises, driven without sockets over a real SQLite store:
//! across arbitrary interleavings of publish, publish-then-cut-and-resend, ack, disconnect,
//! resume, graceful restart and abrupt restart,
//! - every stream's offsets are contiguous from 1 and every accepted publish is stored exactly
//!   once (resent requests are never applied twice);
//! - a subscriber never misses an offset (it never receives offset n+2 before n+1 it has not
//!   handled), so after dropping redeliveries it sees every message exactly once, in order;
//! - after a graceful restart nothing it acknowledged is delivered again.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use herald_core::{
    Attached, ChannelGrants, Engine, EngineConfig, Identity, Output, Peer, Streams, SystemClock,
};
use herald_protocol::decode::decode_server_frame;
use herald_protocol::{
    Ack, Body, ClientFrame, Hello, Pub, Resume, ServerFrame, Sub, Target, Welcome,
};
use herald_store::sqlite::{SqliteConfig, SqliteStore};
use herald_store::Durability;
use proptest::prelude::*;

const MAX_INFLIGHT: u64 = 4;
const WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
enum Op {
    PubChan,
    PubInbox,
    /// Send a pub, lose the connection before the answer, resume and resend if needed.
    PubThenCut,
    Receive,
    Ack,
    DropSubscriber,
    Restart,
    AbruptRestart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::PubChan),
        4 => Just(Op::PubInbox),
        2 => Just(Op::PubThenCut),
        3 => Just(Op::Receive),
        2 => Just(Op::Ack),
        2 => Just(Op::DropSubscriber),
        1 => Just(Op::Restart),
        1 => Just(Op::AbruptRestart),
    ]
}

async fn boot(dir: &Path) -> Engine {
    let cfg = EngineConfig {
        max_inflight: MAX_INFLIGHT,
        tail_cache_messages: 8,
        dev: true,
        ..EngineConfig::default()
    };
    let streams = Streams::new(cfg.tail_cache_messages);
    let mut sc = SqliteConfig::new(dir.join("herald.db"));
    sc.durability = Durability::Os;
    let store = SqliteStore::open(sc, streams.clone()).expect("open store");
    Engine::start(cfg, Arc::new(store), streams, Arc::new(SystemClock))
        .await
        .expect("engine")
}

fn identity(uid: &str) -> Identity {
    Identity {
        uid: uid.into(),
        device: None,
        grants: ChannelGrants::default(),
    }
}

/// A client of the engine, with what it has handled.
struct Client {
    uid: &'static str,
    device: &'static str,
    att: Option<Attached>,
    welcome: Option<Welcome>,
    seq: u64,
    /// Stream → last offset handled (accepted in order).
    handled: HashMap<String, u64>,
    /// Stream → last offset acknowledged to the server.
    acked: HashMap<String, u64>,
    /// Stream → offsets the server promised never to send again (durably acknowledged).
    floor: HashMap<String, u64>,
    /// Stream → markers accepted, in order.
    seen: HashMap<String, Vec<String>>,
    /// Deliveries since the last ack on this connection.
    unacked: u64,
}

impl Client {
    fn new(uid: &'static str, device: &'static str) -> Client {
        Client {
            uid,
            device,
            att: None,
            welcome: None,
            seq: 0,
            handled: HashMap::new(),
            acked: HashMap::new(),
            floor: HashMap::new(),
            seen: HashMap::new(),
            unacked: 0,
        }
    }

    async fn connect(&mut self, engine: &Engine) {
        let resume = self.welcome.as_ref().map(|w| Resume {
            session: w.session.clone(),
            key: w.key.clone(),
        });
        let was_resume = resume.is_some();
        let hello = Hello {
            v: 1,
            uid: Some(self.uid.into()),
            device: Some(self.device.into()),
            resume,
            ..Hello::default()
        };
        let att = engine
            .open(&hello, identity(self.uid), Peer::default())
            .await
            .expect("open");
        let w = att.welcome().clone();
        if was_resume {
            assert!(w.resumed, "resume must succeed within the window: {w:?}");
        }
        self.seq = self.seq.max(w.acked_seq);
        self.welcome = Some(w);
        self.att = Some(att);
        self.unacked = 0;
    }

    fn att(&mut self) -> &mut Attached {
        self.att.as_mut().expect("connected")
    }

    /// Next frames from the server.
    async fn frames(&mut self) -> Vec<ServerFrame> {
        let out = tokio::time::timeout(WAIT, self.att().next())
            .await
            .expect("server produced nothing in time");
        match out {
            Output::Frames(f) => f
                .iter()
                .flat_map(|t| decode_server_frame(t))
                .map(|f| f.expect("valid server frame"))
                .collect(),
            Output::Close { code, reason, .. } => panic!("unexpected close {code}: {reason}"),
        }
    }

    async fn request_ok(&mut self, frame: ClientFrame) -> herald_protocol::OkFrame {
        let seq = frame.seq().expect("request");
        assert!(self.att().handle(frame).await.is_none());
        self.answer(seq).await
    }

    /// Waits for the answer to `seq`, handling deliveries that arrive meanwhile.
    async fn answer(&mut self, seq: u64) -> herald_protocol::OkFrame {
        loop {
            for f in self.frames().await {
                match f {
                    ServerFrame::Ok(o) if o.seq == seq => return o,
                    ServerFrame::Err(e) => panic!("unexpected err {e:?}"),
                    ServerFrame::Msg(m) => self.on_msg(&m.s, m.o, m.body.get()),
                    ServerFrame::Gap(g) => panic!("unexpected gap {g:?}"),
                    _ => {}
                }
            }
        }
    }

    fn on_msg(&mut self, s: &str, o: u64, body: &str) {
        let floor = self.floor.get(s).copied().unwrap_or(0);
        assert!(
            o > floor,
            "{s} offset {o} redelivered after a durable ack up to {floor}"
        );
        let handled = self.handled.entry(s.to_string()).or_insert(0);
        assert!(
            o <= *handled + 1,
            "{s}: got offset {o} but {} was never delivered",
            *handled + 1
        );
        if o == *handled + 1 {
            *handled = o;
            let marker = body.trim_matches('"').to_string();
            self.seen.entry(s.to_string()).or_default().push(marker);
        } else if self.acked.get(s).is_some_and(|&a| a >= o) {
            // A redelivery of something this client acknowledged: that ack was lost with
            // the old connection (the server counts the message in flight again), so it is
            // acknowledged again, as the SDK does.
            self.acked.insert(s.to_string(), o - 1);
        }
        self.unacked += 1;
    }

    async fn ack_all(&mut self) {
        let handled: Vec<(String, u64)> =
            self.handled.iter().map(|(k, v)| (k.clone(), *v)).collect();
        for (s, o) in handled {
            if self.acked.get(&s).copied().unwrap_or(0) < o {
                self.att()
                    .handle(ClientFrame::Ack(Ack { s: s.clone(), o }))
                    .await;
                self.acked.insert(s, o);
            }
        }
        self.unacked = 0;
    }

    /// Receives until every stream is handled up to `heads`.
    async fn receive(&mut self, heads: &HashMap<String, u64>) {
        let caught_up = |c: &Client| {
            heads
                .iter()
                .all(|(s, &h)| c.handled.get(s).copied().unwrap_or(0) >= h)
        };
        while !caught_up(self) {
            if self.unacked >= MAX_INFLIGHT {
                self.ack_all().await;
            }
            for f in self.frames().await {
                match f {
                    ServerFrame::Msg(m) => self.on_msg(&m.s, m.o, m.body.get()),
                    ServerFrame::Gap(g) => panic!("unexpected gap {g:?}"),
                    ServerFrame::Err(e) => panic!("unexpected err {e:?}"),
                    _ => {}
                }
            }
        }
    }
}

fn pub_frame(seq: u64, to: Target, marker: &str) -> ClientFrame {
    ClientFrame::Pub(Pub {
        seq,
        to,
        body: Body::from_json(format!("\"{marker}\"")).expect("json"),
        id: None,
        receipt: false,
    })
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut engine = boot(dir.path()).await;
    let mut publisher = Client::new("pat", "p1");
    let mut sub = Client::new("sam", "s1");
    publisher.connect(&engine).await;
    sub.connect(&engine).await;
    sub.seq += 1;
    let seq = sub.seq;
    sub.request_ok(ClientFrame::Sub(Sub {
        seq,
        chan: "room".into(),
        from: Some(0),
    }))
    .await;
    // Stream (client name) → markers published, in offset order.
    let mut published: HashMap<String, Vec<String>> = HashMap::new();
    let mut n = 0u64;
    for op in ops {
        n += 1;
        match op {
            Op::PubChan | Op::PubInbox => {
                let (to, s) = if matches!(op, Op::PubChan) {
                    (Target::Chan("room".into()), "chan:room")
                } else {
                    (Target::User("sam".into()), "inbox")
                };
                let marker = format!("m{n}");
                publisher.seq += 1;
                let ok = publisher
                    .request_ok(pub_frame(publisher.seq, to, &marker))
                    .await;
                let list = published.entry(s.to_string()).or_default();
                list.push(marker);
                assert_eq!(ok.o, Some(list.len() as u64), "offsets are contiguous");
            }
            Op::PubThenCut => {
                let marker = format!("m{n}");
                publisher.seq += 1;
                let seq = publisher.seq;
                let frame = pub_frame(seq, Target::Chan("room".into()), &marker);
                assert!(publisher.att().handle(frame.clone()).await.is_none());
                publisher.att = None;
                publisher.connect(&engine).await;
                let acked = publisher.welcome.as_ref().map_or(0, |w| w.acked_seq);
                if acked < seq {
                    publisher.request_ok(frame).await;
                }
                published
                    .entry("chan:room".into())
                    .or_default()
                    .push(marker);
            }
            Op::Receive => {
                let heads = published
                    .iter()
                    .map(|(k, v)| (k.clone(), v.len() as u64))
                    .collect();
                sub.receive(&heads).await;
            }
            Op::Ack => sub.ack_all().await,
            Op::DropSubscriber => {
                sub.att = None;
                sub.connect(&engine).await;
            }
            Op::Restart | Op::AbruptRestart => {
                sub.att = None;
                publisher.att = None;
                if matches!(op, Op::Restart) {
                    engine.close_store().await.expect("close");
                    // Everything acknowledged was made durable by the graceful close.
                    sub.floor = sub.acked.clone();
                } else {
                    // Abrupt: in-memory positions not yet written are lost; only what the
                    // server still reports is promised.
                    engine.store().close().await.expect("close");
                    sub.floor.clear();
                }
                drop(engine);
                engine = boot(dir.path()).await;
                publisher.connect(&engine).await;
                sub.connect(&engine).await;
                if let Some(w) = &sub.welcome {
                    if let Some(p) = w.subs.get("room") {
                        sub.floor.insert("chan:room".into(), p.o);
                    }
                }
                sub.acked = sub.floor.clone();
            }
        }
    }
    let heads = published
        .iter()
        .map(|(k, v)| (k.clone(), v.len() as u64))
        .collect();
    sub.receive(&heads).await;
    for (s, markers) in &published {
        assert_eq!(
            sub.seen.get(s).unwrap_or(&Vec::new()),
            markers,
            "{s}: each message once, in order"
        );
    }
    // The store holds each publish exactly once, at contiguous offsets.
    let store = engine.store().clone();
    for (s, markers) in &published {
        let key = if s == "inbox" {
            "inbox:sam".to_string()
        } else {
            s.clone()
        };
        let stored = store.read(&key, 0, 10_000).await.expect("read");
        let offsets: Vec<u64> = stored.iter().map(|m| m.offset).collect();
        assert_eq!(offsets, (1..=markers.len() as u64).collect::<Vec<_>>());
        let bodies: Vec<String> = stored
            .iter()
            .map(|m| m.body.get().trim_matches('"').to_string())
            .collect();
        assert_eq!(&bodies, markers, "{s}: stored exactly once each, in order");
    }
    drop(sub);
    drop(publisher);
    engine.close_store().await.expect("close");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn every_message_once_in_order_across_faults(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(run(ops));
    }
}
