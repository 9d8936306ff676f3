//! `cargo xtask bench`: runs the benchmark suites in one go and prints their tables.
//! Each suite is a module with `scenarios()` (the names `--only` matches) and `run(&Options)`:
//! `filter` compares EdgeWarden with Envoy's native `jwt_authn`, `admin` measures the admin API's feed,
//! usage ingestion and behaviour under abuse, `propagation` times a revocation from the admin API's answer to the edge's first 401,
//! `memory` measures what a million revoked jtis cost each Envoy VM and the whole Envoy process,
//! `dashboard` times every admin API call a dashboard page makes at a million tokens,
//! `instructions` counts instructions per request under callgrind (only with `--suite instructions`: it takes minutes).

mod admin;
mod dashboard;
mod filter;
mod fleet;
mod fleet_edges;
mod instructions;
mod memory;
mod propagation;
mod wrk;

use std::time::Duration;

use crate::util::{self, bail, Result};
use crate::{build, install};

/// Options shared by every suite.
pub struct Options {
    /// How long each measured scenario runs (after its warm-up).
    pub duration: Duration,
    /// Only scenarios whose name contains this substring (or one of several, comma-separated).
    pub only: Option<String>,
    /// How many times the filter suite runs every scenario; it reports the median (a shared machine is noisy).
    pub rounds: usize,
    /// Other builds of the filter (`--against <a.wasm,b.wasm>`) the filter suite measures beside this one, in the
    /// same interleaved rounds: the way to tell a change's effect from the machine's noise.
    pub against: Vec<std::path::PathBuf>,
}

impl Options {
    /// True when the scenario `name` is selected by `--only` (every scenario is, without it): its value is one
    /// substring or several separated by commas (`--only "ES256 jwt_authn / 1000,ES256 edgewarden / 1000"`).
    pub fn matches(&self, name: &str) -> bool {
        self.only
            .as_deref()
            .is_none_or(|o| o.split(',').any(|part| name.contains(part)))
    }

    /// True when any of `names` is selected by `--only`.
    pub fn matches_any<'a>(&self, mut names: impl Iterator<Item = &'a String>) -> bool {
        names.any(|n| self.matches(n))
    }
}

/// A benchmark suite.
struct Suite {
    /// Its name, for `--suite`.
    name: &'static str,
    /// Its scenario names, for `--only`.
    scenarios: fn() -> Vec<String>,
    /// It starts Envoy with the filter: Envoy must be installed and the `.wasm` built first.
    needs_filter: bool,
    /// Its entry point.
    run: fn(&Options) -> Result<()>,
}

/// Every suite, in the order they run.
const SUITES: &[Suite] = &[
    Suite {
        name: "filter",
        scenarios: filter::scenarios,
        needs_filter: true,
        run: filter::run,
    },
    Suite {
        name: "admin",
        scenarios: admin_scenarios,
        needs_filter: false,
        run: admin_run,
    },
    Suite {
        name: "propagation",
        scenarios: propagation::scenarios,
        needs_filter: true,
        run: propagation::run,
    },
    Suite {
        name: "memory",
        scenarios: memory::scenarios,
        needs_filter: true,
        run: memory::run,
    },
    Suite {
        name: "dashboard",
        scenarios: dashboard::scenarios,
        needs_filter: false,
        run: dashboard::run,
    },
    Suite {
        name: "instructions",
        scenarios: instructions::scenarios,
        needs_filter: true,
        run: instructions::run,
    },
];

/// Suites that run only when `--suite` names them.
const ONLY_WHEN_NAMED: &[&str] = &["instructions"];

/// The admin suite's scenarios: feed, usage and abuse (`admin.rs`), then the fleet of long-polling edges (`fleet.rs`).
fn admin_scenarios() -> Vec<String> {
    let mut names = admin::scenarios();
    names.extend(fleet::scenarios());
    names
}

