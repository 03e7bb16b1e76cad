//! No input and no stored body can break a read: bodies nested past `limits.max_json_depth`
//! are refused at the door (WebSocket and HTTP), and whatever was accepted reads back, byte
//! for byte, through every HTTP read route. Against a real server process.
// A real server process runs on wall-clock time.
#![allow(clippy::disallowed_types)]
mod common;

use common::{Client, Server};
use herald_protocol::ErrorCode;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{json, Value};

#[derive(serde::Deserialize)]
struct Answer {
    items: Option<Vec<Item>>,
    message: Option<Item>,
}

#[derive(serde::Deserialize)]
struct Item {
    id: String,
    body: Box<serde_json::value::RawValue>,
}

fn nested(depth: usize) -> String {
    format!("{}0{}", "[".repeat(depth), "]".repeat(depth))
}

/// Reads message `id` (sent by `from` to `stream`, answered at offset `o`) through every HTTP
/// read route and returns the body each one shows, as text, with the route's name.
async fn read_everywhere(
    s: &Server,
    id: &str,
    stream: &str,
    from: &str,
    o: u64,
) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    let routes = [
        format!("/v1/streams/{stream}?after={}&limit=1", o - 1),
        format!("/v1/messages?s={stream}&after={}&limit=1", o - 1),
        format!("/v1/messages?from={from}&after={}&limit=1000", o - 1),
        format!("/v1/messages/{id}"),
    ];
    for path in routes {
        let r = reqwest::get(s.http(&path)).await.expect("http get");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        assert_eq!(status, 200, "GET {path}: {text}");
        // Read the body as the raw text the answer holds: the store keeps bodies byte for
        // byte, and a float does not survive a parse and print unchanged.
        let v: Answer = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("GET {path}: answer is not JSON ({e}): {text:?}"));
        let body = match (v.items, v.message) {
            (Some(items), _) => items
                .into_iter()
                .find(|m| m.id == id)
                .unwrap_or_else(|| panic!("GET {path}: {id} not listed: {text}"))
                .body
                .get()
                .to_string(),
            (None, Some(m)) => m.body.get().to_string(),
            (None, None) => panic!("GET {path}: neither items nor message: {text}"),
        };
        seen.push((path, body));
    }
    seen
}

#[tokio::test]
async fn a_body_nested_past_the_limit_is_refused_and_the_stream_stays_readable() {
    let s = Server::start(&[]);
    // Over HTTP: 129 levels once broke every later read of the stream (serde_json's
    // recursion limit, hit while re-parsing the stored body to answer).
    for depth in [65, 129, 20_000] {
        let req = format!(r#"{{"to":"chan:deep","body":{}}}"#, nested(depth));
        let (status, v) = s
            .post_raw("/v1/publish", req.into_bytes(), Some("application/json"))
            .await;
        assert_eq!(status, 400, "depth {depth}: {v}");
        assert_eq!(v["error"]["code"], "bad_frame", "{v}");
        let msg = v["error"]["msg"].as_str().unwrap_or_default();
        assert!(msg.contains("limits.max_json_depth"), "{msg}");
    }
    // Over WebSocket: an `err` with the seq, the connection stays usable.
    let mut c = Client::connect(&s, "mallory", "m1").await;
    c.send_text(format!(
        r#"{{"t":"pub","seq":1,"to":"chan:deep","body":{}}}"#,
        nested(65)
    ))
    .await;
    let e = c.expect_err(1).await;
    assert_eq!(e.code, ErrorCode::BadFrame, "{e:?}");
    assert!(e.msg.contains("limits.max_json_depth"), "{e:?}");
    // 64 levels is the default limit and is accepted on both paths.
    let ok = c
        .publish_ok(
            "chan:deep",
            serde_json::from_str(&nested(64)).expect("json"),
        )
        .await;
    let id = ok.id.expect("id");
    for (route, body) in read_everywhere(&s, &id, "chan:deep", "mallory", ok.o.expect("o")).await {
        assert_eq!(body, nested(64), "{route}");
    }
    let req = format!(r#"{{"to":"chan:deep","body":{},"from":"svc"}}"#, nested(64));
    let (status, p) = s
        .post_raw("/v1/publish", req.into_bytes(), Some("application/json"))
        .await;
    assert_eq!(status, 200, "{p}");
    let (status, v) = s.get("/v1/streams/chan:deep").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["items"].as_array().map(Vec::len), Some(2), "{v}");
}

#[tokio::test]
async fn the_depth_limit_is_a_setting() {
    let s = Server::start(&[("LIMITS__MAX_JSON_DEPTH", "3")]);
    let (status, v) = s
        .post("/v1/publish", json!({"to":"chan:a","body":[[[1]]]}))
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = s
        .post("/v1/publish", json!({"to":"chan:a","body":[[[[1]]]]}))
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("more than 3 levels"),
        "{v}"
    );
}

