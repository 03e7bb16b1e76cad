//! Authentication on a non-dev server: JWT (HS256, RS256, ES256), device binding, channel
//! grants, and API keys for the HTTP API.
// A real server process runs on wall-clock time; these measure it.
#![allow(clippy::disallowed_types)]
mod common;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{Client, Event, Server};
use herald_protocol::{ErrFrame, ErrorCode, ServerFrame};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "auth-test-secret-0123456789-abcdefghij";
const API_KEY: &str = "test-api-key-1";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn hs256_with(secret: &str, claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

fn hs256(claims: &Value) -> String {
    hs256_with(SECRET, claims)
}

fn rs256(claims: &Value) -> String {
    let pem = std::fs::read(fixture("rsa_private.pem")).expect("rsa key");
    let key = EncodingKey::from_rsa_pem(&pem).expect("rsa pem");
    encode(&Header::new(Algorithm::RS256), claims, &key).expect("encode")
}

fn es256(claims: &Value) -> String {
    let pem = std::fs::read(fixture("ec_private.pem")).expect("ec key");
    let key = EncodingKey::from_ec_pem(&pem).expect("ec pem");
    encode(&Header::new(Algorithm::ES256), claims, &key).expect("encode")
}

/// A non-dev server and the temp dir it lives in.
struct Secure {
    s: Server,
    _tmp: tempfile::TempDir,
}

fn start(env: &[(&str, &str)]) -> Secure {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = Server::start_in(tmp.path(), env, false);
    Secure { s, _tmp: tmp }
}

/// A non-dev server verifying HS256 tokens, with an API key.
fn hs256_server() -> Secure {
    start(&[("AUTH__HS256_SECRET", SECRET), ("API__KEYS", API_KEY)])
}

fn hello(token: &str, device: Option<&str>) -> Value {
    let mut h = json!({"t":"hello","v":1,"token":token});
    if let Some(d) = device {
        h["device"] = json!(d);
    }
    h
}

/// Sends `hello` and expects `err unauthorized` then close 4003; returns the err.
async fn refused(s: &Server, hello: Value) -> ErrFrame {
    let mut c = Client::raw(s).await;
    c.send(hello).await;
    let e = match c.next().await {
        Event::Frame(ServerFrame::Err(e)) => e,
        other => panic!("expected err unauthorized, got {other:?}"),
    };
    assert_eq!(e.code, ErrorCode::Unauthorized, "{}", e.msg);
    assert_eq!(c.expect_close().await, Some(4003), "{}", e.msg);
    e
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now_s() + 600})
}

#[tokio::test]
async fn hs256_token_connects_as_its_sub() {
    let a = hs256_server();
    let c = Client::hello(&a.s, hello(&hs256(&claims("alice")), Some("p1"))).await;
    assert_eq!((c.w().uid.as_str(), c.w().device.as_str()), ("alice", "p1"));
    // hello.uid never overrides the token's sub.
    let mut h = hello(&hs256(&claims("bob")), Some("b1"));
    h["uid"] = json!("mallory");
    let mut c = Client::hello(&a.s, h).await;
    assert_eq!(c.w().uid, "bob");
    let ok = c.publish_ok("user:alice", json!("hi")).await;
    assert_eq!(ok.s.as_deref(), Some("inbox"));
    let mut alice = Client::hello(&a.s, hello(&hs256(&claims("alice")), Some("p2"))).await;
    assert_eq!(alice.expect_msg().await.from, "bob");
}

