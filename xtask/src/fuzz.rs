//! `cargo xtask fuzz [target] [--minutes N | --seconds N] [--plateau M] [--merge | --merge-only] [--seeds] [--bytes-only]
//! [--explain]`:
//! coverage-guided fuzzing of every parser that reads outside bytes, with AFL++ through `cargo-afl` (stable
//! Rust; libFuzzer needs nightly). The targets are in `fuzz/` (its own workspace), built with AFL++
//! instrumentation into `target/afl`. Each run first replays the target's corpus (`fuzz/corpus/<target>/`)
//! with the instrumented binary outside AFL, so a known crashing input fails at once with its file name, then
//! fuzzes it. The targets that read JSON also get the structure-aware mutator of `fuzz/mutator` beside AFL's
//! byte mutations (`--bytes-only` leaves it out, to compare).
//! `cargo xtask test` calls [`smoke`]: every target, its corpus replayed and a short bounded AFL run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::fuzz_explain;
use crate::install;
use crate::util::{self, bail, Result};

/// Every target, as `fuzz/src/bin/<target>.rs` and `fuzz/corpus/<target>/` name them.
pub const TARGETS: [&str; 10] = [
    "token",
    "token_generated",
    "config",
    "jwks",
    "feed",
    "feed_binary",
    "snapshot",
    "shared_state",
    "headers",
    ADMIN,
];

/// The target that compiles the admin API (feature `admin`): built in its own directory and left out of the
/// smoke.
const ADMIN: &str = "admin";

/// The targets whose inputs are JSON (behind `admin`'s selector byte): afl-fuzz loads the structure-aware
/// mutator (`fuzz/mutator`, `AFL_CUSTOM_MUTATOR_LIBRARY`) for them.
const JSON_TARGETS: [&str; 4] = ["config", "jwks", "feed", ADMIN];

/// Seconds of AFL per target in `cargo xtask test`: enough to run the corpus and a few hundred thousand
/// mutations, short enough that ten targets add about three and a half minutes.
pub const SMOKE_SECONDS: u64 = 20;

/// A hang is an input that runs longer than this (AFL's `-t`, in milliseconds): the slowest seed takes
/// milliseconds, and a shared 2-core machine must not turn a slow moment into a reported hang.
const HANG_MS: u64 = 5000;

fn fuzz_dir() -> PathBuf {
    util::project_root().join("fuzz")
}

fn corpus_dir(target: &str) -> PathBuf {
    fuzz_dir().join("corpus").join(target)
}

/// The target's AFL++ dictionary (`fuzz/src/dict.rs` makes them from the seeds), for the targets that have one.
fn dictionary(target: &str) -> Option<PathBuf> {
    let path = fuzz_dir().join("dict").join(format!("{target}.dict"));
    path.is_file().then_some(path)
}

/// Where the instrumented build goes: its RUSTFLAGS differ from every other build's. Runs' output and merge
/// staging go here too.
fn afl_target_dir() -> PathBuf {
    util::target_dir().join("afl")
}

/// Where the `admin` target is built: its feature turns on features of shared dependencies (`p256`, `rsa`,
/// `elliptic-curve`, `serde_json` and more gain `std`, `pem`, `raw_value`, ...), so in one directory with the
/// others every switch between a run with `admin` and one without recompiled them (9 minutes on a 2-core
/// machine), and the other targets were a different program from one run to the next (`token`: 75,584
/// instrumented edges without the feature, 77,120 with it).
fn afl_admin_target_dir() -> PathBuf {
    util::target_dir().join("afl-admin")
}

fn binary(name: &str) -> PathBuf {
    let dir = if name == ADMIN {
        afl_admin_target_dir()
    } else {
        afl_target_dir()
    };
    dir.join("release").join(name)
}

