//! herald-client: the Rust SDK for herald.
//!
//! A [`Client`] keeps one logical session with a herald server across network cuts, server
//! restarts and failed resumes:
//! - requests (`publish`, `subscribe`, `unsubscribe`) are buffered until the server answers, and
//!   resent after a reconnect; every `publish` carries an idempotency id, so it is applied once;
//! - deliveries reach the application exactly once, in per-stream order (offsets at or below the
//!   last one handed on are dropped);
//! - every state change is reported on [`Client::events`], including what could not be
//!   recovered (`ResumeFailed`, `Gap`, `Evicted`).
//!
//! See `docs/client.md` for states, defaults and guarantees.
//!
//! ```no_run
//! # async fn run() -> Result<(), herald_client::Error> {
//! use herald_client::Client;
//! let client = Client::builder("ws://127.0.0.1:7070/v1/ws").dev_uid("alice").connect().await?;
//! let mut deliveries = client.deliveries().expect("taken once");
//! client.subscribe("room1", None).await?;
//! client.publish("chan:room1", serde_json::json!({"text": "hi"})).await?;
//! while let Some(d) = deliveries.recv().await {
//!     println!("{} #{}: {}", d.stream, d.offset, d.body);
//! }
//! # Ok(()) }
//! ```

mod backoff;
mod dedupe;
mod device;
mod driver;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

pub use backoff::ReconnectStrategy;
pub use device::{DeviceStore, FileDeviceStore, MemoryDeviceStore};
pub use herald_protocol::{EvictReason, EvictedBy};

/// Errors returned by the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The first connection could not be made (network, handshake, or no `welcome`).
    #[error("could not connect: {0}")]
    Connect(String),
    /// The server refused the login (bad token, `identity_in_use`, …); the client stopped.
    #[error("login refused: {code}: {msg}")]
    Refused { code: String, msg: String },
    /// The server answered the request with `err`.
    #[error("server error {code}: {msg}")]
    Server { code: String, msg: String },
    /// The session was evicted (`replaced`, `kicked`, `device_limit`, `resumed_elsewhere`):
    /// the client does not reconnect on its own, and every request fails with this error.
    #[error("evicted ({}) by {}: this client stopped and will not reconnect on its own", reason.as_str(), describe_by(by))]
    Evicted { reason: EvictReason, by: EvictedBy },
    /// [`Client::close`] was called (or the client stopped for another reason).
    #[error("client closed")]
    Closed,
    /// A bad argument (target, channel name).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The device store failed.
    #[error("device store: {0}")]
    DeviceStore(String),
}

fn describe_by(by: &EvictedBy) -> String {
    match (&by.conn, &by.addr) {
        (Some(c), Some(a)) => format!("connection {c} from {a}"),
        (Some(c), None) => format!("connection {c}"),
        (None, Some(a)) => a.clone(),
        (None, None) => "unknown".into(),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The server's confirmation that a published message is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The message id (`m_…`).
    pub id: String,
    /// The stream it was stored in: `inbox` for a user target, `chan:<name>` for a channel.
    pub stream: String,
    /// Its offset in that stream.
    pub offset: u64,
    /// For user targets: how many of the recipient's sessions were connected.
    pub online: Option<u32>,
    /// True if the server had already stored this idempotency id (a resend).
    pub dup: bool,
}

/// The answer to a subscribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    /// `chan:<name>`.
    pub stream: String,
    /// The channel's last offset when the subscription started.
    pub offset: u64,
}

/// A message delivered to this client.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// `inbox` or `chan:<name>`.
    pub stream: String,
    pub offset: u64,
    pub id: String,
    pub from: String,
    pub ts: u64,
    pub body: serde_json::Value,
}

/// Connection states and announcements. Nothing is swallowed: every disconnect, failed resume,
/// gap and eviction appears here.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectionEvent {
    /// A connection attempt starts.
    Connecting,
    /// A `welcome` arrived; `resumed` says whether the previous session continued.
    Connected { resumed: bool },
    /// The connection was lost (`reason`: close code, I/O error, heartbeat timeout …).
    Disconnected { reason: String },
    /// The client waits `next_in` before reconnect attempt `attempt` (1-based).
    Reconnecting { attempt: u32, next_in: Duration },
    /// The server could not resume the session (`expired`, `unknown`, `bad_key`): a new session
    /// was made, the client resubscribed every channel from the last offset it handed on and
    /// resent every unanswered request.
    ResumeFailed { reason: String },
    /// Offsets `from..=to` of `stream` cannot be delivered (trimmed by retention).
    Gap { stream: String, from: u64, to: u64 },
    /// The session was evicted; the client stopped and does not reconnect.
    Evicted { reason: EvictReason, by: EvictedBy },
    /// The client stopped (after `close()`, an eviction or a refused login). Always the last event.
    Closed,
}

