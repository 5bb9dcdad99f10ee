//! Shared helpers for the integration tests: run the real `diffuse` binary on small real data.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The real MNIST folder (CI sets MNIST_DIR=../shared/data/mnist). Tests that need it fail loudly without it,
/// so a CI misconfiguration cannot turn them into silent passes.
pub fn mnist_dir() -> PathBuf {
    let dir = std::env::var_os("MNIST_DIR")
        .map(PathBuf::from)
        .expect("MNIST_DIR must point at the MNIST files");
    assert!(dir.join("train-images-idx3-ubyte.gz").exists() || dir.join("train-images-idx3-ubyte").exists());
    dir
}

/// The `diffuse` binary on the CPU: the byte-exact and memory checks hold for the CPU, so no test picks a GPU
/// because the machine has one (tests/cli/gpu.rs is the GPU test).
pub fn diffuse() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_diffuse"));
    // The per-machine precision and layout measurement is cached for the test processes only, never in the
    // developer's own cache (a test that checks the cache sets its own folder).
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("diffuse-cache");
    cmd.env("MNIST_DIR", mnist_dir())
        .env("DIFFUSE_DEVICE", "cpu")
        .env("DIFFUSE_CACHE", cache)
        .env_remove("DIFFUSE_PRECISION")
        .env_remove("DIFFUSE_LAYOUT")
        .env_remove("RUST_LOG");
    cmd
}

/// Runs `diffuse args...`, returning the output.
pub fn run(args: &[&str]) -> Output {
    diffuse().args(args).output().expect("spawn diffuse")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A user-facing failure: non-zero exit, and stderr's last line is one clear `error:` line, never a panic.
pub fn assert_clean_failure(out: &Output, expect_in_message: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "expected failure, got success; stderr:\n{err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "panic:\n{err}"
    );
    let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(
        last.starts_with("error: "),
        "last stderr line is not an error line:\n{err}"
    );
    assert!(
        last.to_lowercase().contains(&expect_in_message.to_lowercase()),
        "error line does not mention {expect_in_message:?}: {last}"
    );
}

/// Tiny but real training flags: a D=8 UNet on a subset of real MNIST, two threads, figures off.
pub fn tiny(kind: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["train", kind, "--hidden", "8", "--subset", "512", "--batch-size", "64"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    // Pinned unless given, like the precision in the byte-exact tests: two runs compare only in the same layout.
    if !extra.contains(&"--layout") {
        args.extend(["--layout", "channels-last"].map(String::from));
    }
    args.extend(
        ["--threads", "2", "--no-figures", "--out"]
            .iter()
            .map(|s| s.to_string()),
    );
    args.push(out.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// `train KIND --resume RUN` with two threads and figures off, plus `extra`.
pub fn resume(kind: &str, run: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["train", kind, "--resume"].iter().map(|s| s.to_string()).collect();
    args.push(run.display().to_string());
    args.extend(["--threads", "2", "--no-figures"].iter().map(|s| s.to_string()));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Starts `diffuse args...` in the background with its output discarded (for tests that kill it).
pub fn spawn_quiet(args: &[String]) -> std::process::Child {
    diffuse()
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn diffuse")
}

/// Starts `diffuse args...` in the background; its stderr lines (the plain progress lines, since stderr is not a
/// terminal) arrive on the returned channel, read by a thread so the child never blocks on a full pipe.
pub fn spawn_with_lines(args: &[String]) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = diffuse()
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn diffuse");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Waits (up to `limit`) for a line that contains `text`; false when the child's stderr closed first.
pub fn wait_for_line(lines: &std::sync::mpsc::Receiver<String>, text: &str, limit: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(text) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

pub fn run_owned(args: &[String]) -> Output {
    diffuse().args(args).output().expect("spawn diffuse")
}

/// A `diffuse serve` process on a free loopback port, killed when dropped.
pub struct Server {
    child: std::process::Child,
    pub base: String,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        Self::start_with_env(extra, &[])
    }

    /// [`Server::start`] with extra environment variables (e.g. the worker's test-only hooks).
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        use std::io::BufRead;
        let mut child = diffuse()
            .args(["serve", "--addr", "127.0.0.1:0", "--threads", "2"])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn diffuse serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read listening line");
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .expect("listening line")
            .to_string();
        Server { child, base }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    /// The server's (current, peak) resident memory in MB, from /proc.
    pub fn rss_mb(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("/proc status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .expect("rss field")
                / 1024.0
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking HTTP client that returns 4xx/5xx responses instead of errors.
pub fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(120)))
        .build()
        .into()
}

/// GET `url`: (status, content type, body bytes).
pub fn get(agent: &ureq::Agent, url: &str) -> (u16, String, Vec<u8>) {
    let mut response = agent.get(url).call().expect("request");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .expect("body");
    (status, content_type, body)
}
