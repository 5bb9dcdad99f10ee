//! `diffuse serve` against a real server on 127.0.0.1: the API, its limits, batching, and a bounded load test.

use std::time::{Duration, Instant};

use crate::common::*;

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).expect("JSON body")
}

#[test]
fn api_endpoints_formats_and_errors() {
    let server = Server::start(&[]);
    let agent = http();
    let url = |path: &str| format!("{}{path}", server.base);

    let (status, _, body) = get(&agent, &url("/healthz"));
    assert_eq!(status, 200);
    assert_eq!(json(&body)["status"], "ok");
    let (status, _, body) = get(&agent, &url("/api/models"));
    assert_eq!(status, 200);
    assert_eq!(json(&body)[0]["objective"], "cfg");

    let (status, content_type, body) = get(&agent, &url("/"));
    assert_eq!((status, content_type.starts_with("text/html")), (200, true));
    assert!(String::from_utf8_lossy(&body).contains("id=\"generate\""));

    let q = "/api/generate?digit=3&n=5&sampler=ddim&steps=3&seed=7";
    let (status, content_type, png) = get(&agent, &url(q));
    assert_eq!(
        (status, content_type.as_str()),
        (200, "image/png"),
        "{}",
        String::from_utf8_lossy(&png)
    );
    let grid = image::load_from_memory(&png).expect("png").to_luma8();
    assert_eq!((grid.width(), grid.height()), (5 * 28 * 3 + 6 * 2, 28 * 3 + 2 * 2));
    let (_, _, again) = get(&agent, &url(q));
    assert_eq!(png, again, "same seed, same digits");
    let (_, _, other) = get(&agent, &url("/api/generate?digit=3&n=5&sampler=ddim&steps=3&seed=8"));
    assert_ne!(png, other, "another seed, other digits");

    let (status, content_type, gif) = get(
        &agent,
        &url("/api/generate?digit=1&n=2&sampler=ddim&steps=4&format=gif"),
    );
    assert_eq!((status, content_type.as_str()), (200, "image/gif"));
    assert!(gif.starts_with(b"GIF89a"));

    let (status, _, body) = get(
        &agent,
        &url("/api/generate?digit=any&n=3&sampler=ddim&steps=2&format=json&animate=1"),
    );
    assert_eq!(status, 200);
    let v = json(&body);
    assert_eq!(v["images_png"].as_array().map(Vec::len), Some(3));
    assert!(v["gif"].is_string() && v["grid_png"].is_string());
    assert_eq!(v["params"]["digit"], serde_json::Value::Null);

    for (query, status_expected) in [
        ("digit=10", 400),
        ("digit=seven", 400),
        ("n=0", 400),
        ("n=65", 400),
        ("n=99999999999999999999999999", 400),
        ("guidance=-1", 400),
        ("guidance=1e400", 400),
        ("steps=1001&sampler=ddim", 400),
        ("sampler=euler", 400),
        ("sampler=%00%ff", 400),
        ("format=bmp", 400),
        ("evil=1", 400),
        ("n=1&n=2", 400),
    ] {
        let (status, content_type, body) = get(&agent, &url(&format!("/api/generate?{query}")));
        assert_eq!(status, status_expected, "{query}");
        assert_eq!(content_type, "application/json", "{query}");
        assert!(json(&body)["error"].is_string(), "{query}");
    }
    for path in [
        "/nope",
        "/static/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/api/generate/../../Cargo.toml",
    ] {
        let (status, _, body) = get(&agent, &url(path));
        assert_eq!(status, 404, "{path}");
        assert!(!String::from_utf8_lossy(&body).contains("root:"), "{path}");
    }
}

#[test]
fn requests_batch_together_yet_keep_their_own_seed() {
    let server = Server::start(&[]);
    let agent = http();
    let alone_url = format!(
        "{}/api/generate?digit=5&n=2&sampler=ddim&steps=3&seed=42&format=json",
        server.base
    );
    let (_, _, body) = get(&agent, &alone_url);
    let alone = json(&body);
    assert_eq!(alone["batch_digits"], 2);
    let results: Vec<serde_json::Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let agent = agent.clone();
                let url = if i == 3 {
                    alone_url.clone()
                } else {
                    format!(
                        "{}/api/generate?digit={}&n=2&sampler=ddim&steps=3&seed={i}&format=json",
                        server.base,
                        i % 10
                    )
                };
                s.spawn(move || json(&get(&agent, &url).2))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert!(
        results.iter().any(|r| r["batch_digits"].as_u64().unwrap_or(0) > 2),
        "no request was batched"
    );
    // The seed-42 request, batched with others, draws (up to float rounding) the same digits as alone.
    let decode = |v: &serde_json::Value| {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v["grid_png"].as_str().expect("b64"))
            .expect("b64");
        image::load_from_memory(&bytes).expect("png").to_luma8().into_raw()
    };
    let (a, b) = (decode(&alone), decode(&results[3]));
    let max_diff = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(255);
    assert!(max_diff <= 3, "batched result differs by {max_diff}/255");
}