/// Builds a [`Client`].
pub struct ClientBuilder {
    pub(crate) url: String,
    pub(crate) token: Option<String>,
    pub(crate) uid: Option<String>,
    pub(crate) device_store: Arc<dyn DeviceStore>,
    pub(crate) reconnect: ReconnectStrategy,
    pub(crate) reconnect_timeout: Duration,
    pub(crate) recovery_buffer: usize,
    pub(crate) heartbeat_grace: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) ack_interval: Duration,
    pub(crate) ack_batch: usize,
}

impl ClientBuilder {
    /// Authenticate with a JWT.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Log in as `uid` without a token (servers in dev mode only).
    pub fn dev_uid(mut self, uid: impl Into<String>) -> Self {
        self.uid = Some(uid.into());
        self
    }

    /// Where the device id is loaded from and saved to (default: memory only, so the server
    /// allocates a device per process). Use [`FileDeviceStore`] to keep it across restarts.
    pub fn device_store(mut self, store: impl DeviceStore) -> Self {
        self.device_store = Arc::new(store);
        self
    }

    /// A fixed device id (shorthand for a [`MemoryDeviceStore`] holding it).
    pub fn device(self, device: impl Into<String>) -> Self {
        self.device_store(MemoryDeviceStore::with(device))
    }

    /// The delay before each reconnect attempt (default: exponential backoff, full jitter,
    /// 100 ms → 5 s).
    pub fn reconnect(mut self, strategy: ReconnectStrategy) -> Self {
        self.reconnect = strategy;
        self
    }

    /// How long the session may stay disconnected and still be resumed (default 60 s; the
    /// server may grant less). `Duration::ZERO` disables resume: every reconnect starts a new
    /// session and recovers as after a failed resume.
    pub fn reconnect_timeout(mut self, d: Duration) -> Self {
        self.reconnect_timeout = d;
        self
    }

    /// How many unanswered requests the client keeps for resending (default 128, at least 1).
    /// When it is full, `publish`, `subscribe` and `unsubscribe` wait; nothing is dropped.
    pub fn recovery_buffer(mut self, n: usize) -> Self {
        self.recovery_buffer = n.max(1);
        self
    }

    /// Silence allowed on top of `welcome.heartbeat_ms` before the connection is declared dead
    /// and replaced (default 10 s, as PROTOCOL.md).
    pub fn heartbeat_grace(mut self, d: Duration) -> Self {
        self.heartbeat_grace = d;
        self
    }

    /// Limit for one connection attempt, from TCP connect to `welcome` (default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Acks are flushed at most this long after the application received a message
    /// (default 50 ms).
    pub fn ack_interval(mut self, d: Duration) -> Self {
        self.ack_interval = d.max(Duration::from_millis(1));
        self
    }

    /// Acks are flushed at once when this many messages were received since the last flush
    /// (default 64).
    pub fn ack_batch(mut self, n: usize) -> Self {
        self.ack_batch = n.max(1);
        self
    }

    /// Connects; returns once the first `welcome` arrived. A failure of this first attempt is
    /// returned (no retry), so a wrong URL or credential surfaces at once.
    pub async fn connect(self) -> Result<Client> {
        if self.token.is_none() && self.uid.is_none() {
            return Err(Error::Invalid("a token or a dev uid is required".into()));
        }
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (del_tx, del_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let acks = Arc::new(AckState::default());
        let shared = Arc::new(Shared {
            stopped: Mutex::new(None),
            buffer: Arc::new(Semaphore::new(self.recovery_buffer)),
            session: Mutex::new(None),
        });
        let (ready_tx, ready_rx) = oneshot::channel();
        let ack_batch = self.ack_batch;
        let recovery_buffer = self.recovery_buffer;
        let driver = driver::Driver::new(self, shared.clone(), acks.clone(), del_tx, ev_tx, cmd_rx);
        tokio::spawn(driver.run(ready_tx));
        match ready_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Error::Closed),
        }
        Ok(Client {
            inner: Arc::new(Inner {
                recovery_buffer,
                cmd: cmd_tx,
                shared,
                deliveries: Mutex::new(Some(Deliveries {
                    rx: del_rx,
                    acks,
                    ack_batch,
                })),
                events: Mutex::new(Some(Events { rx: ev_rx })),
            }),
        })
    }
}

