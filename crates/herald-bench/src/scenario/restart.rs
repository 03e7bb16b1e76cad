//! PLACEHOLDER so branch bench-a compiles alone: helper C's real `restart.rs` replaces this file
//! whole at merge (same `Opts` fields used by main.rs, `Default`, `smoke()`, `run`).

use std::path::Path;

pub struct Opts {
    pub sizes: Vec<u64>,
    pub rounds: usize,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            sizes: vec![1_000_000, 10_000_000],
            rounds: 3,
        }
    }
}

impl Opts {
    pub fn smoke() -> Opts {
        Opts {
            sizes: vec![10_000],
            rounds: 1,
        }
    }
}

pub async fn run(_opts: &Opts, _out_dir: &Path) -> anyhow::Result<serde_json::Value> {
    anyhow::bail!("the restart scenario is not built into this herald-bench yet")
}
