//! Engine settings. The binary maps its TOML/env configuration onto [`EngineConfig`]; the
//! engine never reads files or the environment itself.

use serde::{Deserialize, Serialize};

pub use herald_store::{Durability, Retention};

/// How logins for the same uid coexist (`identity.policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityPolicy {
    /// One session per (uid, device), up to `max_devices` per uid.
    #[default]
    Multi,
    /// One session per uid: a new login evicts the old one (`replaced`).
    Single,
    /// A login for a uid with a connected session is refused (`identity_in_use`).
    RejectNew,
}

impl IdentityPolicy {
    pub const NAMES: &'static str = "multi | single | reject_new";
}

/// Where a device seen for the first time starts reading its inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NewDeviceStart {
    /// The oldest retained inbox message.
    #[default]
    Oldest,
    /// Only messages stored after the device first connects.
    Latest,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub identity_policy: IdentityPolicy,
    pub max_devices: u32,
    /// Upper bound for a session's reconnect window; 0 ends sessions at disconnect.
    pub reconnect_timeout_ms: u64,
    pub heartbeat_ms: u64,
    pub hello_timeout_ms: u64,
    /// Unacknowledged deliveries per session before the server waits for acks.
    pub max_inflight: u64,
    pub max_bad_frames: u32,
    pub max_frame_bytes: u64,
    pub max_body_bytes: u64,
    pub new_device_start: NewDeviceStart,
    pub retention: Retention,
    /// Recent messages kept in memory per stream, so live fan-out does not read disk.
    pub tail_cache_messages: usize,
    /// Requests (`pub`, `sub`, `unsub`) per second per connection; 0 = unlimited.
    pub requests_per_sec: u32,
    /// Requests a connection may send at once above the steady rate.
    pub request_burst: u32,
    /// Consecutive rate-limited requests after which the connection is closed (4029).
    pub rate_limit_strikes: u32,
    /// `pub` requests per second per uid, over all its connections; 0 = unlimited.
    pub publishes_per_uid_per_sec: u32,
    /// New sessions (logins that are not resumes) per minute per uid; 0 = unlimited.
    pub sessions_per_uid_per_min: u32,
    /// Channels one session may be subscribed to at once; 0 = unlimited.
    pub max_subs_per_session: u32,
    /// Accept `hello.uid` without a token.
    pub dev: bool,
    /// Webhooks recorded events are queued for (in the outbox, with the event).
    pub webhooks: Vec<crate::webhooks::WebhookRoute>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            identity_policy: IdentityPolicy::Multi,
            max_devices: 10,
            reconnect_timeout_ms: 60_000,
            heartbeat_ms: 25_000,
            hello_timeout_ms: 10_000,
            max_inflight: 1024,
            max_bad_frames: 10,
            max_frame_bytes: 1024 * 1024,
            max_body_bytes: 64 * 1024,
            new_device_start: NewDeviceStart::Oldest,
            retention: Retention {
                channel_max_messages: 10_000,
                channel_max_age_ms: 24 * 3600 * 1000,
                inbox_max_age_ms: 7 * 24 * 3600 * 1000,
                dedupe_window_ms: 24 * 3600 * 1000,
                tombstone_ms: 24 * 3600 * 1000,
            },
            tail_cache_messages: 1024,
            requests_per_sec: 1000,
            request_burst: 2000,
            rate_limit_strikes: 100,
            publishes_per_uid_per_sec: 1000,
            sessions_per_uid_per_min: 60,
            max_subs_per_session: 1000,
            dev: false,
            webhooks: Vec::new(),
        }
    }
}
