//! The operator's dashboard: static pages embedded in the binary (no CDN, works offline),
//! served at `/dashboard`, and the two JSON routes only it needs beyond the rest of the API:
//! `GET /v1/overview` (live counters and gauges) and `GET /v1/sessions/positions` (open
//! sessions with their stream positions). The pages hold no data: every fact they show comes
//! from the API with the operator's key, so a missing or wrong key gets the login form only.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use herald_core::SessionFilter;
use serde_json::json;

use super::{limit, ApiError, ApiResult};
use crate::app::App;

/// One embedded file of the dashboard.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// Every file of the dashboard, from `crates/herald-server/dashboard/`.
const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../dashboard/index.html"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../dashboard/style.css"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../dashboard/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../dashboard/api.js"),
    },
    Asset {
        name: "feed.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../dashboard/feed.js"),
    },
    Asset {
        name: "pages.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../dashboard/pages.js"),
    },
];

/// Only the server's own files and API: nothing from elsewhere is loaded or run.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
                   script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

/// The dashboard's page routes (no API key: the files hold no data).
pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/dashboard", get(index))
        .route("/dashboard/", get(index))
        .route("/dashboard/{file}", get(asset))
}

fn serve(a: &Asset) -> Response {
    let mut res = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(a.content_type),
        )],
        a.body,
    )
        .into_response();
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

/// `GET /dashboard`: the single page; the part after `#` picks what it shows.
async fn index() -> Response {
    serve(&ASSETS[0])
}

/// `GET /dashboard/{file}`: a script or style sheet of the page.
async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(a) => serve(a),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            herald_protocol::ErrorCode::NotFound,
            format!("the dashboard has no file {file:?}"),
        )
        .into_response(),
    }
}

/// `GET /v1/overview`: the engine's counters and gauges now (see [`herald_core::Overview`]).
pub(crate) async fn overview(State(app): State<Arc<App>>) -> ApiResult {
    let o = app.engine.overview().await?;
    Ok(Json(o).into_response())
}

/// `GET /v1/sessions/positions?uid=&device=&limit=`: open sessions with the acknowledged,
/// sent and newest offset of each of their streams.
pub(crate) async fn session_positions(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let filter = SessionFilter {
        uid: q.get("uid").filter(|u| !u.is_empty()).cloned(),
        device: q.get("device").filter(|d| !d.is_empty()).cloned(),
    };
    let items = app.engine.session_positions(&filter, limit(&q)?).await?;
    Ok(Json(json!({ "items": items })).into_response())
}