/// Information about the current session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub session: String,
    pub uid: String,
    pub device: String,
    pub conn: String,
}

pub(crate) struct Shared {
    /// Why the client stopped, once it has.
    pub(crate) stopped: Mutex<Option<Error>>,
    /// The recovery buffer: one permit per unanswered request.
    pub(crate) buffer: Arc<Semaphore>,
    pub(crate) session: Mutex<Option<SessionInfo>>,
}

impl Shared {
    pub(crate) fn stopped(&self) -> Option<Error> {
        self.stopped.lock().ok().and_then(|s| s.clone())
    }
}

/// What the application has received, per stream, and not yet acknowledged.
#[derive(Default)]
pub(crate) struct AckState {
    pub(crate) received: Mutex<AckMap>,
    pub(crate) flush: Notify,
}

#[derive(Default)]
pub(crate) struct AckMap {
    /// Last offset received by the app per stream, and whether it still needs sending.
    pub(crate) pos: std::collections::HashMap<String, (u64, bool)>,
    pub(crate) since_flush: usize,
}

/// The deliveries, exactly once and in per-stream order. Receiving a message marks it for
/// acknowledgement (see [`ClientBuilder::ack_interval`]).
pub struct Deliveries {
    rx: mpsc::UnboundedReceiver<Delivery>,
    acks: Arc<AckState>,
    ack_batch: usize,
}

impl Deliveries {
    /// The next delivery; `None` once the client stopped and every delivery was taken.
    pub async fn recv(&mut self) -> Option<Delivery> {
        let d = self.rx.recv().await?;
        self.taken(&d);
        Some(d)
    }

    /// The next delivery if one is ready.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        let d = self.rx.try_recv().ok()?;
        self.taken(&d);
        Some(d)
    }

    fn taken(&self, d: &Delivery) {
        let Ok(mut m) = self.acks.received.lock() else {
            return;
        };
        m.pos.insert(d.stream.clone(), (d.offset, true));
        m.since_flush += 1;
        if m.since_flush >= self.ack_batch {
            self.acks.flush.notify_one();
        }
    }
}

impl futures_util::Stream for Deliveries {
    type Item = Delivery;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(d)) => {
                self.taken(&d);
                Poll::Ready(Some(d))
            }
            other => other,
        }
    }
}

/// The connection events (see [`ConnectionEvent`]).
pub struct Events {
    rx: mpsc::UnboundedReceiver<ConnectionEvent>,
}