#[tokio::test]
async fn bad_tokens_are_refused_with_4003() {
    let a = hs256_server();
    let e = refused(
        &a.s,
        hello(
            &hs256(&json!({"sub":"alice","exp": now_s() - 120})),
            Some("p1"),
        ),
    )
    .await;
    assert!(e.msg.contains("expired"), "{}", e.msg);

    let e = refused(&a.s, hello(&hs256(&json!({"sub":"alice"})), Some("p1"))).await;
    assert!(e.msg.contains("exp"), "{}", e.msg);

    let other = "another-secret-of-at-least-32-bytes-long!";
    let e = refused(
        &a.s,
        hello(&hs256_with(other, &claims("alice")), Some("p1")),
    )
    .await;
    assert!(e.msg.contains("signature"), "{}", e.msg);

    // An ES256 token on an HS256-only server.
    let e = refused(&a.s, hello(&es256(&claims("alice")), Some("p1"))).await;
    assert!(e.msg.contains("ES256"), "{}", e.msg);

    let e = refused(&a.s, json!({"t":"hello","v":1,"uid":"alice","device":"p1"})).await;
    assert!(e.msg.contains("token is required"), "{}", e.msg);
    assert!(!e.msg.contains(SECRET));

    refused(&a.s, json!({"t":"hello","v":1})).await;
    refused(&a.s, hello("garbage", None)).await;
}

#[tokio::test]
async fn rs256_tokens_verify_with_the_configured_public_key_file() {
    let pem = fixture("rsa_public.pem");
    let a = start(&[("AUTH__PUBLIC_KEY_PEM", pem.to_str().expect("utf-8 path"))]);
    let c = Client::hello(&a.s, hello(&rs256(&claims("rita")), Some("r1"))).await;
    assert_eq!(c.w().uid, "rita");
    let e = refused(
        &a.s,
        hello(
            &rs256(&json!({"sub":"rita","exp": now_s() - 120})),
            Some("r1"),
        ),
    )
    .await;
    assert!(e.msg.contains("expired"), "{}", e.msg);
    // No HS256 secret configured: HS256 tokens are refused.
    let e = refused(&a.s, hello(&hs256(&claims("rita")), Some("r1"))).await;
    assert!(e.msg.contains("HS256"), "{}", e.msg);
}

#[tokio::test]
async fn es256_tokens_verify_with_the_configured_public_key_file() {
    let pem = fixture("ec_public.pem");
    let a = start(&[("AUTH__PUBLIC_KEY_PEM", pem.to_str().expect("utf-8 path"))]);
    let c = Client::hello(&a.s, hello(&es256(&claims("eve")), Some("e1"))).await;
    assert_eq!(c.w().uid, "eve");
    // Tampered payload: the signature no longer matches.
    let token = es256(&claims("eve"));
    let parts: Vec<&str> = token.split('.').collect();
    let forged_claims = hs256(&claims("admin"));
    let forged_payload = forged_claims.split('.').nth(1).expect("payload");
    let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    let e = refused(&a.s, hello(&forged, Some("e1"))).await;
    assert!(e.msg.contains("signature"), "{}", e.msg);
    let e = refused(&a.s, hello(&rs256(&claims("eve")), Some("e1"))).await;
    assert!(e.msg.contains("RS256"), "{}", e.msg);
}

#[tokio::test]
async fn a_device_claim_binds_the_token_to_that_device() {
    let a = hs256_server();
    let token = hs256(&json!({"sub":"alice","exp": now_s() + 600,"device":"phone-1"}));
    let e = refused(&a.s, hello(&token, Some("laptop"))).await;
    assert!(
        e.msg.contains("phone-1") && e.msg.contains("laptop"),
        "{}",
        e.msg
    );
    let c = Client::hello(&a.s, hello(&token, Some("phone-1"))).await;
    assert_eq!(c.w().device, "phone-1");
    drop(c);
    // Without hello.device, the token's device is used (not a fresh d_… one).
    let c = Client::hello(&a.s, hello(&token, None)).await;
    assert_eq!(c.w().device, "phone-1");
    // An unbound token may use any device.
    let c = Client::hello(&a.s, hello(&hs256(&claims("alice")), Some("laptop"))).await;
    assert_eq!(c.w().device, "laptop");
}

