//! Message traces: what became of one message for each recipient, and — whenever a recipient
//! did not get it — exactly why.
//!
//! A trace is derived from what is recorded anyway, never from a row per subscriber per
//! message: the message itself (or, once retention removed an inbox message, its header in
//! the store's `trimmed` table), the inbox delivery rows and device cursors (with where each
//! device started), the channel positions of open sessions (with where each subscription
//! started), the tombstones of closed sessions, and `gap` events. It writes nothing.
//!
//! States: `pending` → `sent` → `acked`; or `skipped` (the recipient started after the
//! message, so it was never meant for it) or `trimmed` (retention removed it before the
//! recipient acknowledged it: it will never get it, and was or will be told with a gap).

use std::collections::{BTreeMap, HashMap};

use herald_protocol::Body;
use herald_store::{DeliveryRecord, DeviceCursor, Event, EventQuery, StoreError};
use serde::Serialize;

use crate::clock::format_utc;
use crate::config::NewDeviceStart;
use crate::engine::{Engine, MessageView};

/// Newest `gap` events of a uid a trace of a trimmed message looks through.
const GAP_EVENTS: usize = 1000;

/// What became of a message for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecipientState {
    /// Not written to the recipient's connection yet.
    Pending,
    /// Written to a connection, not acknowledged.
    Sent,
    /// Acknowledged by the recipient.
    Acked,
    /// Not applicable: the recipient started after the message (a device created with
    /// `inbox.new_device_start = latest`, a live subscription made later).
    Skipped,
    /// Retention removed it before the recipient acknowledged it.
    Trimmed,
}

impl RecipientState {
    pub fn as_str(self) -> &'static str {
        match self {
            RecipientState::Pending => "pending",
            RecipientState::Sent => "sent",
            RecipientState::Acked => "acked",
            RecipientState::Skipped => "skipped",
            RecipientState::Trimmed => "trimmed",
        }
    }
}

/// A message and what became of it, per recipient: per known device of the recipient
/// (inbox messages) or per subscribed open session (channel messages).
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    pub message: MessageView,
    /// Counts by state over all recipients: always `pending`, `sent` and `acked`; `skipped`
    /// and `trimmed` when not zero.
    pub summary: BTreeMap<&'static str, u64>,
    /// Which slice of the recipients `recipients` holds.
    pub page: TracePage,
    /// Sorted by uid, device, session.
    pub recipients: Vec<RecipientView>,
}

/// A slice of the recipient list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TracePage {
    /// Recipients skipped before this slice.
    pub offset: usize,
    /// Recipients in all.
    pub total: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecipientView {
    pub uid: String,
    pub device: String,
    /// Inbox: the session that last sent it (none if never sent). Channels: the subscribed
    /// session.
    pub session: Option<String>,
    pub state: RecipientState,
    /// When it was first written to a connection (inbox messages only: channels record no
    /// per-session times).
    pub sent_ms: Option<u64>,
    /// When it was last written to a connection.
    pub last_sent_ms: Option<u64>,
    /// How many times it was written to a connection (inbox messages).
    pub attempts: u32,
    /// Writes beyond the first: sent again after a reconnect, resume or new session.
    pub redeliveries: u32,
    /// When it was acknowledged (inbox: no later than this; channels: unknown).
    pub acked_ms: Option<u64>,
    /// Why it is not acknowledged, as a stable word: `connected` (not sent yet), `awaiting_ack`,
    /// `offline`, `evicted`, `trimmed`, `gap`, `started_after`. `None` once acked.
    pub cause: Option<&'static str>,
    /// The same in words, with times. `None` once acked.
    pub reason: Option<String>,
}

/// Where a recipient is now, as far as the directory knows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Whereabouts {
    /// A connection is attached to `session`.
    Connected { session: String },
    /// `session` is waiting for a resume since `since_ms`.
    Offline { session: String, since_ms: u64 },
    /// No open session; the last one ended (`reason`: `expired`, `bye`, or an eviction).
    Closed {
        session: String,
        reason: String,
        at_ms: u64,
    },
    /// No session on record (tombstones are kept for `retention.tombstone_ms`).
    Unknown { last_active_ms: u64 },
}

