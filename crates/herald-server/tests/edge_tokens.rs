//! Tokens: `aud` and `iss` checks, a maximum lifetime, keys chosen by `kid` from a JWKS URL
//! refreshed in the background (rotation without a restart; the JWKS is served from
//! loopback), and revocation: a kick with `revoke=true` refuses the uid's tokens issued
//! before it, so the kicked client cannot walk back in. Real server processes.
// A real server process runs on wall-clock time.
#![allow(clippy::disallowed_types)]
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Client, Event, Server, WAIT};
use herald_protocol::{close, ErrFrame, ErrorCode, ServerFrame};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "edge-tokens-secret-0123456789-abcdefghijk";
const API_KEY: &str = "edge-tokens-api-key";

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn sign(claims: &Value, secret: &str, kid: Option<&str>) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = kid.map(str::to_string);
    encode(&h, claims, &EncodingKey::from_secret(secret.as_bytes())).expect("encode")
}

fn start(env: &[(&str, &str)]) -> (Server, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut all = vec![("API__KEYS", API_KEY)];
    all.extend_from_slice(env);
    let s = Server::start_in(tmp.path(), &all, false);
    (s, tmp)
}

/// The hello's answer: a welcome (`Ok`) or the refusal.
async fn login(s: &Server, token: &str) -> Result<Client, ErrFrame> {
    let mut c = Client::hello_raw(s, json!({"t":"hello","v":1,"token":token,"device":"d1"})).await;
    match c.next().await {
        Event::Frame(ServerFrame::Welcome(w)) => {
            c.welcome = Some(*w);
            Ok(c)
        }
        Event::Frame(ServerFrame::Err(e)) => {
            assert_eq!(c.expect_close().await, Some(close::AUTH_FAILED));
            Err(e)
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn audience_issuer_and_lifetime_are_checked() {
    let (s, _tmp) = start(&[
        ("AUTH__HS256_SECRET", SECRET),
        ("AUTH__AUDIENCE", "herald"),
        ("AUTH__ISSUER", "https://idp.example/"),
    ]);
    let exp = now_s() + 600;
    let good = json!({"sub":"ann","exp":exp,"aud":["other","herald"],"iss":"https://idp.example/"});
    login(&s, &sign(&good, SECRET, None))
        .await
        .expect("valid token");
    for (claims, claim) in [
        (
            json!({"sub":"ann","exp":exp,"iss":"https://idp.example/"}),
            "`aud`",
        ),
        (
            json!({"sub":"ann","exp":exp,"aud":"other","iss":"https://idp.example/"}),
            "`aud`",
        ),
        (json!({"sub":"ann","exp":exp,"aud":"herald"}), "`iss`"),
        (
            json!({"sub":"ann","exp":exp,"aud":"herald","iss":"https://evil.example/"}),
            "`iss`",
        ),
    ] {
        let e = login(&s, &sign(&claims, SECRET, None))
            .await
            .err()
            .expect("refused");
        assert_eq!(e.code, ErrorCode::Unauthorized, "{e:?}");
        assert!(e.msg.contains(claim), "{claims}: {e:?}");
    }
    // Default maximum lifetime: 24 h.
    let long =
        json!({"sub":"ann","exp":now_s() + 3 * 86_400,"aud":"herald","iss":"https://idp.example/"});
    let e = login(&s, &sign(&long, SECRET, None))
        .await
        .err()
        .expect("refused");
    assert!(e.msg.contains("auth.max_token_lifetime_ms"), "{e:?}");
    let issued_long_ago = json!({"sub":"ann","iat":now_s() - 2 * 86_400,"exp":now_s() + 60,
        "aud":"herald","iss":"https://idp.example/"});
    let e = login(&s, &sign(&issued_long_ago, SECRET, None))
        .await
        .err()
        .expect("refused");
    assert!(e.msg.contains("auth.max_token_lifetime_ms"), "{e:?}");
}

#[tokio::test]
async fn a_kick_with_revoke_keeps_the_kicked_token_out() {
    let (s, _tmp) = start(&[("AUTH__HS256_SECRET", SECRET)]);
    let old = sign(
        &json!({"sub":"bo","iat":now_s() - 5,"exp":now_s() + 600}),
        SECRET,
        None,
    );
    let mut c = login(&s, &old).await.expect("login");
    let session = c.w().session.clone();
    let r = reqwest::Client::new()
        .delete(s.http(&format!("/v1/sessions/{session}?revoke=true")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("kick");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["revoked"]["uid"], "bo", "{v}");
    let (_, code) = c.expect_evicted().await;
    assert_eq!(code, Some(close::EVICTED));
    // The same token (issued before the kick) no longer logs in; nor does one without iat.
    let e = login(&s, &old).await.err().expect("refused");
    assert!(e.msg.contains("revoked"), "{e:?}");
    let no_iat = sign(&json!({"sub":"bo","exp":now_s() + 600}), SECRET, None);
    assert!(login(&s, &no_iat).await.is_err());
    // A token issued after the kick does; other uids are unaffected.
    let fresh = sign(
        &json!({"sub":"bo","iat":now_s() + 1,"exp":now_s() + 600}),
        SECRET,
        None,
    );
    login(&s, &fresh).await.expect("a new token logs in");
    let other = sign(
        &json!({"sub":"cy","iat":now_s() - 5,"exp":now_s() + 600}),
        SECRET,
        None,
    );
    login(&s, &other).await.expect("another uid");
}

/// Serves `doc` at any path of a loopback HTTP server; returns its URL.
async fn serve_jwks(doc: Arc<Mutex<String>>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = l.accept().await {
            let doc = doc.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let body = doc.lock().expect("doc").clone();
                let res = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(res.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/.well-known/jwks.json")
}

/// base64url without padding (RFC 4648 §5), for JWK `k`.
fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn jwks(keys: &[(&str, &str)]) -> String {
    let keys: Vec<Value> = keys
        .iter()
        .map(|(kid, secret)| {
            json!({"kty":"oct","kid":kid,"alg":"HS256",
                   "k": b64url(secret.as_bytes())})
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

/// Retries a login until `ok` holds for its result (keys are fetched in the background).
async fn eventually(s: &Server, token: &str, ok: impl Fn(&Result<Client, ErrFrame>) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = login(s, token).await;
        if ok(&r) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "login never reached the expected outcome; last: {:?}",
            r.err()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn keys_rotate_through_the_jwks_url_without_a_restart() {
    let k1 = "jwks-key-one-0123456789-0123456789-abc";
    let k2 = "jwks-key-two-0123456789-0123456789-abc";
    let doc = Arc::new(Mutex::new(jwks(&[("k1", k1)])));
    let url = serve_jwks(doc.clone()).await;
    let (s, _tmp) = start(&[("AUTH__JWKS_URL", &url), ("AUTH__JWKS_REFRESH_MS", "200")]);
    let claims = json!({"sub":"dee","exp":now_s() + 600});
    let t1 = sign(&claims, k1, Some("k1"));
    let t2 = sign(&claims, k2, Some("k2"));
    eventually(&s, &t1, Result::is_ok).await;
    let e = login(&s, &t2).await.err().expect("k2 is not published yet");
    assert!(e.msg.contains("`kid` \"k2\""), "{e:?}");
    // A token with a known kid but signed with another key is refused too.
    let forged = sign(&claims, k2, Some("k1"));
    let e = login(&s, &forged).await.err().expect("refused");
    assert!(e.msg.contains("signature"), "{e:?}");

    // Rotate: publish both, then only k2.
    *doc.lock().expect("doc") = jwks(&[("k1", k1), ("k2", k2)]);
    eventually(&s, &t2, Result::is_ok).await;
    login(&s, &t1).await.expect("k1 still published");
    *doc.lock().expect("doc") = jwks(&[("k2", k2)]);
    eventually(&s, &t1, |r| {
        r.as_ref()
            .err()
            .is_some_and(|e| e.msg.contains("`kid` \"k1\""))
    })
    .await;
    login(&s, &t2).await.expect("k2 after rotation");
}
