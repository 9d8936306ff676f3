//! A tiny blocking HTTP/1.1 client on `std::net` for the calls the xtask makes: Envoy admin readiness,
//! the demo's self-check of its own curl lines and the admin API calls around it ([`get`], [`post_json`]:
//! one request per connection), and the benches' load ([`Conn`]: keep-alive, headers not kept).
//! Answers are read by their framing (`content-length` or chunked), never by waiting for the peer to
//! close: Envoy holds a connection it was asked to close open for up to a second (`delayed_close_timeout`).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::util::{self, bail, Result};

/// A response: status code, lower-cased headers and body.
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub body: String,
}

impl Response {
    /// The first header named `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `GET path` to `addr` with extra headers.
pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
    once(addr, "GET", path, headers, None)
}

/// Sends `POST path` with a JSON body to `addr` with extra headers.
pub fn post_json(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Response> {
    once(addr, "POST", path, headers, Some(body))
}

/// One request on its own connection (`connection: close`).
fn once(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (name, value) in headers {
        let _ = write!(request, "{name}: {value}\r\n");
    }
    if let Some(body) = body {
        let _ = write!(
            request,
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or_default());
    stream.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut headers = Vec::new();
    let reply = read_response(&mut reader, Some(&mut headers), true)?;
    Ok(Response {
        status: reply.status,
        headers,
        body: String::from_utf8_lossy(&reply.body).into_owned(),
    })
}

/// A keep-alive HTTP/1.1 connection for the benches: requests are prepared bytes
/// ([`get_request`], [`post_request`]) and answers keep only what the benches look at.
pub struct Conn {
    reader: BufReader<TcpStream>,
}

/// One answer on a [`Conn`]: status, `ETag` and body.
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The `ETag` header, when present.
    pub etag: Option<String>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Conn {
    /// Connects to `addr` (Nagle off, 30 s read timeout).
    pub fn open(addr: SocketAddr) -> Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            reader: BufReader::with_capacity(64 * 1024, stream),
        })
    }

    /// Sends a complete request and reads the answer; the connection stays open.
    pub fn exchange(&mut self, request: &[u8]) -> Result<Reply> {
        self.reader.get_mut().write_all(request)?;
        read_response(&mut self.reader, None, false)
    }
}

/// Reads one response by its framing. Header names and values go into `headers` when asked for
/// (lower-cased names); a body framed only by the end of the connection is read to the end only when
/// `until_eof` allows it (a keep-alive peer must frame its answers).
fn read_response(
    reader: &mut impl BufRead,
    mut headers: Option<&mut Vec<(String, String)>>,
    until_eof: bool,
) -> Result<Reply> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        bail!("the peer closed the connection");
    }
    let Some(status) = line.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()) else {
        bail!("bad http status line `{}`", line.trim());
    };
    let mut length = None;
    let mut chunked = false;
    let mut etag = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("connection closed inside the response headers");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            let name = name.trim().to_ascii_lowercase();
            match name.as_str() {
                "content-length" => length = value.parse::<usize>().ok(),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "etag" => etag = Some(value.to_string()),
                _ => {}
            }
            if let Some(headers) = headers.as_deref_mut() {
                headers.push((name, value.to_string()));
            }
        }
    }
    let mut body = Vec::new();
    if status == 304 || status == 204 || (100..200).contains(&status) {
    } else if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size_text = line.trim().split(';').next().unwrap_or_default();
            let Ok(size) = usize::from_str_radix(size_text, 16) else {
                bail!("bad chunk size `{}`", line.trim());
            };
            let start = body.len();
            body.resize(start + size, 0);
            reader
                .read_exact(&mut body[start..])
                .map_err(|e| util::Error::msg(format!("truncated chunk of {size} bytes: {e}")))?;
            let mut crlf = [0u8; 2];
            reader.read_exact(&mut crlf)?;
            if size == 0 {
                break;
            }
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        reader
            .read_exact(&mut body)
            .map_err(|e| util::Error::msg(format!("truncated body of {n} bytes: {e}")))?;
    } else if until_eof {
        reader.read_to_end(&mut body)?;
    } else {
        bail!("response {status} has neither content-length nor chunked encoding");
    }
    Ok(Reply { status, etag, body })
}

/// A keep-alive `GET` request for [`Conn::exchange`].
pub fn get_request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut r = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n");
    for (name, value) in headers {
        let _ = write!(r, "{name}: {value}\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// A keep-alive JSON `POST` with a bearer API key, for [`Conn::exchange`].
pub fn post_request(addr: SocketAddr, path: &str, key: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn parse(raw: &[u8], until_eof: bool) -> Result<(Reply, Vec<(String, String)>)> {
        let mut headers = Vec::new();
        let mut reader = raw;
        let reply = read_response(&mut reader, Some(&mut headers), until_eof)?;
        Ok((reply, headers))
    }

    #[test]
    fn chunked_and_plain_responses_are_decoded() {
        let (plain, headers) = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-A: b\r\nETag: \"c7\"\r\n\r\nLIVE",
            false,
        )
        .unwrap();
        assert_eq!((plain.status, plain.body.as_slice()), (200, &b"LIVE"[..]));
        assert_eq!(plain.etag.as_deref(), Some("\"c7\""));
        assert!(headers.contains(&("x-a".to_string(), "b".to_string())));
        let (chunked, _) = parse(
            b"HTTP/1.1 401 Unauthorized\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(
            (chunked.status, chunked.body.as_slice()),
            (401, &b"abcde"[..])
        );
    }

    #[test]
    fn a_framed_body_is_read_without_waiting_for_the_rest_of_the_stream() {
        // Bytes after the framed body (the next answer on a keep-alive connection) stay unread.
        let mut reader =
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 304 Not Modified\r\n\r\n"[..];
        let first = read_response(&mut reader, None, false).unwrap();
        assert_eq!(first.body, b"ok");
        let second = read_response(&mut reader, None, false).unwrap();
        assert_eq!(second.status, 304);
    }

    #[test]
    fn an_unframed_body_is_read_to_the_end_only_when_allowed() {
        let raw = b"HTTP/1.1 200 OK\r\n\r\nuntil close";
        assert_eq!(parse(raw, true).unwrap().0.body, b"until close");
        assert!(parse(raw, false).is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort", false).is_err());
    }

    #[test]
    fn framed_answers_arrive_before_a_lingering_peer_closes() {
        // Like Envoy's delayed close: the answer is complete but the connection stays open a while.
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .unwrap();
            std::thread::sleep(Duration::from_secs(3));
        });
        let started = std::time::Instant::now();
        let r = get(addr, "/", &[]).unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
