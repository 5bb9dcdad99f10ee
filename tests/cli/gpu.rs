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

/// The grey levels of a PNG grid.
fn pixels(png: &Path) -> Vec<u8> {
    image::open(png).expect("a PNG").to_luma8().into_raw()
}

/// `--cuda-graphs on` replays the kernels an eager step launches, so training and sampling give what they give
/// without graphs, up to the GPU's own run-to-run rounding (cuDNN's algorithm choice, atomics in backward passes).
#[test]
#[ignore = "needs an NVIDIA GPU (scripts/test.sh includes it when nvidia-smi sees one)"]
fn needs_cuda_graphs_train_and_sample_like_eager_kernels() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let train = |graphs: &str| {
        let run = tmp.path().join(format!("graphs-{graphs}"));
        let mut args = tiny("cfg", &run, &["--epochs", "2", "--precision", "fp32", "--seed", "3"]);
        args.extend(["--device", "cuda", "--cuda-graphs", graphs, "-v"].map(String::from));
        let out = run_owned(&args);
        assert!(out.status.success(), "--cuda-graphs {graphs}: {}", stderr(&out));
        (run, stderr(&out))
    };
    let (eager, eager_log) = train("off");
    let (graphed, graphed_log) = train("on");
    assert!(!eager_log.contains("captured as a CUDA graph"), "{eager_log}");
    // One capture per learning rate: one per epoch.
    assert_eq!(
        graphed_log.matches("training step captured as a CUDA graph").count(),
        2,
        "{graphed_log}"
    );
    // The first 3 steps run eagerly in both (the same weights and batch: rounding apart); later ones drift apart
    // only as two eager runs in two processes do.
    let (a, b) = (losses(&eager), losses(&graphed));
    assert_eq!(a.len(), b.len());
    for (step, (a, b)) in a.iter().zip(&b).enumerate() {
        let tolerance = if step < 3 { 1e-3 } else { 2e-2 };
        assert!(
            b.is_finite() && (a - b).abs() <= tolerance * a.abs(),
            "step {}: eager {a}, graphed {b}",
            step + 1
        );
    }

    // Deterministic DDIM, guided (batches of 2N), from the graphed run, with and without graphs. Two GPU processes
    // do not draw the same digits to the bit even without graphs: on an H200, two eager processes differed by up to
    // 5 grey levels at 0.1% of the pixels (mean 0.011 levels), eager and graphed ones by up to 17 (mean under 0.032).
    // A graph that replayed stale inputs (the image, the time, the classes) would draw other digits, as far from the
    // eager ones as another seed's; the control below checks that another seed is indeed that far.
    let sample = |graphs: &str, seed: &str| {
        let png = tmp.path().join(format!("sample-{graphs}-{seed}.png"));
        let out = run(&[
            "sample",
            "--device",
            "cuda",
            "--cuda-graphs",
            graphs,
            "-v",
            "--run",
            graphed.to_str().expect("utf8"),
            "--sampler",
            "ddim",
            "--steps",
            "20",
            "--digits",
            "1,4,7",
            "--per-digit",
            "2",
            "--seed",
            seed,
            "--out",
            png.to_str().expect("utf8"),
        ]);
        assert!(out.status.success(), "--cuda-graphs {graphs}: {}", stderr(&out));
        (pixels(&png), stderr(&out))
    };
    let ((eager_px, eager_log), (graphed_px, log)) = (sample("off", "3"), sample("on", "3"));
    let (other_seed, _) = sample("off", "4");
    assert!(!eager_log.contains("captured as a CUDA graph"), "{eager_log}");
    assert!(log.contains("captured as a CUDA graph"), "{log}");
    let mean_difference = |a: &[u8], b: &[u8]| {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| f64::from(x.abs_diff(*y))).sum::<f64>() / a.len() as f64
    };
    let (graphs, seeds) = (
        mean_difference(&eager_px, &graphed_px),
        mean_difference(&eager_px, &other_seed),
    );
    eprintln!("mean grey-level difference: eager against graphed {graphs:.4}, against another seed {seeds:.4}");
    assert!(
        graphs < 0.25,
        "eager and graphed digits differ by {graphs:.3} grey levels on average"
    );
    assert!(
        seeds > 2.5,
        "another seed's digits differ by only {seeds:.3} grey levels on average"
    );
}
