//! The real admin API (`edgewarden-admin`) for a run, shared by `demo` and the benches: builds the release
//! binary with the dashboard embedded, prepares a fresh store, creates API keys with its own CLI, serves it on a loopback port and
//! stops it on drop, plus the few API calls a run makes (clients, tokens, revocations).
//! Runs always go through the binary an operator would start, never through the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::{self, bail, Result};
use crate::{dashboard, http};

/// A fixed master key for the benches' throwaway services (64 hex characters: "bench-master-key-not-for-product"),
/// so `serve` writes no key file and prints no warning.
pub const BENCH_MASTER_KEY: &str =
    "62656e63682d6d61737465722d6b65792d6e6f742d666f722d70726f64756374";

/// Builds the dashboard, then `edgewarden-admin` in release mode with the dashboard embedded
/// (`EDGEWARDEN_DASHBOARD_DIST`), and returns the binary.
/// Every run builds the same binary this way, so the demo and the benches never rebuild it for each other.
pub fn build() -> Result<PathBuf> {
    let dist = dashboard::build()?;
    util::step("build edgewarden-admin (release, dashboard embedded)");
    println!("    {}={}", dashboard::DIST_ENV, dist.display());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    util::run(
        Command::new(cargo)
            .current_dir(util::project_root())
            .args(["build", "--release", "-p", "edgewarden-admin"])
            .env(dashboard::DIST_ENV, &dist),
    )?;
    let bin = util::target_dir().join("release/edgewarden-admin");
    if !bin.is_file() {
        bail!(
            "cargo built edgewarden-admin but {} is missing",
            bin.display()
        );
    }
    Ok(bin)
}

/// A store for the admin API before it serves: where its data lives and how its commands are run.
pub struct Setup {
    bin: PathBuf,
    /// The data directory (SQLite database, master key file when none is given, `serve.log`).
    pub dir: PathBuf,
    /// `DATABASE_URL` (PostgreSQL); `None` uses SQLite in the data directory.
    pub database_url: Option<String>,
    /// `EDGEWARDEN_MASTER_KEY`; `None` lets `serve` create `<dir>/master.key`.
    pub master_key: Option<String>,
    /// `EDGEWARDEN_LOG` for every command.
    pub log_level: &'static str,
    /// Remove the data directory when the service is dropped.
    pub remove_dir_on_drop: bool,
}

impl Setup {
    /// An empty data directory at `dir` (whatever was there is deleted) for the binary `bin`.
    pub fn fresh(bin: &Path, dir: PathBuf) -> Result<Setup> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| util::Error::msg(format!("cannot create {}: {e}", dir.display())))?;
        Ok(Setup {
            bin: bin.to_path_buf(),
            dir,
            database_url: None,
            master_key: None,
            log_level: "warn",
            remove_dir_on_drop: true,
        })
    }

    /// `edgewarden-admin <args>` with this store's environment (and nothing inherited that names another store).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("EDGEWARDEN_DATA_DIR", &self.dir)
            .env("EDGEWARDEN_LOG", self.log_level);
        match &self.database_url {
            Some(url) => cmd.env("DATABASE_URL", url),
            None => cmd.env_remove("DATABASE_URL"),
        };
        match &self.master_key {
            Some(key) => cmd.env("EDGEWARDEN_MASTER_KEY", key),
            None => cmd.env_remove("EDGEWARDEN_MASTER_KEY"),
        };
        cmd
    }

    /// Creates an API key with `edgewarden-admin api-key create` and returns it (the CLI prints it once).
    /// The first call also runs the migrations.
    pub fn create_api_key(&self, role: &str, name: &str) -> Result<String> {
        let out = util::output(
            &mut self.command(&["api-key", "create", "--role", role, "--name", name]),
        )?;
        let key = out.trim().to_string();
        if key.is_empty() || key.contains(char::is_whitespace) {
            bail!("`edgewarden-admin api-key create --role {role}` printed `{key}`, not one key");
        }
        Ok(key)
    }

    /// Starts `edgewarden-admin serve --listen <addr> --issuer http://<addr> <extra>` with its output in
    /// `<dir>/serve.log`, and waits up to 60 s for `/healthz`.
    pub fn serve(self, addr: SocketAddr, extra: &[&str]) -> Result<AdminApi> {
        let issuer = format!("http://{addr}");
        let log = self.dir.join("serve.log");
        let log_file = std::fs::File::create(&log)?;
        let listen = addr.to_string();
        let mut args = vec!["serve", "--listen", &listen, "--issuer", &issuer];
        args.extend_from_slice(extra);
        let child = self
            .command(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file.try_clone()?))
            .stderr(Stdio::from(log_file))
            .spawn()
            .map_err(|e| util::Error::msg(format!("cannot start {}: {e}", self.bin.display())))?;
        let mut api = AdminApi {
            child: Some(child),
            addr,
            issuer,
            log,
            setup: self,
        };
        api.wait_healthy(Duration::from_secs(60))?;
        Ok(api)
    }
}

