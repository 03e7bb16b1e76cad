//! `herald-bench`: measures herald against the speed of light for this stack (a raw WebSocket
//! relay) and against its peers, alternating systems within one run and reporting medians.
// Benchmarks measure wall-clock time of real processes.
#![allow(clippy::disallowed_types)]

mod model;
mod procs;
mod scenario;
mod systems;

use std::time::Duration;

use model::{FanoutParams, PairsParams, System};

/// Temporary (helper B's branch; helper A's runner replaces this): tries the peer systems.
/// `herald-bench peers-try [pairs] [seconds] [rate|sat] [body] [fanout-subscribers]`.
fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("peers-try") {
        return Ok(());
    }
    let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_string());
    let pairs: usize = arg(1, "2").parse()?;
    let secs: u64 = arg(2, "3").parse()?;
    let rate = match arg(3, "sat").as_str() {
        "sat" => None,
        r => Some(r.parse()?),
    };
    let body: usize = arg(4, "64").parse()?;
    let fan: usize = arg(5, "0").parse()?;
    let only = arg(6, "all");
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            type Entry = (Box<dyn System>, Option<String>, &'static str);
            let systems: Vec<Entry> = vec![
                (
                    Box::new(systems::nats::Nats::new()),
                    systems::nats::version(),
                    systems::nats::fanout_note(),
                ),
                (
                    Box::new(systems::redis::Redis::new()),
                    systems::redis::version(),
                    systems::redis::fanout_note(),
                ),
                (
                    Box::new(systems::mosquitto::Mosquitto::new()),
                    systems::mosquitto::version(),
                    systems::mosquitto::fanout_note(),
                ),
            ];
            for (mut sys, version, note) in systems {
                if only != "all" && !sys.name().to_lowercase().contains(&only) {
                    continue;
                }
                println!(
                    "== {} ({version:?})\n   ack: {}",
                    sys.name(),
                    sys.ack_guarantee()
                );
                let dir = std::env::temp_dir().join(format!(
                    "herald-bench-try-{}-{}",
                    std::process::id(),
                    sys.name().split_whitespace().next().unwrap_or("x")
                ));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir)?;
                sys.start(&dir).await?;
                let p = PairsParams {
                    pairs,
                    body_bytes: body,
                    rate,
                    window: 64,
                    duration: Duration::from_secs(secs),
                };
                match sys.pairs(&p).await {
                    Ok(o) => println!(
                        "   pairs={pairs} rate={rate:?}: acked={} delivered={} lost={} dup={} \
                         {:.0} msg/s  e2e p50={} p99={} p99.9={} µs  ack p50={} p99={} µs",
                        o.acked,
                        o.delivered,
                        o.lost,
                        o.duplicates,
                        o.acked as f64 / o.elapsed.as_secs_f64().max(1e-9),
                        o.e2e_us.value_at_quantile(0.5),
                        o.e2e_us.value_at_quantile(0.99),
                        o.e2e_us.value_at_quantile(0.999),
                        o.ack_us.value_at_quantile(0.5),
                        o.ack_us.value_at_quantile(0.99),
                    ),
                    Err(e) => println!("   pairs failed: {e:#}"),
                }
                if fan > 0 {
                    println!("   {note}");
                    let f = FanoutParams {
                        subscribers: fan,
                        body_bytes: body,
                        messages: 200,
                        rate: None,
                    };
                    match sys.fanout(&f).await {
                        Ok(o) => println!(
                            "   fanout n={fan}: published={} deliveries={} lost={} dup={} \
                             {:.0} deliveries/s  p50={} p99={} µs",
                            o.published,
                            o.deliveries,
                            o.lost,
                            o.duplicates,
                            o.deliveries as f64 / o.elapsed.as_secs_f64().max(1e-9),
                            o.latency_us.value_at_quantile(0.5),
                            o.latency_us.value_at_quantile(0.99),
                        ),
                        Err(e) => println!("   fanout failed: {e:#}"),
                    }
                }
                sys.stop().await?;
                let _ = std::fs::remove_dir_all(&dir);
            }
            Ok(())
        })
}
