//! One connection attached to a session: applies the client's requests and acks, and produces
//! what to send it (answers in request order, deliveries, gaps, evictions).
//!
//! Sans-socket: a transport feeds decoded frames to [`Attached::handle`] and writes whatever
//! [`Attached::next`] yields. `next` is cancel-safe: state changes only after its last await,
//! so a transport may race it against reads in `select!` without losing anything.
//!
//! Delivery is cursor-based: each stream has an acknowledged and a sent position; what lies
//! between them is in flight. Nothing is queued per subscriber, so nothing can be dropped:
//! the pump reads the next messages from the stream tail in memory or from the store.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use herald_protocol::{
    close, Ack, ClientFrame, ClientStream, DecodeError, ErrorCode, Gap, GapReason, OkFrame, Pub,
    ServerFrame, Sub, SubPosition, Target, Unsub, Welcome, WelcomeLimits,
};
use herald_protocol::{Body, ErrFrame, ResumeError};
use herald_store::{chan_key, inbox_key, NewMessage, SentRange, StoreError};
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{debug, info, warn};

use crate::auth::ChannelGrants;
use crate::engine::{Engine, SYSTEM_SENDER};
use crate::ids;
use crate::metrics::Metrics;
use crate::session::{Control, SessionShared};
use crate::streams::{client_name, Cached, Fetch};

/// Most messages one pump step reads from the store.
const READ_BATCH: usize = 256;
/// How long to wait before retrying after a failed store read.
const READ_RETRY: Duration = Duration::from_secs(1);

/// What the transport must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Send these frames (each one JSON object; the transport may batch them).
    Frames(Vec<String>),
    /// Send these frames, then close the connection with `code`.
    Close {
        frames: Vec<String>,
        code: u16,
        reason: String,
    },
}

/// Token bucket for requests. Uses `tokio::time` so tests can run in paused time.
#[derive(Debug)]
struct RateLimit {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: tokio::time::Instant,
    /// Consecutive requests refused.
    strikes: u32,
}

impl RateLimit {
    fn new(per_sec: u32, burst: u32) -> RateLimit {
        RateLimit {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: tokio::time::Instant::now(),
            strikes: 0,
        }
    }

    /// Takes a token; false if the connection is over its rate.
    fn take(&mut self) -> bool {
        if self.per_sec <= 0.0 {
            return true;
        }
        let now = tokio::time::Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.strikes = 0;
            true
        } else {
            self.strikes += 1;
            false
        }
    }
}

/// A stream position of this connection.
#[derive(Debug, Clone)]
struct Position {
    /// Acknowledged by the client.
    acked: u64,
    /// Written to the connection (or announced as a gap).
    sent: u64,
    /// Deliveries start only once a `sub` is durable and answered.
    active: bool,
    /// Gap ranges in `(acked, sent]`: announced, not messages in flight.
    gaps: Vec<(u64, u64)>,
    /// Messages written on this connection and not yet acknowledged, oldest first, for the
    /// ack latency metric and the `acked` debug line. At most `max_inflight` entries.
    unacked: VecDeque<SentMsg>,
}

/// A message in flight on this connection.
#[derive(Debug, Clone)]
struct SentMsg {
    offset: u64,
    /// When it was stored (`msg.ts`).
    ts: u64,
    id: String,
    /// Its sender asked for a receipt (so its ack must store one).
    receipt: bool,
}

impl Position {
    fn new(at: u64, active: bool) -> Position {
        Position {
            acked: at,
            sent: at,
            active,
            gaps: Vec::new(),
            unacked: VecDeque::new(),
        }
    }

    /// Messages written but not acknowledged (announced gaps do not count).
    fn inflight(&self) -> u64 {
        let gap: u64 = self
            .gaps
            .iter()
            .map(|&(from, to)| {
                let lo = from.max(self.acked + 1);
                let hi = to.min(self.sent);
                (hi + 1).saturating_sub(lo)
            })
            .sum();
        self.sent.saturating_sub(self.acked).saturating_sub(gap)
    }
}

struct Reply {
    frame: String,
    effect: Effect,
}

enum Effect {
    None,
    /// Start delivering a stream (its `sub` is durable).
    Activate(String),
    /// Forget a subscription that could not be made durable.
    Drop(String),
}

enum Answer {
    Ready(Reply),
    /// Built by a background task (`sub`, `unsub`: the session write).
    Waiting(oneshot::Receiver<Reply>),
    /// A `pub`: the store's commit, turned into the answer (and recorded in the session) by
    /// whoever polls it: [`Attached::next`], [`Attached::settle_answers`], or a task that
    /// [`Attached`]'s drop leaves behind. No task per publish.
    Pending(Pin<Box<dyn Future<Output = Reply> + Send>>),
}

