//! Two processes that share a uid and a device: the one that is evicted says so and stops,
//! instead of going deaf or evicting its twin back forever.
//!
//! ```text
//! herald serve --dev &
//! cargo run -p herald-client --example twin -- alice    # terminal 1
//! cargo run -p herald-client --example twin -- alice    # terminal 2: terminal 1 prints
//!   "evicted (replaced) by connection c_… from 127.0.0.1:…; stopping" and exits 2
//! ```
//! Both processes keep their device id in `$HERALD_STATE_DIR/twin-<uid>` (as two copies of one
//! installation would), so the second login replaces the first session of that device.
//! `HERALD_URL` overrides the server URL (default `ws://127.0.0.1:7070/v1/ws`).

use herald_client::{Client, ConnectionEvent, FileDeviceStore};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let uid = std::env::args().nth(1).unwrap_or_else(|| "alice".into());
    let url = std::env::var("HERALD_URL").unwrap_or_else(|_| "ws://127.0.0.1:7070/v1/ws".into());
    let client = Client::builder(url)
        .dev_uid(&uid)
        .device_store(FileDeviceStore::new(
            state_dir().join(format!("twin-{uid}")),
        ))
        .connect()
        .await?;
    let session = client.session().ok_or("no session")?;
    println!(
        "connected as {uid} on device {} (session {})",
        session.device, session.session
    );
    let mut events = client.events().ok_or("events taken")?;
    let mut deliveries = client.deliveries().ok_or("deliveries taken")?;
    loop {
        tokio::select! {
            Some(d) = deliveries.recv() => println!("{} #{} from {}: {}", d.stream, d.offset, d.from, d.body),
            e = events.recv() => match e {
                Some(ConnectionEvent::Evicted { reason, by }) => {
                    eprintln!(
                        "evicted ({}) by connection {} from {}; stopping",
                        reason.as_str(),
                        by.conn.as_deref().unwrap_or("?"),
                        by.addr.as_deref().unwrap_or("?")
                    );
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
