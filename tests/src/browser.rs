//! `Browser::start()`: headless Chromium driven through chromedriver (WebDriver over plain HTTP, with
//! fantoccini), for the dashboard's browser tests. Each browser has its own chromedriver port and a
//! fresh profile under `target/e2e-runs/`; chromedriver and the Chromium it started are killed on drop.
//! Helpers wait for elements with failures that say where the page was and what it showed, save
//! screenshots under `target/screenshots/dashboard/`, and run axe-core accessibility checks.
//! `cargo xtask test` provides the tools through `EDGEWARDEN_CHROMIUM_BIN`, `EDGEWARDEN_CHROMEDRIVER_BIN`
//! and `EDGEWARDEN_AXE_JS` (without them the tests fail, never skip).

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::wd::{Capabilities, TimeoutConfiguration};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

use crate::stack::{required_path, run_dir, tail};

/// How long `wait_for` and friends wait before failing.
pub const WAIT: Duration = Duration::from_secs(15);
/// How long chromedriver may take to answer `/status`.
const DRIVER_START: Duration = Duration::from_secs(20);
/// How often the waits look again.
const POLL: Duration = Duration::from_millis(100);

/// The Chromium binary (`EDGEWARDEN_CHROMIUM_BIN`).
pub fn chromium_bin() -> PathBuf {
    required_path("EDGEWARDEN_CHROMIUM_BIN", "Chromium")
}

/// The chromedriver binary (`EDGEWARDEN_CHROMEDRIVER_BIN`).
pub fn chromedriver_bin() -> PathBuf {
    required_path("EDGEWARDEN_CHROMEDRIVER_BIN", "chromedriver")
}

/// axe-core's `axe.min.js` (`EDGEWARDEN_AXE_JS`).
pub fn axe_js() -> PathBuf {
    required_path(
        "EDGEWARDEN_AXE_JS",
        "axe-core's axe.min.js (npm package axe-core)",
    )
}

/// The built dashboard the admin API binary embeds (`EDGEWARDEN_DASHBOARD_DIST`, a directory).
pub fn dashboard_dist() -> PathBuf {
    let Some(value) = std::env::var_os("EDGEWARDEN_DASHBOARD_DIST") else {
        panic!(
            "EDGEWARDEN_DASHBOARD_DIST is not set: the browser tests need the admin API built with the dashboard; run them with `cargo xtask test`, which builds it and sets the variable"
        );
    };
    let dist = PathBuf::from(value);
    assert!(
        dist.join("index.html").is_file(),
        "EDGEWARDEN_DASHBOARD_DIST={} has no index.html: run `cargo xtask test` (or `cargo xtask build`)",
        dist.display()
    );
    dist
}

/// The workspace's `target/` directory, where the rest of the harness writes too.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")
}

/// Where `screenshot(name)` writes: `target/screenshots/dashboard/`.
pub fn screenshot_dir() -> PathBuf {
    target_dir().join("screenshots/dashboard")
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One axe-core rule a page breaks.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The rule id (`color-contrast`, `label`, ...).
    pub id: String,
    /// `minor`, `moderate`, `serious` or `critical`.
    pub impact: String,
    /// What the rule asks for.
    pub help: String,
    /// CSS selectors of the first elements that break it.
    pub targets: Vec<String>,
}

/// Headless Chromium under chromedriver, with a fantoccini client; both killed on drop.
pub struct Browser {
    client: Client,
    driver: Child,
    dir: PathBuf,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("driver", &self.driver.id())
            .field("dir", &self.dir)
            .finish()
    }
}

