//! A rough publish-throughput loop (not a benchmark suite; see issue "herald-bench"):
//! N connections each publish M messages of 64 bytes to their own channel, keeping up to W
//! requests in flight, and count `ok` answers (each one means durable under the server's
//! durability setting).
//!
//! `cargo run --release -p herald-server --example publoop -- ws://127.0.0.1:7070/v1/ws 10 5000 64`
//! (server started with `--dev`).
// A real server process runs on wall-clock time; these measure it.
#![allow(clippy::disallowed_types)]

use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "ws://127.0.0.1:7070/v1/ws".into());
    let conns: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    let msgs: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(5000);
    let window: u64 = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(64);
    let body = format!("\"{}\"", "x".repeat(62));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..conns {
        let url = url.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url)
                .await
                .expect("connect");
            let hello = format!(r#"{{"t":"hello","v":1,"uid":"load{i}","device":"d{i}"}}"#);
            ws.send(Message::Text(hello.into())).await.expect("hello");
            let _welcome = ws.next().await;
            let (mut sent, mut oks) = (0u64, 0u64);
            while oks < msgs {
                let mut batch = String::new();
                while sent < msgs && sent - oks < window {
                    sent += 1;
                    if !batch.is_empty() {
                        batch.push('\n');
                    }
                    batch.push_str(&format!(
                        r#"{{"t":"pub","seq":{sent},"to":"chan:load{i}","body":{body}}}"#
                    ));
                }
                if !batch.is_empty() {
                    ws.send(Message::Text(batch.into())).await.expect("send");
                }
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        for line in t.as_str().lines() {
                            if line.starts_with(r#"{"t":"ok""#) {
                                oks += 1;
                            } else if line.starts_with(r#"{"t":"err""#) {
                                panic!("server error: {line}");
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    other => panic!("connection ended: {other:?}"),
                }
            }
            oks
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{total} acknowledged publishes in {secs:.2} s = {:.0} msg/s ({conns} connections, window {window})",
        total as f64 / secs
    );
}