/// Reasons a session closes that are evictions (see `EvictReason`).
const EVICTIONS: [&str; 4] = ["replaced", "kicked", "device_limit", "resumed_elsewhere"];

impl Whereabouts {
    /// Where the recipient is, in words, with the stable cause word.
    fn status(&self, msg_ts: u64) -> (&'static str, String) {
        let never = |t: u64| {
            if t < msg_ts {
                " (never connected since the message was accepted)"
            } else {
                ""
            }
        };
        match self {
            Whereabouts::Connected { session } => {
                ("connected", format!("device connected (session {session})"))
            }
            Whereabouts::Offline { session, since_ms } => (
                "offline",
                format!(
                    "device offline since {}{}, session {session} awaiting a resume",
                    format_utc(*since_ms),
                    never(*since_ms)
                ),
            ),
            Whereabouts::Closed {
                session,
                reason,
                at_ms,
            } if EVICTIONS.contains(&reason.as_str()) => (
                "evicted",
                format!(
                    "session {session} evicted ({reason}) at {}{}; the device has not \
                     connected since",
                    format_utc(*at_ms),
                    never(*at_ms)
                ),
            ),
            Whereabouts::Closed {
                session,
                reason,
                at_ms,
            } => {
                let how = if reason == "bye" {
                    "ended (bye)"
                } else {
                    "expired"
                };
                (
                    "offline",
                    format!(
                        "device offline: session {session} {how} at {}{}",
                        format_utc(*at_ms),
                        never(*at_ms)
                    ),
                )
            }
            Whereabouts::Unknown { last_active_ms } => (
                "offline",
                format!(
                    "device offline: no session on record, last active {}{}",
                    format_utc(*last_active_ms),
                    never(*last_active_ms)
                ),
            ),
        }
    }

    /// Why an unacknowledged (`Pending` or `Sent`) message waits, and what happens next.
    fn words(&self, state: RecipientState, msg_ts: u64) -> (&'static str, String) {
        let sent = state == RecipientState::Sent;
        match self {
            Whereabouts::Connected { session } if sent => (
                "awaiting_ack",
                format!(
                    "sent; waiting for the device to acknowledge (session {session} is connected)"
                ),
            ),
            Whereabouts::Connected { session } => (
                "connected",
                format!(
                    "device connected (session {session}) but not sent yet: waiting for acks \
                     under session.max_inflight, or catching up"
                ),
            ),
            _ => {
                let (cause, status) = self.status(msg_ts);
                let next = if sent {
                    "it is sent again"
                } else {
                    "it is sent"
                };
                (
                    cause,
                    format!("{status}; {next} when the device comes back"),
                )
            }
        }
    }
}

/// The verdict for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdict {
    state: RecipientState,
    acked_ms: Option<u64>,
    cause: Option<&'static str>,
    reason: Option<String>,
}

impl Verdict {
    fn acked(at: Option<u64>) -> Verdict {
        Verdict {
            state: RecipientState::Acked,
            acked_ms: at,
            cause: None,
            reason: None,
        }
    }

    fn not(state: RecipientState, cause: &'static str, reason: String) -> Verdict {
        Verdict {
            state,
            acked_ms: None,
            cause: Some(cause),
            reason: Some(reason),
        }
    }

    fn waiting(state: RecipientState, now: &Whereabouts, msg_ts: u64) -> Verdict {
        let (cause, reason) = now.words(state, msg_ts);
        Verdict::not(state, cause, reason)
    }
}

