//! `cargo xtask bench`: runs the benchmark suites in one go and prints their tables.
//! Each suite is a module with `run(&Options) -> Result<()>`; `filter` compares EdgeWarden with Envoy's
//! native `jwt_authn`. Later suites (the admin API's feed and usage benches, revocation propagation)
//! add a module here and a line in [`SUITES`].

mod admin;
mod filter;
mod wrk;

use std::time::Duration;

use crate::util::{self, bail, Result};
use crate::{build, install};

/// Options shared by every suite.
pub struct Options {
    /// How long each measured scenario runs (after its warm-up).
    pub duration: Duration,
    /// Only scenarios whose name contains this substring.
    pub only: Option<String>,
}

/// A benchmark suite: its name (for `--suite`) and its entry point.
type Suite = (&'static str, fn(&Options) -> Result<()>);

/// Every suite, in the order they run.
const SUITES: &[Suite] = &[("filter", filter::run), ("admin", admin::run)];

/// Parses options, installs and builds what the suites need, then runs them.
pub fn run(args: &[String]) -> Result<()> {
    let duration = match util::flag_value(args, "--duration") {
        Some(v) => match v.parse::<u64>() {
            Ok(s) if s > 0 => Duration::from_secs(s),
            _ => bail!("--duration needs a whole number of seconds, got `{v}`"),
        },
        None => Duration::from_secs(5),
    };
    let options = Options {
        duration,
        only: util::flag_value(args, "--only").map(str::to_string),
    };
    let suite = util::flag_value(args, "--suite");
    if let Some(name) = suite {
        if !SUITES.iter().any(|(n, _)| *n == name) {
            let names: Vec<&str> = SUITES.iter().map(|(n, _)| *n).collect();
            bail!("no bench suite `{name}`; there are: {}", names.join(", "));
        }
    }

    // `--only admin...` names only admin scenarios: skip the filter suite and the Envoy setup it needs.
    let admin_only = options
        .only
        .as_deref()
        .is_some_and(|o| o.starts_with("admin"));
    let runs =
        |name: &str| suite.is_none_or(|wanted| wanted == name) && !(admin_only && name == "filter");
    if runs("filter") {
        install::run()?;
        install::ensure_apt_tool("wrk", "wrk")?;
        build::run()?;
    }

    for (name, run_suite) in SUITES {
        if runs(name) {
            util::step(&format!("bench suite: {name}"));
            run_suite(&options)?;
        }
    }
    Ok(())
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub fn process_cpu(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        bail!("unexpected /proc/{pid}/stat format");
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| util::Error::msg(format!("no cpu field {i} in /proc/{pid}/stat")))
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_secs_f64(
        total as f64 / clock_ticks_per_second() as f64,
    ))
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`), 100 on Linux unless proven otherwise.
fn clock_ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        util::output(std::process::Command::new("getconf").arg("CLK_TCK"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_cpu_time_is_readable_and_grows() {
        let before = process_cpu(std::process::id()).unwrap();
        let mut x = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = process_cpu(std::process::id()).unwrap();
        assert!(after >= before);
    }
}
