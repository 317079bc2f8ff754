//! The accept loop of both listeners (HTTP and gRPC), with the limits every connection is
//! held to: connections in total and per client address, a header-read timeout (a client
//! must finish a request head that long after it starts one, or after it connects), an idle
//! timeout (no request in flight and no bytes either way), a whole-request timeout (HTTP;
//! gRPC has its own deadlines and streams), header count and size limits, and graceful
//! shutdown (in-flight requests finish, then connections close).
//!
//! Connections over a limit are answered `503` with a V2 error body and closed at once: they
//! never hold a descriptor while waiting.

use axum::body::Body;
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

/// What every connection of a listener is held to.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Open connections at most (past it: 503 and close).
    pub max_connections: usize,
    /// Open connections per client address at most.
    pub max_connections_per_client: usize,
    /// A request head must be complete this long after the connection opens or the head
    /// starts.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no bytes either way is closed after this.
    pub idle_timeout: Duration,
    /// An HTTP request must be answered within this (408 after it); `None` for gRPC.
    pub request_timeout: Option<Duration>,
    /// Header fields per request at most.
    pub max_headers: usize,
    /// Bytes of request head (HTTP/1) or header list (HTTP/2) at most.
    pub max_header_bytes: usize,
}

impl ConnectionLimits {
    /// The limits of `server`, for HTTP (`http = true`) or gRPC.
    pub fn of(server: &invariant_serving::config::ServerConfig, http: bool) -> Self {
        Self {
            max_connections: server.max_connections,
            max_connections_per_client: server.max_connections_per_client,
            header_read_timeout: Duration::from_millis(server.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(server.idle_timeout_ms),
            request_timeout: http.then(|| Duration::from_millis(server.http_request_timeout_ms)),
            max_headers: server.max_headers,
            max_header_bytes: server.max_header_bytes,
        }
    }
}

/// Open connections, in total and by client address.
#[derive(Debug, Default)]
struct Counts {
    total: AtomicUsize,
    by_client: Mutex<HashMap<IpAddr, usize>>,
    closed: tokio::sync::Notify,
}

/// One open connection's place in [`Counts`]; given back on drop.
#[derive(Debug)]
struct Permit {
    counts: Arc<Counts>,
    client: IpAddr,
}

impl Counts {
    fn admit(self: &Arc<Self>, client: IpAddr, limits: &ConnectionLimits) -> Result<Permit, &'static str> {
        let mut by_client = self.by_client.lock().unwrap_or_else(|p| p.into_inner());
        if self.total.load(Ordering::Relaxed) >= limits.max_connections {
            return Err("the server has too many open connections (server.max_connections)");
        }
        let mine = by_client.entry(client).or_insert(0);
        if *mine >= limits.max_connections_per_client {
            return Err("this client has too many open connections (server.max_connections_per_client)");
        }
        *mine += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(Permit {
            counts: self.clone(),
            client,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut by_client = self.counts.by_client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = by_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                by_client.remove(&self.client);
            }
        }
        self.counts.total.fetch_sub(1, Ordering::Relaxed);
        self.counts.closed.notify_waiters();
    }
}

/// What the watchdog of one connection knows: when bytes last moved, how many requests are
/// in flight, since when a request head is awaited (0: none), and whether the connection
/// speaks HTTP/2 (whose idle connections carry PINGs and window updates, not heads: only the
/// idle timeout closes them, with a GOAWAY).
#[derive(Debug)]
struct Activity {
    origin: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    head_since_ms: AtomicU64,
    h2: std::sync::atomic::AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            // A new connection owes a request head from the start (stored +1: 0 means none).
            head_since_ms: AtomicU64::new(1),
            h2: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn moved(&self, read: bool) {
        let now = self.now_ms();
        self.last_ms.store(now, Ordering::Relaxed);
        if read && self.in_flight.load(Ordering::Relaxed) == 0 && !self.h2.load(Ordering::Relaxed) {
            let _ = self
                .head_since_ms
                .compare_exchange(0, now + 1, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// What the watchdog should do now.
    fn next_check(&self, limits: &ConnectionLimits) -> Watch {
        let now = self.now_ms();
        let head = self.head_since_ms.load(Ordering::Relaxed);
        let busy = self.in_flight.load(Ordering::Relaxed) > 0;
        let mut due = u64::MAX;
        if head > 0 && !busy {
            let deadline = head - 1 + limits.header_read_timeout.as_millis() as u64;
            if now >= deadline {
                return Watch::HeadTimeout;
            }
            due = due.min(deadline);
        }
        if !busy {
            let deadline = self.last_ms.load(Ordering::Relaxed) + limits.idle_timeout.as_millis() as u64;
            if now >= deadline {
                return Watch::Idle;
            }
            due = due.min(deadline);
        }
        // Busy: look again in a while (the request's own timeout bounds it).
        let due = if due == u64::MAX {
            now + limits.idle_timeout.as_millis() as u64
        } else {
            due
        };
        Watch::Until(self.origin + Duration::from_millis(due))
    }
}

/// The watchdog's verdict on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    /// Fine until then.
    Until(Instant),
    /// Nothing in flight and no traffic for the idle timeout: close it gracefully.
    Idle,
    /// A request head was owed for longer than the header-read timeout: drop it.
    HeadTimeout,
}

/// A request in flight on a connection: counted while it lives.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: &Arc<Activity>, version: http::Version) -> Self {
        if version == http::Version::HTTP_2 {
            activity.h2.store(true, Ordering::Relaxed);
        }
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.head_since_ms.store(0, Ordering::Relaxed);
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.moved(false);
    }
}