/// What became of inbox message `m` for device `d`. `row` is its delivery record, `gap` a
/// gap event of this device covering the message, `latest` whether devices start at the
/// newest message (`inbox.new_device_start = latest`).
fn inbox_verdict(
    m: &MessageView,
    d: &DeviceCursor,
    row: Option<&DeliveryRecord>,
    now: &Whereabouts,
    gap: Option<&Event>,
    latest: bool,
) -> Verdict {
    if let Some(start) = d.start_offset.filter(|&s| s >= m.o && row.is_none()) {
        let seen = d
            .created_ms
            .map_or_else(|| "at an unknown time".to_string(), format_utc);
        return Verdict::not(
            RecipientState::Skipped,
            "started_after",
            format!(
                "not applicable: the device started after this message (first seen {seen}, its \
                 inbox starting after offset {start}{})",
                if latest {
                    "; inbox.new_device_start = latest"
                } else {
                    ""
                }
            ),
        );
    }
    let cursor_passed = d.offset >= m.o;
    let acked_at = row
        .and_then(|r| r.acked_ms)
        .or(cursor_passed.then_some(d.updated_ms));
    let sent = row.map_or_else(
        || "never sent".to_string(),
        |r| {
            format!(
                "sent {} time{}, last at {}",
                r.attempts,
                if r.attempts == 1 { "" } else { "s" },
                format_utc(r.last_sent_ms)
            )
        },
    );
    let Some(trimmed_ms) = m.trimmed_ms else {
        return if cursor_passed {
            Verdict::acked(acked_at)
        } else if row.is_some() {
            Verdict::waiting(RecipientState::Sent, now, m.ts)
        } else {
            Verdict::waiting(RecipientState::Pending, now, m.ts)
        };
    };
    if let Some(g) = gap {
        let range = |k: &str| g.event.data.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        return Verdict::not(
            RecipientState::Trimmed,
            "gap",
            format!(
                "inside a gap: retention removed it at {} before the device acknowledged it \
                 ({sent}); the device was told offsets {}-{} are gone at {}{}",
                format_utc(trimmed_ms),
                range("from"),
                range("to"),
                format_utc(g.event.ts),
                g.event
                    .session
                    .as_deref()
                    .map(|s| format!(" (session {s})"))
                    .unwrap_or_default()
            ),
        );
    }
    if cursor_passed {
        return Verdict::acked(acked_at);
    }
    let (_, whereabouts) = now.status(m.ts);
    Verdict::not(
        RecipientState::Trimmed,
        "trimmed",
        format!(
            "trimmed by retention at {} before ack ({sent}); {whereabouts}; the device is told \
             with a gap when it reads its inbox again",
            format_utc(trimmed_ms)
        ),
    )
}

/// What became of channel message `m` for one subscribed session at `acked` (its channel
/// position), `sent` (highest offset written to it) and `start` (where the subscription
/// started).
fn channel_verdict(
    m: &MessageView,
    acked: u64,
    sent: u64,
    start: Option<u64>,
    now: &Whereabouts,
) -> Verdict {
    if let Some(start) = start.filter(|&s| s >= m.o) {
        return Verdict::not(
            RecipientState::Skipped,
            "started_after",
            format!("not applicable: subscribed after this message (from offset {start})"),
        );
    }
    if acked >= m.o {
        return Verdict::acked(None);
    }
    if let Some(trimmed_ms) = m.trimmed_ms {
        return Verdict::not(
            RecipientState::Trimmed,
            "trimmed",
            format!(
                "trimmed by retention at {} before ack",
                format_utc(trimmed_ms)
            ),
        );
    }
    let state = if sent >= m.o {
        RecipientState::Sent
    } else {
        RecipientState::Pending
    };
    Verdict::waiting(state, now, m.ts)
}

/// The gap event of `device` whose range holds inbox offset `o`, if any.
fn covering_gap<'a>(gaps: &'a [Event], device: &str, o: u64) -> Option<&'a Event> {
    gaps.iter().find(|g| {
        let data = &g.event.data;
        let n = |k: &str| data.get(k).and_then(|v| v.as_u64());
        g.event.device.as_deref() == Some(device)
            && data.get("s").and_then(|v| v.as_str()) == Some("inbox")
            && n("from").is_some_and(|f| f <= o)
            && n("to").is_some_and(|t| t >= o)
    })
}

