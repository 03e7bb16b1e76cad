//! Scenarios: each runs its workload against one or more [`crate::model::System`]s and
//! returns rows for the report.

pub mod fanout;
// helper C: idle/resume/restart (placeholders in this branch until merged).
pub mod idle;
pub mod pairs;
pub mod restart;
pub mod resume;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::model::System;
use crate::systems;

/// Options every scenario shares.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// Systems to compare, comma-separated: herald-fsync, herald-os, relay, nats, redis,
    /// mosquitto.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "herald-fsync,herald-os,relay,nats,redis,mosquitto"
    )]
    pub systems: Vec<String>,
    /// Rounds; systems alternate order each round and figures are medians across rounds.
    #[arg(long, global = true)]
    pub rounds: Option<usize>,
    /// Output directory for JSON, SVG and report.md.
    #[arg(long, global = true, default_value = "bench-out")]
    pub out: PathBuf,
    /// Tiny sizes and one round: checks that every scenario runs, in seconds.
    #[arg(long, global = true)]
    pub smoke: bool,
}

impl Common {
    pub fn rounds(&self) -> usize {
        self.rounds.unwrap_or(if self.smoke { 1 } else { 3 })
    }

    /// The systems in the order for `round`: rotated by one each round, so none is always
    /// first (machine speed drifts within a run).
    pub fn order(&self, round: usize) -> Vec<String> {
        let mut v = self.systems.clone();
        if !v.is_empty() {
            let k = round % v.len();
            v.rotate_left(k);
        }
        v
    }
}

/// Systems that could not run, by name, with the reason (e.g. the apt-get install line); once
/// a system is here the rest of the run skips it.
#[derive(Debug, Default)]
pub struct Skipped(pub BTreeMap<String, String>);

impl Skipped {
    pub fn markdown(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("- **{k}** skipped: {v}\n"))
            .collect()
    }
}

/// What one measurement gave.
pub enum Measured<T> {
    Done {
        name: String,
        guarantee: &'static str,
        value: T,
    },
    /// The system does not take part in this scenario.
    Unsupported,
    /// Missing binary or not built in: skipped for the rest of the run.
    Skipped,
    /// The measurement failed; the message goes into the report.
    Failed { name: String, error: String },
}

/// Starts `system` fresh in its own directory under `work`, runs `f`, stops it, and removes
/// the directory (kept on failure, with the logs).
pub async fn measure<T>(
    system: &str,
    work: &Path,
    label: &str,
    skipped: &mut Skipped,
    f: impl for<'a> FnOnce(
        &'a mut Box<dyn System>,
    ) -> futures_util::future::BoxFuture<'a, anyhow::Result<T>>,
) -> Measured<T> {
    if skipped.0.contains_key(system) {
        return Measured::Skipped;
    }
    let mut sys = match systems::make_system(system) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("herald-bench: skipping {system}: {e:#}");
            skipped.0.insert(system.to_string(), format!("{e:#}"));
            return Measured::Skipped;
        }
    };
    let name = sys.name();
    let dir = work.join(format!("{label}-{system}"));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return Measured::Failed {
            name,
            error: format!("create {}: {e}", dir.display()),
        };
    }
    if let Err(e) = sys.start(&dir).await {
        let msg = format!("{e:#}");
        let _ = sys.stop().await;
        if msg.contains("install it with") || msg.contains("not built") {
            eprintln!("herald-bench: skipping {system}: {msg}");
            skipped.0.insert(system.to_string(), msg);
            return Measured::Skipped;
        }
        eprintln!("herald-bench: {name} failed to start ({label}): {msg}");
        return Measured::Failed {
            name,
            error: format!("start: {msg}"),
        };
    }
    let guarantee = sys.ack_guarantee();
    let r = f(&mut sys).await;
    let stopped = sys.stop().await;
    match r {
        Ok(value) => {
            if let Err(e) = stopped {
                eprintln!("herald-bench: stopping {name}: {e:#}");
            }
            let _ = std::fs::remove_dir_all(&dir);
            Measured::Done {
                name,
                guarantee,
                value,
            }
        }
        Err(e) if e.is::<crate::model::Unsupported>() => {
            let _ = std::fs::remove_dir_all(&dir);
            Measured::Unsupported
        }
        Err(e) => {
            eprintln!(
                "herald-bench: {name} ({label}) failed: {e:#} (logs in {})",
                dir.display()
            );
            Measured::Failed {
                name,
                error: format!("{e:#}"),
            }
        }
    }
}

/// Summed CPU time of `pids` in µs; `None` if any cannot be read (or there are none).
pub fn cpu_us(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| crate::procs::cpu_us(p).ok()).sum()
}
