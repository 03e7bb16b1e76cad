//! Built-in TLS: a real TLS client (tokio-rustls) completes the handshake, gets HTTP answers
//! and a WebSocket session over it; plain HTTP is not served on a TLS listener; SIGHUP loads a
//! renewed certificate without a restart. The self-signed certificates are made at test time
//! with `openssl req`.
// A real server process runs on wall-clock time.
#![allow(clippy::disallowed_types)]
mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{Server, WAIT};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

/// Writes a self-signed certificate for 127.0.0.1/localhost and its key into `dir`.
fn make_cert(dir: &Path, cn: &str) {
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", &format!("/CN={cn}")])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        // A leaf certificate, not a CA (rustls refuses a CA as the end entity).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "keyUsage=digitalSignature"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cert_der(dir: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(dir.join("cert.pem")).expect("cert")
}

/// A TLS connection that trusts only `roots`.
async fn connect(addr: &str, trusted: &[CertificateDer<'static>]) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for root in trusted {
        roots.add(root.clone()).expect("root");
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake")
}

fn presented(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().expect("peer certs")[0].to_vec()
}

#[tokio::test]
async fn https_and_wss_with_a_certificate_reloaded_on_sighup() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let certs = tmp.path().join("tls");
    std::fs::create_dir_all(&certs).expect("dir");
    make_cert(&certs, "first");
    let (cert, key) = (certs.join("cert.pem"), certs.join("key.pem"));
    let s = Server::start(&[
        ("TLS__CERT", cert.to_str().expect("path")),
        ("TLS__KEY", key.to_str().expect("path")),
    ]);
    let first = cert_der(&certs);

    // HTTPS.
    let mut tls = connect(&s.addr, std::slice::from_ref(&first)).await;
    assert_eq!(presented(&tls), first.to_vec());
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.ok();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""status":"ok""#), "{answer}");

    // WSS: a whole hello/welcome over TLS.
    let tls = connect(&s.addr, std::slice::from_ref(&first)).await;
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/v1/ws", tls)
        .await
        .expect("websocket over TLS");
    ws.send(Message::text(
        r#"{"t":"hello","v":1,"uid":"tess","device":"t1"}"#,
    ))
    .await
    .expect("send");
    let first_frame = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("answer in time")
        .expect("a frame")
        .expect("ok");
    let text = first_frame.into_text().expect("text");
    assert!(text.contains(r#""t":"welcome""#), "{text}");

    // Plain HTTP gets no answer on a TLS listener.
    let mut plain = TcpStream::connect(&s.addr).await.expect("tcp");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));

    // Renew the certificate in place and send SIGHUP: new connections get the new one.
    make_cert(&certs, "second");
    let second = cert_der(&certs);
    assert_ne!(first, second);
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill")
        .success());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let tls = connect(&s.addr, &[first.clone(), second.clone()]).await;
        if presented(&tls) == second.to_vec() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The old session is unaffected by the reload.
    ws.send(Message::text(r#"{"t":"ping"}"#))
        .await
        .expect("ping");
}