#[test]
fn load_200_requests_16_concurrent_then_50_malformed() {
    let mut server = Server::start(&[]);
    let agent = http();
    let base = server.base.clone();
    let started = Instant::now();
    let mut latencies: Vec<Duration> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..16)
            .map(|w| {
                let (agent, base) = (agent.clone(), base.clone());
                s.spawn(move || {
                    (0..200 / 16 + usize::from(w < 200 % 16))
                        .map(|i| {
                            let url = format!(
                                "{base}/api/generate?digit={}&n=1&sampler=ddim&steps=2&seed={i}",
                                (w + i) % 10
                            );
                            let t = Instant::now();
                            let (status, content_type, _) = get(&agent, &url);
                            assert_eq!((status, content_type.as_str()), (200, "image/png"));
                            t.elapsed()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("worker")).collect()
    });
    assert_eq!(latencies.len(), 200);
    latencies.sort();
    let pct =
        |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)].as_secs_f64() * 1000.0;
    eprintln!(
        "200 requests, 16 concurrent, in {:.2} s: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        started.elapsed().as_secs_f64(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
    let malformed = [
        "n=abc",
        "digit=%%%",
        "steps=-3&sampler=ddim",
        "guidance=inf",
        "format=webp",
        "seed=-1",
        "x=%ZZ",
    ];
    for i in 0..50 {
        let q = malformed[i % malformed.len()];
        let (status, _, _) = get(&agent, &format!("{base}/api/generate?{q}"));
        assert!((400..500).contains(&status), "{q} -> {status}");
    }
    let (status, _, _) = get(&agent, &format!("{base}/healthz"));
    assert_eq!(status, 200);
    assert!(server.is_running());
}

/// Every batch is made to take 3 s by the worker's test-only hook, so the 1 s timeout fires however fast the machine.
#[test]
fn a_full_queue_answers_503_and_a_slow_generation_504() {
    let server = Server::start_with_env(
        &["--queue", "1", "--timeout-secs", "1"],
        &[("DIFFUSE_TEST_BATCH_DELAY_MS", "3000")],
    );
    let agent = http();
    let slow = format!("{}/api/generate?digit=8&n=2&sampler=ddim&steps=2", server.base);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (agent, slow) = (agent.clone(), slow.clone());
                s.spawn(move || get(&agent, &slow).0)
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert!(statuses.iter().all(|s| *s == 503 || *s == 504), "{statuses:?}");
    assert!(statuses.contains(&504), "{statuses:?}");
    let (status, _, _) = get(&agent, &format!("{}/healthz", server.base));
    assert_eq!(status, 200);
}

/// A running batch whose every caller has gone stops before its next network evaluation instead of holding up the
/// queue. The worker's test-only hook makes each evaluation wait 100 ms, so the abandoned DDPM batch (300
/// evaluations) would take at least 30 s on any machine; the request sent after its 504 is answered within its own
/// 3 s timeout only if that batch stopped.
#[test]
fn a_batch_nobody_waits_for_stops_and_frees_the_worker() {
    let server = Server::start_with_env(&["--timeout-secs", "3"], &[("DIFFUSE_TEST_STEP_DELAY_MS", "100")]);
    let agent = http();
    let url = |path: &str| format!("{}{path}", server.base);
    // Ready first: a request queued behind a slow warm-up could time out before its batch started.
    let deadline = Instant::now() + Duration::from_secs(120);
    while get(&agent, &url("/readyz")).0 != 200 {
        assert!(Instant::now() < deadline, "the server did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, _, _) = get(&agent, &url("/api/generate?digit=3&n=1&sampler=ddpm"));
    assert_eq!(status, 504);
    let (status, _, body) = get(&agent, &url("/api/generate?digit=8&n=1&sampler=ddim&steps=2"));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (_, _, metrics) = get(&agent, &url("/metrics"));
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("diffuse_batches_stopped_total 1"), "{metrics}");
}