fn output_dir(target: &str) -> PathBuf {
    afl_target_dir().join("out").join(target)
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// Runs `cargo xtask fuzz` with its arguments.
pub fn run(args: &[String]) -> Result<()> {
    let mut targets: Vec<&str> = Vec::new();
    let mut seconds = 10 * 60;
    let mut plateau: Option<u64> = None;
    let mut merge = false;
    let mut merge_only = false;
    let mut seeds = false;
    let mut bytes_only = false;
    let mut explain = false;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--minutes" | "--seconds" => {
                let Some(value) = rest.next().and_then(|v| v.parse::<u64>().ok()) else {
                    bail!("{arg} needs a whole number, for example `{arg} 10`");
                };
                seconds = if arg == "--minutes" { value * 60 } else { value };
            }
            "--plateau" => {
                let Some(value) = rest.next().and_then(|v| v.parse::<u64>().ok()).filter(|v| *v > 0) else {
                    bail!("--plateau needs a whole number of minutes without a new path, for example `--plateau 5`");
                };
                plateau = Some(value * 60);
            }
            "--merge" => merge = true,
            "--merge-only" => merge_only = true,
            "--seeds" => seeds = true,
            "--bytes-only" => bytes_only = true,
            "--explain" => explain = true,
            name => match TARGETS.iter().find(|t| **t == name) {
                Some(t) => targets.push(t),
                None => bail!(
                    "unknown fuzz target or option `{name}`: the targets are {}; options --minutes N, --seconds N, --plateau M, --merge, --merge-only, --seeds, --bytes-only, --explain",
                    TARGETS.join(", ")
                ),
            },
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    install::afl()?;
    build(targets.contains(&ADMIN))?;
    if seeds {
        write_seeds()?;
    }
    if merge_only || explain {
        // What an earlier run left in target/afl/out (one stopped with Ctrl-C before its merge, for instance): merge
        // it, or say where its new edges are (EdgeWarden's code or a dependency's).
        for target in &targets {
            let queue = output_dir(target).join("default/queue");
            if !queue.is_dir() {
                bail!(
                    "no AFL queue for {target} in {}: run `cargo xtask fuzz {target}` first",
                    output_dir(target).display()
                );
            }
            if explain {
                fuzz_explain::explain(target, &queue, queue_names(&queue)?, &binary(target))?;
            } else {
                merge_queue(target)?;
            }
        }
        return Ok(());
    }
    let mutator = if bytes_only || !targets.iter().any(|t| JSON_TARGETS.contains(t)) {
        None
    } else {
        Some(build_mutator()?)
    };
    let mut reports = Vec::new();
    for target in &targets {
        replay(target)?;
        let report = fuzz(target, seconds, plateau, mutator.as_deref())?;
        if merge {
            merge_queue(target)?;
        }
        reports.push(report);
    }
    summarize(&reports)
}

/// What `cargo xtask test` runs: every target's corpus replayed, then [`SMOKE_SECONDS`] of AFL on each; fails
/// on a corpus input that crashes or hangs and on any crash or hang AFL finds in the bounded run.
/// The `admin` target is left out: built with AFL's instrumentation, the admin API's dependencies (sqlx,
/// axum, rustls, ...) took 14 minutes of a cold run for one target whose parsers the admin API's own tests
/// cover; `cargo xtask fuzz admin` runs it.
pub fn smoke() -> Result<()> {
    install::afl()?;
    build(false)?;
    let mutator = build_mutator()?;
    let mut reports = Vec::new();
    for target in TARGETS.iter().filter(|t| **t != ADMIN) {
        replay(target)?;
        reports.push(fuzz(target, SMOKE_SECONDS, None, Some(&mutator))?);
    }
    summarize(&reports)
}

/// Builds the targets with AFL++ instrumentation into `target/afl`, and the `admin` target (feature `admin`,
/// which compiles the admin API) into `target/afl-admin` when `admin` is set, so neither build changes the
/// other's programs.
fn build(admin: bool) -> Result<()> {
    util::step("build the fuzz targets with AFL++ instrumentation (target/afl; the first build takes a few minutes)");
    afl_build(&afl_target_dir(), &["--bins"])?;
    if admin {
        util::step("build the admin target with AFL++ instrumentation (target/afl-admin; the first build takes about 14 minutes)");
        afl_build(
            &afl_admin_target_dir(),
            &["--bin", ADMIN, "--features", ADMIN],
        )?;
    }
    Ok(())
}

