//! `herald-bench`: measures herald against the speed of light for this stack (a raw WebSocket
//! relay) and against its peers, alternating systems within one run and reporting medians.
// Benchmarks measure wall-clock time of real processes.
#![allow(clippy::disallowed_types)]
// Temporary (branch bench-c): helper A's main.rs wires every scenario.
#![allow(dead_code, unreachable_pub)]

mod model;
mod procs;
mod scenario;
mod systems;

use std::path::PathBuf;

use scenario::{idle, restart, resume};

/// Minimal driver until the real CLI lands: `herald-bench <idle|resume|restart|all>
/// [--smoke] [--out DIR]`.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args.first().cloned().unwrap_or_else(|| "all".into());
    let smoke = args.iter().any(|a| a == "--smoke");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("bench-out"));
    std::fs::create_dir_all(&out)?;
    if what == "idle" || what == "all" {
        let o = if smoke {
            idle::Opts::smoke()
        } else {
            idle::Opts::default()
        };
        idle::run(&o, &out).await?;
    }
    if what == "resume" || what == "all" {
        let o = if smoke {
            resume::Opts::smoke()
        } else {
            resume::Opts::default()
        };
        resume::run(&o, &out).await?;
    }
    if what == "restart" || what == "all" {
        let o = if smoke {
            restart::Opts::smoke()
        } else {
            restart::Opts::default()
        };
        restart::run(&o, &out).await?;
    }
    Ok(())
}
