//! Transports: how clients reach the engine. Only WebSocket for now.
pub(crate) mod ws;