/// Any JSON value, with strings of any characters, sometimes wrapped in arrays up to past
/// the depth limit.
fn any_json() -> impl Strategy<Value = (Value, usize)> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::String),
        "[\\\\\"\\[\\]{}\u{0}-\u{1f}\u{2028}\u{fffd}a-z]{0,12}".prop_map(Value::String),
    ];
    let tree = leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    (tree, prop_oneof![Just(0usize), 60usize..80])
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Stores arbitrary bodies (over HTTP and WebSocket) and reads each back through every HTTP
/// read route: each answers 200 with valid JSON holding exactly the stored body. A body past
/// the depth limit is refused with bad_frame and never stored.
#[test]
fn arbitrary_accepted_bodies_read_back_through_every_route() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // Refused bodies are malformed frames; keep the one connection open through all of them.
    let s = Server::start(&[("SESSION__MAX_BAD_FRAMES", "100000")]);
    let client = tokio::sync::Mutex::new(rt.block_on(Client::connect(&s, "prop", "p1")));
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let n = std::cell::Cell::new(0u64);
    let (read_back, refused) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    runner
        .run(&any_json(), |(tree, wrap)| {
            n.set(n.get() + 1);
            let mut body = tree;
            for _ in 0..wrap {
                body = Value::Array(vec![body]);
            }
            if body.is_null() {
                // A null body is a missing body (bad_frame), as over WebSocket.
                body = json!({ "null": null });
            }
            let text = body.to_string();
            let accepted = depth(&body) <= 64;
            rt.block_on(async {
                let (id, o, from) = if n.get().is_multiple_of(2) {
                    let req = format!(r#"{{"to":"chan:prop","body":{text},"from":"svc"}}"#);
                    let (status, p) = s
                        .post_raw("/v1/publish", req.into_bytes(), Some("application/json"))
                        .await;
                    if !accepted {
                        refused.set(refused.get() + 1);
                        prop_assert_eq!(status, 400, "{}", p);
                        prop_assert_eq!(&p["error"]["code"], "bad_frame");
                        return Ok(());
                    }
                    if status == 413 {
                        return Ok(()); // over max_body_bytes: a different limit
                    }
                    prop_assert_eq!(status, 200, "{}", p);
                    (
                        p["id"].as_str().unwrap_or_default().to_string(),
                        p["o"].as_u64().unwrap_or_default(),
                        "svc",
                    )
                } else {
                    let mut client = client.lock().await;
                    let seq = client
                        .request(json!({"t":"pub","to":"chan:prop","body":body}))
                        .await;
                    match client.answer(seq).await {
                        herald_protocol::ServerFrame::Ok(ok) => {
                            prop_assert!(accepted, "accepted a body {} deep", depth(&body));
                            (ok.id.unwrap_or_default(), ok.o.unwrap_or_default(), "prop")
                        }
                        herald_protocol::ServerFrame::Err(e) => {
                            if e.code == ErrorCode::TooLarge {
                                return Ok(());
                            }
                            prop_assert!(
                                !accepted,
                                "refused a body {} deep: {:?}",
                                depth(&body),
                                e
                            );
                            prop_assert_eq!(e.code, ErrorCode::BadFrame);
                            return Ok(());
                        }
                        other => return Err(TestCaseError::fail(format!("{other:?}"))),
                    }
                };
                for (route, seen) in read_everywhere(&s, &id, "chan:prop", from, o).await {
                    prop_assert_eq!(&seen, &text, "{}", route);
                }
                read_back.set(read_back.get() + 1);
                Ok(())
            })
        })
        .expect("every accepted body reads back through every route");
    // Both sides of the limit were exercised.
    assert!(
        read_back.get() >= 10 && refused.get() >= 3,
        "read back {}, refused {}",
        read_back.get(),
        refused.get()
    );
}