impl Browser {
    /// Starts chromedriver on a free loopback port (in its own process group, so the Chromium it
    /// launches goes with it on drop) and opens a headless Chromium session with a fresh profile.
    pub async fn start() -> Browser {
        let chromium = chromium_bin();
        let chromedriver = chromedriver_bin();
        // Canonical: chromedriver cannot find Chromium's DevToolsActivePort under a profile path with `..`.
        let dir = std::fs::canonicalize(run_dir()).expect("canonicalize the run directory");
        let profile = dir.join("chromium-profile");
        std::fs::create_dir_all(&profile).expect("create the chromium profile directory");
        let port = free_port();
        let log = File::create(dir.join("chromedriver.log")).expect("create the chromedriver log");
        let mut driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                dir.join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", chromedriver.display()));
        let url = format!("http://127.0.0.1:{port}");
        wait_for_driver(&mut driver, &url, &dir).await;

        let mut capabilities = Capabilities::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium.display().to_string(),
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    format!("--user-data-dir={}", profile.display()),
                    "--window-size=1280,900",
                ],
            }),
        );
        let connected = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await;
        let client = match connected {
            Ok(client) => client,
            Err(e) => {
                let _ = kill_group(&mut driver);
                panic!(
                    "chromedriver could not start {}: {e}; its log:\n{}",
                    chromium.display(),
                    tail(
                        &std::fs::read_to_string(dir.join("chromedriver.log")).unwrap_or_default(),
                        40
                    )
                );
            }
        };
        client
            .update_timeouts(TimeoutConfiguration::new(
                Some(Duration::from_secs(60)),
                Some(Duration::from_secs(30)),
                Some(Duration::ZERO),
            ))
            .await
            .expect("set the webdriver timeouts");
        Browser {
            client,
            driver,
            dir,
        }
    }

    /// The fantoccini client, for what the helpers do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Opens `url` (a full page load).
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The current URL.
    pub async fn url(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("read the current url")
            .to_string()
    }

    /// The current URL's path and query, e.g. `/tokens?status=active`.
    pub async fn path_and_query(&self) -> String {
        let url = self
            .client
            .current_url()
            .await
            .expect("read the current url");
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// What a failure message should say about the page: its URL, the dashboard's `data-init-error`
    /// and the start of its text.
    pub async fn describe(&self) -> String {
        let url = self
            .client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_else(|e| format!("<unknown: {e}>"));
        let state = self
            .client
            .execute(
                "return [document.documentElement.getAttribute('data-init-error'), document.body ? document.body.innerText : ''];",
                vec![],
            )
            .await
            .unwrap_or(Value::Null);
        let init_error = state[0].as_str().unwrap_or("none").to_owned();
        let text: String = state[1]
            .as_str()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(600)
            .collect();
        format!("page {url} (data-init-error: {init_error}); its text begins: {text:?}")
    }

    /// Waits until `check` returns `Some`, at most `timeout`; panics with `expected` and [`Self::describe`].
    pub async fn wait_until<T, F, Fut>(&self, expected: &str, timeout: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let started = Instant::now();
        loop {
            if let Some(value) = check().await {
                return value;
            }
            if started.elapsed() >= timeout {
                let shot = self.failure_screenshot().await;
                panic!(
                    "expected {expected} within {timeout:?}; {}; screenshot: {shot}",
                    self.describe().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits (up to [`WAIT`]) for an element matching the CSS selector `css`.
    pub async fn wait_for(&self, css: &str) -> Element {
        self.wait_until(&format!("an element matching `{css}`"), WAIT, || async {
            self.client.find(Locator::Css(css)).await.ok()
        })
        .await
    }

    /// Waits (up to [`WAIT`]) for an element matching `css` whose text contains `text` (any case).
    pub async fn wait_for_text(&self, css: &str, text: &str) -> Element {
        self.wait_for_text_within(css, text, WAIT).await
    }

    /// Waits (up to `timeout`) for an element matching `css` whose text contains `text`, ignoring
    /// case (WebDriver reads the rendered text, after CSS `text-transform`).
    pub async fn wait_for_text_within(&self, css: &str, text: &str, timeout: Duration) -> Element {
        let want = text.to_lowercase();
        self.wait_until(
            &format!("an element matching `{css}` with text containing {text:?}"),
            timeout,
            || async {
                for element in self.client.find_all(Locator::Css(css)).await.ok()? {
                    if element
                        .text()
                        .await
                        .is_ok_and(|t| t.to_lowercase().contains(&want))
                    {
                        return Some(element);
                    }
                }
                None
            },
        )
        .await
    }

    /// Waits (up to [`WAIT`]) for a button whose text, trimmed, is exactly `label`.
    pub async fn button(&self, label: &str) -> Element {
        let xpath = format!("//button[normalize-space(.)='{label}']");
        self.wait_until(&format!("a button {label:?}"), WAIT, || async {
            self.client.find(Locator::XPath(&xpath)).await.ok()
        })
        .await
    }

    /// Waits until the path (and query) of the current URL satisfies `want`; returns it.
    pub async fn wait_for_path(&self, expected: &str, want: impl Fn(&str) -> bool) -> String {
        self.wait_until(expected, WAIT, || async {
            let here = self.path_and_query().await;
            want(&here).then_some(here)
        })
        .await
    }

    /// Waits until no `Loading…`/`Checking your session…` placeholder is left on the page and an `h1` is.
    pub async fn wait_loaded(&self) {
        self.wait_until(
            "the page to finish loading (an h1, no .loading placeholder)",
            WAIT,
            || async {
                let state = self
                    .client
                    .execute(
                        "return !!document.querySelector('h1') && !document.querySelector('.loading');",
                        vec![],
                    )
                    .await
                    .ok()?;
                state.as_bool().filter(|loaded| *loaded)
            },
        )
        .await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its result.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        match self.client.execute(script, args).await {
            Ok(value) => value,
            Err(e) => panic!("script failed: {e}; {}", self.describe().await),
        }
    }

    /// Runs the asynchronous `script` (it calls `arguments[arguments.length - 1]` with its result).
    pub async fn execute_async(&self, script: &str, args: Vec<Value>) -> Value {
        match self.client.execute_async(script, args).await {
            Ok(value) => value,
            Err(e) => panic!("async script failed: {e}; {}", self.describe().await),
        }
    }

    /// Saves a screenshot of the whole page as `target/screenshots/dashboard/<name>.png`; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let path = screenshot_dir().join(format!("{name}.png"));
        self.save_full_page(&path)
            .await
            .unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
        path
    }

    /// The whole page, not just the viewport: the window grows to the document's height for the shot.
    async fn save_full_page(&self, path: &Path) -> Result<(), String> {
        let height = self
            .client
            .execute(
                "return Math.ceil(Math.max(document.documentElement.scrollHeight, document.body ? document.body.scrollHeight : 0));",
                vec![],
            )
            .await
            .ok()
            .and_then(|v| v.as_u64())
            .unwrap_or(900)
            .clamp(900, 6000) as u32;
        let resized = height > 900;
        if resized {
            let _ = self.client.set_window_size(1280, height + 100).await;
        }
        let png = self.client.screenshot().await.map_err(|e| e.to_string());
        if resized {
            let _ = self.client.set_window_size(1280, 900).await;
        }
        let png = png?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        std::fs::write(path, png).map_err(|e| e.to_string())
    }

    /// A screenshot for a failure message, in this browser's run directory (never in the screenshot set).
    async fn failure_screenshot(&self) -> String {
        let path = self.dir.join(format!(
            "failure-{}.png",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default()
        ));
        match self.client.screenshot().await {
            Ok(png) if std::fs::write(&path, &png).is_ok() => path.display().to_string(),
            _ => "none (could not take one)".to_owned(),
        }
    }

    /// The axe-core violations of the current page, every impact.
    pub async fn axe_violations(&self) -> Vec<Violation> {
        let axe = std::fs::read_to_string(axe_js()).expect("read axe.min.js");
        self.execute(&axe, vec![]).await;
        let result = self
            .execute_async(
                r#"
                const done = arguments[arguments.length - 1];
                axe.run(document, { resultTypes: ['violations'] })
                    .then(r => done({ violations: r.violations.map(v => ({
                        id: v.id,
                        impact: v.impact || '',
                        help: v.help,
                        targets: v.nodes.slice(0, 5).map(n => n.target.join(' ')),
                    })) }))
                    .catch(e => done({ error: String(e) }));
                "#,
                vec![],
            )
            .await;
        if let Some(error) = result["error"].as_str() {
            panic!("axe.run failed: {error}; {}", self.describe().await);
        }
        result["violations"]
            .as_array()
            .unwrap_or_else(|| panic!("axe.run answered {result}"))
            .iter()
            .map(|v| Violation {
                id: v["id"].as_str().unwrap_or_default().to_owned(),
                impact: v["impact"].as_str().unwrap_or_default().to_owned(),
                help: v["help"].as_str().unwrap_or_default().to_owned(),
                targets: v["targets"]
                    .as_array()
                    .map(|t| {
                        t.iter()
                            .filter_map(|s| s.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// The current page's `serious` and `critical` axe-core violations, one line each (page, rule,
    /// impact, what it asks, the first offending elements), to collect over several pages.
    pub async fn serious_axe_violations(&self, page_name: &str) -> Vec<String> {
        self.axe_violations()
            .await
            .into_iter()
            .filter(|v| v.impact == "serious" || v.impact == "critical")
            .map(|v| {
                format!(
                    "- {page_name}: {} ({}): {}; at {}",
                    v.id,
                    v.impact,
                    v.help,
                    v.targets.join(", ")
                )
            })
            .collect()
    }

    /// Checks the current page with axe-core and panics listing every `serious` or `critical`
    /// violation (rule, impact, what it asks, the first offending elements).
    pub async fn axe(&self, page_name: &str) {
        let bad = self.serious_axe_violations(page_name).await;
        if !bad.is_empty() {
            panic!(
                "the {page_name} page has {} serious or critical accessibility violation(s):\n{}\n{}",
                bad.len(),
                bad.join("\n"),
                self.describe().await
            );
        }
    }

    /// The value of the browser's cookie `name` for the current page, HttpOnly ones included.
    pub async fn cookie(&self, name: &str) -> Option<String> {
        self.client
            .get_all_cookies()
            .await
            .expect("read the browser's cookies")
            .into_iter()
            .find(|c| c.name() == name)
            .map(|c| c.value().to_owned())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // No async here to end the session politely: killing chromedriver's process group takes
        // Chromium with it, and the profile is a fresh directory nobody reuses.
        let _ = kill_group(&mut self.driver);
        if std::thread::panicking() {
            eprintln!(
                "---- chromedriver log ({}/chromedriver.log), last lines ----\n{}\n---- end of chromedriver log ----",
                self.dir.display(),
                tail(
                    &std::fs::read_to_string(self.dir.join("chromedriver.log")).unwrap_or_default(),
                    30
                )
            );
        }
    }
}

/// SIGKILLs the process group chromedriver leads (chromedriver and the Chromium it started), then reaps it.
fn kill_group(driver: &mut Child) -> std::io::Result<()> {
    let group = format!("-{}", driver.id());
    let killed = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = driver.kill();
    driver.wait()?;
    killed.map(|_| ())
}

/// Waits until chromedriver answers `/status` with `ready: true`; panics with its log otherwise.
async fn wait_for_driver(driver: &mut Child, url: &str, dir: &Path) {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("http client");
    let started = Instant::now();
    loop {
        if let Some(status) = driver.try_wait().ok().flatten() {
            panic!(
                "chromedriver exited during start with {status}; its log:\n{}",
                std::fs::read_to_string(dir.join("chromedriver.log")).unwrap_or_default()
            );
        }
        if let Ok(response) = http.get(format!("{url}/status")).send().await {
            if let Ok(body) = response.json::<Value>().await {
                if body["value"]["ready"] == true {
                    return;
                }
            }
        }
        if started.elapsed() > DRIVER_START {
            let _ = kill_group(driver);
            panic!(
                "chromedriver did not answer {url}/status within {DRIVER_START:?}; its log:\n{}",
                std::fs::read_to_string(dir.join("chromedriver.log")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
