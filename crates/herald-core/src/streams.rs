//! Live view of the durable streams: the newest offset of each watched stream, a bounded tail
//! of its recent messages (so live fan-out never reads disk), and who to wake on a commit.
//!
//! Subscribers are cursors into the log, never queues: a reader that falls behind the tail
//! simply reads the store instead (see [`Fetch::NeedStore`]). Nothing here can drop a message.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use herald_protocol::encode_msg;
use herald_store::{CommitListener, StoredMessage, Trimmed};
use tokio::sync::Notify;

/// The name a client sees for a stream key: `inbox:<uid>` is its owner's `inbox`.
pub fn client_name(key: &str) -> &str {
    if key.starts_with("inbox:") {
        "inbox"
    } else {
        key
    }
}

/// A stored message with its `msg` frame encoded once for every recipient.
#[derive(Debug)]
pub struct Cached {
    pub msg: Arc<StoredMessage>,
    pub wire: String,
}

impl Cached {
    pub fn new(msg: Arc<StoredMessage>) -> Cached {
        let wire = encode_msg(
            client_name(&msg.stream),
            msg.offset,
            &msg.id,
            &msg.from,
            msg.ts,
            msg.body.raw(),
        );
        Cached { msg, wire }
    }
}

#[derive(Default)]
struct Entry {
    /// Newest committed offset known (from the store at first watch, then from commits).
    last: u64,
    /// `last` includes the store's view (not only commits seen since the entry was made).
    loaded: bool,
    /// Contiguous recent messages, oldest first.
    tail: VecDeque<Arc<Cached>>,
    /// Connections to wake when the stream grows.
    watchers: HashMap<u64, Arc<Notify>>,
}

/// What a reader positioned at `after` can get without touching the store.
#[derive(Debug)]
pub enum Fetch {
    /// The next messages, contiguous from `after + 1`.
    Ready(Vec<Arc<Cached>>),
    /// Nothing newer than `after`.
    CaughtUp,
    /// The range is older than the tail (or the stream is not loaded): read the store.
    NeedStore,
}

/// Registry of watched streams. Implements [`CommitListener`].
pub struct Streams {
    entries: Mutex<HashMap<String, Entry>>,
    tail_cap: usize,
}

