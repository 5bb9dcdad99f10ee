//! `diffuse serve` run like a service: probes and warm-up, draining on SIGTERM, the worker's panic boundary, the
//! per-client rate limit, configuration from the environment with JSON access logs, and the OpenAPI document.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crate::common::{diffuse, get, http};

/// How long a server may take to load its model and warm up on a slow machine.
const START_LIMIT: Duration = Duration::from_secs(120);

/// A `diffuse serve` whose stdout and stderr lines are kept, and whose exit can be awaited; killed when dropped.
struct Serve {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
}

fn lines_of(pipe: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Serve {
    fn spawn(mut command: Command) -> Serve {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn diffuse serve");
        let stdout = lines_of(child.stdout.take().expect("stdout"));
        let stderr = lines_of(child.stderr.take().expect("stderr"));
        Serve { child, stdout, stderr }
    }

    /// `diffuse serve --threads 2 ARGS` on a free port.
    fn start(args: &[&str]) -> (Serve, String) {
        let mut command = diffuse();
        command
            .args(["serve", "--addr", "127.0.0.1:0", "--threads", "2"])
            .args(args);
        let mut serve = Serve::spawn(command);
        let base = serve.ready();
        (serve, base)
    }

    /// Waits for `listening on http://ADDR` (printed once warm), returning the base URL.
    fn ready(&mut self) -> String {
        let line = self
            .stdout
            .recv_timeout(START_LIMIT)
            .expect("the server never became ready");
        line.strip_prefix("listening on ").expect("listening line").to_string()
    }

    /// The first stderr line, within `limit`, that `matches`.
    fn stderr_line(&self, limit: Duration, matches: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if matches(&line) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago (for a server whose address the test must know before it is ready).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// Polls `url` until `done(status, body)`, for at most `limit`.
fn poll(agent: &ureq::Agent, url: &str, limit: Duration, done: impl Fn(u16, &[u8]) -> bool) -> (u16, Vec<u8>) {
    let deadline = Instant::now() + limit;
    loop {
        let attempt = agent.get(url).call();
        if let Ok(mut response) = attempt {
            let status = response.status().as_u16();
            let body = response.body_mut().read_to_vec().unwrap_or_default();
            if done(status, &body) || Instant::now() > deadline {
                return (status, body);
            }
        } else if Instant::now() > deadline {
            panic!("{url} never answered: {attempt:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn live_at_once_ready_only_after_the_warm_up() {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut command = diffuse();
    command
        .args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--threads", "2"])
        // Test-only hook: the worker sleeps this long before its warm-up, so "listening but not ready" lasts.
        .env("DIFFUSE_TEST_WARMUP_DELAY_MS", "3000");
    let mut serve = Serve::spawn(command);
    let agent = http();
    let (status, _) = poll(&agent, &format!("{base}/livez"), START_LIMIT, |s, _| s == 200);
    assert_eq!(status, 200, "/livez");
    for probe in ["/readyz", "/healthz"] {
        let (status, _, body) = get(&agent, &format!("{base}{probe}"));
        assert_eq!(
            (status, json(&body)["status"].as_str()),
            (503, Some("starting")),
            "{probe}"
        );
    }
    assert_eq!(serve.ready(), base);
    for probe in ["/readyz", "/healthz"] {
        let (status, _, body) = get(&agent, &format!("{base}{probe}"));
        let body = json(&body);
        assert_eq!((status, body["status"].as_str()), (200, Some("ok")), "{probe}");
        assert_eq!(body["model"], "cfg-d64");
    }
}

#[test]
fn sigterm_answers_accepted_requests_then_exits_0() {
    let (mut serve, base) = Serve::start(&["--drain-secs", "300", "--timeout-secs", "600"]);
    let agent = http();
    // Four requests that each take a while on a CPU (different guidance, so they do not share a batch).
    let slow = |i: usize| {
        format!(
            "{base}/api/generate?digit={i}&n=4&sampler=ddim&steps=50&guidance={}",
            i + 1
        )
    };
    std::thread::scope(|s| {
        let requests: Vec<_> = (0..4)
            .map(|i| {
                let (agent, url) = (agent.clone(), slow(i));
                s.spawn(move || get(&agent, &url))
            })
            .collect();
        // Signal only once all four were accepted (the readiness body counts them).
        let (_, body) = poll(&agent, &format!("{base}/readyz"), START_LIMIT, |_, b| {
            serde_json::from_slice::<serde_json::Value>(b).is_ok_and(|v| v["in_flight"] == 4)
        });
        assert_eq!(json(&body)["in_flight"], 4, "the requests were not all accepted");
        serve.signal("TERM");
        let (status, body) = poll(&agent, &format!("{base}/readyz"), Duration::from_secs(30), |s, _| {
            s == 503
        });
        assert_eq!((status, json(&body)["status"].as_str()), (503, Some("draining")));
        let (status, _, body) = get(&agent, &format!("{base}/api/generate?n=1&sampler=ddim&steps=1"));
        assert_eq!(
            status,
            503,
            "new work while draining: {}",
            String::from_utf8_lossy(&body)
        );
        for request in requests {
            let (status, content_type, body) = request.join().expect("request thread");
            assert_eq!(
                (status, content_type.as_str()),
                (200, "image/png"),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
    });
    let status = serve
        .wait_exit(Duration::from_secs(60))
        .expect("the server did not exit after draining");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_panicking_batch_answers_500_and_the_worker_keeps_serving() {
    let mut command = diffuse();
    command
        .args(["serve", "--addr", "127.0.0.1:0", "--threads", "2"])
        // Test-only hook, read by the worker alone: a batch holding a request with seed 13 panics.
        .env("DIFFUSE_TEST_PANIC_ON_SEED", "13");
    let mut serve = Serve::spawn(command);
    let base = serve.ready();
    let agent = http();
    let url = |seed: u64| format!("{base}/api/generate?digit=4&n=2&sampler=ddim&steps=2&seed={seed}");
    let (status, content_type, body) = get(&agent, &url(13));
    assert_eq!((status, content_type.as_str()), (500, "application/json"));
    assert!(json(&body)["error"]
        .as_str()
        .is_some_and(|e| e.contains("injected test fault")));
    for seed in [1, 13, 2] {
        let (status, _, _) = get(&agent, &url(seed));
        assert_eq!(status, if seed == 13 { 500 } else { 200 }, "seed {seed}");
    }
    let (_, _, metrics) = get(&agent, &format!("{base}/metrics"));
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.lines().any(|l| l == "diffuse_worker_panics_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l == "diffuse_images_generated_total 4"),
        "{metrics}"
    );
    let (status, _, _) = get(&agent, &format!("{base}/readyz"));
    assert_eq!(status, 200);
    assert!(serve.child.try_wait().expect("wait").is_none());
}

#[test]
fn a_client_over_its_rate_gets_429_with_retry_after() {
    // One token per 5 s and bursts of 3: the fourth quick request is refused, whatever the machine's speed.
    let (_serve, base) = Serve::start(&["--rate-limit", "0.2/s,3"]);
    let agent = http();
    for i in 0..3 {
        let (status, _, _) = get(&agent, &format!("{base}/api/models"));
        assert_eq!(status, 200, "request {i} of the burst");
    }
    let mut response = agent.get(&format!("{base}/api/models")).call().expect("request");
    assert_eq!(response.status().as_u16(), 429);
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After header in whole seconds");
    assert!((1..=5).contains(&retry_after), "Retry-After: {retry_after}");
    assert!(json(&response.body_mut().read_to_vec().expect("body"))["error"].is_string());
    // Probes and metrics are never limited: an orchestrator must always get through.
    for path in ["/livez", "/readyz", "/healthz", "/metrics"].repeat(3) {
        let (status, _, _) = get(&agent, &format!("{base}{path}"));
        assert_eq!(status, 200, "{path}");
    }
    let (_, _, metrics) = get(&agent, &format!("{base}/metrics"));
    assert!(String::from_utf8_lossy(&metrics)
        .lines()
        .any(|l| l == "diffuse_http_requests_total{route=\"/api/models\",status=\"429\"} 1"));
}

#[test]
fn configured_from_the_environment_with_json_access_lines() {
    let mut command = diffuse();
    command
        .arg("serve")
        .env("DIFFUSE_ADDR", "127.0.0.1:0")
        .env("DIFFUSE_MODEL", "flow-d64")
        .env("DIFFUSE_THREADS", "1")
        .env("DIFFUSE_LOG_FORMAT", "json");
    let mut serve = Serve::spawn(command);
    let base = serve.ready();
    let serving = serve
        .stderr_line(Duration::from_secs(30), |l| l.starts_with("serving "))
        .expect("no start-up line");
    assert!(
        serving.contains("cpu (1 thread)"),
        "DIFFUSE_THREADS was not used: {serving}"
    );
    let agent = http();
    let response = agent
        .get(&format!("{base}/api/models"))
        .header("X-Request-Id", "test-req-42")
        .call()
        .expect("request");
    assert_eq!(
        response.headers().get("x-request-id").and_then(|v| v.to_str().ok()),
        Some("test-req-42")
    );
    let models = json(&response.into_body().read_to_vec().expect("body"));
    assert_eq!(models[0]["objective"], "flow", "DIFFUSE_MODEL was not used");
    let line = serve
        .stderr_line(Duration::from_secs(30), |l| l.contains("test-req-42"))
        .expect("no access line for the request");
    let entry = json(line.as_bytes());
    assert_eq!(entry["request_id"], "test-req-42");
    assert_eq!(entry["path"], "/api/models");
    assert_eq!(entry["route"], "/api/models");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["method"], "GET");
    assert!(entry["ms"].is_number() && entry["ts"].is_number(), "{entry}");
    // A request without an id gets a fresh one, in the header and on its line.
    let response = agent.get(&format!("{base}/livez")).call().expect("request");
    let id = response.headers()["x-request-id"].to_str().expect("id").to_string();
    let line = serve
        .stderr_line(Duration::from_secs(30), |l| l.contains(&id))
        .expect("no access line for the generated id");
    assert_eq!(json(line.as_bytes())["path"], "/livez");
}

#[test]
fn the_openapi_document_lists_exactly_the_served_routes_and_parameters() {
    let (_serve, base) = Serve::start(&[]);
    let agent = http();
    let (status, content_type, body) = get(&agent, &format!("{base}/api/openapi.json"));
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    let document = json(&body);
    assert!(
        document["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        document["openapi"]
    );
    let paths = document["paths"].as_object().expect("paths");
    let documented: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    assert_eq!(
        documented,
        BTreeSet::from([
            "/",
            "/api/generate",
            "/api/models",
            "/api/openapi.json",
            "/healthz",
            "/livez",
            "/metrics",
            "/readyz"
        ])
    );
    // Every documented route is served (GET only), and what is not documented is not.
    for (path, item) in paths {
        let methods: Vec<&String> = item.as_object().expect("path item").keys().collect();
        assert_eq!(methods, ["get"], "{path}");
        let (status, _, _) = get(&agent, &format!("{base}{path}?unknown_parameter=1"));
        assert_ne!(status, 404, "{path} is documented but not served");
    }
    for path in [
        "/api",
        "/api/openapi",
        "/docs",
        "/openapi.json",
        "/api/generate/x",
        "/health",
    ] {
        let (status, _, _) = get(&agent, &format!("{base}{path}"));
        assert_eq!(status, 404, "{path} is served but not documented");
    }
    // The parameters the server accepts are the ones its parser names when it refuses an unknown one.
    let (status, _, body) = get(&agent, &format!("{base}/api/generate?unknown_parameter=1"));
    assert_eq!(status, 400);
    let message = json(&body)["error"].as_str().expect("error").to_string();
    let accepted: BTreeSet<&str> = message
        .split_once("expected one of")
        .expect("the refusal names the accepted parameters")
        .1
        .split('`')
        .skip(1)
        .step_by(2)
        .collect();
    let parameters = paths["/api/generate"]["get"]["parameters"]
        .as_array()
        .expect("parameters");
    let listed: BTreeSet<&str> = parameters.iter().map(|p| p["name"].as_str().expect("name")).collect();
    assert_eq!(listed, accepted);
    assert!(parameters.iter().all(|p| p["in"] == "query"));
    for name in &accepted {
        // n=0 makes every such request fail validation, so none of them generates anything.
        let (status, _, body) = get(&agent, &format!("{base}/api/generate?{name}=not-valid-anywhere&n=0"));
        let error = json(&body)["error"].as_str().unwrap_or("").to_string();
        assert!(
            !error.contains("unknown field"),
            "{name} refused as unknown: {error} ({status})"
        );
    }
}

/// Past `--drain-secs` the server exits anyway, and cleanly: exit 0 with the unanswered request logged. A batch still
/// running on the model thread stops there (its caller is gone) before the process ends; exiting under a running
/// forward pass had crashed the process now and then (SIGSEGV, or "pure virtual method called" and SIGABRT).
#[test]
fn past_the_drain_deadline_it_exits_0_while_a_batch_is_running() {
    let mut command = diffuse();
    command
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--drain-secs",
            "1",
            "--timeout-secs",
            "600",
        ])
        // 500 ms before each network evaluation on any hardware: 300 of them outlast the deadline, and the model
        // thread is found between evaluations when the process wants to exit.
        .env("DIFFUSE_TEST_STEP_DELAY_MS", "500");
    let mut serve = Serve::spawn(command);
    let base = serve.ready();
    let agent = http();
    // 300 guided steps of 64 digits, so the deadline passes while it runs (a CPU spends most of it in forward passes).
    let slow = format!("{base}/api/generate?digit=3&n=64&sampler=ddpm");
    let request = {
        let agent = agent.clone();
        std::thread::spawn(move || agent.get(&slow).call().map(|r| r.status().as_u16()))
    };
    let (_, body) = poll(&agent, &format!("{base}/readyz"), START_LIMIT, |_, b| {
        serde_json::from_slice::<serde_json::Value>(b).is_ok_and(|v| v["in_flight"] == 1)
    });
    assert_eq!(json(&body)["in_flight"], 1, "the request was not accepted");
    // Inside the batch: past the warm-up and the first network evaluations.
    std::thread::sleep(Duration::from_millis(500));
    serve.signal("TERM");
    let status = serve
        .wait_exit(Duration::from_secs(60))
        .expect("the server did not exit after its drain deadline");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(
        serve
            .stderr_line(Duration::from_secs(5), |l| l.contains("drain deadline of 1 s passed"))
            .is_some(),
        "no log line about the unanswered request"
    );
    // The process waited for the model thread to stop the batch. (Exiting under a running forward pass crashed
    // only now and then; exiting without waiting never logs this line, the thread being inside its 500 ms.)
    assert!(
        serve
            .stderr_line(Duration::from_secs(5), |l| l
                .contains("stopped a batch whose every caller had gone"))
            .is_some(),
        "the process ended without waiting for the model thread"
    );
    assert!(
        request.join().expect("request thread").is_err(),
        "the cut-off request was answered"
    );
}

/// An address that cannot be served is one error line, and nothing else runs: the model thread had started its
/// warm-up first and panicked as the process exited under it.
#[test]
fn an_address_in_use_is_one_error_line_without_a_panic() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = crate::common::run(&["serve", "--addr", &addr, "--threads", "2"]);
    crate::common::assert_clean_failure(&out, "cannot serve on");
    assert!(!crate::common::stderr(&out).contains("panicked"));
}

/// With its stderr a closed pipe (a log collector that died), the server still answers and still drains on
/// SIGTERM: a failed log write had panicked every request and the signal task.
#[test]
fn a_closed_stderr_neither_breaks_requests_nor_the_drain() {
    let mut child = diffuse()
        .args(["serve", "--addr", "127.0.0.1:0", "--threads", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn diffuse serve");
    drop(child.stderr.take());
    let mut serve = Serve {
        stdout: lines_of(child.stdout.take().expect("stdout")),
        stderr: std::sync::mpsc::channel().1,
        child,
    };
    let base = serve.ready();
    let agent = http();
    for url in [
        format!("{base}/livez"),
        format!("{base}/api/generate?digit=1&n=1&sampler=ddim&steps=2"),
    ] {
        let (status, _, body) = get(&agent, &url);
        assert_eq!(status, 200, "{url}: {}", String::from_utf8_lossy(&body));
    }
    serve.signal("TERM");
    let status = serve
        .wait_exit(Duration::from_secs(60))
        .expect("SIGTERM was not acted on");
    assert_eq!(status.code(), Some(0));
}
