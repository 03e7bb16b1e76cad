//! `GET /v1/events/stream`: the event feed as Server-Sent Events.
//!
//! Each event is one SSE message: `id:` the event id, `event:` its kind, `data:` the event as
//! JSON (the same object as an item of `GET /v1/events`). A client that reconnects with
//! `Last-Event-ID` (browsers do it by themselves) or `?after=<id>` first gets the stored events
//! after that id, then live ones, each once and in id order (see
//! [`herald_core::follow::EventFollower`]). Without either it gets events recorded from now on.
//! If a range could not be read from the store, an `event: lagged` message (no `id:`) names
//! it: `{"after":…, "until":…|null, "reason":…, "fetch":"/v1/events?after=…"}`. Comments are
//! sent every `api.events_heartbeat_ms` while nothing flows, so proxies keep it open. The
//! stream ends when the server shuts down.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::IntoResponse;
use herald_core::follow::{EventFilter, FeedItem};
use herald_protocol::ErrorCode;
use serde_json::json;

use super::{num, ApiError, ApiResult};
use crate::app::App;

/// `GET /v1/events/stream?type=&uid=&after=` (and the `Last-Event-ID` header).
pub(crate) async fn events_stream(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let after = match last_event_id(&headers)? {
        Some(id) => Some(id),
        None => num(&q, "after")?,
    };
    let filter = EventFilter {
        kind: q.get("type").cloned(),
        uid: q.get("uid").cloned(),
    };
    // Subscribed to live events before this returns: nothing recorded after the response
    // headers are sent is missed.
    let follower = app.engine.follow_events(filter, after).await?;
    let stop = app.shutdown.clone();
    let stream = futures_util::stream::unfold((follower, stop), |(mut f, mut stop)| async move {
        let item = tokio::select! {
            item = f.next() => item?,
            _ = stop.wait() => return None,
        };
        Some((Ok::<_, Infallible>(sse_message(item)), (f, stop)))
    });
    let heartbeat = Duration::from_millis(app.cfg.api.events_heartbeat_ms);
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(heartbeat).text("heartbeat"))
        .into_response();
    // Reverse proxies (nginx) must not buffer the stream.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The `Last-Event-ID` header as an event id; absent or empty is `None`.
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or("").trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadFrame,
            format!("Last-Event-ID must be an event id (a non-negative integer), got {text:?}"),
        )
    })
}

fn sse_message(item: FeedItem) -> SseEvent {
    match item {
        FeedItem::Event(e) => SseEvent::default()
            .id(e.id.to_string())
            .event(e.event.kind.as_str())
            .data(json!(e).to_string()),
        FeedItem::Lagged {
            after,
            until,
            reason,
        } => SseEvent::default().event("lagged").data(
            json!({
                "after": after,
                "until": until,
                "reason": reason,
                "fetch": format!("/v1/events?after={after}"),
            })
            .to_string(),
        ),
    }
}
