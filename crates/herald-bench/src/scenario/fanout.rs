//! Scenario 2: fan-out. One channel, N subscriber connections, one publisher; deliveries/s and
//! publish→receipt latency, lost and duplicated deliveries, for every system that takes part.

use std::collections::BTreeMap;
use std::path::Path;

use futures_util::FutureExt;
use serde_json::json;

use super::{measure, Common, Measured, Skipped};
use crate::model::FanoutParams;
use crate::report::{int, line_chart, median, ms, write_json, Section, Series, Table};

#[derive(clap::Args, Debug, Clone)]
pub struct FanoutOpts {
    /// Subscriber counts.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub subscribers: Vec<usize>,
    /// Messages published per measurement.
    #[arg(long, default_value_t = 200)]
    pub messages: u64,
    /// Body size in bytes of JSON.
    #[arg(long, default_value_t = 64)]
    pub body: usize,
    /// Offered publish rate (msg/s); omitted = as fast as acknowledgements allow.
    #[arg(long)]
    pub rate: Option<u64>,
}

impl FanoutOpts {
    pub fn smoke() -> FanoutOpts {
        FanoutOpts {
            subscribers: vec![20],
            messages: 50,
            body: 64,
            rate: None,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    system: String,
    name: String,
    guarantee: String,
    subscribers: usize,
    round: usize,
    published: u64,
    deliveries: u64,
    lost: u64,
    duplicates: u64,
    elapsed_s: f64,
    deliveries_per_s: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
struct Median {
    system: String,
    name: String,
    guarantee: String,
    subscribers: usize,
    rounds: usize,
    deliveries_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    lost: u64,
    duplicates: u64,
}

pub async fn run(common: &Common, opts: &FanoutOpts, out: &Path) -> anyhow::Result<Section> {
    if let Some(&max) = opts.subscribers.iter().max() {
        crate::procs::ensure_fd_limit(max, "fan-out")?;
    }
    let work = out.join("work");
    let mut skipped = Skipped::default();
    let mut rows = Vec::<Row>::new();
    let mut failures = Vec::<String>::new();
    let mut unsupported = std::collections::BTreeSet::new();
    let rounds = common.rounds();
    for round in 0..rounds {
        for &subs in &opts.subscribers {
            for system in common.order(round) {
                if unsupported.contains(&system) {
                    continue;
                }
                let p = FanoutParams {
                    subscribers: subs,
                    body_bytes: opts.body,
                    messages: opts.messages,
                    rate: opts.rate,
                };
                eprintln!(
                    "herald-bench: fanout round {}/{rounds}: {system}, {subs} subscribers",
                    round + 1
                );
                let label = format!("fanout-r{round}-n{subs}");
                match measure(&system, &work, &label, &mut skipped, move |s| {
                    async move { s.fanout(&p).await }.boxed()
                })
                .await
                {
                    Measured::Done {
                        name,
                        guarantee,
                        value: o,
                    } => {
                        let secs = o.elapsed.as_secs_f64();
                        rows.push(Row {
                            system: system.clone(),
                            name,
                            guarantee: guarantee.into(),
                            subscribers: subs,
                            round,
                            published: o.published,
                            deliveries: o.deliveries,
                            lost: o.lost,
                            duplicates: o.duplicates,
                            elapsed_s: secs,
                            deliveries_per_s: if secs > 0.0 {
                                o.deliveries as f64 / secs
                            } else {
                                0.0
                            },
                            p50_us: o.latency_us.value_at_quantile(0.5),
                            p99_us: o.latency_us.value_at_quantile(0.99),
                            p999_us: o.latency_us.value_at_quantile(0.999),
                            max_us: o.latency_us.max(),
                        });
                    }
                    Measured::Unsupported => {
                        unsupported.insert(system.clone());
                    }
                    Measured::Failed { name, error } => failures.push(format!(
                        "{name}, {subs} subscribers, round {}: {error}",
                        round + 1
                    )),
                    Measured::Skipped => {}
                }
            }
        }
    }

    let mut groups: BTreeMap<(usize, usize), Vec<&Row>> = BTreeMap::new();
    for r in &rows {
        let idx = common
            .systems
            .iter()
            .position(|s| *s == r.system)
            .unwrap_or(usize::MAX);
        groups.entry((r.subscribers, idx)).or_default().push(r);
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
                subscribers: g[0].subscribers,
                rounds: g.len(),
                deliveries_per_s: m(|r| r.deliveries_per_s),
                p50_us: m(|r| r.p50_us as f64),
                p99_us: m(|r| r.p99_us as f64),
                p999_us: m(|r| r.p999_us as f64),
                lost: g.iter().map(|r| r.lost).sum(),
                duplicates: g.iter().map(|r| r.duplicates).sum(),
            }
        })
        .collect();

    let mut table = Table::new(
        &format!("Fan-out, one channel, {} messages of {} bytes, medians of {rounds} round(s) (latencies in ms)", opts.messages, opts.body),
        &["system", "subscribers", "deliveries/s", "p50", "p99", "p99.9", "lost", "dup"],
    );
    for m in &medians {
        table.row(vec![
            m.name.clone(),
            int(m.subscribers as f64),
            int(m.deliveries_per_s),
            ms(m.p50_us),
            ms(m.p99_us),
            ms(m.p999_us),
            int(m.lost as f64),
            int(m.duplicates as f64),
        ]);
    }
    table.print();

    let mut names: Vec<(String, String)> = Vec::new();
    for m in &medians {
        if !names.iter().any(|(s, _)| *s == m.system) {
            names.push((m.system.clone(), m.name.clone()));
        }
    }
    let series = |f: fn(&Median) -> f64| -> Vec<Series> {
        names
            .iter()
            .map(|(sys, name)| Series {
                name: name.clone(),
                points: medians
                    .iter()
                    .filter(|m| &m.system == sys)
                    .map(|m| (m.subscribers as f64, f(m)))
                    .collect(),
            })
            .collect()
    };
    let mut plots = Vec::new();
    if !medians.is_empty() {
        std::fs::write(
            out.join("fanout-rate.svg"),
            line_chart(
                "fan-out deliveries/s",
                "subscribers",
                "deliveries/s",
                &series(|m| m.deliveries_per_s),
            ),
        )?;
        std::fs::write(
            out.join("fanout-p99.svg"),
            line_chart(
                "fan-out delivery latency p99",
                "subscribers",
                "p99 (ms)",
                &series(|m| m.p99_us / 1000.0),
            ),
        )?;
        plots = vec!["fanout-rate.svg", "fanout-p99.svg"];
    }
    for f in &failures {
        eprintln!("herald-bench: fanout failure: {f}");
    }
    write_json(
        &out.join("fanout.json"),
        &json!({
            "params": {"subscribers": opts.subscribers, "messages": opts.messages, "body_bytes": opts.body, "rate": opts.rate, "rounds": rounds},
            "rounds": rows,
            "medians": medians,
            "unsupported": unsupported,
            "skipped": skipped.0,
            "failures": failures,
        }),
    )?;

    let mut md = format!(
        "One publisher, {} messages to one channel; every subscriber subscribed before the first \
         publish; latency from the intended send time to each receipt. JSON: [fanout.json](fanout.json).\n\n",
        opts.messages
    );
    md.push_str(&table.markdown());
    md.push('\n');
    for p in &plots {
        md.push_str(&format!("![{p}]({p})\n\n"));
    }
    if !unsupported.is_empty() {
        md.push_str(&format!(
            "Not taking part: {}\n\n",
            unsupported.into_iter().collect::<Vec<_>>().join(", ")
        ));
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
        title: "Fan-out".into(),
        markdown: md,
    })
}
