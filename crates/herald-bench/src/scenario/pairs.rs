//! Scenario 1: 1:1 acknowledged messaging. P publisher/subscriber pairs, body S bytes, at
//! saturation and at fixed offered rates, for every system, several rounds with the systems
//! in rotating order, each measurement on a freshly started system; medians across rounds.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use futures_util::FutureExt;
use serde_json::json;

use super::{cpu_us, measure, Common, Measured, Skipped};
use crate::model::PairsParams;
use crate::report::{int, line_chart, median, ms, write_json, Section, Series, Table};

#[derive(clap::Args, Debug, Clone)]
pub struct PairsOpts {
    /// Pair counts measured at saturation.
    #[arg(long, value_delimiter = ',', default_value = "10,50")]
    pub pairs: Vec<usize>,
    /// Body size in bytes of JSON.
    #[arg(long, default_value_t = 64)]
    pub body: usize,
    /// Fixed total offered rates (msg/s) measured in addition to saturation.
    #[arg(long, value_delimiter = ',', default_value = "5000,10000,20000,40000")]
    pub rates: Vec<u64>,
    /// Pair counts at which the fixed rates are measured.
    #[arg(long, value_delimiter = ',', default_value = "10")]
    pub rate_pairs: Vec<usize>,
    /// Unanswered publishes each publisher keeps in flight (saturation), or at most has
    /// (fixed rate).
    #[arg(long, default_value_t = 128)]
    pub window: usize,
    /// Seconds each measurement publishes for.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
}

impl PairsOpts {
    /// Tiny sizes for `--smoke`.
    pub fn smoke() -> PairsOpts {
        PairsOpts {
            pairs: vec![2],
            body: 64,
            rates: vec![1000],
            rate_pairs: vec![2],
            window: 16,
            seconds: 0.2,
        }
    }
}

/// One measurement's figures (latencies in µs).
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    system: String,
    name: String,
    guarantee: String,
    pairs: usize,
    rate: Option<u64>,
    round: usize,
    acked: u64,
    delivered: u64,
    lost: u64,
    duplicates: u64,
    elapsed_s: f64,
    msgs_per_s: f64,
    e2e_p50_us: u64,
    e2e_p99_us: u64,
    e2e_p999_us: u64,
    e2e_max_us: u64,
    ack_p50_us: u64,
    ack_p99_us: u64,
    /// Server CPU time (user + system, whole process, 10 ms ticks) per acknowledged message.
    server_cpu_us_per_msg: Option<f64>,
}

/// Medians across rounds of one (system, pairs, rate).
#[derive(Debug, Clone, serde::Serialize)]
struct Median {
    system: String,
    name: String,
    guarantee: String,
    pairs: usize,
    rate: Option<u64>,
    rounds: usize,
    msgs_per_s: f64,
    e2e_p50_us: f64,
    e2e_p99_us: f64,
    e2e_p999_us: f64,
    ack_p99_us: f64,
    server_cpu_us_per_msg: Option<f64>,
    /// Summed over rounds (must be 0).
    lost: u64,
    duplicates: u64,
}

fn rate_label(rate: Option<u64>) -> String {
    rate.map_or_else(|| "saturation".into(), |r| int(r as f64))
}

fn int_u(v: u64) -> String {
    int(v as f64)
}

