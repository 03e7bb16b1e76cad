//! Store errors say whether anything became durable: none of them leaves a partial write.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    /// The write could not be made durable (disk full, I/O error). Nothing of it was kept:
    /// it is safe to retry, and nothing may be acknowledged.
    #[error("storage unavailable, nothing was made durable: {0}")]
    Unavailable(String),
    /// The store has been closed (shutdown in progress).
    #[error("store is closed")]
    Closed,
    /// Stored data could not be decoded: a bug or on-disk corruption.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}
