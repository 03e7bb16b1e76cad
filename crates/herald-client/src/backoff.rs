//! Reconnect strategies: how long to wait before reconnect attempt N.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

type DelayFn = dyn Fn(u32) -> Duration + Send + Sync;

/// How long the client waits before each reconnect attempt.
///
/// `attempt` starts at 1 for the first attempt after a disconnect and grows by one per failed
/// attempt; it goes back to 1 once a connection is established.
#[derive(Clone)]
pub struct ReconnectStrategy(Kind);

#[derive(Clone)]
enum Kind {
    Backoff { min: Duration, max: Duration },
    Fixed(Duration),
    Custom(Arc<DelayFn>),
}

impl ReconnectStrategy {
    /// Exponential backoff with full jitter: attempt `n` waits a uniformly random time in
    /// `[0, min(max, min * 2^(n-1))]`.
    pub fn exponential(min: Duration, max: Duration) -> Self {
        ReconnectStrategy(Kind::Backoff {
            min,
            max: max.max(min),
        })
    }

    /// The same delay before every attempt (Diffusion's `fixed(5 s)`).
    pub fn fixed(delay: Duration) -> Self {
        ReconnectStrategy(Kind::Fixed(delay))
    }

    /// Any policy: `f(attempt)` returns the delay before that attempt.
    pub fn custom(f: impl Fn(u32) -> Duration + Send + Sync + 'static) -> Self {
        ReconnectStrategy(Kind::Custom(Arc::new(f)))
    }

    /// The upper bound of the backoff before attempt `attempt` (no jitter applied).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        match &self.0 {
            Kind::Backoff { min, max } => {
                let shift = attempt.saturating_sub(1).min(30);
                let ceil = min.saturating_mul(1u32 << shift);
                ceil.min(*max)
            }
            Kind::Fixed(d) => *d,
            Kind::Custom(f) => f(attempt),
        }
    }

    /// The delay before attempt `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        match &self.0 {
            Kind::Backoff { .. } => {
                let ceil = self.ceiling(attempt).as_millis() as u64;
                Duration::from_millis(rand::rng().random_range(0..=ceil))
            }
            _ => self.ceiling(attempt),
        }
    }
}

impl Default for ReconnectStrategy {
    /// Exponential backoff with full jitter from 100 ms up to 5 s.
    fn default() -> Self {
        ReconnectStrategy::exponential(Duration::from_millis(100), Duration::from_secs(5))
    }
}

impl fmt::Debug for ReconnectStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Backoff { min, max } => write!(f, "Exponential({min:?}..{max:?}, full jitter)"),
            Kind::Fixed(d) => write!(f, "Fixed({d:?})"),
            Kind::Custom(_) => write!(f, "Custom"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_backoff_grows_from_100ms_and_caps_at_5s() {
        let s = ReconnectStrategy::default();
        assert_eq!(s.ceiling(1), Duration::from_millis(100));
        assert_eq!(s.ceiling(2), Duration::from_millis(200));
        assert_eq!(s.ceiling(4), Duration::from_millis(800));
        assert_eq!(s.ceiling(7), Duration::from_secs(5));
        assert_eq!(s.ceiling(1000), Duration::from_secs(5));
    }

    #[test]
    fn full_jitter_stays_within_zero_and_the_ceiling_and_varies() {
        let s = ReconnectStrategy::default();
        let mut seen = std::collections::HashSet::new();
        for attempt in 1..=12 {
            for _ in 0..200 {
                let d = s.delay(attempt);
                assert!(d <= s.ceiling(attempt), "{d:?} > ceiling at {attempt}");
                seen.insert(d);
            }
        }
        assert!(
            seen.len() > 50,
            "jitter must spread delays, saw {}",
            seen.len()
        );
    }

    #[test]
    fn fixed_and_custom_strategies_return_what_they_say() {
        let f = ReconnectStrategy::fixed(Duration::from_secs(5));
        assert_eq!(f.delay(1), Duration::from_secs(5));
        assert_eq!(f.delay(9), Duration::from_secs(5));
        let c = ReconnectStrategy::custom(|n| Duration::from_millis(u64::from(n) * 10));
        assert_eq!(c.delay(3), Duration::from_millis(30));
    }
}
