//! The server's configuration: its keys and defaults, where values come from, and how they are
//! checked.
//!
//! Sources, lowest to highest precedence:
//! 1. built-in defaults ([`Config::default`], the same values as [`herald_core::EngineConfig`]);
//! 2. the TOML file given with `--config` (or `HERALD_CONFIG`);
//! 3. environment variables `HERALD_<SECTION>__<KEY>` (upper or lower case, two underscores
//!    between section and key), e.g. `HERALD_SESSION__HEARTBEAT_MS=30000`. Lists are
//!    comma-separated (`HERALD_API__KEYS=k1,k2`); an empty value unsets an optional key
//!    (`HERALD_AUTH__HS256_SECRET=`). Variables that start with `HERALD_` but contain no `__`
//!    (`HERALD_CONFIG`, `HERALD_SERVER`, …) are not config keys and are ignored;
//! 4. the `serve` flags `--listen`, `--data-dir`, `--dev`.
//!
//! Every key is described once, in [`KEYS`]: its type for environment parsing, its accepted
//! values for error messages and its comment for [`defaults_toml`]. Unknown sections and keys,
//! values of the wrong type and broken relations between keys all stop the start; every problem
//! is reported (not just the first), each naming the key, the value, where it came from and what
//! is accepted. Secrets (`auth.hs256_secret`, `api.keys`) are never printed.
//!
//! This module does no authentication itself: [`crate::auth::Authenticator`] is built from
//! [`AuthSection`] and [`ApiSection`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use herald_core::config::{Durability, Retention};
use herald_core::webhooks::{ALL_KINDS, EVENT_KINDS};
use herald_core::{EngineConfig, IdentityPolicy, NewDeviceStart, WebhookRoute};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::auth::MIN_HS256_SECRET_BYTES;
use crate::cli::ServeArgs;

/// Largest accepted `auth.leeway_ms`: more than this would make `exp` meaningless.
pub(crate) const MAX_LEEWAY_MS: u64 = 5 * 60 * 1000;
/// Smallest accepted `limits.max_frame_bytes`: a `hello` carrying a large token must fit.
pub(crate) const MIN_FRAME_BYTES: u64 = 4096;
/// Highest `limits.max_json_depth`: serde_json (and most parsers) refuse to read deeper values.
pub(crate) const MAX_JSON_DEPTH: u32 = 128;
/// Smallest accepted `session.heartbeat_ms`.
pub(crate) const MIN_HEARTBEAT_MS: u64 = 100;
/// Smallest accepted `retention.trim_interval_ms`.
pub(crate) const MIN_TRIM_INTERVAL_MS: u64 = 100;
/// Smallest accepted `api.events_heartbeat_ms`.
pub(crate) const MIN_EVENTS_HEARTBEAT_MS: u64 = 100;

/// Whether `url` can be a webhook: `http://` with a host. Loopback and private addresses are
/// allowed (the operator configures these URLs, clients cannot).
pub(crate) fn check_webhook_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("is not a URL ({e})"))?;
    match parsed.scheme() {
        "http" => {}
        "https" => {
            return Err("https is not supported by this build (no TLS client); point the webhook at an http:// endpoint, e.g. a local TLS-terminating proxy".into())
        }
        other => return Err(format!("scheme {other}: is not supported; use http://")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "must not carry credentials (user:password@); use the secret and signature instead"
                .into(),
        );
    }
    Ok(())
}

/// The whole configuration. See [`defaults_toml`] for what every key means.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Config {
    pub(crate) server: ServerSection,
    pub(crate) identity: IdentitySection,
    pub(crate) session: SessionSection,
    pub(crate) limits: LimitsSection,
    pub(crate) retention: RetentionSection,
    pub(crate) inbox: InboxSection,
    pub(crate) storage: StorageSection,
    pub(crate) dedupe: DedupeSection,
    pub(crate) auth: AuthSection,
    pub(crate) api: ApiSection,
    pub(crate) tls: TlsSection,
    /// `[[webhooks]]` entries (an array of tables; file only, not the environment).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) webhooks: Vec<WebhookEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ServerSection {
    pub(crate) listen: SocketAddr,
    pub(crate) data_dir: PathBuf,
    pub(crate) dev: bool,
    pub(crate) shutdown_grace_ms: u64,
    pub(crate) max_connections: usize,
    /// Connections per source address (0 = unlimited); trusted proxies are exempt.
    pub(crate) max_connections_per_ip: usize,
    /// Time to send a complete request head (also closes idle keep-alive connections).
    pub(crate) http_header_timeout_ms: u64,
    /// Addresses or CIDR ranges whose `X-Forwarded-For` header names the client.
    pub(crate) trusted_proxies: Vec<String>,
    /// Browser origins allowed to open `/v1/ws` (`*` = any; empty = any in dev, none otherwise).
    pub(crate) allowed_origins: Vec<String>,
    /// Lets dev mode listen on a non-loopback address.
    pub(crate) dev_allow_remote: bool,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: PathBuf::from("./herald-data"),
            dev: false,
            shutdown_grace_ms: 10_000,
            max_connections: 100_000,
            max_connections_per_ip: 1000,
            http_header_timeout_ms: 10_000,
            trusted_proxies: Vec::new(),
            allowed_origins: Vec::new(),
            dev_allow_remote: false,
        }
    }
}

/// Built-in TLS. Both set: the listener speaks only TLS (https://, wss://).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TlsSection {
    /// PEM certificate chain, leaf first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) key: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct IdentitySection {
    pub(crate) policy: IdentityPolicy,
    pub(crate) max_devices: u32,
}

impl Default for IdentitySection {
    fn default() -> Self {
        let e = EngineConfig::default();
        IdentitySection {
            policy: e.identity_policy,
            max_devices: e.max_devices,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct SessionSection {
    pub(crate) reconnect_timeout_ms: u64,
    pub(crate) heartbeat_ms: u64,
    pub(crate) hello_timeout_ms: u64,
    pub(crate) max_inflight: u64,
    pub(crate) max_bad_frames: u32,
    /// Silence tolerated beyond `heartbeat_ms` before a connection is declared dead.
    pub(crate) heartbeat_grace_ms: u64,
}

impl Default for SessionSection {
    fn default() -> Self {
        let e = EngineConfig::default();
        SessionSection {
            reconnect_timeout_ms: e.reconnect_timeout_ms,
            heartbeat_ms: e.heartbeat_ms,
            hello_timeout_ms: e.hello_timeout_ms,
            max_inflight: e.max_inflight,
            max_bad_frames: e.max_bad_frames,
            heartbeat_grace_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LimitsSection {
    pub(crate) max_frame_bytes: u64,
    pub(crate) max_body_bytes: u64,
    /// Deepest nesting of arrays and objects in a body (WebSocket `pub` and HTTP publish).
    pub(crate) max_json_depth: u32,
    /// Outbound frames buffered per connection before it is treated as stalled.
    pub(crate) send_queue_frames: usize,
    /// Initial read buffer per connection (memory per idle connection).
    pub(crate) read_buffer_bytes: u64,
    /// Requests per second per connection; 0 = unlimited.
    pub(crate) requests_per_sec: u32,
    /// Requests above the steady rate a connection may send at once.
    pub(crate) request_burst: u32,
    /// Consecutive rate-limited requests before the connection is closed (4029).
    pub(crate) rate_limit_strikes: u32,
    /// `pub` requests per second per uid over all its connections; 0 = unlimited.
    pub(crate) publishes_per_uid_per_sec: u32,
    /// New sessions per minute per uid; 0 = unlimited.
    pub(crate) sessions_per_uid_per_min: u32,
    /// Channels one session may be subscribed to at once; 0 = unlimited.
    pub(crate) max_subs_per_session: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let e = EngineConfig::default();
        LimitsSection {
            max_frame_bytes: e.max_frame_bytes,
            max_body_bytes: e.max_body_bytes,
            max_json_depth: herald_protocol::decode::DEFAULT_MAX_JSON_DEPTH as u32,
            send_queue_frames: 1024,
            read_buffer_bytes: 4096,
            requests_per_sec: e.requests_per_sec,
            request_burst: e.request_burst,
            rate_limit_strikes: e.rate_limit_strikes,
            publishes_per_uid_per_sec: e.publishes_per_uid_per_sec,
            sessions_per_uid_per_min: e.sessions_per_uid_per_min,
            max_subs_per_session: e.max_subs_per_session,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RetentionSection {
    pub(crate) channel_max_messages: u64,
    pub(crate) channel_max_age_ms: u64,
    pub(crate) inbox_max_age_ms: u64,
    pub(crate) trim_interval_ms: u64,
    /// How long closed sessions and events are kept.
    pub(crate) tombstone_ms: u64,
}

impl Default for RetentionSection {
    fn default() -> Self {
        let r = EngineConfig::default().retention;
        RetentionSection {
            channel_max_messages: r.channel_max_messages,
            channel_max_age_ms: r.channel_max_age_ms,
            inbox_max_age_ms: r.inbox_max_age_ms,
            trim_interval_ms: 60_000,
            tombstone_ms: r.tombstone_ms,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct InboxSection {
    pub(crate) new_device_start: NewDeviceStart,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct StorageSection {
    pub(crate) durability: Durability,
    pub(crate) max_batch: usize,
    /// Database size quota in bytes; 0 = unlimited. Beyond it writes fail with `unavailable`.
    pub(crate) max_db_bytes: u64,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            durability: Durability::Fsync,
            max_batch: 1024,
            max_db_bytes: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct DedupeSection {
    pub(crate) window_ms: u64,
}

impl Default for DedupeSection {
    fn default() -> Self {
        DedupeSection {
            window_ms: EngineConfig::default().retention.dedupe_window_ms,
        }
    }
}

/// Token verification keys. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AuthSection {
    /// HS256 shared secret (at least 32 bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) hs256_secret: Option<String>,
    /// PEM text, or the path of a PEM file: an RSA (RS256) or EC P-256 (ES256) public key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) public_key_pem: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub(crate) leeway_ms: u64,
    /// Required `aud` (unset: not checked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) audience: Option<String>,
    /// Required `iss` (unset: not checked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) issuer: Option<String>,
    /// Longest accepted token lifetime (`exp` − `iat`, or `exp` − now); 0 = unlimited.
    pub(crate) max_token_lifetime_ms: u64,
    /// JWKS document URL for keys chosen by `kid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) jwks_url: Option<String>,
    /// How often the JWKS is fetched again.
    pub(crate) jwks_refresh_ms: u64,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            hs256_secret: None,
            public_key_pem: None,
            leeway_ms: 30_000,
            audience: None,
            issuer: None,
            max_token_lifetime_ms: 24 * 3600 * 1000,
            jwks_url: None,
            jwks_refresh_ms: 300_000,
        }
    }
}

impl fmt::Debug for AuthSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthSection")
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("public_key_pem", &self.public_key_pem)
            .field("leeway_ms", &self.leeway_ms)
            .finish()
    }
}

/// HTTP API keys. `Debug` never shows them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ApiSection {
    pub(crate) keys: Vec<String>,
    /// Interval of keep-alive comments on `GET /v1/events/stream` while no event flows.
    pub(crate) events_heartbeat_ms: u64,
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            keys: Vec::new(),
            events_heartbeat_ms: 15_000,
        }
    }
}

impl fmt::Debug for ApiSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiSection")
            .field("keys", &format_args!("<{} redacted>", self.keys.len()))
            .field("events_heartbeat_ms", &self.events_heartbeat_ms)
            .finish()
    }
}

/// One `[[webhooks]]` entry: where recorded events are POSTed, signed with `secret`.
/// `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookEntry {
    /// `http://host[:port]/path`; also the webhook's identity in the outbox.
    pub(crate) url: String,
    /// Event kinds to send, or `["*"]` for all.
    pub(crate) events: Vec<String>,
    /// HMAC-SHA256 key of the `X-Herald-Signature` header.
    pub(crate) secret: String,
    /// Time allowed for one request, connect to response.
    #[serde(default = "WebhookEntry::default_timeout_ms")]
    pub(crate) timeout_ms: u64,
    /// Delay before the first retry; it doubles with each failure (with jitter).
    #[serde(default = "WebhookEntry::default_retry_initial_ms")]
    pub(crate) retry_initial_ms: u64,
    /// Longest delay between retries.
    #[serde(default = "WebhookEntry::default_retry_max_ms")]
    pub(crate) retry_max_ms: u64,
    /// Failed attempts of one delivery after which a `webhook_failed` event is recorded
    /// (retries go on).
    #[serde(default = "WebhookEntry::default_failed_after_attempts")]
    pub(crate) failed_after_attempts: u32,
}

impl WebhookEntry {
    fn default_timeout_ms() -> u64 {
        5_000
    }
    fn default_retry_initial_ms() -> u64 {
        1_000
    }
    fn default_retry_max_ms() -> u64 {
        300_000
    }
    fn default_failed_after_attempts() -> u32 {
        5
    }
}

impl fmt::Debug for WebhookEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookEntry")
            .field("url", &self.url)
            .field("events", &self.events)
            .field("secret", &"<redacted>")
            .field("timeout_ms", &self.timeout_ms)
            .field("retry_initial_ms", &self.retry_initial_ms)
            .field("retry_max_ms", &self.retry_max_ms)
            .field("failed_after_attempts", &self.failed_after_attempts)
            .finish()
    }
}

