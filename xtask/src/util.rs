//! Small helpers every subcommand shares: the project root, an error type, running commands
//! with a visible trace, progress lines, `{{placeholder}}` templates and free-port checks.
//! Kept std-only so the xtask compiles in seconds on a fresh machine.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The xtask's error: a message meant for a person, already lowercase and concrete.
#[derive(Debug)]
pub struct Error(String);

impl Error {
    /// Wraps a message.
    pub fn msg(message: impl Into<String>) -> Error {
        Error(message.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error(e.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error(format!("json: {e}"))
    }
}

/// Result with the xtask error.
pub type Result<T> = std::result::Result<T, Error>;

/// Returns early with a formatted [`Error`].
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::util::Error::msg(format!($($arg)*))) };
}
pub(crate) use bail;

/// The workspace root, found from this crate's manifest directory (rust-analyzer's habit).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The `target/` directory, honouring `CARGO_TARGET_DIR` like cargo does.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                project_root().join(dir)
            }
        }
        None => project_root().join("target"),
    }
}

/// Prints a step header so long runs say what they are doing.
pub fn step(title: &str) {
    println!("\n==> {title}");
}

/// Runs a command to completion with inherited stdio, echoing it first; fails on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = show(cmd);
    println!("    $ {shown}");
    let started = Instant::now();
    let status = cmd
        .status()
        .map_err(|e| Error::msg(format!("cannot start `{shown}`: {e}")))?;
    if !status.success() {
        bail!(
            "`{shown}` failed with {status} after {:.0?}",
            started.elapsed()
        );
    }
    Ok(())
}

/// Runs a command and returns its stdout; fails on a non-zero exit, showing stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = show(cmd);
    let out = cmd
        .output()
        .map_err(|e| Error::msg(format!("cannot start `{shown}`: {e}")))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True when `program` can be found on PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// A command as it would be typed, for progress lines and error messages.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Replaces every `{{name}}` in `template` from `values`; an unknown or unfilled placeholder is an error,
/// so a typo in a config template fails here and not as a puzzling Envoy error later.
pub fn render(template: &str, values: &BTreeMap<&str, String>, what: &str) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            bail!("{what}: unclosed `{{{{` placeholder");
        };
        let name = after[..end].trim();
        match values.get(name) {
            Some(v) => out.push_str(v),
            None => bail!("{what}: no value for placeholder `{{{{{name}}}}}`"),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Fails with a clear message when a fixed port that a subcommand needs is already in use.
pub fn ensure_port_free(port: u16, what: &str, flag: &str) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if let Err(e) = TcpListener::bind(addr) {
        bail!("port {port} ({what}) is not available: {e}; stop whatever listens there or pick another with {flag} <port>");
    }
    Ok(())
}

/// Asks the OS for a free loopback port (used for benches, which pick their own ports).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// Reads `--name value` from an argument list.
pub fn flag_value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_fills_placeholders_and_refuses_unknown_ones() {
        let mut values = BTreeMap::new();
        values.insert("port", "10000".to_string());
        assert_eq!(
            render("port: {{port}} and {{ port }}", &values, "t").unwrap(),
            "port: 10000 and 10000"
        );
        let err = render("x: {{nope}}", &values, "t").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        assert!(render("x: {{port", &values, "t").is_err());
    }

    #[test]
    fn project_root_holds_the_workspace_manifest() {
        assert!(project_root().join("Cargo.toml").is_file());
        assert!(project_root().join("xtask").is_dir());
    }
}