impl Events {
    /// The next event; `None` after `Closed`.
    pub async fn recv(&mut self) -> Option<ConnectionEvent> {
        self.rx.recv().await
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Option<ConnectionEvent> {
        self.rx.try_recv().ok()
    }
}

impl futures_util::Stream for Events {
    type Item = ConnectionEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ConnectionEvent>> {
        self.rx.poll_recv(cx)
    }
}

pub(crate) enum Request {
    Pub {
        to: String,
        body: String,
        id: String,
        receipt: bool,
    },
    Sub {
        chan: String,
        from: Option<u64>,
    },
    Unsub {
        chan: String,
    },
}

pub(crate) enum Answer {
    Pub(Published),
    Sub(Subscribed),
    Unsub,
}

pub(crate) enum Command {
    Request {
        req: Request,
        reply: oneshot::Sender<Result<Answer>>,
        permit: tokio::sync::OwnedSemaphorePermit,
    },
    Close {
        done: oneshot::Sender<()>,
    },
}

struct Inner {
    recovery_buffer: usize,
    cmd: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    deliveries: Mutex<Option<Deliveries>>,
    events: Mutex<Option<Events>>,
}

/// A herald client. Cheap to clone; all clones share one session.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Starts building a client for `url` (e.g. `ws://host:7070/v1/ws`).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            token: None,
            uid: None,
            device_store: Arc::new(MemoryDeviceStore::default()),
            reconnect: ReconnectStrategy::default(),
            reconnect_timeout: Duration::from_secs(60),
            recovery_buffer: 128,
            heartbeat_grace: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            ack_interval: Duration::from_millis(50),
            ack_batch: 64,
        }
    }

    /// Publishes `body` to `to` (`user:<uid>` or `chan:<name>`); resolves once the server says
    /// the message is durable. Waits while the recovery buffer is full.
    pub async fn publish(&self, to: &str, body: serde_json::Value) -> Result<Published> {
        self.publish_with(to, body, false).await
    }

    /// Like [`Client::publish`], asking for delivery receipts (user targets).
    pub async fn publish_with_receipt(
        &self,
        to: &str,
        body: serde_json::Value,
    ) -> Result<Published> {
        self.publish_with(to, body, true).await
    }

    async fn publish_with(
        &self,
        to: &str,
        body: serde_json::Value,
        receipt: bool,
    ) -> Result<Published> {
        herald_protocol::Target::parse(to).map_err(|e| Error::Invalid(e.to_string()))?;
        let req = Request::Pub {
            to: to.to_string(),
            body: body.to_string(),
            id: new_id(),
            receipt,
        };
        match self.request(req).await? {
            Answer::Pub(p) => Ok(p),
            _ => Err(Error::Server {
                code: "internal".into(),
                msg: "unexpected answer to pub".into(),
            }),
        }
    }

    /// Subscribes to channel `chan`. `from: None` = live from now; `Some(n)` = replay every
    /// retained message after offset `n` (a `Gap` event announces what was trimmed).
    pub async fn subscribe(&self, chan: &str, from: Option<u64>) -> Result<Subscribed> {
        herald_protocol::names::validate_name("channel", chan)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        match self
            .request(Request::Sub {
                chan: chan.to_string(),
                from,
            })
            .await?
        {
            Answer::Sub(s) => Ok(s),
            _ => Err(Error::Closed),
        }
    }

    /// Unsubscribes from channel `chan`.
    pub async fn unsubscribe(&self, chan: &str) -> Result<()> {
        match self
            .request(Request::Unsub {
                chan: chan.to_string(),
            })
            .await?
        {
            Answer::Unsub => Ok(()),
            _ => Err(Error::Closed),
        }
    }

    async fn request(&self, req: Request) -> Result<Answer> {
        if let Some(e) = self.inner.shared.stopped() {
            return Err(e);
        }
        let permit = self
            .inner
            .shared
            .buffer
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| self.inner.shared.stopped().unwrap_or(Error::Closed))?;
        if let Some(e) = self.inner.shared.stopped() {
            return Err(e);
        }
        let (reply, rx) = oneshot::channel();
        self.inner
            .cmd
            .send(Command::Request { req, reply, permit })
            .map_err(|_| self.inner.shared.stopped().unwrap_or(Error::Closed))?;
        rx.await
            .map_err(|_| self.inner.shared.stopped().unwrap_or(Error::Closed))?
    }

    /// The deliveries stream. It can be taken once; later calls return `None`.
    pub fn deliveries(&self) -> Option<Deliveries> {
        self.inner.deliveries.lock().ok()?.take()
    }

    /// The connection event stream. It can be taken once; later calls return `None`.
    pub fn events(&self) -> Option<Events> {
        self.inner.events.lock().ok()?.take()
    }

    /// The current session (id, uid, device, connection).
    pub fn session(&self) -> Option<SessionInfo> {
        self.inner.shared.session.lock().ok()?.clone()
    }

    /// How many requests are buffered without an answer (at most the recovery buffer size).
    pub fn unanswered(&self) -> usize {
        self.inner.recovery_buffer - self.inner.shared.buffer.available_permits()
    }

    /// Why the client stopped, if it has (`Evicted`, `Closed`, `Refused`).
    pub fn stopped(&self) -> Option<Error> {
        self.inner.shared.stopped()
    }

    /// Sends `bye` (the server ends the session at once) and stops. Unanswered requests fail
    /// with [`Error::Closed`].
    pub async fn close(&self) {
        let (done, rx) = oneshot::channel();
        if self.inner.cmd.send(Command::Close { done }).is_ok() {
            let _ = rx.await;
        }
    }
}

/// A random idempotency id: 128 random bits in hex.
pub(crate) fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
