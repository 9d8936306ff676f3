//! `cargo xtask fuzz <target> --explain`: where the new edges of the last run are. For every path AFL++ kept
//! for a new edge (`+cov` in its queue name) it runs that input and its parent (the queue entry it was
//! mutated from) once each under callgrind, and prints the source lines the input ran that its parent did not,
//! counted by crate. A target whose late edges all fall in a dependency (the `url` crate's IDNA tables, say)
//! has reached its plateau in EdgeWarden's own code, however long AFL keeps finding edges in the Unicode
//! data behind it.
//!
//! Lines, not edges: a new edge between lines the parent already ran shows no new line, so "no line of ours"
//! means no new *line* of ours. The instrumented release binary carries line tables, so callgrind can map
//! its instructions to lines without a second build.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::{self, bail, Result};

/// A source line: the file as the binary's line table names it, and the line number.
type Line = (String, u32);

/// Explains every new-edge path in `queue` (AFL++'s `default/queue`, whose file `names` are given sorted) of
/// `binary`, the target as AFL ran it.
pub fn explain(target: &str, queue: &Path, names: Vec<String>, binary: &Path) -> Result<()> {
    if !util::have("valgrind") {
        bail!("--explain runs each input under callgrind: install valgrind (Debian: `apt-get install valgrind`)");
    }
    let finds: Vec<&String> = names
        .iter()
        .filter(|n| !n.contains(",orig:") && n.split(',').any(|f| f == "+cov"))
        .collect();
    util::step(&format!(
        "{target}: the source lines each of the last run's {} new-edge paths ran that its parent did not (callgrind)",
        finds.len()
    ));
    let scratch = util::target_dir().join("afl").join("explain").join(target);
    std::fs::create_dir_all(&scratch)?;
    let root = util::project_root();
    let mut cache: HashMap<String, Option<BTreeSet<Line>>> = HashMap::new();
    let mut ours_total = 0;
    let mut unexplained = 0;
    for name in finds {
        let Some(parent_id) = parent_id(name) else {
            println!("    {name}: no parent named, skipped");
            continue;
        };
        let Some(parent) = names
            .iter()
            .find(|n| n.starts_with(&format!("id:{parent_id},")))
        else {
            println!("    {name}: parent id:{parent_id} is not in the queue, skipped");
            continue;
        };
        for entry in [name, parent] {
            if !cache.contains_key(entry) {
                let lines = lines_run(binary, &queue.join(entry), &scratch)?;
                cache.insert(entry.clone(), lines);
            }
        }
        let (Some(lines), Some(parent_lines)) = (&cache[name], &cache[parent]) else {
            // Lines up to the instruction would compare two runs cut at the same place: no answer is better.
            println!(
                "    {}: not explained, valgrind stops at an instruction it does not emulate (SIGILL; SHA-NI in sha2's compress256, for one) on it or its parent",
                short_name(name)
            );
            unexplained += 1;
            continue;
        };
        let new: Vec<&Line> = lines.difference(parent_lines).collect();
        let mut by_crate: BTreeMap<String, usize> = BTreeMap::new();
        let mut ours = Vec::new();
        for line in &new {
            let (place, own) = crate_of(&line.0, &root);
            *by_crate.entry(place).or_default() += 1;
            if own {
                ours.push(*line);
            }
        }
        let mut counts: Vec<(String, usize)> = by_crate.into_iter().collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let counts: Vec<String> = counts.iter().map(|(c, n)| format!("{c} {n}")).collect();
        println!(
            "    {} ({}): {} new lines, {} of them EdgeWarden's{}{}",
            short_name(name),
            field(name, "time:").map_or_else(|| "?".to_string(), |ms| format!("{} s", ms / 1000)),
            new.len(),
            ours.len(),
            if counts.is_empty() { "" } else { ": " },
            counts.join(" · ")
        );
        for (file, line) in ours.iter().take(5) {
            let shown = Path::new(file)
                .strip_prefix(&root)
                .unwrap_or(Path::new(file));
            println!("        {}:{line}", shown.display());
        }
        ours_total += usize::from(!ours.is_empty());
    }
    println!(
        "    {ours_total} of the new-edge paths ran a line of EdgeWarden's own code that their parent did not{}",
        if unexplained > 0 { format!("; {unexplained} could not be explained") } else { String::new() }
    );
    Ok(())
}

/// The value after `key` in a queue name's comma-separated fields (`time:1787995` -> 1787995).
fn field(name: &str, key: &str) -> Option<u64> {
    name.split(',')
        .find_map(|f| f.strip_prefix(key)?.parse().ok())
}

/// The queue id a path was mutated from: the first of `src:003748+001169` (the second is a splice's donor).
fn parent_id(name: &str) -> Option<&str> {
    let src = name.split(',').find_map(|f| f.strip_prefix("src:"))?;
    let first = src.split('+').next()?;
    (!first.is_empty() && first.bytes().all(|b| b.is_ascii_digit())).then_some(first)
}

/// `id:005840,src:003748+001169,time:…,execs:…,op:havoc,rep:1,+cov` -> `id:005840 op:havoc`.
fn short_name(name: &str) -> String {
    let fields: Vec<&str> = name.split(',').collect();
    let op = fields
        .iter()
        .find(|f| f.starts_with("op:") || f.starts_with("json-"))
        .copied()
        .unwrap_or("");
    format!("{} {op}", fields[0]).trim_end().to_string()
}

