//! The event feed and message search.

use herald_store::*;
use tempfile::TempDir;

use crate::common::*;

fn event(ts: u64, kind: &str, uid: Option<&str>) -> NewEvent {
    NewEvent {
        ts,
        kind: kind.into(),
        uid: uid.map(Into::into),
        device: None,
        session: None,
        conn: None,
        data: serde_json::json!({"ts": ts}),
    }
}

#[tokio::test]
async fn events_filter_and_return_the_newest_oldest_first() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(dir.path());
    let mut ids = Vec::new();
    for i in 0..10u64 {
        let kind = if i % 2 == 0 { "eviction" } else { "gap" };
        let uid = if i < 5 { "alice" } else { "bob" };
        let e = store
            .append_event(event(100 + i, kind, Some(uid)))
            .await
            .unwrap();
        assert_eq!(e.event, event(100 + i, kind, Some(uid)));
        ids.push(e.id);
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]));

    let ts_of = |events: Vec<Event>| events.iter().map(|e| e.event.ts).collect::<Vec<_>>();
    let all = store.events(&EventQuery::default()).await.unwrap();
    assert_eq!(all.len(), 10);
    let q = |f: fn(&mut EventQuery)| {
        let mut q = EventQuery::default();
        f(&mut q);
        q
    };
    let newest = store.events(&q(|q| q.limit = 3)).await.unwrap();
    assert_eq!(ts_of(newest), [107, 108, 109]);
    let evictions = store
        .events(&q(|q| q.kind = Some("eviction".into())))
        .await
        .unwrap();
    assert_eq!(ts_of(evictions), [100, 102, 104, 106, 108]);
    let bob_gaps = store
        .events(&q(|q| {
            q.kind = Some("gap".into());
            q.uid = Some("bob".into());
        }))
        .await
        .unwrap();
    assert_eq!(ts_of(bob_gaps), [105, 107, 109]);
    let since = store.events(&q(|q| q.since_ms = Some(108))).await.unwrap();
    assert_eq!(ts_of(since), [108, 109]);
    let after = EventQuery {
        after_id: Some(ids[6]),
        ..EventQuery::default()
    };
    assert_eq!(ts_of(store.events(&after).await.unwrap()), [107, 108, 109]);
    // A follower paging forward with a small limit sees every event, in order, none skipped.
    let mut cursor = ids[0];
    let mut followed = Vec::new();
    loop {
        let page = store
            .events(&EventQuery {
                after_id: Some(cursor),
                limit: 2,
                ..EventQuery::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        cursor = last.id;
        followed.extend(page.iter().map(|e| e.event.ts));
    }
    assert_eq!(followed, (101..=109).collect::<Vec<u64>>());
}

#[tokio::test]
async fn search_filters_by_stream_sender_offset_and_time() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(dir.path());
    for i in 0..6u64 {
        let from = if i % 2 == 0 { "alice" } else { "bob" };
        stored(
            store
                .append(msg("chan:a", from, 1_000 + i * 10))
                .await
                .unwrap(),
        );
        stored(
            store
                .append(msg("chan:b", from, 1_005 + i * 10))
                .await
                .unwrap(),
        );
    }
    let search = |q: SearchQuery| {
        let store = &store;
        async move {
            store
                .search(&q)
                .await
                .unwrap()
                .iter()
                .map(|m| (m.stream.clone(), m.offset))
                .collect::<Vec<_>>()
        }
    };
    let everything = search(SearchQuery::default()).await;
    assert_eq!(everything.len(), 12);
    assert_eq!(
        everything[..3],
        [
            ("chan:a".into(), 1),
            ("chan:b".into(), 1),
            ("chan:a".into(), 2)
        ]
    );

    let q = SearchQuery {
        stream: Some("chan:a".into()),
        after: Some(3),
        ..Default::default()
    };
    assert_eq!(
        search(q).await,
        [4, 5, 6].map(|o| ("chan:a".to_string(), o))
    );
    let q = SearchQuery {
        from_uid: Some("bob".into()),
        since_ms: Some(1_015),
        until_ms: Some(1_035),
        ..Default::default()
    };
    assert_eq!(
        search(q).await,
        [
            ("chan:b".into(), 2),
            ("chan:a".into(), 4),
            ("chan:b".into(), 4)
        ]
    );
    let q = SearchQuery {
        limit: 2,
        ..Default::default()
    };
    assert_eq!(search(q).await.len(), 2);
}

async fn sent_by(store: &herald_store::sqlite::SqliteStore, sender: &str) -> Vec<(String, u64)> {
    let q = SearchQuery {
        from_uid: Some(sender.into()),
        ..Default::default()
    };
    store
        .search(&q)
        .await
        .unwrap()
        .iter()
        .map(|m| (m.stream.clone(), m.offset))
        .collect()
}

/// Search by sender reads the background index for what it covers and the newest messages
/// directly: the same answer before the index catches up, after it (a barrier), and after
/// retention removed some of them.
#[tokio::test]
async fn search_by_sender_is_exact_whether_or_not_the_index_caught_up() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(dir.path());
    for i in 0..6u64 {
        let from = if i % 2 == 0 { "bob" } else { "carol" };
        store.append(msg("chan:a", from, 100 + i)).await.unwrap();
    }
    let chan_a = |offsets: &[u64]| -> Vec<(String, u64)> {
        offsets.iter().map(|&o| ("chan:a".to_string(), o)).collect()
    };
    assert_eq!(
        sent_by(&store, "bob").await,
        chan_a(&[1, 3, 5]),
        "not indexed yet"
    );
    store.barrier().await.unwrap();
    assert_eq!(sent_by(&store, "bob").await, chan_a(&[1, 3, 5]), "indexed");
    store.append(msg("chan:a", "bob", 200)).await.unwrap();
    assert_eq!(
        sent_by(&store, "bob").await,
        chan_a(&[1, 3, 5, 7]),
        "indexed and newer"
    );
    store
        .trim(
            0,
            &Retention {
                channel_max_messages: 3,
                ..keep_all()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        sent_by(&store, "bob").await,
        chan_a(&[5, 7]),
        "trimmed ones are gone"
    );
    assert_eq!(sent_by(&store, "carol").await, chan_a(&[6]));
    store.close().await.unwrap();
    drop(store);
    let (store, _) = open(dir.path());
    assert_eq!(
        sent_by(&store, "bob").await,
        chan_a(&[5, 7]),
        "after a reopen"
    );
}
