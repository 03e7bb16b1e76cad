//! The systems under test. Each file owns one system: how to start it, and how scenario
//! traffic is sent and received through it.

pub mod herald;
pub mod mosquitto;
pub mod nats;
mod peers;
pub mod redis;
pub mod relay;
mod wsload;

use crate::model::System;

/// Every system name `--systems` accepts, in the default order.
pub const ALL: &[&str] = &[
    "herald-fsync",
    "herald-os",
    "relay",
    "nats",
    "redis",
    "mosquitto",
];

/// A fresh, not yet started system by its `--systems` name.
pub fn make_system(name: &str) -> anyhow::Result<Box<dyn System>> {
    Ok(match name {
        "herald-fsync" => Box::new(herald::Herald::new(herald::Durability::Fsync)),
        "herald-os" => Box::new(herald::Herald::new(herald::Durability::Os)),
        "relay" => Box::new(relay::Relay::new()),
        "nats" => Box::new(nats::Nats::new()),
        "redis" => Box::new(redis::Redis::new()),
        "mosquitto" => Box::new(mosquitto::Mosquitto::new()),
        other => anyhow::bail!("unknown system {other:?}; known: {}", ALL.join(", ")),
    })
}
