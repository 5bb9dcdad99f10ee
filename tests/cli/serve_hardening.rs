//! The server under abuse: 1000 rapid requests (good and bad), huge and negative numbers, path traversal, slow
//! clients that never finish their request. Every bad request gets a 4xx, overload gets 503, the server keeps
//! answering and its memory stays bounded. Run with `--nocapture` to see the measured peak RSS.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::{get, http, Server};

/// Peak RSS the server may reach under this test's load (it idles near 300 MB with the default model loaded).
const RSS_BOUND_MB: f64 = 1500.0;

#[test]
fn a_thousand_rapid_requests_mixed_good_and_bad() {
    let mut server = Server::start(&["--queue", "64"]);
    let agent = http();
    let base = server.base.clone();
    let (idle_rss, _) = server.rss_mb();
    let bad = [
        "n=abc",
        "n=99999999999999999999999",
        "n=-1",
        "n=0",
        "n=65",
        "steps=1e30&sampler=ddim",
        "steps=18446744073709551616&sampler=ddim",
        "digit=1000000000",
        "digit=-3",
        "guidance=1e308",
        "guidance=-1",
        "guidance=nan",
        "seed=184467440737095516160",
        "sampler=ddim&steps=0",
        "format=%00",
        "digit=3&digit=4",
    ];
    let started = Instant::now();
    let statuses: Vec<(usize, u16)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..32)
            .map(|w| {
                let (agent, base) = (agent.clone(), base.clone());
                s.spawn(move || {
                    (0..1000 / 32 + usize::from(w < 1000 % 32))
                        .map(|i| {
                            let k = w * 1000 + i;
                            let query = if k % 2 == 0 {
                                format!("digit={}&n=1&sampler=ddim&steps=1&seed={k}", k % 10)
                            } else {
                                bad[k % bad.len()].to_string()
                            };
                            (k, get(&agent, &format!("{base}/api/generate?{query}")).0)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("worker")).collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(statuses.len(), 1000);
    let (mut ok, mut busy, mut rejected) = (0, 0, 0);
    for (k, status) in &statuses {
        if k % 2 == 0 {
            assert!(*status == 200 || *status == 503, "good request {k} -> {status}");
            ok += usize::from(*status == 200);
            busy += usize::from(*status == 503);
        } else {
            assert!((400..500).contains(status), "{} -> {status}", bad[k % bad.len()]);
            rejected += 1;
        }
    }
    assert!(ok > 0, "no good request was served");
    let (rss, peak) = server.rss_mb();
    eprintln!(
        "1000 requests, 32 concurrent, in {seconds:.1} s: {ok} generated, {busy} answered 503 (queue full), \
         {rejected} bad ones 4xx; server RSS idle {idle_rss:.0} MB, after {rss:.0} MB, peak {peak:.0} MB"
    );
    assert!(peak < RSS_BOUND_MB, "peak RSS {peak:.0} MB");
    assert!(server.is_running());
    let (status, _, _) = get(&agent, &format!("{base}/healthz"));
    assert_eq!(status, 200);
}

/// Raw HTTP over a socket, so the path reaches the server exactly as written (no client-side normalisation).
fn raw_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, response)
}

#[test]
fn path_traversal_and_slow_clients() {
    let mut server = Server::start(&[]);
    let addr = server.base.trim_start_matches("http://").to_string();
    for path in [
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/..%2f..%2f..%2fetc%2fpasswd",
        "/static/../../Cargo.toml",
        "/index.html/../../../etc/shadow",
        "//etc/passwd",
        "/api/../../etc/passwd",
        "/api/generate/../../../../etc/passwd",
    ] {
        let (status, response) = raw_get(&addr, path);
        assert!(
            (400..500).contains(&status) || (status == 200 && response.contains("id=\"generate\"")),
            "{path} -> {status}"
        );
        assert!(!response.contains("root:"), "{path} leaked a file");
        assert!(!response.contains("[package]"), "{path} leaked a file");
    }

    // 64 clients that send half a request and then nothing.
    let slow: Vec<TcpStream> = (0..64)
        .map(|i| {
            let mut s = TcpStream::connect(&addr).expect("connect");
            write!(s, "GET /api/generate?digit={} HTTP/1.1\r\nHost: x\r\nX-Slow: ", i % 10).expect("write");
            s
        })
        .collect();
    let started = Instant::now();
    let (status, _, _) = get(
        &http(),
        &format!("{}/api/generate?digit=7&n=1&sampler=ddim&steps=2", server.base),
    );
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "slow clients delayed a normal request"
    );
    drop(slow);
    assert!(server.is_running());
}
