//! Every bad input a user can give gets one clear error line and a non-zero exit, and loses nothing saved.

use std::fs;
use std::io::Write;

use crate::common::*;

fn tmp_data_dir(tmp: &std::path::Path) -> std::path::PathBuf {
    let dir = tmp.join("data");
    fs::create_dir_all(&dir).expect("mkdir");
    for name in [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ] {
        fs::copy(mnist_dir().join(name), dir.join(name)).expect("copy");
    }
    dir
}

#[test]
fn flags_are_validated_before_anything_runs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("run");
    let o = out.to_str().expect("utf8");
    assert_clean_failure(&run(&["train", "denoiser", "--epochs", "0", "--out", o]), "--epochs");
    assert_clean_failure(
        &run(&["train", "denoiser", "--epochs", "three", "--out", o]),
        "--epochs",
    );
    assert_clean_failure(&run(&["train", "denoiser", "--lr", "-1", "--out", o]), "--lr");
    assert_clean_failure(&run(&["train", "cfg", "--p-uncond", "1.5", "--out", o]), "--p-uncond");
    assert_clean_failure(&run(&["train", "denoiser", "--nonsense"]), "--nonsense");
    for threads in ["0", "100000"] {
        assert_clean_failure(
            &run(&["train", "denoiser", "--threads", threads, "--out", o]),
            "--threads",
        );
    }
    assert!(!out.exists(), "a rejected command created its run folder");
}

#[test]
fn unwritable_out_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("a-file");
    fs::write(&file, b"x").expect("write");
    let out = file.join("run");
    assert_clean_failure(&run_owned(&tiny("denoiser", &out, &["--epochs", "1"])), "cannot");
}

#[test]
fn missing_truncated_and_wrong_magic_idx_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp_data_dir(tmp.path());
    let d = data.to_str().expect("utf8").to_string();
    let train = |name: &str| {
        let out = tmp.path().join(name);
        run_owned(&tiny("denoiser", &out, &["--epochs", "1", "--data-dir", &d]))
    };

    fs::remove_file(data.join("t10k-labels-idx1-ubyte.gz")).expect("rm");
    assert_clean_failure(&train("r1"), "t10k-labels-idx1-ubyte");
    assert!(
        !tmp.path().join("r1").exists(),
        "a run folder was created for a run that could not start"
    );

    let bytes = fs::read(mnist_dir().join("t10k-labels-idx1-ubyte.gz")).expect("read");
    let raw = {
        use std::io::Read;
        let mut d = flate2::read::GzDecoder::new(&bytes[..]);
        let mut v = Vec::new();
        d.read_to_end(&mut v).expect("gunzip");
        v
    };
    fs::write(data.join("t10k-labels-idx1-ubyte"), &raw[..raw.len() - 100]).expect("truncate");
    assert_clean_failure(&train("r2"), "t10k-labels-idx1-ubyte");

    let mut wrong = raw.clone();
    wrong[0] = 0x42;
    let mut f = fs::File::create(data.join("t10k-labels-idx1-ubyte")).expect("create");
    f.write_all(&wrong).expect("write");
    assert_clean_failure(&train("r3"), "magic");
    drop(f);
    fs::write(data.join("t10k-labels-idx1-ubyte"), &raw).expect("restore");

    // Well-formed images of another size (16x49: the same bytes per image) had reached the UNet and panicked there.
    let images = fs::read(mnist_dir().join("train-images-idx3-ubyte.gz")).expect("read");
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&images[..]), &mut raw).expect("gunzip");
    raw[8..12].copy_from_slice(&16u32.to_be_bytes());
    raw[12..16].copy_from_slice(&49u32.to_be_bytes());
    fs::remove_file(data.join("train-images-idx3-ubyte.gz")).expect("rm");
    fs::write(data.join("train-images-idx3-ubyte"), &raw).expect("write");
    assert_clean_failure(&train("r4"), "images are 16x49; the models take 28x28");
}

