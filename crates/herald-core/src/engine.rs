//! The engine: identity decisions (which login may proceed, who is evicted), session lifecycle
//! (open, resume, detach, expiry, close), and the operations that cross sessions (kick, publish
//! from the API, trace, shutdown). Who holds which session is asked of [`crate::directory`];
//! per-connection protocol handling lives in [`crate::conn`].
//!
//! Lock order, everywhere: the directory before any session's `inner`. No lock is held across
//! an `.await`. Opens and kicks for one uid are serialized by the directory's per-uid lock, so
//! identity decisions never race.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use herald_protocol::{
    Body, ErrorCode, EvictReason, Evicted, EvictedBy, Hello, ResumeError, ServerFrame, Target,
};
use herald_store::{
    chan_key, inbox_key, AppendOutcome, Event, NewEvent, NewMessage, SessionRecord, SessionState,
    Store, StoreError, StoredMessage,
};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, info, warn};

use crate::auth::{ChannelGrants, Identity};
use crate::clock::Clock;
use crate::config::{EngineConfig, NewDeviceStart};
use crate::conn::Attached;
use crate::directory::{Directory, Found};
use crate::identity::{admit, Admission, Candidate};
use crate::ids;
use crate::metrics::{Metrics, SessionGauges};
use crate::resume_key;
use crate::session::{ConnSlot, Control, SessionShared, Tombstone};
use crate::streams::{client_name, Streams};
pub use crate::trace::{RecipientState, RecipientView, Trace, TracePage};

/// How long a resume waits for the replaced connection's in-flight requests to finish.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// The sender name of server-generated messages (receipts).
pub const SYSTEM_SENDER: &str = "$herald";

/// The remote end of a connection, for logs and `evicted.by`.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub addr: String,
}

/// Why a connection could not be opened. Each maps to the frames and close code the client
/// must see ([`OpenError::answer`]).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "`uid` {uid} already has a connected session; identity.policy = reject_new refuses a \
         second login until it disconnects"
    )]
    IdentityInUse { uid: String },
    #[error("session was evicted: {}", .0.reason.as_str())]
    Evicted(Evicted),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("server is shutting down")]
    ShuttingDown,
    #[error(
        "`uid` {uid} opened more than {per_min} new sessions in the last minute \
         (limits.sessions_per_uid_per_min); resume an existing session or retry later"
    )]
    TooManySessions { uid: String, per_min: u32 },
}

impl OpenError {
    /// Frames to send, then the close code and reason.
    pub fn answer(&self) -> (Vec<String>, u16, &'static str) {
        use herald_protocol::close;
        match self {
            OpenError::IdentityInUse { .. } => (
                vec![ServerFrame::err(None, ErrorCode::IdentityInUse, self.to_string()).encode()],
                close::IDENTITY_IN_USE,
                "identity in use",
            ),
            OpenError::Evicted(e) => (
                vec![ServerFrame::Evicted(e.clone()).encode()],
                close::EVICTED,
                "evicted",
            ),
            OpenError::Store(e) => (
                vec![ServerFrame::err(None, ErrorCode::Unavailable, e.to_string()).encode()],
                1011,
                "storage unavailable",
            ),
            OpenError::ShuttingDown => (vec![], close::GOING_AWAY, "server shutting down"),
            OpenError::TooManySessions { .. } => (
                vec![ServerFrame::err(None, ErrorCode::RateLimited, self.to_string()).encode()],
                close::RATE_LIMITED,
                "too many new sessions",
            ),
        }
    }
}

/// Why a publish from the HTTP API failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A stored (or deduplicated) publish.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    pub id: String,
    /// Stream key (`inbox:<uid>` or `chan:<name>`).
    pub s: String,
    pub o: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dup: bool,
    /// For user targets: the recipient's connected sessions when it was stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online: Option<u32>,
}

/// A session as the HTTP API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    pub id: String,
    pub uid: String,
    pub device: String,
    pub state: &'static str,
    pub conn: Option<String>,
    pub addr: Option<String>,
    pub created_ms: u64,
    pub last_seen_ms: u64,
    pub acked_seq: u64,
    pub reconnect_timeout_ms: u64,
    pub subs: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MessageView {
    pub id: String,
    pub s: String,
    pub o: u64,
    pub from: String,
    pub ts: u64,
    pub body: Body,
    pub receipt: bool,
    /// When retention removed the message (a trace of a trimmed inbox message; its body is
    /// gone and shows as `null`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trimmed_ms: Option<u64>,
}

