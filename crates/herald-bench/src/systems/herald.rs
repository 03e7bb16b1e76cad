//! herald itself, driven over its wire protocol by [`super::wsload`] (the same client code as
//! the raw relay, so the two are compared like for like).
//!
//! Client shape: each pair is a publisher connection (uid `p<i>`) publishing to `user:s<i>`
//! and a subscriber connection (uid `s<i>`) reading its inbox and acking cumulatively once per
//! WebSocket message read. Publishers pipeline: every publish due at a wake-up goes into one
//! WebSocket message (`\n`-separated frames), as a batching client would, and at saturation
//! `window` publishes stay unanswered. Fan-out subscribers `sub` live (no `from`: live from
//! now) to channel `fan` before the publisher starts.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;

use super::wsload::{self, Flavor, Target};
use crate::model::{FanoutOutcome, FanoutParams, PairsOutcome, PairsParams, System};
use crate::procs;

/// herald's `storage.durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Fsync,
    Os,
}

impl Durability {
    fn as_str(self) -> &'static str {
        match self {
            Durability::Fsync => "fsync",
            Durability::Os => "os",
        }
    }
}

/// Server limits set explicitly (docs/operations.md), so a changed default cannot silently
/// change what is measured:
/// - `session.max_inflight` 1024: unacked deliveries per session. Subscribers ack after every
///   message read, and a fan-out run publishes at most a few thousand messages, so this only
///   bounds how far the server may run ahead of a slow client.
/// - `limits.max_frame_bytes` 1 MiB: a pipelined batch of `window` publishes (about 110 bytes
///   each at 64-byte bodies) stays far below it.
/// - `limits.send_queue_frames` 4096: outbound frames buffered per connection before it is
///   treated as stalled; it must exceed max_inflight deliveries plus `window` answers, so a
///   client that is merely busy is not cut.
/// - `server.max_connections` 200000: above the largest fan-out.
/// - `limits.requests_per_sec` 0 (set by [`procs::Herald::start`]): a publisher here is one
///   heavy backend, not a phone.
const LIMITS: &[(&str, &str)] = &[
    ("SESSION__MAX_INFLIGHT", "1024"),
    ("LIMITS__MAX_FRAME_BYTES", "1048576"),
    ("LIMITS__SEND_QUEUE_FRAMES", "4096"),
    ("SERVER__MAX_CONNECTIONS", "200000"),
];

pub struct Herald {
    durability: Durability,
    server: Option<procs::Herald>,
}

impl Herald {
    pub fn new(durability: Durability) -> Herald {
        Herald {
            durability,
            server: None,
        }
    }

    fn target(&self) -> anyhow::Result<Target> {
        let s = self.server.as_ref().context("herald not started")?;
        Ok(Target {
            flavor: Flavor::Herald,
            base: s.ws_url(),
        })
    }
}

#[async_trait]
impl System for Herald {
    fn name(&self) -> String {
        format!("herald ({})", self.durability.as_str())
    }

    fn ack_guarantee(&self) -> &'static str {
        match self.durability {
            Durability::Fsync => "ok after the SQLite WAL is fsynced (survives power loss)",
            Durability::Os => {
                "ok after the commit reached the OS page cache (survives a process crash, not power loss)"
            }
        }
    }

    async fn start(&mut self, dir: &Path) -> anyhow::Result<()> {
        let data = dir.join("data");
        std::fs::create_dir_all(&data)?;
        let mut env: Vec<(&str, &str)> = LIMITS.to_vec();
        env.push(("STORAGE__DURABILITY", self.durability.as_str()));
        self.server = Some(procs::Herald::start(&data, &env, dir).await?);
        Ok(())
    }

    async fn pairs(&mut self, p: &PairsParams) -> anyhow::Result<PairsOutcome> {
        wsload::run_pairs(&self.target()?, p).await
    }

    async fn fanout(&mut self, p: &FanoutParams) -> anyhow::Result<FanoutOutcome> {
        wsload::run_fanout(&self.target()?, p).await
    }

    fn server_pids(&self) -> Vec<u32> {
        self.server.iter().map(|s| s.proc.pid()).collect()
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(s) = self.server.take() {
            s.proc.stop(Duration::from_secs(10)).await?;
        }
        Ok(())
    }
}
