//! Device inbox cursors and delivery records (sent ranges and acknowledgements).

use herald_store::*;
use tempfile::TempDir;

use crate::common::*;

fn sent(m: &StoredMessage, device: &str, session: &str, ts: u64) -> SentRange {
    SentRange {
        uid: "bob".into(),
        device: device.into(),
        session: session.into(),
        stream: m.stream.clone(),
        first: m.offset,
        last: m.offset,
        ts,
    }
}

#[tokio::test]
async fn cursor_only_moves_forward() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(dir.path());
    assert_eq!(store.cursor("bob", "b1").await.unwrap(), None);

    store.set_cursor("bob", "b1", 5, 100).await.unwrap();
    store.set_cursor("bob", "b1", 3, 200).await.unwrap();
    assert_eq!(store.cursor("bob", "b1").await.unwrap(), Some(5));
    // A first sighting below nothing still creates the device at its start position.
    store.set_cursor("bob", "b2", 0, 150).await.unwrap();
    assert_eq!(
        store.devices("bob").await.unwrap(),
        vec![
            DeviceCursor {
                uid: "bob".into(),
                device: "b1".into(),
                offset: 5,
                updated_ms: 100,
                start_offset: Some(5),
                created_ms: Some(100),
            },
            DeviceCursor {
                uid: "bob".into(),
                device: "b2".into(),
                offset: 0,
                updated_ms: 150,
                start_offset: Some(0),
                created_ms: Some(150),
            },
        ]
    );
    store.set_cursor("bob", "b1", 8, 300).await.unwrap();
    assert_eq!(store.cursor("bob", "b1").await.unwrap(), Some(8));
    let b1 = &store.devices("bob").await.unwrap()[0];
    assert_eq!(b1.updated_ms, 300);
    assert_eq!(
        (b1.start_offset, b1.created_ms),
        (Some(5), Some(100)),
        "where a device started and when it was first seen never change"
    );
    assert!(store.devices("nobody").await.unwrap().is_empty());
    assert_eq!(store.cursor("alice", "b1").await.unwrap(), None);
}

#[tokio::test]
async fn deliveries_go_from_sent_to_acked() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(dir.path());
    let mut inbox = Vec::new();
    for ts in 1..=3 {
        inbox.push(stored(
            store.append(msg("inbox:bob", "alice", ts)).await.unwrap(),
        ));
    }
    store.set_cursor("bob", "b1", 0, 5).await.unwrap();
    store.set_cursor("bob", "b2", 0, 5).await.unwrap();
    for m in &inbox {
        store.record_sent(sent(m, "b1", "s1", 10));
    }
    // A resend, from a newer session.
    store.record_sent(sent(&inbox[0], "b1", "s2", 20));
    store.record_sent(sent(&inbox[0], "b2", "s3", 25));
    store.barrier().await.unwrap();

    let rows = store.deliveries(&inbox[0].id).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows[0],
        DeliveryRecord {
            msg_id: inbox[0].id.clone(),
            uid: "bob".into(),
            device: "b1".into(),
            session: "s2".into(),
            state: DeliveryState::Sent,
            first_sent_ms: 10,
            last_sent_ms: 20,
            attempts: 2,
            acked_ms: None,
        }
    );
    assert_eq!(rows[1].device, "b2");

    store.set_cursor("bob", "b1", 2, 30).await.unwrap();
    let acked = |rows: Vec<DeliveryRecord>, device: &str| {
        let row = rows.into_iter().find(|r| r.device == device).unwrap();
        (row.state, row.acked_ms)
    };
    let rows = store.deliveries(&inbox[0].id).await.unwrap();
    assert_eq!(acked(rows.clone(), "b1"), (DeliveryState::Acked, Some(30)));
    assert_eq!(
        acked(rows, "b2"),
        (DeliveryState::Sent, None),
        "other device"
    );
    let rows = store.deliveries(&inbox[1].id).await.unwrap();
    assert_eq!(acked(rows, "b1"), (DeliveryState::Acked, Some(30)));
    let rows = store.deliveries(&inbox[2].id).await.unwrap();
    assert_eq!(acked(rows, "b1"), (DeliveryState::Sent, None));

    // An ack time is kept: a later cursor move or resend does not change it.
    store.set_cursor("bob", "b1", 3, 40).await.unwrap();
    store.record_sent(sent(&inbox[0], "b1", "s4", 50));
    store.barrier().await.unwrap();
    let rows = store.deliveries(&inbox[0].id).await.unwrap();
    let row = rows.iter().find(|r| r.device == "b1").unwrap();
    assert_eq!(
        (row.state, row.acked_ms, row.attempts),
        (DeliveryState::Acked, Some(30), 3)
    );
    let rows = store.deliveries(&inbox[2].id).await.unwrap();
    assert_eq!(acked(rows, "b1"), (DeliveryState::Acked, Some(40)));
}

