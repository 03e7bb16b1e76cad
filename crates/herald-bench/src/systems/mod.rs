//! The systems under test. Each file owns one system: how to start it, and how scenario
//! traffic is sent and received through it.

pub(crate) mod mosquitto;
pub(crate) mod nats;
mod peers;
pub(crate) mod redis;
