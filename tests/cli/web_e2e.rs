//! End to end in a real browser: headless Chromium (driven over WebDriver by chromedriver) loads the page served by
//! `diffuse serve`, asks for a digit, and an image appears. Needs Debian's `chromium` and `chromium-driver`, so it is
//! ignored unless asked for; scripts/test.sh asks when both are installed (.ci/run installs them), and asked for
//! without them it fails rather than pass without checking anything.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

struct Driver {
    child: Child,
    base: String,
    agent: ureq::Agent,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    fn start() -> Driver {
        let binary = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        assert!(
            std::path::Path::new(&binary).exists(),
            "{binary} not found: install Debian's chromium and chromium-driver (see .ci/run)"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            agent: http(),
        };
        let started = Instant::now();
        while driver.agent.get(&format!("{}/status", driver.base)).call().is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        driver
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let mut response = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            _ => self
                .agent
                .post(&url)
                .header("content-type", "application/json")
                .send(body.to_string()),
        }
        .expect("webdriver request");
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().expect("webdriver body");
        let value: Value = serde_json::from_str(&text).expect("webdriver json");
        assert!(status < 400, "{method} {path}: {value}");
        value["value"].clone()
    }
}

#[test]
#[ignore = "needs Debian's chromium and chromium-driver (scripts/test.sh includes it when they are installed)"]
fn needs_chromium_the_page_generates_a_digit_in_headless_chromium() {
    let server = Server::start(&[]);
    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile dir");
    let args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=900,1000",
    ];
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    args.push(format!("--user-data-dir={}", profile.path().display()));
    let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let capabilities = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {"binary": binary, "args": args}
    }}});
    let session = driver.call("POST", "/session", capabilities);
    let id = session["sessionId"].as_str().expect("session id").to_string();
    let s = |path: &str| format!("/session/{id}{path}");
    let script = |code: &str| driver.call("POST", &s("/execute/sync"), json!({"script": code, "args": []}));

    driver.call("POST", &s("/url"), json!({"url": format!("{}/", server.base)}));
    // The page fills the sampler list from /api/models; wait for it, then ask for two 7s with 3 DDIM steps.
    let started = Instant::now();
    while script("return document.getElementById('sampler').options.length")
        .as_u64()
        .unwrap_or(0)
        == 0
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the page never loaded the model list"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    script("document.getElementById('digit').value = '7'; document.getElementById('n').value = '2'; document.getElementById('sampler').value = 'ddim'; document.getElementById('steps').value = '3'; return true");
    let button = driver.call(
        "POST",
        &s("/element"),
        json!({"using": "css selector", "value": "#generate"}),
    );
    let element = button
        .as_object()
        .and_then(|o| o.values().next())
        .and_then(Value::as_str)
        .expect("element id");
    driver.call("POST", &s(&format!("/element/{element}/click")), json!({}));

    let started = Instant::now();
    let state = loop {
        let state = script(
            "const g = document.getElementById('grid'); return [g.hidden, g.naturalWidth, g.alt, document.getElementById('status').textContent]",
        );
        if state[0] == json!(false) && state[1].as_u64().unwrap_or(0) > 0 {
            break state;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no image appeared: {state}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(state[2].as_str().unwrap_or("").contains("digit 7"), "{state}");
    assert!(state[3].as_str().unwrap_or("").starts_with("Generated 2"), "{state}");
    let animation = script("return document.getElementById('anim').naturalWidth");
    assert!(animation.as_u64().unwrap_or(0) > 0, "no animation shown");

    if let Ok(path) = std::env::var("DIFFUSE_SCREENSHOT") {
        use base64::Engine as _;
        let png = driver.call("GET", &s("/screenshot"), json!({}));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("b64"))
            .expect("b64");
        std::fs::write(path, bytes).expect("write screenshot");
    }
    driver.call("DELETE", &s(""), json!({}));
}
