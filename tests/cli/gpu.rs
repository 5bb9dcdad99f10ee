//! The GPU test: the same binary on an NVIDIA GPU. Every other integration test runs on the CPU (tests/cli/common.rs sets
//! `DIFFUSE_DEVICE=cpu`), so this is where CUDA is checked. Ignored unless asked for; scripts/test.sh asks when
//! `nvidia-smi` sees a GPU, and asked for without one it fails rather than pass unchecked.

use std::fs;
use std::path::Path;

use crate::common::*;

/// Per-step losses of a run, from its losses.csv.
fn losses(run: &Path) -> Vec<f64> {
    fs::read_to_string(run.join("losses.csv"))
        .expect("losses.csv")
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().expect("loss").parse().expect("number"))
        .collect()
}

#[test]
#[ignore = "needs an NVIDIA GPU (scripts/test.sh includes it when nvidia-smi sees one)"]
fn needs_cuda_trains_and_samples_on_the_gpu_like_on_the_cpu() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let on = |device: &str| {
        let run = tmp.path().join(device);
        let mut args = tiny("cfg", &run, &["--epochs", "1", "--precision", "fp32", "--seed", "3"]);
        args.extend(["--device".to_string(), device.to_string()]);
        let out = run_owned(&args);
        assert!(out.status.success(), "{device}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(if device == "cuda" { "on cuda:0" } else { "on cpu" }),
            "{device}: {}",
            stderr(&out)
        );
        run
    };
    let (cpu, gpu) = (on("cpu"), on("cuda"));
    let (cpu_losses, gpu_losses) = (losses(&cpu), losses(&gpu));
    assert_eq!(cpu_losses.len(), gpu_losses.len());
    // Same seed, same data, same noise (drawn on the host): the first step sees the same weights and batch, so the
    // loss agrees up to kernel rounding; later steps drift apart only slowly.
    let first = (cpu_losses[0] - gpu_losses[0]).abs() / cpu_losses[0];
    assert!(
        first < 1e-3,
        "first-step loss: cpu {} gpu {}",
        cpu_losses[0],
        gpu_losses[0]
    );
    assert!(gpu_losses.iter().all(|l| l.is_finite()));

    let png = tmp.path().join("gpu.png");
    let out = run(&[
        "sample",
        "--device",
        "cuda",
        "--digits",
        "3,7",
        "--per-digit",
        "2",
        "--steps",
        "10",
        "--out",
        png.to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(fs::metadata(&png).expect("png").len() > 100);
}
