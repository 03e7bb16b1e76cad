//! The raw WebSocket relay: the speed of light for this stack (tokio + tungstenite over
//! loopback, the same JSON frames), with no storage and no protocol logic beyond routing.
//!
//! It runs as its own process (`herald-bench relay-server --listen ADDR`), like every other
//! system, so it competes for the same cores the same way. Routing is by URL path:
//! `/s/<id>` subscribes to pair `id` and `/p/<id>` publishes to it; `/fan/<chan>` subscribes to
//! a fan-out channel and `/fanpub/<chan>` publishes to it. A subscriber gets the text `ready`
//! once registered. Each WebSocket message from a publisher is forwarded unchanged to the
//! subscribers (into each one's bounded send queue, so a slow subscriber slows the publisher
//! rather than growing memory), then answered with the number of `\n`-separated lines it
//! carried: the acknowledgement means "relayed", nothing is stored.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;

use super::wsload::{self, Flavor, Target};
use crate::model::{FanoutOutcome, FanoutParams, PairsOutcome, PairsParams, System};
use crate::procs::{free_port, wait_for_port, Proc};

/// Messages queued per subscriber before the publisher waits.
const SUB_QUEUE: usize = 1024;

/// Subscribers by route key (`s/<id>`, `fan/<chan>`); copy-on-write so a publish clones one Arc.
type Routes = Arc<RwLock<HashMap<String, Arc<Vec<mpsc::Sender<Message>>>>>>;

/// Serves the relay on `listen` until the process is killed.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("bind {listen}"))?;
    let routes: Routes = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let routes = routes.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, routes).await {
                eprintln!("relay connection: {e:#}");
            }
        });
    }
}

async fn connection(stream: TcpStream, routes: Routes) -> anyhow::Result<()> {
    let mut path = String::new();
    // The callback's signature is tungstenite's; its error type is not ours to shrink.
    #[allow(clippy::result_large_err)]
    let ws = tokio_tungstenite::accept_hdr_async(
        stream,
        |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            path = req.uri().path().to_string();
            Ok(resp)
        },
    )
    .await?;
    let (mut tx, mut rx) = ws.split();
    let (role, key) = match path.trim_start_matches('/').split_once('/') {
        Some(("p", id)) => ("pub", format!("s/{id}")),
        Some(("s", id)) => ("sub", format!("s/{id}")),
        Some(("fanpub", c)) => ("pub", format!("fan/{c}")),
        Some(("fan", c)) => ("sub", format!("fan/{c}")),
        _ => anyhow::bail!("unknown path {path}"),
    };
    if role == "sub" {
        let (qtx, mut qrx) = mpsc::channel::<Message>(SUB_QUEUE);
        {
            let mut r = routes
                .write()
                .map_err(|_| anyhow::anyhow!("routes lock poisoned"))?;
            let entry = r.entry(key).or_default();
            let mut v = entry.as_ref().clone();
            v.push(qtx);
            *entry = Arc::new(v);
        }
        tx.send(Message::Text("ready".into())).await?;
        let writer = async move {
            while let Some(m) = qrx.recv().await {
                tx.send(m).await?;
            }
            anyhow::Ok(())
        };
        // Read (and discard) until the client goes, so closes are noticed.
        let reader = async move { while let Some(Ok(_)) = rx.next().await {} };
        tokio::select! {
            r = writer => r?,
            _ = reader => {}
        }
        return Ok(());
    }
    while let Some(m) = rx.next().await {
        let text = match m? {
            Message::Text(t) => t,
            Message::Close(_) => break,
            _ => continue,
        };
        let lines = text.as_str().bytes().filter(|&b| b == b'\n').count() + 1;
        let subs = routes
            .read()
            .map_err(|_| anyhow::anyhow!("routes lock poisoned"))?
            .get(&key)
            .cloned();
        if let Some(subs) = subs {
            let m = Message::Text(text);
            for s in subs.iter() {
                // A subscriber that went away just drops out; the bench counts what arrived.
                let _ = s.send(m.clone()).await;
            }
        }
        tx.send(Message::Text(lines.to_string().into())).await?;
    }
    Ok(())
}

/// The relay as a system under test: a child process of this very binary.
#[derive(Default)]
pub struct Relay {
    proc: Option<Proc>,
    addr: Option<SocketAddr>,
}

impl Relay {
    pub fn new() -> Relay {
        Relay::default()
    }

    fn target(&self) -> anyhow::Result<Target> {
        let addr = self.addr.context("relay not started")?;
        Ok(Target {
            flavor: Flavor::Relay,
            base: format!("ws://{addr}"),
        })
    }
}

#[async_trait]
impl System for Relay {
    fn name(&self) -> String {
        "raw relay".into()
    }

    fn ack_guarantee(&self) -> &'static str {
        "relayed to the subscriber's socket queue; nothing stored"
    }

    async fn start(&mut self, dir: &Path) -> anyhow::Result<()> {
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("relay-server")
            .arg("--listen")
            .arg(addr.to_string());
        self.proc = Some(Proc::spawn("relay", cmd, dir)?);
        wait_for_port(addr, Duration::from_secs(30), "relay").await?;
        self.addr = Some(addr);
        Ok(())
    }

    async fn pairs(&mut self, p: &PairsParams) -> anyhow::Result<PairsOutcome> {
        wsload::run_pairs(&self.target()?, p).await
    }

    async fn fanout(&mut self, p: &FanoutParams) -> anyhow::Result<FanoutOutcome> {
        wsload::run_fanout(&self.target()?, p).await
    }

    fn server_pids(&self) -> Vec<u32> {
        self.proc.iter().map(|p| p.pid()).collect()
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(p) = self.proc.take() {
            p.stop(Duration::from_secs(5)).await?;
        }
        Ok(())
    }
}