#[tokio::test]
async fn a_chans_claim_limits_publishing_and_subscribing() {
    let a = hs256_server();
    let token = hs256(&json!({"sub":"alice","exp": now_s() + 600,
        "chans": {"pub": ["room*", "lobby"], "sub": ["news/*", "lobby"]}}));
    let mut c = Client::hello(&a.s, hello(&token, Some("a1"))).await;

    assert_eq!(c.publish_ok("chan:room1", json!(1)).await.o, Some(1));
    assert_eq!(c.publish_ok("chan:room", json!(1)).await.o, Some(1));
    assert_eq!(c.publish_ok("chan:lobby", json!(1)).await.o, Some(1));
    for chan in ["chan:lobby2", "chan:other", "chan:news/1"] {
        let seq = c.publish(chan, json!("x")).await;
        let e = c.expect_err(seq).await;
        assert_eq!(e.code, ErrorCode::Forbidden, "{chan}: {}", e.msg);
        assert!(e.msg.contains(chan), "{}", e.msg);
    }
    // chans limits channels only, not direct messages.
    c.publish_ok("user:bob", json!("dm")).await;

    c.subscribe("news/sport", None).await;
    c.subscribe("lobby", Some(0)).await;
    assert_eq!(c.expect_msg().await.s, "chan:lobby");
    for chan in ["room1", "news", "other"] {
        c.seq += 1;
        let seq = c.seq;
        c.send(json!({"t":"sub","seq":seq,"chan":chan})).await;
        let e = c.expect_err(seq).await;
        assert_eq!(e.code, ErrorCode::Forbidden, "{chan}: {}", e.msg);
    }
    // Refused pubs were not stored.
    let (status, v) = get_with_key(&a.s, "/v1/streams/chan:other", Some(API_KEY)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["items"], json!([]));

    // A chans claim without a pub list allows publishing to no channel.
    let token = hs256(&json!({"sub":"carol","exp": now_s() + 600, "chans": {"sub": ["*"]}}));
    let mut c = Client::hello(&a.s, hello(&token, Some("c1"))).await;
    let seq = c.publish("chan:room1", json!(1)).await;
    assert_eq!(c.expect_err(seq).await.code, ErrorCode::Forbidden);
    c.subscribe("anything", None).await;
}

async fn get_with_key(s: &Server, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(s.http(path));
    if let Some(k) = key {
        req = req.header("Authorization", format!("Bearer {k}"));
    }
    let r = req.send().await.expect("http");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn the_http_api_needs_an_api_key_except_health_and_metrics() {
    let a = start(&[
        ("AUTH__HS256_SECRET", SECRET),
        ("API__KEYS", "key-one,key-two"),
    ]);
    let (status, v) = get_with_key(&a.s, "/v1/sessions", None).await;
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["error"]["code"], "unauthorized");
    assert!(v["error"]["msg"].as_str().is_some_and(|m| !m.is_empty()));
    let (status, v) = get_with_key(&a.s, "/v1/sessions", Some("key-three")).await;
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["error"]["code"], "unauthorized");
    let (status, v) = get_with_key(&a.s, "/v1/sessions", Some("key-two")).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["items"].is_array());
    let (status, v) = get_with_key(&a.s, "/v1/events", Some("key-one")).await;
    assert_eq!(status, 200, "{v}");

    let r = reqwest::Client::new()
        .post(a.s.http("/v1/publish"))
        .json(&json!({"to":"chan:x","body":1}))
        .send()
        .await
        .expect("http");
    assert_eq!(r.status().as_u16(), 401);
    let r = reqwest::Client::new()
        .post(a.s.http("/v1/publish"))
        .header("Authorization", "Bearer key-one")
        .json(&json!({"to":"chan:x","body":1}))
        .send()
        .await
        .expect("http");
    assert_eq!(r.status().as_u16(), 200);

    for path in ["/healthz", "/readyz"] {
        let (status, v) = get_with_key(&a.s, path, None).await;
        assert_eq!(status, 200, "{path}: {v}");
    }
    let (status, v) = get_with_key(&a.s, "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(
        v.as_str().is_some_and(|t| t.contains("_total")),
        "Prometheus text: {v}"
    );

    // Without any configured key the API is closed, with the same error shape.
    let b = start(&[("AUTH__HS256_SECRET", SECRET)]);
    let (status, v) = get_with_key(&b.s, "/v1/sessions", Some("anything")).await;
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["error"]["code"], "unauthorized");
    let (status, _) = get_with_key(&b.s, "/healthz", None).await;
    assert_eq!(status, 200);
}