#[tokio::test]
async fn a_delivery_behind_the_cursor_reads_as_acked() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(dir.path());
    let m = stored(store.append(msg("inbox:bob", "alice", 1)).await.unwrap());
    // The device acknowledged first, the (re)send record landed after.
    store.set_cursor("bob", "b1", 1, 60).await.unwrap();
    store.record_sent(sent(&m, "b1", "s1", 70));
    store.barrier().await.unwrap();
    let rows = store.deliveries(&m.id).await.unwrap();
    assert_eq!(
        (rows[0].state, rows[0].acked_ms),
        (DeliveryState::Acked, Some(60))
    );
    assert!(store.deliveries("m_unknown").await.unwrap().is_empty());
}

/// Acks' cursor moves and sent ranges nobody waits on are held back and written together:
/// a cursor read sees a move at once (so the device's next session starts after it), the
/// trace's view (devices, deliveries) once it is durable, at the latest at a barrier.
#[tokio::test]
async fn unanswered_cursor_moves_are_seen_by_cursor_reads_at_once_and_durable_at_a_barrier() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(dir.path());
    let m = stored(store.append(msg("inbox:bob", "alice", 1)).await.unwrap());
    store.set_cursor("bob", "b1", 0, 5).await.unwrap();
    store.record_sent(sent(&m, "b1", "s1", 10));
    store.advance_cursor("bob", "b1", 1, 20);
    assert_eq!(store.cursor("bob", "b1").await.unwrap(), Some(1));
    store.barrier().await.unwrap();
    assert_eq!(store.devices("bob").await.unwrap()[0].offset, 1);
    let rows = store.deliveries(&m.id).await.unwrap();
    assert_eq!(
        (rows[0].state, rows[0].acked_ms),
        (DeliveryState::Acked, Some(20))
    );
    // Dropped without close: what was held back is written before the writer stops.
    store.advance_cursor("bob", "b1", 1, 30);
    let m2 = stored(store.append(msg("inbox:bob", "alice", 2)).await.unwrap());
    store.record_sent(sent(&m2, "b1", "s1", 40));
    drop(store);
    let (store, _) = open(dir.path());
    assert_eq!(store.deliveries(&m2.id).await.unwrap()[0].first_sent_ms, 40);
}

/// Sent records are ranges: consecutive sends of one session join, and a run longer than
/// `SENT_RANGE_MAX` is split, so every offset of it is still found.
#[tokio::test]
async fn sent_ranges_join_and_long_runs_are_split_but_every_offset_is_found() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(dir.path());
    let n = SENT_RANGE_MAX * 2 + 10;
    let mut ids = Vec::new();
    for ts in 1..=n {
        ids.push(
            stored(store.append(msg("inbox:bob", "alice", ts)).await.unwrap())
                .id
                .clone(),
        );
    }
    store.set_cursor("bob", "b1", 0, 1).await.unwrap();
    // One send of everything, then single-offset resends of the first ten.
    store.record_sent(SentRange {
        uid: "bob".into(),
        device: "b1".into(),
        session: "s1".into(),
        stream: "inbox:bob".into(),
        first: 1,
        last: n,
        ts: 100,
    });
    for o in 1..=10 {
        store.record_sent(SentRange {
            uid: "bob".into(),
            device: "b1".into(),
            session: "s2".into(),
            stream: "inbox:bob".into(),
            first: o,
            last: o,
            ts: 200,
        });
    }
    store.barrier().await.unwrap();
    for (i, expect) in [
        (0usize, 2u32),
        (9, 2),
        (10, 1),
        (n as usize - 1, 1),
        (1500, 1),
    ] {
        let rows = store.deliveries(&ids[i]).await.unwrap();
        assert_eq!(rows.len(), 1, "offset {}", i + 1);
        assert_eq!(rows[0].attempts, expect, "offset {}", i + 1);
        assert_eq!(rows[0].first_sent_ms, 100, "offset {}", i + 1);
    }
}
