//! A real headless Chromium, driven over WebDriver (chromedriver) through
//! fantoccini, for the UI tests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

use crate::support::PATIENCE;

/// A browser session and the chromedriver behind it.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a window of
    /// `width` × `height` CSS pixels.
    pub async fn start(width: u32, height: u32) -> Self {
        let chromedriver = which("chromedriver");
        let chromium = which("chromium");
        let port = free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("failed to start {}: {err}", chromedriver.display()));
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-quic",
                    "--no-first-run",
                    format!("--user-data-dir={}", profile.path().display()),
                    format!("--window-size={width},{height}"),
                ]
            }
        });
        let capabilities = capabilities.as_object().unwrap().clone();

        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let client = loop {
            let connected = ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await;
            match connected {
                Ok(client) => break client,
                Err(err) if started.elapsed() > Duration::from_secs(30) => {
                    panic!("failed to open a browser session through chromedriver: {err}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        Self {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Opens `url` and waits until the UI has rendered a heading.
    pub async fn open(&self, url: &str) {
        self.client.goto(url).await.unwrap();
        self.find("main h1").await;
    }

    /// Waits for an element matching the CSS selector.
    pub async fn find(&self, selector: &str) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(selector))
            .await
        {
            Ok(element) => element,
            Err(err) => {
                // Keep what the page showed, for whoever reads the failure.
                let shot = self.screenshot("failure").await;
                let body = self.client.source().await.unwrap_or_default();
                panic!(
                    "no element {selector}: {err}; screenshot {}; page:\n{body}",
                    shot.display()
                )
            }
        }
    }

    /// Types `text` into the element matching `selector`. The live views
    /// re-render when events arrive, which can replace the element between
    /// finding and typing; then it is found again.
    pub async fn type_into(&self, selector: &str, text: &str) {
        self.retry_stale(selector, |element| {
            let text = text.to_owned();
            async move { element.send_keys(&text).await }
        })
        .await;
    }

    /// Clicks the element matching `selector`, finding it again if a
    /// re-render replaced it.
    pub async fn click(&self, selector: &str) {
        self.retry_stale(selector, |element| async move { element.click().await })
            .await;
    }

    async fn retry_stale<F, Fut>(&self, selector: &str, act: F)
    where
        F: Fn(fantoccini::elements::Element) -> Fut,
        Fut: std::future::Future<Output = Result<(), fantoccini::error::CmdError>>,
    {
        for _ in 0..20 {
            let element = self.find(selector).await;
            match act(element).await {
                Ok(()) => return,
                Err(fantoccini::error::CmdError::Standard(err))
                    if err.error == fantoccini::error::ErrorStatus::StaleElementReference => {}
                Err(err) => panic!("failed to act on {selector}: {err}"),
            }
        }
        panic!("{selector} kept being replaced");
    }

    /// Waits until the page's text contains `text`.
    pub async fn wait_for_text(&self, text: &str) {
        let started = Instant::now();
        loop {
            let body = self
                .client
                .find(Locator::Css("body"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap_or_default();
            if body.contains(text) {
                return;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "the page never showed {text:?}; it shows:\n{body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves a screenshot as `NAME.png` in the screenshot folder and
    /// returns its path. The folder is `$TASKHUB_SCREENSHOTS`, or
    /// `ui-screenshots` beside the test binary's profile folder.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let folder = std::env::var_os("TASKHUB_SCREENSHOTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let exe = std::env::current_exe().unwrap();
                // target/<profile>/deps/all-* → target/ui-screenshots
                exe.ancestors().nth(3).unwrap().join("ui-screenshots")
            });
        std::fs::create_dir_all(&folder).unwrap();
        let path = folder.join(format!("{name}.png"));
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
        path
    }

    /// Ends the session and stops chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{program}` is not installed; the UI tests drive Debian's Chromium: \
                 `apt-get install chromium chromium-driver` (scripts/test.sh does it)"
            )
        })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
