//! PLACEHOLDER so branch bench-a compiles alone: helper C's real `resume.rs` replaces this file
//! whole at merge (same `Opts` fields used by main.rs, `Default`, `smoke()`, `run`).

use std::path::Path;

pub struct Opts {
    pub missed: Vec<u64>,
    pub rounds: usize,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            missed: vec![1_000, 10_000],
            rounds: 3,
        }
    }
}

impl Opts {
    pub fn smoke() -> Opts {
        Opts {
            missed: vec![50],
            rounds: 1,
        }
    }
}

pub async fn run(_opts: &Opts, _out_dir: &Path) -> anyhow::Result<serde_json::Value> {
    anyhow::bail!("the resume scenario is not built into this herald-bench yet")
}
