//! Request bodies of the HTTP API (`POST /v1/publish`): bytes → a checked request.
//!
//! Like the WebSocket decoder, decoding is total: any input yields a request or a
//! [`DecodeError`] naming the field at fault and the rule it broke, never a panic. The nesting
//! depth is checked before anything parses the body (`limits.max_json_depth`).

use serde::Deserialize;

use crate::codes::ErrorCode;
use crate::decode::{json_too_deep, too_deep, DecodeError, Limits, MAX_ID_LEN};
use crate::frames::Body;
use crate::names::{validate_name, Target};

/// A checked `POST /v1/publish` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    pub to: Target,
    pub body: Body,
    /// Idempotency key, 1..=[`MAX_ID_LEN`] bytes.
    pub id: Option<String>,
    /// Sender name (a valid uid); `None` means the API's own sender.
    pub from: Option<String>,
}

#[derive(Deserialize)]
struct PublishIn {
    to: String,
    body: Option<Body>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    from: Option<String>,
}

fn bad(code: ErrorCode, msg: impl Into<String>) -> DecodeError {
    DecodeError::new(None, code, msg)
}

/// Decodes a `POST /v1/publish` body. Codes: `too_large` (body over `limits.max_body_bytes`),
/// `bad_target` (`to`), `bad_frame` (anything else).
pub fn decode_publish(raw: &[u8], limits: &Limits) -> Result<PublishRequest, DecodeError> {
    // The request object holds the body: one level more than the body's limit.
    if let Some(at) = json_too_deep(raw, limits.max_json_depth.saturating_add(1)) {
        return Err(too_deep(None, limits, at));
    }
    let req: PublishIn = serde_json::from_slice(raw).map_err(|e| {
        let why = if e.is_data() {
            explain_publish(raw).unwrap_or_else(|| e.to_string())
        } else {
            e.to_string()
        };
        bad(ErrorCode::BadFrame, format!("invalid JSON body: {why}"))
    })?;
    let to = Target::parse(&req.to).map_err(|e| bad(ErrorCode::BadTarget, format!("`to`: {e}")))?;
    let body = req
        .body
        .ok_or_else(|| bad(ErrorCode::BadFrame, "missing field `body`"))?;
    let max = limits.max_body_bytes;
    if body.get().len() > max {
        return Err(bad(
            ErrorCode::TooLarge,
            format!(
                "`body` is {} bytes; the limit is {max} (limits.max_body_bytes)",
                body.get().len()
            ),
        ));
    }
    if let Some(why) = crate::decode::unreadable_body(body.get()) {
        return Err(bad(ErrorCode::BadFrame, why));
    }
    if let Some(id) = &req.id {
        if id.is_empty() || id.len() > MAX_ID_LEN {
            return Err(bad(
                ErrorCode::BadFrame,
                format!("`id` must be 1-{MAX_ID_LEN} bytes, got {}", id.len()),
            ));
        }
    }
    if let Some(f) = &req.from {
        validate_name("`from`", f).map_err(|e| bad(ErrorCode::BadFrame, e.to_string()))?;
    }
    Ok(PublishRequest {
        to,
        body,
        id: req.id,
        from: req.from,
    })
}

/// Names the field of a publish request that has the wrong type (serde's own message does
/// not), e.g. "`to` must be a string, got 5".
fn explain_publish(body: &[u8]) -> Option<String> {
    use serde_json::Value;
    let v: Value = serde_json::from_slice(body).ok()?;
    let Some(map) = v.as_object() else {
        return Some("the request must be a JSON object {\"to\":…,\"body\":…}".into());
    };
    for (name, required) in [("to", true), ("id", false), ("from", false)] {
        match map.get(name) {
            Some(Value::String(_)) => {}
            None | Some(Value::Null) if !required => {}
            None => return Some(format!("missing field `{name}`")),
            Some(other) => {
                let got = match other {
                    Value::Null => "null".to_string(),
                    Value::Array(_) => "an array".into(),
                    Value::Object(_) => "an object".into(),
                    v => v.to_string(),
                };
                return Some(format!("`{name}` must be a string, got {got}"));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(s: &str) -> Result<PublishRequest, DecodeError> {
        decode_publish(s.as_bytes(), &Limits::default())
    }

    #[test]
    fn decodes_and_names_faults() {
        let r = decode(r#"{"to":"user:bob","body":{"a":1},"id":"k","from":"svc"}"#).unwrap();
        assert_eq!(r.to, Target::User("bob".into()));
        assert_eq!(r.body.get(), r#"{"a":1}"#);
        assert_eq!(
            (r.id.as_deref(), r.from.as_deref()),
            (Some("k"), Some("svc"))
        );
        for (text, code, msg) in [
            (
                r#"{"to":5,"body":1}"#,
                ErrorCode::BadFrame,
                "`to` must be a string, got 5",
            ),
            (r#"{"body":1}"#, ErrorCode::BadFrame, "missing field `to`"),
            (
                r#"{"to":"chan:a"}"#,
                ErrorCode::BadFrame,
                "missing field `body`",
            ),
            (
                r#"{"to":"bob","body":1}"#,
                ErrorCode::BadTarget,
                "`to`: target",
            ),
            (
                r#"{"to":"chan:a","body":1,"id":""}"#,
                ErrorCode::BadFrame,
                "`id` must be 1-256",
            ),
            (
                r#"{"to":"chan:a","body":1,"from":"a b"}"#,
                ErrorCode::BadFrame,
                "`from`",
            ),
            ("[1]", ErrorCode::BadFrame, "must be a JSON object"),
            ("{", ErrorCode::BadFrame, "invalid JSON body"),
        ] {
            let e = decode(text).unwrap_err();
            assert_eq!(e.code, code, "{text}: {}", e.msg);
            assert!(e.msg.contains(msg), "{text}: {:?} lacks {msg:?}", e.msg);
        }
    }

    #[test]
    fn depth_limit() {
        let nested = |d: usize| format!("{}0{}", "[".repeat(d), "]".repeat(d));
        assert!(decode(&format!(r#"{{"to":"chan:a","body":{}}}"#, nested(64))).is_ok());
        let e = decode(&format!(r#"{{"to":"chan:a","body":{}}}"#, nested(65))).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadFrame);
        assert!(e.msg.contains("limits.max_json_depth"), "{}", e.msg);
    }

    proptest! {
        #[test]
        fn never_panics(s in r#"[\{\}\[\]":,tobdyfrmichanuser0-9 \\]{0,200}"#) {
            let _ = decode(&s);
        }
    }
}