/// A connection attached to a session. Dropping it detaches the connection (the session then
/// waits for a resume, or ends after `bye`).
pub struct Attached {
    engine: Engine,
    session: Arc<SessionShared>,
    conn_id: String,
    generation: u64,
    grants: ChannelGrants,
    welcome: Welcome,
    control: mpsc::UnboundedReceiver<Control>,
    wake: Arc<Notify>,
    watcher: u64,
    positions: BTreeMap<String, Position>,
    inbox: String,
    /// Round-robin start for fairness between streams.
    rr: usize,
    answers: VecDeque<Answer>,
    bad_frames: u32,
    stalled: bool,
    read_failed: bool,
    bye: bool,
    /// The engine was told this connection ended.
    detached: bool,
    rate: RateLimit,
}

impl Attached {
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn new(
        engine: Engine,
        session: Arc<SessionShared>,
        conn_id: String,
        generation: u64,
        grants: ChannelGrants,
        inbox_cursor: u64,
        control: mpsc::UnboundedReceiver<Control>,
        resumed: bool,
        resume_error: Option<ResumeError>,
    ) -> Result<Attached, StoreError> {
        let cfg = engine.config().clone();
        engine.metrics().connections.inc();
        let (acked_seq, subs, rt) = {
            let g = session.lock();
            (g.acked_seq, g.subs.clone(), g.reconnect_timeout_ms)
        };
        let watcher = engine.next_watcher();
        let inbox = inbox_key(&session.uid);
        let welcome = Welcome {
            session: session.id.clone(),
            key: session.key.clone(),
            conn: conn_id.clone(),
            uid: session.uid.clone(),
            device: session.device.clone(),
            resumed,
            resume_error,
            acked_seq,
            heartbeat_ms: cfg.heartbeat_ms,
            reconnect_timeout_ms: rt,
            subs: subs
                .iter()
                .map(|(c, &o)| (c.clone(), SubPosition { o }))
                .collect(),
            limits: WelcomeLimits {
                max_frame_bytes: cfg.max_frame_bytes,
                max_body_bytes: cfg.max_body_bytes,
                max_inflight: cfg.max_inflight,
            },
        };
        let mut a = Attached {
            engine,
            session,
            conn_id,
            generation,
            grants,
            welcome,
            control,
            wake: Arc::new(Notify::new()),
            watcher,
            positions: BTreeMap::new(),
            inbox: inbox.clone(),
            rr: 0,
            answers: VecDeque::new(),
            bad_frames: 0,
            stalled: false,
            read_failed: false,
            bye: false,
            detached: false,
            rate: RateLimit::new(cfg.requests_per_sec, cfg.request_burst),
        };
        // Dropping `a` on an error below detaches cleanly.
        a.positions
            .insert(inbox.clone(), Position::new(inbox_cursor, true));
        a.engine.watch(&inbox, watcher, a.wake.clone()).await?;
        for (chan, at) in subs {
            let key = chan_key(&chan);
            a.positions.insert(key.clone(), Position::new(at, true));
            a.engine.watch(&key, watcher, a.wake.clone()).await?;
        }
        Ok(a)
    }

    /// Tells the client, right after the welcome, which subscriptions the server ended on
    /// resume because the new token's `chans.sub` no longer allows them: one `err`
    /// `sub_revoked` per channel, without `seq` (never silent).
    pub(crate) fn subs_revoked(&mut self, chans: Vec<String>) {
        for chan in chans {
            info!(event = "sub_revoked", uid = %self.session.uid, device = %self.session.device,
                session = %self.session.id, conn = %self.conn_id, chan = %chan,
                "subscription ended on resume: the token no longer allows it");
            let frame = ServerFrame::Err(ErrFrame {
                seq: None,
                code: ErrorCode::SubRevoked,
                msg: format!(
                    "subscription to chan:{chan} ended: your token's chans.sub claim does not allow it; \
                     subscribe again with a token that does"
                ),
                chan: Some(chan),
            });
            self.answers.push_back(ready(frame.encode()));
        }
    }

    /// The plain resume key for the welcome (the session keeps only its hash).
    pub(crate) fn set_welcome_key(&mut self, key: String) {
        self.welcome.key = key;
    }

    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    pub fn conn_id(&self) -> &str {
        &self.conn_id
    }

    pub fn session_id(&self) -> &str {
        &self.session.id
    }

    pub fn uid(&self) -> &str {
        &self.session.uid
    }

    pub fn device(&self) -> &str {
        &self.session.device
    }

