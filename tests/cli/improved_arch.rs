//! The improved recipe from the command line: `--arch improved` trains with EMA on by default (`--ema 0` turns it
//! off), its checkpoints sample, and a resume cannot switch architecture.

use std::fs;

use crate::common::{assert_clean_failure, run, run_owned, stderr, tiny};

fn config(run_dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(run_dir.join("config.json")).expect("config.json")).expect("json")
}

#[test]
fn improved_trains_with_ema_by_default_samples_and_keeps_its_architecture() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let improved = tmp.path().join("improved");
    let out = run_owned(&tiny("flow", &improved, &["--arch", "improved", "--epochs", "1"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let c = config(&improved);
    assert_eq!(c["model"]["arch"], "improved");
    assert_eq!(c["ema"], 0.999);
    assert!(improved.join("checkpoints/epoch-001/ema.safetensors").is_file());

    let png = tmp.path().join("s.png");
    let sampled = run(&[
        "sample",
        "--run",
        improved.to_str().expect("utf8"),
        "--digits",
        "2,7",
        "--per-digit",
        "1",
        "--steps",
        "4",
        "--out",
        png.to_str().expect("utf8"),
    ]);
    assert!(sampled.status.success(), "{}", stderr(&sampled));
    let grid = image::open(&png).expect("png").to_luma8();
    assert!(grid.width() > 28 && grid.height() >= 28);

    let r = improved.to_str().expect("utf8");
    assert_clean_failure(&run(&["train", "flow", "--resume", r, "--arch", "basic"]), "--arch");

    let plain = tmp.path().join("no-ema");
    let out = run_owned(&tiny(
        "cfg",
        &plain,
        &["--arch", "improved", "--epochs", "1", "--ema", "0"],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(config(&plain)["ema"], serde_json::Value::Null);
    assert!(!plain.join("checkpoints/epoch-001/ema.safetensors").exists());

    // Basic stays the default, without EMA.
    let basic = tmp.path().join("basic");
    let out = run_owned(&tiny("cfg", &basic, &["--epochs", "1"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(config(&basic)["model"]["arch"], "basic");
    assert_eq!(config(&basic)["ema"], serde_json::Value::Null);
}

/// The layout a run trains in is printed, recorded in config.json, and kept when the run is resumed and extended.
#[test]
fn the_layout_is_printed_recorded_and_kept_on_resume() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("contiguous");
    let out = run_owned(&tiny(
        "cfg",
        &run_dir,
        &["--layout", "contiguous", "--epochs", "1", "--precision", "fp32"],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(", fp32, contiguous, run folder"),
        "{}",
        stderr(&out)
    );
    assert_eq!(config(&run_dir)["layout"], "contiguous");
    let resumed = run_owned(&crate::common::resume("cfg", &run_dir, &["--epochs", "2"]));
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(
        stderr(&resumed).contains(", fp32, contiguous, run folder"),
        "{}",
        stderr(&resumed)
    );
    assert_eq!(config(&run_dir)["layout"], "contiguous");
}
