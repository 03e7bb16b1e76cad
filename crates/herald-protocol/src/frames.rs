//! Every frame of protocol v1, client → server and server → client.
//!
//! Bodies are kept as raw JSON (`RawValue`): the server stores and forwards them byte for byte
//! and never re-encodes a payload it does not need to understand.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::codes::ErrorCode;
use crate::names::Target;

/// A message body: any JSON value, kept as the raw text the publisher sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Body(pub Box<RawValue>);

impl Body {
    /// Validates `json` as one JSON value.
    pub fn from_json(json: String) -> Result<Body, serde_json::Error> {
        RawValue::from_string(json).map(Body)
    }

    pub fn get(&self) -> &str {
        self.0.get()
    }

    pub fn raw(&self) -> &RawValue {
        &self.0
    }
}

impl PartialEq for Body {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for Body {}

/// Resume credentials from a previous `welcome`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    pub session: String,
    pub key: String,
}

/// First client frame.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    #[serde(default = "default_version")]
    pub v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Dev mode only: the uid, instead of a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Resume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconnect_timeout_ms: Option<u64>,
}

fn default_version() -> u32 {
    crate::PROTOCOL_VERSION
}

/// `pub`: store a message in a user's inbox or a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pub {
    pub seq: u64,
    pub to: Target,
    pub body: Body,
    /// Idempotency key, scoped to the sending uid.
    pub id: Option<String>,
    /// Ask for `$herald` receipts when recipient devices acknowledge.
    pub receipt: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sub {
    pub seq: u64,
    pub chan: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsub {
    pub seq: u64,
    pub chan: String,
}

/// Cumulative acknowledgement of everything up to offset `o` of stream `s`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub s: String,
    pub o: u64,
}

/// A decoded, validated client frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    Hello(Hello),
    Pub(Pub),
    Sub(Sub),
    Unsub(Unsub),
    Ack(Ack),
    Ping,
    Pong,
    Bye,
}

impl ClientFrame {
    /// The request sequence number, for frames that carry one.
    pub fn seq(&self) -> Option<u64> {
        match self {
            ClientFrame::Pub(p) => Some(p.seq),
            ClientFrame::Sub(s) => Some(s.seq),
            ClientFrame::Unsub(u) => Some(u.seq),
            _ => None,
        }
    }

    /// Encodes the frame as one compact JSON object (used by clients and tests).
    pub fn encode(&self) -> String {
        match self {
            ClientFrame::Hello(h) => tagged("hello", h),
            ClientFrame::Pub(p) => {
                let wire = PubWire {
                    seq: p.seq,
                    to: p.to.to_string(),
                    body: &p.body,
                    id: p.id.as_deref(),
                    receipt: p.receipt,
                };
                tagged("pub", &wire)
            }
            ClientFrame::Sub(s) => tagged("sub", s),
            ClientFrame::Unsub(u) => tagged("unsub", u),
            ClientFrame::Ack(a) => tagged("ack", a),
            ClientFrame::Ping => r#"{"t":"ping"}"#.to_string(),
            ClientFrame::Pong => r#"{"t":"pong"}"#.to_string(),
            ClientFrame::Bye => r#"{"t":"bye"}"#.to_string(),
        }
    }
}

#[derive(Serialize)]
struct PubWire<'a> {
    seq: u64,
    to: String,
    body: &'a Body,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    receipt: bool,
}

#[derive(Serialize)]
struct Tagged<'a, T: Serialize> {
    t: &'a str,
    #[serde(flatten)]
    inner: &'a T,
}

/// Serializes `inner` as a JSON object with `"t": t` first.
pub(crate) fn tagged<T: Serialize>(t: &str, inner: &T) -> String {
    // Serializing plain structs of strings, numbers and raw JSON cannot fail.
    serde_json::to_string(&Tagged { t, inner }).unwrap_or_else(|e| {
        format!(r#"{{"t":"err","code":"internal","msg":"encode failed: {e}"}}"#)
    })
}

/// Why a resume was not granted (`welcome.resume_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResumeError {
    /// The session existed but its reconnect window passed (or it ended with `bye`).
    Expired,
    /// No such session.
    Unknown,
    /// The session exists but the key does not match; it was left untouched.
    BadKey,
    /// The token is bound to another device (`device` claim) than the session's.
    WrongDevice,
}

impl ResumeError {
    pub fn as_str(self) -> &'static str {
        match self {
            ResumeError::Expired => "expired",
            ResumeError::Unknown => "unknown",
            ResumeError::BadKey => "bad_key",
            ResumeError::WrongDevice => "wrong_device",
        }
    }
}

/// Why a connection was evicted (`evicted.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvictReason {
    Replaced,
    Kicked,
    DeviceLimit,
    ResumedElsewhere,
}

impl EvictReason {
    pub const ALL: [EvictReason; 4] = [
        EvictReason::Replaced,
        EvictReason::Kicked,
        EvictReason::DeviceLimit,
        EvictReason::ResumedElsewhere,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EvictReason::Replaced => "replaced",
            EvictReason::Kicked => "kicked",
            EvictReason::DeviceLimit => "device_limit",
            EvictReason::ResumedElsewhere => "resumed_elsewhere",
        }
    }
}