    /// Applies one decoded client frame. Answers come out of [`Attached::next`], in request
    /// order; a returned `Output` means the connection must close now.
    pub async fn handle(&mut self, frame: ClientFrame) -> Option<Output> {
        self.session.lock().last_seen_ms = self.engine.now_ms();
        if let Some(seq) = frame.seq() {
            // A request already processed is answered from the cache and never applied again,
            // so it takes no token: rate-limiting it would replace its original answer with
            // rate_limited ("send it again"), and the resent message would be stored twice.
            let processed = seq <= self.session.lock().acked_seq;
            if !processed && !self.rate.take() {
                let cfg = self.engine.config();
                let (per_sec, strikes) = (cfg.requests_per_sec, cfg.rate_limit_strikes);
                self.reject(
                    seq,
                    ErrorCode::RateLimited,
                    format!("over limits.requests_per_sec = {per_sec}; request not applied: send it again later with a new seq"),
                );
                if self.rate.strikes >= strikes {
                    warn!(uid = %self.session.uid, session = %self.session.id, conn = %self.conn_id,
                        "closing: {strikes} consecutive rate-limited requests");
                    return Some(Output::Close {
                        frames: self.drain_ready(),
                        code: close::RATE_LIMITED,
                        reason: format!("{strikes} consecutive rate-limited requests (limits.rate_limit_strikes)"),
                    });
                }
                return None;
            }
        }
        match frame {
            ClientFrame::Hello(_) => {
                self.push_err(
                    None,
                    ErrorCode::BadFrame,
                    "`t`: hello was already received on this connection; it is only valid as the first frame".into(),
                );
                None
            }
            ClientFrame::Pub(p) => {
                self.on_pub(p);
                None
            }
            ClientFrame::Sub(s) => {
                self.on_sub(s).await;
                None
            }
            ClientFrame::Unsub(u) => {
                self.on_unsub(u).await;
                None
            }
            ClientFrame::Ack(a) => {
                self.on_ack(a);
                None
            }
            ClientFrame::Ping => {
                self.answers.push_back(ready(ServerFrame::Pong.encode()));
                None
            }
            ClientFrame::Pong => None,
            ClientFrame::Bye => {
                // End the session before the close is written, so a resume racing the close
                // cannot be granted.
                self.bye = true;
                self.detach();
                Some(Output::Close {
                    frames: Vec::new(),
                    code: 1000,
                    reason: "bye".into(),
                })
            }
        }
    }

    /// A frame that did not decode. Closes with 4000 once `max_bad_frames` malformed frames
    /// were received.
    pub fn handle_decode_error(&mut self, e: DecodeError) -> Option<Output> {
        debug!(conn = %self.conn_id, code = e.code.as_str(), msg = %e.msg, "rejected frame");
        let malformed = matches!(e.code, ErrorCode::BadFrame | ErrorCode::UnknownType);
        match e.seq {
            Some(seq) if !malformed => self.reject(seq, e.code, e.msg),
            _ => self.push_err(e.seq, e.code, e.msg),
        }
        if malformed {
            self.bad_frames += 1;
            let max = self.engine.config().max_bad_frames;
            if self.bad_frames >= max {
                let frames = self.drain_ready();
                return Some(Output::Close {
                    frames,
                    code: close::PROTOCOL_ERROR,
                    reason: format!("{max} malformed frames (session.max_bad_frames)"),
                });
            }
        }
        None
    }

