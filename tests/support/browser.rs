//! A real headless Chromium, driven over WebDriver by its ChromeDriver
//! (Debian's `chromium` and `chromium-driver`), with the network kept to
//! this machine: no background networking, no component updates, a new
//! empty profile.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Whether both are installed.
pub fn installed() -> bool {
    std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists()
}

/// One browser session.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub fn start() -> Browser {
        let port = super::free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            runtime,
            client: codex_broker::oauth::http_client(Duration::from_secs(60)),
            _profile: profile,
        };
        let ready = super::wait_until(Duration::from_secs(20), || {
            browser
                .try_call("GET", "/status", None)
                .is_some_and(|v| v["value"]["ready"] == true)
        });
        assert!(ready.is_some(), "chromedriver did not start");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
        ]
        .map(String::from)
        .into_iter()
        .chain([format!(
            "--user-data-dir={}",
            browser._profile.path().display()
        )])
        .collect::<Vec<_>>();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let session = browser.call("POST", "/session", Some(capabilities));
        browser.session = session["value"]["sessionId"].as_str().unwrap().to_owned();
        browser
    }

    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Option<Value> {
        let url = format!("{}{path}", self.base);
        let request = self.client.request(method.parse().unwrap(), url);
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        self.runtime.block_on(async {
            let response = request.send().await.ok()?;
            response.json::<Value>().await.ok()
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let answer = self
            .try_call(method, path, body)
            .expect("chromedriver answers");
        assert!(
            answer["value"].get("error").is_none(),
            "WebDriver {method} {path}: {answer}"
        );
        answer
    }

    fn in_session(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.call(method, &path, body)["value"].take()
    }

    pub fn open(&self, url: &str) {
        self.in_session("POST", "/url", Some(json!({"url": url})));
    }

    /// The value of `script`, a function body run in the page.
    pub fn eval(&self, script: &str) -> Value {
        self.in_session(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// The value `script` passes to its callback, `arguments[0]`.
    pub fn eval_async(&self, script: &str) -> Value {
        self.in_session(
            "POST",
            "/execute/async",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let encoded = self.in_session("GET", "/screenshot", None);
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap())
            .unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = self.try_call("DELETE", &path, None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
