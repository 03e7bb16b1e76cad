//! Redis Streams as a peer: one `redis-server` on loopback with the append-only file fsynced
//! on every write (`appendfsync always`) and RDB snapshots off. Pairs: one stream key per
//! pair; the publisher pipelines XADDs on its own connection (up to `window` in flight); the
//! subscriber reads through a consumer group with `XREADGROUP … COUNT … BLOCK` and XACKs each
//! batch by entry id. Fan-out: N clients, each doing `XREAD BLOCK` on the one stream key (no
//! group), the natural Redis fan-out.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, Context};
use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use redis::{AsyncConnectionConfig, Value};
use tokio::task::JoinSet;

use super::peers::{self, Clock, Pacer, PubPlan, Sinks};
use crate::model::{FanoutOutcome, FanoutParams, PairsOutcome, PairsParams, System};
use crate::procs::{free_port, require_binary, wait_for_port, Proc};

/// What an XADD reply means in the configuration the bench runs.
pub(crate) const ACK_GUARANTEE: &str = "XADD reply from redis-server 7.0 with `appendonly yes`, \
`appendfsync always`: the command was written to the append-only file and fsynced \
(fdatasync) before the reply was sent (commands of one event-loop iteration share one write \
and one fsync: group commit); RDB snapshots are off.";

/// Entries read per XREAD/XREADGROUP call.
const READ_COUNT: usize = 1000;
/// How long a subscriber's XREADGROUP blocks before asking again.
const BLOCK_MS: u64 = 1000;

/// How fan-out is done and why.
pub(crate) fn fanout_note() -> &'static str {
    "Redis fan-out: N connections each loop on `XREAD COUNT 1000 BLOCK 0 STREAMS key <last id>` \
     on one stream key (no consumer group: every reader sees every entry and keeps its own \
     last id), the publisher XADDs with appendfsync always."
}

pub(crate) struct Redis {
    proc: Option<Proc>,
    addr: Option<SocketAddr>,
    /// Keys get a fresh prefix per measurement so repeated runs on one server never mix.
    run: u32,
}

impl Redis {
    pub(crate) fn new() -> Redis {
        Redis {
            proc: None,
            addr: None,
            run: 0,
        }
    }

    fn client(&self) -> anyhow::Result<redis::Client> {
        let addr = self.addr.context("Redis is not started")?;
        Ok(redis::Client::open(format!("redis://{addr}/"))?)
    }
}

impl Default for Redis {
    fn default() -> Self {
        Redis::new()
    }
}

/// A connection of its own (a separate client), without the crate's default 500 ms response
/// timeout: blocking reads and fsync-bound writes legitimately take longer under load.
async fn connect(client: &redis::Client) -> anyhow::Result<MultiplexedConnection> {
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(None);
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .context("connect to redis-server")
}

/// Entry ids and bodies (field `d`) of a read reply.
fn entries(reply: StreamReadReply) -> impl Iterator<Item = (String, Option<Vec<u8>>)> {
    reply.keys.into_iter().flat_map(|k| {
        k.ids.into_iter().map(|mut e| {
            let body = match e.map.remove("d") {
                Some(Value::BulkString(b)) => Some(b),
                _ => None,
            };
            (e.id, body)
        })
    })
}

fn xadd(
    con: &MultiplexedConnection,
    key: &str,
    body: Vec<u8>,
) -> futures_util::future::BoxFuture<'static, anyhow::Result<()>> {
    let mut con = con.clone();
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key).arg("*").arg("d").arg(body);
    async move {
        let _id: String = cmd.query_async(&mut con).await.context("XADD")?;
        Ok(())
    }
    .boxed()
}