impl Config {
    /// The engine's share of the configuration. `tail_cache_messages` keeps its engine default.
    /// What the frame and request decoders enforce.
    pub(crate) fn decode_limits(&self) -> herald_protocol::Limits {
        herald_protocol::Limits {
            max_body_bytes: self.limits.max_body_bytes as usize,
            max_json_depth: self.limits.max_json_depth as usize,
        }
    }

    pub(crate) fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            identity_policy: self.identity.policy,
            max_devices: self.identity.max_devices,
            reconnect_timeout_ms: self.session.reconnect_timeout_ms,
            heartbeat_ms: self.session.heartbeat_ms,
            hello_timeout_ms: self.session.hello_timeout_ms,
            max_inflight: self.session.max_inflight,
            max_bad_frames: self.session.max_bad_frames,
            max_frame_bytes: self.limits.max_frame_bytes,
            max_body_bytes: self.limits.max_body_bytes,
            new_device_start: self.inbox.new_device_start,
            retention: Retention {
                channel_max_messages: self.retention.channel_max_messages,
                channel_max_age_ms: self.retention.channel_max_age_ms,
                inbox_max_age_ms: self.retention.inbox_max_age_ms,
                dedupe_window_ms: self.dedupe.window_ms,
                tombstone_ms: self.retention.tombstone_ms,
            },
            requests_per_sec: self.limits.requests_per_sec,
            request_burst: self.limits.request_burst,
            rate_limit_strikes: self.limits.rate_limit_strikes,
            publishes_per_uid_per_sec: self.limits.publishes_per_uid_per_sec,
            sessions_per_uid_per_min: self.limits.sessions_per_uid_per_min,
            max_subs_per_session: self.limits.max_subs_per_session,
            dev: self.server.dev,
            webhooks: self
                .webhooks
                .iter()
                .map(|w| WebhookRoute {
                    target: w.url.clone(),
                    kinds: w.events.clone(),
                })
                .collect(),
            ..EngineConfig::default()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Key descriptions
// ---------------------------------------------------------------------------------------------

/// How an environment variable's text becomes a TOML value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Bool,
    Str,
    /// A string that may be absent; an empty value means absent.
    OptStr,
    /// A list of strings; comma-separated in the environment.
    List,
}

/// One config key: everything needed to parse, check and document it.
#[derive(Debug)]
struct KeyDoc {
    section: &'static str,
    key: &'static str,
    kind: Kind,
    /// Accepted values, completing "expected …" in error messages.
    expected: &'static str,
    /// What the key does (and its unit), for the default file.
    doc: &'static str,
    /// Never printed in errors.
    secret: bool,
    /// Shown, commented out, in the default file when the key has no default value.
    example: &'static str,
}

const fn key(
    section: &'static str,
    key: &'static str,
    kind: Kind,
    expected: &'static str,
    doc: &'static str,
) -> KeyDoc {
    KeyDoc {
        section,
        key,
        kind,
        expected,
        doc,
        secret: false,
        example: "",
    }
}

const MS: &str = "a whole number of milliseconds";
const MS_OR_0: &str = "a whole number of milliseconds (0 disables)";
const BOOL: &str = "true or false";

/// Sections in file order, with the comment printed above each.
const SECTIONS: &[(&str, &str)] = &[
    (
        "server",
        "Network listener, data directory and process-wide settings.",
    ),
    ("identity", "How logins for the same uid coexist."),
    ("session", "Session lifetime, liveness and flow control."),
    ("limits", "Frame and queue sizes."),
    (
        "retention",
        "How long stored messages and records are kept.",
    ),
    ("inbox", "Per-device inbox cursors."),
    ("storage", "Durability and storage limits."),
    ("dedupe", "Idempotency keys (`pub.id`)."),
    (
        "auth",
        "Client token (JWT) verification. Configure hs256_secret, public_key_pem, or both.",
    ),
    (
        "api",
        "HTTP API (`Authorization: Bearer <key>`). Not needed in dev mode.",
    ),
    (
        "tls",
        "Built-in TLS: with cert and key set, the listener speaks only TLS (https://, wss://); both are reloaded on SIGHUP.",
    ),
];