/// `cargo afl build --release --locked` in `fuzz/` with `what` (bins and features) into `target_dir`.
fn afl_build(target_dir: &Path, what: &[&str]) -> Result<()> {
    util::run(
        Command::new(cargo())
            .current_dir(fuzz_dir())
            .args(["afl", "build", "--release", "--locked"])
            .args(what)
            .env("CARGO_TARGET_DIR", target_dir),
    )
}

/// Builds the JSON mutator (`fuzz/mutator`, a member of the main workspace) as the shared library afl-fuzz
/// loads, without AFL's instrumentation (an instrumented library would not load outside a target), and
/// returns its path.
fn build_mutator() -> Result<PathBuf> {
    util::step("build the JSON mutator (fuzz/mutator) that afl-fuzz loads for the JSON targets");
    util::run(
        Command::new(cargo())
            .current_dir(util::project_root())
            .args(["build", "--locked", "-p", "edgewarden-fuzz-mutator"]),
    )?;
    let library = util::target_dir().join("debug").join(format!(
        "{}edgewarden_fuzz_mutator{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    if !library.is_file() {
        bail!(
            "cargo built edgewarden-fuzz-mutator but {} is missing: is its crate-type still cdylib?",
            library.display()
        );
    }
    Ok(library)
}

/// Writes the seed corpora (`fuzz/src/seeds.rs`) into `fuzz/corpus` and the dictionaries made from them
/// (`fuzz/src/dict.rs`) into `fuzz/dict`.
fn write_seeds() -> Result<()> {
    util::step("seed corpora and dictionaries");
    util::run(
        Command::new(binary("fuzz-seeds"))
            .arg(fuzz_dir().join("corpus"))
            .arg(fuzz_dir().join("dict")),
    )
}

/// The file names in AFL's queue directory, sorted (`id:000001,src:…,+cov`): what [`Finds`] and `--explain` read.
fn queue_names(queue: &Path) -> Result<Vec<String>> {
    Ok(corpus_files(queue)?
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect())
}

fn corpus_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| {
            util::Error::msg(format!(
                "cannot read {}: {e}; run `cargo xtask fuzz --seeds` to make the seed corpora",
                dir.display()
            ))
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Runs the instrumented binary on every corpus file (outside AFL it reads one input from stdin); a crash,
/// a non-zero exit or a run past the hang limit names the file and how to reproduce it.
fn replay(target: &str) -> Result<()> {
    let files = corpus_files(&corpus_dir(target))?;
    if files.is_empty() {
        bail!(
            "{} is empty: run `cargo xtask fuzz --seeds`",
            corpus_dir(target).display()
        );
    }
    util::step(&format!("{target}: replay {} corpus inputs", files.len()));
    let bin = binary(target);
    let started = Instant::now();
    for file in &files {
        let input = std::fs::File::open(file)?;
        let mut child = Command::new(&bin)
            .stdin(input)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| util::Error::msg(format!("cannot start {}: {e}", bin.display())))?;
        let begun = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if begun.elapsed() > Duration::from_millis(HANG_MS * 2) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        match status {
            Some(s) if s.success() => {}
            Some(s) => {
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    use std::io::Read;
                    let _ = pipe.read_to_string(&mut stderr);
                }
                let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "fuzz target {target} crashed ({s}) on corpus input {}:\n{}\nreproduce: {} < {}",
                    file.display(),
                    tail.join("\n"),
                    bin.display(),
                    file.display()
                );
            }
            None => bail!(
                "fuzz target {target} ran over {} ms on corpus input {} (a hang); reproduce: {} < {}",
                HANG_MS * 2,
                file.display(),
                bin.display(),
                file.display()
            ),
        }
    }
    println!(
        "    {} inputs in {:.1?}, none crashed",
        files.len(),
        started.elapsed()
    );
    Ok(())
}

/// One target's figures from AFL's `fuzzer_stats`.
#[derive(Debug, Default)]
struct Report {
    target: String,
    seconds: u64,
    execs: u64,
    execs_per_sec: f64,
    corpus: u64,
    edges: u64,
    total_edges: u64,
    crashes: u64,
    hangs: u64,
    last_find: u64,
    /// Seconds into the run of the last new edge (from AFL's `plot_data`; `None` when it has no edge column).
    /// A new path may be only a new hit count on a known edge; a new edge is new code reached.
    last_edge: Option<u64>,
    /// Seconds AFL ran (shorter than `seconds` when it stopped at a plateau).
    run_time: u64,
    /// The plateau asked for (seconds without a new path), if any.
    plateau: Option<u64>,
    /// Who found the run's new paths, when the JSON mutator ran beside AFL's own mutations.
    finds: Option<Finds>,
}

