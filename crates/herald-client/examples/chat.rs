//! A chat client that keeps working across a network cut: lines typed on stdin are published
//! to a room, messages of the room are printed, and every connection state is shown. Cut the
//! network (or restart the server) while typing: lines typed meanwhile are buffered and sent on
//! reconnect, and nothing is printed twice or lost.
//!
//! ```text
//! herald serve --dev &
//! cargo run -p herald-client --example chat -- alice lobby
//! cargo run -p herald-client --example chat -- bob lobby
//! ```
//! `HERALD_URL` overrides the server URL (default `ws://127.0.0.1:7070/v1/ws`). The device id
//! is kept in `$HERALD_STATE_DIR/chat-<uid>`, so a restarted client keeps its place in the room.

use herald_client::{Client, ConnectionEvent, FileDeviceStore};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let uid = args.next().unwrap_or_else(|| "alice".into());
    let room = args.next().unwrap_or_else(|| "lobby".into());
    let url = std::env::var("HERALD_URL").unwrap_or_else(|_| "ws://127.0.0.1:7070/v1/ws".into());
    let client = Client::builder(url)
        .dev_uid(&uid)
        .device_store(FileDeviceStore::new(
            state_dir().join(format!("chat-{uid}")),
        ))
        .connect()
        .await?;
    let mut events = client.events().ok_or("events taken")?;
    let mut deliveries = client.deliveries().ok_or("deliveries taken")?;
    // Replay the retained history of the room, then live.
    let sub = client.subscribe(&room, Some(0)).await?;
    println!(
        "joined {room} (last offset {}); type to chat, Ctrl-D to leave",
        sub.offset
    );

    let sender = client.clone();
    let target = format!("chan:{room}");
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            // Resolves once the message is durable, even if the network is down meanwhile.
            if let Err(e) = sender.publish(&target, json!({ "text": line })).await {
                eprintln!("not sent: {e}");
                break;
            }
        }
        sender.close().await;
    });

    loop {
        tokio::select! {
            Some(d) = deliveries.recv() => {
                let text = d.body.get("text").and_then(|t| t.as_str()).unwrap_or_default().to_string();
                println!("[{}] {}: {}", d.offset, d.from, text);
            }
            e = events.recv() => match e {
                Some(ConnectionEvent::Closed) | None => return Ok(()),
                Some(ConnectionEvent::Gap { from, to, .. }) => println!("(messages {from}..={to} expired before we could read them)"),
                Some(other) => println!("({other:?})"),
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
