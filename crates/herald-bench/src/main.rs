//! `herald-bench`: measures herald against the speed of light for this stack (a raw WebSocket
//! relay) and against its peers, alternating systems within one run and reporting medians.
//!
//! `herald-bench all [--smoke] [--rounds N] [--out DIR]` runs every scenario and writes
//! `DIR/report.md`; `herald-bench pairs|fanout|idle|resume|restart` runs one.
// Benchmarks measure wall-clock time of real processes.
#![allow(clippy::disallowed_types)]
// A binary crate: `pub` marks the interface between its files; nothing is exported.
#![allow(unreachable_pub)]

mod model;
// Until the peers (helper B) and idle/resume/restart (helper C) are merged, parts of the
// process helpers have no caller in this branch.
#[allow(dead_code)]
mod procs;
mod report;
mod scenario;
mod systems;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use clap::{Parser, Subcommand};

use report::Section;
use scenario::fanout::FanoutOpts;
use scenario::pairs::PairsOpts;
use scenario::Common;

#[derive(Parser, Debug)]
#[command(
    name = "herald-bench",
    version,
    about = "Benchmarks herald against a raw WebSocket relay and its peers"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Scenario 1: 1:1 acknowledged messaging (pairs), saturation and fixed rates.
    Pairs(PairsOpts),
    /// Scenario 2: fan-out from one channel to many subscribers.
    Fanout(FanoutOpts),
    /// Scenario 3: server memory per idle WebSocket session (herald).
    Idle(IdleArgs),
    /// Scenario 4: resume, time from reconnect to caught up (herald).
    Resume(ResumeArgs),
    /// Scenario 5: restart, time to ready with many stored messages (herald).
    Restart(RestartArgs),
    /// Every scenario, then `<out>/report.md`.
    All,
    /// The raw relay process (started by the bench itself).
    #[command(hide = true)]
    RelayServer {
        #[arg(long)]
        listen: SocketAddr,
    },
}

#[derive(clap::Args, Debug, Clone)]
struct IdleArgs {
    /// Idle session counts (default 10000,50000,100000).
    #[arg(long, value_delimiter = ',')]
    sessions: Vec<usize>,
}

#[derive(clap::Args, Debug, Clone)]
struct ResumeArgs {
    /// Missed-message counts (default 1000,10000).
    #[arg(long, value_delimiter = ',')]
    missed: Vec<u64>,
}

#[derive(clap::Args, Debug, Clone)]
struct RestartArgs {
    /// Stored-message counts (default 1000000,10000000).
    #[arg(long, value_delimiter = ',')]
    stored: Vec<u64>,
}

// helper C: idle/resume/restart plug in here. Their `Opts` are plain structs with `Default`
// and `smoke()`; the flags above override the sizes, `--rounds` the rounds.
fn idle_opts(c: &Common, a: &IdleArgs) -> scenario::idle::Opts {
    let mut o = if c.smoke {
        scenario::idle::Opts::smoke()
    } else {
        scenario::idle::Opts::default()
    };
    if !a.sessions.is_empty() {
        o.sizes.clone_from(&a.sessions);
    }
    o
}

fn resume_opts(c: &Common, a: &ResumeArgs) -> scenario::resume::Opts {
    let mut o = if c.smoke {
        scenario::resume::Opts::smoke()
    } else {
        scenario::resume::Opts::default()
    };
    if !a.missed.is_empty() {
        o.missed.clone_from(&a.missed);
    }
    if let Some(r) = c.rounds {
        o.rounds = r;
    }
    o
}

fn restart_opts(c: &Common, a: &RestartArgs) -> scenario::restart::Opts {
    let mut o = if c.smoke {
        scenario::restart::Opts::smoke()
    } else {
        scenario::restart::Opts::default()
    };
    if !a.stored.is_empty() {
        o.sizes.clone_from(&a.stored);
    }
    if let Some(r) = c.rounds {
        o.rounds = r;
    }
    o
}

/// A section for report.md from a scenario that returns JSON and prints its own table: its
/// `markdown` field if it has one, else the JSON itself.
fn json_section(title: &str, file: &str, v: &serde_json::Value) -> Section {
    let markdown = match v.get("markdown").and_then(|m| m.as_str()) {
        Some(md) => format!("{md}\n\nJSON: [{file}]({file})\n"),
        None => format!(
            "JSON: [{file}]({file})\n\n```json\n{}\n```\n",
            serde_json::to_string_pretty(v).unwrap_or_default()
        ),
    };
    Section {
        title: title.into(),
        markdown,
        failures: 0,
    }
}

