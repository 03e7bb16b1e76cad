//! Transports: how clients reach the engine. The listener admits and serves TCP connections
//! (HTTP/1.1 and WebSocket upgrades); `ws` is the WebSocket protocol on top.
pub(crate) mod listener;
pub(crate) mod tls;
pub(crate) mod ws;
