//! Idempotency keys and the sender session's `seq`.

use herald_store::*;
use tempfile::TempDir;

use crate::common::*;

fn original_of(outcome: AppendOutcome) -> (String, String, u64) {
    match outcome {
        AppendOutcome::Duplicate { id, stream, offset } => (id, stream, offset),
        AppendOutcome::Stored(m) => panic!("expected a duplicate, stored {m:?}"),
    }
}

#[tokio::test]
async fn duplicate_key_returns_the_original() {
    let dir = TempDir::new().unwrap();
    let (store, recorder) = open(dir.path());
    let first = stored(
        store
            .append(keyed("inbox:bob", "alice", 10, "k1"))
            .await
            .unwrap(),
    );
    // Same sender, same key, even to another stream: the original comes back.
    let dup = store
        .append(keyed("chan:room", "alice", 20, "k1"))
        .await
        .unwrap();
    assert_eq!(original_of(dup), (first.id.clone(), "inbox:bob".into(), 1));
    assert!(all(&store, "chan:room").await.is_empty());
    assert_eq!(store.bounds("chan:room").await.unwrap().last, 0);
    assert_eq!(recorder.messages().len(), 1);
    // The next message continues at 2: the duplicate consumed no offset.
    let next = stored(
        store
            .append(keyed("inbox:bob", "alice", 30, "k2"))
            .await
            .unwrap(),
    );
    assert_eq!(next.offset, 2);
}

#[tokio::test]
async fn same_key_twice_in_one_batch_stores_once() {
    let dir = TempDir::new().unwrap();
    let (store, recorder) = open(dir.path());
    let release = recorder.arm();
    let first = store.append(msg("chan:a", "u", 1));
    tokio::pin!(first);
    poll_once(first.as_mut()).await;
    recorder.parked().await;

    let a = store.append(keyed("inbox:bob", "alice", 2, "same"));
    let b = store.append(keyed("inbox:bob", "alice", 3, "same"));
    tokio::pin!(a, b);
    poll_once(a.as_mut()).await;
    poll_once(b.as_mut()).await;
    release.send(()).unwrap();

    first.await.unwrap();
    let a = stored(a.await.unwrap());
    let b = original_of(b.await.unwrap());
    assert_eq!(store.stats().last_batch_size, 2, "both were in one batch");
    assert_eq!(b, (a.id.clone(), a.stream.clone(), a.offset));
    assert_eq!(offsets(&all(&store, "inbox:bob").await), [1]);
    assert_eq!(recorder.messages().len(), 2);
}

#[tokio::test]
async fn same_key_from_another_sender_is_not_a_duplicate() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(dir.path());
    let a = stored(
        store
            .append(keyed("inbox:bob", "alice", 1, "k"))
            .await
            .unwrap(),
    );
    let b = stored(
        store
            .append(keyed("inbox:bob", "carol", 2, "k"))
            .await
            .unwrap(),
    );
    assert_eq!((a.offset, b.offset), (1, 2));
}

#[tokio::test]
async fn keys_are_forgotten_after_the_dedupe_window() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(dir.path());
    let window = Retention {
        dedupe_window_ms: 1_000,
        ..keep_all()
    };
    stored(
        store
            .append(keyed("inbox:bob", "alice", 5_000, "k"))
            .await
            .unwrap(),
    );

    // Still inside the window: kept.
    store.trim(5_900, &window).await.unwrap();
    let dup = store
        .append(keyed("inbox:bob", "alice", 5_950, "k"))
        .await
        .unwrap();
    assert!(matches!(dup, AppendOutcome::Duplicate { offset: 1, .. }));

    // Past it: forgotten, the same key stores a new message.
    store.trim(6_001, &window).await.unwrap();
    let again = stored(
        store
            .append(keyed("inbox:bob", "alice", 6_100, "k"))
            .await
            .unwrap(),
    );
    assert_eq!(again.offset, 2);
    // And that new key is itself remembered.
    let dup = store
        .append(keyed("inbox:bob", "alice", 6_200, "k"))
        .await
        .unwrap();
    assert!(matches!(dup, AppendOutcome::Duplicate { offset: 2, .. }));
}

#[tokio::test]
async fn session_seq_is_recorded_with_the_append_and_never_lowered() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(dir.path());
    store.put_session(session("s1", 0)).await.unwrap();

    let with_seq = |seq: u64, key: &str| NewMessage {
        session_seq: Some(("s1".into(), seq)),
        ..keyed("inbox:bob", "alice", 1, key)
    };
    store.append(with_seq(5, "a")).await.unwrap();
    assert_eq!(store.load_sessions().await.unwrap()[0].acked_seq, 5);
    // A duplicate still records the seq (the client resent it; it was processed).
    let dup = store.append(with_seq(7, "a")).await.unwrap();
    assert!(matches!(dup, AppendOutcome::Duplicate { .. }));
    assert_eq!(store.load_sessions().await.unwrap()[0].acked_seq, 7);
    // put_session with an older acked_seq does not move it back, but updates the rest.
    let mut rec = session("s1", 3);
    rec.state = SessionState::Disconnected;
    store.put_session(rec).await.unwrap();
    let loaded = store.load_sessions().await.unwrap();
    assert_eq!(loaded[0].acked_seq, 7);
    assert_eq!(loaded[0].state, SessionState::Disconnected);
    // A seq for an unknown session is ignored, the message is stored.
    let orphan = NewMessage {
        session_seq: Some(("nope".into(), 9)),
        ..msg("inbox:bob", "alice", 2)
    };
    stored(store.append(orphan).await.unwrap());
    assert_eq!(store.load_sessions().await.unwrap().len(), 1);
}
