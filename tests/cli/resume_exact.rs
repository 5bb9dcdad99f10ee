//! Exact resume: a run killed (SIGKILL) after a random step of epoch 2 (the test checks that the kill landed there)
//! and resumed ends on the same bytes as a run that was never stopped.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::common::*;

fn checkpoint_bytes(run: &Path, epoch: usize, file: &str) -> Vec<u8> {
    fs::read(run.join(format!("checkpoints/epoch-{epoch:03}/{file}"))).expect("read checkpoint file")
}

/// A pseudo-random number in 0..max from the clock, so each test run kills at a different moment.
fn random_below(max: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos as u64 / 1000) % max.max(1)
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

/// Epoch 1 is saved, epoch 2 is not, and no checkpoint write was under way: the kill landed inside epoch 2.
fn landed_inside_epoch_two(run: &Path) -> bool {
    let partial = fs::read_dir(run.join("checkpoints"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        })
        .unwrap_or(false);
    run.join("checkpoints/epoch-001/state.json").exists() && !run.join("checkpoints/epoch-002").exists() && !partial
}

/// Runs `kind` and SIGKILLs it after a random step of epoch 2 (read from its progress lines), retrying from scratch
/// with an earlier step until the kill lands inside epoch 2, then resumes it.
fn kill_during_epoch_two_then_resume(kind: &str, straight: &Path, killed: &Path) {
    let args = tiny(kind, killed, &extra_of(kind));
    // 512 images in batches of 64: 8 steps an epoch, a progress line after each of steps 1..7.
    let mut after_step = 1 + random_below(6);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (mut child, lines) = spawn_with_lines(&args);
        let prefix = format!("epoch 2/2: step {after_step}/");
        let seen = wait_for_line(&lines, &prefix, Duration::from_secs(300));
        let running = child.try_wait().expect("wait").is_none();
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        let landed = seen && running && landed_inside_epoch_two(killed);
        eprintln!(
            "{kind}: attempt {attempts}, kill after step {after_step} of epoch 2: landed inside epoch 2: {landed}"
        );
        if landed {
            break;
        }
        assert!(
            attempts < 5,
            "{kind}: no kill landed inside epoch 2 in {attempts} attempts"
        );
        fs::remove_dir_all(killed).expect("rm killed run");
        after_step = 1;
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

/// `--resume RUN --epochs N` extends a finished run. With a constant learning rate the schedule of the extended
/// run is the straight run's, so extending a 1-epoch run to 2 must end on the bytes of a 2-epoch run.
#[test]
fn a_finished_run_extended_with_epochs_equals_the_longer_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let flags = ["--seed", "4", "--precision", "fp32", "--lr-final-ratio", "1"];
    let straight = tmp.path().join("straight");
    let mut args = tiny("ddpm", &straight, &flags);
    args.extend(["--epochs".to_string(), "2".to_string()]);
    let out = run_owned(&args);
    assert!(out.status.success(), "{}", stderr(&out));

    let extended = tmp.path().join("extended");
    let mut args = tiny("ddpm", &extended, &flags);
    args.extend(["--epochs".to_string(), "1".to_string()]);
    let out = run_owned(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let again = run_owned(&resume("ddpm", &extended, &[]));
    assert!(stderr(&again).contains("already complete"), "{}", stderr(&again));

    let out = run_owned(&resume("ddpm", &extended, &["--epochs", "2"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("after epoch 1 of 2"), "{}", stderr(&out));
    for file in ["model.safetensors", "optimizer.safetensors"] {
        assert!(
            checkpoint_bytes(&straight, 2, file) == checkpoint_bytes(&extended, 2, file),
            "epoch-2 {file} of the extended run differs from the 2-epoch run"
        );
    }
    assert_eq!(
        fs::read_to_string(straight.join("losses.csv")).expect("csv"),
        fs::read_to_string(extended.join("losses.csv")).expect("csv"),
    );
    let config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(extended.join("config.json")).expect("config")).expect("json");
    assert_eq!(config["epochs"], 2);
    assert_eq!(config["lr_decay_epochs"], 1);
    // Fewer epochs than trained is refused.
    assert_clean_failure(&run_owned(&resume("ddpm", &extended, &["--epochs", "1"])), "at least");
    // An extension stopped before its first new checkpoint (here by a NaN in epoch 3, global step 20 of 8 a
    // epoch) leaves the run as its checkpoint says: config.json had already said 3 epochs while the checkpoint
    // said 2, and a plain resume then called the run complete.
    let stopped = run_owned(&resume(
        "ddpm",
        &extended,
        &["--epochs", "3", "--inject-nan-at-step", "20"],
    ));
    assert_clean_failure(&stopped, "step 20");
    let config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(extended.join("config.json")).expect("config")).expect("json");
    assert_eq!(config["epochs"], 2);
}

/// `--resume RUN --from-epoch K --out NEW` continues from any checkpoint in a new folder, leaving RUN as it was:
/// NEW's later epochs are RUN's, byte for byte (same seed and threads on CPU), and its metrics.csv holds each
/// epoch once. In place, an earlier checkpoint is refused (it would replace the later ones); the newest is a plain
/// resume.
#[test]
fn a_run_continues_from_any_checkpoint_in_a_new_folder() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("run");
    let out = run_owned(&tiny("denoiser", &run_dir, &["--epochs", "3", "--precision", "fp32"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let before: Vec<Vec<u8>> = (1..=3)
        .map(|e| checkpoint_bytes(&run_dir, e, "model.safetensors"))
        .collect();

    let fork = tmp.path().join("fork");
    let f = fork.to_str().expect("utf8");
    let out = run_owned(&resume("denoiser", &run_dir, &["--from-epoch", "1", "--out", f]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("after epoch 1 of 3"), "{}", stderr(&out));
    for epoch in 2..=3 {
        assert!(
            checkpoint_bytes(&fork, epoch, "model.safetensors") == before[epoch - 1],
            "epoch {epoch} of the continued run differs from the original's"
        );
    }
    for (i, bytes) in before.iter().enumerate() {
        assert!(
            &checkpoint_bytes(&run_dir, i + 1, "model.safetensors") == bytes,
            "the source run changed"
        );
    }
    for file in ["losses.csv", "metrics.csv"] {
        assert_eq!(
            fs::read_to_string(fork.join(file)).expect("fork csv"),
            fs::read_to_string(run_dir.join(file)).expect("run csv"),
            "{file}"
        );
    }

    let r = run_dir.to_str().expect("utf8");
    assert_clean_failure(
        &run(&["train", "denoiser", "--resume", r, "--from-epoch", "1"]),
        "--out",
    );
    assert_clean_failure(&run(&["train", "denoiser", "--resume", r, "--from-epoch", "7"]), "7");
    assert_clean_failure(&run(&["train", "denoiser", "--resume", r, "--out", f]), "--from-epoch");
    // Another kind is refused before anything is copied; into a folder that already holds a run, too.
    let other = tmp.path().join("other");
    assert_clean_failure(
        &run_owned(&resume(
            "ddpm",
            &run_dir,
            &["--from-epoch", "1", "--out", other.to_str().expect("utf8")],
        )),
        "denoiser",
    );
    assert!(!other.exists(), "a refused continuation created its folder");
    assert_clean_failure(
        &run_owned(&resume("denoiser", &run_dir, &["--from-epoch", "2", "--out", f])),
        "already holds",
    );
    let again = run(&["train", "denoiser", "--resume", r, "--from-epoch", "3"]);
    assert!(stderr(&again).contains("already complete"), "{}", stderr(&again));
}

/// metrics.csv follows the checkpoint a run resumes from: resumed from epoch 1 with epoch 2's checkpoint gone,
/// epoch 2 is trained and measured again and its row appears once, not twice.
#[test]
fn a_resume_keeps_one_metrics_row_per_epoch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("run");
    let out = run_owned(&tiny("denoiser", &run_dir, &["--epochs", "2"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let epochs = || -> Vec<String> {
        fs::read_to_string(run_dir.join("metrics.csv"))
            .expect("metrics")
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(epochs(), ["1", "2"]);
    fs::remove_dir_all(run_dir.join("checkpoints/epoch-002")).expect("rm");
    let out = run_owned(&resume("denoiser", &run_dir, &[]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(epochs(), ["1", "2"]);
}
