//! Property: whatever mix of appends (with and without idempotency keys), trims and reopens,
//! each stream's retained offsets are exactly `first..=last`, every append gets `last + 1`,
//! nothing but retention removes a message, a channel's count cap holds after every append,
//! and an idempotency key is matched exactly while its dedupe window lasts (also after its
//! message was trimmed). Checked against a plain in-memory model.

use std::collections::{BTreeMap, VecDeque};

use herald_store::sqlite::SqliteStore;
use herald_store::*;
use proptest::prelude::*;
use tempfile::TempDir;

use crate::common::*;

const STREAMS: [&str; 3] = ["chan:p", "chan:q", "inbox:r"];
const SENDERS: [&str; 2] = ["alice", "bob"];
/// Time advances by this much per operation.
const TICK: u64 = 10;

#[derive(Debug, Clone)]
enum Op {
    Append {
        stream: usize,
        sender: usize,
        key: Option<u8>,
    },
    Trim {
        max_messages: u64,
        max_age_ticks: u64,
        dedupe_ticks: u64,
    },
    Reopen {
        close: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..STREAMS.len(), 0..SENDERS.len(), proptest::option::of(0u8..4))
            .prop_map(|(stream, sender, key)| Op::Append { stream, sender, key }),
        2 => (0u64..4, 0u64..8, 0u64..10).prop_map(|(max_messages, max_age_ticks, dedupe_ticks)| {
            Op::Trim { max_messages, max_age_ticks, dedupe_ticks }
        }),
        1 => any::<bool>().prop_map(|close| Op::Reopen { close }),
    ]
}

/// What the store should hold.
#[derive(Default)]
struct Model {
    /// Per stream: last offset ever assigned.
    last: BTreeMap<&'static str, u64>,
    /// Per stream: retained (offset, ts), oldest first.
    retained: BTreeMap<&'static str, VecDeque<(u64, u64)>>,
    /// (sender, key) → the newest original: (stream, offset, ts, still retained).
    keys: BTreeMap<(usize, u8), (&'static str, u64, u64, bool)>,
    /// The rules in force at append time: those of the last trim since the store was
    /// (re)opened (the test opens it without any).
    policy: Retention,
}

impl Model {
    /// The original of (sender, key) at `now`, if the dedupe window still covers it.
    fn original(&self, sender: usize, key: u8, now: u64) -> Option<(&'static str, u64)> {
        let window = self.policy.dedupe_window_ms;
        self.keys
            .get(&(sender, key))
            .filter(|&&(_, _, ts, _)| window == 0 || ts + window >= now)
            .map(|&(s, o, _, _)| (s, o))
    }

    /// Drops the oldest retained messages of `stream` while `drop` says so; their keys move
    /// to the trimmed-keys table.
    fn drop_front(&mut self, stream: &'static str, mut drop: impl FnMut(usize, u64) -> bool) {
        let Some(kept) = self.retained.get_mut(stream) else {
            return;
        };
        while let Some(&(offset, ts)) = kept.front() {
            if !drop(kept.len(), ts) {
                break;
            }
            kept.pop_front();
            for v in self.keys.values_mut() {
                if v.0 == stream && v.1 == offset {
                    v.3 = false;
                }
            }
        }
    }

    fn cap(&mut self, stream: &'static str) {
        let max = self.policy.channel_max_messages;
        if stream.starts_with("chan:") && max > 0 {
            self.drop_front(stream, |len, _| len as u64 > max);
        }
    }

    fn trim(&mut self, now: u64, policy: &Retention) {
        self.policy = *policy;
        for stream in STREAMS {
            self.cap(stream);
            let max_age = if stream.starts_with("chan:") {
                policy.channel_max_age_ms
            } else {
                policy.inbox_max_age_ms
            };
            if max_age > 0 {
                let cutoff = now.saturating_sub(max_age);
                self.drop_front(stream, |_, ts| ts < cutoff);
            }
        }
        if policy.dedupe_window_ms > 0 {
            let cutoff = now.saturating_sub(policy.dedupe_window_ms);
            self.keys
                .retain(|_, &mut (_, _, ts, retained)| retained || ts >= cutoff);
        }
    }
}

async fn check(store: &SqliteStore, model: &Model) {
    for stream in STREAMS {
        let last = model.last.get(stream).copied().unwrap_or(0);
        let kept: Vec<u64> = model
            .retained
            .get(stream)
            .map(|k| k.iter().map(|&(o, _)| o).collect())
            .unwrap_or_default();
        let bounds = store.bounds(stream).await.unwrap();
        assert_eq!(bounds.last, last, "{stream} last");
        let first = kept.first().copied().unwrap_or(last + 1);
        assert_eq!(bounds.first, first, "{stream} first");
        let read = offsets(&all(store, stream).await);
        assert_eq!(
            read,
            (bounds.first..=bounds.last).collect::<Vec<_>>(),
            "{stream} contiguous"
        );
        assert_eq!(read, kept, "{stream} retained");
    }
}

async fn run(ops: Vec<Op>) {
    let dir = TempDir::new().unwrap();
    let (mut store, _) = open(dir.path());
    let mut model = Model::default();
    let mut now = 0;
    for op in ops {
        now += TICK;
        match op {
            Op::Append {
                stream,
                sender,
                key,
            } => {
                let stream = STREAMS[stream];
                let mut m = msg(stream, SENDERS[sender], now);
                m.idem = key.map(|k| format!("key{k}"));
                let outcome = store.append(m).await.unwrap();
                match key.and_then(|k| model.original(sender, k, now)) {
                    Some((s, o)) => match outcome {
                        AppendOutcome::Duplicate { stream, offset, .. } => {
                            assert_eq!((stream.as_str(), offset), (s, o));
                        }
                        AppendOutcome::Stored(m) => panic!("stored a duplicate: {m:?}"),
                    },
                    None => {
                        let m = stored(outcome);
                        let last = model.last.entry(stream).or_insert(0);
                        assert_eq!(m.offset, *last + 1, "{stream}: offset not last + 1");
                        *last = m.offset;
                        model
                            .retained
                            .entry(stream)
                            .or_default()
                            .push_back((m.offset, now));
                        if let Some(k) = key {
                            model
                                .keys
                                .insert((sender, k), (stream, m.offset, now, true));
                        }
                        model.cap(stream);
                    }
                }
            }
            Op::Trim {
                max_messages,
                max_age_ticks,
                dedupe_ticks,
            } => {
                let policy = Retention {
                    channel_max_messages: max_messages,
                    channel_max_age_ms: max_age_ticks * TICK,
                    inbox_max_age_ms: max_age_ticks * TICK * 2,
                    dedupe_window_ms: dedupe_ticks * TICK,
                    tombstone_ms: 0,
                };
                store.trim(now, &policy).await.unwrap();
                model.trim(now, &policy);
                check(&store, &model).await;
            }
            Op::Reopen { close } => {
                if close {
                    store.close().await.unwrap();
                }
                drop(store);
                store = open(dir.path()).0;
                model.policy = Retention::default();
                check(&store, &model).await;
            }
        }
    }
    check(&store, &model).await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn offsets_stay_contiguous_and_are_never_reused(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops));
    }
}
