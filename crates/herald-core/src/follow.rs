//! Following the event feed: stored events after a given id, then live ones, in id order,
//! each exactly once, with no hole.
//!
//! Live events come from the engine's broadcast channel, which has two weaknesses this module
//! covers with the store (where every broadcast event is committed before it is sent):
//! - **Order.** Events are committed in id order, but each is broadcast by its own task, so
//!   6 may be broadcast before 5. A live event that is not the next id therefore triggers a
//!   read of the store after the last id handled: every id below a broadcast one is already
//!   committed, so that read returns the missing ones (and the broadcast one) in order.
//! - **Lag.** A receiver that falls more than the channel's capacity behind loses events
//!   (`Lagged`). The missed range is re-read from the store the same way.
//!
//! Only if such a read fails does the follower give up on a range, and then it says so with
//! [`FeedItem::Lagged`] naming the ids to fetch from `GET /v1/events`.

use std::collections::VecDeque;
use std::sync::Arc;

use herald_store::{Event, EventQuery, Store, StoreError};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::Engine;

/// Events read from the store at once while catching up.
const PAGE: usize = 500;

/// Which events a follower wants; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub kind: Option<String>,
    pub uid: Option<String>,
}

impl EventFilter {
    pub fn matches(&self, e: &Event) -> bool {
        self.kind.as_ref().is_none_or(|k| *k == e.event.kind)
            && self
                .uid
                .as_ref()
                .is_none_or(|u| e.event.uid.as_ref() == Some(u))
    }
}

/// What a follower yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedItem {
    Event(Event),
    /// Events after `after` (up to and including `until`, or open-ended) could not be read
    /// and were skipped: fetch them with `GET /v1/events?after=<after>`.
    Lagged {
        after: u64,
        until: Option<u64>,
        reason: String,
    },
}

/// A cursor over the event feed. See the module docs.
pub struct EventFollower {
    store: Arc<dyn Store>,
    live: broadcast::Receiver<Event>,
    filter: EventFilter,
    /// Every event with an id up to this one was yielded or did not match.
    cursor: u64,
    /// Read from the store, waiting to be yielded.
    ready: VecDeque<Event>,
    /// `Some(at_least)`: read the store after `cursor` until exhausted, then move the cursor
    /// to at least `at_least` (a live event known to be committed).
    catch_up: Option<u64>,
    /// Lost track after a failed read with no known upper bound: the next live event resets
    /// the cursor.
    blind: bool,
}

impl EventFollower {
    /// A follower yielding the events after `after`, then live ones; with `after = None`,
    /// only events recorded from now on. An `after` beyond the newest event (an id from
    /// another database) counts as the newest. `live` must have been subscribed *before* this
    /// call, so that nothing committed between the two is missed.
    pub async fn start(
        store: Arc<dyn Store>,
        live: broadcast::Receiver<Event>,
        filter: EventFilter,
        after: Option<u64>,
    ) -> Result<EventFollower, StoreError> {
        // The newest stored id: with no `after`, everything up to it counts as already seen.
        let newest = store
            .events(&EventQuery {
                limit: 1,
                ..EventQuery::default()
            })
            .await?
            .last()
            .map_or(0, |e| e.id);
        let (cursor, catch_up) = match after {
            Some(after) => (after.min(newest), Some(0)),
            None => (newest, None),
        };
        Ok(EventFollower {
            store,
            live,
            filter,
            cursor,
            ready: VecDeque::new(),
            catch_up,
            blind: false,
        })
    }

