//! The fleet's edges on one thread: every edge's keep-alive connection driven by one `mio` event loop.
//!
//! The first load generator ran one OS thread per edge. A revocation woke ten thousand threads at once on
//! the same two cores as the replica, and the bench then measured the scheduler more than the admin API:
//! the replica used half a core while its answers waited for their readers. Here one thread reads every
//! answer as soon as it lands, so the arrival times are the replica's. Each edge behaves as the filter
//! does: it long-polls the feed with its own name and cursor (`since`, `wait`, `If-None-Match`), polls
//! again at once after an answer that ran its course, waits out the poll interval after a 304 that came
//! back at once, and reconnects a second after a failure.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::Value;

use super::fleet::{Shared, POLL_INTERVAL, WAIT_SECONDS};

/// New connections opened per loop turn, so the replica's accept backlog is never overrun.
const CONNECTS_PER_TURN: usize = 200;
/// Longest the loop sleeps without an event (how soon it sees `stop`).
const IDLE_TURN: Duration = Duration::from_millis(50);
/// Longest a poll may stay unanswered: the replica holds it at most `wait` seconds.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(WAIT_SECONDS + 15);

/// Where an edge is in its cycle.
enum Phase {
    /// Not connected; connects when its turn (and the time) comes.
    Idle,
    /// Connecting, or writing its request.
    Sending,
    /// Waiting for the answer.
    Waiting,
}

struct Edge {
    index: usize,
    name: String,
    stream: Option<TcpStream>,
    phase: Phase,
    since: i64,
    etag: Option<String>,
    out: Vec<u8>,
    written: usize,
    input: Vec<u8>,
    sent: Instant,
    counted: bool,
}

/// Runs `edges` edges against `addr` until `shared.stop`; returns when every connection is closed.
pub fn run(edges: usize, addr: SocketAddr, key: &str, shared: &Arc<Shared>) -> std::io::Result<()> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut fleet: Vec<Edge> = (0..edges)
        .map(|index| Edge {
            index,
            name: format!("fleet-edge-{index:05}"),
            stream: None,
            phase: Phase::Idle,
            since: 0,
            etag: None,
            out: Vec::new(),
            written: 0,
            input: Vec::with_capacity(4096),
            sent: Instant::now(),
            counted: false,
        })
        .collect();
    // Edges due to (re)connect or poll again, earliest first; every edge starts due now.
    let mut due: BinaryHeap<Reverse<(Instant, usize)>> =
        (0..edges).map(|i| Reverse((Instant::now(), i))).collect();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut last_sweep = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let mut connects = 0;
        while let Some(Reverse((at, index))) = due.peek().copied() {
            if at > now || (fleet[index].stream.is_none() && connects == CONNECTS_PER_TURN) {
                break;
            }
            due.pop();
            let edge = &mut fleet[index];
            if edge.stream.is_none() {
                connects += 1;
                match TcpStream::connect(addr) {
                    Ok(mut stream) => {
                        let _ = stream.set_nodelay(true);
                        poll.registry().register(
                            &mut stream,
                            Token(index),
                            Interest::READABLE | Interest::WRITABLE,
                        )?;
                        edge.stream = Some(stream);
                    }
                    Err(e) => {
                        shared.error(format!("{}: connect: {e}", edge.name));
                        due.push(Reverse((now + Duration::from_secs(1), index)));
                        continue;
                    }
                }
            }
            start_poll(edge, addr, key, shared);
            if let Err(e) = flush(edge) {
                fail(edge, &poll, shared, &mut due, &e);
            }
        }
        let timeout = due
            .peek()
            .map_or(IDLE_TURN, |Reverse((at, _))| {
                at.saturating_duration_since(Instant::now())
            })
            .min(IDLE_TURN);
        poll.poll(&mut events, Some(timeout))?;
        for event in events.iter() {
            let index = event.token().0;
            let Some(edge) = fleet.get_mut(index) else {
                continue;
            };
            if edge.stream.is_none() {
                continue;
            }
            if event.is_writable() && matches!(edge.phase, Phase::Sending) {
                if let Err(e) = flush(edge) {
                    fail(edge, &poll, shared, &mut due, &e);
                    continue;
                }
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                match receive(edge, &mut buffer, shared) {
                    Ok(Some(next)) => due.push(Reverse((next, index))),
                    Ok(None) => {}
                    Err(e) => fail(edge, &poll, shared, &mut due, &e),
                }
            }
        }
        // A poll the replica never answered counts as a failure, as the filter's callout timeout would.
        let now = Instant::now();
        if now - last_sweep > Duration::from_secs(1) {
            last_sweep = now;
            for edge in &mut fleet {
                if matches!(edge.phase, Phase::Waiting) && now - edge.sent > ANSWER_TIMEOUT {
                    let error = format!("no answer within {ANSWER_TIMEOUT:?}");
                    fail(edge, &poll, shared, &mut due, &error);
                }
            }
        }
    }
    for edge in &mut fleet {
        if let Some(mut stream) = edge.stream.take() {
            let _ = poll.registry().deregister(&mut stream);
        }
    }
    Ok(())
}

