//! Headless Chromium for the dashboard tests: the distribution's `chromium` driven through its
//! `chromedriver` (WebDriver) with fantoccini, behind a small blocking API, so a test reads like
//! a person's visit: open a page, wait for an element, fill in a form, take a screenshot.
//!
//! One test drives browsers at a time (Chromium is heavy on a 2-core machine); each
//! [`Browsers::open`] starts a fresh Chromium with a new empty profile, so a second browser has
//! no cookie from the first.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tempfile::TempDir;

/// How long an element may take to appear before the test gives up: far beyond the second the
/// dashboard promises, so a slow shared machine does not fail a test that works.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// What to install when the browser is missing.
const INSTALL: &str = "apt-get install -y chromium chromium-driver";

/// Flags without which Chromium tries to reach the network at start (updates, sync, QUIC
/// probes) and fails or stalls on a machine without one; `--no-sandbox` because the tests run
/// as root.
const CHROMIUM_FLAGS: [&str; 10] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1400",
];

/// Serialises the browser tests: each takes this for its whole run.
static ONE_TEST_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A running `chromedriver`, ready to start browsers; only one test holds one at a time.
pub struct Browsers {
    chromium: PathBuf,
    driver: Child,
    driver_url: String,
    runtime: tokio::runtime::Runtime,
    _turn: MutexGuard<'static, ()>,
}

impl Browsers {
    /// Starts `chromedriver`, or says plainly what is missing and returns `None`. Where a
    /// browser is required (`CI` or `IPC_REQUIRE_BROWSER` set) a missing one fails the test.
    pub fn start(test: &str) -> Option<Browsers> {
        let (chromium, chromedriver) = match (find(CHROMIUM), find(CHROMEDRIVER)) {
            (Some(chromium), Some(chromedriver)) => (chromium, chromedriver),
            (chromium, _) => {
                let missing = if chromium.is_none() {
                    "chromium"
                } else {
                    "chromedriver"
                };
                let why = format!(
                    "{test} needs headless Chromium, and {missing} is not installed ({INSTALL})"
                );
                if browser_required() {
                    panic!("{why}; CI or IPC_REQUIRE_BROWSER is set, so this fails");
                }
                println!("SKIPPED: {why}");
                return None;
            }
        };
        let turn = ONE_TEST_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let port = free_port();
        #[allow(clippy::zombie_processes)] // reaped by Drop
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        wait_for_listener(port, "chromedriver");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Some(Browsers {
            chromium,
            driver,
            driver_url: format!("http://127.0.0.1:{port}"),
            runtime,
            _turn: turn,
        })
    }

    /// A new browser with an empty profile (no cookies), with `extra_flags` on Chromium's
    /// command line (such as `--host-resolver-rules=...`).
    pub fn open(&self, extra_flags: &[&str]) -> Page<'_> {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| f.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        args.extend(extra_flags.iter().map(|f| f.to_string()));
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": self.chromium, "args": args},
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object literal")
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = self
            .runtime
            .block_on(
                ClientBuilder::new(connector)
                    .capabilities(capabilities)
                    .connect(&self.driver_url),
            )
            .unwrap_or_else(|e| panic!("chromedriver could not start Chromium: {e}"));
        Page {
            client: Some(client),
            runtime: &self.runtime,
            _profile: profile,
        }
    }
}

impl Drop for Browsers {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// One browser window and what a person does in it.
pub struct Page<'a> {
    client: Option<Client>,
    runtime: &'a tokio::runtime::Runtime,
    _profile: TempDir,
}

