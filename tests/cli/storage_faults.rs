//! Checkpoint writes that the machine refuses: a full disk and a read-only folder. Each must stop training with one
//! clear error line, leave the previous checkpoint intact and loadable, and let the run resume once space or
//! permission is back.
//!
//! A file-size limit (`ulimit -f`, no privileges needed) stands in for a full disk everywhere. A real, small tmpfs
//! is filled by `needs_root_...`, ignored unless asked for (scripts/test.sh asks when it runs as root). The
//! read-only folder comes from a mode change, or for root (who ignores modes) from a read-only bind mount; where
//! neither takes effect the test fails rather than pass unchecked.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{assert_clean_failure, mnist_dir, resume, run_owned, stderr, tiny};

fn resume_args(run: &Path) -> Vec<String> {
    resume("cfg", run, &[])
}

/// `diffuse args` under `sh -c PRELUDE`, e.g. a `ulimit`.
fn run_limited(prelude: &str, args: &[String]) -> Output {
    let mut script = format!("{prelude}; exec \"$0\"");
    for i in 1..=args.len() {
        script.push_str(&format!(" \"${i}\""));
    }
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_diffuse"))
        .args(args)
        .env("MNIST_DIR", mnist_dir())
        .env("DIFFUSE_DEVICE", "cpu")
        .output()
        .expect("spawn sh")
}

fn epochs_on_disk(run: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(run.join("checkpoints"))
        .expect("checkpoints")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Epoch 1 is saved; the checkpoint of epoch 2 cannot be written. Returns the failed resume's output.
fn first_epoch_then(run: &Path, fail_epoch_two: impl FnOnce(&Path) -> Output) -> (Output, Vec<u8>) {
    let out = run_owned(&tiny("cfg", run, &["--epochs", "2", "--precision", "fp32"]));
    assert!(out.status.success(), "{}", stderr(&out));
    // Keep only epoch 1, as if the run had stopped there.
    fs::remove_dir_all(run.join("checkpoints/epoch-002")).expect("rm epoch 2");
    let model = fs::read(run.join("checkpoints/epoch-001/model.safetensors")).expect("model");
    (fail_epoch_two(run), model)
}

/// After the failure: one error line, epoch 1 untouched and loadable, no partial folder, and the run finishes once
/// the fault is gone (resumed from a copy on a healthy disk when `healthy` is given).
fn assert_recovers(run: &Path, failed: &Output, model_before: &[u8], healthy: Option<PathBuf>, message: &str) {
    assert_clean_failure(failed, message);
    assert_eq!(epochs_on_disk(run), vec!["epoch-001".to_string()]);
    assert_eq!(
        fs::read(run.join("checkpoints/epoch-001/model.safetensors")).expect("model"),
        model_before,
        "the previous checkpoint changed"
    );
    let run = match healthy {
        Some(copy) => {
            let out = Command::new("cp").arg("-a").arg(run).arg(&copy).output().expect("cp");
            assert!(out.status.success());
            copy
        }
        None => run.to_path_buf(),
    };
    let sampled = run_owned(
        &[
            "sample",
            "--run",
            run.to_str().expect("utf8"),
            "--digits",
            "3",
            "--per-digit",
            "1",
            "--steps",
            "5",
            "--sampler",
            "ddim",
            "--out",
            run.join("check.png").to_str().expect("utf8"),
        ]
        .map(String::from),
    );
    assert!(
        sampled.status.success(),
        "epoch 1 is not loadable: {}",
        stderr(&sampled)
    );
    let out = run_owned(&resume_args(&run));
    assert!(out.status.success(), "resume after the fault failed: {}", stderr(&out));
    assert_eq!(
        epochs_on_disk(&run),
        vec!["epoch-001".to_string(), "epoch-002".to_string()]
    );
}

#[test]
fn a_file_size_limit_during_a_checkpoint_write_keeps_the_previous_checkpoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("run");
    let (failed, model) = first_epoch_then(&run, |run| {
        // SIGXFSZ ignored, so the write fails with EFBIG instead of killing the process; 8 KiB per file.
        run_limited("trap '' XFSZ; ulimit -f 8", &resume_args(run))
    });
    assert_recovers(&run, &failed, &model, None, "cannot write");
}

/// Runs `sh -c script`; true when it succeeded.
fn sh(script: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
#[ignore = "mounts a tmpfs, so it needs root (scripts/test.sh includes it when run as root)"]
fn needs_root_a_full_tmpfs_keeps_the_previous_checkpoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mount = tmp.path().join("small");
    fs::create_dir(&mount).expect("mkdir");
    let m = mount.display();
    // Room for one checkpoint of the tiny model and a little more, not for two: measured on a healthy disk.
    let probe = tmp.path().join("probe");
    let out = run_owned(&tiny("cfg", &probe, &["--epochs", "1", "--precision", "fp32"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let checkpoint: u64 = fs::read_dir(probe.join("checkpoints/epoch-001"))
        .expect("checkpoint")
        .map(|e| e.expect("entry").metadata().expect("metadata").len())
        .sum();
    let size_kib = (checkpoint * 3 / 2) / 1024 + 64;
    assert!(
        sh(&format!("mount -t tmpfs -o size={size_kib}k tmpfs '{m}'")),
        "cannot mount a tmpfs at {m}: this test needs root and a mount namespace that allows it"
    );
    let run = mount.join("run");
    let out = run_owned(&tiny("cfg", &run, &["--epochs", "2", "--precision", "fp32"]));
    let model = fs::read(run.join("checkpoints/epoch-001/model.safetensors")).ok();
    let healthy = tmp.path().join("healthy");
    let result = std::panic::catch_unwind(|| {
        let model = model.expect("epoch 1 fits on the tmpfs");
        assert_recovers(&run, &out, &model, Some(healthy), "no space left");
    });
    sh(&format!("umount '{m}'"));
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn a_read_only_checkpoints_folder_keeps_the_previous_checkpoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("run");
    let checkpoints = run.join("checkpoints");
    let c = checkpoints.display().to_string();
    let mut mounted = false;
    let (failed, model) = first_epoch_then(&run, |run| {
        // Without root a mode change suffices; root ignores modes, so it gets a read-only bind mount instead.
        sh(&format!("chmod a-w '{c}'"));
        if fs::write(checkpoints.join("probe"), b"x").is_ok() {
            let _ = fs::remove_file(checkpoints.join("probe"));
            sh(&format!("chmod u+w '{c}'"));
            mounted = sh(&format!("mount --bind '{c}' '{c}' && mount -o remount,ro,bind '{c}'"));
        }
        run_owned(&resume_args(run))
    });
    let writable = fs::write(checkpoints.join("probe"), b"x").is_ok();
    let result = std::panic::catch_unwind(|| {
        assert!(
            !writable,
            "neither chmod nor a read-only bind mount made {c} read-only, so the fault was never injected"
        );
        assert_clean_failure(&failed, "cannot write checkpoint");
        assert_eq!(epochs_on_disk(&run), vec!["epoch-001".to_string()]);
        assert_eq!(
            fs::read(run.join("checkpoints/epoch-001/model.safetensors")).expect("model"),
            model
        );
    });
    if mounted {
        sh(&format!("umount '{c}'"));
    } else {
        sh(&format!("chmod u+w '{c}'"));
    }
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    // Writable again: the run finishes from epoch 1.
    let out = run_owned(&resume_args(&run));
    assert!(out.status.success(), "resume failed: {}", stderr(&out));
    assert_eq!(
        epochs_on_disk(&run),
        vec!["epoch-001".to_string(), "epoch-002".to_string()]
    );
}