    /// The id up to which every event was yielded or filtered out.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The next matching event, in id order. `None` once the engine's event channel closed.
    /// Cancel-safe: state changes only after each await completes.
    pub async fn next(&mut self) -> Option<FeedItem> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(FeedItem::Event(e));
            }
            if let Some(at_least) = self.catch_up {
                let q = EventQuery {
                    kind: self.filter.kind.clone(),
                    uid: self.filter.uid.clone(),
                    since_ms: None,
                    after_id: Some(self.cursor),
                    limit: PAGE,
                };
                match self.store.events(&q).await {
                    Ok(page) => {
                        let exhausted = page.len() < PAGE;
                        for e in page {
                            self.cursor = self.cursor.max(e.id);
                            self.ready.push_back(e);
                        }
                        if exhausted {
                            self.cursor = self.cursor.max(at_least);
                            self.catch_up = None;
                        }
                    }
                    Err(e) => {
                        let after = self.cursor;
                        self.catch_up = None;
                        let until = (at_least > after).then_some(at_least);
                        match until {
                            Some(until) => self.cursor = until,
                            None => self.blind = true,
                        }
                        return Some(FeedItem::Lagged {
                            after,
                            until,
                            reason: e.to_string(),
                        });
                    }
                }
                continue;
            }
            match self.live.recv().await {
                Ok(e) => {
                    if self.blind {
                        self.blind = false;
                        self.cursor = self.cursor.max(e.id.saturating_sub(1));
                    }
                    if e.id <= self.cursor {
                        continue;
                    }
                    if e.id == self.cursor + 1 {
                        self.cursor = e.id;
                        if self.filter.matches(&e) {
                            return Some(FeedItem::Event(e));
                        }
                        continue;
                    }
                    // Ids below this one are committed but not seen yet: read them.
                    self.catch_up = Some(e.id);
                }
                Err(RecvError::Lagged(_)) => self.catch_up = Some(0),
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

impl Engine {
    /// Follows the event feed from after `after` (or from now), see [`EventFollower`].
    pub async fn follow_events(
        &self,
        filter: EventFilter,
        after: Option<u64>,
    ) -> Result<EventFollower, StoreError> {
        let live = self.subscribe_events();
        EventFollower::start(self.store().clone(), live, filter, after).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use herald_store::sqlite::{SqliteConfig, SqliteStore};
    use herald_store::{CommitListener, Durability, NewEvent, StoredMessage};

    use super::*;

    struct NoListener;
    impl CommitListener for NoListener {
        fn committed(&self, _: &[Arc<StoredMessage>]) {}
    }

    fn store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
        let cfg = SqliteConfig {
            durability: Durability::Os,
            ..SqliteConfig::new(dir.path().join("herald.db"))
        };
        Arc::new(SqliteStore::open(cfg, Arc::new(NoListener)).unwrap())
    }

    async fn record(store: &Arc<dyn Store>, kind: &str, uid: &str) -> Event {
        let e = NewEvent {
            ts: 1,
            kind: kind.into(),
            uid: Some(uid.into()),
            device: None,
            session: None,
            conn: None,
            data: serde_json::json!({}),
        };
        store.append_event(e).await.unwrap()
    }

    async fn next_id(f: &mut EventFollower) -> u64 {
        match tokio::time::timeout(Duration::from_secs(5), f.next())
            .await
            .unwrap()
        {
            Some(FeedItem::Event(e)) => e.id,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    async fn silent(f: &mut EventFollower) {
        let r = tokio::time::timeout(Duration::from_millis(50), f.next()).await;
        assert!(r.is_err(), "expected nothing, got {r:?}");
    }

    #[tokio::test]
    async fn replays_then_follows_live_without_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.push(record(&store, "eviction", "a").await.id);
        }
        let (tx, rx) = broadcast::channel(16);
        let mut f = EventFollower::start(store.clone(), rx, EventFilter::default(), Some(ids[1]))
            .await
            .unwrap();
        for id in &ids[2..] {
            assert_eq!(next_id(&mut f).await, *id);
        }
        // A live copy of a replayed event is skipped; a new one comes through.
        let old = store
            .events(&EventQuery {
                after_id: Some(ids[3]),
                ..EventQuery::default()
            })
            .await
            .unwrap();
        tx.send(old[0].clone()).unwrap();
        let new = record(&store, "gap", "a").await;
        tx.send(new.clone()).unwrap();
        assert_eq!(next_id(&mut f).await, new.id);
        silent(&mut f).await;
        assert_eq!(f.cursor(), new.id);
    }

    #[tokio::test]
    async fn an_id_beyond_the_newest_counts_as_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        record(&store, "kick", "a").await;
        let (tx, rx) = broadcast::channel(16);
        let mut f = EventFollower::start(store.clone(), rx, EventFilter::default(), Some(5000))
            .await
            .unwrap();
        let e = record(&store, "gap", "a").await;
        tx.send(e.clone()).unwrap();
        assert_eq!(next_id(&mut f).await, e.id);
    }

    #[tokio::test]
    async fn out_of_order_broadcasts_come_out_in_id_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        record(&store, "kick", "a").await;
        let (tx, rx) = broadcast::channel(16);
        let mut f = EventFollower::start(store.clone(), rx, EventFilter::default(), None)
            .await
            .unwrap();
        let a = record(&store, "eviction", "a").await;
        let b = record(&store, "eviction", "b").await;
        tx.send(b.clone()).unwrap();
        tx.send(a.clone()).unwrap();
        assert_eq!(next_id(&mut f).await, a.id);
        assert_eq!(next_id(&mut f).await, b.id);
        silent(&mut f).await;
    }

    #[tokio::test]
    async fn a_lagging_follower_rereads_what_it_missed() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let (tx, rx) = broadcast::channel(2);
        let mut f = EventFollower::start(store.clone(), rx, EventFilter::default(), None)
            .await
            .unwrap();
        let mut ids = Vec::new();
        for i in 0..10 {
            let e = record(&store, "gap", &format!("u{i}")).await;
            ids.push(e.id);
            tx.send(e).unwrap();
        }
        for id in &ids {
            assert_eq!(next_id(&mut f).await, *id);
        }
        silent(&mut f).await;
    }

    #[tokio::test]
    async fn filters_apply_to_replay_catch_up_and_live() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let first = record(&store, "gap", "a").await;
        let wanted = record(&store, "eviction", "a").await;
        record(&store, "eviction", "b").await;
        let (tx, rx) = broadcast::channel(16);
        let filter = EventFilter {
            kind: Some("eviction".into()),
            uid: Some("a".into()),
        };
        let mut f = EventFollower::start(store.clone(), rx, filter, Some(first.id - 1))
            .await
            .unwrap();
        assert_eq!(next_id(&mut f).await, wanted.id);
        let skip = record(&store, "gap", "a").await;
        let live = record(&store, "eviction", "a").await;
        tx.send(skip).unwrap();
        tx.send(live.clone()).unwrap();
        assert_eq!(next_id(&mut f).await, live.id);
        silent(&mut f).await;
    }

    #[tokio::test]
    async fn an_unreadable_range_is_reported_as_lagged() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let (tx, rx) = broadcast::channel(16);
        let mut f = EventFollower::start(store.clone(), rx, EventFilter::default(), None)
            .await
            .unwrap();
        let a = record(&store, "gap", "a").await;
        let b = record(&store, "gap", "a").await;
        store.close().await.unwrap();
        tx.send(b.clone()).unwrap();
        match tokio::time::timeout(Duration::from_secs(5), f.next())
            .await
            .unwrap()
        {
            Some(FeedItem::Lagged { after, until, .. }) => {
                assert_eq!(after, a.id - 1);
                assert_eq!(until, Some(b.id));
            }
            other => panic!("expected lagged, got {other:?}"),
        }
        // Back on track with the next live event.
        let c = Event {
            id: b.id + 1,
            event: b.event.clone(),
        };
        tx.send(c.clone()).unwrap();
        assert_eq!(next_id(&mut f).await, c.id);
    }
}
