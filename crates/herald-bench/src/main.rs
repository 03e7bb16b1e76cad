//! `herald-bench`: measures herald against the speed of light for this stack (a raw WebSocket
//! relay) and against its peers, alternating systems within one run and reporting medians.
// Benchmarks measure wall-clock time of real processes.
#![allow(clippy::disallowed_types)]

mod model;
mod procs;
mod scenario;
mod systems;

fn main() -> anyhow::Result<()> {
    Ok(())
}
