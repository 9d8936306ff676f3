//! The demo's upstream service: a std-only HTTP/1.1 server that answers every request with JSON
//! describing what it received (method, path, request headers), so a person trying the demo SEES
//! which claim headers EdgeWarden forwarded and that the bearer token and spoofed headers never arrived.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::util::Result;

/// Binds `addr` and serves on background threads for the rest of the process.
pub fn start(addr: SocketAddr) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                // A broken client connection only ends that connection.
                let _ = serve(stream);
            });
        }
    });
    Ok(local)
}

/// Serves requests on one connection until the peer closes it (keep-alive, as Envoy pools connections).
fn serve(stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut headers = Map::new();
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let name = name.trim().to_ascii_lowercase();
                let value = value.trim().to_string();
                if name == "content-length" {
                    content_length = value.parse().unwrap_or(0);
                }
                headers.insert(name, Value::String(value));
            }
        }
        // Drain a request body; the demo does not look at it.
        std::io::copy(
            &mut (&mut reader).take(content_length as u64),
            &mut std::io::sink(),
        )?;
        let body = serde_json::to_string_pretty(&json!({
            "upstream": "edgewarden demo upstream",
            "method": method,
            "path": path,
            "headers": headers,
        }))
        .unwrap_or_default()
            + "\n";
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        writer.write_all(response.as_bytes())?;
        let close = headers
            .get("connection")
            .and_then(Value::as_str)
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        if close {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http;

    #[test]
    fn upstream_echoes_method_path_and_headers() {
        let addr = start(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let r = http::get(addr, "/api/read?x=1", &[("x-edgewarden-sub", "alice")]).unwrap();
        assert_eq!(r.status, 200);
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["method"], "GET");
        assert_eq!(body["path"], "/api/read?x=1");
        assert_eq!(body["headers"]["x-edgewarden-sub"], "alice");
    }
}
