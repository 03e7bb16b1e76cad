//! PLACEHOLDER so branch bench-a compiles alone: helper C's real `idle.rs` replaces this file
//! whole at merge (same `Opts` fields used by main.rs, `Default`, `smoke()`, `run`).

use std::path::Path;

pub struct Opts {
    pub sizes: Vec<usize>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            sizes: vec![10_000, 50_000, 100_000],
        }
    }
}

impl Opts {
    pub fn smoke() -> Opts {
        Opts { sizes: vec![200] }
    }
}

pub async fn run(_opts: &Opts, _out_dir: &Path) -> anyhow::Result<serde_json::Value> {
    anyhow::bail!("the idle scenario is not built into this herald-bench yet")
}
