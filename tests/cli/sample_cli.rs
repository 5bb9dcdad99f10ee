//! `diffuse sample` and `diffuse figures` on a tiny real cfg run: outputs exist, IDX files round-trip, and bad
//! requests are refused clearly.

use crate::common::*;

use std::path::Path;

#[test]
fn sample_writes_grid_gif_and_idx_and_refuses_bad_requests() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("cfg");
    let out = run_owned(&tiny("cfg", &run_dir, &["--epochs", "1", "--timesteps", "40"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let r = run_dir.to_str().expect("utf8");
    let png = tmp.path().join("grid.png");
    let gif = tmp.path().join("anim.gif");
    let prefix = tmp.path().join("samples");
    let args = [
        "sample",
        "--run",
        r,
        "--digits",
        "3,7",
        "--per-digit",
        "3",
        "--sampler",
        "ddim",
        "--steps",
        "10",
        "--seed",
        "4",
        "--out",
        png.to_str().expect("utf8"),
        "--gif",
        gif.to_str().expect("utf8"),
        "--idx",
        prefix.to_str().expect("utf8"),
    ];
    let out = run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let grid = image::open(&png).expect("png").to_luma8();
    assert!(grid.width() > 4 * 28 && grid.height() > 2 * 28);
    assert!(std::fs::metadata(&gif).expect("gif").len() > 1000);
    let images = diffuse::data::read_idx(&tmp.path().join("samples-images-idx3-ubyte")).expect("idx images");
    assert_eq!(images.dims, vec![6, 28, 28]);
    let labels = diffuse::data::read_idx(&tmp.path().join("samples-labels-idx1-ubyte")).expect("idx labels");
    assert_eq!(labels.data, vec![3, 3, 3, 7, 7, 7]);

    // Same seed, same digits: sampling is deterministic.
    let out = run(&args);
    assert!(out.status.success());
    let again = diffuse::data::read_idx(&tmp.path().join("samples-images-idx3-ubyte")).expect("idx images");
    assert_eq!(images.data, again.data);

    let p = png.to_str().expect("utf8");
    assert_clean_failure(&run(&["sample", "--run", r, "--digits", "12", "--out", p]), "12");
    assert_clean_failure(&run(&["sample", "--run", r, "--n", "5", "--out", p]), "--n");
    assert_clean_failure(
        &run(&["sample", "--run", r, "--steps", "0", "--sampler", "ddim", "--out", p]),
        "--steps",
    );
    assert_clean_failure(
        &run(&["sample", "--run", r, "--out", "/nonexistent/dir/x.png"]),
        "does not exist",
    );
    // The grid is a PNG and the animation a GIF, whatever the name says: a name that says otherwise is refused.
    let jpg = tmp.path().join("grid.jpg");
    assert_clean_failure(
        &run(&["sample", "--run", r, "--out", jpg.to_str().expect("utf8")]),
        "give it a .png name",
    );
    assert_clean_failure(
        &run(&["sample", "--run", r, "--out", p, "--gif", p]),
        "give it a .gif name",
    );
    assert!(!jpg.exists());
    assert_clean_failure(
        &run(&[
            "sample",
            "--run",
            tmp.path().join("nothing").to_str().expect("utf8"),
            "--out",
            p,
        ]),
        "no checkpoint",
    );
}

#[test]
fn figures_are_written_by_training_and_regenerated_from_checkpoints() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("den");
    let mut args = tiny("denoiser", &run_dir, &["--epochs", "2"]);
    args.retain(|a| a != "--no-figures");
    let out = run_owned(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let figures = run_dir.join("figures");
    let expected = [
        "noising.png",
        "loss.png",
        "denoised-epoch-001.png",
        "denoised-epoch-002.png",
        "ood.png",
    ];
    for name in expected {
        assert!(figures.join(name).exists(), "{name} missing after training");
    }
    std::fs::remove_dir_all(&figures).expect("rm");
    let out = run(&["figures", run_dir.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", stderr(&out));
    for name in expected {
        assert!(figures.join(name).exists(), "{name} not regenerated");
    }

    let ddpm = tmp.path().join("ddpm");
    let mut args = tiny("ddpm", &ddpm, &["--epochs", "1", "--timesteps", "20"]);
    args.retain(|a| a != "--no-figures");
    let out = run_owned(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    for name in ["loss.png", "samples-epoch-001.png", "reverse.gif"] {
        assert!(
            ddpm.join("figures").join(name).exists(),
            "{name} missing after ddpm training"
        );
    }
    // Guidance flags on an unconditional model are refused, not ignored.
    let d = ddpm.to_str().expect("utf8");
    let png = tmp.path().join("unguided.png");
    let p = png.to_str().expect("utf8");
    assert_clean_failure(
        &run(&["sample", "--run", d, "--guidance", "3", "--out", p]),
        "apply to class-conditioned models",
    );
    assert_clean_failure(
        &run(&["eval", "--run", d, "--guidance-interval", "all", "--per-digit", "1"]),
        "apply to class-conditioned models",
    );
}

#[test]
fn flow_trains_and_samples_with_euler_and_refuses_ddpm_samplers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("flow");
    let out = run_owned(&tiny("flow", &run_dir, &["--epochs", "1"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let r = run_dir.to_str().expect("utf8");
    let png = tmp.path().join("flow.png");
    let prefix = tmp.path().join("flow");
    let p = png.to_str().expect("utf8");
    let out = run(&[
        "sample",
        "--run",
        r,
        "--steps",
        "5",
        "--per-digit",
        "2",
        "--out",
        p,
        "--idx",
        prefix.to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let images = diffuse::data::read_idx(&tmp.path().join("flow-images-idx3-ubyte")).expect("idx");
    assert_eq!(images.dims, vec![20, 28, 28]);
    assert_clean_failure(&run(&["sample", "--run", r, "--sampler", "ddpm", "--out", p]), "euler");
}

#[test]
fn the_shipped_model_samples_without_a_run_and_unknown_models_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let png = tmp.path().join("shipped.png");
    let prefix = tmp.path().join("shipped");
    let p = png.to_str().expect("utf8");
    let out = run(&[
        "sample",
        "--digits",
        "7",
        "--per-digit",
        "2",
        "--sampler",
        "ddim",
        "--steps",
        "3",
        "--out",
        p,
        "--idx",
        prefix.to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let labels = diffuse::data::read_idx(&tmp.path().join("shipped-labels-idx1-ubyte")).expect("labels");
    assert_eq!(labels.data, vec![7, 7]);
    assert_clean_failure(
        &run(&["sample", "--model", "no-such-model", "--out", p]),
        "no-such-model",
    );
    assert_clean_failure(
        &run(&["sample", "--model", "../etc", "--out", p]),
        "plain name, one of: cfg-d64",
    );
    // A model folder has no epochs to pick from, and the classifier draws nothing: both said so, not ignored.
    let model_folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/cfg-d64");
    assert_clean_failure(
        &run(&[
            "sample",
            "--run",
            model_folder.to_str().expect("utf8"),
            "--epoch",
            "3",
            "--out",
            p,
        ]),
        "drop --epoch 3",
    );
    assert_clean_failure(
        &run(&["sample", "--model", "mnist-classifier", "--out", p]),
        "digit classifier",
    );
}

#[test]
fn sampling_uses_the_weight_average_when_a_run_keeps_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("ema");
    let out = run_owned(&tiny(
        "cfg",
        &run_dir,
        &["--epochs", "1", "--timesteps", "20", "--ema", "0.9"],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    let checkpoint = run_dir.join("checkpoints/epoch-001");
    assert_ne!(
        std::fs::read(checkpoint.join("ema.safetensors")).expect("ema"),
        std::fs::read(checkpoint.join("model.safetensors")).expect("model")
    );
    let draw = |name: &str| {
        let prefix = tmp.path().join(name);
        let png = tmp.path().join(format!("{name}.png"));
        let r = run_dir.to_str().expect("utf8");
        let args = [
            "sample",
            "--run",
            r,
            "--sampler",
            "ddim",
            "--steps",
            "3",
            "--per-digit",
            "1",
            "--out",
            png.to_str().expect("utf8"),
            "--idx",
            prefix.to_str().expect("utf8"),
        ];
        let out = run(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        diffuse::data::read_idx(&tmp.path().join(format!("{name}-images-idx3-ubyte")))
            .expect("idx")
            .data
    };
    let with_ema = draw("with-ema");
    std::fs::remove_file(checkpoint.join("ema.safetensors")).expect("rm ema");
    let raw = draw("raw");
    assert_ne!(with_ema, raw, "sampling ignored the weight average");
}

/// Sampling picks its precision and layout by the same rule as training: the fastest a measurement found on this CPU,
/// measured once and cached, timing bf16 only where the CPU has native bf16. An explicit bf16 on a CPU without it is
/// honoured with one warning. The CPU flags are played by a cpuinfo file, the cache is a fresh folder.
#[test]
fn precision_and_layout_follow_the_cpu_and_a_slow_bf16_is_warned_about() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let avx2 = tmp.path().join("avx2-cpuinfo");
    std::fs::write(&avx2, "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n").expect("write");
    let bf16 = tmp.path().join("bf16-cpuinfo");
    std::fs::write(&bf16, "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n").expect("write");
    let png = tmp.path().join("g.png");
    let cache = tmp.path().join("cache");
    let sample_with = |envs: &[(&str, &str)], cpuinfo: &Path, extra: &[&str]| {
        // The CPU is the cpuinfo file alone: a oneDNN cap in the caller's environment (bench/compare.sh --isa avx2
        // runs under one) would rule bf16 out whatever the file says (unit-tested in runtime::precision).
        let out = diffuse()
            .env_remove("ONEDNN_MAX_CPU_ISA")
            .envs(envs.iter().copied())
            .env("DIFFUSE_CPUINFO", cpuinfo)
            .env("DIFFUSE_CACHE", &cache)
            .args([
                "sample",
                "--digits",
                "1",
                "--per-digit",
                "1",
                "--sampler",
                "ddim",
                "--steps",
                "2",
            ])
            .args(["--out", png.to_str().expect("utf8")])
            .args(extra)
            .output()
            .expect("spawn diffuse");
        assert!(out.status.success(), "{}", stderr(&out));
        stderr(&out)
    };
    let sample = |cpuinfo: &Path, extra: &[&str]| sample_with(&[], cpuinfo, extra);
    let warning = "warning: --precision bf16 on a CPU without native bf16";
    let cached = || -> Vec<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(cache.join("tuning.json")).expect("cached")).expect("json")
    };
    // The fastest timing of a record, as the command prints it ("fp32, channels-last").
    let fastest = |record: &serde_json::Value| -> String {
        let best = record["timings"]
            .as_array()
            .expect("timings")
            .iter()
            .min_by(|a, b| a["ms"].as_f64().expect("ms").total_cmp(&b["ms"].as_f64().expect("ms")))
            .expect("timed");
        format!(
            "{}, {}",
            best["precision"].as_str().expect("p"),
            best["layout"].as_str().expect("l")
        )
    };
    let auto_avx2 = sample(&avx2, &[]);
    assert!(!auto_avx2.contains(warning));
    let records = cached();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["native_bf16"], false);
    let timed: Vec<&str> = records[0]["timings"]
        .as_array()
        .expect("timings")
        .iter()
        .map(|t| t["precision"].as_str().expect("precision"))
        .collect();
    assert_eq!(
        timed,
        ["fp32", "fp32"],
        "only fp32 is timed without native bf16: {records:?}"
    );
    assert!(
        auto_avx2.contains(&format!(", {}", fastest(&records[0]))),
        "{auto_avx2}"
    );
    // Native bf16: both precisions timed, cached, and the printed choice is the fastest (again on the second run,
    // read from the cache).
    let auto_bf16 = sample(&bf16, &[]);
    let records = cached();
    assert_eq!(records.len(), 2, "{records:?}");
    let measured = records
        .iter()
        .find(|r| r["native_bf16"] == true)
        .expect("bf16 record")
        .clone();
    assert_eq!(measured["timings"].as_array().expect("timings").len(), 4);
    let choice = fastest(&measured);
    assert!(auto_bf16.contains(&format!(", {choice}")), "{auto_bf16}\n{measured}");
    assert!(sample(&bf16, &[]).contains(&format!(", {choice}")));
    assert_eq!(cached(), records, "measured again instead of reading the cache");
    let forced = sample(&avx2, &["--precision", "bf16"]);
    assert_eq!(forced.matches(warning).count(), 1, "{forced}");
    assert!(forced.contains("7x slower") && forced.contains(", bf16"), "{forced}");
    assert!(!sample(&bf16, &["--precision", "bf16"]).contains(warning));
    let forced_layout = sample(&bf16, &["--layout", "contiguous"]);
    assert!(forced_layout.contains(", contiguous"), "{forced_layout}");
    // The record names the engine, and another engine (here ATen held to its baseline kernels) runs other kernels:
    // it is measured again, in a record of its own, and the earlier ones stay.
    let engine = |r: &serde_json::Value| r["engine"].as_str().expect("engine").to_string();
    assert!(
        records
            .iter()
            .all(|r| engine(r).starts_with("libtorch 2.11.0, ATen CPU kernels ")),
        "{records:?}"
    );
    sample_with(&[("ATEN_CPU_CAPABILITY", "default")], &avx2, &[]);
    let with_baseline = cached();
    assert_eq!(with_baseline.len(), 3, "{with_baseline:?}");
    assert_eq!(with_baseline[..2], records[..]);
    assert_eq!(
        engine(&with_baseline[2]),
        format!(
            "libtorch 2.11.0, ATen CPU kernels DEFAULT, {}",
            diffuse::runtime::tuning::OWN_KERNELS
        )
    );
}