async fn run_scenario(cli: &Cli, cmd: &Cmd, out: &Path) -> anyhow::Result<Section> {
    let c = &cli.common;
    Ok(match cmd {
        Cmd::Pairs(o) => {
            let o = if c.smoke {
                PairsOpts::smoke()
            } else {
                o.clone()
            };
            scenario::pairs::run(c, &o, out).await?
        }
        Cmd::Fanout(o) => {
            let o = if c.smoke {
                FanoutOpts::smoke()
            } else {
                o.clone()
            };
            scenario::fanout::run(c, &o, out).await?
        }
        Cmd::Idle(a) => json_section(
            "Idle connections",
            "idle.json",
            &scenario::idle::run(&idle_opts(c, a), out).await?,
        ),
        Cmd::Resume(a) => json_section(
            "Resume",
            "resume.json",
            &scenario::resume::run(&resume_opts(c, a), out).await?,
        ),
        Cmd::Restart(a) => json_section(
            "Restart",
            "restart.json",
            &scenario::restart::run(&restart_opts(c, a), out).await?,
        ),
        Cmd::All | Cmd::RelayServer { .. } => anyhow::bail!("not a scenario"),
    })
}

/// Runs every scenario in turn (a failing one is reported and the run goes on) and writes
/// `report.md`.
async fn run_all(cli: &Cli, out: &Path) -> anyhow::Result<()> {
    // Each scenario with its default flags (or smoke sizes).
    let defaults = |args: &[&str]| -> anyhow::Result<Cmd> {
        let argv = ["herald-bench"].iter().chain(args.iter());
        Ok(Cli::try_parse_from(argv)
            .context("default scenario flags")?
            .cmd)
    };
    let scenarios = [
        defaults(&["pairs"])?,
        defaults(&["fanout"])?,
        defaults(&["idle"])?,
        defaults(&["resume"])?,
        defaults(&["restart"])?,
    ];
    let started = std::time::Instant::now();
    let mut sections = Vec::new();
    for s in &scenarios {
        let t = std::time::Instant::now();
        match run_scenario(cli, s, out).await {
            Ok(sec) => sections.push((sec, t.elapsed())),
            Err(e) => {
                let msg = format!("{e:#}");
                // A scenario not built in yet is a skip, not a failure.
                let failed = usize::from(!msg.contains("not built into this herald-bench"));
                eprintln!("herald-bench: scenario failed: {msg}");
                let name = format!("{s:?}");
                let name = name.split('(').next().unwrap_or("scenario").to_string();
                sections.push((
                    Section {
                        title: name,
                        markdown: format!("Not measured: {msg}\n"),
                        failures: failed,
                    },
                    t.elapsed(),
                ));
            }
        }
    }
    let mut md = String::from("# herald benchmark report\n\n");
    let _ = writeln!(
        md,
        "Command: `{}`\n",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    let _ = writeln!(
        md,
        "Systems: {}; {} round(s), systems in rotating order each round, each measurement on a \
         freshly started system, figures are medians across rounds. Total time {:.0} s.\n",
        cli.common.systems.join(", "),
        cli.common.rounds(),
        started.elapsed().as_secs_f64()
    );
    md.push_str("## Machine\n\n");
    md.push_str(&report::machine_description());
    md.push('\n');
    md.push_str("## What an acknowledgement means\n\n");
    for name in &cli.common.systems {
        if let Ok(sys) = systems::make_system(name) {
            let _ = writeln!(md, "- **{}**: {}", sys.name(), sys.ack_guarantee());
            if let Some(note) = sys.fanout_note() {
                let _ = writeln!(md, "  Fan-out: {note}");
            }
        }
    }
    md.push('\n');
    for (s, took) in &sections {
        let _ = writeln!(
            md,
            "## {}\n\n_{:.0} s_\n\n{}",
            s.title,
            took.as_secs_f64(),
            s.markdown
        );
    }
    let path = out.join("report.md");
    std::fs::write(&path, md).with_context(|| format!("write {}", path.display()))?;
    println!("\nreport: {}", path.display());
    let failures: usize = sections.iter().map(|(s, _)| s.failures).sum();
    if failures > 0 {
        anyhow::bail!(
            "{failures} failed measurement(s) or herald runs with lost/duplicate messages; see {}",
            path.display()
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Cmd::RelayServer { listen } = &cli.cmd {
        return systems::relay::serve(*listen).await;
    }
    let out = cli.common.out.clone();
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    let r = match &cli.cmd {
        Cmd::All => run_all(&cli, &out).await,
        cmd => {
            let s = run_scenario(&cli, cmd, &out).await?;
            std::fs::write(
                out.join(format!(
                    "{}.md",
                    s.title.split_whitespace().next().unwrap_or("scenario")
                )),
                &s.markdown,
            )?;
            Ok(())
        }
    };
    // Per-measurement directories are removed after success; drop their parent if empty.
    let _ = std::fs::remove_dir(out.join("work"));
    r
}