impl Engine {
    /// A message by id and what became of it for every recipient.
    pub async fn trace(&self, msg_id: &str) -> Result<Option<Trace>, StoreError> {
        self.trace_page(msg_id, 0, usize::MAX).await
    }

    /// A message by id and what became of it: summary counts over all recipients, and the
    /// recipients `offset..offset + limit` (sorted by uid, device, session). `None` if the
    /// message is unknown: never stored, or trimmed long enough ago (a trimmed inbox message
    /// is still traced for `retention.tombstone_ms`).
    pub async fn trace_page(
        &self,
        msg_id: &str,
        offset: usize,
        limit: usize,
    ) -> Result<Option<Trace>, StoreError> {
        let store = &self.inner.store;
        let message = match store.message(msg_id).await? {
            Some(m) => MessageView::of(&m),
            None => match store.trimmed_message(msg_id).await? {
                Some(t) => MessageView {
                    id: t.id,
                    s: t.stream,
                    o: t.offset,
                    from: t.from,
                    ts: t.ts,
                    body: Body::from_json("null".to_string())
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    receipt: false,
                    trimmed_ms: Some(t.trimmed_ms),
                },
                None => return Ok(None),
            },
        };
        let mut recipients = if let Some(uid) = message.s.strip_prefix("inbox:") {
            self.inbox_recipients(uid, &message).await?
        } else if let Some(chan) = message.s.strip_prefix("chan:") {
            self.channel_recipients(chan, &message)
        } else {
            Vec::new()
        };
        recipients
            .sort_by(|a, b| (&a.uid, &a.device, &a.session).cmp(&(&b.uid, &b.device, &b.session)));
        let mut summary = BTreeMap::from([("pending", 0), ("sent", 0), ("acked", 0)]);
        for r in &recipients {
            *summary.entry(r.state.as_str()).or_default() += 1;
        }
        let total = recipients.len();
        let recipients = recipients.into_iter().skip(offset).take(limit).collect();
        Ok(Some(Trace {
            message,
            summary,
            page: TracePage { offset, total },
            recipients,
        }))
    }

    /// One entry per known device of `uid`.
    async fn inbox_recipients(
        &self,
        uid: &str,
        m: &MessageView,
    ) -> Result<Vec<RecipientView>, StoreError> {
        let store = &self.inner.store;
        let rows = store.deliveries(&m.id).await?;
        let devices = store.devices(uid).await?;
        let gaps = if m.trimmed_ms.is_some() {
            store
                .events(&EventQuery {
                    kind: Some("gap".into()),
                    uid: Some(uid.into()),
                    since_ms: Some(m.ts),
                    after_id: None,
                    limit: GAP_EVENTS,
                })
                .await?
        } else {
            Vec::new()
        };
        let open: HashMap<String, Whereabouts> = self
            .inner
            .directory
            .of_uid(uid)
            .iter()
            .map(|s| {
                let g = s.lock();
                let w = if g.conn.is_some() {
                    Whereabouts::Connected {
                        session: s.id.clone(),
                    }
                } else {
                    Whereabouts::Offline {
                        session: s.id.clone(),
                        since_ms: g.last_seen_ms,
                    }
                };
                (s.device.clone(), w)
            })
            .collect();
        let closed = self.inner.directory.last_closed(uid);
        let latest = self.inner.cfg.new_device_start == NewDeviceStart::Latest;
        let mut out = Vec::with_capacity(devices.len());
        for d in &devices {
            let row = rows.iter().find(|r| r.device == d.device);
            let now = match (open.get(&d.device), closed.get(&d.device)) {
                (Some(w), _) => w.clone(),
                (None, Some((id, t))) => Whereabouts::Closed {
                    session: id.clone(),
                    reason: t.reason.clone(),
                    at_ms: t.at_ms,
                },
                (None, None) => Whereabouts::Unknown {
                    last_active_ms: d.updated_ms.max(row.map_or(0, |r| r.last_sent_ms)),
                },
            };
            let gap = covering_gap(&gaps, &d.device, m.o);
            let v = inbox_verdict(m, d, row, &now, gap, latest);
            let attempts = row.map_or(0, |r| r.attempts);
            out.push(RecipientView {
                uid: uid.to_string(),
                device: d.device.clone(),
                session: row.map(|r| r.session.clone()),
                state: v.state,
                sent_ms: row.map(|r| r.first_sent_ms),
                last_sent_ms: row.map(|r| r.last_sent_ms),
                attempts,
                redeliveries: attempts.saturating_sub(1),
                acked_ms: v.acked_ms,
                cause: v.cause,
                reason: v.reason,
            });
        }
        Ok(out)
    }

