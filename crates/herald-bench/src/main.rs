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
    let list = |flag: &str| -> Option<Vec<u64>> {
        let i = args.iter().position(|a| a == flag)?;
        args.get(i + 1)
            .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
    };
    if what == "idle" || what == "all" {
        let mut o = if smoke {
            idle::Opts::smoke()
        } else {
            idle::Opts::default()
        };
        if let Some(v) = list("--idle-sizes") {
            o.sizes = v.into_iter().map(|x| x as usize).collect();
        }
        if let Some(v) = list("--idle-hold-secs") {
            o.hold = std::time::Duration::from_secs(v.first().copied().unwrap_or(0));
        }
        idle::run(&o, &out).await?;
    }
    if what == "resume" || what == "all" {
        let mut o = if smoke {
            resume::Opts::smoke()
        } else {
            resume::Opts::default()
        };
        if let Some(v) = list("--resume-missed") {
            o.missed = v;
        }
        if let Some(v) = list("--resume-clients") {
            o.clients = v.first().copied().unwrap_or(1) as usize;
        }
        if let Some(v) = list("--rounds") {
            o.rounds = v.first().copied().unwrap_or(1) as usize;
        }
        resume::run(&o, &out).await?;
    }
    if what == "restart" || what == "all" {
        let mut o = if smoke {
            restart::Opts::smoke()
        } else {
            restart::Opts::default()
        };
        if let Some(v) = list("--restart-sizes") {
            o.sizes = v;
        }
        if let Some(v) = list("--rounds") {
            o.rounds = v.first().copied().unwrap_or(1) as usize;
        }
        restart::run(&o, &out).await?;
    }
    Ok(())
}
