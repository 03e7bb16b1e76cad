//! NATS JetStream as a peer: a single `nats-server -js` on loopback with a file-backed stream.
//! Pairs: each publisher publishes with ack (up to `window` acks in flight) to its own subject,
//! each subscriber is a durable pull consumer filtered to that subject with explicit acks
//! (`AckExplicit`, one `+ACK` per message, sent without waiting for the server's confirmation).
//! Fan-out: see [`fanout_note`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, Context};
use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use tokio::task::JoinSet;

use super::peers::{self, Clock, Pacer, PubPlan, Sinks};
use crate::model::{FanoutOutcome, FanoutParams, PairsOutcome, PairsParams, System};
use crate::procs::{free_port, require_binary, wait_for_port, Proc};

/// What a JetStream publish acknowledgement means in the configuration the bench runs.
pub(crate) const ACK_GUARANTEE: &str = "PubAck from a single nats-server 2.9.10, file \
storage: the message is in the stream's file store, NOT fsynced (no fsync/fdatasync by \
nats-server under strace during a run); 2.9 has no sync-always option (`sync_interval: always` \
came in 2.10; 2.9.10 rejects it as an unknown field), the file store syncs in the background, \
so an OS crash or power loss can lose acknowledged messages.";

/// How long a publish ack (and any JetStream API call) may take: under a 10k fan-out the
/// server answers late, and the client's 5 s default would turn slow acks into failures.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// How fan-out is done and why.
pub(crate) fn fanout_note() -> &'static str {
    "NATS fan-out: the publisher publishes with JetStream ack (stored in the file-backed \
     stream); the N subscribers are plain core-NATS subscriptions on that subject, each on its \
     own connection. That is what NATS users do for live fan-out to many clients: one JetStream \
     consumer per subscriber (10k server-side consumers on one stream) is not how JetStream is \
     meant to be used. Delivery to subscribers is therefore at-most-once and live only (no \
     per-subscriber cursor or replay), which is weaker than a durable per-subscriber cursor; \
     drops (slow consumers) are counted as lost."
}

pub(crate) struct Nats {
    proc: Option<Proc>,
    addr: Option<SocketAddr>,
    /// Streams get a fresh name per measurement so repeated runs on one server never mix.
    run: u32,
}

impl Nats {
    pub(crate) fn new() -> Nats {
        Nats {
            proc: None,
            addr: None,
            run: 0,
        }
    }

    fn url(&self) -> anyhow::Result<String> {
        let addr = self.addr.context("NATS is not started")?;
        Ok(format!("nats://{addr}"))
    }

    /// A JetStream context on its own connection whose publish acks may take [`ACK_TIMEOUT`].
    async fn jetstream(url: &str) -> anyhow::Result<jetstream::Context> {
        let mut js = jetstream::new(Nats::connect(url).await?);
        js.set_timeout(ACK_TIMEOUT);
        Ok(js)
    }

    async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .with_context(|| format!("connect to NATS at {url}"))
    }
}

impl Default for Nats {
    fn default() -> Self {
        Nats::new()
    }
}

