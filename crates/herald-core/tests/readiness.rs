//! Readiness follows whether messages can be stored: a failed append makes the engine
//! unready until an append succeeds again, whatever other writes do in between.

use std::sync::Arc;

use herald_core::{Engine, EngineConfig, Streams, SystemClock};
use herald_protocol::{Body, Target};
use herald_store::sqlite::{SqliteConfig, SqliteStore};
use herald_store::{Durability, Retention};

#[tokio::test]
async fn unready_after_a_failed_append_until_one_succeeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let streams = Streams::new(16);
    let mut sc = SqliteConfig::new(dir.path().join("herald.db"));
    sc.durability = Durability::Os;
    sc.max_db_bytes = Some(192 * 1024);
    let store = SqliteStore::open(sc, streams.clone()).expect("open");
    let engine = Engine::start(
        EngineConfig::default(),
        Arc::new(store),
        streams,
        Arc::new(SystemClock),
    )
    .await
    .expect("engine");
    assert_eq!(engine.ready(), Ok(()));
    let chan = Target::Chan("big".into());
    let body = || Body::from_json(format!("\"{}\"", "x".repeat(4000))).expect("json");
    let mut stored = 0;
    while engine.publish("ann", &chan, body(), None).await.is_ok() {
        stored += 1;
        assert!(stored < 1000, "the quota never filled");
    }
    assert!(stored > 0);
    let reason = engine.ready().expect_err("unready while appends fail");
    assert!(reason.contains("messages cannot be stored"), "{reason}");

    // A write that is not an append succeeding (trimming nothing) changes nothing.
    let keep_all = Retention {
        channel_max_messages: 0,
        channel_max_age_ms: 0,
        inbox_max_age_ms: 0,
        dedupe_window_ms: 0,
        tombstone_ms: 0,
    };
    engine
        .store()
        .trim(engine.now_ms(), &keep_all)
        .await
        .expect("trim");
    assert!(engine.ready().is_err(), "still unable to store messages");

    // Make room, then a successful append makes the engine ready again.
    let keep_two = Retention {
        channel_max_messages: 2,
        ..keep_all
    };
    engine
        .store()
        .trim(engine.now_ms(), &keep_two)
        .await
        .expect("trim");
    engine
        .publish("ann", &chan, body(), None)
        .await
        .expect("room was made");
    assert_eq!(engine.ready(), Ok(()));
}