/// Who caused an eviction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvictedBy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evicted {
    pub reason: EvictReason,
    pub by: EvictedBy,
}

/// A subscription as reported in `welcome.subs`: `o` is the acknowledged position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubPosition {
    pub o: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WelcomeLimits {
    pub max_frame_bytes: u64,
    pub max_body_bytes: u64,
    pub max_inflight: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub session: String,
    pub key: String,
    pub conn: String,
    pub uid: String,
    pub device: String,
    pub resumed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_error: Option<ResumeError>,
    pub acked_seq: u64,
    pub heartbeat_ms: u64,
    pub reconnect_timeout_ms: u64,
    pub subs: BTreeMap<String, SubPosition>,
    pub limits: WelcomeLimits,
}

/// Positive answer to a request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OkFrame {
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub o: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dup: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrFrame {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub code: ErrorCode,
    pub msg: String,
    /// The channel an error is about, when it is not an answer to a request
    /// (`sub_revoked`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chan: Option<String>,
}

/// A delivered message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Msg {
    pub s: String,
    pub o: u64,
    pub id: String,
    pub from: String,
    pub ts: u64,
    pub body: Body,
}

/// Offsets `from..=to` of stream `s` cannot be delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    pub s: String,
    pub from: u64,
    pub to: u64,
    pub reason: GapReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// Trimmed by the stream's retention policy.
    Retention,
}

/// A server frame. Deliveries on the hot path are pre-encoded with [`encode_msg`] instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    Welcome(Box<Welcome>),
    Ok(OkFrame),
    Err(ErrFrame),
    Msg(Msg),
    Gap(Gap),
    Evicted(Evicted),
    Ping,
    Pong,
}

impl ServerFrame {
    pub fn err(seq: Option<u64>, code: ErrorCode, msg: impl Into<String>) -> Self {
        ServerFrame::Err(ErrFrame {
            seq,
            code,
            msg: msg.into(),
            chan: None,
        })
    }

    /// Encodes the frame as one compact JSON object.
    pub fn encode(&self) -> String {
        match self {
            ServerFrame::Welcome(w) => tagged("welcome", w.as_ref()),
            ServerFrame::Ok(o) => tagged("ok", o),
            ServerFrame::Err(e) => tagged("err", e),
            ServerFrame::Msg(m) => tagged("msg", m),
            ServerFrame::Gap(g) => tagged("gap", g),
            ServerFrame::Evicted(e) => tagged("evicted", e),
            ServerFrame::Ping => r#"{"t":"ping"}"#.to_string(),
            ServerFrame::Pong => r#"{"t":"pong"}"#.to_string(),
        }
    }
}

/// Encodes a `msg` frame without building a [`Msg`] (the hot path of delivery).
pub fn encode_msg(s: &str, o: u64, id: &str, from: &str, ts: u64, body: &RawValue) -> String {
    #[derive(Serialize)]
    struct MsgRef<'a> {
        t: &'static str,
        s: &'a str,
        o: u64,
        id: &'a str,
        from: &'a str,
        ts: u64,
        body: &'a RawValue,
    }
    serde_json::to_string(&MsgRef {
        t: "msg",
        s,
        o,
        id,
        from,
        ts,
        body,
    })
    .unwrap_or_else(|e| format!(r#"{{"t":"err","code":"internal","msg":"encode failed: {e}"}}"#))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_frames_encode_with_type_first() {
        let body = Body::from_json(r#"{"x":1}"#.into()).unwrap();
        let m = ServerFrame::Msg(Msg {
            s: "chan:room1".into(),
            o: 3,
            id: "m_1".into(),
            from: "alice".into(),
            ts: 5,
            body,
        });
        assert_eq!(
            m.encode(),
            r#"{"t":"msg","s":"chan:room1","o":3,"id":"m_1","from":"alice","ts":5,"body":{"x":1}}"#
        );
        let ok = ServerFrame::Ok(OkFrame {
            seq: 1,
            ..Default::default()
        });
        assert_eq!(ok.encode(), r#"{"t":"ok","seq":1}"#);
        let e = ServerFrame::err(Some(2), ErrorCode::BadTarget, "nope");
        assert_eq!(
            e.encode(),
            r#"{"t":"err","seq":2,"code":"bad_target","msg":"nope"}"#
        );
    }

    #[test]
    fn encode_msg_matches_frame_encoding() {
        let body = Body::from_json(r#"[1,"a"]"#.into()).unwrap();
        let a = encode_msg("inbox", 9, "m_x", "bob", 77, body.raw());
        let b = ServerFrame::Msg(Msg {
            s: "inbox".into(),
            o: 9,
            id: "m_x".into(),
            from: "bob".into(),
            ts: 77,
            body,
        })
        .encode();
        assert_eq!(a, b);
    }
}
