//! Text frame → frames. A frame holds one JSON object, or several separated by `\n`.
//!
//! Decoding is total: any input yields frames or errors that say what was wrong (and carry the
//! request's `seq` when it could be read), never a panic. Each object of a batch is decoded on
//! its own, so one bad object does not hide the others.

use std::borrow::Cow;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::codes::ErrorCode;
use crate::frames::*;
use crate::names::{validate_name, ClientStream, NameError, Target};

/// Longest idempotency key (`pub.id`) accepted, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// Default for [`Limits::max_json_depth`] (`limits.max_json_depth`).
pub const DEFAULT_MAX_JSON_DEPTH: usize = 64;

/// Limits the decoder enforces (the frame size itself is enforced by the transport).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// Deepest nesting of arrays and objects accepted in a `body` (`limits.max_json_depth`).
    /// A frame or request may nest one level more: the object that holds the body. Checked
    /// before any parsing, so no later step (serde's own recursion limit of 128 when a stored
    /// body is re-read, a client's parser) ever sees a deeper value.
    pub max_json_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 64 * 1024,
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
        }
    }
}

/// Why an accepted-looking body could not be read back as JSON by a strict reader, if so.
pub fn unreadable_body(body: &str) -> Option<String> {
    // The body is kept as raw text, which checks neither `\u` escapes nor number ranges: a
    // lone UTF-16 surrogate (`\ud800`) or a number beyond f64 (`1e400`) would be stored and
    // then fail to decode in every client that reads strictly (serde_json among them): a
    // poison message. Only bodies with an escape, an exponent or a very long digit run pay
    // for the full parse.
    let b = body.as_bytes();
    let mut digits = 0usize;
    let mut suspect = false;
    for (i, &c) in b.iter().enumerate() {
        if c.is_ascii_digit() {
            digits += 1;
            if digits > 300 {
                suspect = true;
            }
        } else {
            if digits > 0 && (c == b'e' || c == b'E') {
                suspect = true;
            }
            digits = 0;
        }
        if c == b'\\' && b.get(i + 1) == Some(&b'u') {
            suspect = true;
        }
        if suspect {
            break;
        }
    }
    if !suspect {
        return None;
    }
    serde_json::from_str::<serde_json::Value>(body).err().map(|e| {
        format!("`body` cannot be read back as JSON (a lone UTF-16 surrogate such as \\ud800, or a number beyond 64-bit floating point?): {e}")
    })
}

/// Where JSON text nests arrays and objects deeper than `max` levels: the byte offset of the
/// first bracket past the limit. Brackets inside strings do not count. The text need not be
/// valid JSON (the parser judges that afterwards); the scan is linear and allocates nothing.
pub fn json_too_deep(text: &[u8], max: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in text.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Some(i);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// The error for a frame or request nested deeper than `limits.max_json_depth` allows.
pub(crate) fn too_deep(seq: Option<u64>, limits: &Limits, at: usize) -> DecodeError {
    DecodeError::new(
        seq,
        ErrorCode::BadFrame,
        format!(
            "JSON nests more than {} levels of arrays and objects in `body` (at byte {at}); \
             the limit is limits.max_json_depth",
            limits.max_json_depth
        ),
    )
}

/// Why one object of a frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {msg}")]
pub struct DecodeError {
    /// The request's `seq`, if it could be read, so the client can match the `err`.
    pub seq: Option<u64>,
    pub code: ErrorCode,
    pub msg: String,
}

impl DecodeError {
    pub(crate) fn new(seq: Option<u64>, code: ErrorCode, msg: impl Into<String>) -> Self {
        DecodeError {
            seq,
            code,
            msg: msg.into(),
        }
    }

    /// The `err` frame that answers this error.
    pub fn to_frame(&self) -> ServerFrame {
        ServerFrame::err(self.seq, self.code, self.msg.clone())
    }
}

pub type Decoded = Result<ClientFrame, DecodeError>;

/// Decodes a client text frame.
pub fn decode_frame(text: &str, limits: &Limits) -> Vec<Decoded> {
    split(text, |obj| decode_client_object(obj, limits))
}

/// Decodes a server text frame (for clients and tests).
pub fn decode_server_frame(text: &str) -> Vec<Result<ServerFrame, DecodeError>> {
    split(text, decode_server_object)
}

fn split<T>(
    text: &str,
    mut one: impl FnMut(&str) -> Result<T, DecodeError>,
) -> Vec<Result<T, DecodeError>> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return vec![Err(DecodeError::new(
            None,
            ErrorCode::BadFrame,
            "empty frame: a text frame holds one JSON object, or several separated by \\n",
        ))];
    }
    if !trimmed.contains('\n') {
        return vec![one(trimmed)];
    }
    // A single object spread over several lines (pretty-printed) is accepted as one.
    if serde_json::from_str::<serde::de::IgnoredAny>(trimmed).is_ok() {
        return vec![one(trimmed)];
    }
    trimmed
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(&mut one)
        .collect()
}