/// The new paths of a run (queue entries that are not the corpus it started from) and how many of them the
/// JSON mutator made, read from AFL++'s queue file names: `id:…,src:…,time:…,execs:…,<operation>[,+cov]`,
/// where the operation is the mutator's own name (`json-graft`, see `fuzz/mutator`) for its finds and
/// `+cov` marks a path that reached a new edge, not only a new hit count.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Finds {
    paths: u64,
    edges: u64,
    mutator_paths: u64,
    mutator_edges: u64,
}

impl Finds {
    fn count(queue: &Path) -> Finds {
        let names = queue_names(queue).unwrap_or_default();
        Finds::from_names(names.iter().map(String::as_str))
    }

    fn from_names<'a>(names: impl Iterator<Item = &'a str>) -> Finds {
        let mut finds = Finds::default();
        for name in names.filter(|n| n.starts_with("id:") && !n.contains(",orig:")) {
            let fields: Vec<&str> = name.split(',').collect();
            let new_edge = fields.contains(&"+cov");
            let ours = fields.iter().any(|f| f.starts_with("json-"));
            finds.paths += 1;
            finds.edges += u64::from(new_edge);
            finds.mutator_paths += u64::from(ours);
            finds.mutator_edges += u64::from(ours && new_edge);
        }
        finds
    }
}

impl Report {
    /// Whether the run ended with no new path for the plateau's length: AFL stopped early for it, or the
    /// last new path came that long before the end.
    fn at_plateau(&self) -> Option<bool> {
        self.plateau
            .map(|quiet| self.run_time.saturating_sub(self.last_find) >= quiet.saturating_sub(1))
    }
}

/// Runs afl-fuzz on `target` for `seconds` from its corpus into a fresh `target/afl/out/<target>`; with
/// `plateau`, it stops earlier once that many seconds pass without a new path (AFL++'s `AFL_EXIT_ON_TIME`).
/// A JSON target gets `mutator` (the library [`build_mutator`] made) beside AFL's own mutations.
fn fuzz(
    target: &str,
    seconds: u64,
    plateau: Option<u64>,
    mutator: Option<&Path>,
) -> Result<Report> {
    match plateau {
        Some(quiet) => util::step(&format!(
            "{target}: AFL++ until {quiet} s pass without a new path, at most {seconds} s"
        )),
        None => util::step(&format!("{target}: AFL++ for {seconds} s")),
    }
    let out = output_dir(target);
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    std::fs::create_dir_all(out.parent().unwrap_or(&out))?;
    let mut cmd = Command::new(cargo());
    cmd.args(["afl", "fuzz", "-i"])
        .arg(corpus_dir(target))
        .arg("-o")
        .arg(&out)
        .args(["-V", &seconds.to_string(), "-t", &HANG_MS.to_string()]);
    if let Some(dict) = dictionary(target) {
        cmd.arg("-x").arg(dict);
    }
    cmd.arg("--")
        .arg(binary(target))
        // No curses screen (CI has no terminal): a status line now and then instead.
        .env("AFL_NO_UI", "1")
        // A shared machine or a container: the CPU governor and core dump settings are not ours to change.
        .env("AFL_SKIP_CPUFREQ", "1")
        .env("AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES", "1")
        .env("AFL_NO_AFFINITY", "1")
        // Two cores shared with builds and other runs: calibrate quickly, and do not stop on a slow seed.
        .env("AFL_FAST_CAL", "1")
        .env("AFL_NO_CRASH_README", "1");
    if let Some(quiet) = plateau {
        cmd.env("AFL_EXIT_ON_TIME", quiet.to_string());
    }
    let mutator = mutator.filter(|_| JSON_TARGETS.contains(&target));
    if let Some(library) = mutator {
        println!("    with the JSON mutator {}", library.display());
        cmd.env("AFL_CUSTOM_MUTATOR_LIBRARY", library);
        // AFL++ 4.40c's frameshift stage tracks where byte mutations insert and delete, and patches the length
        // fields it found at those offsets in whatever the next mutation returns: in the mutator's output, a
        // different document, those offsets are past its end (afl-fuzz died with a corrupt heap in its first
        // minute). JSON has no length fields for it to find.
        cmd.env("AFL_FRAMESHIFT_DISABLE", "1");
    }
    let status = cmd
        .status()
        .map_err(|e| util::Error::msg(format!("cannot start cargo afl fuzz: {e}")))?;
    let mut report = read_stats(target, seconds, &out.join("default/fuzzer_stats"))?;
    report.plateau = plateau;
    report.last_edge = std::fs::read_to_string(out.join("default/plot_data"))
        .ok()
        .and_then(|text| last_new_edge(&text));
    if mutator.is_some() {
        report.finds = Some(Finds::count(&out.join("default/queue")));
    }
    if !status.success() {
        bail!("afl-fuzz failed on {target} with {status} (its output above says why)");
    }
    Ok(report)
}

