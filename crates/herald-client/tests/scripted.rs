//! The client against a scripted WebSocket server, for answers a real server gives only in rare
//! races: a bare `{"ok","dup":true}` for a resent pub (PROTOCOL D3) must lead to a republish with
//! the same idempotency id and a new seq, and `publish` resolves with the stored message.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_client::{Client, ConnectionEvent, ReconnectStrategy};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            _ => continue,
        }
    }
}

fn welcome(resumed: bool, acked_seq: u64) -> String {
    json!({"t":"welcome","session":"S1","key":"K1","conn":"C1","uid":"alice","device":"a1",
        "resumed":resumed,"acked_seq":acked_seq,"heartbeat_ms":25000,"reconnect_timeout_ms":60000,
        "subs":{},"limits":{"max_frame_bytes":1048576,"max_body_bytes":65536,"max_inflight":1024}})
    .to_string()
}

#[tokio::test]
async fn a_bare_dup_for_a_resent_pub_is_republished_with_the_same_id_and_a_new_seq() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/ws", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        // Connection 1: welcome, then the pub arrives and the connection dies unanswered.
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let hello = next_json(&mut ws).await;
        assert_eq!(hello["t"], "hello");
        assert!(hello.get("resume").is_none());
        ws.send(Message::text(welcome(false, 0))).await.unwrap();
        let first = next_json(&mut ws).await;
        assert_eq!(
            (first["t"].as_str(), first["seq"].as_u64()),
            (Some("pub"), Some(1))
        );
        drop(ws);
        // Connection 2: resumed with acked_seq 1; the resent seq 1 gets a bare dup.
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let hello = next_json(&mut ws).await;
        assert_eq!(hello["resume"], json!({"session":"S1","key":"K1"}));
        ws.send(Message::text(welcome(true, 1))).await.unwrap();
        let resent = next_json(&mut ws).await;
        assert_eq!(resent["seq"], 1, "resent with its own seq: {resent}");
        assert_eq!(resent["id"], first["id"]);
        ws.send(Message::text(r#"{"t":"ok","seq":1,"dup":true}"#))
            .await
            .unwrap();
        let again = next_json(&mut ws).await;
        assert_eq!(again["t"], "pub");
        assert_eq!(again["id"], first["id"], "same idempotency id");
        assert!(again["seq"].as_u64().unwrap() > 1, "a new seq: {again}");
        let answer = json!({"t":"ok","seq":again["seq"],"id":"m_1","s":"chan:x","o":7,"dup":true});
        ws.send(Message::text(answer.to_string())).await.unwrap();
        // Keep the connection open until the client is done.
        while let Some(Ok(m)) = ws.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
        first["id"].as_str().unwrap().to_string()
    });

    let client = Client::builder(&url)
        .dev_uid("alice")
        .device("a1")
        .reconnect(ReconnectStrategy::fixed(Duration::from_millis(10)))
        .connect()
        .await
        .unwrap();
    let mut events = client.events().unwrap();
    let p = tokio::time::timeout(Duration::from_secs(10), client.publish("chan:x", json!(1)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (p.id.as_str(), p.stream.as_str(), p.offset, p.dup),
        ("m_1", "chan:x", 7, true)
    );
    let mut seen = Vec::new();
    while let Ok(e) = events.recv().await.ok_or(()) {
        seen.push(e.clone());
        if e == (ConnectionEvent::Connected { resumed: true }) {
            break;
        }
    }
    assert!(
        seen.iter()
            .any(|e| matches!(e, ConnectionEvent::Disconnected { .. })),
        "{seen:?}"
    );
    client.close().await;
    let id = server.await.unwrap();
    assert_eq!(
        id.len(),
        32,
        "the SDK's idempotency id is 128 random bits in hex"
    );
}
