//! Per-uid quotas shared by all of a uid's connections: publishes per second, and new
//! sessions per minute. Each is a token bucket per uid (refilling at the configured rate, as
//! deep as one period's allowance); 0 disables a quota. Time comes in as an argument.
//!
//! Buckets of uids that have fully refilled carry no information and are dropped when the map
//! grows, so memory follows the number of recently active uids.

use std::collections::HashMap;
use std::sync::Mutex;

/// Buckets kept before full ones are dropped.
const PRUNE_AT: usize = 4096;

/// One quota: `per_period` events per `period_ms` per uid.
pub(crate) struct UidQuota {
    per_period: u32,
    period_ms: u64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl UidQuota {
    pub(crate) fn new(per_period: u32, period_ms: u64) -> UidQuota {
        UidQuota {
            per_period,
            period_ms: period_ms.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one event for `uid` at `now_ms`; false when the uid is over its quota (nothing
    /// is taken then).
    pub(crate) fn take(&self, uid: &str, now_ms: u64) -> bool {
        if self.per_period == 0 {
            return true;
        }
        let cap = f64::from(self.per_period);
        let rate = cap / self.period_ms as f64;
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= PRUNE_AT {
            map.retain(|_, b| b.tokens + now_ms.saturating_sub(b.at_ms) as f64 * rate < cap);
        }
        let b = map.entry(uid.to_string()).or_insert(Bucket {
            tokens: cap,
            at_ms: now_ms,
        });
        b.tokens = (b.tokens + now_ms.saturating_sub(b.at_ms) as f64 * rate).min(cap);
        b.at_ms = b.at_ms.max(now_ms);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The engine's per-uid quotas.
pub(crate) struct Quotas {
    /// `limits.publishes_per_uid_per_sec`.
    pub(crate) publish: UidQuota,
    /// `limits.sessions_per_uid_per_min`.
    pub(crate) new_session: UidQuota,
}

impl Quotas {
    pub(crate) fn new(cfg: &crate::config::EngineConfig) -> Quotas {
        Quotas {
            publish: UidQuota::new(cfg.publishes_per_uid_per_sec, 1000),
            new_session: UidQuota::new(cfg.sessions_per_uid_per_min, 60_000),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_at_the_rate_per_uid() {
        let q = UidQuota::new(2, 1000);
        assert!(q.take("a", 0) && q.take("a", 0));
        assert!(!q.take("a", 0), "a third in the same instant is over");
        assert!(q.take("b", 0), "another uid has its own bucket");
        assert!(!q.take("a", 400));
        assert!(q.take("a", 500), "half a period refills one");
        assert!(!q.take("a", 500));
        assert!(
            q.take("a", 10_000) && q.take("a", 10_000) && !q.take("a", 10_000),
            "capped"
        );
        let off = UidQuota::new(0, 1000);
        assert!((0..10_000).all(|_| off.take("a", 0)));
    }
}
