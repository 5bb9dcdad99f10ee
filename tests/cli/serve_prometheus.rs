//! A real Prometheus server scrapes `diffuse serve`'s `/metrics`, and the metrics come back through Prometheus's
//! query API: proof that the exposition parses and the names and labels are what dashboards will query.
//!
//! Needs Debian's `prometheus` package (.ci/run installs it; scripts/test.sh runs this test when it is on PATH).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{get, http, Server};

/// A Prometheus process with its own config and storage in a temporary folder; killed when dropped.
struct Prometheus {
    child: Child,
    base: String,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let binary = std::env::var_os("PATH")
            .and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|p| p.join("prometheus"))
                    .find(|p| p.is_file())
            })
            .expect("`prometheus` is not on PATH: install Debian's prometheus package (apt-get install prometheus)");
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: diffuse\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write config");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let log = dir.path().join("prometheus.log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn prometheus");
        Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        }
    }

    /// The result vector of an instant query, or None while Prometheus is not answering yet.
    fn query(&self, agent: &ureq::Agent, promql: &str) -> Option<Vec<serde_json::Value>> {
        let mut response = agent
            .get(&format!("{}/api/v1/query", self.base))
            .query("query", promql)
            .call()
            .ok()?;
        let body: serde_json::Value = serde_json::from_slice(&response.body_mut().read_to_vec().ok()?).ok()?;
        (body["status"] == "success").then(|| body["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Polls `promql` until `done(result)`, for at most `limit`; panics with Prometheus's log otherwise.
    fn wait_for(
        &self,
        agent: &ureq::Agent,
        promql: &str,
        limit: Duration,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + limit;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(result) = self.query(agent, promql) {
                if done(&result) {
                    return result;
                }
                last = Some(result);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        panic!("`{promql}` never came back as expected (last result {last:?}); prometheus log:\n{log}");
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn value(sample: &serde_json::Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

#[test]
#[ignore = "needs Debian's prometheus package (scripts/test.sh runs it when prometheus is on PATH)"]
fn needs_prometheus_scrapes_the_metrics_and_answers_queries() {
    let server = Server::start(&[]);
    let agent = http();
    let (status, _, _) = get(
        &agent,
        &format!("{}/api/generate?digit=2&n=3&sampler=ddim&steps=2", server.base),
    );
    assert_eq!(status, 200);
    let prometheus = Prometheus::start(server.base.trim_start_matches("http://"));
    let limit = Duration::from_secs(90);

    let up = prometheus.wait_for(&agent, "up{job=\"diffuse\"}", limit, |r| {
        r.len() == 1 && value(&r[0]) == 1.0
    });
    assert_eq!(up[0]["metric"]["job"], "diffuse");
    prometheus.wait_for(&agent, "diffuse_images_generated_total", limit, |r| {
        r.len() == 1 && value(&r[0]) == 3.0
    });
    let info = prometheus.wait_for(&agent, "diffuse_model_info", limit, |r| r.len() == 1);
    let labels = &info[0]["metric"];
    assert_eq!((&labels["name"], &labels["kind"]), (&"cfg-d64".into(), &"cfg".into()));
    assert_eq!(labels["device"], "cpu");
    assert!(labels["parameters"]
        .as_str()
        .and_then(|p| p.parse::<u64>().ok())
        .is_some_and(|p| p > 0));
    assert!(labels["precision"] == "fp32" || labels["precision"] == "bf16");
    prometheus.wait_for(
        &agent,
        "diffuse_http_requests_total{route=\"/api/generate\",status=\"200\"}",
        limit,
        |r| r.len() == 1 && value(&r[0]) == 1.0,
    );
    for histogram in [
        "diffuse_http_request_duration_seconds_count{route=\"/api/generate\"}",
        "diffuse_batch_digits_count",
        "diffuse_generation_seconds_count",
    ] {
        prometheus.wait_for(&agent, histogram, limit, |r| r.len() == 1 && value(&r[0]) >= 1.0);
    }
    prometheus.wait_for(&agent, "diffuse_queue_depth", limit, |r| {
        r.len() == 1 && value(&r[0]) == 0.0
    });
}
