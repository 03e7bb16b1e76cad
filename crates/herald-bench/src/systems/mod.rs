//! The systems under test. Each file owns one system: how to start it, and how scenario
//! traffic is sent and received through it.

pub mod mosquitto;
pub mod nats;
mod peers;
pub mod redis;
