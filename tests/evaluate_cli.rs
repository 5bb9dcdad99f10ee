//! `diffuse eval` on known cases with the shipped classifier: real test digits score near the floor, noise scores
//! far worse, and the same digits under random labels score near 10% accuracy. Also `train classifier` runs, and
//! `eval` samples from a run itself.

mod common;

use std::path::Path;

use common::*;

/// Writes `n` test digits as IDX files under `prefix`, with their true labels or (`random_labels`) uniformly random
/// ones.
fn write_test_digits(prefix: &Path, n: usize, random_labels: bool) {
    let test = diffuse::data::load(&mnist_dir(), diffuse::data::Split::Test).expect("test split");
    let images = &test.images[..n * 784];
    let labels: Vec<u8> = if random_labels {
        diffuse::rng::RunRng::new(9)
            .integers(n, 10)
            .iter()
            .map(|&l| l as u8)
            .collect()
    } else {
        test.labels[..n].to_vec()
    };
    let (images_path, labels_path) = diffuse::data::sample_file_paths(prefix);
    diffuse::data::write_idx(&images_path, &[n, 28, 28], images).expect("images");
    diffuse::data::write_idx(&labels_path, &[n], &labels).expect("labels");
}

/// (accuracy %, FD) from the table `diffuse eval` prints.
fn eval_idx(prefix: &Path) -> (Option<f64>, f64) {
    let out = run(&["eval", "--idx", prefix.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let row: Vec<&str> = table.lines().nth(1).expect("a row").split_whitespace().collect();
    let accuracy = row[4].strip_suffix('%').map(|a| a.parse().expect("accuracy"));
    (accuracy, row[5].parse().expect("fd"))
}

#[test]
fn known_cases_score_as_expected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let real = tmp.path().join("real");
    write_test_digits(&real, 1000, false);
    let (accuracy, fd_real) = eval_idx(&real);
    assert!(
        accuracy.expect("labels given") > 98.0,
        "accuracy on real digits {accuracy:?}"
    );

    let wrong = tmp.path().join("wrong");
    write_test_digits(&wrong, 1000, true);
    let (wrong_accuracy, fd_wrong) = eval_idx(&wrong);
    let wrong_accuracy = wrong_accuracy.expect("labels given");
    assert!(
        (5.0..15.0).contains(&wrong_accuracy),
        "random labels should score near 10%, got {wrong_accuracy}"
    );
    assert!((fd_wrong - fd_real).abs() < 1e-6, "labels must not change the FD");

    // Uniform noise images: no labels file, so no accuracy; the FD is far above the real digits'.
    let noise = tmp.path().join("noise");
    let mut rng = diffuse::rng::RunRng::new(1);
    let pixels: Vec<u8> = rng.uniforms(1000 * 784).iter().map(|u| (u * 255.0) as u8).collect();
    let (noise_images, _) = diffuse::data::sample_file_paths(&noise);
    diffuse::data::write_idx(&noise_images, &[1000, 28, 28], &pixels).expect("noise");
    let (accuracy, fd_noise) = eval_idx(&noise);
    assert!(accuracy.is_none());
    assert!(
        fd_noise > 20.0 * fd_real.max(0.5),
        "noise FD {fd_noise} vs real {fd_real}"
    );
    eprintln!(
        "FD: real test digits {fd_real:.3}, uniform noise {fd_noise:.1}; wrong-label accuracy {wrong_accuracy:.1}%"
    );
}

#[test]
fn eval_samples_from_a_model_and_train_classifier_runs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = run(&["eval", "--per-digit", "2", "--sampler", "ddim", "--steps", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.contains("DDIM") && table.contains(" 20 "), "{table}");

    let clf = tmp.path().join("clf");
    let out = run(&[
        "train",
        "classifier",
        "--epochs",
        "1",
        "--subset",
        "512",
        "--out",
        clf.to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(clf.join("model.safetensors").exists() && clf.join("classifier.json").exists());
    assert_clean_failure(
        &run(&[
            "eval",
            "--classifier",
            tmp.path().join("none").to_str().expect("utf8"),
            "--per-digit",
            "1",
        ]),
        "classifier",
    );
}