    /// The next thing to send. Waits for answers, deliveries or control messages.
    pub async fn next(&mut self) -> Output {
        loop {
            if let Ok(c) = self.control.try_recv() {
                return self.on_control(c);
            }
            let frames = self.drain_ready();
            if !frames.is_empty() {
                return Output::Frames(frames);
            }
            match self.pump().await {
                Ok(f) if !f.is_empty() => return Output::Frames(f),
                Ok(_) => self.read_failed = false,
                Err(err) => {
                    if !self.read_failed {
                        warn!(session = %self.session.id, conn = %self.conn_id, %err,
                            "store read failed; deliveries paused, retrying");
                    }
                    self.read_failed = true;
                }
            }
            let answers = &mut self.answers;
            let front = async {
                match answers.front_mut() {
                    Some(Answer::Waiting(rx)) => rx.await.ok(),
                    Some(Answer::Pending(fut)) => Some(fut.as_mut().await),
                    _ => std::future::pending().await,
                }
            };
            let retry = self.read_failed;
            tokio::select! {
                c = self.control.recv() => {
                    if let Some(c) = c {
                        return self.on_control(c);
                    }
                }
                r = front => {
                    let reply = r.unwrap_or_else(|| {
                        self.engine.metrics().error(ErrorCode::Internal.as_str());
                        Reply {
                            frame: ServerFrame::err(None, ErrorCode::Internal, "request task ended without an answer").encode(),
                            effect: Effect::None,
                        }
                    });
                    if let Some(f) = self.answers.front_mut() {
                        *f = Answer::Ready(reply);
                    }
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(READ_RETRY), if retry => {}
            }
        }
    }

    /// Completes the publishes already handed to the store, in request order, without
    /// producing output: for a transport that cannot write now (its send queue is full), so
    /// that a takeover waiting for this connection's requests is not held up by a socket.
    /// Never returns; race it against the write.
    pub async fn settle_answers(&mut self) -> std::convert::Infallible {
        loop {
            let Some(i) = self
                .answers
                .iter()
                .position(|a| matches!(a, Answer::Pending(_)))
            else {
                return std::future::pending().await;
            };
            let reply = match &mut self.answers[i] {
                Answer::Pending(f) => f.as_mut().await,
                _ => continue,
            };
            self.answers[i] = Answer::Ready(reply);
        }
    }

    fn on_control(&mut self, c: Control) -> Output {
        match c {
            Control::Evict(ev) => {
                let reason = format!("evicted: {}", ev.reason.as_str());
                Output::Close {
                    frames: vec![ServerFrame::Evicted(*ev).encode()],
                    code: close::EVICTED,
                    reason,
                }
            }
            Control::Shutdown => Output::Close {
                frames: self.drain_ready(),
                code: close::GOING_AWAY,
                reason: "server shutting down".into(),
            },
        }
    }

    /// Answers whose turn has come, in request order, with their effects applied.
    fn drain_ready(&mut self) -> Vec<String> {
        let mut frames = Vec::new();
        while let Some(front) = self.answers.front_mut() {
            let reply = match front {
                Answer::Ready(_) => match self.answers.pop_front() {
                    Some(Answer::Ready(r)) => r,
                    _ => break,
                },
                Answer::Pending(fut) => match fut.as_mut().now_or_never() {
                    Some(r) => {
                        self.answers.pop_front();
                        r
                    }
                    None => break,
                },
                Answer::Waiting(rx) => match rx.try_recv() {
                    Ok(r) => {
                        self.answers.pop_front();
                        r
                    }
                    Err(oneshot::error::TryRecvError::Empty) => break,
                    Err(oneshot::error::TryRecvError::Closed) => {
                        self.answers.pop_front();
                        self.engine.metrics().error(ErrorCode::Internal.as_str());
                        Reply {
                            frame: ServerFrame::err(
                                None,
                                ErrorCode::Internal,
                                "request task ended without an answer",
                            )
                            .encode(),
                            effect: Effect::None,
                        }
                    }
                },
            };
            match reply.effect {
                Effect::None => {}
                Effect::Activate(key) => {
                    if let Some(p) = self.positions.get_mut(&key) {
                        p.active = true;
                    }
                }
                Effect::Drop(key) => self.forget(&key),
            }
            frames.push(reply.frame);
        }
        frames
    }

    fn forget(&mut self, key: &str) {
        self.positions.remove(key);
        self.engine.streams().unwatch(key, self.watcher);
        if let Some(chan) = key.strip_prefix("chan:") {
            let mut g = self.session.lock();
            if g.generation == self.generation {
                g.subs.remove(chan);
                g.sub_start.remove(chan);
            }
        }
    }

    fn push_err(&mut self, seq: Option<u64>, code: ErrorCode, msg: String) {
        self.engine.metrics().error(code.as_str());
        self.answers
            .push_back(ready(ServerFrame::err(seq, code, msg).encode()));
    }

    /// Answers request `seq` with an error (it counts as processed).
    fn reject(&mut self, seq: u64, code: ErrorCode, msg: String) {
        self.engine.metrics().error(code.as_str());
        let frame = ServerFrame::err(Some(seq), code, msg).encode();
        self.session.answered(seq, &frame);
        self.answers.push_back(ready(frame));
    }

    /// Checks `seq` against what this session already processed. `Some` is the answer for a
    /// request that must not be applied again.
    fn replay(&self, seq: u64) -> Option<String> {
        let g = self.session.lock();
        if seq <= g.acked_seq {
            let cached = g
                .answers
                .iter()
                .rev()
                .find(|(s, _)| *s == seq)
                .map(|(_, f)| f.clone());
            return Some(cached.unwrap_or_else(|| {
                ServerFrame::Ok(OkFrame {
                    seq,
                    dup: true,
                    ..Default::default()
                })
                .encode()
            }));
        }
        if seq <= g.submitted_seq {
            self.engine.metrics().error(ErrorCode::BadFrame.as_str());
            return Some(
                ServerFrame::err(
                    Some(seq),
                    ErrorCode::BadFrame,
                    format!("`seq` {seq} is already being processed; its answer will follow (wait for it, do not resend)"),
                )
                .encode(),
            );
        }
        None
    }

    /// Marks `seq` accepted. False if this connection no longer owns the session (it is being
    /// replaced; the client will resend on its new connection).
    fn accept(&self, seq: u64) -> bool {
        let mut g = self.session.lock();
        if g.generation != self.generation || g.conn.is_none() {
            return false;
        }
        g.submitted_seq = g.submitted_seq.max(seq);
        g.pending += 1;
        true
    }

    fn on_pub(&mut self, p: Pub) {
        let seq = p.seq;
        if let Some(a) = self.replay(seq) {
            self.answers.push_back(ready(a));
            return;
        }
        let now = self.engine.now_ms();
        if !self
            .engine
            .inner
            .quotas
            .publish
            .take(&self.session.uid, now)
        {
            let per_sec = self.engine.config().publishes_per_uid_per_sec;
            self.reject(
                seq,
                ErrorCode::RateLimited,
                format!(
                    "uid {} publishes more than {per_sec} messages per second over all its connections \
                     (limits.publishes_per_uid_per_sec); not stored: send it again later with a new seq",
                    self.session.uid
                ),
            );
            return;
        }
        let (stream, user) = match &p.to {
            Target::User(u) => (inbox_key(u), Some(u.clone())),
            Target::Chan(c) => {
                if !self.grants.may_publish(c) {
                    self.reject(
                        seq,
                        ErrorCode::Forbidden,
                        format!("`to`: your token's chans.pub claim does not allow publishing to chan:{c}"),
                    );
                    return;
                }
                (chan_key(c), None)
            }
        };
        let now = self.engine.now_ms();
        let msg = NewMessage {
            stream,
            id: ids::message_id(now),
            from: self.session.uid.clone(),
            ts: now,
            body: p.body,
            receipt: p.receipt && user.is_some(),
            idem: p.id,
            session_seq: Some((self.session.id.clone(), seq)),
        };
        // Accept and hand to the store in one critical section: a takeover either sees this
        // request pending (and waits for it) or this connection refuses it.
        let fut = {
            let mut g = self.session.lock();
            if g.generation != self.generation || g.conn.is_none() {
                return;
            }
            g.submitted_seq = g.submitted_seq.max(seq);
            g.pending += 1;
            self.engine.store().append(msg)
        };
        let engine = self.engine.clone();
        let session = self.session.clone();
        self.answers.push_back(Answer::Pending(Box::pin(async move {
            let frame = match engine.count_append(fut.await) {
                Ok(out) => {
                    let p = engine.published(out, user.as_deref());
                    ServerFrame::Ok(OkFrame {
                        seq,
                        id: Some(p.id),
                        s: Some(client_name(&p.s).to_string()),
                        o: Some(p.o),
                        dup: p.dup,
                        online: p.online,
                    })
                    .encode()
                }
                Err(e) => {
                    engine.metrics().error(ErrorCode::Unavailable.as_str());
                    warn!(session = %session.id, seq, err = %e, "publish not stored");
                    ServerFrame::err(
                        Some(seq),
                        ErrorCode::Unavailable,
                        format!("{e}; the message was not stored: send it again with a new seq"),
                    )
                    .encode()
                }
            };
            session.answered(seq, &frame);
            session.done();
            Reply {
                frame,
                effect: Effect::None,
            }
        })));
    }

    async fn on_sub(&mut self, s: Sub) {
        let seq = s.seq;
        if let Some(a) = self.replay(seq) {
            self.answers.push_back(ready(a));
            return;
        }
        if !self.grants.may_subscribe(&s.chan) {
            self.reject(
                seq,
                ErrorCode::Forbidden,
                format!(
                    "`chan`: your token's chans.sub claim does not allow subscribing to chan:{}",
                    s.chan
                ),
            );
            return;
        }
        let max = self.engine.config().max_subs_per_session as usize;
        let count = {
            let g = self.session.lock();
            (!g.subs.contains_key(&s.chan)).then_some(g.subs.len())
        };
        if max > 0 && count.is_some_and(|n| n >= max) {
            self.reject(
                seq,
                ErrorCode::QuotaExceeded,
                format!(
                    "this session is subscribed to {max} channels, the most limits.max_subs_per_session allows; \
                     unsubscribe from one first"
                ),
            );
            return;
        }
        let key = chan_key(&s.chan);
        let last = match self
            .engine
            .watch(&key, self.watcher, self.wake.clone())
            .await
        {
            Ok(last) => last,
            Err(e) => {
                if !self.positions.contains_key(&key) {
                    self.engine.streams().unwatch(&key, self.watcher);
                }
                self.reject(
                    seq,
                    ErrorCode::Unavailable,
                    format!("{e}; not subscribed: send the sub again with a new seq"),
                );
                return;
            }
        };
        let at = s.from.map_or(last, |f| f.min(last));
        {
            // Ownership check and the change in one critical section: a connection that was
            // taken over must not alter the session.
            let mut g = self.session.lock();
            if g.generation != self.generation || g.conn.is_none() {
                return;
            }
            g.subs.insert(s.chan.clone(), at);
            g.sub_start.insert(s.chan.clone(), at);
            g.submitted_seq = g.submitted_seq.max(seq);
            g.pending += 1;
        }
        self.positions.insert(key.clone(), Position::new(at, false));
        let (tx, rx) = oneshot::channel();
        let engine = self.engine.clone();
        let session = self.session.clone();
        self.engine.spawn_bg(async move {
            let (frame, effect) = match engine.persist_answering(&session, seq).await {
                Ok(()) => (
                    ServerFrame::Ok(OkFrame {
                        seq,
                        s: Some(key.clone()),
                        o: Some(last),
                        ..Default::default()
                    })
                    .encode(),
                    Effect::Activate(key),
                ),
                Err(e) => (
                    {
                        engine.metrics().error(ErrorCode::Unavailable.as_str());
                        ServerFrame::err(
                            Some(seq),
                            ErrorCode::Unavailable,
                            format!("{e}; not subscribed: send the sub again with a new seq"),
                        )
                    }
                    .encode(),
                    Effect::Drop(key),
                ),
            };
            complete(&session, tx, seq, frame, effect);
        });
        self.answers.push_back(Answer::Waiting(rx));
    }

    async fn on_unsub(&mut self, u: Unsub) {
        let seq = u.seq;
        if let Some(a) = self.replay(seq) {
            self.answers.push_back(ready(a));
            return;
        }
        let key = chan_key(&u.chan);
        if !self.positions.contains_key(&key) {
            self.reject(
                seq,
                ErrorCode::NotSubscribed,
                format!("`chan`: this session is not subscribed to {key}"),
            );
            return;
        }
        self.forget(&key);
        if !self.accept(seq) {
            return;
        }
        let (tx, rx) = oneshot::channel();
        let engine = self.engine.clone();
        let session = self.session.clone();
        self.engine.spawn_bg(async move {
            let frame = match engine.persist_answering(&session, seq).await {
                Ok(()) => ServerFrame::Ok(OkFrame {
                    seq,
                    s: Some(key),
                    ..Default::default()
                })
                .encode(),
                Err(e) => {
                    engine.metrics().error(ErrorCode::Unavailable.as_str());
                    ServerFrame::err(
                        Some(seq),
                        ErrorCode::Unavailable,
                        format!(
                            "{e}; unsubscribed on this connection, but a restart may restore it"
                        ),
                    )
                    .encode()
                }
            };
            complete(&session, tx, seq, frame, Effect::None);
        });
        self.answers.push_back(Answer::Waiting(rx));
    }

    fn on_ack(&mut self, a: Ack) {
        let key = match ClientStream::parse(&a.s) {
            Ok(ClientStream::Inbox) => self.inbox.clone(),
            Ok(ClientStream::Chan(c)) => chan_key(&c),
            Err(e) => {
                self.push_err(None, ErrorCode::BadTarget, format!("`s`: {e}"));
                return;
            }
        };
        let known_last = self.engine.streams().last(&key);
        let Some(pos) = self.positions.get_mut(&key) else {
            self.push_err(
                None,
                ErrorCode::NotSubscribed,
                format!(
                    "`s`: this session does not read {} (subscribe first); ack ignored",
                    a.s
                ),
            );
            return;
        };
        let last = known_last.unwrap_or(pos.sent).max(pos.sent);
        let upto = a.o.min(last);
        if upto <= pos.acked {
            return;
        }
        let old = pos.acked;
        pos.acked = upto;
        pos.sent = pos.sent.max(upto);
        pos.gaps.retain(|&(_, to)| to > upto);
        let m = self.engine.metrics();
        m.acks.inc();
        let now = self.engine.now_ms();
        let (mut popped, mut receipts) = (0u64, false);
        while pos.unacked.front().is_some_and(|f| f.offset <= upto) {
            if let Some(f) = pos.unacked.pop_front() {
                popped += 1;
                receipts |= f.receipt;
                Metrics::observe_ms(&m.ack_latency, now.saturating_sub(f.ts));
                debug!(uid = %self.session.uid, device = %self.session.device,
                    session = %self.session.id, conn = %self.conn_id, msg_id = %f.id,
                    s = %a.s, o = f.offset, "acked");
            }
        }
        if key == self.inbox {
            let (uid, device) = (&self.session.uid, &self.session.device);
            // Offsets acked that this connection did not send (a gap, or sent before a
            // resume) may want receipts too: only the store can tell.
            let untracked = popped < upto - old;
            if !receipts && !untracked {
                // Nobody waits on the cursor: it is written with the next commit.
                self.engine.store().advance_cursor(uid, device, upto, now);
            } else {
                let engine = self.engine.clone();
                let (uid, device) = (uid.clone(), device.clone());
                self.engine.spawn_bg(async move {
                    let now = engine.now_ms();
                    if let Err(err) = engine.store().set_cursor(&uid, &device, upto, now).await {
                        warn!(uid = %uid, device = %device, %err, "inbox cursor not persisted");
                    }
                    send_receipts(&engine, &uid, &device, old, upto).await;
                });
            }
        } else if let Some(chan) = key.strip_prefix("chan:") {
            let mut g = self.session.lock();
            if g.generation == self.generation {
                if let Some(at) = g.subs.get_mut(chan) {
                    *at = (*at).max(upto);
                    g.dirty = true;
                }
            }
        }
    }

    /// Reads the next deliveries of one stream within the flow-control budget.
    async fn pump(&mut self) -> Result<Vec<String>, StoreError> {
        let max = self.engine.config().max_inflight;
        let inflight: u64 = self.positions.values().map(Position::inflight).sum();
        if inflight >= max {
            if !self.stalled {
                self.stalled = true;
                self.engine.metrics().flow_stalls.inc();
                debug!(session = %self.session.id, inflight, "flow control: waiting for acks");
            }
            return Ok(Vec::new());
        }
        self.stalled = false;
        let budget = (max - inflight) as usize;
        let keys: Vec<String> = self
            .positions
            .iter()
            .filter(|(_, p)| p.active)
            .map(|(k, _)| k.clone())
            .collect();
        let n = keys.len();
        for i in 0..n {
            let key = &keys[(self.rr + i) % n];
            let sent = self.positions.get(key).map_or(0, |p| p.sent);
            let mut gap = None;
            let items: Vec<Arc<Cached>> = match self.engine.streams().fetch(key, sent, budget) {
                Fetch::CaughtUp => continue,
                Fetch::Ready(v) => v,
                Fetch::NeedStore => {
                    let store = self.engine.store();
                    let msgs = store.read(key, sent, budget.min(READ_BATCH)).await?;
                    if let Some(first) = msgs.first() {
                        if first.offset > sent + 1 {
                            gap = Some((sent + 1, first.offset - 1));
                        }
                        msgs.into_iter().map(|m| Arc::new(Cached::new(m))).collect()
                    } else {
                        let b = store.bounds(key).await?;
                        self.engine.streams().loaded(key, b.last);
                        if b.first > sent + 1 {
                            gap = Some((sent + 1, b.first - 1));
                        } else {
                            continue;
                        }
                        Vec::new()
                    }
                }
            };
            // No await below: the state moves together with the frames we return.
            self.rr = (self.rr + i + 1) % n;
            return Ok(self.deliver(key, gap, &items));
        }
        Ok(Vec::new())
    }

    fn deliver(
        &mut self,
        key: &str,
        gap: Option<(u64, u64)>,
        items: &[Arc<Cached>],
    ) -> Vec<String> {
        let mut frames = Vec::with_capacity(items.len() + 1);
        let Some(pos) = self.positions.get_mut(key) else {
            return frames;
        };
        let name = client_name(key).to_string();
        if let Some((from, to)) = gap {
            frames.push(
                ServerFrame::Gap(Gap {
                    s: name.clone(),
                    from,
                    to,
                    reason: GapReason::Retention,
                })
                .encode(),
            );
            pos.gaps.push((from, to));
            pos.sent = pos.sent.max(to);
            self.engine.metrics().gaps.inc();
            warn!(event = "gap", uid = %self.session.uid, device = %self.session.device, session = %self.session.id,
                conn = %self.conn_id, stream = %name, from, to, reason = "retention",
                "gap: messages trimmed before delivery");
            self.engine.record_event(
                "gap",
                Some(&self.session.uid),
                Some(&self.session.device),
                Some(&self.session.id),
                Some(&self.conn_id),
                serde_json::json!({"s": name, "from": from, "to": to, "reason": "retention"}),
            );
        }
        for c in items {
            frames.push(c.wire.clone());
            pos.sent = pos.sent.max(c.msg.offset);
            pos.unacked.push_back(SentMsg {
                offset: c.msg.offset,
                ts: c.msg.ts,
                id: c.msg.id.clone(),
                receipt: c.msg.receipt,
            });
        }
        if let Some(last) = items.last() {
            let first = items[0].msg.offset;
            let high = {
                let mut g = self.session.lock();
                let h = g.sent_high.entry(key.to_string()).or_insert(0);
                let before = *h;
                *h = (*h).max(last.msg.offset);
                before
            };
            let m = self.engine.metrics();
            m.deliveries.inc_by(items.len() as u64);
            if first <= high {
                m.redeliveries.inc_by(high.min(last.msg.offset) - first + 1);
            }
            let now = self.engine.now_ms();
            for c in items {
                let again = c.msg.offset <= high;
                if !again {
                    Metrics::observe_ms(&m.delivery_latency, now.saturating_sub(c.msg.ts));
                }
                debug!(uid = %self.session.uid, device = %self.session.device,
                    session = %self.session.id, conn = %self.conn_id, msg_id = %c.msg.id,
                    s = %name, o = c.msg.offset, redelivery = again, "delivered");
            }
            if key == self.inbox {
                // One record for the run; nothing waits on it.
                self.engine.store().record_sent(SentRange {
                    uid: self.session.uid.clone(),
                    device: self.session.device.clone(),
                    session: self.session.id.clone(),
                    stream: key.to_string(),
                    first,
                    last: last.msg.offset,
                    ts: now,
                });
            }
        }
        frames
    }
}

impl Attached {
    /// Releases the session (once): stops watching streams and tells the engine.
    fn detach(&mut self) {
        if self.detached {
            return;
        }
        self.detached = true;
        for key in self.positions.keys() {
            self.engine.streams().unwatch(key, self.watcher);
        }
        self.engine
            .detached(&self.session, self.generation, self.bye);
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.detach();
        // Publishes handed to the store still get their answers recorded in the session
        // (a takeover waits for them, a resend is answered from them).
        let pending: Vec<_> = self
            .answers
            .drain(..)
            .filter_map(|a| match a {
                Answer::Pending(f) => Some(f),
                _ => None,
            })
            .collect();
        if !pending.is_empty() {
            self.engine.spawn_bg(async move {
                for f in pending {
                    f.await;
                }
            });
        }
    }
}

/// Records the answer to request `seq` and hands it to its connection, if still there.
fn complete(
    session: &SessionShared,
    tx: oneshot::Sender<Reply>,
    seq: u64,
    frame: String,
    effect: Effect,
) {
    session.answered(seq, &frame);
    session.done();
    let _ = tx.send(Reply { frame, effect });
}

fn ready(frame: String) -> Answer {
    Answer::Ready(Reply {
        frame,
        effect: Effect::None,
    })
}

/// Stores a `$herald` receipt in the sender's inbox for each message in `(old, upto]` of
/// `uid`'s inbox that asked for one. Idempotent per (message, device).
async fn send_receipts(engine: &Engine, uid: &str, device: &str, old: u64, upto: u64) {
    let key = inbox_key(uid);
    let mut after = old;
    while after < upto {
        let want = ((upto - after) as usize).min(READ_BATCH);
        let msgs: Vec<Arc<herald_store::StoredMessage>> =
            match engine.streams().fetch(&key, after, want) {
                Fetch::Ready(v) => v.iter().map(|c| c.msg.clone()).collect(),
                Fetch::CaughtUp => return,
                Fetch::NeedStore => match engine.store().read(&key, after, want).await {
                    Ok(v) => v,
                    Err(err) => {
                        warn!(uid, device, %err, "receipts not sent: inbox read failed");
                        return;
                    }
                },
            };
        let Some(last) = msgs.last().map(|m| m.offset) else {
            return;
        };
        for m in msgs.iter().filter(|m| m.offset <= upto) {
            if !m.receipt || m.from.starts_with('$') {
                continue;
            }
            let now = engine.now_ms();
            let body = serde_json::json!({"receipt": {
                "id": m.id, "uid": uid, "device": device, "state": "acked", "ts": now}});
            let Ok(body) = Body::from_json(body.to_string()) else {
                continue;
            };
            let msg = NewMessage {
                stream: inbox_key(&m.from),
                id: ids::message_id(now),
                from: SYSTEM_SENDER.to_string(),
                ts: now,
                body,
                receipt: false,
                idem: Some(format!("receipt:{}:{device}", m.id)),
                session_seq: None,
            };
            let r = engine.store().append(msg).await;
            if let Err(err) = engine.count_append(r) {
                warn!(uid, device, msg_id = %m.id, %err, "receipt not stored");
            }
        }
        after = last;
    }
}
