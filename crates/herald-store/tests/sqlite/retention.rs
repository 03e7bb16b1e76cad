//! `trim`: by count and by age, bounds and reads follow, offsets are never reused.

use herald_store::sqlite::SqliteConfig;
use herald_store::sqlite::SqliteStore;
use herald_store::*;
use tempfile::TempDir;

use crate::common::*;

/// Appends `n` messages to `stream` with ts = `ts0`, `ts0 + 1`, …
async fn fill(store: &SqliteStore, stream: &str, n: u64, ts0: u64) {
    for i in 0..n {
        stored(store.append(msg(stream, "alice", ts0 + i)).await.unwrap());
    }
}

#[tokio::test]
async fn trim_by_count_keeps_the_newest_channel_messages() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(dir.path());
    fill(&store, "chan:a", 10, 0).await;
    fill(&store, "chan:b", 2, 0).await;
    fill(&store, "inbox:bob", 10, 0).await;
    let policy = Retention {
        channel_max_messages: 3,
        ..keep_all()
    };

    let trimmed = store.trim(100, &policy).await.unwrap();

    assert_eq!(
        trimmed,
        vec![Trimmed {
            stream: "chan:a".into(),
            first: 8,
            removed: 7
        }]
    );
    assert_eq!(
        store.bounds("chan:a").await.unwrap(),
        StreamBounds { first: 8, last: 10 }
    );
    assert_eq!(offsets(&all(&store, "chan:a").await), [8, 9, 10]);
    assert_eq!(
        offsets(&store.read("chan:a", 8, 10).await.unwrap()),
        [9, 10]
    );
    assert_eq!(all(&store, "chan:b").await.len(), 2);
    assert_eq!(
        all(&store, "inbox:bob").await.len(),
        10,
        "count rule is for channels"
    );
    // Nothing more to do: no stream moved.
    assert!(store.trim(100, &policy).await.unwrap().is_empty());
}

#[tokio::test]
async fn trim_by_age_per_stream_kind() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(dir.path());
    fill(&store, "chan:a", 10, 1_000).await; // ts 1000..=1009
    fill(&store, "inbox:bob", 10, 1_000).await;
    let policy = Retention {
        channel_max_age_ms: 500,
        inbox_max_age_ms: 400,
        ..keep_all()
    };

    // now 1505: channel cutoff 1005 drops ts < 1005 (offsets 1..=5);
    // inbox cutoff 1105 drops everything.
    let trimmed = store.trim(1_505, &policy).await.unwrap();

    assert_eq!(
        trimmed,
        vec![
            Trimmed {
                stream: "chan:a".into(),
                first: 6,
                removed: 5
            },
            Trimmed {
                stream: "inbox:bob".into(),
                first: 11,
                removed: 10
            },
        ]
    );
    assert_eq!(offsets(&all(&store, "chan:a").await), [6, 7, 8, 9, 10]);
    assert_eq!(
        store.bounds("inbox:bob").await.unwrap(),
        StreamBounds {
            first: 11,
            last: 10
        }
    );
    assert!(all(&store, "inbox:bob").await.is_empty());
}

#[tokio::test]
async fn age_trim_never_removes_a_message_younger_than_the_cutoff() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(dir.path());
    // ts out of order (a clock step back): 10, 50, 20, 60.
    for ts in [10, 50, 20, 60] {
        stored(store.append(msg("chan:a", "alice", ts)).await.unwrap());
    }
    let policy = Retention {
        channel_max_age_ms: 100,
        ..keep_all()
    };
    // cutoff 40: offset 1 goes, offset 2 (ts 50) stops the walk, so 3 stays behind it.
    let trimmed = store.trim(140, &policy).await.unwrap();
    assert_eq!(trimmed[0].first, 2);
    assert_eq!(offsets(&all(&store, "chan:a").await), [2, 3, 4]);
}