/// Reads only `seq` (skipping everything else without recursing into it), so an error about
/// the frame can still name the request.
#[derive(Deserialize)]
struct SeqOnly {
    #[serde(default)]
    seq: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    t: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<serde_json::Value>,
}

fn probe(obj: &str) -> Result<(String, Option<u64>), DecodeError> {
    let p: Probe<'_> = serde_json::from_str(obj).map_err(|e| {
        let msg = if !e.is_data() {
            format!("invalid JSON: {e}")
        } else if obj.starts_with('{') {
            // The only typed field of the probe is `t`.
            match serde_json::from_str::<serde_json::Value>(obj) {
                Ok(v) => format!(
                    "`t` must be a string naming the frame type ({CLIENT_TYPES}), got {}",
                    describe(&v["t"])
                ),
                Err(_) => format!("bad frame: {e}"),
            }
        } else {
            "a frame must be a JSON object".to_string()
        };
        DecodeError::new(None, ErrorCode::BadFrame, msg)
    })?;
    let seq = p.seq.as_ref().and_then(serde_json::Value::as_u64);
    match p.t {
        Some(t) => Ok((t.into_owned(), seq)),
        None => Err(DecodeError::new(
            seq,
            ErrorCode::BadFrame,
            format!("missing field `t` (the frame type: one of {CLIENT_TYPES})"),
        )),
    }
}

/// Parses a frame of type `t`. When serde's reason does not name the field at fault (a
/// wrong type), `fields` is consulted to name it and its rule.
fn parse<T: DeserializeOwned>(
    obj: &str,
    t: &str,
    seq: Option<u64>,
    fields: &[Field],
) -> Result<T, DecodeError> {
    serde_json::from_str(obj).map_err(|e| {
        let why = explain(obj, fields).unwrap_or_else(|| e.to_string());
        DecodeError::new(seq, ErrorCode::BadFrame, format!("bad `{t}` frame: {why}"))
    })
}

/// What a field of a client frame must hold.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A non-negative integer (u64).
    Uint,
    /// A non-negative integer that fits in u32.
    Small,
    Str,
    Bool,
    /// Any JSON value.
    Any,
    /// `{"session": string, "key": string}`.
    Resume,
}

/// A field of a client frame, for error messages.
#[derive(Debug, Clone, Copy)]
struct Field {
    name: &'static str,
    kind: Kind,
    required: bool,
}

const fn field(name: &'static str, kind: Kind, required: bool) -> Field {
    Field {
        name,
        kind,
        required,
    }
}

const HELLO_FIELDS: &[Field] = &[
    field("v", Kind::Small, false),
    field("token", Kind::Str, false),
    field("uid", Kind::Str, false),
    field("device", Kind::Str, false),
    field("resume", Kind::Resume, false),
    field("reconnect_timeout_ms", Kind::Uint, false),
];
const PUB_FIELDS: &[Field] = &[
    field("seq", Kind::Uint, true),
    field("to", Kind::Str, true),
    field("body", Kind::Any, true),
    field("id", Kind::Str, false),
    field("receipt", Kind::Bool, false),
];
const SUB_FIELDS: &[Field] = &[
    field("seq", Kind::Uint, true),
    field("chan", Kind::Str, true),
    field("from", Kind::Uint, false),
];
const UNSUB_FIELDS: &[Field] = &[
    field("seq", Kind::Uint, true),
    field("chan", Kind::Str, true),
];
const ACK_FIELDS: &[Field] = &[field("s", Kind::Str, true), field("o", Kind::Uint, true)];