#[async_trait]
impl System for Redis {
    fn fanout_note(&self) -> Option<&'static str> {
        Some(fanout_note())
    }

    fn name(&self) -> String {
        "Redis Streams (AOF always)".into()
    }

    fn ack_guarantee(&self) -> &'static str {
        ACK_GUARANTEE
    }

    async fn start(&mut self, dir: &Path) -> anyhow::Result<()> {
        let bin = require_binary("redis-server", "redis-server")?;
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut cmd = Command::new(bin);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            // Fan-out opens 10k connections; redis caps clients at 10000 by default.
            .args(["--maxclients", "20000", "--daemonize", "no"]);
        let proc = Proc::spawn("redis-server", cmd, dir)?;
        wait_for_port(addr, Duration::from_secs(30), "redis-server").await?;
        self.proc = Some(proc);
        self.addr = Some(addr);
        Ok(())
    }

    async fn pairs(&mut self, p: &PairsParams) -> anyhow::Result<PairsOutcome> {
        let client = self.client()?;
        self.run += 1;
        let run = self.run;
        let clock = Clock::new();
        let sinks = Sinks::new(clock, p.pairs);
        let mut subs = JoinSet::new();
        let mut pubs = Vec::with_capacity(p.pairs);
        for i in 0..p.pairs {
            let key = format!("p{run}:{i}");
            let mut con = connect(&client).await?;
            let _: () = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&key)
                .arg("g")
                .arg("$")
                .arg("MKSTREAM")
                .query_async(&mut con)
                .await
                .with_context(|| format!("XGROUP CREATE {key}"))?;
            let sinks = sinks.clone();
            let sub_key = key.clone();
            subs.spawn(async move {
                loop {
                    let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg("g")
                        .arg("c")
                        .arg("COUNT")
                        .arg(READ_COUNT)
                        .arg("BLOCK")
                        .arg(BLOCK_MS)
                        .arg("STREAMS")
                        .arg(&sub_key)
                        .arg(">")
                        .query_async(&mut con)
                        .await
                        .context("XREADGROUP")?;
                    let Some(reply) = reply else { continue };
                    let mut ack = redis::cmd("XACK");
                    ack.arg(&sub_key).arg("g");
                    for (id, body) in entries(reply) {
                        sinks.record(i, body.as_deref().unwrap_or_default(), Some(i as u32));
                        ack.arg(id);
                    }
                    let _: u64 = ack.query_async(&mut con).await.context("XACK")?;
                }
                #[allow(unreachable_code)]
                Ok::<(), anyhow::Error>(())
            });
            pubs.push((key, connect(&client).await?));
        }

        let start = tokio::time::Instant::now();
        let mut tasks = JoinSet::new();
        for (i, (key, con)) in pubs.into_iter().enumerate() {
            let plan = PubPlan {
                pair: i as u32,
                body_bytes: p.body_bytes,
                window: p.window,
                pacer: Pacer::new(start, p.rate, p.pairs, i),
                end: start + p.duration,
                max_messages: None,
                clock,
            };
            tasks.spawn(async move {
                let log = peers::publish_loop(plan, |body| xadd(&con, &key, body)).await;
                (i, log)
            });
        }
        let mut logs: Vec<Option<peers::PubLog>> = (0..p.pairs).map(|_| None).collect();
        while let Some(r) = tasks.join_next().await {
            let (i, log) = r.context("publisher task")?;
            logs[i] = Some(log);
        }
        let logs: Vec<peers::PubLog> = logs.into_iter().flatten().collect();
        sinks.drain(|i| &logs[i].acked).await;
        subs.abort_all();
        if let Some(Ok(Err(e))) = subs.join_next().await {
            eprintln!("warning: a Redis subscriber failed: {e:#}");
        }
        Ok(peers::pairs_outcome(&logs, &sinks))
    }

    async fn fanout(&mut self, p: &FanoutParams) -> anyhow::Result<FanoutOutcome> {
        crate::procs::ensure_fd_limit(p.subscribers + 2, "Redis fan-out")?;
        let client = self.client()?;
        self.run += 1;
        let key = format!("f{}", self.run);
        let clock = Clock::new();
        let sinks = Sinks::new(clock, p.subscribers);
        let connect_deadline = Duration::from_secs(120);
        let cons: Vec<MultiplexedConnection> = tokio::time::timeout(
            connect_deadline,
            futures_util::stream::iter(0..p.subscribers)
                .map(|_| connect(&client))
                .buffer_unordered(peers::CONNECT_PARALLELISM)
                .try_collect(),
        )
        .await
        .map_err(|_| {
            anyhow!(
                "Redis fan-out: {} subscribers not connected within {connect_deadline:?}",
                p.subscribers
            )
        })??;
        let mut subs = JoinSet::new();
        for (i, mut con) in cons.into_iter().enumerate() {
            let sinks = sinks.clone();
            let key = key.clone();
            subs.spawn(async move {
                // From the beginning of the (not yet existing) stream: no start-up race.
                let mut last = "0-0".to_string();
                loop {
                    let reply: Option<StreamReadReply> = redis::cmd("XREAD")
                        .arg("COUNT")
                        .arg(READ_COUNT)
                        .arg("BLOCK")
                        .arg(0)
                        .arg("STREAMS")
                        .arg(&key)
                        .arg(&last)
                        .query_async(&mut con)
                        .await
                        .context("XREAD")?;
                    let Some(reply) = reply else { continue };
                    for (id, body) in entries(reply) {
                        sinks.record(i, body.as_deref().unwrap_or_default(), None);
                        last = id;
                    }
                }
                #[allow(unreachable_code)]
                Ok::<(), anyhow::Error>(())
            });
        }

        let con = connect(&client).await?;
        let start = tokio::time::Instant::now();
        let plan = PubPlan {
            pair: 0,
            body_bytes: p.body_bytes,
            window: peers::FANOUT_WINDOW,
            pacer: Pacer::new(start, p.rate, 1, 0),
            end: start + Duration::from_secs(3600),
            max_messages: Some(p.messages),
            clock,
        };
        let log = peers::publish_loop(plan, |body| xadd(&con, &key, body)).await;
        sinks.drain(|_| &log.acked).await;
        subs.abort_all();
        Ok(peers::fanout_outcome(&log, &sinks))
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        self.addr = None;
        if let Some(proc) = self.proc.take() {
            proc.stop(Duration::from_secs(5)).await?;
        }
        Ok(())
    }
}
