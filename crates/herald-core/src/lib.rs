//! herald engine: identity, sessions, streams, cursors and delivery. No sockets.
pub mod auth;
pub mod config;

pub use auth::{ChannelGrants, Identity};
pub use config::{EngineConfig, IdentityPolicy, NewDeviceStart};
