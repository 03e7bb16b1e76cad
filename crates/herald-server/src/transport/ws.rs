//! WebSocket transport at `/v1/ws`: hello and authentication, then a loop that moves frames
//! between the socket and the engine's [`Attached`] connection, with heartbeats.
//!
//! One task reads (and owns the engine side), one task writes, connected by a bounded queue
//! (`limits.send_queue_frames`). A client that stops reading fills the queue; the reader then
//! waits at most `heartbeat_ms` + `heartbeat_grace_ms` before declaring the connection dead, so a stalled peer
//! never holds a task forever. Frames queued for writing are batched into one WebSocket frame
//! (newline-separated) up to `limits.max_frame_bytes`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use herald_core::{Attached, OpenError, Output, Peer};
use herald_protocol::{close, decode_frame, ClientFrame, ErrorCode, Limits, ServerFrame};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tracing::{debug, info, warn};

use crate::app::App;
use crate::metrics::ServerMetrics;

/// How long the writer gets to flush the last frames and the close frame.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);
/// Most queued frames joined into one WebSocket frame.
const WRITE_BATCH: usize = 1024;
/// After the close frame is written, how long the socket stays open for the client to read it
/// (see [`linger`]).
const CLOSE_LINGER: Duration = Duration::from_secs(1);

enum Out {
    Frames(Vec<String>),
    Close(u16, String),
}

pub(crate) async fn upgrade(
    ws: WebSocketUpgrade,
    State(app): State<Arc<App>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
) -> Response {
    if app.tracker.live() >= app.cfg.server.max_connections {
        warn!(addr = %addr, "connection refused: server.max_connections reached");
        return crate::api::ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            format!(
                "server is at server.max_connections = {}; retry later",
                app.cfg.server.max_connections
            ),
        )
        .into_response();
    }
    let max = app.cfg.limits.max_frame_bytes as usize;
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(app.cfg.limits.read_buffer_bytes as usize)
        .write_buffer_size(0)
        .max_write_buffer_size(max.saturating_mul(2).max(64 * 1024))
        .on_failed_upgrade(move |e| warn!(addr = %addr, err = %e, "websocket upgrade failed"))
        .on_upgrade(move |socket| async move {
            let _guard = app.tracker.track();
            serve(socket, app.clone(), addr).await;
        })
}

async fn serve(socket: WebSocket, app: Arc<App>, addr: SocketAddr) {
    let (sink, mut stream) = socket.split();
    let (tx, rx) = mpsc::channel::<Out>(app.cfg.limits.send_queue_frames.max(1));
    let writer = tokio::spawn(write_loop(
        sink,
        rx,
        app.cfg.limits.max_frame_bytes as usize,
        app.metrics.clone(),
    ));
    let peer = Peer {
        addr: addr.to_string(),
    };
    // The handshake (engine open, store reads and writes) and each request's handling are
    // large futures but short-lived: boxed, they take heap only while they run, instead of
    // sizing the connection task that every idle connection keeps for its whole life.
    let input_abandoned = match Box::pin(handshake(&app, &mut stream, &tx, peer)).await {
        Ok((attached, rest)) => run(&app, attached, rest, &mut stream, &tx, addr).await,
        Err(abandoned) => abandoned,
    };
    drop(tx);
    if timeout(CLOSE_FLUSH, writer).await.is_err() {
        debug!(addr = %addr, "writer did not flush before close");
        return;
    }
    // Shutting down: the process is about to exit, so do not hold it up.
    let mut shutdown = app.shutdown.clone();
    tokio::select! {
        _ = linger(&mut stream, input_abandoned) => {}
        _ = shutdown.wait() => {}
    }
}

