//! Fashion-MNIST (Debian's `dataset-fashion-mnist`, which `.ci/run` installs; ignored unless asked for, and
//! scripts/test.sh asks when it is installed): the same loaders, training and sampling work on it, and `data check`
//! tells it apart from MNIST.

use crate::common::*;

const DEBIAN_DIR: &str = "/usr/share/datasets/fashion-mnist";

#[test]
#[ignore = "needs Debian's dataset-fashion-mnist (scripts/test.sh includes it when it is installed)"]
fn needs_fashion_mnist_checks_trains_and_samples() {
    assert!(
        std::path::Path::new(DEBIAN_DIR)
            .join("train-images-idx3-ubyte.gz")
            .exists(),
        "{DEBIAN_DIR} missing: apt-get install dataset-fashion-mnist (see .ci/run)"
    );
    let check = run(&["data", "check", "--data-dir", DEBIAN_DIR]);
    assert!(check.status.success(), "{}", stderr(&check));
    let table = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(table.contains("60000x28x28") && table.contains("not MNIST"), "{table}");

    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("fashion");
    let out = run_owned(&tiny(
        "cfg",
        &run_dir,
        &["--epochs", "1", "--dataset", "fashion-mnist", "--timesteps", "20"],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(DEBIAN_DIR),
        "did not read Debian's folder: {}",
        stderr(&out)
    );
    let config = std::fs::read_to_string(run_dir.join("config.json")).expect("config");
    assert!(config.contains("\"fashion-mnist\""));
    let png = tmp.path().join("f.png");
    let out = run(&[
        "sample",
        "--run",
        run_dir.to_str().expect("utf8"),
        "--sampler",
        "ddim",
        "--steps",
        "2",
        "--out",
        png.to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}