fn read_stats(target: &str, seconds: u64, path: &Path) -> Result<Report> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        util::Error::msg(format!(
            "afl-fuzz wrote no statistics for {target} ({}: {e}); its output above says why",
            path.display()
        ))
    })?;
    let field = |name: &str| -> Option<&str> {
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim())
    };
    let int = |name: &str| field(name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let last_find = int("last_find");
    let start = int("start_time");
    Ok(Report {
        target: target.to_string(),
        seconds,
        execs: int("execs_done"),
        execs_per_sec: field("execs_per_sec")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
        corpus: int("corpus_count"),
        edges: int("edges_found"),
        total_edges: int("total_edges"),
        crashes: int("saved_crashes"),
        hangs: int("saved_hangs"),
        last_find: last_find.saturating_sub(start),
        last_edge: None,
        run_time: int("run_time"),
        plateau: None,
        finds: None,
    })
}

/// When the edge count in AFL's `plot_data` (a `#`-headed CSV with `relative_time` and `edges_found` columns,
/// one row every few seconds) last rose: seconds into the run, or `None` without those columns.
fn last_new_edge(plot_data: &str) -> Option<u64> {
    let mut lines = plot_data.lines();
    let header: Vec<&str> = lines
        .next()?
        .trim_start_matches('#')
        .split(',')
        .map(str::trim)
        .collect();
    let time = header.iter().position(|c| *c == "relative_time")?;
    let edges = header.iter().position(|c| *c == "edges_found")?;
    let mut best: Option<(u64, u64)> = None;
    for line in lines {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let (Some(t), Some(e)) = (
            cells.get(time).and_then(|c| c.parse::<u64>().ok()),
            cells.get(edges).and_then(|c| c.parse::<u64>().ok()),
        ) else {
            continue;
        };
        if best.is_none_or(|(_, most)| e > most) {
            best = Some((t, e));
        }
    }
    best.map(|(t, _)| t)
}

/// The largest input one `--merge` adds, against a runaway input bloating the repository. It was 2 KiB,
/// and the merge lost what a run found through larger inputs: a 45-minute `config` run's queue reached
/// 13,652 edges, its inputs of at most 2 KiB 11,614, and the corpus merged from them 13,496 (156 of the
/// run's new edges dropped; admin and token lost theirs the same way). `afl-cmin` keeps the smallest input
/// for each edge, so a large one is added only where no smaller one reaches its edges; the largest in
/// these queues was 33 KB.
const MERGE_MAX_BYTES: u64 = 64 * 1024;