/// Names the first field of `obj` that breaks its rule, e.g. "`seq` must be a non-negative
/// integer, got a string". `None` when every listed field looks right.
fn explain(obj: &str, fields: &[Field]) -> Option<String> {
    use serde_json::Value;
    let map: serde_json::Map<String, Value> = serde_json::from_str(obj).ok()?;
    for f in fields {
        let v = match map.get(f.name) {
            None | Some(Value::Null) if !f.required => continue,
            None => return Some(format!("missing field `{}`", f.name)),
            Some(v) => v,
        };
        let (ok, rule) = match f.kind {
            Kind::Uint => (v.as_u64().is_some(), "a non-negative integer"),
            Kind::Small => (
                v.as_u64().is_some_and(|n| u32::try_from(n).is_ok()),
                "a non-negative integer below 2^32",
            ),
            Kind::Str => (v.is_string(), "a string"),
            Kind::Bool => (v.is_boolean(), "true or false"),
            Kind::Any => (true, "any JSON value"),
            Kind::Resume => {
                let Some(r) = v.as_object() else {
                    return Some(format!(
                        "`{}` must be an object {{\"session\":…,\"key\":…}}, got {}",
                        f.name,
                        describe(v)
                    ));
                };
                for part in ["session", "key"] {
                    match r.get(part) {
                        Some(Value::String(_)) => {}
                        None => return Some(format!("missing field `{}.{part}`", f.name)),
                        Some(other) => {
                            return Some(format!(
                                "`{}.{part}` must be a string, got {}",
                                f.name,
                                describe(other)
                            ))
                        }
                    }
                }
                (true, "")
            }
        };
        if !ok {
            return Some(format!("`{}` must be {rule}, got {}", f.name, describe(v)));
        }
    }
    None
}