/// A connection's byte stream, noting every read and write in its [`Activity`].
struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.moved(true);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved(false);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved(false);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The 408 of an HTTP request not answered within the request timeout.
fn request_timeout_response(limit: Duration) -> http::Response<Body> {
    let body = serde_json::json!({
        "error": format!(
            "the request was not completed within {} ms (server.http_request_timeout_ms)",
            limit.as_millis()
        )
    });
    let mut response = http::Response::new(Body::from(body.to_string()));
    *response.status_mut() = http::StatusCode::REQUEST_TIMEOUT;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
    response
}

/// Answers a connection over a limit with a 503 (best effort: never waits) and drops it.
fn refuse(stream: TcpStream, why: &str) {
    let body = serde_json::json!({ "error": why }).to_string();
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(reply.as_bytes());
}

/// What a listener serves: an HTTP service that never fails, answering with [`ReplyBody`]s.
pub trait Served:
    Service<http::Request<Body>, Response = http::Response<Self::Reply>, Error = std::convert::Infallible, Future: Send>
    + Clone
    + Send
    + 'static
{
    /// Its reply bodies.
    type Reply: ReplyBody;
}

impl<S, B> Served for S
where
    S: Service<http::Request<Body>, Response = http::Response<B>, Error = std::convert::Infallible, Future: Send>
        + Clone
        + Send
        + 'static,
    B: ReplyBody,
{
    type Reply = B;
}

/// A reply body a listener can send.
pub trait ReplyBody: http_body::Body<Data = Bytes, Error: Into<axum::BoxError>> + Send + 'static {}

impl<B> ReplyBody for B where B: http_body::Body<Data = Bytes, Error: Into<axum::BoxError>> + Send + 'static {}

/// The HTTP/1 and HTTP/2 settings every connection is served with.
fn connection_builder(limits: &ConnectionLimits) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The watchdog times request heads (it also knows HTTP/2 and idle connections).
        .header_read_timeout(None)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// Serves `service` on every connection `listener` accepts (over TLS when `tls` is given),