/// Adds to `fuzz/corpus/<target>/`, as `id-<hash>` files, what AFL's queue needs beside the corpus to keep
/// every edge the run reached: `afl-cmin -e` minimises the corpus and the queue together (inputs of at most
/// [`MERGE_MAX_BYTES`]) for edge coverage, and the queue inputs it keeps are added. The next run then starts
/// from every edge found so far, so runs add up across sessions. Hit counts are left out (`-e`): keeping every
/// hit-count bucket would take about twice the inputs for paths a run finds again in its first minutes.
fn merge_queue(target: &str) -> Result<()> {
    util::step(&format!(
        "{target}: merge the queue's new edges into {}",
        corpus_dir(target).display()
    ));
    let staging = afl_target_dir().join("merge").join(target);
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    let (input, output) = (staging.join("in"), staging.join("out"));
    std::fs::create_dir_all(&input)?;
    let small =
        |p: &PathBuf| std::fs::metadata(p).is_ok_and(|m| (1..=MERGE_MAX_BYTES).contains(&m.len()));
    let corpus = corpus_files(&corpus_dir(target))?;
    let mut known = std::collections::HashSet::new();
    for (i, file) in corpus.iter().enumerate() {
        known.insert(content_name(&std::fs::read(file)?));
        if small(file) {
            std::fs::copy(file, input.join(format!("corpus-{i}")))?;
        }
    }
    let queue = corpus_files(&output_dir(target).join("default/queue"))?;
    for (i, file) in queue.iter().enumerate() {
        if small(file) {
            std::fs::copy(file, input.join(format!("queue-{i}")))?;
        }
    }
    println!(
        "    afl-cmin -e over {} corpus and {} queue inputs",
        corpus.len(),
        queue.len()
    );
    let log = staging.join("cmin.log");
    let map_size = cmin_map_size(&binary(target))?;
    let status = Command::new(cargo())
        .env("AFL_MAP_SIZE", map_size.to_string())
        .args(["afl", "cmin", "-e", "-i"])
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .args(["-t", &HANG_MS.to_string(), "--"])
        .arg(binary(target))
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(staging.join("cmin.err"))?)
        .status()
        .map_err(|e| util::Error::msg(format!("cannot start cargo afl cmin: {e}")))?;
    if !status.success() {
        bail!(
            "afl-cmin failed on {target} with {status}: see {} and {}",
            log.display(),
            staging.join("cmin.err").display()
        );
    }
    let kept = corpus_files(&output)?;
    let given = corpus_files(&input)?.len();
    if kept.is_empty() && given > 0 {
        bail!(
            "afl-cmin kept none of the {given} inputs of {target}, so it read no coverage from them: see {}",
            log.display()
        );
    }
    let mut added = 0;
    for file in &kept {
        let from_queue = file
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("queue-"));
        if !from_queue {
            continue;
        }
        let bytes = std::fs::read(file)?;
        let name = content_name(&bytes);
        if known.insert(name.clone()) {
            std::fs::write(corpus_dir(target).join(name), &bytes)?;
            added += 1;
        }
    }
    println!(
        "    {} inputs keep every edge; added {added} from the queue",
        kept.len()
    );
    Ok(())
}

/// AFL++'s own map is 64 KiB; `afl-showmap` in the batch mode `afl-cmin` drives (`-I` file list, AFL++ 4.40c)
/// writes an empty trace for every input when `AFL_MAP_SIZE` is below that, which `afl-cmin` sets to the
/// binary's own map size when that is not given. `feed_binary`'s map is 60,895 entries, so its merges kept
/// nothing. The map size for `afl-cmin`: the binary's (`AFL_DUMP_MAP_SIZE`), at least 64 KiB.
fn cmin_map_size(binary: &Path) -> Result<u64> {
    const AFL_MAP: u64 = 1 << 16;
    let output = Command::new(binary)
        .env("AFL_DUMP_MAP_SIZE", "1")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| util::Error::msg(format!("cannot start {}: {e}", binary.display())))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let size: u64 = text.trim().parse().map_err(|_| {
        util::Error::msg(format!(
            "{} printed `{}` for AFL_DUMP_MAP_SIZE, not a map size: is it an AFL++ build (`cargo afl build`)?",
            binary.display(),
            text.trim()
        ))
    })?;
    Ok(size.max(AFL_MAP))
}

/// A corpus file's name from its content: `id-` and the first 8 bytes of its SHA-256 in hex.
fn content_name(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(bytes);
    let hex: String = hash.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("id-{hex}")
}

