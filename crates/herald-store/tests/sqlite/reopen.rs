//! Everything the store keeps survives reopening the file, with or without `close()`.

use herald_store::sqlite::SqliteStore;
use herald_store::*;
use tempfile::TempDir;

use crate::common::*;

/// Writes one of everything; returns the stored messages.
async fn write_everything(store: &SqliteStore) -> Vec<std::sync::Arc<StoredMessage>> {
    let mut out = Vec::new();
    for i in 0..5 {
        out.push(stored(
            store
                .append(msg("chan:room", "alice", 100 + i))
                .await
                .unwrap(),
        ));
    }
    out.push(stored(
        store
            .append(keyed("inbox:bob", "alice", 200, "key-1"))
            .await
            .unwrap(),
    ));
    out.push(stored(
        store.append(msg("inbox:bob", "carol", 201)).await.unwrap(),
    ));
    store.put_session(session("s1", 9)).await.unwrap();
    store.set_cursor("bob", "b1", 1, 300).await.unwrap();
    store.record_sent(SentRange {
        uid: "bob".into(),
        device: "b1".into(),
        session: "s9".into(),
        stream: "inbox:bob".into(),
        first: 2,
        last: 2,
        ts: 301,
    });
    store
        .append_event(NewEvent {
            ts: 400,
            kind: "eviction".into(),
            uid: Some("alice".into()),
            device: Some("phone".into()),
            session: Some("s1".into()),
            conn: Some("c1".into()),
            data: serde_json::json!({"reason": "replaced"}),
        })
        .await
        .unwrap();
    store
        .trim(
            10_000,
            &Retention {
                channel_max_messages: 3,
                ..keep_all()
            },
        )
        .await
        .unwrap();
    out
}

async fn check_everything(store: &SqliteStore, written: &[std::sync::Arc<StoredMessage>]) {
    assert_eq!(
        store.bounds("chan:room").await.unwrap(),
        StreamBounds { first: 3, last: 5 }
    );
    assert_eq!(all(store, "chan:room").await, written[2..5].to_vec());
    assert_eq!(all(store, "inbox:bob").await, written[5..7].to_vec());
    assert_eq!(store.load_sessions().await.unwrap(), vec![session("s1", 9)]);
    assert_eq!(store.cursor("bob", "b1").await.unwrap(), Some(1));
    let deliveries = store.deliveries(&written[6].id).await.unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].state, DeliveryState::Sent);
    let events = store.events(&EventQuery::default()).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].event.data,
        serde_json::json!({"reason": "replaced"})
    );
    // The idempotency key is still known.
    let dup = store
        .append(keyed("inbox:bob", "alice", 500, "key-1"))
        .await
        .unwrap();
    assert!(matches!(dup, AppendOutcome::Duplicate { offset: 1, .. }));
}

/// After reopening, offsets and event ids continue where they were.
async fn check_continues(store: &SqliteStore) {
    assert_eq!(
        stored(store.append(msg("chan:room", "a", 600)).await.unwrap()).offset,
        6
    );
    assert_eq!(
        stored(store.append(msg("inbox:bob", "a", 601)).await.unwrap()).offset,
        3
    );
    let e = store
        .append_event(NewEvent {
            ts: 700,
            kind: "kick".into(),
            uid: None,
            device: None,
            session: None,
            conn: None,
            data: serde_json::Value::Null,
        })
        .await
        .unwrap();
    assert_eq!(e.id, 2);
}

#[tokio::test]
async fn everything_persists_when_dropped_without_close() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(dir.path());
    let written = write_everything(&store).await;
    drop(store);

    let (store, recorder) = open(dir.path());
    check_everything(&store, &written).await;
    check_continues(&store).await;
    assert_eq!(recorder.messages().len(), 2);
}

