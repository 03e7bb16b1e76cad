//! The shutdown tree: one signal, connection tasks tracked so shutdown can wait for them
//! (axum does not wait for upgraded WebSocket tasks), and a deadline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

/// Counts live connection tasks.
#[derive(Clone, Default)]
pub(crate) struct Tracker {
    inner: Arc<TrackerInner>,
}

#[derive(Default)]
struct TrackerInner {
    live: AtomicUsize,
    idle: Notify,
}

/// Held by a connection task for its whole life.
pub(crate) struct TrackGuard(Arc<TrackerInner>);

impl Tracker {
    pub(crate) fn track(&self) -> TrackGuard {
        self.inner.live.fetch_add(1, Ordering::SeqCst);
        TrackGuard(self.inner.clone())
    }

    pub(crate) fn live(&self) -> usize {
        self.inner.live.load(Ordering::SeqCst)
    }

    /// Waits until no tracked task is left, or `deadline` passes. Returns how many remain.
    pub(crate) async fn drain(&self, deadline: Duration) -> usize {
        let wait = async {
            loop {
                let idle = self.inner.idle.notified();
                if self.live() == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(deadline, wait).await;
        self.live()
    }
}

impl Drop for TrackGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Fires once when shutdown begins.
#[derive(Clone)]
pub(crate) struct ShutdownSignal(watch::Receiver<bool>);

pub(crate) fn channel() -> (watch::Sender<bool>, ShutdownSignal) {
    let (tx, rx) = watch::channel(false);
    (tx, ShutdownSignal(rx))
}

impl ShutdownSignal {
    pub(crate) async fn wait(&mut self) {
        let _ = self.0.wait_for(|v| *v).await;
    }
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn os_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_guards_then_deadline() {
        let t = Tracker::default();
        let g = t.track();
        assert_eq!(t.drain(Duration::from_millis(10)).await, 1);
        let t2 = t.clone();
        let waiter = tokio::spawn(async move { t2.drain(Duration::from_secs(60)).await });
        drop(g);
        assert_eq!(waiter.await.unwrap(), 0);
    }
}
