//! Starts Envoy for the demo and the benches: renders a config template from `envoy/` into `target/`,
//! spawns the project-local binary with its log in a file, waits until the admin endpoint says it is live,
//! and kills it on drop so no subcommand leaves an Envoy behind.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{self, bail, Result};
use crate::{http, install};

/// A running Envoy that is killed when dropped.
pub struct Envoy {
    child: Child,
    /// The admin endpoint.
    pub admin: SocketAddr,
    /// The file Envoy logs into.
    pub log: PathBuf,
    /// The HTTP listener's port, when the launch named one.
    pub listener_port: Option<u16>,
}

/// How to start Envoy.
pub struct Launch<'a> {
    /// The template under `envoy/`, e.g. `demo.yaml`.
    pub template: &'a str,
    /// Placeholder values for the template.
    pub values: BTreeMap<&'a str, String>,
    /// A name for the rendered config and log under `target/envoy-runs/`.
    pub name: &'a str,
    /// The admin port (must be in the template as `{{admin_port}}`).
    pub admin_port: u16,
    /// The listener port (in the template as `{{listener_port}}`): start waits until it accepts connections.
    pub listener_port: Option<u16>,
    /// The CPU to pin Envoy to with `taskset`, when available.
    pub cpu: Option<usize>,
    /// Worker threads (`--concurrency`).
    pub workers: usize,
    /// Envoy's log level (`-l`): `warning` keeps the log to problems, `info` adds the filter's state lines.
    pub log_level: &'a str,
}

impl Envoy {
    /// Renders the template and starts Envoy with `launch.workers` workers, waiting up to 30 s for readiness.
    pub fn start(launch: Launch<'_>) -> Result<Envoy> {
        let root = util::project_root();
        let template_path = root.join("envoy").join(launch.template);
        let template = std::fs::read_to_string(&template_path).map_err(|e| {
            util::Error::msg(format!("cannot read {}: {e}", template_path.display()))
        })?;
        let rendered = util::render(&template, &launch.values, launch.template)?;
        let dir = util::target_dir().join("envoy-runs");
        std::fs::create_dir_all(&dir)?;
        let config = dir.join(format!("{}.yaml", launch.name));
        std::fs::write(&config, rendered)?;
        let log = dir.join(format!("{}.log", launch.name));
        let log_file = File::create(&log)?;

        let bin = install::envoy_bin();
        let mut cmd = match launch.cpu {
            Some(cpu) if util::have("taskset") => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(&bin);
                c
            }
            _ => Command::new(&bin),
        };
        cmd.arg("-c")
            .arg(&config)
            .arg("--concurrency")
            .arg(launch.workers.max(1).to_string())
            .args(["-l", launch.log_level, "--disable-hot-restart"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let child = cmd
            .spawn()
            .map_err(|e| util::Error::msg(format!("cannot start {}: {e}", bin.display())))?;
        let mut envoy = Envoy {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], launch.admin_port)),
            log,
            listener_port: launch.listener_port,
        };
        envoy.wait_ready(Duration::from_secs(30))?;
        Ok(envoy)
    }

    /// The process id (for CPU accounting).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Returns an error (with the log tail) if Envoy has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!(
                "envoy exited with {status}; its log ({}):\n{}",
                self.log.display(),
                log_tail(&self.log)
            );
        }
        Ok(())
    }

    /// Waits until the filter allows `token` on `path`: its first revocation sync (and JWKS fetch) from the
    /// control plane is done, since until then `on_stale: deny` refuses token-bearing requests.
    /// Returns how long that took; fails after `timeout` with the last answer seen.
    pub fn wait_for_sync(
        &mut self,
        path: &str,
        token: &str,
        timeout: Duration,
    ) -> Result<Duration> {
        let Some(port) = self.listener_port else {
            bail!("envoy was started without a listener port to check the sync on");
        };
        let listener = SocketAddr::from(([127, 0, 0, 1], port));
        let auth = format!("Bearer {token}");
        let started = Instant::now();
        loop {
            self.check_running()?;
            let last = match http::get(listener, path, &[("authorization", &auth)]) {
                Ok(r) if r.status == 200 => return Ok(started.elapsed()),
                Ok(r) => format!("{} {}", r.status, r.body.trim()),
                Err(e) => e.to_string(),
            };
            if started.elapsed() > timeout {
                bail!(
                    "the filter still refuses a valid token after {timeout:?} (last answer: {last}): it has not synced with the control plane; envoy's log ({}):\n{}",
                    self.log.display(),
                    log_tail(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            self.check_running()?;
            let live = http::get(self.admin, "/ready", &[]).is_ok_and(|r| r.status == 200);
            // The listener (and the wasm VM behind it) may come up just after /ready.
            let listening = self.listener_port.is_none_or(|port| {
                TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_ok()
            });
            if live && listening {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "envoy did not become ready within {timeout:?}; its log ({}):\n{}",
                    self.log.display(),
                    log_tail(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last 40 lines of a log file.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
