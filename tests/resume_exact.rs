//! Exact resume: a run killed (SIGKILL) at a random moment during epoch 2 and resumed ends on the same bytes as a
//! run that was never stopped.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use common::*;

fn checkpoint_bytes(run: &Path, epoch: usize, file: &str) -> Vec<u8> {
    fs::read(run.join(format!("checkpoints/epoch-{epoch:03}/{file}"))).expect("read checkpoint file")
}

/// A pseudo-random delay from the clock, so each test run kills at a different moment.
fn random_millis(max: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos as u64 / 1000) % max
}

/// fp32 for the denoiser, bf16 autocast for cfg: exact resume must hold in both precisions.
fn precision_of(kind: &str) -> &'static str {
    if kind == "denoiser" {
        "fp32"
    } else {
        "bf16"
    }
}

/// cfg also keeps a weight average (--ema), which must resume exactly too.
fn extra_of(kind: &str) -> Vec<&'static str> {
    let mut args = vec!["--epochs", "2", "--seed", "11", "--precision", precision_of(kind)];
    if kind == "cfg" {
        args.extend(["--ema", "0.9"]);
    }
    args
}

fn kill_during_epoch_two_then_resume(kind: &str, straight: &Path, killed: &Path) {
    let args = tiny(kind, killed, &extra_of(kind));
    let mut child = spawn_quiet(&args);
    let started = Instant::now();
    while !killed.join("checkpoints/epoch-001/state.json").exists() {
        assert!(started.elapsed() < Duration::from_secs(300), "epoch 1 never finished");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "training exited before epoch 1 was saved"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(random_millis(400)));
    let still_running = child.try_wait().expect("wait").is_none();
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    eprintln!("{kind}: killed during epoch 2: {still_running}");
    if still_running {
        assert!(
            !killed.join("checkpoints/epoch-002/model.safetensors").exists() || {
                // The kill may land after the epoch-2 commit; then the checkpoint must be whole (resume sees it).
                killed.join("checkpoints/epoch-002/state.json").exists()
            }
        );
    }
    let resumed = run_owned(&resume(kind, killed, &[]));
    assert!(resumed.status.success(), "resume failed: {}", stderr(&resumed));

    let files: &[&str] = if kind == "cfg" {
        &["model.safetensors", "optimizer.safetensors", "ema.safetensors"]
    } else {
        &["model.safetensors", "optimizer.safetensors"]
    };
    for &file in files {
        assert!(
            checkpoint_bytes(straight, 2, file) == checkpoint_bytes(killed, 2, file),
            "{kind}: epoch-2 {file} differs between the straight and the killed+resumed run"
        );
    }
    assert_eq!(
        fs::read_to_string(straight.join("losses.csv")).expect("csv"),
        fs::read_to_string(killed.join("losses.csv")).expect("csv"),
    );
}

#[test]
fn sigkill_during_epoch_two_then_resume_is_byte_identical() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for kind in ["denoiser", "cfg"] {
        let straight = tmp.path().join(format!("{kind}-straight"));
        let out = run_owned(&tiny(kind, &straight, &extra_of(kind)));
        assert!(out.status.success(), "{}", stderr(&out));
        // A different seed must give different weights, or the comparison below proves nothing.
        let other = tmp.path().join(format!("{kind}-other-seed"));
        let out = run_owned(&tiny(
            kind,
            &other,
            &["--epochs", "1", "--seed", "12", "--precision", precision_of(kind)],
        ));
        assert!(out.status.success(), "{}", stderr(&out));
        assert_ne!(
            checkpoint_bytes(&straight, 1, "model.safetensors"),
            checkpoint_bytes(&other, 1, "model.safetensors")
        );

        kill_during_epoch_two_then_resume(kind, &straight, &tmp.path().join(format!("{kind}-killed")));
    }
}

#[test]
fn resume_refuses_another_kind_and_changed_flags() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("run");
    let out = run_owned(&tiny("denoiser", &run_dir, &["--epochs", "1"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let r = run_dir.to_str().expect("utf8");
    assert_clean_failure(&run(&["train", "ddpm", "--resume", r]), "denoiser");
    assert_clean_failure(&run(&["train", "denoiser", "--resume", r, "--lr", "0.1"]), "--lr");
    // A finished run resumes to nothing, successfully.
    let again = run(&["train", "denoiser", "--resume", r]);
    assert!(again.status.success(), "{}", stderr(&again));
    // Starting a new run over it is refused.
    assert_clean_failure(&run_owned(&tiny("denoiser", &run_dir, &["--epochs", "1"])), "--resume");
}
