//! The task that owns the connection: connects, resumes, resends, dedupes, acks, reports.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use herald_protocol::decode::decode_server_frame;
use herald_protocol::{Body, ClientFrame, ServerFrame, Target, Welcome};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::dedupe::Dedupe;
use crate::{
    AckState, Answer, ClientBuilder, Command, ConnectionEvent, Delivery, Error, Published, Request,
    SessionInfo, Shared, Subscribed,
};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Sink = SplitSink<Ws, Message>;
type Stream = SplitStream<Ws>;

/// Close codes after which reconnecting cannot help.
const FATAL_CLOSE: [u16; 3] = [4000, 4003, 4010];

struct Pending {
    req: Request,
    /// `None` for requests the SDK makes itself (resubscribing after a failed resume).
    reply: Option<oneshot::Sender<crate::Result<Answer>>>,
    _permit: Option<OwnedSemaphorePermit>,
    /// Sent more than once (after a reconnect, or reissued after a bare `dup`).
    resent: bool,
    /// Reissues after `err bad_frame` to a resent request.
    reissues: u8,
}

/// How often a resent request answered `bad_frame` is reissued before the error is returned.
const MAX_REISSUES: u8 = 3;

type Frame = Result<ServerFrame, herald_protocol::DecodeError>;

struct Opened {
    sink: Sink,
    stream: Stream,
    welcome: Welcome,
    asked_resume: bool,
    /// Frames that came in the same WebSocket frame as the welcome.
    rest: Vec<Frame>,
}

enum OpenError {
    Retry(String),
    Fatal(Error),
}

enum End {
    Lost(String),
    Stop,
}

pub(crate) struct Driver {
    cfg: ClientBuilder,
    shared: Arc<Shared>,
    acks: Arc<AckState>,
    deliveries: mpsc::UnboundedSender<Delivery>,
    events: mpsc::UnboundedSender<ConnectionEvent>,
    cmds: mpsc::UnboundedReceiver<Command>,
    dedupe: Dedupe,
    pending: BTreeMap<u64, Pending>,
    next_seq: u64,
    /// (session id, key) of the current session, once one exists.
    session: Option<(String, String)>,
    /// Channels subscribed (answered ok), with the channel's last offset at subscribe time.
    subs: BTreeMap<String, u64>,
    hb_limit: Duration,
}

impl Driver {
    pub(crate) fn new(
        cfg: ClientBuilder,
        shared: Arc<Shared>,
        acks: Arc<AckState>,
        deliveries: mpsc::UnboundedSender<Delivery>,
        events: mpsc::UnboundedSender<ConnectionEvent>,
        cmds: mpsc::UnboundedReceiver<Command>,
    ) -> Driver {
        Driver {
            cfg,
            shared,
            acks,
            deliveries,
            events,
            cmds,
            dedupe: Dedupe::default(),
            pending: BTreeMap::new(),
            next_seq: 1,
            session: None,
            subs: BTreeMap::new(),
            hb_limit: Duration::from_secs(3600),
        }
    }

    fn emit(&self, e: ConnectionEvent) {
        tracing::debug!(event = ?e, "herald-client");
        let _ = self.events.send(e);
    }