#[tokio::test]
async fn offsets_are_never_reused_after_trimming_everything() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(dir.path());
    fill(&store, "chan:a", 5, 0).await;
    let everything = Retention {
        channel_max_age_ms: 1,
        ..keep_all()
    };
    store.trim(1_000, &everything).await.unwrap();
    assert_eq!(
        store.bounds("chan:a").await.unwrap(),
        StreamBounds { first: 6, last: 5 }
    );

    let m = stored(store.append(msg("chan:a", "alice", 2_000)).await.unwrap());
    assert_eq!(m.offset, 6);
    assert_eq!(
        store.bounds("chan:a").await.unwrap(),
        StreamBounds { first: 6, last: 6 }
    );

    store.trim(5_000, &everything).await.unwrap();
    drop(store);
    let (store, _) = open(dir.path());
    assert_eq!(
        store.bounds("chan:a").await.unwrap(),
        StreamBounds { first: 7, last: 6 }
    );
    assert_eq!(
        stored(store.append(msg("chan:a", "a", 6_000)).await.unwrap()).offset,
        7
    );
}

#[tokio::test]
async fn trim_purges_old_tombstones_only() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(dir.path());
    let old = stored(store.append(msg("inbox:bob", "alice", 100)).await.unwrap());
    let young = stored(
        store
            .append(msg("inbox:bob", "alice", 9_000))
            .await
            .unwrap(),
    );
    store.set_cursor("bob", "b1", 0, 100).await.unwrap();
    for (m, session) in [(&old, "s1"), (&young, "s2")] {
        store.record_sent(SentRange {
            uid: "bob".into(),
            device: "b1".into(),
            session: session.into(),
            stream: m.stream.clone(),
            first: m.offset,
            last: m.offset,
            ts: 150,
        });
    }
    store.barrier().await.unwrap();
    assert_eq!(store.deliveries(&old.id).await.unwrap().len(), 1);
    let mut closed = session("closed", 1);
    closed.state = SessionState::Closed;
    closed.last_seen_ms = 200;
    store.put_session(closed).await.unwrap();
    let mut idle = session("idle", 1);
    idle.state = SessionState::Disconnected;
    idle.last_seen_ms = 200;
    store.put_session(idle.clone()).await.unwrap();
    for ts in [100, 9_000] {
        store
            .append_event(NewEvent {
                ts,
                kind: "gap".into(),
                uid: None,
                device: None,
                session: None,
                conn: None,
                data: serde_json::json!({}),
            })
            .await
            .unwrap();
    }

    let policy = Retention {
        inbox_max_age_ms: 5_000,
        tombstone_ms: 5_000,
        ..keep_all()
    };
    store.trim(10_000, &policy).await.unwrap();

    assert_eq!(offsets(&all(&store, "inbox:bob").await), [2]);
    assert_eq!(store.load_sessions().await.unwrap(), vec![idle]);
    let events = store.events(&EventQuery::default()).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.event.ts).collect::<Vec<_>>(),
        [9_000]
    );
    assert!(store.deliveries(&old.id).await.unwrap().is_empty());
    assert_eq!(
        store.deliveries(&young.id).await.unwrap().len(),
        1,
        "message still retained"
    );
}