/// Prints the table of figures and fails on any crash or hang.
fn summarize(reports: &[Report]) -> Result<()> {
    util::step("fuzzing figures");
    println!(
        "    {:<16} {:>6} {:>12} {:>9} {:>7} {:>15} {:>10} {:>10} {:>8} {:>7} {:>6}",
        "target",
        "secs",
        "executions",
        "exec/s",
        "corpus",
        "edges",
        "last find",
        "last edge",
        "plateau",
        "crashes",
        "hangs"
    );
    for r in reports {
        let plateau = match r.at_plateau() {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        println!(
            "    {:<16} {:>6} {:>12} {:>9.0} {:>7} {:>15} {:>9}s {:>10} {:>8} {:>7} {:>6}",
            r.target,
            if r.run_time > 0 {
                r.run_time
            } else {
                r.seconds
            },
            r.execs,
            r.execs_per_sec,
            r.corpus,
            format!("{}/{}", r.edges, r.total_edges),
            r.last_find,
            r.last_edge.map_or("-".to_string(), |t| format!("{t}s")),
            plateau,
            r.crashes,
            r.hangs
        );
    }
    for r in reports {
        if let Some(f) = r.finds {
            println!(
                "    {}: the JSON mutator made {} of the run's {} new paths, {} of the {} with a new edge",
                r.target, f.mutator_paths, f.paths, f.mutator_edges, f.edges
            );
        }
    }
    let failed: Vec<&Report> = reports.iter().filter(|r| r.crashes + r.hangs > 0).collect();
    if failed.is_empty() {
        return Ok(());
    }
    let mut message = String::from("fuzzing found inputs that crash or hang:");
    for r in failed {
        for kind in ["crashes", "hangs"] {
            let dir = output_dir(&r.target).join("default").join(kind);
            for file in corpus_files(&dir).unwrap_or_default() {
                if file.file_name().is_some_and(|n| n != "README.txt") {
                    message.push_str(&format!(
                        "\n  {} ({kind}): reproduce with `{} < {}`, then add it as a unit test beside the code it breaks",
                        r.target,
                        binary(&r.target).display(),
                        file.display()
                    ));
                }
            }
        }
    }
    Err(util::Error::msg(message))
}

#[cfg(test)]
mod tests {
    use super::{last_new_edge, Finds};

    #[test]
    fn finds_tell_the_json_mutators_paths_from_afls() {
        // File names as AFL++ 4.40c writes them (`describe_op` in afl-fuzz-bitmap.c).
        let names = [
            "id:000000,time:0,execs:0,orig:id-00015778448b0036",
            "id:000001,time:0,execs:0,orig:id-0021f5fd6821a833,+cov",
            "id:000002,src:000000,time:12,execs:3401,op:havoc,rep:4,+cov",
            "id:000003,src:000001+000000,time:40,execs:9120,json-graft,+cov",
            "id:000004,src:000001+000002,time:41,execs:9130,json-add-member",
            "id:000005,src:000002,time:90,execs:19120,op:flip1,pos:3",
            "README.txt",
            ".state",
        ];
        assert_eq!(
            Finds::from_names(names.into_iter()),
            Finds {
                paths: 4,
                edges: 2,
                mutator_paths: 2,
                mutator_edges: 1,
            }
        );
    }

    #[test]
    fn last_new_edge_is_when_the_edge_count_last_rose() {
        let plot = "# relative_time, cycles_done, cur_item, corpus_count, pending_total, pending_favs, map_size, saved_crashes, saved_hangs, max_depth, execs_per_sec, total_execs, edges_found\n\
            0, 0, 0, 10, 10, 1, 1.00%, 0, 0, 1, 100.0, 500, 300\n\
            5, 0, 3, 14, 9, 1, 1.10%, 0, 0, 2, 110.0, 1000, 320\n\
            10, 0, 5, 17, 8, 1, 1.10%, 0, 0, 2, 110.0, 1500, 320\n\
            15, 1, 6, 18, 7, 0, 1.20%, 0, 0, 3, 110.0, 2000, 331\n\
            20, 1, 7, 19, 6, 0, 1.20%, 0, 0, 3, 110.0, 2500, 331\n";
        assert_eq!(last_new_edge(plot), Some(15));
        assert_eq!(last_new_edge("# relative_time, corpus_count\n0, 1\n"), None);
        assert_eq!(last_new_edge(""), None);
    }
}
