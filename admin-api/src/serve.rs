//! Serves the router on a TCP socket with bounds no client can push past, authenticated or not: a header
//! read timeout, a deadline for each request body, an idle keep-alive timeout and a bound on open
//! connections (`axum::serve` has none of these, and 20,000 half-sent requests used every descriptor).
//!
//! Design of the connection bound: a connection is *busy* from the moment its request header is
//! complete until its response body is dropped, so long-polls and event streams are busy for their
//! whole life; otherwise it is *idle* (waiting for a keep-alive request, or still sending a header).
//! When a new connection arrives at the bound, the connection idle for longest is closed to make room.
//! An unauthenticated client holds idle connections only, so however many it opens it cannot keep
//! `/healthz` or an edge's feed poll out: each new connection sends its request at once and becomes busy.
//! Requests held open (event streams, waiting feed long-polls) take one of nine tenths of the bound's
//! slots (`AppState::held_requests`; without one a stream gets 429 and a long-poll is answered at once),
//! so they never fill the bound alone. Only when every connection is busy is a new one refused.
//! Idle and busy time are both bounded otherwise: hyper cuts a header not complete within the header
//! timeout (its timer also runs while a keep-alive connection waits for its next request), a request
//! body not complete within the body timeout fails, and a connection idle past the idle timeout is closed.
//!
//! Connections are accepted on a thread of their own, which also answers health checks; everything else
//! is served on the main runtime ([`Acceptor`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;

use crate::config::ServeLimits;