impl Page<'_> {
    fn client(&self) -> &Client {
        self.client.as_ref().expect("open until dropped")
    }

    fn run<T>(&self, future: impl std::future::Future<Output = T>) -> T {
        self.runtime.block_on(future)
    }

    /// Opens `url` and waits for the page to load.
    pub fn goto(&self, url: &str) {
        self.run(self.client().goto(url))
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    pub fn current_url(&self) -> String {
        self.run(self.client().current_url())
            .expect("current url")
            .to_string()
    }

    /// The HTTP status of the page's own load, as the browser saw it.
    pub fn status(&self) -> u64 {
        let status = self.execute(
            "const [entry] = performance.getEntriesByType('navigation'); \
             return entry ? entry.responseStatus : null;",
        );
        status
            .as_u64()
            .unwrap_or_else(|| panic!("no navigation status for {}", self.current_url()))
    }

    /// The page's HTML as the browser holds it now (scripts' changes included).
    pub fn source(&self) -> String {
        self.run(self.client().source()).expect("page source")
    }

    /// The visible text of the whole page.
    pub fn text(&self) -> String {
        self.execute("return document.body ? document.body.innerText : '';")
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Runs `script` (a function body) in the page and returns its result.
    pub fn execute(&self, script: &str) -> Value {
        self.run(self.client().execute(script, Vec::new()))
            .unwrap_or_else(|e| panic!("script failed ({e}): {script}"))
    }

    /// Runs `script` with its result callback as the last argument (`arguments[0]`), so it
    /// can wait for a promise such as a `fetch`.
    pub fn execute_async(&self, script: &str) -> Value {
        self.run(self.client().execute_async(script, Vec::new()))
            .unwrap_or_else(|e| panic!("script failed ({e}): {script}"))
    }

    /// The texts of every element matching `css`, in document order.
    pub fn texts(&self, css: &str) -> Vec<String> {
        let elements = self
            .run(self.client().find_all(Locator::Css(css)))
            .unwrap_or_else(|e| panic!("find {css}: {e}"));
        elements
            .iter()
            .map(|element| self.run(element.text()).unwrap_or_default())
            .collect()
    }

    /// An attribute of every element matching `css`, in document order.
    pub fn attributes(&self, css: &str, attribute: &str) -> Vec<Option<String>> {
        let elements = self
            .run(self.client().find_all(Locator::Css(css)))
            .unwrap_or_else(|e| panic!("find {css}: {e}"));
        elements
            .iter()
            .map(|element| self.run(element.attr(attribute)).ok().flatten())
            .collect()
    }

    /// Waits (up to [`DEADLINE`]) until an element matching `css` shows text containing
    /// `needle`; returns that element's text. Fails the test with the page's text otherwise.
    pub fn wait_for_text(&self, css: &str, needle: &str) -> String {
        let started = Instant::now();
        loop {
            if let Some(text) = self.texts(css).into_iter().find(|t| t.contains(needle)) {
                return text;
            }
            if started.elapsed() > DEADLINE {
                panic!(
                    "no {css} containing {needle:?} appeared within {DEADLINE:?} on {}; the page says:\n{}",
                    self.current_url(),
                    self.text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fills the form field `name` inside the form `form` (a CSS selector) as a person would:
    /// picks the option of a `<select>`, types into an `<input>` or `<textarea>`.
    pub fn fill(&self, form: &str, name: &str, value: &str) {
        let css = format!("{form} [name=\"{name}\"]");
        let field = self
            .run(self.client().find(Locator::Css(&css)))
            .unwrap_or_else(|e| panic!("no field {css}: {e}"));
        let tag = self.run(field.tag_name()).expect("tag name");
        if tag.eq_ignore_ascii_case("select") {
            self.run(field.select_by_value(value))
                .unwrap_or_else(|e| panic!("{css} has no option {value:?}: {e}"));
        } else {
            self.run(field.clear()).expect("clear field");
            self.run(field.send_keys(value)).expect("type into field");
        }
    }

    /// Clicks the first element matching `css` (and waits for any page load it starts).
    pub fn click(&self, css: &str) {
        let element = self
            .run(self.client().find(Locator::Css(css)))
            .unwrap_or_else(|e| panic!("nothing to click at {css}: {e}"));
        self.run(element.click())
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Clicks the first element matching `css`, which submits a form or follows a link, and
    /// waits until the new page has loaded: a click returns once the navigation has begun, so
    /// without waiting the next look could still see the old page, or none.
    pub fn click_to_load(&self, css: &str) {
        self.execute("window.beforeTheClick = true; return null;");
        self.click(css);
        let started = Instant::now();
        loop {
            let loaded = self.run(self.client().execute(
                "return document.readyState === 'complete' && !window.beforeTheClick;",
                Vec::new(),
            ));
            if matches!(loaded, Ok(Value::Bool(true))) {
                return;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "clicking {css} loaded no new page within {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Takes a PNG of what the window shows. With `IPC_SCREENSHOTS=DIR` set it is written to
    /// `DIR/NAME.png` (docs/DASHBOARD.md's pictures come from such a run).
    pub fn screenshot(&self, name: &str) {
        let png = self
            .run(self.client().screenshot())
            .unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
        assert!(
            png.starts_with(b"\x89PNG"),
            "the screenshot of {name} is not a PNG"
        );
        if let Some(dir) = std::env::var_os("IPC_SCREENSHOTS") {
            let dir = PathBuf::from(dir);
            std::fs::create_dir_all(&dir).expect("screenshot dir");
            let path = dir.join(format!("{name}.png"));
            std::fs::write(&path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
}

impl Drop for Page<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Ends the WebDriver session, which stops this Chromium.
            let _ = self.runtime.block_on(client.close());
        }
    }
}

/// Where a browser is part of what must pass: CI, or anyone who asks for it.
fn browser_required() -> bool {
    ["CI", "IPC_REQUIRE_BROWSER"]
        .iter()
        .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()))
}

const CHROMIUM: &[&str] = &["chromium", "chromium-browser", "google-chrome"];
const CHROMEDRIVER: &[&str] = &["chromedriver"];

/// The first of `names` on the `PATH`.
fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

fn wait_for_listener(port: u16, what: &str) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < DEADLINE,
            "{what} did not listen on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
