//! `herald events [--follow]`: GET /v1/events, one line per event.
//!
//! Following polls `GET /v1/events?after=<last id>` every second. The API answers the FIRST
//! `limit` events after `after`, oldest first, so a follower pages forward and never skips an
//! event, however many arrive between two polls.

use std::time::Duration;

use serde_json::Value;

use super::api::Api;
use super::render::event_line;
use super::{emit, items, CliError};
use crate::cli::EventsArgs;

/// Pause between two polls of a follower.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// Events a follower asks for per poll (the API's maximum).
const FOLLOW_PAGE: u64 = 1000;

pub(crate) async fn run(a: EventsArgs, now_ms: u64) -> Result<(), CliError> {
    let api = Api::new(&a.server)?;
    let mut filters: Vec<(&str, String)> = Vec::new();
    if let Some(kind) = &a.kind {
        filters.push(("type", kind.clone()));
    }
    if let Some(uid) = &a.uid {
        filters.push(("uid", uid.clone()));
    }
    if let Some(since) = a.since {
        filters.push(("since", since.resolve(now_ms).to_string()));
    }
    let mut q = filters.clone();
    if let Some(limit) = a.limit {
        q.push(("limit", limit.to_string()));
    }
    // The newest `limit` matching events, oldest first.
    let raw = api.get(&["v1", "events"], &q).await?;
    if a.json && !a.follow {
        return emit(&raw);
    }
    let first = items(&api, &api.json(&raw)?)?;
    if first.is_empty() && !a.follow {
        return emit("no events match");
    }
    let mut last = print(&first, a.json, 0)?;
    if !a.follow {
        return Ok(());
    }
    let mut failing = false;
    loop {
        tokio::time::sleep(POLL_EVERY).await;
        let mut q = filters.clone();
        q.push(("after", last.to_string()));
        q.push(("limit", FOLLOW_PAGE.to_string()));
        let page = match api.get(&["v1", "events"], &q).await {
            Ok(raw) => items(&api, &api.json(&raw)?)?,
            // A restart of the server is not the end of a follow: say so once, keep polling.
            Err(e @ CliError::Unreachable { .. }) => {
                if !failing {
                    eprintln!("herald: {e}; still trying");
                    failing = true;
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        if failing {
            eprintln!("herald: the server answers again");
            failing = false;
        }
        last = print(&page, a.json, last)?;
    }
}

/// Prints `events`; returns the highest event id seen (at least `last`).
fn print(events: &[Value], json: bool, mut last: u64) -> Result<u64, CliError> {
    for e in events {
        let line = if json { e.to_string() } else { event_line(e) };
        emit(&line)?;
        if let Some(id) = e.get("id").and_then(Value::as_u64) {
            last = last.max(id);
        }
    }
    Ok(last)
}
