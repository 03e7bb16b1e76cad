//! Assembles the server: store, engine, routes, upkeep, and the shutdown sequence
//! (signal → stop accepting and close connections with 1001 → drain within the grace period →
//! persist sessions and close the store).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use herald_core::{Engine, Streams, SystemClock};
use herald_protocol::ErrorCode;
use herald_store::sqlite::{SqliteConfig, SqliteStore};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::api;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::metrics::ServerMetrics;
use crate::shutdown::{self, ShutdownSignal, Tracker};
use crate::transport::listener::{self, Gate, IpRange, ListenerConfig};
use crate::transport::tls::Tls;
use crate::transport::ws;
use crate::webhooks::{Dispatcher, WebhookMetrics};

/// File name of the embedded database inside the data directory.
pub(crate) const DB_FILE: &str = "herald.db";
/// How often sessions are expired and positions persisted.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// Everything a request handler can reach.
pub(crate) struct App {
    pub(crate) engine: Engine,
    pub(crate) auth: Authenticator,
    pub(crate) cfg: Config,
    pub(crate) registry: Registry,
    /// Transport metrics (WebSocket bytes and closes, HTTP errors).
    pub(crate) metrics: ServerMetrics,
    pub(crate) tracker: Tracker,
    pub(crate) shutdown: ShutdownSignal,
}

pub(crate) fn router(app: Arc<App>) -> Router {
    let body_limit = (app.cfg.limits.max_body_bytes as usize).saturating_add(64 * 1024);
    let api = Router::new()
        .route("/v1/publish", post(api::publish))
        .route("/v1/messages", get(api::search))
        .route("/v1/messages/{id}", get(api::message))
        .route("/v1/streams/{s}", get(api::stream))
        .route("/v1/sessions", get(api::sessions))
        .route(
            "/v1/sessions/positions",
            get(api::dashboard::session_positions),
        )
        .route("/v1/overview", get(api::dashboard::overview))
        .route("/v1/sessions/{id}", delete(api::kick))
        .route("/v1/events", get(api::events))
        .route("/v1/events/stream", get(api::events_stream))
        .layer(middleware::from_fn_with_state(
            app.clone(),
            api::require_api_key,
        ));
    Router::new()
        .route(
            "/v1/ws",
            get(ws::upgrade).route_layer(middleware::from_fn_with_state(app.clone(), check_origin)),
        )
        .route("/metrics", get(api::metrics))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .merge(api)
        .merge(api::dashboard::routes())
        .method_not_allowed_fallback(api::method_not_allowed)
        .fallback(api::not_found)
        .layer(middleware::from_fn(catch_panic))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(
            app.clone(),
            count_http_errors,
        ))
        .with_state(app)
}

/// Refuses a WebSocket handshake from a browser origin that `server.allowed_origins` does not
/// list (403 JSON). Without this any web page could open `/v1/ws` with its visitor's cookies
/// or, in dev mode, as any uid.
async fn check_origin(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let Some(origin) = req.headers().get(axum::http::header::ORIGIN) else {
        return next.run(req).await;
    };
    let origin = String::from_utf8_lossy(origin.as_bytes()).into_owned();
    let list = &app.cfg.server.allowed_origins;
    let allowed = if list.is_empty() {
        app.cfg.server.dev
    } else {
        list.iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin.trim_end_matches('/')))
    };
    if allowed {
        return next.run(req).await;
    }
    warn!(origin = %origin, "websocket refused: origin not in server.allowed_origins");
    api::ApiError::new(
        StatusCode::FORBIDDEN,
        ErrorCode::Forbidden,
        format!(
            "origin {origin:?} may not open /v1/ws: it is not listed in server.allowed_origins"
        ),
    )
    .into_response()
}

/// Turns a panic in a handler into a 500 JSON error (`internal`) instead of a dropped
/// connection. The panic hook (main.rs) has already logged it as one line.
pub(crate) async fn catch_panic(req: Request, next: Next) -> Response {
    use futures_util::FutureExt;
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    match std::panic::AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(res) => res,
        Err(payload) => api::ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            format!(
                "the server failed while answering {method} {path}: {}; this is a bug, please report it",
                panic_message(payload.as_ref())
            ),
        )
        .into_response(),
    }
}