#[tokio::test]
async fn everything_persists_after_close_and_close_is_final() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(dir.path());
    let written = write_everything(&store).await;
    store.close().await.unwrap();

    // The WAL was checkpointed into the database file.
    let wal = db_path(dir.path()).with_extension("db-wal");
    assert!(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) == 0);
    assert!(store.health().is_err());
    assert!(matches!(
        store.append(msg("chan:room", "a", 1)).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(store.barrier().await, Err(StoreError::Closed)));
    assert!(matches!(
        store.bounds("chan:room").await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(store.close().await, Err(StoreError::Closed)));
    drop(store);

    let (store, _) = open(dir.path());
    check_everything(&store, &written).await;
    check_continues(&store).await;
    store.close().await.unwrap();
}

#[tokio::test]
async fn close_commits_everything_submitted_before_it() {
    let dir = TempDir::new().unwrap();
    let (store, recorder) = open(dir.path());
    {
        let release = recorder.arm();
        let first = store.append(msg("chan:a", "u", 1));
        tokio::pin!(first);
        poll_once(first.as_mut()).await;
        recorder.parked().await;
        let queued = store.append(msg("chan:a", "u", 2));
        tokio::pin!(queued);
        poll_once(queued.as_mut()).await;
        let close = store.close();
        tokio::pin!(close);
        poll_once(close.as_mut()).await;
        release.send(()).unwrap();

        first.await.unwrap();
        assert_eq!(stored(queued.await.unwrap()).offset, 2);
        close.await.unwrap();
    }
    drop(store);
    let (store, _) = open(dir.path());
    assert_eq!(offsets(&all(&store, "chan:a").await), [1, 2]);
}

/// The schema version 2 wrote (tables and indexes), to build old databases from.
const SCHEMA_V2: &str = include_str!("fixtures/schema_v2.sql");

fn schema_version(dir: &std::path::Path) -> String {
    let conn = rusqlite::Connection::open(db_path(dir)).unwrap();
    conn.query_row(
        "SELECT value FROM meta WHERE key = 'schema_version'",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

/// A version 1 database (devices without `start_offset`/`created_ms`, no `trimmed` table) is
/// migrated in place on open: old devices keep their cursors with unknown starts, new devices
/// record theirs, and trims keep headers.
#[tokio::test]
async fn a_version_1_database_is_migrated_on_open() {
    let dir = TempDir::new().unwrap();
    std::fs::create_dir_all(db_path(dir.path()).parent().unwrap()).unwrap();
    {
        let conn = rusqlite::Connection::open(db_path(dir.path())).unwrap();
        conn.execute_batch(SCHEMA_V2).unwrap();
        conn.execute_batch(
            "DROP TABLE devices;
             CREATE TABLE devices (
                 uid        TEXT NOT NULL,
                 device     TEXT NOT NULL,
                 offset     INTEGER NOT NULL,
                 updated_ms INTEGER NOT NULL,
                 PRIMARY KEY (uid, device)
             ) WITHOUT ROWID;
             INSERT INTO devices VALUES ('bob', 'old', 0, 50);
             DROP TABLE trimmed;
             INSERT INTO messages (stream, offset, id, sender, ts, body, receipt)
                 VALUES ('inbox:bob', 1, 'm_old1', 'alice', 100, '{}', 0);
             INSERT INTO streams VALUES ('inbox:bob', 1, 1);
             INSERT INTO meta VALUES ('schema_version', '1');",
        )
        .unwrap();
    }

    let (store, _) = open(dir.path());
    store.set_cursor("bob", "new", 1, 200).await.unwrap();
    let devices = store.devices("bob").await.unwrap();
    assert_eq!(
        devices
            .iter()
            .map(|d| (d.device.as_str(), d.offset, d.start_offset, d.created_ms))
            .collect::<Vec<_>>(),
        [("new", 1, Some(1), Some(200)), ("old", 0, None, None)]
    );
    store
        .trim(
            10_000,
            &Retention {
                inbox_max_age_ms: 1_000,
                ..keep_all()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .trimmed_message("m_old1")
            .await
            .unwrap()
            .map(|t| t.offset),
        Some(1)
    );
    store.close().await.unwrap();
    drop(store);
    assert_eq!(schema_version(dir.path()), "3");
    // Opening the migrated file again is a no-op.
    let (store, _) = open(dir.path());
    assert_eq!(store.devices("bob").await.unwrap().len(), 2);
}

/// A version 2 database (an `idem` table and one `deliveries` row per message and device) is
/// migrated on open: idempotency keys still match their messages, and each delivery row
/// becomes sent records and an acknowledgement, so a trace reads the same.
#[tokio::test]
async fn a_version_2_database_is_migrated_on_open_and_traces_read_the_same() {
    let dir = TempDir::new().unwrap();
    std::fs::create_dir_all(db_path(dir.path()).parent().unwrap()).unwrap();
    {
        let conn = rusqlite::Connection::open(db_path(dir.path())).unwrap();
        conn.execute_batch(SCHEMA_V2).unwrap();
        conn.execute_batch(
            "INSERT INTO meta VALUES ('schema_version', '2');
             INSERT INTO messages (stream, offset, id, sender, ts, body, receipt) VALUES
                 ('inbox:bob', 1, 'm_old1', 'alice', 100, '{\"n\":1}', 0),
                 ('inbox:bob', 2, 'm_old2', 'alice', 110, '{\"n\":2}', 0);
             INSERT INTO streams VALUES ('inbox:bob', 1, 2);
             INSERT INTO idem VALUES ('alice', 'key-1', 100, 'm_old1', 'inbox:bob', 1);
             INSERT INTO devices VALUES ('bob', 'b1', 1, 150, 0, 90);
             INSERT INTO deliveries (msg_id, uid, device, stream, offset, session,
                                     first_sent_ms, last_sent_ms, attempts, acked_ms) VALUES
                 ('m_old1', 'bob', 'b1', 'inbox:bob', 1, 's1', 120, 130, 2, 140),
                 ('m_old2', 'bob', 'b1', 'inbox:bob', 2, 's1', 125, 125, 1, NULL);",
        )
        .unwrap();
    }
    let (store, _) = open(dir.path());
    let dup = store
        .append(keyed("inbox:bob", "alice", 200, "key-1"))
        .await
        .unwrap();
    assert!(
        matches!(dup, AppendOutcome::Duplicate { ref id, offset: 1, .. } if id == "m_old1"),
        "{dup:?}"
    );
    let d1 = store.deliveries("m_old1").await.unwrap();
    assert_eq!(
        (
            d1.len(),
            d1[0].state,
            d1[0].first_sent_ms,
            d1[0].last_sent_ms
        ),
        (1, DeliveryState::Acked, 120, 130)
    );
    assert_eq!((d1[0].attempts, d1[0].acked_ms), (2, Some(140)));
    let d2 = store.deliveries("m_old2").await.unwrap();
    assert_eq!(
        (d2[0].state, d2[0].attempts, d2[0].acked_ms),
        (DeliveryState::Sent, 1, None)
    );
    // New messages continue the stream.
    let next = stored(store.append(msg("inbox:bob", "carol", 300)).await.unwrap());
    assert_eq!(next.offset, 3);
    store.close().await.unwrap();
    drop(store);
    assert_eq!(schema_version(dir.path()), "3");
}

/// A database written by a newer herald is refused with a message that says what to do.
#[tokio::test]
async fn a_newer_schema_is_refused_with_a_clear_message() {
    let dir = TempDir::new().unwrap();
    std::fs::create_dir_all(db_path(dir.path()).parent().unwrap()).unwrap();
    {
        let conn = rusqlite::Connection::open(db_path(dir.path())).unwrap();
        conn.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
             INSERT INTO meta VALUES ('schema_version', '99');",
        )
        .unwrap();
    }
    let err = herald_store::sqlite::SqliteStore::open(
        herald_store::sqlite::SqliteConfig::new(db_path(dir.path())),
        std::sync::Arc::new(Recorder::default()),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("version 99") && msg.contains("newer herald"),
        "{msg}"
    );
}

/// Commits never checkpoint; the checkpoint thread copies the WAL into the database file
/// while the store is open, so the WAL does not grow without bound.
#[tokio::test]
async fn the_wal_is_checkpointed_into_the_database_while_open() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(dir.path());
    let body = "x".repeat(1000);
    let writes: Vec<_> = (0..3000)
        .map(|i| {
            let mut m = msg("chan:big", "alice", i);
            m.body = Body::from_json(format!(r#""{body}""#)).unwrap();
            store.append(m)
        })
        .collect();
    for w in writes {
        w.await.unwrap();
    }
    // About 3 MB of bodies: the database file holds them once a checkpoint ran.
    let db = db_path(dir.path());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let size = std::fs::metadata(&db).unwrap().len();
        if size > 3_000_000 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "database file still {size} bytes: the WAL was not checkpointed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    store.close().await.unwrap();
}
