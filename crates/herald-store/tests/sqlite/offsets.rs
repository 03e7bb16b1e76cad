//! Offset assignment, group commit and the commit listener.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use herald_store::sqlite::{SqliteConfig, SqliteStore};
use herald_store::*;
use tempfile::TempDir;

use crate::common::*;

const STREAMS: [&str; 4] = ["chan:a", "chan:b", "inbox:carol", "inbox:dave"];

/// `n` appends from `n` tasks released at once; returns the outcomes.
async fn append_concurrently(store: &Arc<SqliteStore>, n: usize) -> Vec<Arc<StoredMessage>> {
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (store, start) = (store.clone(), start.clone());
        tasks.spawn(async move {
            start.wait().await;
            let m = msg(
                STREAMS[i % STREAMS.len()],
                &format!("user{i}"),
                1_000 + i as u64,
            );
            stored(store.append(m).await.unwrap())
        });
    }
    let mut out = Vec::new();
    while let Some(done) = tasks.join_next().await {
        out.push(done.unwrap());
    }
    out
}

async fn assert_contiguous(store: &SqliteStore, appended: &[Arc<StoredMessage>]) {
    let mut per_stream: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for m in appended {
        per_stream.entry(&m.stream).or_default().push(m.offset);
    }
    for (stream, mut got) in per_stream {
        got.sort_unstable();
        let want: Vec<u64> = (1..=got.len() as u64).collect();
        assert_eq!(got, want, "offsets of {stream}");
        let read = all(store, stream).await;
        assert_eq!(offsets(&read), want, "read {stream}");
        let bounds = store.bounds(stream).await.unwrap();
        assert_eq!(
            bounds,
            StreamBounds {
                first: 1,
                last: want.len() as u64
            }
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_contiguous_offsets_and_share_commits() {
    let dir = TempDir::new().unwrap();
    let (store, recorder) = open(dir.path());
    let store = Arc::new(store);

    let appended = append_concurrently(&store, 200).await;

    assert_contiguous(&store, &appended).await;
    let stats = store.stats();
    assert_eq!(stats.messages_appended, 200);
    assert_eq!(stats.ops_committed, 200);
    assert!(stats.commits < 200, "group commit never batched: {stats:?}");
    assert_eq!(recorder.messages().len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_durability_group_commits_and_survives_reopen() {
    let dir = TempDir::new().unwrap();
    let cfg = SqliteConfig {
        durability: Durability::Fsync,
        ..config(dir.path())
    };
    let (store, _) = open_with(cfg.clone());
    let store = Arc::new(store);

    let appended = append_concurrently(&store, 100).await;

    assert_contiguous(&store, &appended).await;
    let stats = store.stats();
    assert!(
        stats.commits < 100,
        "fsync commits were not shared: {stats:?}"
    );
    assert!(stats.commit_time_us > 0);
    drop(store);
    let (store, _) = open_with(cfg);
    assert_contiguous(&store, &appended).await;
}

#[tokio::test]
async fn commands_queued_while_the_writer_is_busy_share_one_batch() {
    let dir = TempDir::new().unwrap();
    let (store, recorder) = open(dir.path());
    let release = recorder.arm();

    let first = store.append(msg("chan:a", "u", 1));
    tokio::pin!(first);
    poll_once(first.as_mut()).await;
    recorder.parked().await;
    // The writer is parked in the listener: these three wait in the queue together.
    let a = store.append(msg("chan:a", "u", 2));
    let b = store.append(msg("chan:b", "u", 3));
    let c = store.barrier();
    tokio::pin!(a, b, c);
    poll_once(a.as_mut()).await;
    poll_once(b.as_mut()).await;
    poll_once(c.as_mut()).await;
    release.send(()).unwrap();

    assert_eq!(stored(first.await.unwrap()).offset, 1);
    assert_eq!(stored(a.await.unwrap()).offset, 2);
    assert_eq!(stored(b.await.unwrap()).offset, 1);
    c.await.unwrap();
    let stats = store.stats();
    assert_eq!(stats.commits, 2);
    assert_eq!(stats.last_batch_size, 3);
    let batches = recorder.batches.lock().unwrap().clone();
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[1].len(), 2, "one listener call per commit");
}

#[tokio::test]
async fn listener_sees_exactly_the_stored_messages_before_the_append_resolves() {
    let dir = TempDir::new().unwrap();
    let (store, recorder) = open(dir.path());
    let mut expected = Vec::new();
    for i in 0..30u64 {
        let stream = STREAMS[(i % 3) as usize];
        // Every third message repeats a key: a duplicate must never reach the listener.
        let key = format!("k{}", i / 3);
        match store.append(keyed(stream, "alice", i, &key)).await.unwrap() {
            AppendOutcome::Stored(m) => expected.push(m),
            AppendOutcome::Duplicate { id, .. } => {
                assert!(expected.iter().any(|m| m.id == id));
            }
        }
        // Called before the append resolved, and the write is readable (read-your-writes).
        assert_eq!(recorder.messages(), expected);
        let last = expected.last().unwrap();
        let bounds = store.bounds(&last.stream).await.unwrap();
        assert_eq!(bounds.last, last.offset);
    }
    assert_eq!(expected.len(), 10);
    let seen = recorder.messages();
    let ids: HashSet<_> = seen.iter().map(|m| &m.id).collect();
    assert_eq!(ids.len(), seen.len(), "a message was announced twice");
    let mut last_per_stream = BTreeMap::new();
    for m in &seen {
        let prev = last_per_stream
            .insert(m.stream.clone(), m.offset)
            .unwrap_or(0);
        assert_eq!(m.offset, prev + 1, "listener order of {}", m.stream);
    }
}

#[tokio::test]
async fn a_rejected_write_fails_alone_and_leaves_no_hole() {
    let dir = TempDir::new().unwrap();
    let (store, recorder) = open(dir.path());
    let release = recorder.arm();
    let first = store.append(msg("chan:a", "u", 1));
    tokio::pin!(first);
    poll_once(first.as_mut()).await;
    recorder.parked().await;

    let original = msg("chan:a", "u", 2);
    // Same message id again: the UNIQUE index refuses it.
    let reused_id = original.clone();
    let ok1 = store.append(original);
    let bad = store.append(reused_id);
    let ok2 = store.append(msg("chan:a", "u", 3));
    tokio::pin!(ok1, bad, ok2);
    poll_once(ok1.as_mut()).await;
    poll_once(bad.as_mut()).await;
    poll_once(ok2.as_mut()).await;
    release.send(()).unwrap();

    first.await.unwrap();
    assert_eq!(stored(ok1.await.unwrap()).offset, 2);
    assert!(matches!(bad.await, Err(StoreError::Corrupt(_))));
    assert_eq!(stored(ok2.await.unwrap()).offset, 3);
    assert_eq!(offsets(&all(&store, "chan:a").await), [1, 2, 3]);
    assert!(store.health().is_ok());
}

/// A rejected write alone in its batch (no savepoint taken) is undone and leaves no hole.
#[tokio::test]
async fn a_rejected_write_alone_in_its_batch_leaves_no_hole() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(dir.path());
    let original = msg("chan:a", "u", 1);
    let reused_id = original.clone();
    assert_eq!(stored(store.append(original).await.unwrap()).offset, 1);
    assert!(matches!(
        store.append(reused_id).await,
        Err(StoreError::Corrupt(_))
    ));
    assert_eq!(
        stored(store.append(msg("chan:a", "u", 2)).await.unwrap()).offset,
        2
    );
    assert_eq!(offsets(&all(&store, "chan:a").await), [1, 2]);
    assert!(store.health().is_ok());
}

#[tokio::test]
async fn unknown_stream_is_empty_at_zero() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(dir.path());
    assert_eq!(
        store.bounds("chan:nothing").await.unwrap(),
        StreamBounds { first: 1, last: 0 }
    );
    assert!(all(&store, "chan:nothing").await.is_empty());
    assert!(store.message("m_none").await.unwrap().is_none());
    let m = stored(store.append(msg("chan:x", "u", 5)).await.unwrap());
    assert_eq!(store.message(&m.id).await.unwrap(), Some(m.clone()));
    assert!(store.read("chan:x", 0, 0).await.unwrap().is_empty());
    assert!(store.read("chan:x", 1, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn append_eager_queues_at_call_time_in_call_order() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(dir.path());
    let first = store.append_eager(msg("chan:a", "u", 1));
    let second = store.append_eager(msg("chan:a", "u", 2));
    // Awaited in reverse, never polled before: the offsets still follow the calls.
    assert_eq!(stored(second.await.unwrap()).offset, 2);
    assert_eq!(stored(first.await.unwrap()).offset, 1);
    // The future does not borrow the store.
    let detached = store.append_eager(msg("chan:a", "u", 3));
    let offset = tokio::spawn(detached).await.unwrap().unwrap();
    assert_eq!(stored(offset).offset, 3);
}

/// Records what the writer reports per transaction.
#[derive(Default)]
struct Observed {
    batches: std::sync::Mutex<Vec<(usize, bool)>>,
}

impl CommitObserver for Observed {
    fn batch(&self, ops: usize, _elapsed: std::time::Duration, committed: bool) {
        self.batches.lock().unwrap().push((ops, committed));
    }
}

#[tokio::test]
async fn the_commit_observer_sees_every_batch_with_its_size() {
    let dir = TempDir::new().unwrap();
    let (store, recorder) = open(dir.path());
    let observed = Arc::new(Observed::default());
    assert!(store.observe_commits(observed.clone()));
    assert!(
        !store.observe_commits(Arc::new(Observed::default())),
        "set once"
    );

    store.append(msg("chan:a", "u", 1)).await.unwrap();
    // Three commands queued while the writer is parked share one batch.
    let release = recorder.arm();
    let first = store.append(msg("chan:a", "u", 2));
    tokio::pin!(first);
    poll_once(first.as_mut()).await;
    recorder.parked().await;
    let a = store.append(msg("chan:a", "u", 3));
    let b = store.append(msg("chan:b", "u", 4));
    let c = store.barrier();
    tokio::pin!(a, b, c);
    poll_once(a.as_mut()).await;
    poll_once(b.as_mut()).await;
    poll_once(c.as_mut()).await;
    release.send(()).unwrap();
    first.await.unwrap();
    a.await.unwrap();
    b.await.unwrap();
    c.await.unwrap();

    let batches = observed.batches.lock().unwrap().clone();
    assert_eq!(batches, [(1, true), (1, true), (3, true)]);
    let stats = store.stats();
    assert_eq!(stats.commits, batches.len() as u64);
    assert_eq!(
        stats.ops_committed,
        batches.iter().map(|b| b.0 as u64).sum::<u64>()
    );
}
