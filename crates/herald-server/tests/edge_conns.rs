//! No client can starve the server of connections: half-open and idle HTTP connections are
//! timed out, every connection (HTTP and WebSocket) counts toward `server.max_connections`
//! and `server.max_connections_per_ip`, and a server started with a low open-file limit
//! lowers its cap to fit it instead of running out of descriptors. Against a real process.
// A real server process runs on wall-clock time.
#![allow(clippy::disallowed_types)]
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Client, Options, Server, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Half a request: the head is never finished.
const HALF: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: herald\r\n";

/// Opens a TCP connection from `src` (a loopback address) and sends half a request.
async fn half_open(server: &Server, src: [u8; 4]) -> TcpStream {
    let to: SocketAddr = server.addr.parse().expect("addr");
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::from((src, 0))).expect("bind");
    let mut tcp = sock.connect(to).await.expect("connect");
    tcp.write_all(HALF).await.expect("write");
    tcp
}

/// Reads until the server closes the connection; returns what it sent, or `None` if it was
/// still open after `within`.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> Option<String> {
    let mut got = Vec::new();
    let r = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    r.ok().map(|()| String::from_utf8_lossy(&got).into_owned())
}

fn raise_own_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let cur = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: cur.maximum,
            maximum: cur.maximum,
        },
    );
}

#[tokio::test]
async fn half_open_sockets_past_the_fd_limit_do_not_lock_out_a_login() {
    raise_own_fd_limit();
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = tmp.path().join("server.log");
    let opts = Options {
        prefix: vec!["prlimit".into(), "--nofile=1024:1024".into()],
        stderr_to: Some(log.clone()),
        rust_log: Some("warn".into()),
        ..Options::default()
    };
    // A long header timeout: here only the caps may save the server.
    let s = Server::start_opts(&[("SERVER__HTTP_HEADER_TIMEOUT_MS", "600000")], &opts);
    let startup = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        startup.contains("server.max_connections exceeds what the open-file limit"),
        "no startup warning about the fd limit:\n{startup}"
    );
    // 1,100 sockets that never finish a request, from 11 addresses (100 each: under the
    // per-IP cap, so the total cap is what they hit).
    let mut attackers = Vec::new();
    for i in 0..1100u32 {
        attackers.push(half_open(&s, [127, 0, 1, 2 + (i % 11) as u8]).await);
    }
    // A login still succeeds, and so does a health check.
    let mut c = tokio::time::timeout(WAIT, Client::connect(&s, "alice", "a1"))
        .await
        .expect("a WebSocket login within 10 s while 1,100 half-open sockets are held");
    let seq = c
        .request(serde_json::json!({"t":"sub","chan":"room"}))
        .await;
    c.expect_ok(seq).await;
    let (status, v) = tokio::time::timeout(WAIT, s.get("/healthz"))
        .await
        .expect("healthz within 10 s");
    assert_eq!(status, 200, "{v}");
    // The server made room by closing sockets that had sent no request.
    let mut closed = 0;
    for a in &mut attackers {
        if closed_within(a, Duration::from_millis(1)).await.is_some() {
            closed += 1;
        }
    }
    assert!(
        closed >= 100,
        "only {closed} of 1,100 half-open sockets were closed"
    );
    // The login is a connection like any other: it survived the flood.
    c.round_trip().await;
}

#[tokio::test]
async fn connections_per_ip_are_capped_and_answered_503() {
    let s = Server::start(&[("SERVER__MAX_CONNECTIONS_PER_IP", "5")]);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(half_open(&s, [127, 0, 2, 2]).await);
    }
    let mut sixth = half_open(&s, [127, 0, 2, 2]).await;
    let answer = closed_within(&mut sixth, WAIT)
        .await
        .expect("the sixth connection is answered and closed");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("server.max_connections_per_ip"), "{answer}");
    assert!(answer.contains(r#""code":"unavailable""#), "{answer}");
    let refused = s
        .wait_metric(
            "herald_connections_refused_total{reason=\"max_connections_per_ip\"}",
            |v| v >= 1.0,
        )
        .await;
    assert_eq!(refused, 1.0);
    // Another address is unaffected, WebSocket included.
    let mut c = Client::connect(&s, "bob", "b1").await;
    c.round_trip().await;
    // A closed connection frees its place.
    held.pop();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut again = half_open(&s, [127, 0, 2, 2]).await;
        if closed_within(&mut again, Duration::from_millis(200))
            .await
            .is_none()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the freed place was never reused"
        );
    }
}

#[tokio::test]
async fn half_requests_and_idle_keep_alive_connections_time_out() {
    let s = Server::start(&[("SERVER__HTTP_HEADER_TIMEOUT_MS", "300")]);
    let mut half = half_open(&s, [127, 0, 0, 1]).await;
    let t0 = tokio::time::Instant::now();
    closed_within(&mut half, WAIT)
        .await
        .expect("a half-sent request head is closed after the header timeout");
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    // A keep-alive connection that went quiet after an answer is closed too.
    let mut idle = TcpStream::connect(&s.addr).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: herald\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.expect("answer");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let rest = closed_within(&mut idle, WAIT)
        .await
        .expect("an idle keep-alive connection is closed after the header timeout");
    assert!(rest.is_empty() || rest.contains("ok"), "{rest:?}");
}

/// Opens `/v1/ws` as `uid` with an `X-Forwarded-For` header; returns the client.
async fn ws_forwarded(s: &Server, uid: &str, xff: &str) -> Client {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = s.ws_url().into_client_request().expect("request");
    req.headers_mut()
        .insert("x-forwarded-for", xff.parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("ws");
    let hello = serde_json::json!({"t":"hello","v":1,"uid":uid,"device":"d1"}).to_string();
    ws.send(tokio_tungstenite::tungstenite::Message::text(hello))
        .await
        .expect("hello");
    // Keep the socket open for the caller; the welcome is read by the session listing below.
    Client::from_ws(ws)
}

async fn session_addr(s: &Server, uid: &str) -> String {
    let v = s
        .wait_for(&format!("/v1/sessions?uid={uid}"), |v| {
            v["items"][0]["addr"].is_string()
        })
        .await;
    v["items"][0]["addr"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn x_forwarded_for_is_believed_only_from_trusted_proxies() {
    // Untrusted by default: the header is ignored.
    let s = Server::start(&[]);
    let _c = ws_forwarded(&s, "ned", "203.0.113.9").await;
    assert!(session_addr(&s, "ned").await.starts_with("127.0.0.1:"));

    // Trusted: the last address the proxy saw is the client.
    let s = Server::start(&[("SERVER__TRUSTED_PROXIES", "127.0.0.0/8")]);
    let _c = ws_forwarded(&s, "ola", "198.51.100.1, 203.0.113.9").await;
    assert_eq!(session_addr(&s, "ola").await, "203.0.113.9:0");
}
