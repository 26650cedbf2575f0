//! A real browser for the page tests: Debian's headless `chromium`, driven over WebDriver by
//! `chromedriver` (both installed by `deploy/local/install.sh`), with screenshots saved as test
//! artifacts.

use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// chromedriver answers its status endpoint well within this on a loaded 2-core machine.
const DRIVER_START: Duration = Duration::from_secs(30);

/// One chromium session and the chromedriver serving it; the driver is killed on drop.
pub struct Browser {
    client: Client,
    driver: Child,
    artifacts: PathBuf,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless chromium window of `width` x
    /// `height` CSS pixels. Fails loudly when either program is missing.
    pub async fn start(width: u32, height: u32) -> Self {
        let chromedriver = program("PRISM_CHROMEDRIVER", "chromedriver");
        let chromium = program("PRISM_CHROMIUM", "chromium");
        let port = crate::free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            // A process group of its own, which chromium and its helpers join: one kill ends all.
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    // Tests often run as root in a container, where chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object")
        };
        let webdriver = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let client = loop {
            // Plain HTTP to a local chromedriver: no TLS stack needed.
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&webdriver)
                .await
            {
                Ok(client) => break client,
                // chromedriver is still starting.
                Err(_) if started.elapsed() < DRIVER_START => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => panic!("chromedriver on {webdriver} gave no session: {error}"),
            }
        };
        let artifacts = artifacts_dir();
        Browser {
            client,
            driver,
            artifacts,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page and returns its value.
    pub async fn eval(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Polls `script` until it returns something other than `null`/`false` and returns that; on
    /// timeout saves a screenshot named `name` and fails with the page's visible text.
    pub async fn wait_for(&self, name: &str, timeout: Duration, script: &str) -> Value {
        let started = Instant::now();
        loop {
            let value = self.eval(script, Vec::new()).await;
            if !matches!(value, Value::Null | Value::Bool(false)) {
                return value;
            }
            if started.elapsed() > timeout {
                let shot = self.screenshot(&format!("timeout-{name}")).await;
                let text = self
                    .eval("return document.body.innerText", Vec::new())
                    .await;
                panic!(
                    "waited {timeout:?} for {name}; screenshot {}; the page shows:\n{}",
                    shot.display(),
                    text.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Saves a PNG of the window as `<artifacts>/<name>.png`, prints and returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let path = self.artifacts.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
        path
    }

    /// A PNG of the whole page, not only the window: resizes the window to the page's height
    /// first (headless chromium draws only what the window holds), then back.
    pub async fn full_page_screenshot(&self, name: &str) -> PathBuf {
        let (width, height) = self.client.get_window_size().await.expect("window size");
        let page_height = self
            .eval("return document.documentElement.scrollHeight", Vec::new())
            .await
            .as_u64()
            .expect("a height");
        self.client
            .set_window_size(width as u32, page_height.max(height) as u32)
            .await
            .expect("resize");
        let path = self.screenshot(name).await;
        self.client
            .set_window_size(width as u32, height as u32)
            .await
            .expect("resize");
        path
    }

    /// Ends the browser session (chromium exits); chromedriver goes on drop.
    pub async fn close(self) {
        self.client
            .clone()
            .close()
            .await
            .expect("closing the browser session");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: after a failed test (no `close`) chromium would outlive its driver.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
    }
}

/// `$variable` if set, else `name` on the PATH; fails with how to install it.
fn program(variable: &str, name: &str) -> PathBuf {
    if let Ok(path) = std::env::var(variable) {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|path| path.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed: run deploy/local/install.sh (it installs Debian's chromium \
                 and chromium-driver), or set {variable}"
            )
        })
}

/// `$PRISM_TEST_ARTIFACTS`, else `<cargo target dir>/test-artifacts/web`.
fn artifacts_dir() -> PathBuf {
    let dir = std::env::var_os("PRISM_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // target/<profile>/deps/<this test> -> target
            let exe = std::env::current_exe().unwrap();
            let target = exe.ancestors().nth(3).unwrap_or(Path::new("."));
            target.join("test-artifacts").join("web")
        });
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}
