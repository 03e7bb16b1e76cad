//! The dashboard's HTTP side against the real binary: the embedded pages at `/dashboard`, and
//! the two routes only it needs, `GET /v1/overview` and `GET /v1/sessions/positions`, behind
//! the API key. (The pages themselves are tested in a browser:
//! `crates/herald-server/dashboard/tests/`.)

mod common;

use common::{Client, Server};
use serde_json::{json, Value};

const API_KEY: &str = "dash-key-1";

async fn get(
    s: &Server,
    path: &str,
    key: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = reqwest::Client::new().get(s.http(path));
    if let Some(k) = key {
        req = req.header("Authorization", format!("Bearer {k}"));
    }
    let r = req.send().await.expect("http get");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap_or_default())
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test]
async fn the_pages_are_embedded_and_served_without_a_key_but_their_data_needs_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = Server::start_in(tmp.path(), &[("API__KEYS", API_KEY)], false);

    for path in ["/dashboard", "/dashboard/"] {
        let (status, h, body) = get(&s, path, None).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(h["content-type"], "text/html; charset=utf-8");
        assert!(body.contains(r#"<script type="module" src="/dashboard/app.js">"#));
        let csp = h["content-security-policy"].to_str().expect("csp");
        assert!(csp.contains("default-src 'self'"), "{csp}");
    }
    for (file, ct) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("api.js", "text/javascript; charset=utf-8"),
        ("feed.js", "text/javascript; charset=utf-8"),
        ("pages.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
    ] {
        let (status, h, body) = get(&s, &format!("/dashboard/{file}"), None).await;
        assert_eq!(status, 200, "{file}");
        assert_eq!(h["content-type"], ct, "{file}");
        assert!(!body.is_empty());
        // Nothing is loaded from elsewhere.
        assert!(!body.contains("https://"), "{file} refers to another host");
    }
    let (status, _, body) = get(&s, "/dashboard/nope.js", None).await;
    assert_eq!(status, 404);
    assert_eq!(json_of(&body)["error"]["code"], "not_found");

    for path in ["/v1/overview", "/v1/sessions/positions"] {
        let (status, _, body) = get(&s, path, None).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(json_of(&body)["error"]["code"], "unauthorized");
        let (status, _, _) = get(&s, path, Some("wrong-key")).await;
        assert_eq!(status, 401, "{path} with a wrong key");
        let (status, _, body) = get(&s, path, Some(API_KEY)).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
}

#[tokio::test]
async fn overview_and_session_positions_follow_real_traffic() {
    let s = Server::start(&[]);
    let mut b1 = Client::connect(&s, "bob", "b1").await;
    let mut b2 = Client::connect(&s, "bob", "b2").await;
    let mut alice = Client::connect(&s, "alice", "a1").await;
    alice.subscribe("room", None).await;

    let (status, p) = s
        .post("/v1/publish", json!({"to": "user:bob", "body": {"n": 1}}))
        .await;
    assert_eq!(status, 200, "{p}");
    let m1 = b1.expect_msg().await;
    b2.expect_msg().await;
    b1.ack(&m1.s, m1.o).await;
    alice.publish_ok("chan:room", json!({"x": 1})).await;
    let c = alice.expect_msg().await;
    assert_eq!(c.s, "chan:room");

    // b1 acked, b2 did not; alice was sent her own channel message and has not acked it.
    let v = s
        .wait_for("/v1/sessions/positions?uid=bob", |v| {
            v["items"]
                .as_array()
                .and_then(|a| a.iter().find(|i| i["device"] == "b1"))
                .is_some_and(|i| i["positions"][0]["acked"] == 1)
        })
        .await;
    let items = v["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{v}");
    let by = |d: &str| items.iter().find(|i| i["device"] == d).expect("device");
    let b1v = by("b1");
    assert_eq!(b1v["id"], b1.w().session.as_str());
    assert_eq!(b1v["state"], "connected");
    assert_eq!(b1v["conn"], b1.w().conn.as_str());
    assert!(b1v["addr"]
        .as_str()
        .is_some_and(|a| a.starts_with("127.0.0.1:")));
    assert_eq!(
        b1v["positions"],
        json!([{"s": "inbox:bob", "acked": 1, "sent": 1, "unacked": 0, "last": 1, "behind": 0}])
    );
    assert_eq!(
        by("b2")["positions"],
        json!([{"s": "inbox:bob", "acked": 0, "sent": 1, "unacked": 1, "last": 1, "behind": 1}])
    );

    let (_, a) = s.get("/v1/sessions/positions?uid=alice").await;
    let pos = &a["items"][0]["positions"];
    assert_eq!(pos[0]["s"], "inbox:alice");
    assert_eq!(
        pos[1],
        json!({"s": "chan:room", "acked": 0, "sent": 1, "unacked": 1, "last": 1, "behind": 1})
    );
    assert_eq!(a["items"][0]["subs"], json!({"room": 0}));

    // Filters and limits.
    let (_, d) = s.get("/v1/sessions/positions?uid=bob&device=b2").await;
    assert_eq!(d["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(d["items"][0]["device"], "b2");
    let (_, d) = s.get("/v1/sessions/positions?device=a1").await;
    assert_eq!(d["items"][0]["uid"], "alice");
    let (_, all) = s.get("/v1/sessions/positions?limit=2").await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(2));
    let (status, e) = s.get("/v1/sessions/positions?limit=0").await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["code"], "bad_frame");
    let (status, e) = s.get("/v1/sessions/positions?limit=x").await;
    assert_eq!(status, 400, "{e}");

    // The overview: b2's and alice's unacked deliveries.
    let o = s.wait_for("/v1/overview", |o| o["acks_pending"] == 2).await;
    assert_eq!(o["connections"], 3, "{o}");
    assert_eq!(o["sessions_connected"], 3);
    assert_eq!(o["sessions_disconnected"], 0);
    assert_eq!(o["publishes"], 2);
    assert_eq!(o["deliveries"], 3);
    assert_eq!(o["acks"], 1);
    assert!(o["store_commits"].as_u64().is_some_and(|n| n > 0), "{o}");
    assert!(o["store_commit_micros"].as_u64().is_some());
    assert!(o["now_ms"].as_u64().is_some());
    assert_eq!(
        o["evictions"],
        json!({"device_limit": 0, "kicked": 0, "replaced": 0, "resumed_elsewhere": 0})
    );

    // A kick and a dropped connection show up in it.
    let (status, _) = s.delete(&format!("/v1/sessions/{}", b2.w().session)).await;
    assert_eq!(status, 200);
    b2.expect_evicted().await;
    alice.cut();
    let o = s
        .wait_for("/v1/overview", |o| {
            o["sessions_disconnected"] == 1 && o["evictions"]["kicked"] == 1
        })
        .await;
    assert_eq!(o["sessions_connected"], 1, "{o}");
    // alice's session still has its unacked delivery, waiting for her resume.
    assert_eq!(o["acks_pending"], 1, "{o}");
}