/// A running `edgewarden-admin serve`, killed (and its data directory removed, if so set up) on drop.
pub struct AdminApi {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The `iss` of the tokens it issues.
    pub issuer: String,
    /// Its stdout and stderr.
    pub log: PathBuf,
    setup: Setup,
}

/// A token the admin API issued.
pub struct Issued {
    /// The compact JWS.
    pub token: String,
    /// Its `jti`, to revoke it by.
    pub jti: String,
}

impl AdminApi {
    /// The process id (for CPU accounting); 0 once stopped.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Returns an error (with the log tail) if the service has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(child) = &mut self.child {
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "edgewarden-admin serve exited with {status}; its log ({}):\n{}",
                    self.log.display(),
                    log_tail(&self.log, 20)
                );
            }
        }
        Ok(())
    }

    fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            self.check_running()?;
            if http::get(self.addr, "/healthz", &[]).is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "edgewarden-admin did not answer /healthz on {} within {timeout:?}; its log ({}):\n{}",
                    self.addr,
                    self.log.display(),
                    log_tail(&self.log, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The one-time password of the `admin` user that the first `serve` on an empty store writes to
    /// `<data dir>/initial-admin-password` (mode 0600; never to its log).
    pub fn bootstrap_password(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.setup.dir.join("initial-admin-password")).ok()?;
        Some(text.trim().to_string()).filter(|p| !p.is_empty())
    }

    /// `POST path` with `body` and the bearer `key`; anything but `expected` is an error naming the answer.
    pub fn post(&self, key: &str, path: &str, body: &Value, expected: u16) -> Result<Value> {
        let auth = format!("Bearer {key}");
        let r = http::post_json(
            self.addr,
            path,
            &[("authorization", &auth)],
            &body.to_string(),
        )?;
        if r.status != expected {
            let body: String = r.body.trim().chars().take(400).collect();
            bail!(
                "POST {path} answered {} (expected {expected}): {body}",
                r.status
            );
        }
        Ok(serde_json::from_str(&r.body)?)
    }

    /// Registers a client allowed `scopes` and `audiences` (its first audience is its tokens' default).
    pub fn create_client(
        &self,
        key: &str,
        client_id: &str,
        scopes: &[&str],
        audiences: &[&str],
    ) -> Result<Value> {
        self.post(
            key,
            "/api/v1/clients",
            &json!({
                "client_id": client_id,
                "name": client_id,
                "allowed_scopes": scopes,
                "audiences": audiences,
            }),
            201,
        )
    }

    /// Issues an access token for `subject` through `client_id` with `scopes` (`POST /api/v1/tokens`).
    pub fn issue_token(
        &self,
        key: &str,
        subject: &str,
        client_id: &str,
        scopes: &[&str],
    ) -> Result<Issued> {
        let body = json!({"subject": subject, "client_id": client_id, "scopes": scopes});
        let v = self.post(key, "/api/v1/tokens", &body, 200)?;
        let (Some(token), Some(jti)) = (v["access_token"].as_str(), v["jti"].as_str()) else {
            bail!("POST /api/v1/tokens answered without access_token and jti: {v}");
        };
        Ok(Issued {
            token: token.to_string(),
            jti: jti.to_string(),
        })
    }

    /// Revokes one token by `jti` (`POST /api/v1/revocations`).
    pub fn revoke_jti(&self, key: &str, jti: &str, reason: &str) -> Result<()> {
        self.post(
            key,
            "/api/v1/revocations",
            &json!({"jti": jti, "reason": reason}),
            201,
        )
        .map(|_| ())
    }

    /// Stops the service (idempotent); the data directory goes on drop when so set up.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for AdminApi {
    fn drop(&mut self) {
        self.stop();
        if self.setup.remove_dir_on_drop {
            let _ = std::fs::remove_dir_all(&self.setup.dir);
        }
    }
}

/// The last `n` lines of a log file, for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(n)..].join("\n");
    if tail.is_empty() {
        "(no output)".to_string()
    } else {
        tail
    }
}

/// True when `value` can go between the quotes of a JSON string in a config template unescaped.
pub fn plain_json_string(value: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_strings_go_into_templates_unescaped() {
        assert!(plain_json_string("ewk_AbC-123_xyz"));
        assert!(plain_json_string("http://127.0.0.1:8080"));
        assert!(!plain_json_string("a\"b"));
        assert!(!plain_json_string("a b"));
        assert!(!plain_json_string(""));
    }
}