    /// One entry per open session subscribed to `chan`.
    fn channel_recipients(&self, chan: &str, m: &MessageView) -> Vec<RecipientView> {
        let mut out = Vec::new();
        for s in self.inner.directory.all() {
            let g = s.lock();
            let Some(&acked) = g.subs.get(chan) else {
                continue;
            };
            let now = if g.conn.is_some() {
                Whereabouts::Connected {
                    session: s.id.clone(),
                }
            } else {
                Whereabouts::Offline {
                    session: s.id.clone(),
                    since_ms: g.last_seen_ms,
                }
            };
            let sent = g.sent_high.get(&m.s).copied().unwrap_or(0);
            let v = channel_verdict(m, acked, sent, g.sub_start.get(chan).copied(), &now);
            out.push(RecipientView {
                uid: s.uid.clone(),
                device: s.device.clone(),
                session: Some(s.id.clone()),
                state: v.state,
                sent_ms: None,
                last_sent_ms: None,
                attempts: 0,
                redeliveries: 0,
                acked_ms: v.acked_ms,
                cause: v.cause,
                reason: v.reason,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use herald_store::{DeliveryState, NewEvent};

    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn msg(o: u64, trimmed_ms: Option<u64>) -> MessageView {
        MessageView {
            id: "m_1".into(),
            s: "inbox:bob".into(),
            o,
            from: "alice".into(),
            ts: T0,
            body: Body::from_json("1".into()).unwrap(),
            receipt: false,
            trimmed_ms,
        }
    }

    fn device(offset: u64, start: Option<u64>) -> DeviceCursor {
        DeviceCursor {
            uid: "bob".into(),
            device: "b1".into(),
            offset,
            updated_ms: T0 + 50,
            start_offset: start,
            created_ms: start.map(|_| T0 - 1_000),
        }
    }

    fn row(attempts: u32, acked_ms: Option<u64>) -> DeliveryRecord {
        DeliveryRecord {
            msg_id: "m_1".into(),
            uid: "bob".into(),
            device: "b1".into(),
            session: "s_1".into(),
            state: DeliveryState::Sent,
            first_sent_ms: T0 + 1,
            last_sent_ms: T0 + 2,
            attempts,
            acked_ms,
        }
    }

    fn gap(from: u64, to: u64) -> Event {
        Event {
            id: 1,
            event: NewEvent {
                ts: T0 + 9_000,
                kind: "gap".into(),
                uid: Some("bob".into()),
                device: Some("b1".into()),
                session: Some("s_2".into()),
                conn: None,
                data: serde_json::json!({"s": "inbox", "from": from, "to": to, "reason": "retention"}),
            },
        }
    }

    fn offline(since_ms: u64) -> Whereabouts {
        Whereabouts::Offline {
            session: "s_1".into(),
            since_ms,
        }
    }

    #[test]
    fn retained_inbox_message_states() {
        let m = msg(3, None);
        let connected = Whereabouts::Connected {
            session: "s_1".into(),
        };
        let v = inbox_verdict(
            &m,
            &device(3, Some(0)),
            Some(&row(1, Some(T0 + 9))),
            &connected,
            None,
            false,
        );
        assert_eq!(v, Verdict::acked(Some(T0 + 9)));
        // Acked by the cursor without a row: acknowledged no later than the cursor moved.
        let v = inbox_verdict(&m, &device(5, Some(0)), None, &connected, None, false);
        assert_eq!(v, Verdict::acked(Some(T0 + 50)));

        let v = inbox_verdict(
            &m,
            &device(2, Some(0)),
            Some(&row(1, None)),
            &connected,
            None,
            false,
        );
        assert_eq!(
            (v.state, v.cause),
            (RecipientState::Sent, Some("awaiting_ack"))
        );
        let v = inbox_verdict(&m, &device(2, Some(0)), None, &connected, None, false);
        assert_eq!(
            (v.state, v.cause),
            (RecipientState::Pending, Some("connected"))
        );

        let v = inbox_verdict(
            &m,
            &device(2, Some(0)),
            Some(&row(2, None)),
            &offline(T0 + 100),
            None,
            false,
        );
        assert_eq!((v.state, v.cause), (RecipientState::Sent, Some("offline")));
        assert_eq!(
            v.reason.as_deref(),
            Some("device offline since 2023-11-14 22:13:20.100 UTC, session s_1 awaiting a resume; it is sent again when the device comes back")
        );
        let v = inbox_verdict(
            &m,
            &device(2, Some(0)),
            None,
            &offline(T0 - 60_000),
            None,
            false,
        );
        assert_eq!(
            (v.state, v.cause),
            (RecipientState::Pending, Some("offline"))
        );
        assert_eq!(
            v.reason.as_deref(),
            Some("device offline since 2023-11-14 22:12:20.000 UTC (never connected since the message was accepted), session s_1 awaiting a resume; it is sent when the device comes back")
        );
    }

    #[test]
    fn a_device_that_started_after_the_message_is_not_applicable() {
        let m = msg(3, None);
        // new_device_start = latest: the device started at offset 3, after this message.
        let v = inbox_verdict(&m, &device(3, Some(3)), None, &offline(T0), None, true);
        assert_eq!(
            (v.state, v.cause),
            (RecipientState::Skipped, Some("started_after"))
        );
        assert_eq!(v.acked_ms, None, "never shown as acked");
        assert_eq!(
            v.reason.as_deref(),
            Some("not applicable: the device started after this message (first seen 2023-11-14 22:13:19.000 UTC, its inbox starting after offset 3; inbox.new_device_start = latest)")
        );
        // Started before it: a normal recipient. Unknown start (schema 1): as before.
        let v = inbox_verdict(&m, &device(3, Some(2)), None, &offline(T0), None, true);
        assert_eq!(v.state, RecipientState::Acked);
        let v = inbox_verdict(&m, &device(3, None), None, &offline(T0), None, true);
        assert_eq!(v.state, RecipientState::Acked);
    }

    #[test]
    fn closed_sessions_say_evicted_or_offline() {
        let m = msg(3, None);
        let evicted = Whereabouts::Closed {
            session: "s_9".into(),
            reason: "device_limit".into(),
            at_ms: T0 + 5_000,
        };
        let v = inbox_verdict(
            &m,
            &device(2, Some(0)),
            Some(&row(1, None)),
            &evicted,
            None,
            false,
        );
        assert_eq!((v.state, v.cause), (RecipientState::Sent, Some("evicted")));
        assert_eq!(
            v.reason.as_deref(),
            Some("session s_9 evicted (device_limit) at 2023-11-14 22:13:25.000 UTC; the device has not connected since; it is sent again when the device comes back")
        );
        let expired = Whereabouts::Closed {
            session: "s_9".into(),
            reason: "expired".into(),
            at_ms: T0 - 1,
        };
        let v = inbox_verdict(&m, &device(2, Some(0)), None, &expired, None, false);
        assert_eq!(
            (v.state, v.cause),
            (RecipientState::Pending, Some("offline"))
        );
        assert!(v.reason.as_deref().is_some_and(|r| r.starts_with(
            "device offline: session s_9 expired at 2023-11-14 22:13:19.999 UTC (never connected since the message was accepted)"
        )), "{v:?}");
        let unknown = Whereabouts::Unknown {
            last_active_ms: T0 + 1,
        };
        let v = inbox_verdict(&m, &device(2, Some(0)), None, &unknown, None, false);
        assert!(v
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("device offline: no session on record, last active")));
    }

    #[test]
    fn trimmed_inbox_message_states() {
        let tm = T0 + 60_000;
        let m = msg(3, Some(tm));
        // Acked before it was trimmed.
        let v = inbox_verdict(
            &m,
            &device(3, Some(0)),
            Some(&row(1, Some(T0 + 10))),
            &offline(T0),
            None,
            false,
        );
        assert_eq!(v, Verdict::acked(Some(T0 + 10)));
        // Never acked and the device has not read past it: trimmed before ack.
        let v = inbox_verdict(
            &m,
            &device(2, Some(0)),
            Some(&row(2, None)),
            &offline(T0 + 5),
            None,
            false,
        );
        assert_eq!(
            (v.state, v.cause),
            (RecipientState::Trimmed, Some("trimmed"))
        );
        assert_eq!(
            v.reason.as_deref(),
            Some("trimmed by retention at 2023-11-14 22:14:20.000 UTC before ack (sent 2 times, last at 2023-11-14 22:13:20.002 UTC); device offline since 2023-11-14 22:13:20.005 UTC, session s_1 awaiting a resume; the device is told with a gap when it reads its inbox again")
        );
        // The device came back and was told it is gone: inside a gap, even though its cursor
        // has moved past it since.
        let v = inbox_verdict(
            &m,
            &device(7, Some(0)),
            None,
            &offline(T0),
            Some(&gap(2, 4)),
            false,
        );
        assert_eq!((v.state, v.cause), (RecipientState::Trimmed, Some("gap")));
        assert_eq!(
            v.reason.as_deref(),
            Some("inside a gap: retention removed it at 2023-11-14 22:14:20.000 UTC before the device acknowledged it (never sent); the device was told offsets 2-4 are gone at 2023-11-14 22:13:29.000 UTC (session s_2)")
        );
        assert!(covering_gap(&[gap(2, 4)], "b1", 3).is_some());
        assert!(covering_gap(&[gap(2, 4)], "b1", 5).is_none());
        assert!(covering_gap(&[gap(2, 4)], "b2", 3).is_none());
        // A device that started after it is still not applicable.
        let v = inbox_verdict(&m, &device(9, Some(5)), None, &offline(T0), None, false);
        assert_eq!(v.state, RecipientState::Skipped);
    }

    #[test]
    fn channel_states() {
        let mut m = msg(5, None);
        m.s = "chan:room".into();
        let on = Whereabouts::Connected {
            session: "s_1".into(),
        };
        assert_eq!(
            channel_verdict(&m, 5, 5, Some(0), &on),
            Verdict::acked(None)
        );
        assert_eq!(
            channel_verdict(&m, 4, 5, Some(0), &on).state,
            RecipientState::Sent
        );
        assert_eq!(
            channel_verdict(&m, 4, 4, Some(0), &on).state,
            RecipientState::Pending
        );
        // Subscribed live after the message: not applicable, not "acked".
        let v = channel_verdict(&m, 7, 7, Some(5), &on);
        assert_eq!(
            (v.state, v.cause),
            (RecipientState::Skipped, Some("started_after"))
        );
        // Records without a start (older sessions) behave as before.
        assert_eq!(
            channel_verdict(&m, 7, 7, None, &on).state,
            RecipientState::Acked
        );
        let v = channel_verdict(&m, 4, 4, Some(0), &offline(T0 + 1));
        assert_eq!(
            (v.state, v.cause),
            (RecipientState::Pending, Some("offline"))
        );
    }
}