#[async_trait]
impl System for Nats {
    fn fanout_note(&self) -> Option<&'static str> {
        Some(fanout_note())
    }

    fn name(&self) -> String {
        "NATS JetStream".into()
    }

    fn ack_guarantee(&self) -> &'static str {
        ACK_GUARANTEE
    }

    async fn start(&mut self, dir: &Path) -> anyhow::Result<()> {
        let bin = require_binary("nats-server", "nats-server")?;
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let store: PathBuf = dir.join("jetstream");
        let mut cmd = Command::new(bin);
        cmd.arg("-js")
            .arg("-sd")
            .arg(&store)
            .arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(port.to_string());
        let proc = Proc::spawn("nats-server", cmd, dir)?;
        wait_for_port(addr, Duration::from_secs(30), "nats-server").await?;
        self.proc = Some(proc);
        self.addr = Some(addr);
        Ok(())
    }

    async fn pairs(&mut self, p: &PairsParams) -> anyhow::Result<PairsOutcome> {
        let url = self.url()?;
        self.run += 1;
        let run = self.run;
        let admin = jetstream::new(Nats::connect(&url).await?);
        let stream_name = format!("PAIRS{run}");
        create_file_stream(&admin, &stream_name, format!("p{run}.>")).await?;

        let clock = Clock::new();
        let sinks = Sinks::new(clock, p.pairs);
        let mut subs = JoinSet::new();
        let mut pubs = Vec::with_capacity(p.pairs);
        for i in 0..p.pairs {
            // Each subscriber and each publisher has its own connection, as separate clients.
            let sub_js = jetstream::new(Nats::connect(&url).await?);
            let consumer: consumer::PullConsumer = sub_js
                .get_stream(&stream_name)
                .await
                .map_err(|e| anyhow!("get stream {stream_name}: {e}"))?
                .create_consumer(consumer::pull::Config {
                    durable_name: Some(format!("c{i}")),
                    filter_subject: format!("p{run}.{i}"),
                    ack_policy: consumer::AckPolicy::Explicit,
                    // Room for the publisher's whole window plus what is being delivered.
                    max_ack_pending: (p.window as i64 * 4).max(10_000),
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow!("create consumer c{i}: {e}"))?;
            let sinks = sinks.clone();
            let mut messages = consumer
                .messages()
                .await
                .map_err(|e| anyhow!("consume c{i}: {e}"))?;
            subs.spawn(async move {
                while let Some(msg) = messages.next().await {
                    let msg = match msg {
                        Ok(m) => m,
                        Err(e) => return Err(anyhow!("consumer c{i}: {e}")),
                    };
                    sinks.record(i, &msg.payload, Some(i as u32));
                    msg.ack().await.map_err(|e| anyhow!("ack c{i}: {e}"))?;
                }
                Ok::<(), anyhow::Error>(())
            });
            pubs.push(Nats::jetstream(&url).await?);
        }

        let start = tokio::time::Instant::now();
        let mut tasks = JoinSet::new();
        for (i, js) in pubs.into_iter().enumerate() {
            let plan = PubPlan {
                pair: i as u32,
                body_bytes: p.body_bytes,
                window: p.window,
                pacer: Pacer::new(start, p.rate, p.pairs, i),
                end: start + p.duration,
                max_messages: None,
                clock,
            };
            let subject = format!("p{run}.{i}");
            tasks.spawn(async move {
                let log = peers::publish_loop(plan, |body| {
                    let js = js.clone();
                    let subject = subject.clone();
                    async move {
                        let ack = js
                            .publish(subject, body.into())
                            .await
                            .map_err(|e| anyhow!("publish: {e}"))?;
                        ack.await.map_err(|e| anyhow!("publish ack: {e}"))?;
                        Ok(())
                    }
                    .boxed()
                })
                .await;
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
        let out = peers::pairs_outcome(&logs, &sinks);
        let _ = admin.delete_stream(&stream_name).await;
        Ok(out)
    }

    async fn fanout(&mut self, p: &FanoutParams) -> anyhow::Result<FanoutOutcome> {
        crate::procs::ensure_fd_limit(p.subscribers + 2, "NATS fan-out")?;
        let url = self.url()?;
        self.run += 1;
        let run = self.run;
        let subject = format!("f{run}.all");
        let admin = jetstream::new(Nats::connect(&url).await?);
        let stream_name = format!("FAN{run}");
        create_file_stream(&admin, &stream_name, format!("f{run}.>")).await?;

        let clock = Clock::new();
        let sinks = Sinks::new(clock, p.subscribers);
        // Connect and subscribe with bounded parallelism; flush so the server has registered
        // each subscription before the first publish.
        let connect_deadline = Duration::from_secs(120);
        let subscriptions: Vec<(usize, async_nats::Client, async_nats::Subscriber)> =
            tokio::time::timeout(
                connect_deadline,
                futures_util::stream::iter(0..p.subscribers)
                    .map(|i| {
                        let url = url.clone();
                        let subject = subject.clone();
                        async move {
                            let c = Nats::connect(&url).await?;
                            let s = c
                                .subscribe(subject)
                                .await
                                .map_err(|e| anyhow!("subscribe: {e}"))?;
                            c.flush().await.map_err(|e| anyhow!("flush: {e}"))?;
                            Ok::<_, anyhow::Error>((i, c, s))
                        }
                    })
                    .buffer_unordered(peers::CONNECT_PARALLELISM)
                    .try_collect(),
            )
            .await
            .map_err(|_| {
                anyhow!(
                    "NATS fan-out: {} subscribers not connected within {connect_deadline:?}",
                    p.subscribers
                )
            })??;
        let mut subs = JoinSet::new();
        let mut clients = Vec::with_capacity(subscriptions.len());
        for (i, c, mut s) in subscriptions {
            clients.push(c);
            let sinks = sinks.clone();
            subs.spawn(async move {
                while let Some(m) = s.next().await {
                    sinks.record(i, &m.payload, None);
                }
            });
        }

        let js = Nats::jetstream(&url).await?;
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
        let log = peers::publish_loop(plan, |body| {
            let js = js.clone();
            let subject = subject.clone();
            async move {
                let ack = js
                    .publish(subject, body.into())
                    .await
                    .map_err(|e| anyhow!("publish: {e}"))?;
                ack.await.map_err(|e| anyhow!("publish ack: {e}"))?;
                Ok(())
            }
            .boxed()
        })
        .await;
        sinks.drain(|_| &log.acked).await;
        subs.abort_all();
        drop(clients);
        let _ = admin.delete_stream(&stream_name).await;
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

/// A file-backed JetStream stream named `name` over `subjects`.
async fn create_file_stream(
    admin: &jetstream::Context,
    name: &str,
    subjects: String,
) -> anyhow::Result<()> {
    admin
        .create_stream(stream::Config {
            name: name.to_string(),
            subjects: vec![subjects],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow!("create stream {name}: {e}"))?;
    Ok(())
}
