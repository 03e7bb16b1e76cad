//! HTTP API for backends and operators: publish, message trace and search, stream history,
//! sessions and kicks, the event feed, metrics and health.
//!
//! Every error is `{"error":{"code":…,"msg":…}}` with a fitting status; request bodies are
//! parsed here (not by an extractor) so malformed JSON gets the same shape.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_protocol::names::validate_name;
use herald_protocol::ErrorCode;
use herald_store::{EventQuery, SearchQuery, StoreError};
use serde::Serialize;
use serde_json::json;

use crate::app::App;

pub(crate) mod dashboard;
mod events_stream;
pub(crate) use events_stream::events_stream;

/// Most items one list call returns.
pub(crate) const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 100;
/// Sender name of HTTP publishes that give no `from`.
pub(crate) const API_SENDER: &str = "$api";

/// An API error: a stable code, a message for humans, and the HTTP status.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    msg: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: ErrorCode, msg: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            msg: msg.into(),
        }
    }

    fn bad(code: ErrorCode, msg: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, msg)
    }

    fn not_found(msg: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, msg)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            e.to_string(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (
            self.status,
            Json(json!({"error": {"code": self.code, "msg": self.msg}})),
        )
            .into_response();
        // For `herald_http_errors_total{code}` (counted in app.rs).
        res.extensions_mut().insert(self.code);
        res
    }
}

type ApiResult = Result<Response, ApiError>;

/// Requires `Authorization: Bearer <api key>` (any request in dev mode).
pub(crate) async fn require_api_key(
    State(app): State<Arc<App>>,
    req: Request,
    next: Next,
) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match app.auth.check_api_key(header) {
        Ok(()) => next.run(req).await,
        Err(e) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            e.to_string(),
        )
        .into_response(),
    }
}

/// Refuses a request body whose Content-Type is not JSON, or that has none (`415`): a
/// cross-site "simple" request (a form POST, `fetch` with `text/plain` or no type) cannot
/// carry `application/json` without a CORS preflight, which herald never grants.
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    match ct {
        Some(ct) if is_json(&ct) => Ok(()),
        Some(ct) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::BadFrame,
            format!("the Content-Type header must be application/json, got {ct}"),
        )),
        None => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::BadFrame,
            "the Content-Type header must be application/json, and the request has none",
        )),
    }
}

/// `application/json`, with optional parameters (`; charset=utf-8`), in any case.
fn is_json(ct: &str) -> bool {
    let essence = ct.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// A list answer: `{"items": […]}`. Serialized straight from the items (message bodies are
/// raw JSON written out as stored, never re-parsed).
#[derive(Serialize)]
struct Items<T: Serialize> {
    items: T,
}

fn list<T: Serialize>(items: T) -> Response {
    Json(Items { items }).into_response()
}

/// `POST /v1/publish`
pub(crate) async fn publish(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult {
    // A body over the router's size limit is refused while reading it; answer in our shape.
    let raw = raw.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            let limit = app.cfg.limits.max_body_bytes.saturating_add(64 * 1024);
            ApiError::new(
                e.status(),
                ErrorCode::TooLarge,
                format!(
                    "request body is larger than {limit} bytes (limits.max_body_bytes + 64 KiB): {}",
                    e.body_text()
                ),
            )
        } else {
            ApiError::new(e.status(), ErrorCode::BadFrame, e.body_text())
        }
    })?;
    require_json(&headers)?;
    let req =
        herald_protocol::http::decode_publish(&raw, &app.cfg.decode_limits()).map_err(|e| {
            let status = match e.code {
                ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            ApiError::new(status, e.code, e.msg)
        })?;
    let to = req.to;
    let body = req.body;
    let from = req.from.unwrap_or_else(|| API_SENDER.to_string());
    let p = app
        .engine
        .publish(&from, &to, body, req.id)
        .await
        .map_err(|e| match e {
            herald_core::PublishError::Store(s) => ApiError::from(s),
        })?;
    Ok(Json(p).into_response())
}

/// `GET /v1/messages/{id}?limit=&offset=`: the message and its delivery trace (summary counts
/// over all recipients; `limit` recipients from `offset`, default 100 from 0).
pub(crate) async fn message(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let offset = num(&q, "offset")?.unwrap_or(0) as usize;
    match app.engine.trace_page(&id, offset, limit(&q)?).await? {
        Some(t) => Ok(Json(t).into_response()),
        None => Err(ApiError::not_found(format!(
            "no message {id} (never stored, or trimmed by retention)"
        ))),
    }
}

/// Accepts `chan:x`, `inbox:u` and `user:u` (the inbox of u).
fn stream_key(s: &str) -> Result<String, ApiError> {
    let bad =
        |e: herald_protocol::NameError| ApiError::bad(ErrorCode::BadTarget, format!("`s`: {e}"));
    if let Some(u) = s.strip_prefix("inbox:").or_else(|| s.strip_prefix("user:")) {
        validate_name("uid", u).map_err(bad)?;
        Ok(herald_store::inbox_key(u))
    } else if let Some(c) = s.strip_prefix("chan:") {
        validate_name("channel", c).map_err(bad)?;
        Ok(herald_store::chan_key(c))
    } else {
        Err(ApiError::bad(
            ErrorCode::BadTarget,
            format!("`s`: stream {s:?} must be chan:<name>, inbox:<uid> or user:<uid>"),
        ))
    }
}

