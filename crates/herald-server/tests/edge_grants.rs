//! A resumed session gets the new token's grants: subscriptions it no longer allows end with
//! an explicit `err` `sub_revoked` (never silently), no message of theirs is delivered any
//! more, and a token bound to one device cannot resume another device's session.
// A real server process runs on wall-clock time.
#![allow(clippy::disallowed_types)]
mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Client, Event, Server};
use herald_protocol::{ErrorCode, ResumeError, ServerFrame};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "edge-grants-secret-0123456789-abcdefghij";
const API_KEY: &str = "edge-grants-api-key";

fn token(claims: Value) -> String {
    let mut claims = claims;
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    claims["exp"] = json!(exp);
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode")
}

fn start() -> (Server, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = Server::start_in(
        tmp.path(),
        &[("AUTH__HS256_SECRET", SECRET), ("API__KEYS", API_KEY)],
        false,
    );
    (s, tmp)
}

async fn publish(s: &Server, chan: &str, text: &str) {
    let r = reqwest::Client::new()
        .post(s.http("/v1/publish"))
        .bearer_auth(API_KEY)
        .json(&json!({"to": format!("chan:{chan}"), "body": {"text": text}}))
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 200);
}

fn resume_hello(tok: &str, w: &herald_protocol::Welcome) -> Value {
    json!({"t":"hello","v":1,"token":tok,"device":w.device,
           "resume":{"session":w.session,"key":w.key}})
}

#[tokio::test]
async fn resume_with_a_narrower_token_ends_the_subscriptions_it_no_longer_allows() {
    let (s, _tmp) = start();
    let wide = token(json!({"sub":"erin","chans":{"sub":["*"],"pub":["*"]}}));
    let mut c = Client::hello(&s, json!({"t":"hello","v":1,"token":wide,"device":"d1"})).await;
    c.subscribe("payroll", None).await;
    c.subscribe("public-news", None).await;
    let w = c.w().clone();
    c.cut();

    let narrow = token(json!({"sub":"erin","chans":{"sub":["public*"]}}));
    let mut r = Client::hello(&s, resume_hello(&narrow, &w)).await;
    assert!(r.w().resumed, "{:?}", r.w());
    assert!(
        !r.w().subs.contains_key("payroll") && r.w().subs.contains_key("public-news"),
        "the welcome lists only what the new token allows: {:?}",
        r.w().subs
    );
    match r.next().await {
        Event::Frame(ServerFrame::Err(e)) => {
            assert_eq!(e.code, ErrorCode::SubRevoked, "{e:?}");
            assert_eq!((e.seq, e.chan.as_deref()), (None, Some("payroll")), "{e:?}");
            assert!(e.msg.contains("chans.sub"), "{e:?}");
        }
        other => panic!("expected err sub_revoked, got {other:?}"),
    }
    // Payroll messages no longer arrive; public ones do.
    publish(&s, "payroll", "salaries").await;
    publish(&s, "public-news", "hello").await;
    let m = r.expect_msg().await;
    assert_eq!(m.s, "chan:public-news", "{m:?}");
    r.ack("chan:public-news", m.o).await;
    r.round_trip().await;
    r.expect_silence(Duration::from_millis(300)).await;
    // The session record changed too: after another resume (same narrow token) payroll is
    // still gone and nothing more is announced.
    let w2 = r.w().clone();
    r.cut();
    let mut again = Client::hello(&s, resume_hello(&narrow, &w2)).await;
    assert!(
        !again.w().subs.contains_key("payroll"),
        "{:?}",
        again.w().subs
    );
    again.expect_silence(Duration::from_millis(300)).await;
    // And it may not subscribe again (new requests continue after acked_seq).
    again.seq = again.w().acked_seq;
    let seq = again.request(json!({"t":"sub","chan":"payroll"})).await;
    assert_eq!(again.expect_err(seq).await.code, ErrorCode::Forbidden);
}

#[tokio::test]
async fn a_device_bound_token_cannot_resume_another_devices_session() {
    let (s, _tmp) = start();
    let phone = token(json!({"sub":"frank","device":"phone"}));
    let mut p = Client::hello(
        &s,
        json!({"t":"hello","v":1,"token":phone,"device":"phone"}),
    )
    .await;
    p.subscribe("room", None).await;
    let wp = p.w().clone();
    p.cut();

    let laptop = token(json!({"sub":"frank","device":"laptop"}));
    let mut h = resume_hello(&laptop, &wp);
    h["device"] = json!("laptop");
    let l = Client::hello(&s, h).await;
    // Not the phone's session: a new one, for the token's device, saying why.
    assert!(!l.w().resumed, "{:?}", l.w());
    assert_eq!(
        l.w().resume_error,
        Some(ResumeError::WrongDevice),
        "{:?}",
        l.w()
    );
    assert_eq!(l.w().device, "laptop");
    assert_ne!(l.w().session, wp.session);
    assert!(l.w().subs.is_empty(), "{:?}", l.w().subs);
    // The phone's own token still resumes it.
    let p2 = Client::hello(&s, resume_hello(&phone, &wp)).await;
    assert!(
        p2.w().resumed && p2.w().session == wp.session,
        "{:?}",
        p2.w()
    );
}