/// Every key, in file order. A test checks this matches the structs field for field.
const KEYS: &[KeyDoc] = &[
    key("server", "listen", Kind::Str,
        "a socket address such as \"127.0.0.1:7070\" or \"[::]:7070\"",
        "Address and port for WebSocket and HTTP (flag: --listen)."),
    key("server", "data_dir", Kind::Str, "a directory path",
        "Directory holding the database, relative to the working directory (flag: --data-dir)."),
    key("server", "dev", Kind::Bool, BOOL,
        "Dev mode: hello.uid without a token and HTTP without an API key. Never in production (flag: --dev)."),
    key("server", "shutdown_grace_ms", Kind::Int, MS,
        "On SIGTERM/SIGINT, time given to connections and writes to finish before exiting."),
    key("server", "max_connections", Kind::Int, "a whole number, at least 1",
        "Concurrent connections, HTTP and WebSocket; when full, the oldest connection that has not sent a request yet is closed to make room, else new ones get 503. Lowered at start to fit the open-file limit (with a warning)."),
    key("server", "max_connections_per_ip", Kind::Int, "a whole number (0 = unlimited)",
        "Concurrent connections from one source address; beyond it new ones get 503. Trusted proxies are exempt."),
    key("server", "http_header_timeout_ms", Kind::Int, "a whole number of milliseconds, at least 100",
        "Time a connection has to send a complete request head, from connect or from its previous answer; slower or idle keep-alive connections are closed."),
    key("server", "trusted_proxies", Kind::List, "a list of IP addresses or CIDR ranges (comma-separated in the environment)",
        "Peers whose X-Forwarded-For header names the client (in logs, events and evicted.by.addr); they are exempt from the per-IP cap. Empty: the header is ignored."),
    key("server", "allowed_origins", Kind::List, "a list of origins such as \"https://app.example.com\", or [\"*\"] for any (comma-separated in the environment)",
        "Browser origins (the Origin header) allowed to open /v1/ws; others get 403. Empty: any origin in dev mode, no browser origin otherwise (clients that send no Origin, i.e. not browsers, are always allowed)."),
    key("server", "dev_allow_remote", Kind::Bool, BOOL,
        "Lets dev mode (no tokens, no API key) listen on a non-loopback address. Without it such a server refuses to start."),
    key("identity", "policy", Kind::Str, "one of multi | single | reject_new",
        "multi: a session per (uid, device); single: a new login evicts the old one; reject_new: refuse logins while the uid is connected."),
    key("identity", "max_devices", Kind::Int, "a whole number, at least 1",
        "With policy multi, sessions per uid; beyond it the longest-idle one is evicted (device_limit)."),
    key("session", "reconnect_timeout_ms", Kind::Int, MS,
        "How long a disconnected session can be resumed (upper bound for clients' value); 0 ends sessions at disconnect."),
    key("session", "heartbeat_ms", Kind::Int, "a whole number of milliseconds, at least 100",
        "Server ping interval; silence for heartbeat_ms + heartbeat_grace_ms ends the connection."),
    key("session", "heartbeat_grace_ms", Kind::Int, "a whole number of milliseconds, at least 100",
        "Silence tolerated beyond heartbeat_ms before a connection is declared dead (close 4008)."),
    key("session", "hello_timeout_ms", Kind::Int, "a whole number of milliseconds, at least 1",
        "Time a new connection has to send hello before it is closed (4001)."),
    key("session", "max_inflight", Kind::Int, "a whole number, at least 1",
        "Unacknowledged deliveries per session before the server waits for acks."),
    key("session", "max_bad_frames", Kind::Int, "a whole number, at least 1",
        "Malformed frames tolerated per connection before it is closed (4000)."),
    key("limits", "max_frame_bytes", Kind::Int, "a whole number of bytes, at least 4096",
        "Largest WebSocket frame accepted, in bytes; larger ones close the connection (1009)."),
    key("limits", "max_body_bytes", Kind::Int, "a whole number of bytes, at least 1 and at most limits.max_frame_bytes",
        "Largest pub body, in bytes of JSON; larger ones get err too_large."),
    key("limits", "max_json_depth", Kind::Int, "a whole number from 1 to 128",
        "Deepest nesting of arrays and objects in a body (WebSocket pub and HTTP publish); deeper ones get bad_frame before anything parses them."),
    key("limits", "send_queue_frames", Kind::Int, "a whole number, at least 1",
        "Outbound frames buffered per connection before the connection is treated as stalled."),
    key("limits", "read_buffer_bytes", Kind::Int, "a whole number of bytes, at least 1024",
        "Initial read buffer per connection; it grows for larger frames. Small values save memory per idle connection."),
    key("limits", "requests_per_sec", Kind::Int, "a whole number (0 = unlimited)",
        "Requests (pub, sub, unsub) per second per connection; beyond it requests get err rate_limited and are not applied."),
    key("limits", "request_burst", Kind::Int, "a whole number, at least 1",
        "Requests a connection may send at once above the steady rate."),
    key("limits", "rate_limit_strikes", Kind::Int, "a whole number, at least 1",
        "Consecutive rate-limited requests after which the connection is closed (4029)."),
    key("limits", "publishes_per_uid_per_sec", Kind::Int, "a whole number (0 = unlimited)",
        "pub requests per second per uid, over all its connections; beyond it a pub gets err rate_limited and is not stored."),
    key("limits", "sessions_per_uid_per_min", Kind::Int, "a whole number (0 = unlimited)",
        "New sessions (logins that are not resumes) per minute per uid; beyond it the hello gets err rate_limited and close 4029."),
    key("limits", "max_subs_per_session", Kind::Int, "a whole number (0 = unlimited)",
        "Channels one session may be subscribed to at once; a sub beyond it gets err quota_exceeded."),
    key("retention", "channel_max_messages", Kind::Int, "a whole number (0 disables)",
        "Messages kept per channel; older ones are trimmed."),
    key("retention", "channel_max_age_ms", Kind::Int, MS_OR_0,
        "Age after which channel messages are trimmed (default 24 h)."),
    key("retention", "inbox_max_age_ms", Kind::Int, MS_OR_0,
        "Age after which inbox messages are trimmed (default 7 days)."),
    key("retention", "trim_interval_ms", Kind::Int, "a whole number of milliseconds, at least 100",
        "How often retention trimming runs."),
    key("retention", "tombstone_ms", Kind::Int, MS_OR_0,
        "How long closed sessions and events are kept (default 24 h)."),
    key("inbox", "new_device_start", Kind::Str, "one of oldest | latest",
        "Where a device seen for the first time starts reading its inbox: the oldest retained message, or only new ones."),
    key("storage", "durability", Kind::Str, "one of fsync | os",
        "fsync: every commit is fsynced before it is acknowledged (survives power loss); os: OS page cache (survives a crash only)."),
    key("storage", "max_batch", Kind::Int, "a whole number, at least 1",
        "Most writes grouped into one commit."),
    key("storage", "max_db_bytes", Kind::Int, "a whole number of bytes (0 = unlimited)",
        "Database size quota; beyond it writes fail with unavailable."),
    key("dedupe", "window_ms", Kind::Int, "a whole number of milliseconds (0 = remember forever)",
        "How long a pub.id is remembered, per sending uid (default 24 h); 0 keeps keys forever."),
    KeyDoc {
        secret: true,
        example: "\"<at least 32 random bytes, e.g. from: openssl rand -hex 32>\"",
        ..key("auth", "hs256_secret", Kind::OptStr, "a string of at least 32 bytes",
            "Shared secret verifying HS256 tokens. Unset: HS256 tokens are refused.")
    },
    KeyDoc {
        example: "\"/etc/herald/jwt-public.pem\"",
        ..key("auth", "public_key_pem", Kind::OptStr,
            "PEM text (-----BEGIN PUBLIC KEY-----...) or the path of a PEM file",
            "Public key verifying RS256 (RSA key) or ES256 (EC P-256 key) tokens; PEM text or a file path.")
    },
    key("auth", "leeway_ms", Kind::Int, "a whole number of milliseconds, at most 300000",
        "Clock skew tolerated when checking token exp and nbf."),
    KeyDoc {
        example: "\"herald\"",
        ..key("auth", "audience", Kind::OptStr, "a string",
            "When set, a token's aud claim (a string or a list) must name it.")
    },
    KeyDoc {
        example: "\"https://login.example.com/\"",
        ..key("auth", "issuer", Kind::OptStr, "a string",
            "When set, a token's iss claim must equal it.")
    },
    key("auth", "max_token_lifetime_ms", Kind::Int, "a whole number of milliseconds (0 = unlimited)",
        "Longest token lifetime accepted: exp minus iat (or minus now without iat). Tokens that live longer are refused (default 24 h)."),
    KeyDoc {
        example: "\"http://127.0.0.1:8080/.well-known/jwks.json\"",
        ..key("auth", "jwks_url", Kind::OptStr, "an http:// URL (https is not supported by this build)",
            "JWKS document with verification keys; a token whose header names a kid is verified with that key. Refreshed every jwks_refresh_ms.")
    },
    key("auth", "jwks_refresh_ms", Kind::Int, "a whole number of milliseconds, at least 100",
        "How often auth.jwks_url is fetched again (key rotation); a failed fetch keeps the previous keys."),
    KeyDoc {
        secret: true,
        ..key("api", "keys", Kind::List,
            "a list of strings without spaces (comma-separated in the environment)",
            "API keys accepted as Authorization: Bearer <key>. Empty: the HTTP API refuses every call (except in dev mode).")
    },
    key("api", "events_heartbeat_ms", Kind::Int, "a whole number of milliseconds, at least 100",
        "Keep-alive comment interval on GET /v1/events/stream while no event flows (keeps proxies from closing it)."),
    KeyDoc {
        example: "\"/etc/herald/tls/fullchain.pem\"",
        ..key("tls", "cert", Kind::OptStr, "the path of a PEM certificate chain, leaf first",
            "Certificate served to clients. Set together with tls.key; unset: plain HTTP (terminate TLS in a proxy).")
    },
    KeyDoc {
        example: "\"/etc/herald/tls/privkey.pem\"",
        ..key("tls", "key", Kind::OptStr, "the path of a PEM private key (PKCS#8, PKCS#1 or SEC1)",
            "Private key of tls.cert.")
    },
];

/// The array of tables holding webhooks (`[[webhooks]]`).
const WEBHOOKS: &str = "webhooks";

/// Keys of one `[[webhooks]]` entry, in file order: `(key, required, accepted values, what
/// it does, example value)`. Entries come from the config file only: arrays of tables have
/// no environment form.
const WEBHOOK_KEYS: &[(&str, bool, &str, &str, &str)] = &[
    ("url", true, "an http:// URL (https is not supported by this build; loopback addresses are allowed)",
        "Where events are POSTed (JSON body: the event as in GET /v1/events).",
        "\"http://127.0.0.1:9000/herald-events\""),
    ("events", true, "a non-empty list of event kinds, or [\"*\"] for all",
        "Event kinds sent to this webhook.",
        "[\"eviction\", \"resume_failed\", \"gap\", \"kick\"]"),
    ("secret", true, "a non-empty string",
        "Key of the X-Herald-Signature header: sha256=<hex HMAC-SHA256 of the exact body>.",
        "\"<a long random string, e.g. from: openssl rand -hex 32>\""),
    ("timeout_ms", false, "a whole number of milliseconds, at least 1",
        "Time allowed for one request; a slower answer counts as a failure.", "5000"),
    ("retry_initial_ms", false, "a whole number of milliseconds, at least 1",
        "Delay before the first retry; it doubles after each failure, with jitter.", "1000"),
    ("retry_max_ms", false, "a whole number of milliseconds, at least retry_initial_ms",
        "Longest delay between retries.", "300000"),
    ("failed_after_attempts", false, "a whole number, at least 1",
        "Failed attempts of one delivery after which a webhook_failed event is recorded; retries go on.", "5"),
];

/// A minimal well-formed webhook entry, to type-check one key at a time.
fn webhook_probe() -> toml::Table {
    let text = |v: &str| toml::Value::String(v.to_string());
    let mut t = toml::Table::new();
    t.insert("url".into(), text("x"));
    t.insert("events".into(), toml::Value::Array(vec![text(ALL_KINDS)]));
    t.insert("secret".into(), text("x"));
    t
}

