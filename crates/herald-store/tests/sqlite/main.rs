//! Tests of the SQLite store against real database files. One test binary, one module per
//! concern.
// Tests fail by panicking; `unwrap` is how they say "this must work".
#![allow(clippy::unwrap_used)]

mod common;

mod cursors;
mod disk_full;
mod events;
mod idempotency;
mod offsets;
mod outbox;
mod props;
mod reopen;
mod retention;