/// Runs the admin suite: the feed, usage and abuse scenarios, then the fleet.
fn admin_run(options: &Options) -> Result<()> {
    admin::run(options)?;
    fleet::run(options)
}

/// Parses options, installs and builds what the selected suites need, then runs them.
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
        rounds: match util::flag_value(args, "--rounds") {
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => bail!("--rounds needs a positive whole number, got `{v}`"),
            },
            None => 3,
        },
        only: util::flag_value(args, "--only").map(str::to_string),
        against: util::flag_value(args, "--against")
            .map(|v| v.split(',').map(std::path::PathBuf::from).collect())
            .unwrap_or_default(),
    };
    for path in &options.against {
        if !path.is_file() {
            bail!(
                "--against {}: no such file; copy a built edgewarden_filter.wasm aside first",
                path.display()
            );
        }
    }
    let suite = util::flag_value(args, "--suite");
    if let Some(name) = suite {
        if !SUITES.iter().any(|s| s.name == name) {
            let names: Vec<&str> = SUITES.iter().map(|s| s.name).collect();
            bail!("no bench suite `{name}`; there are: {}", names.join(", "));
        }
    }

    // A suite runs when `--suite` names it (or is absent) and `--only` selects one of its scenarios,
    // so `--only admin` or `--only memory` neither starts nor builds what the other suites need.
    let selected: Vec<&Suite> = SUITES
        .iter()
        .filter(|s| match suite {
            Some(wanted) => wanted == s.name,
            None => !ONLY_WHEN_NAMED.contains(&s.name),
        })
        .filter(|s| options.matches_any((s.scenarios)().iter()))
        .collect();
    if selected.is_empty() {
        let all: Vec<String> = SUITES.iter().flat_map(|s| (s.scenarios)()).collect();
        bail!(
            "no bench scenario matches --only {:?}; the scenarios are:\n  {}",
            options.only.as_deref().unwrap_or_default(),
            all.join("\n  ")
        );
    }
    if selected.iter().any(|s| s.needs_filter) {
        install::run()?;
        if selected.iter().any(|s| s.name == "filter") {
            install::ensure_apt_tool("wrk", "wrk")?;
            build::floor()?;
        }
        build::run()?;
    }

    for s in selected {
        util::step(&format!("bench suite: {}", s.name));
        (s.run)(&options)?;
    }
    Ok(())
}

/// The `q`-quantile of sorted durations (nearest rank).
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
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
    fn quantiles_pick_from_sorted_latencies() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&sorted, 0.5), Duration::from_millis(51));
        assert_eq!(quantile(&sorted, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn only_selects_suites_by_their_scenario_names() {
        let options = |only: &str| Options {
            duration: Duration::from_secs(1),
            rounds: 1,
            only: Some(only.to_string()),
            against: Vec::new(),
        };
        let selected = |only: &str| -> Vec<&str> {
            SUITES
                .iter()
                .filter(|s| options(only).matches_any((s.scenarios)().iter()))
                .map(|s| s.name)
                .collect()
        };
        assert_eq!(selected("propagation"), ["propagation"]);
        assert_eq!(selected("admin"), ["admin"]);
        assert_eq!(selected("memory"), ["memory"]);
        assert_eq!(selected("1000 tokens"), ["filter"]);
        assert_eq!(selected("sqlite"), ["admin", "propagation", "dashboard"]);
        assert_eq!(selected("dashboard"), ["dashboard"]);
        assert!(selected("nothing like this").is_empty());
        // Several substrings, comma-separated: any of them selects.
        assert_eq!(selected("propagation,memory"), ["propagation", "memory"]);
        assert!(
            options("ES256 jwt_authn / 1000,RS256 no auth").matches("RS256 no auth / 1000 tokens")
        );
        assert!(
            !options("ES256 jwt_authn / 1000,RS256 no auth").matches("ES256 no auth / 1000 tokens")
        );
    }

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