/// under `limits`, until `shutdown` resolves; then stops accepting, lets every connection
/// finish its requests and close (graceful), and returns once they have (or after `drain`).
pub async fn serve<S: Served>(
    listener: TcpListener,
    service: S,
    limits: ConnectionLimits,
    tls: Option<Arc<crate::tls::Reloadable>>,
    shutdown: impl std::future::Future<Output = ()>,
    drain: Duration,
) {
    let counts = Arc::new(Counts::default());
    let limits = Arc::new(limits);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let builder = Arc::new(connection_builder(&limits));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or a transient error: wait a little rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match counts.admit(peer.ip(), &limits) {
            Ok(p) => p,
            Err(why) => {
                // A plain-text answer means nothing to a TLS client: it is only closed.
                if tls.is_none() {
                    refuse(stream, why);
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            service: service.clone(),
            limits: limits.clone(),
            builder: builder.clone(),
            stop: stop_rx.clone(),
            _permit: permit,
        };
        match &tls {
            None => {
                tokio::spawn(connection.run(stream, Arc::new(Activity::new())));
            }
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                tokio::spawn(async move {
                    // The handshake counts against the header-read timeout, like a head (the
                    // head clock starts with the connection).
                    let activity = Arc::new(Activity::new());
                    match tokio::time::timeout(connection.limits.header_read_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => connection.run(stream, activity).await,
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    let _ = stop_tx.send(true);
    drop(listener);
    let deadline = Instant::now() + drain;
    while counts.total.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        let closed = counts.closed.notified();
        let _ = tokio::time::timeout_at(deadline.min(Instant::now() + Duration::from_millis(100)), closed).await;
    }
}

/// One accepted connection and what serving it needs.
struct Connection<S> {
    service: S,
    limits: Arc<ConnectionLimits>,
    builder: Arc<hyper_util::server::conn::auto::Builder<TokioExecutor>>,
    stop: tokio::sync::watch::Receiver<bool>,
    _permit: Permit,
}

impl<S: Served> Connection<S> {
    /// Serves requests on `stream` until it closes, the watchdog closes it, or shutdown.
    async fn run<I>(self, stream: I, activity: Arc<Activity>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            service,
            limits,
            builder,
            mut stop,
            _permit,
        } = self;
        let io = TokioIo::new(Tracked {
            inner: stream,
            activity: activity.clone(),
        });
        let on_request = activity.clone();
        let timeout = limits.request_timeout;
        let hyper_service = hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            use tracing::Instrument;
            let in_flight = InFlight::new(&on_request, request.version());
            // One id per request, on the request, the reply and the span of its log lines.
            let id = crate::request_id::of(request.headers());
            let id_value = crate::request_id::value(&id);
            request
                .headers_mut()
                .insert(crate::request_id::HEADER, id_value.clone());
            let span =
                tracing::info_span!("request", id = %id, method = %request.method(), path = %request.uri().path());
            let call = service.clone().oneshot(request.map(Body::new));
            async move {
                let _in_flight = in_flight;
                let answered = match timeout {
                    Some(limit) => tokio::time::timeout(limit, call).await.ok(),
                    None => Some(call.await),
                };
                let mut response = match answered {
                    Some(r) => r.map_or_else(|never| match never {}, |r| r.map(Body::new)),
                    None => request_timeout_response(timeout.unwrap_or_default()),
                };
                response.headers_mut().insert(crate::request_id::HEADER, id_value);
                Ok::<_, std::convert::Infallible>(response)
            }
            .instrument(span)
        });
        let connection = builder.serve_connection_with_upgrades(io, hyper_service);
        tokio::pin!(connection);
        // Once closing gracefully, the connection gets the idle timeout to finish.
        let mut closing: Option<Instant> = None;
        loop {
            let wake = match (closing, activity.next_check(&limits)) {
                (Some(until), _) => until,
                (None, Watch::Until(at)) => at,
                (None, Watch::HeadTimeout) => return, // dropped: a slow or silent client
                (None, Watch::Idle) => {
                    connection.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + limits.idle_timeout);
                    continue;
                }
            };
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = tokio::time::sleep_until(wake) => {
                    if closing.is_some() {
                        return;
                    }
                }
                _ = stop.changed(), if closing.is_none() => {
                    connection.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + limits.request_timeout.unwrap_or(limits.idle_timeout));
                }
            }
        }
    }
}

/// The soft limit on open descriptors of this process, if it can be read.
pub fn descriptor_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: 2,
            max_connections_per_client: 1,
            header_read_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(1000),
            request_timeout: None,
            max_headers: 10,
            max_header_bytes: 8192,
        }
    }

    #[test]
    fn connections_are_counted_in_total_and_per_client_and_given_back() {
        let counts = Arc::new(Counts::default());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let c: IpAddr = "127.0.0.3".parse().unwrap();
        let first = counts.admit(a, &limits()).unwrap();
        assert!(counts.admit(a, &limits()).unwrap_err().contains("this client"));
        let _second = counts.admit(b, &limits()).unwrap();
        assert!(counts
            .admit(c, &limits())
            .unwrap_err()
            .contains("too many open connections"));
        drop(first);
        assert!(counts.admit(a, &limits()).is_ok());
        assert_eq!(counts.by_client.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_is_owed_from_the_start_and_idle_counts_only_without_requests() {
        let until = |w: Watch| matches!(w, Watch::Until(_));
        let activity = Arc::new(Activity::new());
        assert!(until(activity.next_check(&limits())));
        tokio::time::advance(Duration::from_millis(150)).await;
        assert_eq!(
            activity.next_check(&limits()),
            Watch::HeadTimeout,
            "no head within the header timeout"
        );
        let activity = Arc::new(Activity::new());
        activity.moved(true);
        let request = InFlight::new(&activity, http::Version::HTTP_11);
        tokio::time::advance(Duration::from_millis(5000)).await;
        assert!(
            until(activity.next_check(&limits())),
            "a request in flight keeps it open"
        );
        drop(request);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(until(activity.next_check(&limits())));
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(
            activity.next_check(&limits()),
            Watch::Idle,
            "idle past the idle timeout"
        );
        // Bytes of a new head after a request restart the head clock.
        activity.moved(true);
        tokio::time::advance(Duration::from_millis(150)).await;
        assert_eq!(activity.next_check(&limits()), Watch::HeadTimeout);
        // HTTP/2: bytes between requests (PINGs, window updates) owe no head; only the idle
        // timeout applies.
        let activity = Arc::new(Activity::new());
        activity.moved(true);
        drop(InFlight::new(&activity, http::Version::HTTP_2));
        activity.moved(true);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(
            until(activity.next_check(&limits())),
            "an idle HTTP/2 connection was cut at the head timeout"
        );
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(activity.next_check(&limits()), Watch::Idle);
    }
}
