//! The records a store keeps. Plain data: no behaviour beyond small helpers.

use std::collections::BTreeMap;

pub use herald_protocol::Body;
use serde::{Deserialize, Serialize};

/// The stream key of a user's inbox (`inbox:<uid>`). Names cannot contain `:`, so keys are
/// unambiguous.
pub fn inbox_key(uid: &str) -> String {
    format!("inbox:{uid}")
}

/// The stream key of a channel (`chan:<name>`), which is also its wire name.
pub fn chan_key(chan: &str) -> String {
    format!("chan:{chan}")
}

/// A message to append. Everything that must survive with the message is in it: the store
/// writes it as one record (the idempotency key and the sender's `seq` are columns of the
/// message row, not rows of their own).
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Stream key: `inbox:<uid>` or `chan:<name>`.
    pub stream: String,
    /// Server-assigned message id (`m_…`), unique across streams.
    pub id: String,
    /// Sender uid (`$herald` for receipts, the API caller's `from` for HTTP publishes).
    pub from: String,
    /// Acceptance time, ms since the Unix epoch.
    pub ts: u64,
    /// The body, raw JSON, stored byte for byte.
    pub body: Body,
    /// The sender asked for receipts.
    pub receipt: bool,
    /// Idempotency key, scoped to `from`.
    pub idem: Option<String>,
    /// The sender session and request `seq`, recorded as processed in the same commit.
    pub session_seq: Option<(String, u64)>,
}

/// A stored message. Shared (`Arc`) between the tail cache and every delivery of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub stream: String,
    pub offset: u64,
    pub id: String,
    pub from: String,
    pub ts: u64,
    pub body: Body,
    pub receipt: bool,
}

/// What `append` did.
#[derive(Debug, Clone)]
pub enum AppendOutcome {
    /// Stored now, at a new offset.
    Stored(std::sync::Arc<StoredMessage>),
    /// The idempotency key was known: nothing was stored; this is the original.
    Duplicate {
        id: String,
        stream: String,
        offset: u64,
    },
}

/// The offsets a stream holds: `first..=last`; empty when `first > last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StreamBounds {
    /// Oldest retained offset (`last + 1` when everything was trimmed or nothing stored).
    pub first: u64,
    /// Newest offset ever assigned (0 for a stream never written).
    pub last: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Connected,
    Disconnected,
    Closed,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Connected => "connected",
            SessionState::Disconnected => "disconnected",
            SessionState::Closed => "closed",
        }
    }
}

/// A session as persisted, so it resumes after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    /// The resume secret.
    pub key: String,
    pub uid: String,
    pub device: String,
    pub created_ms: u64,
    /// Last frame received, or the disconnect time once disconnected.
    pub last_seen_ms: u64,
    /// Highest client `seq` processed.
    pub acked_seq: u64,
    pub reconnect_timeout_ms: u64,
    pub state: SessionState,
    /// Why a closed session ended: `expired`, `bye`, or an eviction reason.
    pub closed_reason: Option<String>,
    /// When closed, who closed it (for `evicted.by` on a late resume).
    pub closed_by: Option<String>,
    /// Channel name → acknowledged offset.
    pub subs: BTreeMap<String, u64>,
    /// Channel name → the offset its subscription started after (messages at or below it were
    /// never meant for this session). Absent in records written before it existed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sub_start: BTreeMap<String, u64>,
}

/// A device's durable inbox position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCursor {
    pub uid: String,
    pub device: String,
    /// Highest inbox offset acknowledged.
    pub offset: u64,
    /// When the cursor last moved (or the device was first seen).
    pub updated_ms: u64,
    /// The cursor the device started with: inbox messages at or below it were never meant for
    /// it (`inbox.new_device_start`). `None` for devices recorded before schema version 2.
    #[serde(default)]
    pub start_offset: Option<u64>,
    /// When the device was first seen. `None` for devices recorded before schema version 2.
    #[serde(default)]
    pub created_ms: Option<u64>,
}

