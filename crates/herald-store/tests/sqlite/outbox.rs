//! The webhook outbox: rows written with their event, due/failed/delivered, kept across a
//! reopen, untouched by retention.

use herald_store::*;
use tempfile::TempDir;

use crate::common::*;

fn event(ts: u64, kind: &str) -> NewEvent {
    NewEvent {
        ts,
        kind: kind.into(),
        uid: Some("alice".into()),
        device: Some("p1".into()),
        session: None,
        conn: None,
        data: serde_json::json!({"reason": "replaced"}),
    }
}

const A: &str = "http://127.0.0.1:1/a";
const B: &str = "http://127.0.0.1:1/b";

#[tokio::test]
async fn an_event_and_its_deliveries_are_one_commit_and_the_body_is_the_feed_item() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(dir.path());
    let plain = store.append_event(event(100, "gap")).await.unwrap();
    let e = store
        .append_event_with_outbox(event(200, "eviction"), vec![A.into(), B.into()])
        .await
        .unwrap();
    assert!(e.id > plain.id);

    let due = store.due_deliveries(200, 10).await.unwrap();
    assert_eq!(due.len(), 2, "one row per target, none for the plain event");
    let targets: Vec<&str> = due.iter().map(|d| d.target.as_str()).collect();
    assert_eq!(targets, [A, B]);
    for d in &due {
        assert_eq!(d.event_id, e.id);
        assert_eq!(d.kind, "eviction");
        assert_eq!(d.created_ms, 200);
        assert_eq!(d.attempts, 0);
        assert_eq!(d.next_attempt_ms, 200);
        assert_eq!(d.last_error, None);
        let body: Event = serde_json::from_str(&d.body).unwrap();
        assert_eq!(body, e);
        let feed = store
            .events(&EventQuery {
                after_id: Some(plain.id),
                ..EventQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(
            serde_json::to_value(&feed[0]).unwrap(),
            serde_json::from_str::<serde_json::Value>(&d.body).unwrap()
        );
    }
    assert!(store.due_deliveries(199, 10).await.unwrap().is_empty());
    assert_eq!(
        store.outbox_status().await.unwrap(),
        OutboxStatus {
            pending: 2,
            next_attempt_ms: Some(200)
        }
    );
}

#[tokio::test]
async fn failures_defer_and_count_and_delivery_removes() {
    let dir = TempDir::new().unwrap();
    let (store, _) = open(dir.path());
    store
        .append_event_with_outbox(event(100, "eviction"), vec![A.into(), B.into()])
        .await
        .unwrap();
    let due = store.due_deliveries(100, 10).await.unwrap();
    let (a, b) = (&due[0], &due[1]);

    assert_eq!(store.mark_failed(a.id, 500, "HTTP 500").await.unwrap(), 1);
    assert_eq!(store.mark_failed(a.id, 900, "refused").await.unwrap(), 2);
    let now_due = store.due_deliveries(600, 10).await.unwrap();
    assert_eq!(now_due.len(), 1);
    assert_eq!(now_due[0].id, b.id, "a is deferred to 900");
    assert_eq!(
        store.outbox_status().await.unwrap(),
        OutboxStatus {
            pending: 2,
            next_attempt_ms: Some(100)
        }
    );

    store.mark_delivered(b.id).await.unwrap();
    let later = store.due_deliveries(1000, 10).await.unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].id, a.id);
    assert_eq!(later[0].attempts, 2);
    assert_eq!(later[0].last_error.as_deref(), Some("refused"));
    assert_eq!(
        store.outbox_status().await.unwrap(),
        OutboxStatus {
            pending: 1,
            next_attempt_ms: Some(900)
        }
    );

    store.drop_delivery(a.id).await.unwrap();
    assert_eq!(
        store.outbox_status().await.unwrap(),
        OutboxStatus::default()
    );
    assert_eq!(
        store.mark_failed(a.id, 1, "gone").await.unwrap(),
        0,
        "a removed delivery is not revived"
    );
    assert!(store.due_deliveries(u64::MAX, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn pending_deliveries_survive_a_reopen_and_retention() {
    let dir = TempDir::new().unwrap();
    let id = {
        let (store, _) = open(dir.path());
        let e = store
            .append_event_with_outbox(event(100, "kick"), vec![A.into()])
            .await
            .unwrap();
        let d = store.due_deliveries(100, 10).await.unwrap();
        store.mark_failed(d[0].id, 150, "down").await.unwrap();
        // Not closed: like a crash, the WAL holds the commits.
        drop(store);
        e.id
    };
    let (store, _) = open(dir.path());
    // Events expire after 1 ms: the event goes, its delivery stays.
    let policy = Retention {
        tombstone_ms: 1,
        ..keep_all()
    };
    store.trim(10_000, &policy).await.unwrap();
    assert!(store
        .events(&EventQuery::default())
        .await
        .unwrap()
        .is_empty());
    let due = store.due_deliveries(150, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].event_id, id);
    assert_eq!(due[0].attempts, 1);
    let body: Event = serde_json::from_str(&due[0].body).unwrap();
    assert_eq!(body.id, id);
    assert_eq!(body.event.kind, "kick");
}
