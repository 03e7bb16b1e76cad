//! Live views for operators (the dashboard and `GET /v1/overview`,
//! `GET /v1/sessions/positions`): the engine's counters and gauges in one object, and open
//! sessions with the position of each of their streams (acknowledged, sent, newest offset).
//!
//! Everything here is read from what the engine keeps anyway: its metrics, the directory of
//! open sessions (with the highest offset each session was sent per stream), the store's inbox
//! cursors and stream bounds. It writes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use herald_store::{chan_key, inbox_key, SessionState, StoreError};
use serde::Serialize;

use crate::engine::{Engine, SessionInfo};
use crate::metrics::{OutcomeLabel, ReasonLabel};
use crate::session::SessionShared;

/// Eviction reasons reported by [`Overview::evictions`].
const EVICTION_REASONS: [&str; 4] = ["replaced", "device_limit", "resumed_elsewhere", "kicked"];
/// Resume outcomes other than `resumed`, reported by [`Overview::resumes_failed`].
const FAILED_RESUMES: [&str; 4] = ["bad_key", "unknown", "expired", "evicted"];

/// The engine's counters (totals since start) and gauges (now), for a live overview. A
/// viewer polls it and derives rates from two readings and their `now_ms`.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// When it was read (ms since the epoch).
    pub now_ms: u64,
    /// Connections attached to a session (`herald_connections`).
    pub connections: i64,
    /// Open sessions with a connection.
    pub sessions_connected: u64,
    /// Open sessions without one, waiting for a resume inside their reconnect window.
    pub sessions_disconnected: u64,
    /// Messages sent to a session and not acknowledged yet, over all open sessions and
    /// their streams (see [`StreamPosition::unacked`]).
    pub acks_pending: u64,
    /// Totals since start (`herald_*_total`).
    pub publishes: u64,
    pub deliveries: u64,
    pub redeliveries: u64,
    pub acks: u64,
    pub gaps: u64,
    pub flow_stalls: u64,
    pub store_failures: u64,
    /// Evictions by reason (every reason, 0 when none).
    pub evictions: BTreeMap<&'static str, u64>,
    /// Resume attempts that did not resume, by outcome (every outcome, 0 when none).
    pub resumes_failed: BTreeMap<&'static str, u64>,
    /// Committed store transactions and the microseconds they took in all (the count and
    /// sum of `herald_store_commit_seconds`).
    pub store_commits: u64,
    pub store_commit_micros: u64,
}

/// Where one session stands on one of its streams (its inbox, or a subscribed channel).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamPosition {
    /// The stream key: `inbox:<uid>` or `chan:<name>`.
    pub s: String,
    /// Acknowledged offset: the device's inbox cursor, or the subscription's position.
    pub acked: u64,
    /// Highest offset sent to this session (at least `acked`).
    pub sent: u64,
    /// Sent and not acknowledged (`sent - acked`; a gap announced in that range counts).
    pub unacked: u64,
    /// Newest offset of the stream.
    pub last: u64,
    /// Not acknowledged yet, sent or not (`last - acked`).
    pub behind: u64,
}

/// An open session and its stream positions.
#[derive(Debug, Clone, Serialize)]
pub struct SessionPositions {
    #[serde(flatten)]
    pub session: SessionInfo,
    /// The inbox first, then subscribed channels by name.
    pub positions: Vec<StreamPosition>,
}

/// Which open sessions [`Engine::session_positions`] returns.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub uid: Option<String>,
    pub device: Option<String>,
}

impl Engine {
    /// The counters and gauges of [`Overview`], read now.
    pub async fn overview(&self) -> Result<Overview, StoreError> {
        let m = self.metrics();
        let (mut connected, mut disconnected, mut pending) = (0, 0, 0);
        for s in self.inner.directory.all() {
            let (state, inbox_sent, chans) = {
                let g = s.lock();
                let inbox_sent = g.sent_high.get(&inbox_key(&s.uid)).copied();
                let chans: u64 = g
                    .subs
                    .iter()
                    .map(|(c, &acked)| {
                        let sent = g.sent_high.get(&chan_key(c)).copied().unwrap_or(0);
                        sent.saturating_sub(acked)
                    })
                    .sum();
                (g.state, inbox_sent, chans)
            };
            match state {
                SessionState::Connected => connected += 1,
                SessionState::Disconnected => disconnected += 1,
                SessionState::Closed => continue,
            }
            pending += chans;
            // Only a session that was sent inbox messages can have some unacknowledged.
            if let Some(sent) = inbox_sent {
                let acked = self.inner.store.cursor(&s.uid, &s.device).await?;
                pending += sent.saturating_sub(acked.unwrap_or(0));
            }
        }
        let evictions = EVICTION_REASONS
            .into_iter()
            .map(|r| {
                let label = ReasonLabel { reason: r.into() };
                (r, m.evictions.get(&label).map_or(0, |c| c.get()))
            })
            .collect();
        let resumes_failed = FAILED_RESUMES
            .into_iter()
            .map(|o| {
                let label = OutcomeLabel { outcome: o.into() };
                (o, m.resumes.get(&label).map_or(0, |c| c.get()))
            })
            .collect();
        Ok(Overview {
            now_ms: self.now_ms(),
            connections: m.connections.get(),
            sessions_connected: connected,
            sessions_disconnected: disconnected,
            acks_pending: pending,
            publishes: m.publishes.get(),
            deliveries: m.deliveries.get(),
            redeliveries: m.redeliveries.get(),
            acks: m.acks.get(),
            gaps: m.gaps.get(),
            flow_stalls: m.flow_stalls.get(),
            store_failures: m.store_failures.get(),
            evictions,
            resumes_failed,
            store_commits: m.store.commits.get(),
            store_commit_micros: m.store.commit_micros.get(),
        })
    }

    /// Open sessions matching `filter` (at most `limit`, in the order of
    /// [`Engine::sessions`]) with the positions of their streams.
    pub async fn session_positions(
        &self,
        filter: &SessionFilter,
        limit: usize,
    ) -> Result<Vec<SessionPositions>, StoreError> {
        let infos: Vec<SessionInfo> = self
            .sessions(filter.uid.as_deref())
            .into_iter()
            .filter(|s| filter.device.as_ref().is_none_or(|d| &s.device == d))
            .take(limit)
            .collect();
        let mut out = Vec::with_capacity(infos.len());
        for info in infos {
            let sent_high = self
                .inner
                .directory
                .get(&info.id)
                .map(|s: Arc<SessionShared>| s.lock().sent_high.clone())
                .unwrap_or_default();
            let inbox = inbox_key(&info.uid);
            let cursor = self
                .inner
                .store
                .cursor(&info.uid, &info.device)
                .await?
                .unwrap_or(0);
            let mut positions = Vec::with_capacity(1 + info.subs.len());
            let streams = std::iter::once((inbox, cursor)).chain(
                info.subs
                    .iter()
                    .map(|(c, &acked)| (chan_key(c), acked))
                    .collect::<Vec<_>>(),
            );
            for (key, acked) in streams {
                let last = self.inner.store.bounds(&key).await?.last;
                let sent = sent_high.get(&key).copied().unwrap_or(0).max(acked);
                positions.push(StreamPosition {
                    unacked: sent - acked,
                    behind: last.saturating_sub(acked),
                    s: key,
                    acked,
                    sent,
                    last,
                });
            }
            out.push(SessionPositions {
                session: info,
                positions,
            });
        }
        Ok(out)
    }
}