impl MessageView {
    pub fn of(m: &StoredMessage) -> MessageView {
        MessageView {
            id: m.id.clone(),
            s: m.stream.clone(),
            o: m.offset,
            from: m.from.clone(),
            ts: m.ts,
            body: m.body.clone(),
            receipt: m.receipt,
            trimmed_ms: None,
        }
    }
}

pub(crate) struct EngineInner {
    pub(crate) cfg: EngineConfig,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) streams: Arc<Streams>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Who holds which session (the identity/ownership seam).
    pub(crate) directory: Directory,
    pub(crate) metrics: Metrics,
    events: broadcast::Sender<Event>,
    shutting_down: AtomicBool,
    next_watcher: AtomicU64,
    /// Background writes (cursors, delivery records, events, session state) still running.
    background: std::sync::atomic::AtomicUsize,
    background_idle: tokio::sync::Notify,
    /// Why the last append failed, until an append succeeds again. Other writes (trims)
    /// succeeding says nothing about whether messages can be stored.
    append_failing: Mutex<Option<String>>,
    /// Per-uid quotas (publishes per second, new sessions per minute).
    pub(crate) quotas: crate::quota::Quotas,
}

impl EngineInner {
    /// Open sessions as (connected, disconnected).
    pub(crate) fn session_counts(&self) -> (i64, i64) {
        let (mut c, mut d) = (0, 0);
        for s in self.directory.all() {
            match s.lock().state {
                SessionState::Connected => c += 1,
                SessionState::Disconnected => d += 1,
                SessionState::Closed => {}
            }
        }
        (c, d)
    }
}

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<EngineInner>,
}

enum ResumeLookup {
    Found(Arc<SessionShared>),
    Evicted(Evicted),
    Failed(ResumeError),
}