impl Streams {
    pub fn new(tail_cap: usize) -> Arc<Streams> {
        Arc::new(Streams {
            entries: Mutex::new(HashMap::new()),
            tail_cap: tail_cap.max(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock leaves plain data behind; keep serving.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `notify` to be woken on commits to `key`. Returns whether the stream's
    /// `last` still needs loading from the store (then call [`Streams::loaded`]).
    pub fn watch(&self, key: &str, watcher: u64, notify: Arc<Notify>) -> bool {
        let mut g = self.lock();
        let e = g.entry(key.to_string()).or_default();
        e.watchers.insert(watcher, notify);
        !e.loaded
    }

    pub fn unwatch(&self, key: &str, watcher: u64) {
        let mut g = self.lock();
        if let Some(e) = g.get_mut(key) {
            e.watchers.remove(&watcher);
            if e.watchers.is_empty() {
                g.remove(key);
            }
        }
    }

    /// Merges the store's newest offset into a watched stream.
    pub fn loaded(&self, key: &str, store_last: u64) {
        let mut g = self.lock();
        if let Some(e) = g.get_mut(key) {
            e.last = e.last.max(store_last);
            e.loaded = true;
        }
    }

    /// The newest offset known for a watched, loaded stream.
    pub fn last(&self, key: &str) -> Option<u64> {
        let g = self.lock();
        g.get(key).filter(|e| e.loaded).map(|e| e.last)
    }

    /// Retention moved the oldest retained offset of `key` to `first`: forget the older
    /// cached messages, so readers behind `first` read the store and are told about the gap.
    pub fn trimmed(&self, key: &str, first: u64) {
        let mut g = self.lock();
        if let Some(e) = g.get_mut(key) {
            while e.tail.front().is_some_and(|c| c.msg.offset < first) {
                e.tail.pop_front();
            }
        }
    }

    /// Up to `limit` messages after `after`, from memory.
    pub fn fetch(&self, key: &str, after: u64, limit: usize) -> Fetch {
        let g = self.lock();
        let Some(e) = g.get(key) else {
            return Fetch::NeedStore;
        };
        if e.loaded && after >= e.last {
            return Fetch::CaughtUp;
        }
        let Some(front) = e.tail.front() else {
            return Fetch::NeedStore;
        };
        let first = front.msg.offset;
        if after + 1 < first {
            return Fetch::NeedStore;
        }
        let skip = (after + 1 - first) as usize;
        if skip >= e.tail.len() {
            return if e.loaded {
                Fetch::CaughtUp
            } else {
                Fetch::NeedStore
            };
        }
        Fetch::Ready(e.tail.iter().skip(skip).take(limit).cloned().collect())
    }
}

impl CommitListener for Streams {
    /// Appends a committed batch to the watched tails and wakes each watcher of a grown
    /// stream once per batch. The `msg` frames are encoded outside the lock, once per message
    /// for every recipient.
    fn committed(&self, messages: &[Arc<StoredMessage>]) {
        let watched: Vec<bool> = {
            let g = self.lock();
            messages.iter().map(|m| g.contains_key(&m.stream)).collect()
        };
        let cached: Vec<Option<Arc<Cached>>> = messages
            .iter()
            .zip(watched)
            .map(|(m, w)| w.then(|| Arc::new(Cached::new(m.clone()))))
            .collect();
        let mut wake: Vec<Arc<Notify>> = Vec::new();
        {
            let mut g = self.lock();
            let mut grown: HashSet<&str> = HashSet::new();
            for (m, c) in messages.iter().zip(cached) {
                let Some(e) = g.get_mut(&m.stream) else {
                    continue;
                };
                e.last = e.last.max(m.offset);
                let contiguous = e.tail.back().is_none_or(|b| b.msg.offset + 1 == m.offset);
                match c {
                    Some(c) if contiguous => e.tail.push_back(c),
                    Some(c) => {
                        e.tail.clear();
                        e.tail.push_back(c);
                    }
                    // Watched only since the encoding above: readers load it from the store.
                    None => e.tail.clear(),
                }
                while e.tail.len() > self.tail_cap {
                    e.tail.pop_front();
                }
                grown.insert(&m.stream);
            }
            for stream in grown {
                if let Some(e) = g.get(stream) {
                    wake.extend(e.watchers.values().cloned());
                }
            }
        }
        for n in wake {
            n.notify_one();
        }
    }

    fn trimmed(&self, streams: &[Trimmed]) {
        for t in streams {
            Streams::trimmed(self, &t.stream, t.first);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocol::Body;

    fn msg(stream: &str, offset: u64) -> Arc<StoredMessage> {
        Arc::new(StoredMessage {
            stream: stream.into(),
            offset,
            id: format!("m_{offset}"),
            from: "a".into(),
            ts: 1,
            body: Body::from_json("1".into()).unwrap(),
            receipt: false,
        })
    }

    #[test]
    fn tail_serves_contiguous_ranges_and_falls_back_to_store() {
        let s = Streams::new(3);
        let n = Arc::new(Notify::new());
        assert!(s.watch("chan:a", 1, n.clone()));
        s.loaded("chan:a", 0);
        assert!(matches!(s.fetch("chan:a", 0, 10), Fetch::CaughtUp));
        s.committed(&[
            msg("chan:a", 1),
            msg("chan:a", 2),
            msg("chan:a", 3),
            msg("chan:a", 4),
        ]);
        // Tail holds 2..=4; offset 1 is only in the store.
        assert!(matches!(s.fetch("chan:a", 0, 10), Fetch::NeedStore));
        match s.fetch("chan:a", 1, 10) {
            Fetch::Ready(v) => assert_eq!(
                v.iter().map(|c| c.msg.offset).collect::<Vec<_>>(),
                [2, 3, 4]
            ),
            other => panic!("{other:?}"),
        }
        match s.fetch("chan:a", 2, 1) {
            Fetch::Ready(v) => assert_eq!(v[0].msg.offset, 3),
            other => panic!("{other:?}"),
        }
        assert!(matches!(s.fetch("chan:a", 4, 10), Fetch::CaughtUp));
        assert_eq!(s.last("chan:a"), Some(4));
    }

    #[test]
    fn trimmed_messages_are_not_served_from_the_tail() {
        let s = Streams::new(10);
        s.watch("chan:a", 1, Arc::new(Notify::new()));
        s.loaded("chan:a", 0);
        s.committed(&[msg("chan:a", 1), msg("chan:a", 2), msg("chan:a", 3)]);
        s.trimmed("chan:a", 3);
        assert!(matches!(s.fetch("chan:a", 0, 10), Fetch::NeedStore));
        match s.fetch("chan:a", 2, 10) {
            Fetch::Ready(v) => assert_eq!(v[0].msg.offset, 3),
            other => panic!("{other:?}"),
        }
        s.trimmed("chan:a", 4);
        assert!(matches!(s.fetch("chan:a", 0, 10), Fetch::NeedStore));
        assert!(matches!(s.fetch("chan:a", 3, 10), Fetch::CaughtUp));
    }

    #[test]
    fn inbox_frames_name_the_inbox() {
        let c = Cached::new(msg("inbox:bob", 7));
        assert!(
            c.wire.starts_with(r#"{"t":"msg","s":"inbox","o":7"#),
            "{}",
            c.wire
        );
    }

    #[test]
    fn unwatched_streams_keep_nothing() {
        let s = Streams::new(3);
        s.committed(&[msg("chan:x", 1)]);
        assert!(matches!(s.fetch("chan:x", 0, 1), Fetch::NeedStore));
        let n = Arc::new(Notify::new());
        s.watch("chan:x", 1, n);
        s.unwatch("chan:x", 1);
        assert_eq!(s.last("chan:x"), None);
    }
}