/// The message a panic carries (`panic!("…")` payloads are `&str` or `String`).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Counts HTTP error answers by code (`herald_http_errors_total`): [`api::ApiError`] tags its
/// response with its [`ErrorCode`].
async fn count_http_errors(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    if let Some(code) = res.extensions().get::<ErrorCode>() {
        app.metrics.http_error(code.as_str());
    }
    res
}

/// Gives error answers produced by the HTTP framework itself (an extractor's rejection: a
/// plain `GET /v1/ws` without an upgrade, a path that is not UTF-8, …) the same JSON shape as
/// ours. JSON answers (ours, or `/readyz`'s 503) pass unchanged.
async fn json_errors(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    let is_json = res
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error())
        || is_json
        || res.extensions().get::<ErrorCode>().is_some()
    {
        return res;
    }
    let code = match status {
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::TooLarge,
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
        s if s.is_client_error() => ErrorCode::BadFrame,
        _ => ErrorCode::Internal,
    };
    let text = axum::body::to_bytes(res.into_body(), 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let msg = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    api::ApiError::new(status, code, msg).into_response()
}

/// The listener's settings; `server.max_connections` is lowered to fit the open-file limit
/// (raised to its hard limit first), with a warning.
fn listener_config(cfg: &Config) -> ListenerConfig {
    let mut max = cfg.server.max_connections;
    match listener::raise_fd_limit() {
        Some(fds) if (max as u64).saturating_add(listener::FD_RESERVE) > fds => {
            let fit = fds.saturating_sub(listener::FD_RESERVE).max(1) as usize;
            warn!(
                max_connections = max,
                open_file_limit = fds,
                effective = fit,
                "server.max_connections exceeds what the open-file limit (RLIMIT_NOFILE, hard limit) allows; \
                 accepting at most {fit} connections. Raise the limit (ulimit -n, LimitNOFILE= in systemd) to allow more"
            );
            max = fit;
        }
        _ => {}
    }
    ListenerConfig {
        max_connections: max,
        max_per_ip: cfg.server.max_connections_per_ip,
        header_timeout: Duration::from_millis(cfg.server.http_header_timeout_ms),
        trusted_proxies: cfg
            .server
            .trusted_proxies
            .iter()
            .filter_map(|p| IpRange::parse(p).ok())
            .collect(),
    }
}

