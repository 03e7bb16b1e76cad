//! Per-stream dedupe of deliveries: drop every offset at or below the last one handed on.

use std::collections::HashMap;

/// The highest offset handed to the application per stream.
#[derive(Debug, Default, Clone)]
pub(crate) struct Dedupe {
    last: HashMap<String, u64>,
}

impl Dedupe {
    /// True if `(s, o)` is new: then it is recorded as the stream's last offset.
    pub(crate) fn accept(&mut self, s: &str, o: u64) -> bool {
        match self.last.get_mut(s) {
            Some(last) if o <= *last => false,
            Some(last) => {
                *last = o;
                true
            }
            None => {
                self.last.insert(s.to_string(), o);
                true
            }
        }
    }

    /// True if a gap `from..=to` is new (not already announced or passed).
    pub(crate) fn accept_gap(&mut self, s: &str, to: u64) -> bool {
        self.accept(s, to)
    }

    pub(crate) fn last(&self, s: &str) -> Option<u64> {
        self.last.get(s).copied()
    }

    /// Forget a stream's position, so that a replay the app asked for is handed on again.
    pub(crate) fn set(&mut self, s: &str, o: u64) {
        self.last.insert(s.to_string(), o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redelivered_offsets_are_dropped_per_stream() {
        let mut d = Dedupe::default();
        assert!(d.accept("inbox", 1));
        assert!(d.accept("inbox", 2));
        assert!(!d.accept("inbox", 2), "same offset again");
        assert!(!d.accept("inbox", 1), "older offset after a resume");
        assert!(d.accept("chan:a", 1), "streams are independent");
        assert!(
            d.accept("inbox", 5),
            "a later offset passes even after a hole"
        );
        assert_eq!(d.last("inbox"), Some(5));
        assert_eq!(d.last("chan:b"), None);
    }

    #[test]
    fn a_gap_moves_the_position_and_is_announced_once() {
        let mut d = Dedupe::default();
        assert!(d.accept("chan:a", 3));
        assert!(d.accept_gap("chan:a", 9));
        assert!(!d.accept_gap("chan:a", 9), "the same gap after a resume");
        assert!(!d.accept("chan:a", 8), "offsets inside the gap are behind");
        assert!(d.accept("chan:a", 10));
        d.set("chan:a", 2);
        assert!(
            d.accept("chan:a", 3),
            "an explicit replay is handed on again"
        );
    }
}
