//! Mosquitto as a peer: one `mosquitto` broker on loopback with persistence on, MQTT 3.1.1
//! QoS 1. Pairs: each publisher publishes QoS 1 to `bench/<i>` (PUBACK = ack, up to `window`
//! unacknowledged), each subscriber holds a QoS 1 subscription to its topic in a persistent
//! session (clean session off, so the broker keeps its queue if it drops). Fan-out: N QoS 1
//! subscribers on one topic. Broker limits on in-flight and queued messages are lifted so
//! nothing is dropped silently; whatever is still dropped is counted as lost.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::peers::{self, Clock, Pacer, PubPlan, Sinks};
use crate::model::{FanoutOutcome, FanoutParams, PairsOutcome, PairsParams, System};
use crate::procs::{free_port, require_binary, wait_for_port, Proc};

/// What a QoS 1 PUBACK means in the configuration the bench runs.
pub(crate) const ACK_GUARANTEE: &str =
    "PUBACK (QoS 1) from mosquitto 2.0 with `persistence true`: the \
broker has the message in memory and queued it for subscribers; nothing is written per \
message: the in-memory database is saved to mosquitto.db only every `autosave_interval` \
(default 1800 s) and at shutdown, so a broker crash loses acknowledged messages (not fsynced, \
not even written).";

/// Largest MQTT packet the clients accept or send.
const MAX_PACKET: usize = 16 << 20;

/// How fan-out is done.
pub(crate) fn fanout_note() -> &'static str {
    "Mosquitto fan-out: N MQTT clients, each its own connection with a persistent session and \
     a QoS 1 subscription to one topic; the publisher publishes QoS 1."
}

pub(crate) struct Mosquitto {
    proc: Option<Proc>,
    port: Option<u16>,
    /// Client ids and topics get a fresh prefix per measurement.
    run: u32,
}

impl Mosquitto {
    pub(crate) fn new() -> Mosquitto {
        Mosquitto {
            proc: None,
            port: None,
            run: 0,
        }
    }

    fn port(&self) -> anyhow::Result<u16> {
        self.port.context("mosquitto is not started")
    }
}

impl Default for Mosquitto {
    fn default() -> Self {
        Mosquitto::new()
    }
}

fn options(id: String, port: u16, inflight: usize) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_clean_session(false)
        // A broker busy fanning out to 10k clients answers pings late; the run is bounded by
        // the scenario, not by keep-alive.
        .set_keep_alive(Duration::from_secs(600))
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_inflight(inflight.clamp(1, u16::MAX as usize - 1) as u16 + 1)
        .set_request_channel_capacity(inflight.max(10));
    o
}

/// No Nagle delay; a generous socket timeout (rumqttc's 5 s default fails a write to a broker
/// that is busy fanning out, which would end the connection mid-run).
fn tune(ev: &mut EventLoop) {
    ev.network_options.set_tcp_nodelay(true);
    ev.network_options.set_connection_timeout(60);
}

/// Polls `ev` until the broker answered CONNECT (bounded).
async fn connected(ev: &mut EventLoop) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => bail!("MQTT connect: {e}"),
            }
        }
    })
    .await
    .map_err(|_| anyhow!("MQTT connect: no CONNACK within 30 s"))?
}

/// A QoS 1 publisher: `send` resolves at the PUBACK for that publish. PUBACKs carry the packet
/// id the event loop assigned, so publishes enter a FIFO in the order they enter the client,
/// and the event loop pairs each outgoing packet id with the next FIFO entry.
struct Publisher {
    client: AsyncClient,
    topic: String,
    /// Held across "queue the ack slot, hand the publish to the client" to keep both in order.
    order: Arc<tokio::sync::Mutex<()>>,
    fifo: Arc<Mutex<VecDeque<oneshot::Sender<()>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    async fn connect(id: String, port: u16, topic: String, window: usize) -> anyhow::Result<Self> {
        let (client, mut ev) = AsyncClient::new(options(id, port, window), window.max(10));
        tune(&mut ev);
        connected(&mut ev).await?;
        let fifo: Arc<Mutex<VecDeque<oneshot::Sender<()>>>> = Arc::default();
        let f = fifo.clone();
        let task = tokio::spawn(async move {
            let mut by_pkid: HashMap<u16, oneshot::Sender<()>> = HashMap::new();
            loop {
                match ev.poll().await {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        let tx = f.lock().expect("fifo lock is never poisoned").pop_front();
                        if let Some(tx) = tx {
                            by_pkid.insert(pkid, tx);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(a))) => {
                        if let Some(tx) = by_pkid.remove(&a.pkid) {
                            let _ = tx.send(());
                        }
                    }
                    Ok(_) => {}
                    // Dropping the senders fails every pending publish: not acked.
                    Err(_) => return,
                }
            }
        });
        Ok(Publisher {
            client,
            topic,
            order: Arc::default(),
            fifo,
            task,
        })
    }

    fn send(&self, body: Vec<u8>) -> BoxFuture<'static, anyhow::Result<()>> {
        let client = self.client.clone();
        let topic = self.topic.clone();
        let order = self.order.clone();
        let fifo = self.fifo.clone();
        async move {
            let (tx, rx) = oneshot::channel();
            {
                let _in_order = order.lock().await;
                fifo.lock()
                    .expect("fifo lock is never poisoned")
                    .push_back(tx);
                client
                    .publish(topic, QoS::AtLeastOnce, false, body)
                    .await
                    .context("MQTT publish")?;
            }
            rx.await
                .map_err(|_| anyhow!("MQTT connection ended before PUBACK"))
        }
        .boxed()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects a subscriber `sub` with a QoS 1 subscription to `topic`; returns once the broker
