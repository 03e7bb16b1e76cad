//! The TCP listener: accepts connections, admits them under the connection caps, and serves
//! each with HTTP/1.1 (WebSocket upgrades included) under a header-read timeout.
//!
//! Every accepted socket, HTTP or WebSocket, holds a [`Ticket`] for as long as its file
//! descriptor is open (the ticket travels inside the I/O object, through a WebSocket upgrade),
//! so `server.max_connections` and `server.max_connections_per_ip` count everything that costs
//! a descriptor. When the server is full, the oldest connection that has not yet sent a
//! complete request is closed to make room: sockets that only ever send half a request can
//! delay a login but never lock it out. Over-cap sockets get a `503` JSON answer and are
//! closed at once; this module never blocks on a client.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::shutdown::ShutdownSignal;

/// File descriptors kept free of connections (store, listener, logs, webhooks, DNS…).
pub(crate) const FD_RESERVE: u64 = 64;

/// An address range (`10.0.0.0/8`, `::1`), for `server.trusted_proxies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpRange {
    addr: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Parses an address or a CIDR range.
    pub(crate) fn parse(s: &str) -> Result<IpRange, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("{s:?}: the prefix length must be 0-{max}")),
            },
        };
        Ok(IpRange { addr, prefix })
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:1.2.3.4`, from a `[::]` listener) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What the listener enforces.
#[derive(Debug, Clone)]
pub(crate) struct ListenerConfig {
    /// All connections (already lowered to fit the file-descriptor limit).
    pub(crate) max_connections: usize,
    /// Connections per source address; 0 = unlimited. Trusted proxies are exempt.
    pub(crate) max_per_ip: usize,
    /// Time to send a complete request head, from connect or from the previous answer.
    pub(crate) header_timeout: Duration,
    /// Peers whose `X-Forwarded-For` names the client.
    pub(crate) trusted_proxies: Vec<IpRange>,
}

impl ListenerConfig {
    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|r| r.contains(ip))
    }

    /// The client's address: the peer's, or, when the peer is a trusted proxy, the last
    /// address in `X-Forwarded-For` that is not itself a trusted proxy (port 0).
    pub(crate) fn client_addr(&self, peer: SocketAddr, xff: Option<&str>) -> SocketAddr {
        if !self.trusted(peer.ip()) {
            return peer;
        }
        let Some(xff) = xff else { return peer };
        let hops: Vec<IpAddr> = xff
            .split(',')
            .filter_map(|h| h.trim().parse::<IpAddr>().ok())
            .collect();
        let client = hops
            .iter()
            .rev()
            .find(|ip| !self.trusted(**ip))
            .or(hops.first());
        client.map_or(peer, |ip| SocketAddr::new(*ip, 0))
    }
}

/// Counts of admitted connections.
#[derive(Default)]
struct GateState {
    next: u64,
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
    /// Connections that have not sent a complete request head yet, oldest first.
    waiting: BTreeMap<u64, Arc<Notify>>,
}

/// Admits connections under the caps.
pub(crate) struct Gate {
    cfg: ListenerConfig,
    metrics: crate::metrics::ServerMetrics,
    state: Mutex<GateState>,
    /// Last refusal warning (ms since start), so a flood logs one line per second.
    last_warn: AtomicU64,
    started: tokio::time::Instant,
}

/// One admitted connection. Dropping it (when the socket closes) frees its place.
pub(crate) struct Ticket {
    gate: Arc<Gate>,
    id: u64,
    ip: IpAddr,
    /// Fired to close the connection to make room (it had not sent a request yet).
    evict: Arc<Notify>,
    /// Set once a complete request head arrived.
    requested: AtomicBool,
}

impl Ticket {
    fn requested(&self) {
        if !self.requested.swap(true, Ordering::Relaxed) {
            self.gate.lock().waiting.remove(&self.id);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut g = self.gate.lock();
        g.total = g.total.saturating_sub(1);
        self.gate.metrics.connections_open.set(g.total as i64);
        if let Some(n) = g.by_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                g.by_ip.remove(&self.ip);
            }
        }
        g.waiting.remove(&self.id);
    }
}

enum Admission {
    Admit(Arc<Ticket>),
    /// Why, for the client, and the metric's reason label.
    Refuse(String, &'static str),
}

impl Gate {
    pub(crate) fn new(cfg: ListenerConfig, metrics: crate::metrics::ServerMetrics) -> Arc<Gate> {
        Arc::new(Gate {
            cfg,
            metrics,
            state: Mutex::new(GateState::default()),
            last_warn: AtomicU64::new(0),
            started: tokio::time::Instant::now(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.lock().total
    }

    fn admit(self: &Arc<Gate>, peer: IpAddr) -> Admission {
        let ip = canonical(peer);
        let mut g = self.lock();
        let per_ip = g.by_ip.get(&ip).copied().unwrap_or(0);
        if self.cfg.max_per_ip > 0 && per_ip >= self.cfg.max_per_ip && !self.cfg.trusted(ip) {
            return Admission::Refuse(
                format!(
                    "{ip} has {per_ip} connections open, the most server.max_connections_per_ip allows; close some and retry"
                ),
                "max_connections_per_ip",
            );
        }
        if g.total >= self.cfg.max_connections {
            // Make room by closing the connection that has waited longest without sending a
            // request; if every connection is in use, refuse.
            let Some((_, evict)) = g.waiting.pop_first() else {
                return Admission::Refuse(
                    format!(
                        "server is at server.max_connections = {}; retry later",
                        self.cfg.max_connections
                    ),
                    "max_connections",
                );
            };
            evict.notify_one();
            self.metrics.connection_refused("evicted_idle");
        }
        g.next += 1;
        let id = g.next;
        g.total += 1;
        self.metrics.connections_open.set(g.total as i64);
        *g.by_ip.entry(ip).or_insert(0) += 1;
        let evict = Arc::new(Notify::new());
        g.waiting.insert(id, evict.clone());
        Admission::Admit(Arc::new(Ticket {
            gate: self.clone(),
            id,
            ip,
            evict,
            requested: AtomicBool::new(false),
        }))
    }

    fn warn_refused(&self, addr: SocketAddr, why: &str) {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_warn.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && self
                .last_warn
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(addr = %addr, reason = why, "connection refused (further refusals this second are logged at debug)");
        } else {
            debug!(addr = %addr, reason = why, "connection refused");
        }
    }
}

/// A socket that holds its connection's [`Ticket`] until it is dropped, wherever it ends up
/// (hyper's connection, or an upgraded WebSocket).
pub(crate) struct Counted<S> {
    io: S,
    _ticket: Arc<Ticket>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Answers an over-cap socket with a 503 JSON error without waiting for it, then closes it.
fn refuse(tcp: TcpStream, why: &str) {
    let body = serde_json::json!({"error": {"code": "unavailable", "msg": why}}).to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    );
    // Best effort: a fresh socket's send buffer takes this at once; if not, it is closed.
    let _ = tcp.try_write(answer.as_bytes());
}

/// Accepts and serves connections until `shutdown` fires, then lets open HTTP connections
/// finish their current request (WebSocket connections are closed by their own tasks).
pub(crate) async fn run(
    listener: TcpListener,
    gate: Arc<Gate>,
    router: Router,
    tls: Option<super::tls::Tls>,
    mut shutdown: ShutdownSignal,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(err) => {
                // EMFILE/ENFILE: out of descriptors. Back off instead of spinning; the
                // kernel keeps the pending connections queued meanwhile.
                warn!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ticket = match gate.admit(peer.ip()) {
            Admission::Admit(t) => t,
            Admission::Refuse(why, reason) => {
                gate.metrics.connection_refused(reason);
                gate.warn_refused(peer, &why);
                refuse(tcp, &why);
                continue;
            }
        };
        // TCP_NODELAY: answers and deliveries are small writes; with Nagle on, a write behind
        // an unacknowledged one waits for the peer's delayed ACK (~40 ms on Linux).
        if let Err(err) = tcp.set_nodelay(true) {
            debug!(%err, "TCP_NODELAY not set");
        }
        let (gate, router, stop) = (gate.clone(), router.clone(), stop_rx.clone());
        match &tls {
            None => {
                tokio::spawn(serve_conn(tcp, peer, ticket, gate, router, stop));
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                tokio::spawn(async move {
                    // The handshake counts against the header timeout, and a connection still
                    // in its handshake can be closed to make room like one without a request.
                    let evict = ticket.evict.clone();
                    let handshake =
                        tokio::time::timeout(gate.cfg.header_timeout, acceptor.accept(tcp));
                    let stream = tokio::select! {
                        r = handshake => r,
                        _ = evict.notified() => return,
                    };
                    match stream {
                        Ok(Ok(stream)) => {
                            serve_conn(stream, peer, ticket, gate, router, stop).await
                        }
                        Ok(Err(err)) => debug!(addr = %peer, %err, "TLS handshake failed"),
                        Err(_) => {
                            debug!(addr = %peer, "TLS handshake timed out (server.http_header_timeout_ms)")
                        }
                    }
                });
            }
        }
    }
    let _ = stop_tx.send(true);
}

async fn serve_conn<S>(
    io: S,
    peer: SocketAddr,
    ticket: Arc<Ticket>,
    gate: Arc<Gate>,
    router: Router,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let evict = ticket.evict.clone();
    let header_timeout = gate.cfg.header_timeout;
    let io = TokioIo::new(Counted {
        io,
        _ticket: ticket.clone(),
    });
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        ticket.requested();
        let xff = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        let client = gate.cfg.client_addr(peer, xff);
        req.extensions_mut().insert(ConnectInfo(client));
        router.clone().oneshot(req.map(axum::body::Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = builder.serve_connection(io, service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let evicted = evict.notified();
    let mut evicted = std::pin::pin!(evicted);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(err) = r {
                    debug!(addr = %peer, %err, "http connection ended with an error");
                }
                return;
            }
            _ = evicted.as_mut() => {
                debug!(addr = %peer, "closed without a request to make room (server.max_connections)");
                return;
            }
            r = stop.wait_for(|v| *v) => {
                if r.is_err() {
                    return;
                }
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit in effect
/// (`None` if it cannot be read: not a Unix-like system).
pub(crate) fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let cur = getrlimit(Resource::Nofile);
    if cur.current.is_some() && cur.current != cur.maximum {
        let raised = Rlimit {
            current: cur.maximum,
            maximum: cur.maximum,
        };
        if let Err(err) = setrlimit(Resource::Nofile, raised) {
            warn!(%err, "could not raise the open-file limit (RLIMIT_NOFILE) to its hard limit");
        }
    }
    getrlimit(Resource::Nofile).current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_forwarded_for() {
        let r = IpRange::parse("10.0.0.0/8").expect("range");
        assert!(r.contains("10.1.2.3".parse().expect("ip")));
        assert!(!r.contains("11.0.0.1".parse().expect("ip")));
        assert!(r.contains("::ffff:10.0.0.9".parse().expect("ip")));
        let one = IpRange::parse("::1").expect("ip");
        assert!(one.contains("::1".parse().expect("ip")));
        assert!(IpRange::parse("0.0.0.0/0")
            .expect("all")
            .contains("8.8.8.8".parse().expect("ip")));
        assert!(IpRange::parse("10.0.0.0/33").is_err());
        assert!(IpRange::parse("nope").is_err());

        let cfg = ListenerConfig {
            max_connections: 10,
            max_per_ip: 0,
            header_timeout: Duration::from_secs(1),
            trusted_proxies: vec![IpRange::parse("127.0.0.1").expect("ip")],
        };
        let proxy: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let other: SocketAddr = "192.0.2.7:5000".parse().expect("addr");
        // Untrusted peers cannot claim another address.
        assert_eq!(cfg.client_addr(other, Some("203.0.113.5")), other);
        assert_eq!(
            cfg.client_addr(proxy, Some("198.51.100.1, 203.0.113.5"))
                .ip(),
            "203.0.113.5".parse::<IpAddr>().expect("ip"),
            "the last hop the proxy saw is the client; earlier entries are the client's claims"
        );
        assert_eq!(cfg.client_addr(proxy, Some("garbage")), proxy);
        assert_eq!(cfg.client_addr(proxy, None), proxy);
    }
}