/// Where a source file belongs: `ours:<top directory>` for the project's files, `<crate>-<version>` for a
/// registry crate, `std:<library>` for the standard library, `other` for anything else; and whether it is ours.
fn crate_of(file: &str, root: &Path) -> (String, bool) {
    let path = Path::new(file);
    if let Ok(rest) = path.strip_prefix(root) {
        let top = rest
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned());
        return (format!("ours:{}", top.unwrap_or_default()), true);
    }
    let parts: Vec<&str> = file.split('/').collect();
    if let Some(i) = parts.iter().position(|p| *p == "registry") {
        // …/registry/src/<index>/<crate>-<version>/…
        if parts.get(i + 1) == Some(&"src") {
            if let Some(krate) = parts.get(i + 3) {
                return ((*krate).to_string(), false);
            }
        }
    }
    if let Some(i) = parts.iter().position(|p| *p == "library") {
        if parts.first() == Some(&"") && parts.get(1) == Some(&"rustc") {
            if let Some(lib) = parts.get(i + 1) {
                return (format!("std:{lib}"), false);
            }
        }
    }
    ("other".to_string(), false)
}

/// Runs `binary` once on `input` (its standard input) under callgrind and returns the source lines it ran, or
/// `None` when valgrind cannot run it to its end: it raises SIGILL on an instruction it does not emulate, and
/// valgrind 3.19 reports SHA-NI in CPUID but does not emulate it, so the `sha2` crate's hardware path stops
/// a target that hashes a key (a JWK thumbprint in `Engine::build`).
fn lines_run(binary: &Path, input: &Path, scratch: &Path) -> Result<Option<BTreeSet<Line>>> {
    let out: PathBuf = scratch.join("callgrind.out");
    let status = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--compress-pos=no",
            "--compress-strings=no",
        ])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(binary)
        .stdin(File::open(input)?)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if std::os::unix::process::ExitStatusExt::signal(&status) == Some(4) {
        return Ok(None);
    }
    if !status.success() {
        bail!(
            "{} under callgrind on {} ended with {status}: run it by hand (`valgrind --tool=callgrind {} < {}`) to see why",
            binary.display(),
            input.display(),
            binary.display(),
            input.display()
        );
    }
    Ok(Some(parse_callgrind(&std::fs::read_to_string(&out)?)))
}

/// The source lines a callgrind profile written with `--compress-pos=no --compress-strings=no` names with a
/// cost: every cost line (`<line> <cost>…`, a call's cost line included) under the file of the moment, which
/// `fl=` sets for a function and `fi=`/`fe=` change for code inlined from another file (`fn=` goes back to
/// the function's own file). Line 0 (no line information) is left out.
fn parse_callgrind(text: &str) -> BTreeSet<Line> {
    let mut lines = BTreeSet::new();
    let mut function_file: Option<&str> = None;
    let mut file: Option<&str> = None;
    for row in text.lines() {
        if row.starts_with(|c: char| c.is_ascii_digit()) {
            let number = row
                .split_ascii_whitespace()
                .next()
                .and_then(|n| n.parse::<u32>().ok());
            if let (Some(f), Some(n)) = (file, number.filter(|n| *n > 0)) {
                lines.insert((f.to_string(), n));
            }
        } else if let Some(f) = row.strip_prefix("fl=") {
            function_file = Some(f);
            file = Some(f);
        } else if let Some(f) = row.strip_prefix("fi=").or_else(|| row.strip_prefix("fe=")) {
            file = Some(f);
        } else if row.starts_with("fn=") {
            file = function_file;
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callgrind_lines_follow_the_file_of_the_moment() {
        let profile = "\
version: 1
creator: callgrind-3.19.0
positions: line
events: Ir
fl=/work/main/core/src/jwks.rs
fn=edgewarden_core::jwks::parse
12 4
0 3
fi=/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/url-2.5.8/src/parser.rs
400 2
cfl=/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/idna-1.1.0/src/uts46.rs
cfn=idna::uts46::Uts46::check_label
calls=1 77
401 90
fn=edgewarden_core::jwks::other
13 1
fl=/rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/core/src/option.rs
fn=core::option::Option::map
9 1
";
        let lines = parse_callgrind(profile);
        let mut named: Vec<String> = lines
            .iter()
            .map(|(f, n)| format!("{}:{n}", f.rsplit('/').next().unwrap()))
            .collect();
        named.sort();
        // The call's target position (77) is the callee's line, not a line of the caller's file.
        assert_eq!(
            named,
            [
                "jwks.rs:12",
                "jwks.rs:13",
                "option.rs:9",
                "parser.rs:400",
                "parser.rs:401"
            ]
        );
    }

    #[test]
    fn files_are_placed_in_their_crate() {
        let root = Path::new("/work/main");
        assert_eq!(
            crate_of("/work/main/admin-api/src/webhooks.rs", root),
            ("ours:admin-api".to_string(), true)
        );
        assert_eq!(
            crate_of("/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/idna-1.1.0/src/uts46.rs", root),
            ("idna-1.1.0".to_string(), false)
        );
        assert_eq!(
            crate_of(
                "/rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/core/src/option.rs",
                root
            ),
            ("std:core".to_string(), false)
        );
        assert_eq!(
            crate_of("/usr/include/stdio.h", root),
            ("other".to_string(), false)
        );
    }

    #[test]
    fn queue_names_give_parent_time_and_operation() {
        let name = "id:005840,src:003748+001169,time:1787995,execs:6401937,op:havoc,rep:1,+cov";
        assert_eq!(parent_id(name), Some("003748"));
        assert_eq!(field(name, "time:"), Some(1_787_995));
        assert_eq!(short_name(name), "id:005840 op:havoc");
        let mutator = "id:005662,src:004650+000269,time:1374162,execs:5099775,json-add-member,+cov";
        assert_eq!(short_name(mutator), "id:005662 json-add-member");
        assert_eq!(parent_id("id:000001,time:0,execs:0,orig:id-0a"), None);
        assert_eq!(parent_id("id:000002,src:,time:0"), None);
    }
}
