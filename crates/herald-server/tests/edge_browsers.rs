//! Browsers: `/v1/ws` refuses origins that `server.allowed_origins` does not list (403 JSON),
//! the HTTP API takes bodies only as `application/json` (so a cross-site form cannot
//! publish), and dev mode refuses to listen on a non-loopback address. Real server processes.
// A real server process runs on wall-clock time.
#![allow(clippy::disallowed_types)]
mod common;

use std::process::Command;

use common::Server;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

/// Opens `/v1/ws` with an optional `Origin`; `Ok(())` on upgrade, else the HTTP status and
/// the JSON error body.
async fn open_ws(s: &Server, origin: Option<&str>) -> Result<(), (u16, Value)> {
    let mut req = s.ws_url().into_client_request().expect("request");
    if let Some(o) = origin {
        req.headers_mut()
            .insert("origin", o.parse().expect("header value"));
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => Ok(()),
        Err(WsError::Http(res)) => {
            let body = res.body().clone().unwrap_or_default();
            let v = serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
            Err((res.status().as_u16(), v))
        }
        Err(e) => panic!("websocket connect: {e}"),
    }
}

fn secure(env: &[(&str, &str)]) -> (Server, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut all = vec![
        (
            "AUTH__HS256_SECRET",
            "edge-browsers-secret-0123456789-abcdefgh",
        ),
        ("API__KEYS", "edge-browsers-key"),
    ];
    all.extend_from_slice(env);
    let s = Server::start_in(tmp.path(), &all, false);
    (s, tmp)
}

#[tokio::test]
async fn websocket_origins_are_checked_against_allowed_origins() {
    let (s, _tmp) = secure(&[(
        "SERVER__ALLOWED_ORIGINS",
        "https://app.example.com,http://localhost:3000",
    )]);
    assert_eq!(open_ws(&s, Some("https://app.example.com")).await, Ok(()));
    assert_eq!(open_ws(&s, Some("http://localhost:3000")).await, Ok(()));
    // Not a browser: no Origin header, allowed.
    assert_eq!(open_ws(&s, None).await, Ok(()));
    for evil in [
        "https://evil.example",
        "https://app.example.com.evil.example",
        "null",
    ] {
        let (status, v) = open_ws(&s, Some(evil)).await.expect_err(evil);
        assert_eq!(status, 403, "{evil}: {v}");
        assert_eq!(v["error"]["code"], "forbidden", "{v}");
        let msg = v["error"]["msg"].as_str().unwrap_or_default();
        assert!(msg.contains("server.allowed_origins"), "{msg}");
    }

    // Default outside dev mode: no browser origin at all.
    let (s, _tmp) = secure(&[]);
    let (status, _) = open_ws(&s, Some("https://app.example.com"))
        .await
        .expect_err("refused");
    assert_eq!(status, 403);
    assert_eq!(open_ws(&s, None).await, Ok(()));
    // Default in dev mode: any.
    let dev = Server::start(&[]);
    assert_eq!(open_ws(&dev, Some("http://localhost:5173")).await, Ok(()));
}

#[tokio::test]
async fn the_http_api_takes_bodies_only_as_application_json() {
    let s = Server::start(&[]);
    let body = br#"{"to":"chan:a","body":1}"#.to_vec();
    // What a cross-site form or a fetch without preflight can send.
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let (status, v) = s.post_raw("/v1/publish", body.clone(), ct).await;
        assert_eq!(status, 415, "{ct:?}: {v}");
        assert_eq!(v["error"]["code"], "bad_frame", "{v}");
        let msg = v["error"]["msg"].as_str().unwrap_or_default();
        assert!(msg.contains("application/json"), "{msg}");
    }
    for ct in [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
    ] {
        let (status, v) = s.post_raw("/v1/publish", body.clone(), Some(ct)).await;
        assert_eq!(status, 200, "{ct}: {v}");
    }
    let (_, h) = s.get("/v1/streams/chan:a").await;
    assert_eq!(h["items"].as_array().map(Vec::len), Some(3), "{h}");
}

#[test]
fn dev_mode_refuses_a_non_loopback_listen_address() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--dev", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(tmp.path())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run herald");
    assert!(!out.status.success(), "dev mode started on 0.0.0.0");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refuses to listen on the non-loopback address 0.0.0.0:0")
            && stderr.contains("server.dev_allow_remote"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("herald listening"));
}
