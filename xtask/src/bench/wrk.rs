//! Drives `wrk` (Debian's package) as the load generator: a Lua script rotates the `Authorization`
//! header over a file of tokens and prints one machine-readable result line, which is parsed here.
//! wrk runs pinned to its own CPU so it never competes with the single Envoy worker.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::util::{self, bail, Result};

/// The Lua script: tokens from the file named by the first script argument, round-robin per request.
const SCRIPT: &str = r#"-- written by cargo xtask bench: rotates the bearer token over a pool
local tokens = {}
local i = 0
function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then tokens[#tokens + 1] = "Bearer " .. line end
  end
end
function request()
  i = i % #tokens + 1
  return wrk.format("GET", "/", { ["Authorization"] = tokens[i] })
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "EDGEWARDEN_RESULT requests=%d duration_us=%d status_errors=%d socket_errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"#;

/// What one wrk run measured.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Completed requests.
    pub requests: u64,
    /// Wall time of the run.
    pub duration: Duration,
    /// Responses that were not 2xx/3xx.
    pub status_errors: u64,
    /// Connect, read, write and timeout errors.
    pub socket_errors: u64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
}

impl Measured {
    /// Requests per second.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.duration.as_secs_f64().max(1e-9)
    }
}

/// Runs wrk against `port` for `duration` with tokens from `tokens_file`, pinned to `cpu`.
pub fn run(port: u16, tokens_file: &Path, duration: Duration, cpu: usize) -> Result<Measured> {
    let script = util::target_dir().join("bench/rotate-token.lua");
    if let Some(dir) = script.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&script, SCRIPT)?;
    let mut cmd = if util::have("taskset") {
        let mut c = Command::new("taskset");
        c.arg("-c").arg(cpu.to_string()).arg("wrk");
        c
    } else {
        Command::new("wrk")
    };
    cmd.args(["-t1", "-c32", "--timeout", "5s"])
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("-s")
        .arg(&script)
        .arg(format!("http://127.0.0.1:{port}/"))
        .arg("--")
        .arg(tokens_file);
    let out = util::output(&mut cmd)?;
    parse(&out)
}

fn parse(out: &str) -> Result<Measured> {
    let Some(line) = out.lines().find(|l| l.starts_with("EDGEWARDEN_RESULT ")) else {
        bail!("wrk printed no result line:\n{out}");
    };
    let field = |name: &str| -> Result<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| util::Error::msg(format!("wrk result has no {name}: {line}")))
    };
    Ok(Measured {
        requests: field("requests")?,
        duration: Duration::from_micros(field("duration_us")?),
        status_errors: field("status_errors")?,
        socket_errors: field("socket_errors")?,
        p50: Duration::from_micros(field("p50_us")?),
        p99: Duration::from_micros(field("p99_us")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_line_is_parsed() {
        let m = parse("Running 5s test\nEDGEWARDEN_RESULT requests=1000 duration_us=2000000 status_errors=1 socket_errors=2 p50_us=800 p99_us=2500\n").unwrap();
        assert_eq!(m.requests, 1000);
        assert_eq!(m.rps(), 500.0);
        assert_eq!((m.status_errors, m.socket_errors), (1, 2));
        assert_eq!(m.p99, Duration::from_micros(2500));
        assert!(parse("nothing").is_err());
    }
}
