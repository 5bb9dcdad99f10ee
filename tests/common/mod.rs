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

pub fn diffuse() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_diffuse"));
    cmd.env("MNIST_DIR", mnist_dir()).env_remove("RUST_LOG");
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
    args.extend(
        ["--threads", "2", "--no-figures", "--out"]
            .iter()
            .map(|s| s.to_string()),
    );
    args.push(out.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

pub fn run_owned(args: &[String]) -> Output {
    diffuse().args(args).output().expect("spawn diffuse")
}