#[tokio::test]
async fn trimmed_inbox_messages_leave_their_header_until_the_tombstone_window_passes() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(dir.path());
    let gone = stored(store.append(msg("inbox:bob", "alice", 100)).await.unwrap());
    let kept = stored(
        store
            .append(msg("inbox:bob", "carol", 9_000))
            .await
            .unwrap(),
    );
    let chan = stored(store.append(msg("chan:a", "alice", 100)).await.unwrap());
    assert_eq!(store.trimmed_message(&gone.id).await.unwrap(), None);

    let policy = Retention {
        inbox_max_age_ms: 5_000,
        channel_max_age_ms: 5_000,
        tombstone_ms: 20_000,
        ..keep_all()
    };
    store.trim(10_000, &policy).await.unwrap();
    assert_eq!(store.message(&gone.id).await.unwrap(), None);
    assert_eq!(
        store.trimmed_message(&gone.id).await.unwrap(),
        Some(TrimmedMessage {
            id: gone.id.clone(),
            stream: "inbox:bob".into(),
            offset: 1,
            from: "alice".into(),
            ts: 100,
            trimmed_ms: 10_000,
        })
    );
    assert_eq!(
        store.trimmed_message(&kept.id).await.unwrap(),
        None,
        "retained"
    );
    assert_eq!(
        store.trimmed_message(&chan.id).await.unwrap(),
        None,
        "channels keep no headers"
    );

    // Still inside the window (trimmed at 10 000, window 20 000).
    store
        .trim(
            29_999,
            &Retention {
                tombstone_ms: 20_000,
                ..keep_all()
            },
        )
        .await
        .unwrap();
    assert!(store.trimmed_message(&gone.id).await.unwrap().is_some());
    store
        .trim(
            30_001,
            &Retention {
                tombstone_ms: 20_000,
                ..keep_all()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store.trimmed_message(&gone.id).await.unwrap(),
        None,
        "purged"
    );
}

/// A channel's count cap holds at every commit, not only at the periodic trim: the commit
/// that appends also removes what is beyond the cap, and the listener is told (so live
/// readers behind it get their gap) before the append resolves.
#[tokio::test]
async fn the_channel_count_cap_holds_at_append_time() {
    let dir = TempDir::new().unwrap();
    let cfg = SqliteConfig {
        retention: Retention {
            channel_max_messages: 3,
            ..keep_all()
        },
        ..config(dir.path())
    };
    let (store, recorder) = open_with(cfg);
    for ts in 1..=10 {
        let m = stored(store.append(msg("chan:c", "a", ts)).await.unwrap());
        let b = store.bounds("chan:c").await.unwrap();
        assert_eq!(b.last, m.offset);
        assert_eq!(
            b.first,
            m.offset.saturating_sub(2).max(1),
            "after offset {}",
            m.offset
        );
        assert!(all(&store, "chan:c").await.len() <= 3);
    }
    let trimmed = recorder.trimmed.lock().unwrap().clone();
    assert_eq!(
        trimmed.last().map(|t| (t.stream.as_str(), t.first)),
        Some(("chan:c", 8))
    );
    assert_eq!(trimmed.iter().map(|t| t.removed).sum::<u64>(), 7);
    // Inboxes have no count cap.
    for ts in 1..=5 {
        store.append(msg("inbox:bob", "a", ts)).await.unwrap();
    }
    assert_eq!(store.bounds("inbox:bob").await.unwrap().first, 1);
}

/// A publish retried after retention removed its original is still a duplicate while the
/// dedupe window lasts: the key outlives its message.
#[tokio::test]
async fn a_key_outlives_its_trimmed_message_for_the_dedupe_window() {
    let dir = TempDir::new().unwrap();
    let cfg = SqliteConfig {
        retention: Retention {
            channel_max_messages: 1,
            dedupe_window_ms: 1_000,
            ..keep_all()
        },
        ..config(dir.path())
    };
    let (store, _) = open_with(cfg);
    let first = stored(store.append(keyed("chan:c", "a", 100, "k")).await.unwrap());
    store.append(msg("chan:c", "a", 200)).await.unwrap();
    assert_eq!(
        store.bounds("chan:c").await.unwrap().first,
        2,
        "original trimmed"
    );
    let dup = store.append(keyed("chan:c", "a", 300, "k")).await.unwrap();
    assert!(
        matches!(dup, AppendOutcome::Duplicate { ref id, offset: 1, .. } if *id == first.id),
        "{dup:?}"
    );
    // Past the window the key is free again.
    let again = stored(
        store
            .append(keyed("chan:c", "a", 1_200, "k"))
            .await
            .unwrap(),
    );
    assert_eq!(again.offset, 3);
}