#[test]
fn damaged_checkpoints_are_refused_and_nan_keeps_the_last_good_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("run");
    let r = run_dir.to_str().expect("utf8");
    // NaN at global step 10 (epoch 2 with 8 steps per epoch): stops, names the step, keeps epoch 1.
    let out = run_owned(&tiny(
        "denoiser",
        &run_dir,
        &["--epochs", "3", "--inject-nan-at-step", "10"],
    ));
    assert_clean_failure(&out, "step 10");
    assert!(stderr(&out).contains("epoch-001"), "{}", stderr(&out));
    let model = run_dir.join("checkpoints/epoch-001/model.safetensors");
    let good = fs::read(&model).expect("epoch 1 kept");
    assert!(!run_dir.join("checkpoints/epoch-002").exists());

    // A checkpoint with a missing tensor, then one with a wrong shape, is refused by name.
    let mut tensors = diffuse::io::tensor_file::read(&model).expect("read");
    let (name, _) = tensors.pop_last().expect("a tensor");
    diffuse::io::tensor_file::write(&model, &tensors).expect("write");
    assert_clean_failure(&run(&["train", "denoiser", "--resume", r]), &name);
    tensors.insert(
        name.clone(),
        tch::Tensor::zeros([3], (tch::Kind::Float, tch::Device::Cpu)),
    );
    diffuse::io::tensor_file::write(&model, &tensors).expect("write");
    assert_clean_failure(&run(&["train", "denoiser", "--resume", r]), "shape");

    // Restored, the run resumes and finishes.
    fs::write(&model, &good).expect("restore");
    let out = run(&["train", "denoiser", "--resume", r, "--no-figures"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(run_dir.join("checkpoints/epoch-003/model.safetensors").exists());
}

/// A model whose weights hold a NaN draws NaN digits. They are refused with one line, never drawn black or scored:
/// a NaN Frechet distance had come out as a perfect 0, better than real digits.
#[test]
fn a_model_that_draws_nan_is_refused_not_drawn_or_scored() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model_dir = tmp.path().join("broken-cfg");
    fs::create_dir_all(&model_dir).expect("mkdir");
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/cfg-d64");
    for name in ["config.json", "model.safetensors"] {
        fs::copy(shipped.join(name), model_dir.join(name)).expect("copy");
    }
    let weights = model_dir.join("model.safetensors");
    let mut tensors = diffuse::io::tensor_file::read(&weights).expect("read");
    let (name, tensor) = tensors.pop_last().expect("a tensor");
    tensors.insert(name, tensor.full_like(f64::NAN));
    diffuse::io::tensor_file::write(&weights, &tensors).expect("write");
    let m = model_dir.to_str().expect("utf8");
    let png = tmp.path().join("grid.png");
    let idx = tmp.path().join("samples");
    let out = run(&[
        "sample",
        "--run",
        m,
        "--digits",
        "3",
        "--per-digit",
        "2",
        "--out",
        png.to_str().expect("utf8"),
        "--idx",
        idx.to_str().expect("utf8"),
    ]);
    assert_clean_failure(&out, "2 of 2 samples came out NaN");
    assert!(!png.exists() && !tmp.path().join("samples-images-idx3-ubyte").exists());
    let out = run(&["eval", "--run", m, "--per-digit", "1", "--steps", "2"]);
    assert_clean_failure(&out, "NaN or infinite");
}

/// One training per run folder: a second `train` or `--resume` aimed at a folder another process is training in is
/// refused with one line, and the first run's files are left alone (two runs had both "succeeded", one overwriting
/// the other's checkpoints). The kernel lets go of the folder when its process dies, even by SIGKILL.
#[test]
fn a_run_folder_takes_one_training_at_a_time() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("run");
    // The first run holds its first checkpoint write open for minutes.
    let mut first = spawn_quiet(&tiny(
        "denoiser",
        &run_dir,
        &["--epochs", "1", "--checkpoint-file-delay-ms", "300000"],
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !run_dir.join("config.json").exists() {
        assert!(std::time::Instant::now() < deadline, "the first run never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let config = fs::read(run_dir.join("config.json")).expect("config");
    assert_clean_failure(
        &run_owned(&tiny("ddpm", &run_dir, &["--epochs", "1"])),
        "in use by another",
    );
    assert_clean_failure(&run_owned(&resume("denoiser", &run_dir, &[])), "in use by another");
    assert_eq!(fs::read(run_dir.join("config.json")).expect("config"), config);
    first.kill().expect("kill");
    first.wait().expect("wait");
    let out = run_owned(&tiny("denoiser", &run_dir, &["--epochs", "1"]));
    assert!(out.status.success(), "{}", stderr(&out));
}