/// Serves `router` on `listener` within `limits` until `shutdown` completes, then lets open requests
/// finish for up to ten seconds. Requests carry `ConnectInfo<SocketAddr>` like `axum::serve`'s.
///
/// Connections are accepted on a thread of their own (see [`Acceptor`]), so neither accepting nor a
/// health check waits behind the work queued on this runtime; every other connection is served here.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let registry = Arc::new(Registry::default());
    // Dropping `stop_tx` (this future dropped with its runtime, as in tests) stops the accept thread too.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let acceptor = Acceptor {
        router,
        limits,
        registry: registry.clone(),
        main: tokio::runtime::Handle::current(),
        stop: stop_rx,
    };
    let listener = listener.into_std()?;
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<std::io::Result<()>>();
    std::thread::Builder::new()
        .name("edgewarden-accept".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .and_then(|runtime| runtime.block_on(acceptor.run(listener)));
            let _ = ended_tx.send(result);
        })?;
    tokio::pin!(shutdown);
    tokio::select! {
        () = &mut shutdown => {}
        // The accept loop ends only on `stop`; ending before it is a failure to start.
        ended = ended_rx => {
            return match ended {
                Ok(Err(e)) => Err(e),
                _ => Err(std::io::Error::other("the accept thread ended")),
            };
        }
    }
    let _ = stop_tx.send(true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while registry.len() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Accepts connections on its own thread and runtime, and serves health checks there.
///
/// Why: each revocation wakes every held feed poll, and ten thousand edges then poll again within half
/// a second; on the main runtime a new connection (accepted by a task among those ten thousand) and its
/// request waited in the run queue behind them, and `/healthz` took 150-290 ms at p99 with or without its
/// database check (the fleet bench, issue 12). Here the accept loop runs on a thread of its own; it reads
/// nothing, but peeks at a new connection's first bytes: a connection that opens with `GET /healthz` (or
/// `HEAD`) is served on this thread, one request and closed, so it cannot become a way onto the thread
/// for other work; every other connection is handed to the main runtime (`into_std` / `from_std`, once
/// per connection: edges keep theirs alive). A connection whose first bytes do not settle it (a client
/// sending a byte at a time) goes to the main runtime, where the header timeout applies as before.
struct Acceptor {
    router: Router,
    limits: ServeLimits,
    registry: Arc<Registry>,
    main: tokio::runtime::Handle,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Acceptor {
    async fn run(self, listener: std::net::TcpListener) -> std::io::Result<()> {
        let listener = TcpListener::from_std(listener)?;
        let this = Arc::new(self);
        let mut stop = this.stop.clone();
        let mut last_refusal_log: Option<Instant> = None;
        loop {
            let (stream, addr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of descriptors or a connection reset before accept: wait rather than spin.
                        tracing::warn!(error = %e, "accept error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                // Told to stop, or the serving future is gone.
                _ = stop.changed() => break,
            };
            let registry = &this.registry;
            if registry.len() >= this.limits.max_connections.max(1)
                && !registry.evict_longest_idle()
            {
                // Every connection is answering a request: refuse this one rather than exceed the bound.
                if last_refusal_log.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(
                        max_connections = this.limits.max_connections,
                        "connection bound reached with every connection busy, refusing connections"
                    );
                    last_refusal_log = Some(Instant::now());
                }
                drop(stream);
                continue;
            }
            let conn = Registered::new(registry.clone());
            tokio::spawn(this.clone().route(stream, addr, conn));
        }
        Ok(())
    }

    /// Waits for the connection's first bytes, then serves it here (a health check) or on the main
    /// runtime. Until then it is idle: evictable at the bound, cut at the header timeout.
    async fn route(self: Arc<Self>, stream: TcpStream, addr: SocketAddr, conn: Registered) {
        let mut head = [0u8; 16];
        let mut stop = self.stop.clone();
        let health_check = tokio::select! {
            peeked = stream.peek(&mut head) => match peeked {
                Ok(0) => return,
                Ok(n) => is_health_check(&head[..n]),
                // Let the connection fail where it is served.
                Err(_) => false,
            },
            () = conn.0.evict.notified() => return,
            () = tokio::time::sleep(self.limits.header_timeout) => return,
            _ = stop.changed() => return,
        };
        if health_check {
            serve_connection(stream, addr, &self, conn, false).await;
            return;
        }
        let Ok(stream) = stream.into_std() else {
            return;
        };
        let this = self.clone();
        self.main.spawn(async move {
            // `from_std` registers the socket with the main runtime's reactor.
            if let Ok(stream) = TcpStream::from_std(stream) {
                serve_connection(stream, addr, &this, conn, true).await;
            }
        });
    }
}

/// True when a connection's first bytes are a health check's request line: `GET /healthz` or
/// `HEAD /healthz`, then a space or a query.
fn is_health_check(head: &[u8]) -> bool {
    [&b"GET /healthz"[..], &b"HEAD /healthz"[..]]
        .iter()
        .any(|line| head.starts_with(line) && matches!(head.get(line.len()), Some(b' ' | b'?')))
}

/// A listening socket on `addr` with room for as many connections not yet accepted as `limits` lets be
/// open (at least 1,024; the kernel caps it at `net.core.somaxconn`). `TcpListener::bind`'s 1,024
/// overflowed when ten thousand edges connected at once: a dropped SYN is retried after a second, and a
/// health check waited that long (the fleet bench, issue 12).
pub fn listen(addr: SocketAddr, limits: &ServeLimits) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let backlog = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    socket.listen(backlog.max(1024))
}

/// Descriptors kept for everything but client connections: the database pool, the listener, files,
/// outgoing webhook and JWKS connections.
const RESERVED_DESCRIPTORS: u64 = 256;

/// Makes room for `limits.max_connections` open sockets: raises this process's soft open-file limit up
/// to its hard limit (services often start with a soft limit of 1,024), and when even the hard limit is
/// too low, lowers the bound to fit and says so. A bound above the descriptor limit would fail as
/// `accept error: Too many open files` with `/healthz` unreachable, which the bound exists to prevent.
pub fn fit_descriptor_limit(limits: &mut ServeLimits) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let wanted = limits.max_connections as u64 + RESERVED_DESCRIPTORS;
    let mut current = getrlimit(Resource::Nofile);
    let soft = current.current.unwrap_or(u64::MAX);
    if soft < wanted {
        let raised = current.maximum.map_or(wanted, |hard| hard.min(wanted));
        if raised > soft {
            current.current = Some(raised);
            match setrlimit(Resource::Nofile, current) {
                Ok(()) => tracing::info!(
                    from = soft,
                    to = raised,
                    "raised the open-file limit for the connection bound"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
            }
        }
    }
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    if soft < wanted {
        let fitted = soft.saturating_sub(RESERVED_DESCRIPTORS).max(16) as usize;
        tracing::warn!(
            max_connections = limits.max_connections,
            open_file_limit = soft,
            lowered_to = fitted,
            "the open-file limit is too low for --max-connections; the bound is lowered to fit. Raise the \
             limit (systemd: LimitNOFILE=, shell: ulimit -n) to serve more edges"
        );
        limits.max_connections = fitted;
    }
}

/// Serves one connection's requests until it closes, idles out, is evicted or the server stops;
/// `keep_alive: false` serves one request.
async fn serve_connection(
    stream: TcpStream,
    addr: SocketAddr,
    acceptor: &Acceptor,
    registered: Registered,
    keep_alive: bool,
) {
    let conn = registered.0.clone();
    let limits = &acceptor.limits;
    let router = acceptor.router.clone();
    let mut stop = acceptor.stop.clone();
    let _ = stream.set_nodelay(true);
    let body_timeout = limits.body_timeout;
    let service_conn = conn.clone();
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        let busy = BusyGuard::new(service_conn.clone());
        request.extensions_mut().insert(ConnectInfo(addr));
        let request = request.map(|body| Body::new(DeadlineBody::new(body, body_timeout)));
        let router = router.clone();
        async move {
            let response = match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(response.map(|body| Body::new(GuardedBody { body, _busy: busy })))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(keep_alive);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        // No timer while a request is in progress (a held long-poll can last minutes): the connection waits
        // for its last response to end, then sleeps until its idle time would run out. A tick per connection
        // woke every held long-poll's task once a second for nothing (the fleet bench, issue 12).
        let idle_for = conn.idle_for();
        let busy = conn.busy.load(Ordering::Acquire) > 0;
        let turn = async {
            if busy {
                conn.idle.notified().await;
            } else {
                tokio::time::sleep(limits.idle_timeout.saturating_sub(idle_for)).await;
            }
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, client = %addr, "connection ended with an error");
                }
                break;
            }
            // Evicted to make room under the bound: dropping the connection closes the socket.
            () = conn.evict.notified() => break,
            () = turn => {
                if conn.idle_for() >= limits.idle_timeout {
                    break;
                }
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// A connection counted in the registry until this is dropped, however its task ends (also when the
/// accept thread's runtime drops a health check in progress at shutdown).
struct Registered(Arc<Conn>, Arc<Registry>);

impl Registered {
    fn new(registry: Arc<Registry>) -> Registered {
        Registered(registry.add(), registry)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.1.remove(self.0.id);
    }
}

/// One open connection, as the accept loop, its task and its requests' guards share it.
#[derive(Debug)]
struct Conn {
    id: u64,
    /// Requests whose response body is still alive.
    busy: AtomicUsize,
    /// When the connection last became idle (accepted, or its last response ended).
    idle_since: Mutex<Instant>,
    evict: tokio::sync::Notify,
    /// Told when the last response in progress ends (a stored permit if the task is not waiting yet).
    idle: tokio::sync::Notify,
}

impl Conn {
    fn idle_for(&self) -> Duration {
        if self.busy.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        self.idle_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }
}

/// The open connections, for the bound and for eviction.
#[derive(Debug, Default)]
struct Registry {
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Registry {
    fn len(&self) -> usize {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn add(&self) -> Arc<Conn> {
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            busy: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            evict: tokio::sync::Notify::new(),
            idle: tokio::sync::Notify::new(),
        });
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(conn.id, conn.clone());
        conn
    }

    fn remove(&self, id: u64) {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Closes the connection idle for longest and forgets it at once; false when every one is busy.
    fn evict_longest_idle(&self) -> bool {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let victim = conns
            .values()
            .filter(|c| c.busy.load(Ordering::Acquire) == 0)
            .max_by_key(|c| c.idle_for())
            .map(|c| c.id);
        match victim.and_then(|id| conns.remove(&id)) {
            Some(conn) => {
                // notify_one keeps the wake-up if the task is not waiting yet.
                conn.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Marks its connection busy from a request's header until its response body is dropped.
#[derive(Debug)]
struct BusyGuard(Arc<Conn>);

impl BusyGuard {
    fn new(conn: Arc<Conn>) -> BusyGuard {
        conn.busy.fetch_add(1, Ordering::AcqRel);
        BusyGuard(conn)
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        // Reset the idle clock before the count reaches zero, so no reader sees a stale idle time.
        *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        if self.0.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_one();
        }
    }
}

/// A response body that keeps its connection busy while it is being sent (event streams included).
struct GuardedBody {
    body: Body,
    _busy: BusyGuard,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body that fails once its deadline passes before it is complete, so a client sending a
/// byte a second cannot hold a request open; an empty body (every GET) never waits on it.
struct DeadlineBody {
    body: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl DeadlineBody {
    fn new(body: Incoming, timeout: Duration) -> DeadlineBody {
        DeadlineBody {
            body,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        }
    }
}

/// The error a [`DeadlineBody`] ends with.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {0:?}")]
pub struct BodyTimeout(Duration);

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(self.timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::is_health_check;

    #[test]
    fn only_a_health_check_request_line_is_a_health_check() {
        for yes in [
            &b"GET /healthz HTTP/1.1\r\n"[..],
            b"GET /healthz?verbose HTTP/1.1",
            b"HEAD /healthz HTTP/1.1",
        ] {
            assert!(is_health_check(yes), "{}", String::from_utf8_lossy(yes));
        }
        for no in [
            &b""[..],
            b"GET /healthz",
            b"GET /healthzz HTTP/1.1",
            b"GET /healthz/x HTTP/1.1",
            b"POST /healthz HTTP/1.1",
            b"GET /api/v1/revocations/feed HTTP/1.1",
            b"get /healthz HTTP/1.1",
            b"G",
        ] {
            assert!(!is_health_check(no), "{}", String::from_utf8_lossy(no));
        }
    }
}
