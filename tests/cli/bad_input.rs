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