/// acknowledged the subscription, with the task that records its receipts.
async fn subscribe(
    id: String,
    port: u16,
    topic: String,
    sub: usize,
    expect_pair: Option<u32>,
    sinks: Arc<Sinks>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (client, mut ev) = AsyncClient::new(options(id, port, 1000), 10);
    tune(&mut ev);
    connected(&mut ev).await?;
    client
        .subscribe(topic, QoS::AtLeastOnce)
        .await
        .context("MQTT subscribe")?;
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => return Ok(()),
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    sinks.record(sub, &p.payload, expect_pair)
                }
                Ok(_) => {}
                Err(e) => bail!("MQTT subscribe: {e}"),
            }
        }
    })
    .await
    .map_err(|_| anyhow!("MQTT subscribe: no SUBACK within 30 s"))??;
    Ok(tokio::spawn(async move {
        let _client = client; // the event loop stops if every client handle is gone
        while let Ok(ev) = ev.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                sinks.record(sub, &p.payload, expect_pair);
            }
        }
    }))
}

/// Whether this process runs as root (mosquitto then drops to user `mosquitto` unless told).
fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[async_trait]
impl System for Mosquitto {
    fn fanout_note(&self) -> Option<&'static str> {
        Some(fanout_note())
    }

    fn name(&self) -> String {
        "Mosquitto QoS 1".into()
    }

    fn ack_guarantee(&self) -> &'static str {
        ACK_GUARANTEE
    }

    async fn start(&mut self, dir: &Path) -> anyhow::Result<()> {
        let bin = require_binary("mosquitto", "mosquitto")?;
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let data = dir.join("mosquitto");
        std::fs::create_dir_all(&data)?;
        let mut conf = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence true\n\
             persistence_location {}/\n\
             # No silent drops: no cap on QoS 1 messages in flight or queued per client.\n\
             max_inflight_messages 0\n\
             max_queued_messages 0\n\
             max_connections -1\n\
             set_tcp_nodelay true\n\
             log_dest stderr\n\
             log_type error\n\
             log_type warning\n",
            data.display()
        );
        if running_as_root() {
            // Otherwise it drops privileges and cannot write the persistence directory.
            conf.push_str("user root\n");
        }
        let conf_path = dir.join("mosquitto.conf");
        std::fs::write(&conf_path, conf).context("write mosquitto.conf")?;
        let mut cmd = Command::new(bin);
        cmd.arg("-c").arg(&conf_path);
        let proc = Proc::spawn("mosquitto", cmd, dir)?;
        wait_for_port(addr, Duration::from_secs(30), "mosquitto").await?;
        self.proc = Some(proc);
        self.port = Some(port);
        Ok(())
    }

    async fn pairs(&mut self, p: &PairsParams) -> anyhow::Result<PairsOutcome> {
        let port = self.port()?;
        self.run += 1;
        let run = self.run;
        let clock = Clock::new();
        let sinks = Sinks::new(clock, p.pairs);
        let mut subs = Vec::with_capacity(p.pairs);
        let mut pubs = Vec::with_capacity(p.pairs);
        for i in 0..p.pairs {
            let topic = format!("bench{run}/{i}");
            subs.push(
                subscribe(
                    format!("s{run}-{i}"),
                    port,
                    topic.clone(),
                    i,
                    Some(i as u32),
                    sinks.clone(),
                )
                .await?,
            );
            pubs.push(Publisher::connect(format!("p{run}-{i}"), port, topic, p.window).await?);
        }

        let start = tokio::time::Instant::now();
        let mut tasks = JoinSet::new();
        for (i, publisher) in pubs.into_iter().enumerate() {
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
                let log = peers::publish_loop(plan, |body| publisher.send(body)).await;
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
        for s in subs {
            s.abort();
        }
        Ok(peers::pairs_outcome(&logs, &sinks))
    }

    async fn fanout(&mut self, p: &FanoutParams) -> anyhow::Result<FanoutOutcome> {
        crate::procs::ensure_fd_limit(p.subscribers + 2, "Mosquitto fan-out")?;
        let port = self.port()?;
        self.run += 1;
        let run = self.run;
        let topic = format!("fan{run}");
        let clock = Clock::new();
        let sinks = Sinks::new(clock, p.subscribers);
        let connect_deadline = Duration::from_secs(120);
        let subs: Vec<tokio::task::JoinHandle<()>> = tokio::time::timeout(
            connect_deadline,
            futures_util::stream::iter(0..p.subscribers)
                .map(|i| {
                    subscribe(
                        format!("f{run}-{i}"),
                        port,
                        topic.clone(),
                        i,
                        None,
                        sinks.clone(),
                    )
                })
                .buffer_unordered(peers::CONNECT_PARALLELISM)
                .try_collect(),
        )
        .await
        .map_err(|_| {
            anyhow!(
                "Mosquitto fan-out: {} subscribers not connected within {connect_deadline:?}",
                p.subscribers
            )
        })??;

        let publisher =
            Publisher::connect(format!("fp{run}"), port, topic, peers::FANOUT_WINDOW).await?;
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
        let log = peers::publish_loop(plan, |body| publisher.send(body)).await;
        sinks.drain(|_| &log.acked).await;
        for s in subs {
            s.abort();
        }
        Ok(peers::fanout_outcome(&log, &sinks))
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        self.port = None;
        if let Some(proc) = self.proc.take() {
            proc.stop(Duration::from_secs(5)).await?;
        }
        Ok(())
    }
}
