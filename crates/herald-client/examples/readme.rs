//! The SDK example shown in the README (a test keeps the two equal).

use herald_client::{Client, ConnectionEvent};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), herald_client::Error> {
    let url = std::env::var("HERALD_URL").unwrap_or_else(|_| "ws://127.0.0.1:7070/v1/ws".into());
    let client = Client::builder(url).dev_uid("alice").connect().await?;
    let mut deliveries = client.deliveries().expect("taken once");
    let mut events = client.events().expect("taken once");
    client.subscribe("room1", None).await?;
    let p = client.publish("chan:room1", json!({"text": "hi"})).await?; // durable once Ok
    println!("stored at {} #{}", p.stream, p.offset);
    loop {
        tokio::select! {
            Some(d) = deliveries.recv() => {
                println!("{} #{} from {}: {}", d.stream, d.offset, d.from, d.body);
                if d.offset == p.offset {
                    client.close().await; // sends bye; events end with Closed
                }
            }
            Some(e) = events.recv() => {
                println!("{e:?}");
                if e == ConnectionEvent::Closed {
                    return Ok(());
                }
            }
        }
    }
}
