//! herald engine: identity, sessions, streams, cursors and delivery. No sockets.
//!
//! A transport authenticates a connection, calls [`Engine::open`] with its `hello`, then feeds
//! frames to [`Attached::handle`] and writes what [`Attached::next`] yields. Storage comes in
//! through [`herald_store::Store`]; wall time through [`Clock`].
pub mod auth;
pub mod clock;
pub mod config;
pub mod conn;
mod directory;
pub mod engine;
pub mod follow;
pub mod identity;
pub mod ids;
pub mod inspect;
pub mod metrics;
mod quota;
mod resume_key;
pub mod session;
pub mod streams;
mod trace;
pub mod webhooks;

pub use auth::{ChannelGrants, Identity};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{EngineConfig, IdentityPolicy, NewDeviceStart};
pub use conn::{Attached, Output};
pub use engine::{
    Engine, OpenError, Peer, PublishError, Published, RecipientState, RecipientView, SessionInfo,
    Trace, TracePage,
};
pub use inspect::{Overview, SessionFilter, SessionPositions, StreamPosition};
pub use metrics::Metrics;
pub use session::Control;
pub use streams::Streams;
pub use webhooks::WebhookRoute;