/// Builds the edge's next poll and counts it as held.
fn start_poll(edge: &mut Edge, addr: SocketAddr, key: &str, shared: &Shared) {
    edge.out.clear();
    let _ = write!(
        edge.out,
        "GET /api/v1/revocations/feed?since={}&wait={WAIT_SECONDS} HTTP/1.1\r\nhost: {addr}\r\n\
         authorization: Bearer {key}\r\nx-edgewarden-edge: {}\r\n",
        edge.since, edge.name
    );
    if let Some(tag) = &edge.etag {
        let _ = write!(edge.out, "if-none-match: {tag}\r\n");
    }
    edge.out.extend_from_slice(b"\r\n");
    edge.written = 0;
    edge.input.clear();
    edge.phase = Phase::Sending;
    edge.sent = Instant::now();
    shared.held.fetch_add(1, Ordering::Relaxed);
}

/// Writes what the socket takes of the pending request; a connection still being made takes nothing yet.
fn flush(edge: &mut Edge) -> Result<(), String> {
    let Some(stream) = edge.stream.as_mut() else {
        return Ok(());
    };
    if let Ok(Some(e)) | Err(e) = stream.take_error() {
        return Err(format!("connect: {e}"));
    }
    while edge.written < edge.out.len() {
        match stream.write(&edge.out[edge.written..]) {
            Ok(0) => return Err("the replica closed the connection".into()),
            Ok(n) => edge.written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotConnected => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("write: {e}")),
        }
    }
    edge.phase = Phase::Waiting;
    Ok(())
}

/// Reads what arrived; when a whole answer is in, handles it and says when the next poll is due.
fn receive(edge: &mut Edge, buffer: &mut [u8], shared: &Shared) -> Result<Option<Instant>, String> {
    let Some(stream) = edge.stream.as_mut() else {
        return Ok(None);
    };
    let mut closed = false;
    loop {
        match stream.read(buffer) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => edge.input.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let arrived = Instant::now();
    let Some(reply) = parse_reply(&edge.input)? else {
        return if closed {
            Err("the replica closed the connection".into())
        } else {
            Ok(None)
        };
    };
    shared.held.fetch_sub(1, Ordering::Relaxed);
    if !edge.counted {
        edge.counted = true;
        shared.connected.fetch_add(1, Ordering::Relaxed);
    }
    edge.phase = Phase::Idle;
    match reply.status {
        200 => match serde_json::from_slice::<Value>(&reply.body)
            .ok()
            .and_then(|v| v["cursor"].as_i64())
        {
            Some(cursor) => {
                edge.since = cursor;
                edge.etag = reply.etag;
                *shared.seen[edge.index]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = (cursor, Some(arrived));
                Ok(Some(arrived))
            }
            None => Err(format!("{}: a 200 without an integer cursor", edge.name)),
        },
        304 => {
            shared.not_modified.fetch_add(1, Ordering::Relaxed);
            // A 304 answered at once (no held-request slot) waits out the poll interval; one that ran its
            // course is followed by the next poll at once.
            Ok(Some(edge.sent + POLL_INTERVAL.max(arrived - edge.sent)))
        }
        status => Err(format!(
            "answered {status}: {}",
            String::from_utf8_lossy(&reply.body)
        )),
    }
}

/// Closes the edge's connection after a failure, records it, and schedules a reconnect a second later.
fn fail(
    edge: &mut Edge,
    poll: &Poll,
    shared: &Shared,
    due: &mut BinaryHeap<Reverse<(Instant, usize)>>,
    error: &str,
) {
    if !shared.stop.load(Ordering::Relaxed) {
        shared.error(format!("{}: {error}", edge.name));
    }
    if !matches!(edge.phase, Phase::Idle) {
        shared.held.fetch_sub(1, Ordering::Relaxed);
    }
    if let Some(mut stream) = edge.stream.take() {
        let _ = poll.registry().deregister(&mut stream);
    }
    edge.phase = Phase::Idle;
    edge.input.clear();
    due.push(Reverse((
        Instant::now() + Duration::from_secs(1),
        edge.index,
    )));
}

/// One parsed answer.
pub(super) struct Reply {
    pub(super) status: u16,
    etag: Option<String>,
    pub(super) body: Vec<u8>,
}

/// Parses a whole answer from `input` (content-length or chunked framing), or `None` if more must come.
pub(super) fn parse_reply(input: &[u8]) -> Result<Option<Reply>, String> {
    let Some(head_end) = find(input, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&input[..head_end]).map_err(|_| "a non-UTF-8 header")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line `{status_line}`"))?;
    let (mut length, mut chunked, mut etag) = (0usize, false, None);
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().unwrap_or(0),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "etag" => etag = Some(value.to_string()),
                _ => {}
            }
        }
    }
    let rest = &input[head_end + 4..];
    if status == 304 {
        return Ok(Some(Reply {
            status,
            etag,
            body: Vec::new(),
        }));
    }
    let body = if chunked {
        match dechunk(rest)? {
            Some(body) => body,
            None => return Ok(None),
        }
    } else if rest.len() < length {
        return Ok(None);
    } else {
        rest[..length].to_vec()
    };
    Ok(Some(Reply { status, etag, body }))
}

/// A chunked body once its last chunk is in, else `None`.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find(rest, b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&rest[..line_end]).unwrap_or("");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size `{size_text}`"))?;
        let needed = line_end + 2 + size + 2;
        if rest.len() < needed {
            return Ok(None);
        }
        body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
        rest = &rest[needed..];
        if size == 0 {
            return Ok(Some(body));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