fn webhook_keys() -> String {
    WEBHOOK_KEYS
        .iter()
        .map(|(k, ..)| *k)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why `webhooks` cannot come from the environment.
const WEBHOOKS_NOT_FROM_ENV: &str = "webhooks are an array of tables and cannot be set from the environment; declare them as [[webhooks]] entries in the config file (--config FILE or HERALD_CONFIG)";

fn section_keys(section: &str) -> impl Iterator<Item = &'static KeyDoc> + '_ {
    KEYS.iter().filter(move |k| k.section == section)
}

fn find_key(section: &str, key: &str) -> Option<&'static KeyDoc> {
    KEYS.iter().find(|k| k.section == section && k.key == key)
}

fn known_sections() -> String {
    SECTIONS
        .iter()
        .map(|(s, _)| *s)
        .collect::<Vec<_>>()
        .join(", ")
}

fn known_keys(section: &str) -> String {
    section_keys(section)
        .map(|k| k.key)
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    Default,
    File(PathBuf),
    Env(String),
    Flag(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Env(v) => f.write_str(v),
            Source::Flag(flag) => f.write_str(flag),
        }
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum Problem {
    #[error(
        "unknown section [{section}] (from {from}); known sections: {}",
        known_sections()
    )]
    UnknownSection { section: String, from: Source },
    #[error("unknown key {section}.{key} (from {from}); known keys in [{section}]: {}", known_keys(.section))]
    UnknownKey {
        section: String,
        key: String,
        from: Source,
    },
    #[error("{key} (from {from}) is not inside a section{}", top_level_hint(.key))]
    NotInSection { key: String, from: Source },
    #[error("[{section}] (from {from}) must be a table of keys; known keys: {}", known_keys(.section))]
    NotATable { section: String, from: Source },
    #[error("{key} = {value} (from {from}): expected {expected}")]
    BadValue {
        key: String,
        /// As written (TOML syntax), or `<redacted>` for secrets.
        value: String,
        from: Source,
        expected: &'static str,
    },
    /// A value of the right type that breaks a rule (minimum, relation between keys).
    #[error("{0}")]
    Rule(String),
}

fn top_level_hint(key: &str) -> String {
    let homes: Vec<String> = KEYS
        .iter()
        .filter(|k| k.key == key)
        .map(|k| format!("[{}]", k.section))
        .collect();
    if homes.is_empty() {
        format!("; known sections: {}", known_sections())
    } else {
        format!("; did you mean to put it under {}?", homes.join(" or "))
    }
}

#[derive(Debug, Error)]
pub(crate) enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {} is not valid TOML: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    /// Unknown keys, bad values, broken rules: all of them, in the order found.
    #[error("{}", format_problems(.0))]
    Invalid(Vec<Problem>),
    /// A value that parsed but cannot be used (e.g. an unreadable key file).
    #[error("{key}: {reason}")]
    Key { key: &'static str, reason: String },
}

fn format_problems(problems: &[Problem]) -> String {
    match problems {
        [one] => one.to_string(),
        many => {
            let mut s = format!("{} configuration problems:", many.len());
            for p in many {
                s.push_str("\n  - ");
                s.push_str(&p.to_string());
            }
            s
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// Loads the configuration for `herald serve` from defaults, the `--config` file, the process
/// environment and the flags.
pub(crate) fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
    load_from(
        args,
        std::env::vars_os().map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        }),
    )
}

/// [`load`] with an explicit environment (tests pass their own variables).
pub(crate) fn load_from(
    args: &ServeArgs,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let mut loader = Loader::new();
    if let Some(path) = &args.config {
        loader.file(path)?;
    }
    let mut env: Vec<(String, String)> = env.into_iter().collect();
    env.sort();
    for (name, value) in env {
        loader.env_var(&name, &value);
    }
    loader.finish(args)
}

/// The values merged so far, kept as TOML so each new value can be type-checked on its own.
struct Loader {
    merged: toml::Table,
    sources: BTreeMap<(&'static str, &'static str), Source>,
    problems: Vec<Problem>,
}

impl Loader {
    fn new() -> Loader {
        let merged = toml::Table::try_from(Config::default())
            .expect("the default config serializes to TOML");
        Loader {
            merged,
            sources: BTreeMap::new(),
            problems: Vec::new(),
        }
    }