fn num(q: &HashMap<String, String>, key: &str) -> Result<Option<u64>, ApiError> {
    match q.get(key) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            ApiError::bad(
                ErrorCode::BadFrame,
                format!("`{key}` must be a non-negative integer, got {v:?}"),
            )
        }),
    }
}

fn limit(q: &HashMap<String, String>) -> Result<usize, ApiError> {
    let l = num(q, "limit")?.map_or(DEFAULT_LIMIT, |l| l as usize);
    if l == 0 || l > MAX_LIMIT {
        return Err(ApiError::bad(
            ErrorCode::BadFrame,
            format!("`limit` must be 1-{MAX_LIMIT}, got {l}"),
        ));
    }
    Ok(l)
}

/// `GET /v1/messages?s=&from=&after=&since=&until=&limit=`: search, oldest first.
pub(crate) async fn search(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let query = SearchQuery {
        stream: q.get("s").map(|s| stream_key(s)).transpose()?,
        from_uid: q.get("from").cloned(),
        after: num(&q, "after")?,
        since_ms: num(&q, "since")?,
        until_ms: num(&q, "until")?,
        limit: limit(&q)?,
    };
    let items = app.engine.store().search(&query).await?;
    let items: Vec<_> = items
        .iter()
        .map(|m| herald_core::engine::MessageView::of(m))
        .collect();
    Ok(list(items))
}

/// `GET /v1/streams/{s}?after=N&limit=`: history.
pub(crate) async fn stream(
    State(app): State<Arc<App>>,
    Path(s): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let key = stream_key(&s)?;
    let after = num(&q, "after")?.unwrap_or(0);
    let store = app.engine.store();
    // Bounds first, and no item past them: an append landing between the two reads must not
    // make `last` name an offset the items do not hold.
    let b = store.bounds(&key).await?;
    let items = store.read(&key, after, limit(&q)?).await?;
    let items: Vec<_> = items
        .iter()
        .filter(|m| m.offset <= b.last)
        .map(|m| herald_core::engine::MessageView::of(m))
        .collect();
    #[derive(Serialize)]
    struct Page<'a> {
        s: &'a str,
        first: u64,
        last: u64,
        items: Vec<herald_core::engine::MessageView>,
    }
    Ok(Json(Page {
        s: &key,
        first: b.first,
        last: b.last,
        items,
    })
    .into_response())
}

/// `GET /v1/sessions?uid=`
pub(crate) async fn sessions(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let items = app.engine.sessions(q.get("uid").map(String::as_str));
    Ok(list(items))
}

/// `DELETE /v1/sessions/{id}?revoke=`: kick (`evicted` `kicked`); with `revoke=true`, the
/// uid's tokens issued before now are refused from then on.
pub(crate) async fn kick(
    State(app): State<Arc<App>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let revoke = match q.get("revoke").map(String::as_str) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(v) => {
            return Err(ApiError::bad(
                ErrorCode::BadFrame,
                format!("`revoke` must be true or false, got {v:?}"),
            ))
        }
    };
    let uid = app
        .engine
        .sessions(None)
        .into_iter()
        .find(|s| s.id == id)
        .map(|s| s.uid);
    if app.engine.kick(&id, &format!("api:{addr}")).await {
        if let (true, Some(uid)) = (revoke, uid) {
            let at = app.engine.now_ms();
            app.auth.revoke(&uid, at);
            return Ok(Json(
                json!({ "kicked": id, "revoked": {"uid": uid, "issued_before_ms": at} }),
            )
            .into_response());
        }
        Ok(Json(json!({ "kicked": id })).into_response())
    } else {
        Err(ApiError::not_found(format!("no open session {id}")))
    }
}

/// `GET /v1/events?type=&uid=&since=&after=&limit=`
pub(crate) async fn events(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let query = EventQuery {
        kind: q.get("type").cloned(),
        uid: q.get("uid").cloned(),
        since_ms: num(&q, "since")?,
        after_id: num(&q, "after")?,
        limit: limit(&q)?,
    };
    let items = app.engine.store().events(&query).await?;
    Ok(list(items))
}

/// `GET /healthz`: the process is up.
pub(crate) async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `GET /readyz`: the store can make writes durable.
pub(crate) async fn readyz(State(app): State<Arc<App>>) -> Response {
    match app.engine.ready() {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": reason})),
        )
            .into_response(),
    }
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &app.registry) {
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            format!("metrics encoding failed: {e}"),
        )
        .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// A known path with a method it does not serve.
pub(crate) async fn method_not_allowed() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::NotFound,
        "method not allowed on this endpoint; see docs/protocol.md for the HTTP API",
    )
    .into_response()
}

/// Any other path.
pub(crate) async fn not_found() -> Response {
    ApiError::not_found("no such endpoint; see docs/protocol.md for the HTTP API").into_response()
}