/// A short description of a JSON value for error messages (never the whole value).
fn describe(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("{n}"),
        Value::String(s) if s.len() <= 40 => format!("the string {s:?}"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn check_seq(seq: u64) -> Result<(), DecodeError> {
    if seq == 0 {
        return Err(DecodeError::new(
            Some(0),
            ErrorCode::BadFrame,
            "`seq` must be at least 1, got 0 (it starts at 1 and increases by request)",
        ));
    }
    Ok(())
}

/// A name error in field `field` (`to`, `chan`, `s`).
fn bad_target(seq: Option<u64>, field: &str, e: NameError) -> DecodeError {
    DecodeError::new(seq, ErrorCode::BadTarget, format!("`{field}`: {e}"))
}

#[derive(Deserialize)]
struct PubIn {
    seq: u64,
    to: String,
    body: Option<Body>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    receipt: bool,
}

const CLIENT_TYPES: &str = "hello, pub, sub, unsub, ack, ping, pong, bye";

fn decode_client_object(obj: &str, limits: &Limits) -> Decoded {
    // Before any parse: the probe and the error explanations parse the whole object too.
    // One level more than the limit: the frame object itself holds the body.
    if let Some(at) = json_too_deep(obj.as_bytes(), limits.max_json_depth.saturating_add(1)) {
        let seq = serde_json::from_str::<SeqOnly>(obj)
            .ok()
            .and_then(|s| s.seq.as_ref().and_then(serde_json::Value::as_u64));
        return Err(too_deep(seq, limits, at));
    }
    let (t, seq) = probe(obj)?;
    match t.as_str() {
        "hello" => {
            let h: Hello = parse(obj, "hello", seq, HELLO_FIELDS)?;
            if let Some(d) = &h.device {
                validate_name("`device`", d)
                    .map_err(|e| DecodeError::new(None, ErrorCode::BadFrame, e.to_string()))?;
            }
            if let Some(u) = &h.uid {
                validate_name("`uid`", u)
                    .map_err(|e| DecodeError::new(None, ErrorCode::BadFrame, e.to_string()))?;
            }
            Ok(ClientFrame::Hello(h))
        }
        "pub" => {
            let p: PubIn = parse(obj, "pub", seq, PUB_FIELDS)?;
            let seq = Some(p.seq);
            check_seq(p.seq)?;
            let to = Target::parse(&p.to).map_err(|e| bad_target(seq, "to", e))?;
            let body = p.body.ok_or_else(|| {
                DecodeError::new(
                    seq,
                    ErrorCode::BadFrame,
                    "bad `pub` frame: missing field `body`",
                )
            })?;
            let len = body.get().len();
            if len > limits.max_body_bytes {
                return Err(DecodeError::new(
                    seq,
                    ErrorCode::TooLarge,
                    format!(
                        "`body` is {len} bytes; the limit is {} (limits.max_body_bytes)",
                        limits.max_body_bytes
                    ),
                ));
            }
            if let Some(why) = unreadable_body(body.get()) {
                return Err(DecodeError::new(seq, ErrorCode::BadFrame, why));
            }
            if let Some(id) = &p.id {
                if id.is_empty() || id.len() > MAX_ID_LEN {
                    return Err(DecodeError::new(
                        seq,
                        ErrorCode::BadFrame,
                        format!("`id` must be 1-{MAX_ID_LEN} bytes, got {}", id.len()),
                    ));
                }
            }
            Ok(ClientFrame::Pub(Pub {
                seq: p.seq,
                to,
                body,
                id: p.id,
                receipt: p.receipt,
            }))
        }
        "sub" => {
            let s: Sub = parse(obj, "sub", seq, SUB_FIELDS)?;
            check_seq(s.seq)?;
            validate_name("channel", &s.chan).map_err(|e| bad_target(Some(s.seq), "chan", e))?;
            Ok(ClientFrame::Sub(s))
        }
        "unsub" => {
            let u: Unsub = parse(obj, "unsub", seq, UNSUB_FIELDS)?;
            check_seq(u.seq)?;
            validate_name("channel", &u.chan).map_err(|e| bad_target(Some(u.seq), "chan", e))?;
            Ok(ClientFrame::Unsub(u))
        }
        "ack" => {
            let a: Ack = parse(obj, "ack", seq, ACK_FIELDS)?;
            ClientStream::parse(&a.s).map_err(|e| bad_target(None, "s", e))?;
            Ok(ClientFrame::Ack(a))
        }
        "ping" => Ok(ClientFrame::Ping),
        "pong" => Ok(ClientFrame::Pong),
        "bye" => Ok(ClientFrame::Bye),
        other => Err(DecodeError::new(
            seq,
            ErrorCode::UnknownType,
            format!(
                "`t` is {:?}, not a client frame type; expected one of {CLIENT_TYPES}",
                other.chars().take(64).collect::<String>()
            ),
        )),
    }
}

fn decode_server_object(obj: &str) -> Result<ServerFrame, DecodeError> {
    let (t, seq) = probe(obj)?;
    Ok(match t.as_str() {
        "welcome" => ServerFrame::Welcome(Box::new(parse(obj, "welcome", seq, &[])?)),
        "ok" => ServerFrame::Ok(parse(obj, "ok", seq, &[])?),
        "err" => ServerFrame::Err(parse(obj, "err", seq, &[])?),
        "msg" => ServerFrame::Msg(parse(obj, "msg", seq, &[])?),
        "gap" => ServerFrame::Gap(parse(obj, "gap", seq, &[])?),
        "evicted" => ServerFrame::Evicted(parse(obj, "evicted", seq, &[])?),
        "ping" => ServerFrame::Ping,
        "pong" => ServerFrame::Pong,
        other => {
            return Err(DecodeError::new(
                seq,
                ErrorCode::UnknownType,
                format!("unknown server frame type {other:?}"),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(text: &str) -> Decoded {
        let mut v = decode_frame(text, &Limits::default());
        assert_eq!(v.len(), 1, "{v:?}");
        v.remove(0)
    }

    #[test]
    fn decodes_each_client_type() {
        assert!(matches!(
            one(r#"{"t":"hello","v":1,"uid":"alice","device":"p1"}"#),
            Ok(ClientFrame::Hello(h)) if h.uid.as_deref() == Some("alice")
        ));
        match one(r#"{"t":"pub","seq":3,"to":"user:bob","body":{"text":"hi"},"id":"k1"}"#) {
            Ok(ClientFrame::Pub(p)) => {
                assert_eq!(p.seq, 3);
                assert_eq!(p.to, Target::User("bob".into()));
                assert_eq!(p.body.get(), r#"{"text":"hi"}"#);
                assert_eq!(p.id.as_deref(), Some("k1"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            one(r#"{"t":"sub","seq":4,"chan":"room1","from":10}"#),
            Ok(ClientFrame::Sub(Sub {
                seq: 4,
                from: Some(10),
                ..
            }))
        ));
        assert!(matches!(
            one(r#"{"t":"unsub","seq":5,"chan":"room1"}"#),
            Ok(ClientFrame::Unsub(_))
        ));
        assert!(matches!(
            one(r#"{"t":"ack","s":"inbox","o":7}"#),
            Ok(ClientFrame::Ack(_))
        ));
        assert_eq!(one(r#"{"t":"ping"}"#), Ok(ClientFrame::Ping));
        assert_eq!(one(r#"{"t":"pong"}"#), Ok(ClientFrame::Pong));
        assert_eq!(one(r#"{"t":"bye"}"#), Ok(ClientFrame::Bye));
    }

    #[test]
    fn errors_are_specific_and_carry_seq() {
        let e = one(r#"{"t":1}"#).unwrap_err();
        assert!(
            e.msg
                .starts_with("`t` must be a string naming the frame type"),
            "{}",
            e.msg
        );
        let e = one(r#"{"t":"pub","seq":9,"to":"bob","body":1}"#).unwrap_err();
        assert_eq!((e.seq, e.code), (Some(9), ErrorCode::BadTarget));
        let e = one(r#"{"t":"pub","seq":9,"to":"user:bob"}"#).unwrap_err();
        assert_eq!((e.seq, e.code), (Some(9), ErrorCode::BadFrame));
        assert!(e.msg.contains("body"), "{}", e.msg);
        let e = one(r#"{"t":"nope","seq":2}"#).unwrap_err();
        assert_eq!((e.seq, e.code), (Some(2), ErrorCode::UnknownType));
        let e = one(r#"{"seq":2}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadFrame);
        let e = one("{not json").unwrap_err();
        assert_eq!((e.seq, e.code), (None, ErrorCode::BadFrame));
        let e = one("[1,2]").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadFrame);
        let e = one(r#"{"t":"sub","seq":0,"chan":"a"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadFrame);
        let e = one(r#"{"t":"sub","seq":1,"chan":"a b"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadTarget);
    }

    /// Every rejection names the field at fault (in backticks) and the rule it broke.
    #[test]
    fn errors_name_the_field_and_the_rule() {
        let cases: &[(&str, ErrorCode, &str)] = &[
            (
                r#"{"t":"pub","seq":"1","to":"chan:a","body":1}"#,
                ErrorCode::BadFrame,
                "bad `pub` frame: `seq` must be a non-negative integer, got the string \"1\"",
            ),
            (
                r#"{"t":"pub","seq":-1,"to":"chan:a","body":1}"#,
                ErrorCode::BadFrame,
                "bad `pub` frame: `seq` must be a non-negative integer, got -1",
            ),
            (
                r#"{"t":"pub","seq":1,"to":5,"body":1}"#,
                ErrorCode::BadFrame,
                "bad `pub` frame: `to` must be a string, got 5",
            ),
            (
                r#"{"t":"pub","seq":1,"to":"chan:a","body":1,"receipt":"yes"}"#,
                ErrorCode::BadFrame,
                "bad `pub` frame: `receipt` must be true or false",
            ),
            (
                r#"{"t":"pub","seq":1,"to":"chan:a","body":1,"id":7}"#,
                ErrorCode::BadFrame,
                "bad `pub` frame: `id` must be a string, got 7",
            ),
            (
                r#"{"t":"pub","seq":1,"to":"chan:a"}"#,
                ErrorCode::BadFrame,
                "bad `pub` frame: missing field `body`",
            ),
            (
                r#"{"t":"pub","seq":1,"body":1}"#,
                ErrorCode::BadFrame,
                "bad `pub` frame: missing field `to`",
            ),
            (
                r#"{"t":"pub","seq":1,"to":"bob","body":1}"#,
                ErrorCode::BadTarget,
                "`to`: target \"bob\" must be",
            ),
            (
                r#"{"t":"pub","seq":1,"to":"user:","body":1}"#,
                ErrorCode::BadTarget,
                "`to`: uid is empty",
            ),
            (
                r#"{"t":"pub","seq":1,"to":"chan:a","body":1,"id":""}"#,
                ErrorCode::BadFrame,
                "`id` must be 1-256 bytes, got 0",
            ),
            (
                r#"{"t":"pub","seq":0,"to":"chan:a","body":1}"#,
                ErrorCode::BadFrame,
                "`seq` must be at least 1, got 0",
            ),
            (
                r#"{"t":"sub","seq":1}"#,
                ErrorCode::BadFrame,
                "bad `sub` frame: missing field `chan`",
            ),
            (
                r#"{"t":"sub","seq":1,"chan":"a","from":"x"}"#,
                ErrorCode::BadFrame,
                "bad `sub` frame: `from` must be a non-negative integer",
            ),
            (
                r#"{"t":"sub","seq":1,"chan":"a b"}"#,
                ErrorCode::BadTarget,
                "`chan`: channel contains ' '; names may contain only",
            ),
            (
                r#"{"t":"unsub","seq":1,"chan":""}"#,
                ErrorCode::BadTarget,
                "`chan`: channel is empty",
            ),
            (
                r#"{"t":"ack","s":"inbox"}"#,
                ErrorCode::BadFrame,
                "bad `ack` frame: missing field `o`",
            ),
            (
                r#"{"t":"ack","s":"inbox","o":1.5}"#,
                ErrorCode::BadFrame,
                "bad `ack` frame: `o` must be a non-negative integer, got 1.5",
            ),
            (
                r#"{"t":"ack","s":"user:bob","o":1}"#,
                ErrorCode::BadTarget,
                "`s`: stream \"user:bob\" must be \"inbox\" or \"chan:<name>\"",
            ),
            (
                r#"{"t":"hello","v":"1"}"#,
                ErrorCode::BadFrame,
                "bad `hello` frame: `v` must be a non-negative integer",
            ),
            (
                r#"{"t":"hello","v":1,"resume":"s1"}"#,
                ErrorCode::BadFrame,
                "bad `hello` frame: `resume` must be an object",
            ),
            (
                r#"{"t":"hello","v":1,"resume":{"session":"s1"}}"#,
                ErrorCode::BadFrame,
                "bad `hello` frame: missing field `resume.key`",
            ),
            (
                r#"{"t":"hello","v":1,"uid":"a b"}"#,
                ErrorCode::BadFrame,
                "`uid` contains ' '",
            ),
            (
                r#"{"t":"hello","v":1,"uid":"a","device":""}"#,
                ErrorCode::BadFrame,
                "`device` is empty",
            ),
            (
                r#"{"t":"hello","v":1,"token":1}"#,
                ErrorCode::BadFrame,
                "bad `hello` frame: `token` must be a string, got 1",
            ),
            (
                r#"{"t":true}"#,
                ErrorCode::BadFrame,
                "`t` must be a string naming the frame type",
            ),
            (r#"{"seq":1}"#, ErrorCode::BadFrame, "missing field `t`"),
            (
                r#"{"t":"nope"}"#,
                ErrorCode::UnknownType,
                "`t` is \"nope\", not a client frame type",
            ),
            (
                "",
                ErrorCode::BadFrame,
                "empty frame: a text frame holds one JSON object",
            ),
        ];
        for (frame, code, msg) in cases {
            let e = one(frame).unwrap_err();
            assert_eq!(e.code, *code, "{frame}: {}", e.msg);
            assert!(
                e.msg.contains(msg),
                "{frame}: {:?} does not contain {msg:?}",
                e.msg
            );
        }
    }

    #[test]
    fn body_limit() {
        let limits = Limits {
            max_body_bytes: 10,
            ..Limits::default()
        };
        let v = decode_frame(
            r#"{"t":"pub","seq":1,"to":"chan:a","body":"0123456789"}"#,
            &limits,
        );
        let e = v[0].clone().unwrap_err();
        assert_eq!((e.seq, e.code), (Some(1), ErrorCode::TooLarge));
    }

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn json_depth_limit() {
        let limits = Limits::default();
        let ok = format!(
            r#"{{"t":"pub","seq":4,"to":"chan:a","body":{}}}"#,
            nested(limits.max_json_depth)
        );
        assert!(matches!(one(&ok), Ok(ClientFrame::Pub(_))));
        let deep = format!(
            r#"{{"t":"pub","seq":4,"to":"chan:a","body":{}}}"#,
            nested(limits.max_json_depth + 1)
        );
        let e = one(&deep).unwrap_err();
        assert_eq!((e.seq, e.code), (Some(4), ErrorCode::BadFrame));
        assert!(e.msg.contains("limits.max_json_depth"), "{}", e.msg);
        // Far past serde's own recursion limit (128): still a specific error, never a panic.
        let e = one(&format!(r#"{{"seq":9,"x":{}}}"#, nested(100_000))).unwrap_err();
        assert_eq!((e.seq, e.code), (Some(9), ErrorCode::BadFrame));
        assert!(e.msg.contains("limits.max_json_depth"), "{}", e.msg);
        // Brackets inside strings are text, not nesting.
        let text = format!(
            r#"{{"t":"pub","seq":1,"to":"chan:a","body":"{}\"{}"}}"#,
            "[".repeat(200),
            "{".repeat(200)
        );
        assert!(matches!(one(&text), Ok(ClientFrame::Pub(_))), "{text}");
        assert_eq!(json_too_deep(b"[[]]", 2), None);
        assert!(unreadable_body(r#"{"a":"\ud800x"}"#).is_some());
        assert!(unreadable_body(r#"{"a":"\ud83d\ude00 \u00e9"}"#).is_none());
        assert!(unreadable_body("[1e400]").is_some());
        assert!(unreadable_body("[1e300, 2.5E-3, \"3e4\"]").is_none());
        let f = decode_frame(
            r#"{"t":"pub","seq":4,"to":"user:bob","body":{"a":"\ud800"}}"#,
            &Limits::default(),
        );
        assert!(
            matches!(&f[0], Err(e) if e.seq == Some(4) && e.code == ErrorCode::BadFrame && e.msg.contains("surrogate")),
            "{f:?}"
        );
        assert_eq!(json_too_deep(b"[[[]]]", 2), Some(2));
        assert_eq!(json_too_deep(br#"["\"[[["]"#, 1), None);
    }

    #[test]
    fn batches_decode_each_object() {
        let v = decode_frame(
            "{\"t\":\"ping\"}\n{bad\n\n{\"t\":\"ack\",\"s\":\"inbox\",\"o\":1}\n",
            &Limits::default(),
        );
        assert_eq!(v.len(), 3);
        assert!(v[0].is_ok() && v[1].is_err() && v[2].is_ok());
        let pretty = "{\n  \"t\": \"ping\"\n}";
        assert_eq!(
            decode_frame(pretty, &Limits::default()),
            vec![Ok(ClientFrame::Ping)]
        );
    }

    #[test]
    fn client_encode_round_trips() {
        let frames = [
            r#"{"t":"pub","seq":1,"to":"chan:x","body":{"a":[1,2]},"id":"z","receipt":true}"#,
            r#"{"t":"sub","seq":2,"chan":"x","from":4}"#,
            r#"{"t":"ack","s":"chan:x","o":4}"#,
            r#"{"t":"hello","v":1,"uid":"u","resume":{"session":"s","key":"k"}}"#,
        ];
        for f in frames {
            let d = one(f).unwrap();
            assert_eq!(d.encode(), f);
        }
    }

    #[test]
    fn server_frames_round_trip() {
        let text = r#"{"t":"gap","s":"chan:a","from":1,"to":4,"reason":"retention"}
{"t":"evicted","reason":"replaced","by":{"conn":"c2","addr":"127.0.0.1:5"}}"#;
        let v = decode_server_frame(text);
        assert_eq!(v.len(), 2);
        let encoded: Vec<String> = v.into_iter().map(|f| f.unwrap().encode()).collect();
        assert_eq!(encoded.join("\n"), text);
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,300}") {
            let _ = decode_frame(&s, &Limits::default());
            let _ = decode_server_frame(&s);
        }

        #[test]
        fn never_panics_on_json_like(s in r#"[\{\}\[\]":,tseqobdyp0-9a-z \n\\]{0,120}"#) {
            let _ = decode_frame(&s, &Limits::default());
        }
    }
}