impl Engine {
    /// Starts the engine on an opened store, restoring persisted sessions. Sessions that were
    /// connected when the previous process died become disconnected now, with a full
    /// reconnect window from this start.
    pub async fn start(
        cfg: EngineConfig,
        store: Arc<dyn Store>,
        streams: Arc<Streams>,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine, StoreError> {
        let now = clock.now_ms();
        let directory = Directory::default();
        let mut restored = 0usize;
        let mut migrated = 0usize;
        for mut rec in store.load_sessions().await? {
            // Records from before resume keys were hashed: hash the key, write it back.
            if resume_key::migrate(&mut rec.key) {
                store.put_session(rec.clone()).await?;
                migrated += 1;
            }
            if rec.state == SessionState::Closed {
                directory.insert_tombstone(
                    rec.id.clone(),
                    Tombstone {
                        uid: rec.uid.clone(),
                        device: rec.device.clone(),
                        key: rec.key.clone(),
                        reason: rec
                            .closed_reason
                            .clone()
                            .unwrap_or_else(|| "expired".into()),
                        by_conn: rec.closed_by.clone(),
                        at_ms: rec.last_seen_ms,
                    },
                );
                continue;
            }
            let mut rec = rec;
            rec.state = SessionState::Disconnected;
            rec.last_seen_ms = rec.last_seen_ms.max(now);
            directory.insert(Arc::new(SessionShared::from_record(&rec)));
            restored += 1;
        }
        info!(
            restored,
            migrated_keys = migrated,
            tombstones = directory.tombstone_count(),
            "sessions restored"
        );
        let (events, _) = broadcast::channel(1024);
        Ok(Engine {
            inner: Arc::new(EngineInner {
                quotas: crate::quota::Quotas::new(&cfg),
                cfg,
                store,
                streams,
                clock,
                directory,
                metrics: Metrics::default(),
                events,
                shutting_down: AtomicBool::new(false),
                next_watcher: AtomicU64::new(1),
                background: std::sync::atomic::AtomicUsize::new(0),
                background_idle: tokio::sync::Notify::new(),
                append_failing: Mutex::new(None),
            }),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.cfg
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Registers the engine's metrics, including `herald_sessions{state}` (counted when
    /// scraped) and the store observer's series (see [`Metrics::store`]).
    pub fn register_metrics(&self, r: &mut Registry) {
        self.inner.metrics.register(r);
        r.register_collector(Box::new(SessionGauges {
            engine: Arc::downgrade(&self.inner),
        }));
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// Live feed of recorded events (evictions, resume failures, gaps, kicks).
    pub fn subscribe_events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// `Err(reason)` while the store cannot make writes durable.
    pub fn ready(&self) -> Result<(), String> {
        if self.inner.shutting_down.load(Ordering::Relaxed) {
            return Err("shutting down".into());
        }
        if let Some(reason) = self.append_failing().clone() {
            return Err(format!("messages cannot be stored: {reason}"));
        }
        self.inner.store.health()
    }

    fn append_failing(&self) -> MutexGuard<'_, Option<String>> {
        self.inner
            .append_failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn directory(&self) -> &Directory {
        &self.inner.directory
    }

    /// Runs a background write; [`Engine::close_store`] waits for these before closing.
    pub(crate) fn spawn_bg<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.inner.background.fetch_add(1, Ordering::SeqCst);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            fut.await;
            if inner.background.fetch_sub(1, Ordering::SeqCst) == 1 {
                inner.background_idle.notify_waiters();
            }
        });
    }

    /// Waits (up to `limit`) until no background write is running.
    pub async fn settle(&self, limit: Duration) {
        let wait = async {
            loop {
                let idle = self.inner.background_idle.notified();
                if self.inner.background.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        };
        if tokio::time::timeout(limit, wait).await.is_err() {
            warn!(
                "background writes still running after {} ms",
                limit.as_millis()
            );
        }
    }

    pub(crate) fn next_watcher(&self) -> u64 {
        self.inner.next_watcher.fetch_add(1, Ordering::Relaxed)
    }

    /// Records an event in the durable feed, with its webhook deliveries in the same commit,
    /// and broadcasts it (never blocks the caller).
    pub(crate) fn record_event(
        &self,
        kind: &str,
        uid: Option<&str>,
        device: Option<&str>,
        session: Option<&str>,
        conn: Option<&str>,
        data: serde_json::Value,
    ) {
        let e = NewEvent {
            ts: self.now_ms(),
            kind: kind.to_string(),
            uid: uid.map(str::to_string),
            device: device.map(str::to_string),
            session: session.map(str::to_string),
            conn: conn.map(str::to_string),
            data,
        };
        let targets = crate::webhooks::targets(&self.inner.cfg.webhooks, &e);
        let store = self.inner.store.clone();
        let tx = self.inner.events.clone();
        self.spawn_bg(async move {
            match store.append_event_with_outbox(e, targets).await {
                Ok(ev) => {
                    let _ = tx.send(ev);
                }
                Err(err) => warn!(%err, "event could not be recorded"),
            }
        });
    }

    /// Number of connected sessions of `uid`.
    pub fn online(&self, uid: &str) -> u32 {
        self.directory()
            .of_uid(uid)
            .iter()
            .filter(|s| s.lock().conn.is_some())
            .count() as u32
    }

    /// Opens a connection: resumes the session named in `hello.resume` if it may, or makes a
    /// new one under the identity policy. `identity` was verified by the caller.
    pub async fn open(
        &self,
        hello: &Hello,
        identity: Identity,
        peer: Peer,
    ) -> Result<Attached, OpenError> {
        if self.inner.shutting_down.load(Ordering::Relaxed) {
            return Err(OpenError::ShuttingDown);
        }
        let uid = identity.uid.clone();
        let _serial = self.directory().lock_uid(&uid).await;
        let now = self.now_ms();
        let server_rt = self.inner.cfg.reconnect_timeout_ms;
        let rt = hello
            .reconnect_timeout_ms
            .map_or(server_rt, |c| c.min(server_rt));
        let conn_id = ids::conn_id();
        let mut resume_error = None;
        if let Some(r) = &hello.resume {
            match self.lookup_resume(&r.session, &r.key, &uid, now) {
                ResumeLookup::Found(s) if !device_allowed(&identity, &s) => {
                    self.resume_refused(
                        hello,
                        &uid,
                        &r.session,
                        &conn_id,
                        &peer,
                        ResumeError::WrongDevice,
                    );
                    resume_error = Some(ResumeError::WrongDevice);
                }
                ResumeLookup::Found(s) => {
                    self.inner.metrics.resume("resumed");
                    let revoked = revoke_subs(&s, &identity.grants);
                    let mut attached = self
                        .attach(s, identity, peer, conn_id, true, None, rt)
                        .await?;
                    attached.set_welcome_key(r.key.clone());
                    attached.subs_revoked(revoked);
                    return Ok(attached);
                }
                ResumeLookup::Evicted(ev) => {
                    self.inner.metrics.resume("evicted");
                    warn!(event = "resume_failed", uid = %uid, device = hello.device.as_deref().unwrap_or(""),
                        session = %r.session, conn = %conn_id, addr = %peer.addr, reason = "evicted",
                        evicted = ev.reason.as_str(), "resume refused: session was evicted");
                    self.record_event(
                        "resume_failed",
                        Some(&uid),
                        hello.device.as_deref(),
                        Some(&r.session),
                        Some(&conn_id),
                        serde_json::json!({"reason": "evicted", "evicted": ev.reason.as_str(), "addr": peer.addr}),
                    );
                    return Err(OpenError::Evicted(ev));
                }
                ResumeLookup::Failed(e) => {
                    self.resume_refused(hello, &uid, &r.session, &conn_id, &peer, e);
                    resume_error = Some(e);
                }
            }
        }

        let device = identity
            .device
            .clone()
            .or_else(|| hello.device.clone())
            .unwrap_or_else(ids::device_id);
        if !self.inner.quotas.new_session.take(&uid, now) {
            warn!(event = "session_refused", uid = %uid, device = %device, conn = %conn_id,
                addr = %peer.addr, reason = "sessions_per_uid_per_min", "login refused: too many new sessions for this uid");
            return Err(OpenError::TooManySessions {
                uid,
                per_min: self.inner.cfg.sessions_per_uid_per_min,
            });
        }

        // Identity policy.
        let decision = {
            let candidates: Vec<Candidate> = self
                .directory()
                .of_uid(&uid)
                .iter()
                .map(|s| {
                    let g = s.lock();
                    Candidate {
                        session: s.id.clone(),
                        device: s.device.clone(),
                        connected: g.conn.is_some(),
                        last_active_ms: g.last_seen_ms,
                    }
                })
                .collect();
            admit(
                self.inner.cfg.identity_policy,
                self.inner.cfg.max_devices,
                &candidates,
                &device,
            )
        };
        match decision {
            Admission::Reject { holder } => {
                warn!(event = "identity_rejected", uid = %uid, device = %device, session = "",
                    conn = %conn_id, addr = %peer.addr, reason = "identity_in_use", holder = %holder,
                    "login refused: uid in use (identity.policy = reject_new)");
                self.record_event(
                    "identity_rejected",
                    Some(&uid),
                    Some(&device),
                    Some(&holder),
                    Some(&conn_id),
                    serde_json::json!({"addr": peer.addr}),
                );
                return Err(OpenError::IdentityInUse { uid });
            }
            Admission::Admit { evict } => {
                let by = EvictedBy {
                    conn: Some(conn_id.clone()),
                    addr: Some(peer.addr.clone()),
                };
                for (sid, reason) in evict {
                    self.evict(&sid, reason, by.clone());
                }
            }
        }

        // The device's inbox position: where it left off, or where a new device starts.
        let inbox = inbox_key(&uid);
        if self.inner.store.cursor(&uid, &device).await?.is_none() {
            let b = self.inner.store.bounds(&inbox).await?;
            let start = match self.inner.cfg.new_device_start {
                NewDeviceStart::Oldest => b.first.saturating_sub(1),
                NewDeviceStart::Latest => b.last,
            };
            self.inner
                .store
                .set_cursor(&uid, &device, start, now)
                .await?;
        }
        let plain_key = ids::session_key();
        let rec = SessionRecord {
            id: ids::session_id(),
            key: resume_key::hash(&plain_key),
            uid: uid.clone(),
            device: device.clone(),
            created_ms: now,
            last_seen_ms: now,
            acked_seq: 0,
            reconnect_timeout_ms: rt,
            state: SessionState::Connected,
            closed_reason: None,
            closed_by: None,
            subs: BTreeMap::new(),
            sub_start: BTreeMap::new(),
        };
        self.inner.store.put_session(rec.clone()).await?;
        let s = Arc::new(SessionShared::from_record(&rec));
        self.directory().insert(s.clone());
        let mut attached = self
            .attach(s, identity, peer, conn_id, false, resume_error, rt)
            .await?;
        attached.set_welcome_key(plain_key);
        Ok(attached)
    }

    /// Counts, logs and records a resume that was not granted (a new session follows).
    fn resume_refused(
        &self,
        hello: &Hello,
        uid: &str,
        session: &str,
        conn_id: &str,
        peer: &Peer,
        e: ResumeError,
    ) {
        self.inner.metrics.resume(e.as_str());
        warn!(event = "resume_failed", uid = %uid, device = hello.device.as_deref().unwrap_or(""),
            session = %session, conn = %conn_id, addr = %peer.addr,
            reason = e.as_str(), "resume failed; starting a new session");
        self.record_event(
            "resume_failed",
            Some(uid),
            hello.device.as_deref(),
            Some(session),
            Some(conn_id),
            serde_json::json!({"reason": e.as_str(), "addr": peer.addr}),
        );
    }

    fn lookup_resume(&self, id: &str, key: &str, uid: &str, now: u64) -> ResumeLookup {
        let s = match self.directory().find(id) {
            Found::Open(s) => s,
            Found::Closed(t) => {
                if t.uid != uid {
                    return ResumeLookup::Failed(ResumeError::Unknown);
                }
                if !resume_key::matches(&t.key, key) {
                    return ResumeLookup::Failed(ResumeError::BadKey);
                }
                return match t.reason.as_str() {
                    "replaced" => evicted(EvictReason::Replaced, &t),
                    "kicked" => evicted(EvictReason::Kicked, &t),
                    "device_limit" => evicted(EvictReason::DeviceLimit, &t),
                    _ => ResumeLookup::Failed(ResumeError::Expired),
                };
            }
            Found::Unknown => return ResumeLookup::Failed(ResumeError::Unknown),
        };
        if s.uid != uid {
            return ResumeLookup::Failed(ResumeError::Unknown);
        }
        if !resume_key::matches(&s.key, key) {
            return ResumeLookup::Failed(ResumeError::BadKey);
        }
        let expired = {
            let g = s.lock();
            g.state == SessionState::Disconnected
                && now.saturating_sub(g.last_seen_ms) >= g.reconnect_timeout_ms
        };
        if expired {
            self.close(&s, "expired", None);
            return ResumeLookup::Failed(ResumeError::Expired);
        }
        ResumeLookup::Found(s)
    }

    /// Attaches a connection to `s`, taking it over from any connection it had.
    #[allow(clippy::too_many_arguments)]
    async fn attach(
        &self,
        s: Arc<SessionShared>,
        identity: Identity,
        peer: Peer,
        conn_id: String,
        resumed: bool,
        resume_error: Option<ResumeError>,
        rt: u64,
    ) -> Result<Attached, OpenError> {
        let now = self.now_ms();
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let (generation, old) = {
            let mut g = s.lock();
            g.generation += 1;
            let generation = g.generation;
            let old = g.conn.replace(ConnSlot {
                conn_id: conn_id.clone(),
                addr: peer.addr.clone(),
                control: ctl_tx,
            });
            g.state = SessionState::Connected;
            g.last_seen_ms = now;
            g.reconnect_timeout_ms = rt;
            (generation, old)
        };
        if let Some(old) = old {
            let by = EvictedBy {
                conn: Some(conn_id.clone()),
                addr: Some(peer.addr.clone()),
            };
            self.announce_eviction(
                &s,
                &old.conn_id,
                &old.addr,
                EvictReason::ResumedElsewhere,
                &by,
            );
            let _ = old.control.send(Control::Evict(Box::new(Evicted {
                reason: EvictReason::ResumedElsewhere,
                by,
            })));
        }
        // Requests the previous connection handed in must be answered (and counted in
        // `acked_seq`) before the client is told what to resend.
        if tokio::time::timeout(TAKEOVER_WAIT, s.wait_idle())
            .await
            .is_err()
        {
            warn!(session = %s.id, "previous connection's requests still pending after takeover wait");
        }
        let cursor = self
            .inner
            .store
            .cursor(&s.uid, &s.device)
            .await?
            .unwrap_or(0);
        // Not awaited: the record is already durable (a new session was stored just before,
        // a resumed one long ago; errors were only logged either way), and waiting put the
        // welcome behind every write queued by other sessions (a busy writer made a resume
        // wait hundreds of ms). After a crash every session comes back disconnected anyway.
        self.persist_later(s.clone());
        let attached = Attached::new(
            self.clone(),
            s.clone(),
            conn_id.clone(),
            generation,
            identity.grants,
            cursor,
            ctl_rx,
            resumed,
            resume_error,
        )
        .await?;
        // `Attached::new` counted the connection; its drop (`detached`) uncounts it.
        if resumed {
            info!(event = "resume", uid = %s.uid, device = %s.device, session = %s.id,
                conn = %conn_id, addr = %peer.addr, reason = "resumed", "resumed");
        } else {
            info!(event = "connect", uid = %s.uid, device = %s.device, session = %s.id,
                conn = %conn_id, addr = %peer.addr, reason = "new",
                resume_error = resume_error.map(|e| e.as_str()), "connected");
        }
        Ok(attached)
    }

    /// Closes session `id` with an eviction `reason`, telling its connection if it has one.
    /// Returns false if no such open session exists.
    pub(crate) fn evict(&self, id: &str, reason: EvictReason, by: EvictedBy) -> bool {
        let Some(s) = self.directory().get(id) else {
            return false;
        };
        let slot = s.lock().conn.take();
        let (conn, addr) = slot
            .as_ref()
            .map(|c| (c.conn_id.clone(), c.addr.clone()))
            .unwrap_or_default();
        self.announce_eviction(&s, &conn, &addr, reason, &by);
        self.close(&s, reason.as_str(), by.conn.clone());
        if let Some(slot) = slot {
            let _ = slot
                .control
                .send(Control::Evict(Box::new(Evicted { reason, by })));
        }
        true
    }

    fn announce_eviction(
        &self,
        s: &SessionShared,
        conn: &str,
        addr: &str,
        reason: EvictReason,
        by: &EvictedBy,
    ) {
        warn!(event = "eviction", uid = %s.uid, device = %s.device, session = %s.id, conn = %conn,
            addr = %addr, reason = reason.as_str(), by_conn = by.conn.as_deref().unwrap_or(""),
            by_addr = by.addr.as_deref().unwrap_or(""), "session evicted");
        self.inner.metrics.eviction(reason.as_str());
        self.record_event(
            "eviction",
            Some(&s.uid),
            Some(&s.device),
            Some(&s.id),
            (!conn.is_empty()).then_some(conn),
            serde_json::json!({"reason": reason.as_str(), "addr": addr, "by": by}),
        );
    }

    /// Marks `s` closed, moves it to the tombstones and persists that.
    pub(crate) fn close(&self, s: &Arc<SessionShared>, reason: &str, by: Option<String>) {
        self.directory().close(s, reason, by, self.now_ms());
        self.persist_later(s.clone());
    }

    /// Writes the session's current state (the newest snapshot always wins).
    pub(crate) async fn persist_checked(&self, s: &SessionShared) -> Result<(), StoreError> {
        self.persist_answering(s, 0).await
    }

    /// Writes the session's current state as having processed request `seq`, which is
    /// answered only after this write: the durable `acked_seq` must cover every answered
    /// request, or a resume after a crash would let the client apply it again.
    pub(crate) async fn persist_answering(
        &self,
        s: &SessionShared,
        seq: u64,
    ) -> Result<(), StoreError> {
        let _serial = s.persist.lock().await;
        let rec = {
            let mut g = s.lock();
            g.dirty = false;
            let mut rec = s.record_locked(&g);
            rec.acked_seq = rec.acked_seq.max(seq);
            rec
        };
        let r = self.inner.store.put_session(rec).await;
        if r.is_err() {
            s.lock().dirty = true;
        }
        r
    }

    pub(crate) async fn persist(&self, s: &SessionShared) {
        if let Err(err) = self.persist_checked(s).await {
            warn!(session = %s.id, %err, "session state could not be persisted");
        }
    }

    pub(crate) fn persist_later(&self, s: Arc<SessionShared>) {
        let engine = self.clone();
        self.spawn_bg(async move { engine.persist(&s).await });
    }

    /// A connection ended. `bye` ends the session; otherwise it waits for a resume.
    pub(crate) fn detached(&self, s: &Arc<SessionShared>, generation: u64, bye: bool) {
        self.inner.metrics.connections.dec();
        let now = self.now_ms();
        let (owned, rt, closed) = {
            let mut g = s.lock();
            let owned = g.generation == generation && g.conn.is_some();
            if owned {
                g.conn = None;
                if g.state == SessionState::Connected {
                    g.state = SessionState::Disconnected;
                    g.last_seen_ms = now;
                }
            }
            (
                owned,
                g.reconnect_timeout_ms,
                g.state == SessionState::Closed,
            )
        };
        if !owned || closed {
            return;
        }
        if bye {
            info!(uid = %s.uid, device = %s.device, session = %s.id, "session ended by bye");
            self.close(s, "bye", None);
        } else if rt == 0 {
            self.close(s, "expired", None);
        } else {
            self.persist_later(s.clone());
        }
    }

    /// Stores a message from the HTTP API (or the server itself).
    pub async fn publish(
        &self,
        from: &str,
        to: &Target,
        body: Body,
        idem: Option<String>,
    ) -> Result<Published, PublishError> {
        let (stream, user) = match to {
            Target::User(u) => (inbox_key(u), Some(u.as_str())),
            Target::Chan(c) => (chan_key(c), None),
        };
        let now = self.now_ms();
        let msg = NewMessage {
            stream,
            id: ids::message_id(now),
            from: from.to_string(),
            ts: now,
            body,
            receipt: false,
            idem,
            session_seq: None,
        };
        let out = self.inner.store.append(msg).await;
        let out = self.count_append(out)?;
        Ok(self.published(out, user))
    }

    pub(crate) fn count_append(
        &self,
        r: Result<AppendOutcome, StoreError>,
    ) -> Result<AppendOutcome, StoreError> {
        match &r {
            Ok(AppendOutcome::Stored(m)) => {
                debug!(msg_id = %m.id, s = %m.stream, o = m.offset, from = %m.from,
                    dup = false, "pub accepted");
                self.inner.metrics.publishes.inc();
                if self.append_failing().is_some() {
                    info!("store accepts messages again");
                    *self.append_failing() = None;
                }
            }
            Ok(AppendOutcome::Duplicate { id, stream, offset }) => {
                debug!(msg_id = %id, s = %stream, o = offset, dup = true, "pub accepted");
                self.inner.metrics.publish_duplicates.inc();
            }
            Err(e) => {
                self.inner.metrics.store_failures.inc();
                *self.append_failing() = Some(e.to_string());
            }
        }
        r
    }

    pub(crate) fn published(&self, out: AppendOutcome, user: Option<&str>) -> Published {
        let online = user.map(|u| self.online(u));
        match out {
            AppendOutcome::Stored(m) => Published {
                id: m.id.clone(),
                s: m.stream.clone(),
                o: m.offset,
                dup: false,
                online,
            },
            AppendOutcome::Duplicate { id, stream, offset } => Published {
                id,
                s: stream,
                o: offset,
                dup: true,
                online,
            },
        }
    }

    /// Sessions (optionally of one uid), connected and disconnected.
    pub fn sessions(&self, uid: Option<&str>) -> Vec<SessionInfo> {
        let mut out: Vec<SessionInfo> = self
            .directory()
            .all()
            .iter()
            .filter(|s| uid.is_none_or(|u| s.uid == u))
            .map(|s| {
                let g = s.lock();
                SessionInfo {
                    id: s.id.clone(),
                    uid: s.uid.clone(),
                    device: s.device.clone(),
                    state: g.state.as_str(),
                    conn: g.conn.as_ref().map(|c| c.conn_id.clone()),
                    addr: g.conn.as_ref().map(|c| c.addr.clone()),
                    created_ms: s.created_ms,
                    last_seen_ms: g.last_seen_ms,
                    acked_seq: g.acked_seq,
                    reconnect_timeout_ms: g.reconnect_timeout_ms,
                    subs: g.subs.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.uid, &a.device, a.created_ms).cmp(&(&b.uid, &b.device, b.created_ms))
        });
        out
    }

    /// Ends a session from the API: its connection gets `evicted` `kicked`. False if unknown.
    pub async fn kick(&self, id: &str, by_addr: &str) -> bool {
        let Some(uid) = self.directory().get(id).map(|s| s.uid.clone()) else {
            return false;
        };
        let _serial = self.directory().lock_uid(&uid).await;
        let by = EvictedBy {
            conn: None,
            addr: Some(by_addr.to_string()),
        };
        let (device, conn, addr) = self
            .directory()
            .get(id)
            .map(|s| {
                let g = s.lock();
                let (c, a) = g
                    .conn
                    .as_ref()
                    .map(|c| (c.conn_id.clone(), c.addr.clone()))
                    .unwrap_or_default();
                (s.device.clone(), c, a)
            })
            .unwrap_or_default();
        let done = self.evict(id, EvictReason::Kicked, by);
        if done {
            info!(event = "kick", uid = %uid, device = %device, session = %id, conn = %conn,
                addr = %addr, reason = "kicked", by = %by_addr, "session kicked");
            self.record_event(
                "kick",
                Some(&uid),
                None,
                Some(id),
                None,
                serde_json::json!({"by": by_addr}),
            );
        }
        done
    }

    /// Periodic upkeep: expire sessions past their reconnect window, persist moved channel
    /// positions, and (when `trim`) apply retention.
    pub async fn tick(&self, trim: bool) {
        let now = self.now_ms();
        let (expired, dirty) = {
            self.directory()
                .purge_tombstones(now, self.inner.cfg.retention.tombstone_ms);
            let mut expired = Vec::new();
            let mut dirty = Vec::new();
            for s in self.directory().all() {
                let g = s.lock();
                if g.state == SessionState::Disconnected
                    && now.saturating_sub(g.last_seen_ms) >= g.reconnect_timeout_ms
                {
                    expired.push(s.clone());
                }
                if g.dirty {
                    dirty.push(s.clone());
                }
            }
            (expired, dirty)
        };
        for s in expired {
            info!(uid = %s.uid, device = %s.device, session = %s.id, "session expired (reconnect window passed)");
            self.close(&s, "expired", None);
        }
        for s in dirty {
            self.persist(&s).await;
        }
        // Delivery records and ack cursor moves the store holds back reach the disk at least
        // once per tick.
        if let Err(err) = self.inner.store.barrier().await {
            debug!(%err, "store barrier failed");
        }
        if trim {
            match self.inner.store.trim(now, &self.inner.cfg.retention).await {
                Ok(t) if !t.is_empty() => {
                    for x in &t {
                        self.inner.streams.trimmed(&x.stream, x.first);
                    }
                    let removed: u64 = t.iter().map(|t| t.removed).sum();
                    info!(streams = t.len(), removed, "retention trimmed messages");
                }
                Ok(_) => {}
                Err(err) => warn!(%err, "retention trim failed"),
            }
        }
    }

    /// Stops accepting connections and tells every attached connection to close (1001). The
    /// sessions stay resumable.
    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        for s in self.directory().all() {
            if let Some(c) = &s.lock().conn {
                let _ = c.control.send(Control::Shutdown);
            }
        }
    }

    /// Persists every session and closes the store. Call after connections drained.
    pub async fn close_store(&self) -> Result<(), StoreError> {
        self.settle(Duration::from_secs(10)).await;
        for s in self.directory().all() {
            {
                let mut g = s.lock();
                if g.state == SessionState::Connected {
                    g.state = SessionState::Disconnected;
                    g.last_seen_ms = self.now_ms();
                }
            }
            self.persist(&s).await;
        }
        self.inner.store.close().await
    }

    pub(crate) fn streams(&self) -> &Arc<Streams> {
        &self.inner.streams
    }

    /// Ensures `key` is watched and its newest offset known; returns that offset.
    pub(crate) async fn watch(
        &self,
        key: &str,
        watcher: u64,
        wake: Arc<tokio::sync::Notify>,
    ) -> Result<u64, StoreError> {
        if self.inner.streams.watch(key, watcher, wake) {
            let b = self.inner.store.bounds(key).await?;
            self.inner.streams.loaded(key, b.last);
        }
        Ok(self.inner.streams.last(key).unwrap_or(0))
    }

    /// The client-visible name of a stream key.
    pub fn client_stream(key: &str) -> &str {
        client_name(key)
    }
}

/// A token bound to a device (`device` claim) resumes only that device's sessions.
fn device_allowed(identity: &Identity, s: &SessionShared) -> bool {
    identity.device.as_deref().is_none_or(|d| d == s.device)
}

/// Applies a resuming token's grants to the session: ends the subscriptions its `chans.sub`
/// no longer allows (before the welcome lists them or delivery resumes) and returns their
/// channel names, for the `sub_revoked` frames. The record is re-persisted by `attach`.
fn revoke_subs(s: &SessionShared, grants: &ChannelGrants) -> Vec<String> {
    let mut g = s.lock();
    let revoked: Vec<String> = g
        .subs
        .keys()
        .filter(|chan| !grants.may_subscribe(chan))
        .cloned()
        .collect();
    for chan in &revoked {
        g.subs.remove(chan);
        g.sub_start.remove(chan);
    }
    revoked
}

fn evicted(reason: EvictReason, t: &Tombstone) -> ResumeLookup {
    ResumeLookup::Evicted(Evicted {
        reason,
        by: EvictedBy {
            conn: t.by_conn.clone(),
            addr: None,
        },
    })
}