    fn file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let from = || Source::File(path.to_path_buf());
        for (section, value) in table {
            if section == WEBHOOKS {
                self.webhooks(value, from());
                continue;
            }
            if !SECTIONS.iter().any(|(s, _)| *s == section) {
                let problem = if value.is_table() {
                    Problem::UnknownSection {
                        section,
                        from: from(),
                    }
                } else {
                    Problem::NotInSection {
                        key: section,
                        from: from(),
                    }
                };
                self.problems.push(problem);
                continue;
            }
            let toml::Value::Table(keys) = value else {
                self.problems.push(Problem::NotATable {
                    section,
                    from: from(),
                });
                continue;
            };
            for (key, value) in keys {
                match find_key(&section, &key) {
                    Some(doc) => self.set(doc, value, from()),
                    None => self.problems.push(Problem::UnknownKey {
                        section: section.clone(),
                        key,
                        from: from(),
                    }),
                }
            }
        }
        Ok(())
    }

    fn env_var(&mut self, name: &str, raw: &str) {
        let rest = match name.get(..7) {
            Some(prefix) if prefix.eq_ignore_ascii_case("HERALD_") => &name[7..],
            _ => return,
        };
        let Some((section, key)) = rest.split_once("__") else {
            return;
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        let from = Source::Env(name.to_string());
        if section == WEBHOOKS {
            self.problems
                .push(Problem::Rule(format!("{name}: {WEBHOOKS_NOT_FROM_ENV}")));
            return;
        }
        if !SECTIONS.iter().any(|(s, _)| *s == section) {
            self.problems
                .push(Problem::UnknownSection { section, from });
            return;
        }
        let Some(doc) = find_key(&section, &key) else {
            self.problems
                .push(Problem::UnknownKey { section, key, from });
            return;
        };
        let value = match doc.kind {
            Kind::Str | Kind::OptStr => Some(toml::Value::String(raw.to_string())),
            Kind::Int => raw.trim().parse::<i64>().ok().map(toml::Value::Integer),
            Kind::Bool => match raw.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => Some(toml::Value::Boolean(true)),
                "false" | "0" => Some(toml::Value::Boolean(false)),
                _ => None,
            },
            Kind::List => Some(toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_string()))
                    .collect(),
            )),
        };
        match value {
            Some(value) => self.set(doc, value, from),
            None => self.bad_value(doc, &toml::Value::String(raw.to_string()), from),
        }
    }

    /// Takes the `[[webhooks]]` array of a file: checks each entry's keys and types, and keeps
    /// the array only if every entry is well-formed (rules are checked in `check_rules`).
    fn webhooks(&mut self, value: toml::Value, from: Source) {
        let toml::Value::Array(entries) = value else {
            self.problems.push(Problem::Rule(format!(
                "{WEBHOOKS} (from {from}) must be an array of tables: write each webhook as a [[webhooks]] entry with keys {}",
                webhook_keys()
            )));
            return;
        };
        let before = self.problems.len();
        for (i, entry) in entries.iter().enumerate() {
            let n = i + 1;
            let Some(table) = entry.as_table() else {
                self.problems.push(Problem::Rule(format!(
                    "webhook #{n} (from {from}) must be a table ([[webhooks]] entry)"
                )));
                continue;
            };
            for key in table.keys() {
                if !WEBHOOK_KEYS.iter().any(|(k, ..)| k == key) {
                    self.problems.push(Problem::Rule(format!(
                        "unknown key {key} in webhook #{n} (from {from}); known keys in [[webhooks]]: {}",
                        webhook_keys()
                    )));
                }
            }
            for (key, required, expected, ..) in WEBHOOK_KEYS {
                let Some(v) = table.get(*key) else {
                    if *required {
                        self.problems.push(Problem::Rule(format!(
                            "webhook #{n} (from {from}) has no {key}: expected {expected}"
                        )));
                    }
                    continue;
                };
                // Each key on its own, next to valid required keys, to name the bad one.
                let mut probe = webhook_probe();
                probe.insert((*key).to_string(), v.clone());
                if toml::Value::Table(probe)
                    .try_into::<WebhookEntry>()
                    .is_err()
                {
                    let shown = if *key == "secret" {
                        "<redacted>".to_string()
                    } else {
                        v.to_string()
                    };
                    self.problems.push(Problem::Rule(format!(
                        "webhooks[#{n}].{key} = {shown} (from {from}): expected {expected}"
                    )));
                }
            }
        }
        if self.problems.len() == before {
            self.merged
                .insert(WEBHOOKS.to_string(), toml::Value::Array(entries));
            self.sources.insert((WEBHOOKS, "*"), from);
        }
    }

    /// Merges one value, keeping it only if the whole config still deserializes.
    fn set(&mut self, doc: &'static KeyDoc, value: toml::Value, from: Source) {
        let section = self
            .merged
            .entry(doc.section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(section) = section.as_table_mut() else {
            unreachable!("sections of the merged config are tables");
        };
        let unset = doc.kind == Kind::OptStr && value.as_str() == Some("");
        let previous = if unset {
            section.remove(doc.key)
        } else {
            section.insert(doc.key.to_string(), value.clone())
        };
        if unset || self.merged.clone().try_into::<Config>().is_ok() {
            self.sources.insert((doc.section, doc.key), from);
            return;
        }
        let section = self
            .merged
            .get_mut(doc.section)
            .and_then(toml::Value::as_table_mut)
            .expect("section was just inserted");
        match previous {
            Some(p) => section.insert(doc.key.to_string(), p),
            None => section.remove(doc.key),
        };
        self.bad_value(doc, &value, from);
    }

    fn bad_value(&mut self, doc: &'static KeyDoc, value: &toml::Value, from: Source) {
        self.problems.push(Problem::BadValue {
            key: format!("{}.{}", doc.section, doc.key),
            value: if doc.secret {
                "<redacted>".to_string()
            } else {
                value.to_string()
            },
            from,
            expected: doc.expected,
        });
    }

    fn source(&self, section: &'static str, key: &'static str) -> &Source {
        self.sources
            .get(&(section, key))
            .unwrap_or(&Source::Default)
    }

    fn finish(mut self, args: &ServeArgs) -> Result<Config, ConfigError> {
        if !self.problems.is_empty() {
            return Err(ConfigError::Invalid(self.problems));
        }
        let mut cfg: Config = self.merged.clone().try_into().map_err(|e| {
            // Every value was checked as it was merged; this would be a bug in `set`.
            ConfigError::Invalid(vec![Problem::Rule(format!(
                "internal error merging the configuration: {e}"
            ))])
        })?;
        if let Some(listen) = args.listen {
            cfg.server.listen = listen;
            self.sources
                .insert(("server", "listen"), Source::Flag("--listen"));
        }
        if let Some(dir) = &args.data_dir {
            cfg.server.data_dir = dir.clone();
            self.sources
                .insert(("server", "data_dir"), Source::Flag("--data-dir"));
        }
        if args.dev {
            cfg.server.dev = true;
            self.sources
                .insert(("server", "dev"), Source::Flag("--dev"));
        }
        self.check_rules(&cfg);
        if self.problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid(self.problems))
        }
    }

    fn rule(
        &mut self,
        section: &'static str,
        key: &'static str,
        value: impl fmt::Display,
        msg: String,
    ) {
        let from = self.source(section, key);
        let problem = format!("{section}.{key} = {value} (from {from}): {msg}");
        self.problems.push(Problem::Rule(problem));
    }

    fn at_least(&mut self, section: &'static str, key: &'static str, value: u64, min: u64) {
        if value < min {
            self.rule(section, key, value, format!("must be at least {min}"));
        }
    }

    fn check_rules(&mut self, c: &Config) {
        self.at_least(
            "server",
            "max_connections",
            c.server.max_connections as u64,
            1,
        );
        self.at_least(
            "server",
            "http_header_timeout_ms",
            c.server.http_header_timeout_ms,
            100,
        );
        for o in &c.server.allowed_origins {
            if o != "*" && !(o.starts_with("http://") || o.starts_with("https://"))
                || o.ends_with('/')
            {
                self.rule(
                    "server",
                    "allowed_origins",
                    format!("{o:?}"),
                    "each entry must be \"*\" or an origin: scheme://host[:port] with no path, e.g. \"https://app.example.com\"".into(),
                );
            }
        }
        for p in &c.server.trusted_proxies {
            if let Err(why) = crate::transport::listener::IpRange::parse(p) {
                self.rule("server", "trusted_proxies", format!("{p:?}"), why);
            }
        }
        self.at_least("identity", "max_devices", c.identity.max_devices.into(), 1);
        self.at_least(
            "session",
            "heartbeat_ms",
            c.session.heartbeat_ms,
            MIN_HEARTBEAT_MS,
        );
        self.at_least("session", "hello_timeout_ms", c.session.hello_timeout_ms, 1);
        self.at_least("session", "max_inflight", c.session.max_inflight, 1);
        self.at_least(
            "session",
            "heartbeat_grace_ms",
            c.session.heartbeat_grace_ms,
            MIN_HEARTBEAT_MS,
        );
        self.at_least(
            "limits",
            "read_buffer_bytes",
            c.limits.read_buffer_bytes,
            1024,
        );
        self.at_least(
            "session",
            "max_bad_frames",
            c.session.max_bad_frames.into(),
            1,
        );
        self.at_least(
            "limits",
            "max_frame_bytes",
            c.limits.max_frame_bytes,
            MIN_FRAME_BYTES,
        );
        self.at_least("limits", "max_body_bytes", c.limits.max_body_bytes, 1);
        self.at_least(
            "limits",
            "max_json_depth",
            c.limits.max_json_depth.into(),
            1,
        );
        if c.limits.max_json_depth > MAX_JSON_DEPTH {
            let msg = format!(
                "must be at most {MAX_JSON_DEPTH} (the recursion limit of common JSON parsers, serde_json's among them: deeper bodies could not be read back)"
            );
            self.rule("limits", "max_json_depth", c.limits.max_json_depth, msg);
        }
        if c.limits.max_body_bytes > c.limits.max_frame_bytes {
            let msg = format!(
                "must not exceed limits.max_frame_bytes = {} (from {})",
                c.limits.max_frame_bytes,
                self.source("limits", "max_frame_bytes")
            );
            self.rule("limits", "max_body_bytes", c.limits.max_body_bytes, msg);
        }
        self.at_least(
            "limits",
            "send_queue_frames",
            c.limits.send_queue_frames as u64,
            1,
        );
        self.at_least(
            "retention",
            "trim_interval_ms",
            c.retention.trim_interval_ms,
            MIN_TRIM_INTERVAL_MS,
        );
        self.at_least("storage", "max_batch", c.storage.max_batch as u64, 1);
        if let Some(secret) = &c.auth.hs256_secret {
            if secret.len() < MIN_HS256_SECRET_BYTES {
                let msg = format!(
                    "is {} bytes; HS256 needs at least {MIN_HS256_SECRET_BYTES} (generate one with: openssl rand -hex 32)",
                    secret.len()
                );
                self.rule("auth", "hs256_secret", "<redacted>", msg);
            }
        }
        self.at_least("auth", "jwks_refresh_ms", c.auth.jwks_refresh_ms, 100);
        if let Some(url) = &c.auth.jwks_url {
            if let Err(why) = check_webhook_url(url) {
                self.rule("auth", "jwks_url", format!("{url:?}"), why);
            }
        }
        if c.auth.leeway_ms > MAX_LEEWAY_MS {
            let msg = format!("must be at most {MAX_LEEWAY_MS} (5 minutes)");
            self.rule("auth", "leeway_ms", c.auth.leeway_ms, msg);
        }
        if let Some(i) =
            c.api.keys.iter().position(|k| {
                k.is_empty() || k.contains(|ch: char| ch.is_whitespace() || ch == ',')
            })
        {
            let msg = format!(
                "must be non-empty and contain no space or comma (key #{} does not)",
                i + 1
            );
            self.rule("api", "keys", "<redacted>", msg);
        }
        self.at_least(
            "api",
            "events_heartbeat_ms",
            c.api.events_heartbeat_ms,
            MIN_EVENTS_HEARTBEAT_MS,
        );
        if c.tls.cert.is_some() != c.tls.key.is_some() {
            let (set, unset) = if c.tls.cert.is_some() {
                ("cert", "key")
            } else {
                ("key", "cert")
            };
            self.problems.push(Problem::Rule(format!(
                "tls.{set} is set but tls.{unset} is not: set both for built-in TLS, or neither"
            )));
        }
        self.check_webhooks(&c.webhooks);
    }

    fn check_webhooks(&mut self, hooks: &[WebhookEntry]) {
        let from = self.source(WEBHOOKS, "*").clone();
        let mut rule = |n: usize, key: &str, value: &dyn fmt::Display, msg: &str| {
            self.problems.push(Problem::Rule(format!(
                "webhooks[#{n}].{key} = {value} (from {from}): {msg}"
            )));
        };
        for (i, w) in hooks.iter().enumerate() {
            let n = i + 1;
            if let Err(why) = check_webhook_url(&w.url) {
                rule(n, "url", &format!("{:?}", w.url), &why);
            }
            if hooks[..i].iter().any(|o| o.url == w.url) {
                rule(
                    n,
                    "url",
                    &format!("{:?}", w.url),
                    "must differ from every other webhook's url (it identifies the webhook)",
                );
            }
            if w.events.is_empty() {
                rule(
                    n,
                    "events",
                    &"[]",
                    "must name at least one event kind, or [\"*\"] for all",
                );
            }
            for kind in &w.events {
                if kind != ALL_KINDS && !EVENT_KINDS.contains(&kind.as_str()) {
                    let msg = format!(
                        "{kind:?} is not an event kind; known kinds: {}, or \"*\" for all",
                        EVENT_KINDS.join(", ")
                    );
                    rule(n, "events", &format!("{:?}", w.events), &msg);
                }
            }
            if w.secret.is_empty() {
                rule(n, "secret", &"<redacted>", "must not be empty");
            }
            if w.timeout_ms < 1 {
                rule(n, "timeout_ms", &w.timeout_ms, "must be at least 1");
            }
            if w.retry_initial_ms < 1 {
                rule(
                    n,
                    "retry_initial_ms",
                    &w.retry_initial_ms,
                    "must be at least 1",
                );
            }
            if w.retry_max_ms < w.retry_initial_ms {
                let msg = format!("must be at least retry_initial_ms = {}", w.retry_initial_ms);
                rule(n, "retry_max_ms", &w.retry_max_ms, &msg);
            }
            if w.failed_after_attempts < 1 {
                rule(
                    n,
                    "failed_after_attempts",
                    &w.failed_after_attempts,
                    "must be at least 1",
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The default file
// ---------------------------------------------------------------------------------------------

/// A complete default config file: every key with its default value and a one-line comment
/// (what it does, its unit, accepted values). Parsing it yields [`Config::default`].
pub(crate) fn defaults_toml() -> String {
    let defaults =
        toml::Table::try_from(Config::default()).expect("the default config serializes to TOML");
    let mut out = String::from(
        "# herald configuration. Printed by `herald config defaults`: every key with its default.\n\
         #\n\
         # Precedence, lowest first: defaults < this file (--config FILE or HERALD_CONFIG)\n\
         # < environment < flags (--listen, --data-dir, --dev).\n\
         # Any key can be set from the environment as HERALD_<SECTION>__<KEY>, e.g.\n\
         # HERALD_SESSION__HEARTBEAT_MS=30000; lists are comma-separated (HERALD_API__KEYS=k1,k2);\n\
         # an empty value unsets an optional key.\n\
         # Unknown keys and invalid values stop the server at start, naming the key.\n",
    );
    for (section, about) in SECTIONS {
        out.push_str(&format!("\n# {about}\n[{section}]\n"));
        let values = defaults.get(*section).and_then(toml::Value::as_table);
        for doc in section_keys(section) {
            out.push_str(&format!("# {} Accepts {}.\n", doc.doc, doc.expected));
            match values.and_then(|t| t.get(doc.key)) {
                Some(v) => out.push_str(&format!("{} = {v}\n", doc.key)),
                None => out.push_str(&format!("# {} = {}\n", doc.key, doc.example)),
            }
        }
    }
    out.push_str(
        "\n# Webhooks: every recorded event of the listed kinds is POSTed to url, at least once,\n\
         # from a durable outbox (retried with backoff, also after a restart). Headers:\n\
         # X-Herald-Event-Id, X-Herald-Event-Type, X-Herald-Signature. None by default; repeat\n\
         # the [[webhooks]] block for each. Not settable from the environment (arrays of tables).\n",
    );
    out.push_str(&format!(
        "# Event kinds: {}.\n# [[webhooks]]\n",
        EVENT_KINDS.join(", ")
    ));
    for (key, required, expected, doc, example) in WEBHOOK_KEYS {
        let need = if *required { "Required" } else { "Optional" };
        out.push_str(&format!("# {need}. {doc} Accepts {expected}.\n"));
        out.push_str(&format!("# {key} = {example}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        load_from(&ServeArgs::default(), env(vars))
    }

    fn err_env(vars: &[(&str, &str)]) -> String {
        load_env(vars).expect_err("must fail").to_string()
    }

    struct TempConfig {
        _dir: tempfile::TempDir,
        path: PathBuf,
    }

    fn temp_file(text: &str) -> TempConfig {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("herald.toml");
        std::fs::write(&path, text).expect("write");
        TempConfig { _dir: dir, path }
    }

    fn load_file(text: &str, vars: &[(&str, &str)]) -> (PathBuf, Result<Config, ConfigError>) {
        let f = temp_file(text);
        let args = ServeArgs {
            config: Some(f.path.clone()),
            ..ServeArgs::default()
        };
        let result = load_from(&args, env(vars));
        (f.path, result)
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    /// A config with every optional key present, so serialization shows every field.
    fn full_config() -> Config {
        let mut c = Config::default();
        c.auth.hs256_secret = Some("s".repeat(32));
        c.auth.public_key_pem = Some("/k.pem".into());
        c.auth.audience = Some("herald".into());
        c.auth.issuer = Some("idp".into());
        c.auth.jwks_url = Some("http://127.0.0.1:1/jwks".into());
        c.tls.cert = Some("/c.pem".into());
        c.tls.key = Some("/k.pem".into());
        c.api.keys = vec!["k".into()];
        c
    }

    #[test]
    fn defaults_are_documented_values() {
        let c = Config::default();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(c.server.data_dir, PathBuf::from("./herald-data"));
        assert!(!c.server.dev);
        assert_eq!(c.server.shutdown_grace_ms, 10_000);
        assert_eq!(c.server.max_connections, 100_000);
        assert_eq!(c.identity.policy, IdentityPolicy::Multi);
        assert_eq!(c.identity.max_devices, 10);
        assert_eq!(c.session.reconnect_timeout_ms, 60_000);
        assert_eq!(c.session.heartbeat_ms, 25_000);
        assert_eq!(c.session.hello_timeout_ms, 10_000);
        assert_eq!(c.session.max_inflight, 1024);
        assert_eq!(c.session.max_bad_frames, 10);
        assert_eq!(c.limits.max_frame_bytes, 1_048_576);
        assert_eq!(c.limits.max_body_bytes, 65_536);
        assert_eq!(c.limits.send_queue_frames, 1024);
        assert_eq!(c.retention.channel_max_messages, 10_000);
        assert_eq!(c.retention.channel_max_age_ms, 86_400_000);
        assert_eq!(c.retention.inbox_max_age_ms, 604_800_000);
        assert_eq!(c.retention.trim_interval_ms, 60_000);
        assert_eq!(c.retention.tombstone_ms, 86_400_000);
        assert_eq!(c.inbox.new_device_start, NewDeviceStart::Oldest);
        assert_eq!(c.storage.durability, Durability::Fsync);
        assert_eq!(c.storage.max_batch, 1024);
        assert_eq!(c.storage.max_db_bytes, 0);
        assert_eq!(c.dedupe.window_ms, 86_400_000);
        assert_eq!(c.auth.hs256_secret, None);
        assert_eq!(c.auth.public_key_pem, None);
        assert_eq!(c.auth.leeway_ms, 30_000);
        assert!(c.api.keys.is_empty());
        assert_eq!(c.api.events_heartbeat_ms, 15_000);
        assert!(c.webhooks.is_empty());
        assert!(load_env(&[]).is_ok_and(|loaded| loaded == c));
    }

    #[test]
    fn default_engine_config_is_the_engine_default() {
        assert_eq!(
            format!("{:?}", Config::default().engine_config()),
            format!("{:?}", EngineConfig::default())
        );
    }

    #[test]
    fn engine_config_maps_every_field() {
        let c = load_env(&[
            ("HERALD_IDENTITY__POLICY", "reject_new"),
            ("HERALD_IDENTITY__MAX_DEVICES", "3"),
            ("HERALD_SESSION__RECONNECT_TIMEOUT_MS", "1"),
            ("HERALD_SESSION__HEARTBEAT_MS", "200"),
            ("HERALD_SESSION__HELLO_TIMEOUT_MS", "3"),
            ("HERALD_SESSION__MAX_INFLIGHT", "4"),
            ("HERALD_SESSION__MAX_BAD_FRAMES", "5"),
            ("HERALD_LIMITS__MAX_FRAME_BYTES", "8000"),
            ("HERALD_LIMITS__MAX_BODY_BYTES", "7000"),
            ("HERALD_INBOX__NEW_DEVICE_START", "latest"),
            ("HERALD_RETENTION__CHANNEL_MAX_MESSAGES", "6"),
            ("HERALD_RETENTION__CHANNEL_MAX_AGE_MS", "7"),
            ("HERALD_RETENTION__INBOX_MAX_AGE_MS", "8"),
            ("HERALD_RETENTION__TOMBSTONE_MS", "9"),
            ("HERALD_DEDUPE__WINDOW_MS", "10"),
            ("HERALD_SERVER__DEV", "true"),
        ])
        .expect("valid");
        let e = c.engine_config();
        assert_eq!(e.identity_policy, IdentityPolicy::RejectNew);
        assert_eq!(e.max_devices, 3);
        assert_eq!(e.reconnect_timeout_ms, 1);
        assert_eq!(e.heartbeat_ms, 200);
        assert_eq!(e.hello_timeout_ms, 3);
        assert_eq!(e.max_inflight, 4);
        assert_eq!(e.max_bad_frames, 5);
        assert_eq!(e.max_frame_bytes, 8000);
        assert_eq!(e.max_body_bytes, 7000);
        assert_eq!(e.new_device_start, NewDeviceStart::Latest);
        assert_eq!(
            e.retention,
            Retention {
                channel_max_messages: 6,
                channel_max_age_ms: 7,
                inbox_max_age_ms: 8,
                dedupe_window_ms: 10,
                tombstone_ms: 9,
            }
        );
        assert!(e.dev);
        assert_eq!(
            e.tail_cache_messages,
            EngineConfig::default().tail_cache_messages
        );
    }

    #[test]
    fn defaults_toml_parses_to_the_defaults() {
        let text = defaults_toml();
        let parsed: Config = toml::from_str(&text).expect("defaults_toml is valid TOML");
        assert_eq!(parsed, Config::default());
        // And through the real loader, which also rejects unknown keys.
        let (_, loaded) = load_file(&text, &[]);
        assert_eq!(loaded.expect("loads"), Config::default());
    }

    #[test]
    fn key_table_matches_the_structs() {
        let table = toml::Table::try_from(full_config()).expect("serializes");
        let mut from_structs: Vec<(String, String)> = Vec::new();
        for (section, keys) in &table {
            for key in keys.as_table().expect("sections are tables").keys() {
                from_structs.push((section.clone(), key.clone()));
            }
        }
        let mut from_docs: Vec<(String, String)> = KEYS
            .iter()
            .map(|k| (k.section.to_string(), k.key.to_string()))
            .collect();
        from_structs.sort();
        from_docs.sort();
        assert_eq!(from_structs, from_docs);
        let sections: Vec<&str> = SECTIONS.iter().map(|(s, _)| *s).collect();
        assert_eq!(sections.len(), table.len());
        for k in KEYS {
            assert!(sections.contains(&k.section), "{} has no section", k.key);
            assert!(!k.doc.is_empty() && !k.expected.is_empty());
            assert!(
                k.kind != Kind::OptStr || !k.example.is_empty(),
                "{} needs an example",
                k.key
            );
        }
    }

    #[test]
    fn defaults_toml_names_every_key_in_its_section() {
        let text = defaults_toml();
        for (section, _) in SECTIONS {
            let start = text
                .find(&format!("\n[{section}]\n"))
                .unwrap_or_else(|| panic!("[{section}] missing"));
            let body = &text[start + section.len() + 3..];
            let body = &body[..body.find("\n[").unwrap_or(body.len())];
            for doc in section_keys(section) {
                let set = body.lines().any(|l| {
                    l.starts_with(&format!("{} = ", doc.key))
                        || l.starts_with(&format!("# {} = ", doc.key))
                });
                assert!(set, "{section}.{} missing from defaults_toml", doc.key);
                assert!(
                    body.contains(doc.doc),
                    "{section}.{} has no comment",
                    doc.key
                );
            }
        }
        assert!(text.contains(IdentityPolicy::NAMES));
    }

    #[test]
    fn file_is_merged_over_defaults() {
        let args = ServeArgs {
            config: Some(fixture("herald.toml")),
            ..ServeArgs::default()
        };
        let c = load_from(&args, Vec::new()).expect("fixture loads");
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.server.data_dir, PathBuf::from("/var/lib/herald"));
        assert_eq!(c.identity.policy, IdentityPolicy::Single);
        assert_eq!(c.session.heartbeat_ms, 5000);
        assert_eq!(c.storage.durability, Durability::Os);
        assert_eq!(c.api.keys, vec!["file-key-1", "file-key-2"]);
        // Untouched keys keep their defaults.
        assert_eq!(c.session.hello_timeout_ms, 10_000);
        assert_eq!(c.identity.max_devices, 10);
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let f = temp_file(
            "[server]\nlisten = \"0.0.0.0:1000\"\ndata_dir = \"/from/file\"\n\
             [session]\nheartbeat_ms = 5000\nhello_timeout_ms = 7000\n",
        );
        let vars = env(&[
            ("HERALD_SERVER__LISTEN", "0.0.0.0:2000"),
            ("HERALD_SERVER__DATA_DIR", "/from/env"),
            ("HERALD_SESSION__HEARTBEAT_MS", "300"),
            ("HERALD_IDENTITY__POLICY", "single"),
            ("HERALD_API__KEYS", "k1, k2,,"),
            ("HERALD_SERVER__DEV", "false"),
        ]);
        let mut args = ServeArgs {
            config: Some(f.path.clone()),
            ..ServeArgs::default()
        };
        let c = load_from(&args, vars.clone()).expect("valid");
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:2000");
        assert_eq!(c.server.data_dir, PathBuf::from("/from/env"));
        assert_eq!(c.session.heartbeat_ms, 300);
        assert_eq!(c.session.hello_timeout_ms, 7000);
        assert_eq!(c.identity.policy, IdentityPolicy::Single);
        assert_eq!(c.api.keys, vec!["k1", "k2"]);
        assert!(!c.server.dev);

        args.listen = Some("10.0.0.1:3000".parse().expect("addr"));
        args.data_dir = Some(PathBuf::from("/from/flag"));
        args.dev = true;
        let c = load_from(&args, vars).expect("valid");
        assert_eq!(c.server.listen.to_string(), "10.0.0.1:3000");
        assert_eq!(c.server.data_dir, PathBuf::from("/from/flag"));
        assert!(c.server.dev);
    }

    #[test]
    fn env_names_are_case_insensitive_and_non_keys_are_ignored() {
        let c = load_env(&[
            ("herald_session__heartbeat_ms", "400"),
            ("HERALD_SERVER", "whatever"),
            ("HERALD_CONFIG", "/not/read/here.toml"),
            ("HERALD", "x"),
            ("PATH", "/usr/bin"),
            ("MY_HERALD_SESSION__X", "1"),
        ])
        .expect("valid");
        assert_eq!(c.session.heartbeat_ms, 400);
    }

    #[test]
    fn empty_env_value_unsets_an_optional_key() {
        let secret = "x".repeat(40);
        let (_, c) = load_file(
            &format!("[auth]\nhs256_secret = \"{secret}\"\n"),
            &[("HERALD_AUTH__HS256_SECRET", "")],
        );
        assert_eq!(c.expect("valid").auth.hs256_secret, None);
        let c = load_env(&[("HERALD_AUTH__PUBLIC_KEY_PEM", "/etc/k.pem")]).expect("valid");
        assert_eq!(c.auth.public_key_pem.as_deref(), Some("/etc/k.pem"));
    }

    #[test]
    fn bad_enum_from_env_names_key_source_and_accepted_values() {
        assert_eq!(
            err_env(&[("HERALD_IDENTITY__POLICY", "duo")]),
            "identity.policy = \"duo\" (from HERALD_IDENTITY__POLICY): \
             expected one of multi | single | reject_new"
        );
        assert_eq!(
            err_env(&[("HERALD_STORAGE__DURABILITY", "never")]),
            "storage.durability = \"never\" (from HERALD_STORAGE__DURABILITY): \
             expected one of fsync | os"
        );
        assert!(err_env(&[("HERALD_INBOX__NEW_DEVICE_START", "newest")])
            .contains("expected one of oldest | latest"));
    }

    #[test]
    fn bad_numbers_and_bools_from_env() {
        assert_eq!(
            err_env(&[("HERALD_SESSION__HEARTBEAT_MS", "25s")]),
            "session.heartbeat_ms = \"25s\" (from HERALD_SESSION__HEARTBEAT_MS): \
             expected a whole number of milliseconds, at least 100"
        );
        assert!(
            err_env(&[("HERALD_SESSION__MAX_INFLIGHT", "-1")]).starts_with(
                "session.max_inflight = -1 (from HERALD_SESSION__MAX_INFLIGHT): expected"
            )
        );
        // Out of range for a u32.
        assert!(err_env(&[("HERALD_IDENTITY__MAX_DEVICES", "99999999999")])
            .starts_with("identity.max_devices = 99999999999"));
        assert!(err_env(&[("HERALD_SERVER__DEV", "yes")])
            .contains("server.dev = \"yes\" (from HERALD_SERVER__DEV): expected true or false"));
        assert!(err_env(&[("HERALD_SERVER__LISTEN", "localhost:80")])
            .contains("expected a socket address"));
    }

    #[test]
    fn unknown_env_keys_are_errors() {
        assert_eq!(
            err_env(&[("HERALD_SESSION__HEARTBEAT", "1")]),
            "unknown key session.heartbeat (from HERALD_SESSION__HEARTBEAT); known keys in \
             [session]: reconnect_timeout_ms, heartbeat_ms, heartbeat_grace_ms, hello_timeout_ms, \
             max_inflight, max_bad_frames"
        );
        let e = err_env(&[("HERALD_SESION__HEARTBEAT_MS", "1")]);
        assert!(e.starts_with("unknown section [sesion] (from HERALD_SESION__HEARTBEAT_MS); known sections: server, identity, session"), "{e}");
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let (path, r) = load_file("[session]\nheartbeat = 5\n", &[]);
        assert_eq!(
            r.expect_err("unknown key").to_string(),
            format!(
                "unknown key session.heartbeat (from {}); known keys in [session]: \
                 reconnect_timeout_ms, heartbeat_ms, heartbeat_grace_ms, hello_timeout_ms, \
                 max_inflight, max_bad_frames",
                path.display()
            )
        );
        let (_, r) = load_file("[sessions]\nheartbeat_ms = 5\n", &[]);
        assert!(r
            .expect_err("unknown")
            .to_string()
            .starts_with("unknown section [sessions]"));
        let (_, r) = load_file("listen = \"0.0.0.0:1\"\n", &[]);
        assert!(r
            .expect_err("top level")
            .to_string()
            .ends_with("is not inside a section; did you mean to put it under [server]?"));
        let (_, r) = load_file("server = 3\n", &[]);
        assert!(r
            .expect_err("not a table")
            .to_string()
            .contains("[server] (from "));
    }

    #[test]
    fn bad_values_in_file() {
        let (path, r) = load_file("[identity]\npolicy = \"duo\"\n", &[]);
        assert_eq!(
            r.expect_err("bad").to_string(),
            format!(
                "identity.policy = \"duo\" (from {}): expected one of multi | single | reject_new",
                path.display()
            )
        );
        let (_, r) = load_file("[limits]\nmax_frame_bytes = \"1MB\"\n", &[]);
        assert!(r
            .expect_err("bad")
            .to_string()
            .starts_with("limits.max_frame_bytes = \"1MB\" (from "));
        let (_, r) = load_file("[api]\nkeys = \"k1\"\n", &[]);
        let e = r.expect_err("bad").to_string();
        assert!(
            e.contains("api.keys = <redacted>") && !e.contains("k1"),
            "{e}"
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let (_, r) = load_file(
            "[session]\nheartbeat = 1\n[identity]\npolicy = \"x\"\n",
            &[("HERALD_STORAGE__DURABILITY", "maybe")],
        );
        let e = r.expect_err("bad");
        let ConfigError::Invalid(problems) = &e else {
            panic!("{e:?}");
        };
        assert_eq!(problems.len(), 3, "{e}");
        assert!(e.to_string().starts_with("3 configuration problems:\n  - "));
    }

    #[test]
    fn unreadable_and_invalid_files() {
        let args = ServeArgs {
            config: Some(PathBuf::from("/nonexistent/herald.toml")),
            ..ServeArgs::default()
        };
        let e = load_from(&args, Vec::new()).expect_err("missing");
        assert!(e
            .to_string()
            .starts_with("cannot read config file /nonexistent/herald.toml: "));
        let (path, r) = load_file("[server\nlisten = 1", &[]);
        let e = r.expect_err("syntax").to_string();
        assert!(
            e.starts_with(&format!(
                "config file {} is not valid TOML: ",
                path.display()
            )),
            "{e}"
        );
    }

    #[test]
    fn rules_name_the_key_and_its_source() {
        assert_eq!(
            err_env(&[("HERALD_SESSION__HEARTBEAT_MS", "50")]),
            "session.heartbeat_ms = 50 (from HERALD_SESSION__HEARTBEAT_MS): must be at least 100"
        );
        let (path, r) = load_file("[limits]\nmax_body_bytes = 2000000\n", &[]);
        assert_eq!(
            r.expect_err("relation").to_string(),
            format!(
                "limits.max_body_bytes = 2000000 (from {}): must not exceed \
                 limits.max_frame_bytes = 1048576 (from default)",
                path.display()
            )
        );
        for (var, value) in [
            ("HERALD_SERVER__MAX_CONNECTIONS", "0"),
            ("HERALD_IDENTITY__MAX_DEVICES", "0"),
            ("HERALD_SESSION__HELLO_TIMEOUT_MS", "0"),
            ("HERALD_SESSION__MAX_INFLIGHT", "0"),
            ("HERALD_SESSION__MAX_BAD_FRAMES", "0"),
            ("HERALD_LIMITS__MAX_FRAME_BYTES", "100"),
            ("HERALD_LIMITS__SEND_QUEUE_FRAMES", "0"),
            ("HERALD_RETENTION__TRIM_INTERVAL_MS", "0"),
            ("HERALD_STORAGE__MAX_BATCH", "0"),
            ("HERALD_AUTH__LEEWAY_MS", "3600000"),
            ("HERALD_API__KEYS", "good,has space"),
            ("HERALD_API__EVENTS_HEARTBEAT_MS", "10"),
        ] {
            let e = err_env(&[(var, value)]);
            assert!(e.contains(&format!("(from {var}): must")), "{var}: {e}");
        }
        // Zero is fine where it disables a rule.
        assert!(load_env(&[
            ("HERALD_SESSION__RECONNECT_TIMEOUT_MS", "0"),
            ("HERALD_RETENTION__CHANNEL_MAX_MESSAGES", "0"),
            ("HERALD_DEDUPE__WINDOW_MS", "0"),
            ("HERALD_STORAGE__MAX_DB_BYTES", "0"),
        ])
        .is_ok());
    }

    #[test]
    fn secrets_are_never_printed() {
        let e = err_env(&[("HERALD_AUTH__HS256_SECRET", "hunter2")]);
        assert_eq!(
            e,
            "auth.hs256_secret = <redacted> (from HERALD_AUTH__HS256_SECRET): is 7 bytes; \
             HS256 needs at least 32 (generate one with: openssl rand -hex 32)"
        );
        let mut c = full_config();
        c.auth.hs256_secret = Some("hunter2-hunter2-hunter2-hunter2-hunter2".into());
        c.api.keys = vec!["topsecretkey".into()];
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("topsecretkey"),
            "{debug}"
        );
    }

    const HOOK: &str = "[[webhooks]]\nurl = \"http://127.0.0.1:9000/h\"\nevents = [\"eviction\", \"gap\"]\nsecret = \"s3cret-value\"\n";

    #[test]
    fn webhooks_load_from_the_file_with_defaults_and_reach_the_engine() {
        let text = format!(
            "{HOOK}\n[[webhooks]]\nurl = \"http://localhost/all\"\nevents = [\"*\"]\nsecret = \"x\"\n\
             timeout_ms = 250\nretry_initial_ms = 10\nretry_max_ms = 20\nfailed_after_attempts = 2\n"
        );
        let (_, r) = load_file(&text, &[]);
        let c = r.expect("valid");
        assert_eq!(c.webhooks.len(), 2);
        let (a, b) = (&c.webhooks[0], &c.webhooks[1]);
        assert_eq!(a.url, "http://127.0.0.1:9000/h");
        assert_eq!(a.events, ["eviction", "gap"]);
        assert_eq!(a.secret, "s3cret-value");
        assert_eq!(
            (
                a.timeout_ms,
                a.retry_initial_ms,
                a.retry_max_ms,
                a.failed_after_attempts
            ),
            (5000, 1000, 300_000, 5)
        );
        assert_eq!(
            (
                b.timeout_ms,
                b.retry_initial_ms,
                b.retry_max_ms,
                b.failed_after_attempts
            ),
            (250, 10, 20, 2)
        );
        let routes = c.engine_config().webhooks;
        assert_eq!(
            routes,
            [
                WebhookRoute {
                    target: "http://127.0.0.1:9000/h".into(),
                    kinds: vec!["eviction".into(), "gap".into()],
                },
                WebhookRoute {
                    target: "http://localhost/all".into(),
                    kinds: vec!["*".into()],
                },
            ]
        );
        // Other sections from the environment still merge over a file with webhooks.
        let (_, r) = load_file(HOOK, &[("HERALD_SESSION__HEARTBEAT_MS", "300")]);
        let c = r.expect("valid");
        assert_eq!(c.session.heartbeat_ms, 300);
        assert_eq!(c.webhooks.len(), 1);
        assert!(!format!("{c:?}").contains("s3cret-value"));
    }

    #[test]
    fn webhook_rules_name_the_entry_key_and_rule() {
        let bad = |entry: &str| -> String {
            let (_, r) = load_file(&format!("[[webhooks]]\n{entry}"), &[]);
            r.expect_err("invalid").to_string()
        };
        let ok = "events = [\"*\"]\nsecret = \"k\"\n";
        let e = bad(&format!("url = \"https://example.com/h\"\n{ok}"));
        assert!(
            e.contains("webhooks[#1].url = \"https://example.com/h\"")
                && e.contains("https is not supported"),
            "{e}"
        );
        let e = bad(&format!("url = \"ftp://example.com/h\"\n{ok}"));
        assert!(e.contains("use http://"), "{e}");
        let e = bad(&format!("url = \"not a url\"\n{ok}"));
        assert!(e.contains("is not a URL"), "{e}");
        let e = bad(&format!("url = \"http://u:p@example.com/\"\n{ok}"));
        assert!(e.contains("credentials"), "{e}");
        let e = bad("url = \"http://h/\"\nevents = [\"evictions\"]\nsecret = \"k\"\n");
        assert!(e.contains("webhooks[#1].events") && e.contains("\"evictions\" is not an event kind; known kinds: eviction, resume_failed, gap, kick"), "{e}");
        let e = bad("url = \"http://h/\"\nevents = []\nsecret = \"k\"\n");
        assert!(e.contains("must name at least one event kind"), "{e}");
        let e = bad("url = \"http://h/\"\nevents = [\"*\"]\nsecret = \"\"\n");
        assert!(
            e.contains("webhooks[#1].secret = <redacted>") && e.contains("must not be empty"),
            "{e}"
        );
        let e = bad("events = [\"*\"]\nsecret = \"k\"\n");
        assert!(
            e.contains("webhook #1 (from ") && e.contains("has no url"),
            "{e}"
        );
        let e = bad(&format!("url = \"http://h/\"\n{ok}timeout = 5\n"));
        assert!(
            e.contains("unknown key timeout in webhook #1")
                && e.contains("known keys in [[webhooks]]: url, events, secret, timeout_ms"),
            "{e}"
        );
        let e = bad(&format!("url = \"http://h/\"\n{ok}timeout_ms = \"5s\"\n"));
        assert!(
            e.contains("webhooks[#1].timeout_ms = \"5s\"")
                && e.contains("expected a whole number of milliseconds"),
            "{e}"
        );
        let e = bad("url = \"http://h/\"\nevents = [\"*\"]\nsecret = 12345\n");
        assert!(
            e.contains("webhooks[#1].secret = <redacted>") && !e.contains("12345"),
            "{e}"
        );
        let e = bad(&format!(
            "url = \"http://h/\"\n{ok}retry_initial_ms = 500\nretry_max_ms = 100\n"
        ));
        assert!(
            e.contains("webhooks[#1].retry_max_ms = 100")
                && e.contains("at least retry_initial_ms = 500"),
            "{e}"
        );
        for key in ["timeout_ms", "retry_initial_ms", "failed_after_attempts"] {
            let e = bad(&format!(
                "url = \"http://h/\"\n{ok}retry_max_ms = 1000\n{key} = 0\n"
            ));
            assert!(
                e.contains(&format!("webhooks[#1].{key} = 0")) && e.contains("at least 1"),
                "{e}"
            );
        }
        // Loopback is allowed; the same url twice is not.
        let (_, r) = load_file(&format!("{HOOK}{HOOK}"), &[]);
        let e = r.expect_err("duplicate").to_string();
        assert!(
            e.contains("webhooks[#2].url") && e.contains("must differ"),
            "{e}"
        );
        // A table instead of an array of tables.
        let (_, r) = load_file("[webhooks]\nurl = \"http://h/\"\n", &[]);
        let e = r.expect_err("not an array").to_string();
        assert!(
            e.contains("must be an array of tables") && e.contains("[[webhooks]]"),
            "{e}"
        );
    }

    #[test]
    fn webhooks_cannot_come_from_the_environment() {
        let e = err_env(&[("HERALD_WEBHOOKS__URL", "http://h/")]);
        assert!(
            e.starts_with("HERALD_WEBHOOKS__URL: webhooks are an array of tables and cannot be set from the environment"),
            "{e}"
        );
    }

    #[test]
    fn the_commented_webhook_example_is_a_valid_entry() {
        let text = defaults_toml();
        let start = text.find("# [[webhooks]]\n").expect("example present");
        let example: String = text[start..]
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.starts_with("[[") || l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        for (key, ..) in WEBHOOK_KEYS {
            assert!(
                example.contains(&format!("\n{key} = ")),
                "{key} missing:\n{example}"
            );
        }
        let (_, r) = load_file(&example, &[]);
        let c = r.expect("the example loads");
        assert_eq!(c.webhooks.len(), 1);
        for kind in EVENT_KINDS {
            assert!(text.contains(kind), "{kind} not documented");
        }
        assert!(text.contains("Not settable from the environment"));
    }

    #[test]
    fn webhook_key_table_matches_the_struct() {
        let entry = WebhookEntry {
            url: "http://h/".into(),
            events: vec!["*".into()],
            secret: "k".into(),
            timeout_ms: 1,
            retry_initial_ms: 1,
            retry_max_ms: 1,
            failed_after_attempts: 1,
        };
        let table = toml::Table::try_from(&entry).expect("serializes");
        let fields: Vec<&str> = table.keys().map(String::as_str).collect();
        let mut documented: Vec<&str> = WEBHOOK_KEYS.iter().map(|(k, ..)| *k).collect();
        let mut fields = fields;
        fields.sort_unstable();
        documented.sort_unstable();
        assert_eq!(fields, documented);
    }
}
