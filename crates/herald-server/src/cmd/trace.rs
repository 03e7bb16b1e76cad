//! `herald trace <message-id>`: GET /v1/messages/{id}, printed as a delivery timeline — the
//! message, then one block per recipient: accepted (durable) → sent (when, to which session,
//! how many attempts) → acknowledged (when); or, where it stopped, exactly why.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::api::Api;
use super::render::{preview, span, time};
use super::{emit, CliError};
use crate::cli::TraceArgs;

/// Width of the time column of a timeline step.
const TIME_COLUMN: usize = 27;

/// The API's trace, as far as the timeline needs it (unknown fields are ignored, missing
/// optional ones default, so an older or newer server still renders).
#[derive(Debug, Deserialize)]
pub(crate) struct TraceDoc {
    message: MessageDoc,
    #[serde(default)]
    summary: BTreeMap<String, u64>,
    #[serde(default)]
    page: Option<PageDoc>,
    #[serde(default)]
    recipients: Vec<RecipientDoc>,
}

#[derive(Debug, Deserialize)]
struct MessageDoc {
    id: String,
    s: String,
    o: u64,
    from: String,
    ts: u64,
    #[serde(default)]
    body: Value,
    #[serde(default)]
    receipt: bool,
    #[serde(default)]
    trimmed_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct PageDoc {
    offset: usize,
    total: usize,
}

#[derive(Debug, Deserialize)]
struct RecipientDoc {
    uid: String,
    device: String,
    #[serde(default)]
    session: Option<String>,
    state: String,
    #[serde(default)]
    sent_ms: Option<u64>,
    #[serde(default)]
    last_sent_ms: Option<u64>,
    #[serde(default)]
    attempts: u32,
    #[serde(default)]
    acked_ms: Option<u64>,
    #[serde(default)]
    cause: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

pub(crate) async fn run(a: TraceArgs) -> Result<(), CliError> {
    let api = Api::new(&a.server)?;
    let mut q: Vec<(&str, String)> = Vec::new();
    if let Some(limit) = a.limit {
        q.push(("limit", limit.to_string()));
    }
    if let Some(offset) = a.offset {
        q.push(("offset", offset.to_string()));
    }
    let raw = api.get(&["v1", "messages", &a.id], &q).await?;
    if a.json {
        return emit(&raw);
    }
    let doc: TraceDoc = serde_json::from_str(&raw)
        .map_err(|e| api.bad_answer(&format!("not a message trace ({e})")))?;
    emit(&timeline(&doc))
}

/// One step of a recipient's timeline: a time (or a word where there is none) and what
/// happened.
fn step(out: &mut Vec<String>, when: &str, what: &str) {
    out.push(format!("  {when:<TIME_COLUMN$}  {what}"));
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The readable timeline of a trace.
pub(crate) fn timeline(t: &TraceDoc) -> String {
    let m = &t.message;
    let channel = m.s.starts_with("chan:");
    let mut out = vec![
        format!("message   {}", m.id),
        format!("stream    {} offset {}", m.s, m.o),
        format!("from      {}", m.from),
        format!("accepted  {} (stored durably)", time(Some(m.ts))),
    ];
    match m.trimmed_ms {
        Some(at) => out.push(format!(
            "body      (removed by retention at {}, {} after it was accepted)",
            time(Some(at)),
            span(at.saturating_sub(m.ts))
        )),
        None => out.push(format!("body      {}", preview(&m.body))),
    }
    if m.receipt {
        out.push("receipt   requested by the sender".to_string());
    }
    let total = t.page.as_ref().map_or(t.recipients.len(), |p| p.total);
    let noun = if channel {
        plural(total as u64, "subscribed session", "subscribed sessions")
    } else {
        plural(total as u64, "device", "devices")
    };
    let count = |k: &str| t.summary.get(k).copied().unwrap_or(0);
    let mut counts = vec![
        format!("{} acked", count("acked")),
        format!("{} sent", count("sent")),
        format!("{} pending", count("pending")),
    ];
    for (k, n) in &t.summary {
        if !["acked", "sent", "pending"].contains(&k.as_str()) && *n > 0 {
            counts.push(format!("{n} {k}"));
        }
    }
    out.push(format!("summary   {noun}: {}", counts.join(", ")));
    if let Some(p) = &t.page {
        if p.total > t.recipients.len() {
            if t.recipients.is_empty() {
                out.push(format!(
                    "listing   none (offset {} of {}); page with --offset and --limit",
                    p.offset, p.total
                ));
            } else {
                out.push(format!(
                    "listing   {}-{} of {}; page with --offset and --limit",
                    p.offset + 1,
                    p.offset + t.recipients.len(),
                    p.total
                ));
            }
        }
    }
    if total == 0 {
        out.push(String::new());
        out.push(if channel {
            "no open session is subscribed to this channel".to_string()
        } else {
            let uid = m.s.strip_prefix("inbox:").unwrap_or(&m.s);
            format!("no device of {uid} is known yet: the message waits in the inbox for its first device")
        });
    }
    for r in &t.recipients {
        out.push(String::new());
        recipient(&mut out, m, r, channel);
    }
    out.join("\n")
}

fn recipient(out: &mut Vec<String>, m: &MessageDoc, r: &RecipientDoc, channel: bool) {
    let why = r.reason.as_deref().unwrap_or("no reason recorded");
    let heading = match (r.state.as_str(), r.cause.as_deref()) {
        ("acked", _) => "acked".to_string(),
        ("sent", _) => "sent, not acknowledged".to_string(),
        ("pending", _) => "pending, not sent".to_string(),
        ("skipped", _) => "not applicable".to_string(),
        ("trimmed", Some("gap")) => "NOT DELIVERED: inside a gap".to_string(),
        ("trimmed", _) => "NOT DELIVERED: trimmed by retention".to_string(),
        (other, _) => other.to_string(),
    };
    let who = match (&r.session, channel) {
        (Some(s), true) => format!("{}/{} (session {s})", r.uid, r.device),
        _ => format!("{}/{}", r.uid, r.device),
    };
    out.push(format!("{who}: {heading}"));
    step(out, &time(Some(m.ts)), "accepted (durable)");
    if r.state == "skipped" {
        step(out, "not applicable", why);
        return;
    }
    // Sent.
    match (r.sent_ms, channel) {
        (Some(first), _) => {
            let to = r
                .session
                .as_deref()
                .map_or_else(String::new, |s| format!(" to session {s}"));
            let after = span(first.saturating_sub(m.ts));
            if r.attempts > 1 {
                // The row names the session of the last attempt only.
                step(
                    out,
                    &time(Some(first)),
                    &format!("sent (first attempt), {after} after it was accepted"),
                );
                step(
                    out,
                    &time(r.last_sent_ms),
                    &format!(
                        "redelivered {} ({} attempts in all), the last{to}",
                        plural(u64::from(r.attempts - 1), "time", "times"),
                        r.attempts
                    ),
                );
            } else {
                step(
                    out,
                    &time(Some(first)),
                    &format!("sent{to} (attempt 1), {after} after it was accepted"),
                );
            }
        }
        (None, true) if matches!(r.state.as_str(), "sent" | "acked") => {
            step(
                out,
                "-",
                "sent to the session (channel deliveries record no time)",
            );
        }
        (None, _) => {}
    }
    match r.state.as_str() {
        "acked" => match r.acked_ms {
            Some(at) => step(
                out,
                &time(Some(at)),
                &format!(
                    "acknowledged, {} after it was accepted",
                    span(at.saturating_sub(m.ts))
                ),
            ),
            None => step(out, "-", "acknowledged (channel positions record no time)"),
        },
        "sent" => step(out, "not acknowledged", why),
        "pending" => step(out, "not sent", why),
        "trimmed" => step(out, &time(m.trimmed_ms), why),
        _ => step(out, "-", why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T0: u64 = 1_700_000_000_000;

    fn doc(v: Value) -> TraceDoc {
        serde_json::from_value(v).expect("a trace")
    }

    #[test]
    fn inbox_message_to_two_devices_one_acked() {
        let t = doc(json!({
            "message": {"id": "m_1", "s": "inbox:bob", "o": 4, "from": "alice", "ts": T0,
                        "body": {"text": "hi"}, "receipt": false},
            "summary": {"acked": 1, "sent": 1, "pending": 0},
            "page": {"offset": 0, "total": 2},
            "recipients": [
                {"uid": "bob", "device": "b1", "session": "s_1", "state": "acked",
                 "sent_ms": T0 + 5, "last_sent_ms": T0 + 5, "attempts": 1, "redeliveries": 0,
                 "acked_ms": T0 + 82, "cause": null, "reason": null},
                {"uid": "bob", "device": "b2", "session": "s_2", "state": "sent",
                 "sent_ms": T0 + 6, "last_sent_ms": T0 + 2_006, "attempts": 3,
                 "redeliveries": 2, "acked_ms": null, "cause": "offline",
                 "reason": "device offline since X; it is sent again when the device comes back"}
            ]
        }));
        assert_eq!(
            timeline(&t),
            "\
message   m_1
stream    inbox:bob offset 4
from      alice
accepted  2023-11-14 22:13:20.000 UTC (stored durably)
body      {\"text\":\"hi\"}
summary   2 devices: 1 acked, 1 sent, 0 pending

bob/b1: acked
  2023-11-14 22:13:20.000 UTC  accepted (durable)
  2023-11-14 22:13:20.005 UTC  sent to session s_1 (attempt 1), 5 ms after it was accepted
  2023-11-14 22:13:20.082 UTC  acknowledged, 82 ms after it was accepted

bob/b2: sent, not acknowledged
  2023-11-14 22:13:20.000 UTC  accepted (durable)
  2023-11-14 22:13:20.006 UTC  sent (first attempt), 6 ms after it was accepted
  2023-11-14 22:13:22.006 UTC  redelivered 2 times (3 attempts in all), the last to session s_2
  not acknowledged             device offline since X; it is sent again when the device comes back"
        );
    }

    #[test]
    fn pending_skipped_and_trimmed_recipients_say_why() {
        let t = doc(json!({
            "message": {"id": "m_2", "s": "inbox:bob", "o": 1, "from": "alice", "ts": T0,
                        "body": null, "receipt": true, "trimmed_ms": T0 + 60_000},
            "summary": {"acked": 0, "sent": 0, "pending": 1, "skipped": 1, "trimmed": 2},
            "page": {"offset": 0, "total": 4},
            "recipients": [
                {"uid": "bob", "device": "b1", "state": "pending", "attempts": 0,
                 "cause": "offline", "reason": "device offline since Y"},
                {"uid": "bob", "device": "b2", "state": "skipped", "attempts": 0,
                 "cause": "started_after", "reason": "not applicable: the device started after"},
                {"uid": "bob", "device": "b3", "state": "trimmed", "attempts": 0,
                 "cause": "gap", "reason": "inside a gap: …"},
                {"uid": "bob", "device": "b4", "session": "s_4", "state": "trimmed",
                 "sent_ms": T0 + 1, "last_sent_ms": T0 + 1, "attempts": 1,
                 "cause": "trimmed", "reason": "trimmed by retention before ack"}
            ]
        }));
        let text = timeline(&t);
        assert!(text.contains("body      (removed by retention at 2023-11-14 22:14:20.000 UTC, 1m 00s after it was accepted)"), "{text}");
        assert!(text.contains("receipt   requested by the sender"), "{text}");
        assert!(
            text.contains("summary   4 devices: 0 acked, 0 sent, 1 pending, 1 skipped, 2 trimmed"),
            "{text}"
        );
        assert!(text.contains("bob/b1: pending, not sent\n  2023-11-14 22:13:20.000 UTC  accepted (durable)\n  not sent                     device offline since Y"), "{text}");
        assert!(text.contains("bob/b2: not applicable\n  2023-11-14 22:13:20.000 UTC  accepted (durable)\n  not applicable               not applicable: the device started after"), "{text}");
        assert!(text.contains("bob/b3: NOT DELIVERED: inside a gap\n  2023-11-14 22:13:20.000 UTC  accepted (durable)\n  2023-11-14 22:14:20.000 UTC  inside a gap: …"), "{text}");
        assert!(text.contains("bob/b4: NOT DELIVERED: trimmed by retention\n  2023-11-14 22:13:20.000 UTC  accepted (durable)\n  2023-11-14 22:13:20.001 UTC  sent to session s_4 (attempt 1), 1 ms after it was accepted\n  2023-11-14 22:14:20.000 UTC  trimmed by retention before ack"), "{text}");
    }

    #[test]
    fn channel_messages_list_sessions_and_pages() {
        let t = doc(json!({
            "message": {"id": "m_3", "s": "chan:room", "o": 9, "from": "alice", "ts": T0,
                        "body": "hello room"},
            "summary": {"acked": 1, "sent": 1, "pending": 148},
            "page": {"offset": 0, "total": 150},
            "recipients": [
                {"uid": "bob", "device": "b1", "session": "s_1", "state": "acked", "attempts": 0},
                {"uid": "carol", "device": "c1", "session": "s_2", "state": "sent", "attempts": 0,
                 "cause": "awaiting_ack", "reason": "sent; waiting for the device to acknowledge"}
            ]
        }));
        let text = timeline(&t);
        assert!(
            text.contains("summary   150 subscribed sessions: 1 acked, 1 sent, 148 pending"),
            "{text}"
        );
        assert!(
            text.contains("listing   1-2 of 150; page with --offset and --limit"),
            "{text}"
        );
        assert!(text.contains("bob/b1 (session s_1): acked\n  2023-11-14 22:13:20.000 UTC  accepted (durable)\n  -                            sent to the session (channel deliveries record no time)\n  -                            acknowledged (channel positions record no time)"), "{text}");
        assert!(
            text.contains("carol/c1 (session s_2): sent, not acknowledged"),
            "{text}"
        );
    }

    #[test]
    fn no_recipients_yet() {
        let t = doc(json!({
            "message": {"id": "m_4", "s": "inbox:zoe", "o": 1, "from": "$api", "ts": T0, "body": 1},
            "summary": {"acked": 0, "sent": 0, "pending": 0},
            "page": {"offset": 0, "total": 0},
            "recipients": []
        }));
        assert!(timeline(&t).ends_with(
            "summary   0 devices: 0 acked, 0 sent, 0 pending\n\nno device of zoe is known yet: the message waits in the inbox for its first device"
        ));
    }
}
