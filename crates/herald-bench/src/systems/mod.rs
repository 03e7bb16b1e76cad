//! The systems under test. Each file owns one system: how to start it, and how scenario
//! traffic is sent and received through it.

pub mod herald;
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
        // helper B: "nats" => Box::new(nats::Nats::new()), etc. plug in here.
        "nats" | "redis" | "mosquitto" => {
            anyhow::bail!("{name}: not built into this herald-bench yet")
        }
        other => anyhow::bail!("unknown system {other:?}; known: {}", ALL.join(", ")),
    })
}