/// Runs the server until SIGINT/SIGTERM, then shuts down gracefully.
pub(crate) async fn serve(cfg: Config) -> anyhow::Result<()> {
    let data_dir = cfg.server.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let engine_cfg = cfg.engine_config();
    let streams = Streams::new(engine_cfg.tail_cache_messages);
    let mut store_cfg = SqliteConfig::new(data_dir.join(DB_FILE));
    store_cfg.durability = cfg.storage.durability;
    store_cfg.max_batch = cfg.storage.max_batch;
    store_cfg.max_db_bytes = (cfg.storage.max_db_bytes > 0).then_some(cfg.storage.max_db_bytes);
    store_cfg.retention = engine_cfg.retention;
    let store = SqliteStore::open(store_cfg, streams.clone())
        .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
    let store = Arc::new(store);
    let engine = Engine::start(engine_cfg, store.clone(), streams, Arc::new(SystemClock))
        .await
        .context("cannot load sessions from the store")?;
    store.observe_commits(Arc::new(engine.metrics().store.clone()));
    let mut registry = Registry::default();
    engine.register_metrics(&mut registry);
    let metrics = ServerMetrics::default();
    metrics.register(&mut registry);
    let webhook_metrics = Arc::new(WebhookMetrics::default());
    webhook_metrics.register(&mut registry);
    let dispatcher = Dispatcher::new(engine.clone(), &cfg, webhook_metrics)
        .context("invalid [[webhooks]] settings")?;
    let auth = Authenticator::from_config(&cfg).context("invalid [auth] settings")?;
    info!("{}", auth.describe());

    if cfg.server.dev && !cfg.server.listen.ip().is_loopback() && !cfg.server.dev_allow_remote {
        anyhow::bail!(
            "dev mode (no tokens, no API key) refuses to listen on the non-loopback address {}: \
             anyone who can reach it could act as any user. Listen on 127.0.0.1 or [::1], or set \
             server.dev_allow_remote = true (HERALD_SERVER__DEV_ALLOW_REMOTE=true) if you really mean it",
            cfg.server.listen
        );
    }
    let tls = match (&cfg.tls.cert, &cfg.tls.key) {
        (Some(cert), Some(key)) => Some(Tls::new(cert, key).context("invalid [tls] settings")?),
        _ => None,
    };
    let listener = TcpListener::bind(cfg.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.server.listen))?;
    let local = listener.local_addr()?;
    let (stop_tx, stop_rx) = shutdown::channel();
    let grace = Duration::from_millis(cfg.server.shutdown_grace_ms);
    let trim_every = cfg.retention.trim_interval_ms;
    let app = Arc::new(App {
        engine: engine.clone(),
        auth,
        cfg,
        registry,
        metrics,
        tracker: Tracker::default(),
        shutdown: stop_rx.clone(),
    });
    if app.cfg.server.dev {
        warn!("DEV MODE: clients may connect with a bare uid and no token, and the HTTP API needs no key. Never expose this server.");
    }
    info!(addr = %local, data_dir = %data_dir.display(), durability = ?app.cfg.storage.durability,
        identity_policy = ?app.cfg.identity.policy, "herald listening");
    // Before the line below: a test that reads the startup log after it sees the warning.
    let gate = Gate::new(listener_config(&app.cfg), app.metrics.clone());
    // A stable line on stdout for scripts and tests that start the server on port 0.
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("herald listening on {scheme}://{local}");

    let upkeep = {
        let engine = engine.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(UPKEEP_EVERY);
            // Its own timer: retention.trim_interval_ms may be shorter than the upkeep period.
            let mut trim_timer = tokio::time::interval(Duration::from_millis(trim_every.max(1)));
            trim_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let trim = tokio::select! {
                    _ = every.tick() => false,
                    _ = trim_timer.tick(), if trim_every > 0 => true,
                    _ = stop.wait() => return,
                };
                engine.tick(trim).await;
            }
        })
    };

    let webhooks = tokio::spawn(dispatcher.run(stop_rx.clone()));
    let jwks = match (app.auth.jwks_keys(), app.cfg.auth.jwks_url.clone()) {
        (Some(keys), Some(url)) => Some(tokio::spawn(crate::jwks::run(
            url,
            Duration::from_millis(app.cfg.auth.jwks_refresh_ms),
            keys,
            stop_rx.clone(),
        ))),
        _ => None,
    };

    let signal_engine = engine.clone();
    let signal = tokio::spawn(async move {
        shutdown::os_signal().await;
        info!("shutdown: signal received; closing connections (sessions stay resumable)");
        let _ = stop_tx.send(true);
        signal_engine.begin_shutdown();
    });
    if let Some(tls) = &tls {
        tokio::spawn(tls.clone().reload_on_sighup(stop_rx.clone()));
    }
    listener::run(
        listener,
        gate.clone(),
        router(app.clone()),
        tls,
        stop_rx.clone(),
    )
    .await;
    let _ = signal.await;

    let left = app.tracker.drain(grace).await;
    // HTTP connections finish their current request (graceful) within the same grace.
    let _ = tokio::time::timeout(grace, async {
        while gate.open() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if left > 0 {
        warn!(
            left,
            grace_ms = grace.as_millis() as u64,
            "shutdown: connections still open after the grace period"
        );
    }
    let _ = upkeep.await;
    let _ = webhooks.await;
    if let Some(j) = jwks {
        let _ = j.await;
    }
    engine.close_store().await.context("closing the store")?;
    info!("shutdown complete");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    /// A handler that panics is answered 500 with the JSON error shape, and the server goes on.
    #[tokio::test]
    async fn a_panicking_handler_answers_500_json() {
        async fn boom() -> Response {
            panic!("boom at depth 129")
        }
        let router: Router = Router::new()
            .route("/boom", get(boom))
            .route("/fine", get(|| async { "fine" }))
            .layer(middleware::from_fn(catch_panic))
            .layer(middleware::from_fn(json_errors));
        let res = router
            .clone()
            .oneshot(Request::get("/boom").body(Body::empty()).expect("request"))
            .await
            .expect("answer");
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["error"]["code"], "internal", "{v}");
        let msg = v["error"]["msg"].as_str().unwrap_or_default();
        assert!(
            msg.contains("GET /boom") && msg.contains("boom at depth 129"),
            "{msg}"
        );
        let res = router
            .oneshot(Request::get("/fine").body(Body::empty()).expect("request"))
            .await
            .expect("answer");
        assert_eq!(res.status(), StatusCode::OK);
    }
}