/// Keeps the socket open until the client has read the close frame. Closing a TCP socket that
/// still holds unread input makes the kernel reset the connection, and the reset can destroy
/// the close frame (and the `err` before it) before the client reads them: a client flooding
/// requests would never learn it was closed 4029, nor one sending an oversized frame 1009.
/// So the input is read and discarded until the client answers the close (or hangs up), at most
/// [`CLOSE_LINGER`]. When the input cannot be read any more (`abandoned`: the rest of an
/// oversized frame is still unread), the socket is simply held open that long.
async fn linger(stream: &mut futures_util::stream::SplitStream<WebSocket>, abandoned: bool) {
    if abandoned {
        tokio::time::sleep(CLOSE_LINGER).await;
        return;
    }
    let _ = timeout(CLOSE_LINGER, async {
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Reads the first frame, authenticates and opens the session. On failure the right error
/// frame and close code are queued and `None` is returned.
async fn handshake(
    app: &Arc<App>,
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    tx: &mpsc::Sender<Out>,
    peer: Peer,
) -> Result<(Attached, Vec<ClientFrame>), bool> {
    let hello_timeout = Duration::from_millis(app.cfg.session.hello_timeout_ms);
    let mut shutdown = app.shutdown.clone();
    let first = tokio::select! {
        r = timeout(hello_timeout, stream.next()) => r,
        _ = shutdown.wait() => {
            let _ = tx.send(Out::Close(close::GOING_AWAY, "server shutting down".into())).await;
            return Err(false);
        }
    };
    let text = match first {
        Err(_) => {
            info!(addr = %peer.addr, "no hello in time; closing");
            fail(
                app,
                tx,
                None,
                close::HELLO_TIMEOUT,
                format!(
                    "no hello within {} ms (session.hello_timeout_ms)",
                    hello_timeout.as_millis()
                ),
            )
            .await;
            return Err(false);
        }
        Ok(Some(Err(e))) if is_too_large(&e.to_string()) => {
            let limit = app.cfg.limits.max_frame_bytes;
            fail(
                app,
                tx,
                Some(ErrorCode::TooLarge),
                close::FRAME_TOO_LARGE,
                format!("frame is larger than limits.max_frame_bytes = {limit} bytes"),
            )
            .await;
            // The rest of the oversized frame is unread: hold the socket, don't read it.
            return Err(true);
        }
        Ok(None) | Ok(Some(Err(_))) => return Err(false),
        Ok(Some(Ok(Message::Text(t)))) => {
            app.metrics.ws_received_bytes.inc_by(t.len() as u64);
            t
        }
        Ok(Some(Ok(Message::Close(_)))) => return Err(false),
        Ok(Some(Ok(m))) => {
            if let Message::Binary(b) = &m {
                app.metrics.ws_received_bytes.inc_by(b.len() as u64);
            }
            fail(
                app,
                tx,
                Some(ErrorCode::BadFrame),
                close::PROTOCOL_ERROR,
                "the first frame must be a JSON text frame with {\"t\":\"hello\"}".into(),
            )
            .await;
            return Err(false);
        }
    };
    let limits = app.cfg.decode_limits();
    let mut frames = decode_frame(text.as_str(), &limits).into_iter();
    let hello = match frames.next() {
        Some(Ok(ClientFrame::Hello(h))) => h,
        Some(Err(e)) => {
            fail(
                app,
                tx,
                Some(e.code),
                close::PROTOCOL_ERROR,
                format!("bad hello: {}", e.msg),
            )
            .await;
            return Err(false);
        }
        _ => {
            fail(
                app,
                tx,
                Some(ErrorCode::BadFrame),
                close::PROTOCOL_ERROR,
                "`t`: the first frame must be a hello ({\"t\":\"hello\",\"v\":1,…})".into(),
            )
            .await;
            return Err(false);
        }
    };
    if hello.v != herald_protocol::PROTOCOL_VERSION {
        fail(
            app,
            tx,
            Some(ErrorCode::BadFrame),
            close::PROTOCOL_ERROR,
            format!(
                "`v`: protocol version {} is not supported; this server speaks v1",
                hello.v
            ),
        )
        .await;
        return Err(false);
    }
    let identity = match app.auth.authenticate(&hello) {
        Ok(i) => i,
        Err(e) => {
            warn!(event = "auth_failed", addr = %peer.addr, uid = hello.uid.as_deref().unwrap_or(""),
                device = hello.device.as_deref().unwrap_or(""), reason = %e, "authentication failed");
            fail(
                app,
                tx,
                Some(ErrorCode::Unauthorized),
                close::AUTH_FAILED,
                e.to_string(),
            )
            .await;
            return Err(false);
        }
    };
    let addr = peer.addr.clone();
    let attached = match app.engine.open(&hello, identity, peer).await {
        Ok(a) => a,
        Err(e) => {
            // Refusals the engine decided (identity, evicted resume) were logged there.
            if matches!(e, OpenError::Store(_) | OpenError::ShuttingDown) {
                warn!(addr = %addr, err = %e, "connection refused");
            }
            let code = match &e {
                OpenError::IdentityInUse { .. } => Some(ErrorCode::IdentityInUse),
                OpenError::Store(_) => Some(ErrorCode::Unavailable),
                OpenError::TooManySessions { .. } => Some(ErrorCode::RateLimited),
                OpenError::Evicted(_) | OpenError::ShuttingDown => None,
            };
            if let Some(code) = code {
                app.engine.metrics().error(code.as_str());
            }
            let (frames, code, reason) = e.answer();
            let _ = tx.send(Out::Frames(frames)).await;
            let _ = tx.send(Out::Close(code, reason.into())).await;
            return Err(false);
        }
    };
    let welcome = ServerFrame::Welcome(Box::new(attached.welcome().clone())).encode();
    let _ = tx.send(Out::Frames(vec![welcome])).await;
    // Anything batched after the hello is handled as usual; errors are answered.
    let mut rest = Vec::new();
    let mut errors = Vec::new();
    for f in frames {
        match f {
            Ok(f) => rest.push(f),
            Err(e) => errors.push(e),
        }
    }
    let mut attached = attached;
    for e in errors {
        if let Some(out) = attached.handle_decode_error(e) {
            if let Output::Close {
                frames,
                code,
                reason,
            } = out
            {
                let _ = tx.send(Out::Frames(frames)).await;
                let _ = tx.send(Out::Close(code, reason)).await;
            }
            return Err(false);
        }
    }
    Ok((attached, rest))
}

async fn fail(
    app: &App,
    tx: &mpsc::Sender<Out>,
    code: Option<ErrorCode>,
    close_code: u16,
    msg: String,
) {
    if let Some(code) = code {
        app.engine.metrics().error(code.as_str());
        let _ = tx
            .send(Out::Frames(vec![
                ServerFrame::err(None, code, msg.clone()).encode()
            ]))
            .await;
    }
    let _ = tx.send(Out::Close(close_code, msg)).await;
}

/// The connected loop. Returns true when it stopped reading in the middle of a frame (an
/// oversized one), so unread input remains.
async fn run(
    app: &Arc<App>,
    mut attached: Attached,
    first: Vec<ClientFrame>,
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    tx: &mpsc::Sender<Out>,
    addr: SocketAddr,
) -> bool {
    let heartbeat = Duration::from_millis(app.cfg.session.heartbeat_ms);
    let dead_after = heartbeat + Duration::from_millis(app.cfg.session.heartbeat_grace_ms);
    let limits = app.cfg.decode_limits();
    let (uid, device, session, conn) = (
        attached.uid().to_string(),
        attached.device().to_string(),
        attached.session_id().to_string(),
        attached.conn_id().to_string(),
    );
    let mut last_rx = Instant::now();
    let mut ping = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut close: Option<(u16, String)> = None;
    let mut abandoned = false;
    if !first.is_empty() {
        close = Box::pin(handle_frames(&mut attached, first, tx)).await;
    }
    while close.is_none() {
        tokio::select! {
            incoming = stream.next() => {
                last_rx = Instant::now();
                match incoming {
                    Some(Ok(Message::Text(t))) => {
                        app.metrics.ws_received_bytes.inc_by(t.len() as u64);
                        close = Box::pin(handle_text(&mut attached, t.as_str(), &limits, tx)).await;
                    }
                    Some(Ok(Message::Binary(b))) => {
                        app.metrics.ws_received_bytes.inc_by(b.len() as u64);
                        let e = herald_protocol::DecodeError {
                            seq: None,
                            code: ErrorCode::BadFrame,
                            msg: "binary frames are not supported: send JSON text frames".into(),
                        };
                        if let Some(out) = attached.handle_decode_error(e) {
                            close = Some(Box::pin(finish(tx, out)).await);
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | None => {
                        close = Some((1000, "closed by client".into()));
                    }
                    Some(Err(e)) => {
                        let msg = e.to_string();
                        if is_too_large(&msg) {
                            let reason = format!(
                                "frame is larger than limits.max_frame_bytes = {} bytes",
                                app.cfg.limits.max_frame_bytes
                            );
                            app.engine.metrics().error(ErrorCode::TooLarge.as_str());
                            let _ = Box::pin(tx.send(Out::Frames(vec![ServerFrame::err(None, ErrorCode::TooLarge, reason.clone()).encode()]))).await;
                            let _ = Box::pin(tx.send(Out::Close(close::FRAME_TOO_LARGE, reason.clone()))).await;
                            close = Some((close::FRAME_TOO_LARGE, reason));
                            abandoned = true;
                        } else {
                            close = Some((1006, format!("transport error: {msg}")));
                        }
                    }
                }
            }
            out = attached.next() => {
                match out {
                    Output::Frames(f) => {
                        // While the queue is full, publishes already stored still get their
                        // answers recorded, so a takeover is not held up by this socket.
                        // Boxed: not part of every idle connection's task.
                        let sent = Box::pin(async {
                            tokio::select! {
                                r = timeout(dead_after, tx.send(Out::Frames(f))) => r,
                                never = attached.settle_answers() => match never {},
                            }
                        })
                        .await;
                        if sent.is_err() {
                            close = Some((close::HEARTBEAT_TIMEOUT, "client is not reading (send queue full)".into()));
                        }
                    }
                    out @ Output::Close { .. } => close = Some(Box::pin(finish(tx, out)).await),
                }
            }
            _ = ping.tick() => {
                let _ = tx.try_send(Out::Frames(vec![ServerFrame::Ping.encode()]));
            }
            _ = tokio::time::sleep_until(last_rx + dead_after) => {
                let reason = format!("no frame for {} ms (heartbeat_ms + heartbeat_grace_ms)", dead_after.as_millis());
                let _ = tx.try_send(Out::Close(close::HEARTBEAT_TIMEOUT, reason.clone()));
                close = Some((close::HEARTBEAT_TIMEOUT, reason));
            }
        }
    }
    let (code, reason) = close.unwrap_or((1000, String::new()));
    info!(event = "disconnect", uid = %uid, device = %device, session = %session, conn = %conn,
        addr = %addr, code, reason = %reason, "disconnected");
    drop(attached);
    abandoned
}

/// Handles the frames of one text message; `Some` when the connection is to close. Its own
/// (boxed) future, so the decoded frames are not part of every idle connection's task.
async fn handle_text(
    attached: &mut Attached,
    text: &str,
    limits: &Limits,
    tx: &mpsc::Sender<Out>,
) -> Option<(u16, String)> {
    for f in decode_frame(text, limits) {
        let out = match f {
            Ok(f) => attached.handle(f).await,
            Err(e) => attached.handle_decode_error(e),
        };
        if let Some(out) = out {
            return Some(finish(tx, out).await);
        }
    }
    None
}

/// Handles the requests batched after the hello; `Some` when the connection is to close.
async fn handle_frames(
    attached: &mut Attached,
    frames: Vec<ClientFrame>,
    tx: &mpsc::Sender<Out>,
) -> Option<(u16, String)> {
    for f in frames {
        if let Some(out) = attached.handle(f).await {
            return Some(finish(tx, out).await);
        }
    }
    None
}

/// Queues the final frames and the close; returns the close for logging.
async fn finish(tx: &mpsc::Sender<Out>, out: Output) -> (u16, String) {
    match out {
        Output::Frames(f) => {
            let _ = tx.send(Out::Frames(f)).await;
            (1000, String::new())
        }
        Output::Close {
            frames,
            code,
            reason,
        } => {
            if !frames.is_empty() {
                let _ = timeout(CLOSE_FLUSH, tx.send(Out::Frames(frames))).await;
            }
            let _ = timeout(CLOSE_FLUSH, tx.send(Out::Close(code, reason.clone()))).await;
            (code, reason)
        }
    }
}

fn is_too_large(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    m.contains("too long") || m.contains("too big") || m.contains("space limit")
}

/// Writes queued frames, batching what is already queued into one text frame.
async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Out>,
    max_frame: usize,
    metrics: ServerMetrics,
) {
    let mut backlog: VecDeque<String> = VecDeque::new();
    let mut close: Option<(u16, String)> = None;
    loop {
        if backlog.is_empty() && close.is_none() {
            match rx.recv().await {
                Some(Out::Frames(f)) => backlog.extend(f),
                Some(Out::Close(c, r)) => close = Some((c, r)),
                None => break,
            }
        }
        while close.is_none() && backlog.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(Out::Frames(f)) => backlog.extend(f),
                Ok(Out::Close(c, r)) => close = Some((c, r)),
                Err(_) => break,
            }
        }
        if !backlog.is_empty() {
            let mut text = String::new();
            while let Some(f) = backlog.front() {
                if !text.is_empty() && text.len() + 1 + f.len() > max_frame {
                    break;
                }
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(f);
                backlog.pop_front();
            }
            metrics.ws_sent_bytes.inc_by(text.len() as u64);
            if sink
                .send(Message::Text(Utf8Bytes::from(text)))
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        if let Some((code, reason)) = close.take() {
            metrics.closed(code);
            let reason: String = reason.chars().take(120).collect();
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code,
                    reason: Utf8Bytes::from(reason),
                })))
                .await;
            break;
        }
    }
    let _ = sink.close().await;
}