pub async fn run(common: &Common, opts: &PairsOpts, out: &Path) -> anyhow::Result<Section> {
    let mut configs: Vec<(usize, Option<u64>)> = opts.pairs.iter().map(|&p| (p, None)).collect();
    for &p in &opts.rate_pairs {
        for &r in &opts.rates {
            configs.push((p, Some(r)));
        }
    }
    let work = out.join("work");
    let mut skipped = Skipped::default();
    let mut rows = Vec::<Row>::new();
    let mut failures = Vec::<String>::new();
    let rounds = common.rounds();
    for round in 0..rounds {
        for &(pairs, rate) in &configs {
            for system in common.order(round) {
                let params = PairsParams {
                    pairs,
                    body_bytes: opts.body,
                    rate,
                    window: opts.window,
                    duration: Duration::from_secs_f64(opts.seconds),
                };
                let label = format!(
                    "pairs-r{round}-p{pairs}-{}",
                    rate.map_or("sat".into(), |r| r.to_string())
                );
                eprintln!(
                    "herald-bench: pairs round {}/{rounds}: {system}, {pairs} pairs, {}",
                    round + 1,
                    rate_label(rate)
                );
                let p = params.clone();
                match measure(&system, &work, &label, &mut skipped, move |s| {
                    async move {
                        let pids = s.server_pids();
                        let before = cpu_us(&pids);
                        let o = s.pairs(&p).await?;
                        let cpu = cpu_us(&pids).zip(before).map(|(a, b)| a.saturating_sub(b));
                        Ok((o, cpu))
                    }
                    .boxed()
                })
                .await
                {
                    Measured::Done {
                        name,
                        guarantee,
                        value: (o, cpu),
                    } => {
                        let secs = o.elapsed.as_secs_f64();
                        rows.push(Row {
                            system: system.clone(),
                            name,
                            guarantee: guarantee.into(),
                            pairs,
                            rate,
                            round,
                            acked: o.acked,
                            delivered: o.delivered,
                            lost: o.lost,
                            duplicates: o.duplicates,
                            elapsed_s: secs,
                            msgs_per_s: if secs > 0.0 {
                                o.acked as f64 / secs
                            } else {
                                0.0
                            },
                            e2e_p50_us: o.e2e_us.value_at_quantile(0.5),
                            e2e_p99_us: o.e2e_us.value_at_quantile(0.99),
                            e2e_p999_us: o.e2e_us.value_at_quantile(0.999),
                            e2e_max_us: o.e2e_us.max(),
                            ack_p50_us: o.ack_us.value_at_quantile(0.5),
                            ack_p99_us: o.ack_us.value_at_quantile(0.99),
                            server_cpu_us_per_msg: cpu
                                .filter(|_| o.acked > 0)
                                .map(|c| c as f64 / o.acked as f64),
                        });
                    }
                    Measured::Failed { name, error } => failures.push(format!(
                        "{name}, {pairs} pairs, {}, round {}: {error}",
                        rate_label(rate),
                        round + 1
                    )),
                    Measured::Unsupported | Measured::Skipped => {}
                }
            }
        }
    }

    // Medians per (system, pairs, rate), in the order systems were given.
    let mut groups: BTreeMap<(usize, usize, Option<u64>), Vec<&Row>> = BTreeMap::new();
    for r in &rows {
        let idx = common
            .systems
            .iter()
            .position(|s| *s == r.system)
            .unwrap_or(usize::MAX);
        groups.entry((idx, r.pairs, r.rate)).or_default().push(r);
    }
    let medians: Vec<Median> = groups
        .values()
        .map(|g| {
            let m = |f: fn(&Row) -> f64| {
                median(&g.iter().map(|r| f(r)).collect::<Vec<_>>()).unwrap_or(0.0)
            };
            Median {
                system: g[0].system.clone(),
                name: g[0].name.clone(),
                guarantee: g[0].guarantee.clone(),
                pairs: g[0].pairs,
                rate: g[0].rate,
                rounds: g.len(),
                msgs_per_s: m(|r| r.msgs_per_s),
                e2e_p50_us: m(|r| r.e2e_p50_us as f64),
                e2e_p99_us: m(|r| r.e2e_p99_us as f64),
                e2e_p999_us: m(|r| r.e2e_p999_us as f64),
                ack_p99_us: m(|r| r.ack_p99_us as f64),
                server_cpu_us_per_msg: median(
                    &g.iter()
                        .filter_map(|r| r.server_cpu_us_per_msg)
                        .collect::<Vec<_>>(),
                ),
                lost: g.iter().map(|r| r.lost).sum(),
                duplicates: g.iter().map(|r| r.duplicates).sum(),
            }
        })
        .collect();

    let mut table = Table::new(
        &format!("1:1 acknowledged messaging, {}-byte bodies, medians of {rounds} round(s) (latencies in ms)", opts.body),
        &["system", "pairs", "offered msg/s", "msg/s", "e2e p50", "e2e p99", "e2e p99.9", "ack p99", "srv CPU µs/msg", "lost", "dup"],
    );
    let mut sorted = medians.clone();
    sorted.sort_by_key(|m| (m.pairs, m.rate.unwrap_or(u64::MAX)));
    for m in &sorted {
        table.row(vec![
            m.name.clone(),
            m.pairs.to_string(),
            rate_label(m.rate),
            int(m.msgs_per_s),
            ms(m.e2e_p50_us),
            ms(m.e2e_p99_us),
            ms(m.e2e_p999_us),
            ms(m.ack_p99_us),
            m.server_cpu_us_per_msg
                .map_or_else(|| "-".into(), |c| format!("{c:.1}")),
            int_u(m.lost),
            int_u(m.duplicates),
        ]);
    }
    table.print();

    // Ratios at saturation: each herald durability against every other system.
    let mut ratios = Table::new(
        "Throughput ratios at saturation (herald ÷ other, medians)",
        &["pairs", "herald", "vs", "ratio"],
    );
    let mut ratio_json = Vec::new();
    for &p in &opts.pairs {
        let sat: Vec<&Median> = medians
            .iter()
            .filter(|m| m.pairs == p && m.rate.is_none())
            .collect();
        for h in sat.iter().filter(|m| m.system.starts_with("herald")) {
            for o in sat.iter().filter(|m| !m.system.starts_with("herald")) {
                if o.msgs_per_s > 0.0 {
                    let r = h.msgs_per_s / o.msgs_per_s;
                    ratios.row(vec![
                        p.to_string(),
                        h.name.clone(),
                        o.name.clone(),
                        format!("{r:.2}"),
                    ]);
                    ratio_json
                        .push(json!({"pairs": p, "herald": h.name, "vs": o.name, "ratio": r}));
                }
            }
        }
    }
    ratios.print();

    // Plots: p99 against offered rate per system (one chart per pair count), and saturation
    // throughput against pair count.
    let mut plots = Vec::new();
    let names: Vec<(String, String)> = {
        let mut v: Vec<(String, String)> = medians
            .iter()
            .map(|m| (m.system.clone(), m.name.clone()))
            .collect();
        v.dedup();
        v
    };
    for &p in &opts.rate_pairs {
        let series: Vec<Series> = names
            .iter()
            .map(|(sys, name)| Series {
                name: name.clone(),
                points: medians
                    .iter()
                    .filter(|m| &m.system == sys && m.pairs == p)
                    .filter_map(|m| m.rate.map(|r| (r as f64, m.e2e_p99_us / 1000.0)))
                    .collect(),
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        if !series.is_empty() {
            let file = format!("pairs-p99-vs-rate-{p}pairs.svg");
            std::fs::write(
                out.join(&file),
                line_chart(
                    &format!("e2e p99 vs offered rate, {p} pairs"),
                    "offered msg/s (total)",
                    "e2e p99 (ms)",
                    &series,
                ),
            )?;
            plots.push(file);
        }
    }
    let series: Vec<Series> = names
        .iter()
        .map(|(sys, name)| Series {
            name: name.clone(),
            points: medians
                .iter()
                .filter(|m| &m.system == sys && m.rate.is_none())
                .map(|m| (m.pairs as f64, m.msgs_per_s))
                .collect(),
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    if !series.is_empty() {
        let file = "pairs-saturation.svg".to_string();
        std::fs::write(
            out.join(&file),
            line_chart("acked throughput at saturation", "pairs", "msg/s", &series),
        )?;
        plots.push(file);
    }

    for f in &failures {
        eprintln!("herald-bench: pairs failure: {f}");
    }
    write_json(
        &out.join("pairs.json"),
        &json!({
            "params": {"pairs": opts.pairs, "body_bytes": opts.body, "rates": opts.rates, "rate_pairs": opts.rate_pairs,
                       "window": opts.window, "seconds": opts.seconds, "rounds": rounds},
            "rounds": rows,
            "medians": medians,
            "ratios_at_saturation": ratio_json,
            "skipped": skipped.0,
            "failures": failures,
        }),
    )?;

    let mut md = String::new();
    md.push_str(&format!(
        "Each pair: a publisher connection sending to its own subscriber, {} s per measurement, \
         window {} unanswered publishes per publisher at saturation. Publishers pipeline: every \
         publish due at one wake-up goes into one WebSocket message; fixed rates are paced by a \
         100 µs OS-thread tick. Subscribers ack cumulatively once per WebSocket message read. \
         e2e latency runs from the intended (scheduled) send time to receipt, so a stalled \
         sender is not hidden; lost = acknowledged but not received within 10 s after the last \
         answer. JSON: [pairs.json](pairs.json).\n\n",
        opts.seconds, opts.window
    ));
    md.push_str(&table.markdown());
    md.push('\n');
    md.push_str(&ratios.markdown());
    md.push('\n');
    for p in &plots {
        md.push_str(&format!("![{p}]({p})\n\n"));
    }
    md.push_str(&skipped.markdown());
    for f in &failures {
        md.push_str(&format!("- failed: {f}\n"));
    }
    let bad_herald = medians
        .iter()
        .filter(|m| m.system.starts_with("herald") && (m.lost > 0 || m.duplicates > 0))
        .count();
    Ok(Section {
        failures: failures.len() + bad_herald,
        title: "1:1 acknowledged messaging (pairs)".into(),
        markdown: md,
    })
}
