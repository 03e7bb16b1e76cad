//! A full disk (simulated with a database quota): the failing batch is rolled back whole,
//! nobody is told it committed, and offsets continue without a hole once there is room.

use herald_store::sqlite::SqliteConfig;
use herald_store::*;
use tempfile::TempDir;

use crate::common::*;

const QUOTA: u64 = 256 * 1024;

/// A message with a ~4 KiB body (about one database page).
fn big(stream: &str, ts: u64) -> NewMessage {
    NewMessage {
        body: Body::from_json(format!("\"{}\"", "x".repeat(4_000))).unwrap(),
        ..msg(stream, "filler", ts)
    }
}

fn event(ts: u64) -> NewEvent {
    NewEvent {
        ts,
        kind: "gap".into(),
        uid: Some("bob".into()),
        device: None,
        session: None,
        conn: None,
        data: serde_json::json!({"from": 1, "to": 2}),
    }
}

#[tokio::test]
async fn a_full_database_fails_whole_batches_and_offsets_continue_after_room_is_made() {
    let dir = TempDir::new().unwrap();
    let cfg = SqliteConfig {
        max_db_bytes: Some(QUOTA),
        ..config(dir.path())
    };
    let (store, recorder) = open_with(cfg);

    // Fill until the quota refuses a write.
    let mut filled = 0u64;
    let err = loop {
        match store.append(big("chan:big", filled)).await {
            Ok(outcome) => {
                assert_eq!(stored(outcome).offset, filled + 1);
                filled += 1;
            }
            Err(e) => break e,
        }
        assert!(filled < 200, "the quota never filled up");
    };
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("full"), "{err}");
    assert!(err.is_retryable());
    assert!(store.health().is_err());
    assert_eq!(store.stats().failed_commits, 1);
    assert_eq!(
        recorder.messages().len() as u64,
        filled,
        "listener saw a failed batch"
    );
    assert_eq!(
        store.bounds("chan:big").await.unwrap(),
        StreamBounds {
            first: 1,
            last: filled
        }
    );
    assert_eq!(all(&store, "chan:big").await.len() as u64, filled);

    // Make room for about one message, then fail a batch that needs far more: nothing of
    // it (not even the small event) may become visible.
    let policy = Retention {
        channel_max_messages: filled - 1,
        ..keep_all()
    };
    let trimmed = store.trim(0, &policy).await.unwrap();
    assert_eq!(trimmed.len(), 1);
    {
        let release = recorder.arm();
        let tiny = store.append(msg("chan:tiny", "u", 1));
        tokio::pin!(tiny);
        poll_once(tiny.as_mut()).await;
        recorder.parked().await;
        let ev = store.append_event(event(7));
        tokio::pin!(ev);
        poll_once(ev.as_mut()).await;
        let mut bigs: Vec<_> = (0..6)
            .map(|i| store.append(big("chan:big", 100 + i)))
            .collect();
        for fut in &mut bigs {
            poll_once(fut.as_mut()).await;
        }
        release.send(()).unwrap();
        assert_eq!(stored(tiny.await.unwrap()).offset, 1);
        assert!(matches!(ev.await, Err(StoreError::Unavailable(_))));
        for fut in bigs {
            assert!(matches!(fut.await, Err(StoreError::Unavailable(_))));
        }
        assert_eq!(store.stats().last_batch_size, 7);
    }
    assert!(store.health().is_err());
    assert!(store
        .events(&EventQuery::default())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.bounds("chan:big").await.unwrap().last, filled);
    assert_eq!(recorder.messages().len() as u64, filled + 1);

    // Room again: the next offset follows the last committed one.
    let policy = Retention {
        channel_max_messages: 5,
        ..keep_all()
    };
    store.trim(0, &policy).await.unwrap();
    let next = stored(store.append(big("chan:big", 200)).await.unwrap());
    assert_eq!(next.offset, filled + 1);
    assert!(store.health().is_ok());
    assert_eq!(
        store.bounds("chan:big").await.unwrap(),
        StreamBounds {
            // The count cap holds at append time: still 5 retained.
            first: filled - 3,
            last: filled + 1
        }
    );

    // Fill up again (without the cap, which would keep the channel at 5), then reopen the
    // same file with a larger quota: no hole either.
    store.trim(0, &keep_all()).await.unwrap();
    let mut last = next.offset;
    while let Ok(outcome) = store.append(big("chan:big", 300)).await {
        last = stored(outcome).offset;
        assert!(last < filled + 200, "the quota never filled up");
    }
    assert!(store.health().is_err());
    drop(store);
    let cfg = SqliteConfig {
        max_db_bytes: Some(QUOTA * 8),
        ..config(dir.path())
    };
    let (store, _) = open_with(cfg);
    assert!(store.health().is_ok());
    for i in 1..=10 {
        let m = stored(store.append(big("chan:big", 400)).await.unwrap());
        assert_eq!(m.offset, last + i);
    }
    let offs = offsets(&all(&store, "chan:big").await);
    let bounds = store.bounds("chan:big").await.unwrap();
    assert_eq!(offs, (bounds.first..=bounds.last).collect::<Vec<_>>());
}
