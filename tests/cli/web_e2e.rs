//! End to end in a real browser: headless Chromium (driven over WebDriver by chromedriver, through the fantoccini
//! client) loads the page served by `diffuse serve`, asks for a digit, and an image appears. Needs Debian's
//! `chromium` and `chromium-driver`, so it is ignored unless asked for; scripts/test.sh asks when both are installed
//! (.ci/run installs them), and asked for without them it fails rather than pass without checking anything.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

use crate::common::*;

/// A chromedriver process on a free loopback port, killed when dropped.
struct ChromeDriver {
    child: Child,
    url: String,
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChromeDriver {
    fn start() -> ChromeDriver {
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
        let driver = ChromeDriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        driver
    }
}

/// Runs `code` in the page and returns what it returns.
async fn script(client: &Client, code: &str) -> Value {
    client.execute(code, Vec::new()).await.expect("execute script")
}

#[test]
#[ignore = "needs Debian's chromium and chromium-driver (scripts/test.sh includes it when they are installed)"]
fn needs_chromium_the_page_generates_a_digit_in_headless_chromium() {
    let server = Server::start(&[]);
    let driver = ChromeDriver::start();
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
    let Value::Object(capabilities) = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {"binary": binary, "args": args}
    }) else {
        unreachable!("a JSON object literal")
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&driver.url)
            .await
            .expect("webdriver session");

        client.goto(&format!("{}/", server.base)).await.expect("load the page");
        // The page fills the sampler list from /api/models; wait for it, then ask for two 7s with 3 DDIM steps.
        let started = Instant::now();
        while script(&client, "return document.getElementById('sampler').options.length")
            .await
            .as_u64()
            .unwrap_or(0)
            == 0
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the page never loaded the model list"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        script(&client, "document.getElementById('digit').value = '7'; document.getElementById('n').value = '2'; document.getElementById('sampler').value = 'ddim'; document.getElementById('steps').value = '3'; return true").await;
        client
            .find(Locator::Css("#generate"))
            .await
            .expect("the generate button")
            .click()
            .await
            .expect("click generate");

        let started = Instant::now();
        let state = loop {
            let state = script(
                &client,
                "const g = document.getElementById('grid'); return [g.hidden, g.naturalWidth, g.alt, document.getElementById('status').textContent]",
            )
            .await;
            if state[0] == json!(false) && state[1].as_u64().unwrap_or(0) > 0 {
                break state;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no image appeared: {state}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(state[2].as_str().unwrap_or("").contains("digit 7"), "{state}");
        assert!(state[3].as_str().unwrap_or("").starts_with("Generated 2"), "{state}");
        let animation = script(&client, "return document.getElementById('anim').naturalWidth").await;
        assert!(animation.as_u64().unwrap_or(0) > 0, "no animation shown");

        if let Ok(path) = std::env::var("DIFFUSE_SCREENSHOT") {
            let png = client.screenshot().await.expect("screenshot");
            std::fs::write(path, png).expect("write screenshot");
        }
        client.close().await.expect("end the webdriver session");
    });
}
