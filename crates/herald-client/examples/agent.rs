//! A backend agent that reacts to client events, run as several instances. Clients send
//! requests to the `agent` user's inbox; every instance logs in as `agent` with its OWN device id
//! (never a shared one, or the instances would evict each other), so each receives the inbox,
//! and instance `i` of `n` handles the messages whose offset is `i` modulo `n`. The answer goes to
//! the sender's inbox and is published with an idempotency id, so a resend after a reconnect is
//! stored once.
//!
//! ```text
//! herald serve --dev &
//! cargo run -p herald-client --example agent -- 0 2     # instance 0 of 2
//! cargo run -p herald-client --example agent -- 1 2     # instance 1 of 2
//! curl -XPOST localhost:7070/v1/publish -H 'content-type: application/json' -d '{"to":"user:agent","from":"carol","body":{"ask":"ping"}}'
//! ```
//! Each instance keeps its device id in `$HERALD_STATE_DIR/agent-<i>`. `HERALD_URL` overrides the
//! server URL (default `ws://127.0.0.1:7070/v1/ws`).

use herald_client::{Client, ConnectionEvent, FileDeviceStore};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let instance: u64 = args.next().unwrap_or_else(|| "0".into()).parse()?;
    let of: u64 = args
        .next()
        .unwrap_or_else(|| "1".into())
        .parse::<u64>()?
        .max(1);
    let url = std::env::var("HERALD_URL").unwrap_or_else(|_| "ws://127.0.0.1:7070/v1/ws".into());
    let client = Client::builder(url)
        .dev_uid("agent")
        .device_store(FileDeviceStore::new(
            state_dir().join(format!("agent-{instance}")),
        ))
        .connect()
        .await?;
    let device = client.session().map(|s| s.device).unwrap_or_default();
    println!("agent instance {instance}/{of} on device {device}");
    let mut events = client.events().ok_or("events taken")?;
    let mut deliveries = client.deliveries().ok_or("deliveries taken")?;
    loop {
        tokio::select! {
            Some(d) = deliveries.recv() => {
                if d.offset % of != instance || d.from.starts_with('$') {
                    continue;
                }
                let reply = json!({ "re": d.id, "by": device, "answer": d.body });
                match client.publish(&format!("user:{}", d.from), reply).await {
                    Ok(p) => println!("answered {} from {} (stored at {} #{})", d.id, d.from, p.stream, p.offset),
                    Err(e) => eprintln!("could not answer {}: {e}", d.id),
                }
            }
            e = events.recv() => match e {
                Some(ConnectionEvent::Evicted { reason, .. }) => {
                    eprintln!("evicted ({}): another process uses this device id; stopping", reason.as_str());
                    std::process::exit(2);
                }
                Some(ConnectionEvent::Closed) | None => return Ok(()),
                Some(other) => println!("{other:?}"),
            },
        }
    }
}

/// Where the example keeps its device id: `$HERALD_STATE_DIR`, else `herald-examples` in the
/// system's temporary directory (never the working directory).
fn state_dir() -> std::path::PathBuf {
    std::env::var_os("HERALD_STATE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("herald-examples"))
}