    pub(crate) async fn run(mut self, ready: oneshot::Sender<crate::Result<()>>) {
        let mut ready = Some(ready);
        let mut attempt = 0u32;
        loop {
            self.emit(ConnectionEvent::Connecting);
            match self.open().await {
                Ok(opened) => {
                    attempt = 0;
                    if let Some(r) = ready.take() {
                        let _ = r.send(Ok(()));
                    }
                    match self.session_loop(opened).await {
                        End::Stop => return,
                        End::Lost(reason) => {
                            tracing::info!(%reason, "herald-client: disconnected");
                            self.emit(ConnectionEvent::Disconnected { reason });
                        }
                    }
                }
                Err(OpenError::Fatal(e)) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Err(e.clone()));
                    }
                    if let Error::Evicted { reason, by } = &e {
                        self.emit(ConnectionEvent::Evicted {
                            reason: *reason,
                            by: by.clone(),
                        });
                    }
                    self.stop(e);
                    return;
                }
                Err(OpenError::Retry(reason)) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Err(Error::Connect(reason)));
                        self.stop(Error::Closed);
                        return;
                    }
                    tracing::info!(%reason, "herald-client: connect attempt failed");
                }
            }
            attempt = attempt.saturating_add(1);
            let next_in = self.cfg.reconnect.delay(attempt);
            self.emit(ConnectionEvent::Reconnecting { attempt, next_in });
            if !self.wait(next_in).await {
                return;
            }
        }
    }

    /// Waits out a reconnect delay, queueing requests. False if the client stopped.
    async fn wait(&mut self, d: Duration) -> bool {
        let until = Instant::now() + d;
        loop {
            tokio::select! {
                _ = sleep_until(until) => return true,
                cmd = self.cmds.recv() => match cmd {
                    Some(Command::Request { req, reply, permit }) => {
                        self.enqueue(req, Some(reply), Some(permit));
                    }
                    Some(Command::Close { done }) => {
                        self.stop(Error::Closed);
                        let _ = done.send(());
                        return false;
                    }
                    None => {
                        self.stop(Error::Closed);
                        return false;
                    }
                },
            }
        }
    }

    fn enqueue(
        &mut self,
        req: Request,
        reply: Option<oneshot::Sender<crate::Result<Answer>>>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.insert(
            seq,
            Pending {
                req,
                reply,
                _permit: permit,
                resent: false,
                reissues: 0,
            },
        );
        seq
    }

    /// Connects and says hello; returns the welcome and whether a resume was asked for.
    async fn open(&mut self) -> Result<Opened, OpenError> {
        let limit = self.cfg.connect_timeout;
        match timeout(limit, self.handshake()).await {
            Ok(r) => r,
            Err(_) => Err(OpenError::Retry(format!("no welcome within {limit:?}"))),
        }
    }

    async fn handshake(&mut self) -> Result<Opened, OpenError> {
        let device = self
            .cfg
            .device_store
            .load()
            .map_err(|e| OpenError::Fatal(Error::DeviceStore(e.to_string())))?;
        let (ws, _) = tokio_tungstenite::connect_async(self.cfg.url.as_str())
            .await
            .map_err(|e| OpenError::Retry(format!("connect: {e}")))?;
        let (mut sink, mut stream) = ws.split();
        let mut hello = json!({"t": "hello", "v": 1,
            "reconnect_timeout_ms": self.cfg.reconnect_timeout.as_millis() as u64});
        if let Some(t) = &self.cfg.token {
            hello["token"] = json!(t);
        }
        if let Some(u) = &self.cfg.uid {
            hello["uid"] = json!(u);
        }
        if let Some(d) = &device {
            hello["device"] = json!(d);
        }
        let asked_resume = !self.cfg.reconnect_timeout.is_zero() && self.session.is_some();
        if asked_resume {
            if let Some((s, k)) = &self.session {
                hello["resume"] = json!({"session": s, "key": k});
            }
        }
        sink.send(Message::text(hello.to_string()))
            .await
            .map_err(|e| OpenError::Retry(format!("send hello: {e}")))?;
        let mut refused: Option<(String, String)> = None;
        loop {
            let msg = match stream.next().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(OpenError::Retry(format!("read: {e}"))),
                None => return Err(OpenError::Retry("closed before welcome".into())),
            };
            match msg {
                Message::Text(t) => {
                    let mut frames = decode_server_frame(t.as_str()).into_iter();
                    while let Some(f) = frames.next() {
                        match f {
                            Ok(ServerFrame::Welcome(w)) => {
                                if device.as_deref() != Some(w.device.as_str()) {
                                    self.cfg.device_store.save(&w.device).map_err(|e| {
                                        OpenError::Fatal(Error::DeviceStore(e.to_string()))
                                    })?;
                                }
                                // Set before `connect()` returns, so `session()` is never None after it.
                                if let Ok(mut s) = self.shared.session.lock() {
                                    *s = Some(SessionInfo {
                                        session: w.session.clone(),
                                        uid: w.uid.clone(),
                                        device: w.device.clone(),
                                        conn: w.conn.clone(),
                                    });
                                }
                                // Frames batched after the welcome (redeliveries, answers)
                                // are handled by the session loop, never dropped.
                                let rest = frames.collect();
                                return Ok(Opened {
                                    sink,
                                    stream,
                                    welcome: *w,
                                    asked_resume,
                                    rest,
                                });
                            }
                            Ok(ServerFrame::Evicted(e)) => {
                                return Err(OpenError::Fatal(Error::Evicted {
                                    reason: e.reason,
                                    by: e.by,
                                }))
                            }
                            Ok(ServerFrame::Err(e)) => {
                                refused = Some((e.code.as_str().to_string(), e.msg));
                            }
                            Ok(ServerFrame::Ping) => {
                                let _ = sink.send(Message::text(r#"{"t":"pong"}"#)).await;
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e.msg, "herald-client: undecodable frame")
                            }
                        }
                    }
                }
                Message::Close(c) => {
                    let code = c.as_ref().map(|c| u16::from(c.code)).unwrap_or(1005);
                    let reason = c.map(|c| c.reason.to_string()).unwrap_or_default();
                    if FATAL_CLOSE.contains(&code) {
                        let (code_s, msg) = refused.unwrap_or((format!("close {code}"), reason));
                        return Err(OpenError::Fatal(Error::Refused { code: code_s, msg }));
                    }
                    return Err(OpenError::Retry(format!(
                        "closed {code} before welcome {reason}"
                    )));
                }
                _ => {}
            }
        }
    }

    fn frame(seq: u64, req: &Request) -> String {
        match req {
            Request::Pub {
                to,
                body,
                id,
                receipt,
            } => match (Target::parse(to), Body::from_json(body.clone())) {
                (Ok(to), Ok(body)) => ClientFrame::Pub(herald_protocol::Pub {
                    seq,
                    to,
                    body,
                    id: Some(id.clone()),
                    receipt: *receipt,
                })
                .encode(),
                // Validated in `Client::publish`; the server answers bad_target if not.
                _ => json!({"t":"pub","seq":seq,"to":to,"body":Value::Null,"id":id}).to_string(),
            },
            Request::Sub { chan, from } => ClientFrame::Sub(herald_protocol::Sub {
                seq,
                chan: chan.clone(),
                from: *from,
            })
            .encode(),
            Request::Unsub { chan } => ClientFrame::Unsub(herald_protocol::Unsub {
                seq,
                chan: chan.clone(),
            })
            .encode(),
        }
    }

    async fn send(&self, sink: &mut Sink, text: String) -> Result<(), String> {
        match timeout(self.hb_limit, sink.send(Message::text(text))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("send: {e}")),
            Err(_) => Err("send timed out".into()),
        }
    }

    /// Applies a welcome: resend after a resume, or recover after a new session.
    async fn on_welcome(
        &mut self,
        sink: &mut Sink,
        w: Welcome,
        asked_resume: bool,
    ) -> Result<(), String> {
        let had_session = self.session.is_some();
        self.session = Some((w.session.clone(), w.key.clone()));
        self.hb_limit = if w.heartbeat_ms == 0 {
            Duration::from_secs(3600)
        } else {
            Duration::from_millis(w.heartbeat_ms) + self.cfg.heartbeat_grace
        };
        let mut out = Vec::new();
        if asked_resume && w.resumed {
            self.emit(ConnectionEvent::Connected { resumed: true });
            // Everything unanswered goes again with its own seq: above acked_seq it is applied
            // now, at or below it the server answers from its cache (or a bare dup, see on_ok).
            self.next_seq = self.next_seq.max(w.acked_seq + 1);
            for (seq, p) in self.pending.iter_mut() {
                p.resent = true;
                out.push(Self::frame(*seq, &p.req));
            }
        } else {
            self.emit(ConnectionEvent::Connected { resumed: false });
            if asked_resume {
                let reason = w
                    .resume_error
                    .map(|r| r.as_str().to_string())
                    .unwrap_or_else(|| "not resumed".into());
                tracing::warn!(%reason, "herald-client: resume failed, recovering");
                self.emit(ConnectionEvent::ResumeFailed { reason });
            }
            if had_session {
                // A new session: nothing of the old one exists. Resubscribe from what was handed
                // on, then resend every unanswered request under a new seq.
                let old = std::mem::take(&mut self.pending);
                let pending_subs: Vec<String> = old
                    .values()
                    .filter_map(|p| match &p.req {
                        Request::Sub { chan, .. } => Some(chan.clone()),
                        _ => None,
                    })
                    .collect();
                let subs: Vec<(String, u64)> =
                    self.subs.iter().map(|(c, o)| (c.clone(), *o)).collect();
                for (chan, base) in subs {
                    if pending_subs.contains(&chan) {
                        continue;
                    }
                    let from = self.dedupe.last(&format!("chan:{chan}")).unwrap_or(base);
                    let seq = self.enqueue(
                        Request::Sub {
                            chan,
                            from: Some(from),
                        },
                        None,
                        None,
                    );
                    out.push(Self::frame(seq, &self.pending[&seq].req));
                }
                for (_, mut p) in old {
                    p.resent = true;
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    out.push(Self::frame(seq, &p.req));
                    self.pending.insert(seq, p);
                }
            }
        }
        if !out.is_empty() {
            self.send(sink, out.join("\n")).await?;
        }
        // Acks are re-sent after every welcome: the server may have persisted positions lazily.
        if let Ok(mut m) = self.acks.received.lock() {
            for v in m.pos.values_mut() {
                v.1 = true;
            }
        }
        self.flush_acks(sink).await
    }

    async fn flush_acks(&self, sink: &mut Sink) -> Result<(), String> {
        let frames: Vec<String> = match self.acks.received.lock() {
            Ok(mut m) => {
                m.since_flush = 0;
                m.pos
                    .iter_mut()
                    .filter(|(_, v)| v.1)
                    .map(|(s, v)| {
                        v.1 = false;
                        ClientFrame::Ack(herald_protocol::Ack {
                            s: s.clone(),
                            o: v.0,
                        })
                        .encode()
                    })
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        if frames.is_empty() {
            return Ok(());
        }
        tracing::trace!(acks = frames.len(), "herald-client: flushing acks");
        let r = self.send(sink, frames.join("\n")).await;
        if r.is_err() {
            // Not sent: send again on the next connection.
            if let Ok(mut m) = self.acks.received.lock() {
                for v in m.pos.values_mut() {
                    v.1 = true;
                }
            }
        }
        r
    }

    async fn session_loop(&mut self, opened: Opened) -> End {
        let Opened {
            mut sink,
            mut stream,
            welcome,
            asked_resume,
            rest,
        } = opened;
        if let Err(e) = self.on_welcome(&mut sink, welcome, asked_resume).await {
            return End::Lost(e);
        }
        for f in rest {
            if let Err(end) = self.on_frame(&mut sink, f).await {
                return end;
            }
        }
        let acks = self.acks.clone();
        let mut tick = tokio::time::interval(self.cfg.ack_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        loop {
            let deadline = last_heard + self.hb_limit;
            let step: Result<(), End> = tokio::select! {
                msg = stream.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        last_heard = Instant::now();
                        let mut r = Ok(());
                        for f in decode_server_frame(t.as_str()) {
                            r = self.on_frame(&mut sink, f).await;
                            if r.is_err() {
                                break;
                            }
                        }
                        r
                    }
                    Some(Ok(Message::Close(c))) => {
                        let code = c.as_ref().map(|c| u16::from(c.code)).unwrap_or(1005);
                        let reason = c.map(|c| c.reason.to_string()).unwrap_or_default();
                        if FATAL_CLOSE.contains(&code) {
                            self.stop(Error::Refused { code: format!("close {code}"), msg: reason });
                            Err(End::Stop)
                        } else {
                            Err(End::Lost(format!("server closed the connection: {code} {reason}")))
                        }
                    }
                    Some(Ok(_)) => {
                        last_heard = Instant::now();
                        Ok(())
                    }
                    Some(Err(e)) => Err(End::Lost(format!("read: {e}"))),
                    None => Err(End::Lost("connection closed".into())),
                },
                _ = sleep_until(deadline) => Err(End::Lost(format!(
                    "heartbeat timeout: nothing heard for {:?}", self.hb_limit))),
                cmd = self.cmds.recv() => match cmd {
                    Some(Command::Request { req, reply, permit }) => {
                        let seq = self.enqueue(req, Some(reply), Some(permit));
                        let f = Self::frame(seq, &self.pending[&seq].req);
                        self.send(&mut sink, f).await.map_err(End::Lost)
                    }
                    Some(Command::Close { done }) => {
                        let _ = self.send(&mut sink, ClientFrame::Bye.encode()).await;
                        let _ = timeout(Duration::from_secs(1), sink.close()).await;
                        self.stop(Error::Closed);
                        let _ = done.send(());
                        Err(End::Stop)
                    }
                    None => {
                        let _ = timeout(Duration::from_secs(1), sink.close()).await;
                        self.stop(Error::Closed);
                        Err(End::Stop)
                    }
                },
                _ = tick.tick() => self.flush_acks(&mut sink).await.map_err(End::Lost),
                _ = acks.flush.notified() => self.flush_acks(&mut sink).await.map_err(End::Lost),
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn on_frame(&mut self, sink: &mut Sink, f: Frame) -> Result<(), End> {
        let f = match f {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e.msg, "herald-client: undecodable frame from server");
                return Ok(());
            }
        };
        match f {
            ServerFrame::Ok(ok) => {
                let Some(mut p) = self.pending.remove(&ok.seq) else {
                    return Ok(());
                };
                let bare_dup = ok.dup && ok.id.is_none() && ok.s.is_none() && ok.o.is_none();
                if bare_dup {
                    // The server processed this seq but no longer has its answer: the outcome
                    // is unknown. Reissue under a new seq; a pub keeps its idempotency id, so it
                    // is stored at most once and the answer names the stored message.
                    p.resent = true;
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    let frame = Self::frame(seq, &p.req);
                    self.pending.insert(seq, p);
                    return self.send(sink, frame).await.map_err(End::Lost);
                }
                let answer = match &p.req {
                    Request::Pub { .. } => Answer::Pub(Published {
                        id: ok.id.unwrap_or_default(),
                        stream: ok.s.unwrap_or_default(),
                        offset: ok.o.unwrap_or(0),
                        online: ok.online,
                        dup: ok.dup,
                    }),
                    Request::Sub { chan, from } => {
                        let base = ok.o.unwrap_or(0);
                        self.subs.insert(chan.clone(), base);
                        if let (Some(from), true, false) = (from, p.reply.is_some(), p.resent) {
                            // The app asked for a replay: hand those offsets on again.
                            self.dedupe.set(&format!("chan:{chan}"), *from);
                        }
                        Answer::Sub(Subscribed {
                            stream: ok.s.unwrap_or_else(|| format!("chan:{chan}")),
                            offset: base,
                        })
                    }
                    Request::Unsub { chan } => {
                        self.forget_chan(chan);
                        Answer::Unsub
                    }
                };
                if let Some(r) = p.reply {
                    let _ = r.send(Ok(answer));
                }
            }
            ServerFrame::Err(e) => {
                let Some(seq) = e.seq else {
                    if let (herald_protocol::ErrorCode::SubRevoked, Some(chan)) = (e.code, &e.chan)
                    {
                        // The server ended this subscription (the token no longer allows
                        // it): never resubscribe to it on a later reconnect.
                        self.forget_chan(chan);
                    }
                    tracing::warn!(code = e.code.as_str(), msg = %e.msg, "herald-client: server error");
                    return Ok(());
                };
                let Some(mut p) = self.pending.remove(&seq) else {
                    return Ok(());
                };
                let code = e.code.as_str().to_string();
                if code == "bad_frame" && p.resent && p.reissues < MAX_REISSUES {
                    // "seq already being processed": its answer went to the old connection.
                    // Reissue under a new seq (a pub keeps its idempotency id).
                    tracing::debug!(seq, msg = %e.msg, "herald-client: reissuing a resent request");
                    p.reissues += 1;
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    let frame = Self::frame(seq, &p.req);
                    self.pending.insert(seq, p);
                    return self.send(sink, frame).await.map_err(End::Lost);
                }
                let result = match &p.req {
                    // A resent unsub that finds nothing to remove did its job earlier.
                    Request::Unsub { chan } if p.resent && code == "not_subscribed" => {
                        self.forget_chan(chan);
                        Ok(Answer::Unsub)
                    }
                    _ => Err(Error::Server { code, msg: e.msg }),
                };
                match p.reply {
                    Some(r) => {
                        let _ = r.send(result);
                    }
                    None => {
                        if let Err(e) = result {
                            tracing::warn!(error = %e, "herald-client: resubscribe failed");
                        }
                    }
                }
            }
            ServerFrame::Msg(m) => {
                if !self.dedupe.accept(&m.s, m.o) {
                    tracing::trace!(s = %m.s, o = m.o, "herald-client: dropped a redelivery");
                    return Ok(());
                }
                let body = serde_json::from_str(m.body.get()).unwrap_or(Value::Null);
                let _ = self.deliveries.send(Delivery {
                    stream: m.s,
                    offset: m.o,
                    id: m.id,
                    from: m.from,
                    ts: m.ts,
                    body,
                });
            }
            ServerFrame::Gap(g) => {
                if self.dedupe.accept_gap(&g.s, g.to) {
                    self.emit(ConnectionEvent::Gap {
                        stream: g.s,
                        from: g.from,
                        to: g.to,
                    });
                }
            }
            ServerFrame::Evicted(e) => {
                tracing::warn!(
                    reason = e.reason.as_str(),
                    "herald-client: evicted, stopping"
                );
                self.emit(ConnectionEvent::Evicted {
                    reason: e.reason,
                    by: e.by.clone(),
                });
                self.stop(Error::Evicted {
                    reason: e.reason,
                    by: e.by,
                });
                return Err(End::Stop);
            }
            ServerFrame::Ping => {
                return self
                    .send(sink, ClientFrame::Pong.encode())
                    .await
                    .map_err(End::Lost);
            }
            ServerFrame::Pong | ServerFrame::Welcome(_) => {}
        }
        Ok(())
    }

    fn forget_chan(&mut self, chan: &str) {
        self.subs.remove(chan);
        if let Ok(mut m) = self.acks.received.lock() {
            m.pos.remove(&format!("chan:{chan}"));
        }
    }

    /// Stops for good: fails every waiting request with `why`, then reports `Closed`.
    fn stop(&mut self, why: Error) {
        if let Ok(mut s) = self.shared.stopped.lock() {
            if s.is_none() {
                *s = Some(why.clone());
            }
        }
        let why = self.shared.stopped().unwrap_or(why);
        self.shared.buffer.close();
        for (_, p) in std::mem::take(&mut self.pending) {
            if let Some(r) = p.reply {
                let _ = r.send(Err(why.clone()));
            }
        }
        self.cmds.close();
        while let Ok(cmd) = self.cmds.try_recv() {
            match cmd {
                Command::Request { reply, .. } => {
                    let _ = reply.send(Err(why.clone()));
                }
                Command::Close { done } => {
                    let _ = done.send(());
                }
            }
        }
        self.emit(ConnectionEvent::Closed);
    }
}