/// What is left of an inbox message once retention removed it: enough to say what it was
/// and when it went, so a trace can explain why a device never got it. Kept for
/// `retention.tombstone_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrimmedMessage {
    pub id: String,
    pub stream: String,
    pub offset: u64,
    pub from: String,
    /// Acceptance time.
    pub ts: u64,
    /// When retention removed it.
    pub trimmed_ms: u64,
}

/// A run of inbox messages written to one device's connection in one delivery batch.
///
/// One record per batch, not per message: the trace reads "sent" from the ranges covering an
/// offset (a redelivery is one more covering range), and nothing waits on it being durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRange {
    pub uid: String,
    pub device: String,
    /// The session whose connection sent it.
    pub session: String,
    /// Stream key (`inbox:<uid>`).
    pub stream: String,
    /// First and last offset sent, inclusive (`first <= last`).
    pub first: u64,
    pub last: u64,
    pub ts: u64,
}

/// Longest run one [`SentRange`] record covers: the store splits longer ones, so that the
/// records covering an offset `o` all end within `o..o + SENT_RANGE_MAX` (a bounded lookup).
pub const SENT_RANGE_MAX: u64 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Sent,
    Acked,
}

/// One message's delivery to one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub msg_id: String,
    pub uid: String,
    pub device: String,
    /// The session that last sent it.
    pub session: String,
    pub state: DeliveryState,
    pub first_sent_ms: u64,
    pub last_sent_ms: u64,
    /// How many times it was written to a connection (more than 1 = redelivered).
    pub attempts: u32,
    pub acked_ms: Option<u64>,
}

/// An event for the feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvent {
    pub ts: u64,
    /// `eviction`, `resume_failed`, `gap`, `kick`, …
    pub kind: String,
    pub uid: Option<String>,
    pub device: Option<String>,
    pub session: Option<String>,
    pub conn: Option<String>,
    /// Event-specific details (reason, by, range …).
    pub data: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing id (a cursor for followers).
    pub id: u64,
    #[serde(flatten)]
    pub event: NewEvent,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    pub kind: Option<String>,
    pub uid: Option<String>,
    pub since_ms: Option<u64>,
    /// Only events with id greater than this.
    pub after_id: Option<u64>,
    pub limit: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchQuery {
    pub stream: Option<String>,
    pub from_uid: Option<String>,
    /// Only offsets greater than this (with `stream`).
    pub after: Option<u64>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub limit: usize,
}

/// Retention settings, all in milliseconds or counts; 0 disables a rule (the default
/// disables all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    pub channel_max_messages: u64,
    pub channel_max_age_ms: u64,
    pub inbox_max_age_ms: u64,
    /// Idempotency keys older than this are forgotten.
    pub dedupe_window_ms: u64,
    /// Events and closed-session tombstones older than this are purged.
    pub tombstone_ms: u64,
}

/// A stream whose oldest retained offset moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trimmed {
    pub stream: String,
    /// New oldest retained offset (`last + 1` if the stream is now empty).
    pub first: u64,
    pub removed: u64,
}

/// How writes are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Each commit is fsynced before it is acknowledged: survives power loss.
    #[default]
    Fsync,
    /// Committed to the OS page cache: survives a process crash, not a power loss.
    Os,
}

/// A webhook delivery waiting in the outbox: one event for one webhook. Written in the same
/// commit as its event, removed once delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxDelivery {
    /// Increasing id of the delivery (not the event's).
    pub id: u64,
    pub event_id: u64,
    /// The event's kind (`eviction`, `gap`, …).
    pub kind: String,
    /// Which webhook: its URL, as configured when the event was recorded.
    pub target: String,
    /// The exact request body: the event as JSON, as in the event feed.
    pub body: String,
    /// When the event was recorded, ms since the Unix epoch.
    pub created_ms: u64,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Not to be tried before this time.
    pub next_attempt_ms: u64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// The outbox at a glance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxStatus {
    /// Deliveries not yet made.
    pub pending: u64,
    /// The earliest `next_attempt_ms` among them.
    pub next_attempt_ms: Option<u64>,
}
