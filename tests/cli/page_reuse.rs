//! A training step, and a sampler step, reuse the memory the previous step freed instead of taking fresh pages from
//! the kernel (jemalloc, set up in src/main.rs). Counted as the minor page faults of the real binary: the same
//! command with few steps and with more, the same start-up and warm-up, so the difference is what the extra
//! steady-state steps fault in.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};

use crate::common::diffuse;

/// How each command runs on the CPU in both tests: fp32, channels-last, 2 threads.
const ON_THE_CPU: [&str; 6] = ["--precision", "fp32", "--layout", "channels-last", "--threads", "2"];

/// `diffuse COMMAND... --steps few` against `--steps more` (each on the CPU as above): the faults of each run, and
/// the faults of one extra step.
fn faults_per_extra_step(command: &[&str], few: usize, more: usize) -> (i64, i64, f64) {
    let run = |steps: usize| {
        let steps = steps.to_string();
        let args: Vec<&str> = command
            .iter()
            .chain(&ON_THE_CPU)
            .copied()
            .chain(["--steps", &steps])
            .collect();
        faults(&args)
    };
    let (short, long) = (run(few), run(more));
    (short, long, (long - short) as f64 / (more - few) as f64)
}

/// Minor page faults of the real binary run with `args`, which must succeed.
// libc::wait4 below reaps the child, which std cannot do while reading its resource usage.
#[allow(clippy::zombie_processes)]
fn faults(args: &[&str]) -> i64 {
    let child = diffuse()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn diffuse");
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills; the child is ours and not waited for elsewhere.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4: {}", std::io::Error::last_os_error());
    assert!(
        ExitStatus::from_raw(status).success(),
        "diffuse {args:?} failed: {status:#x}"
    );
    usage.ru_minflt
}

#[test]
fn training_steps_reuse_freed_memory() {
    // The cfg UNet (D=64, batch 128), training only.
    let bench = [
        "bench",
        "--model",
        "cfg",
        "--warmup",
        "1",
        "--sample-steps",
        "0",
        "--json",
    ];
    let (short, long, per_step) = faults_per_extra_step(&bench, 2, 7);
    // Handed back to the kernel after each step, a step's activations and gradients fault in again: about 83,000
    // faults a step with glibc's defaults (425,000 with 2 steps, 842,000 with 7, on the Xeon of README), 432,000 with
    // jemalloc purging at once (MALLOC_CONF=dirty_decay_ms:0,muzzy_decay_ms:0). Kept for the next step: 4,000-7,500
    // a step with glibc holding freed memory, under 10 with jemalloc as set up in src/main.rs. The bound sits between,
    // a factor of 3 or more from each.
    assert!(
        per_step < 25_000.0,
        "each training step faulted in {per_step:.0} pages ({short} faults with 2 steps, {long} with 7): freed memory goes back to the kernel"
    );
}

#[test]
fn sampler_steps_reuse_freed_memory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("grid.png");
    // 40 guided digits of the shipped cfg model: one forward pass of 80 a step.
    let out = out.to_str().expect("utf-8 path");
    let sample = ["sample", "--sampler", "ddim", "--out", out];
    let (short, long, per_step) = faults_per_extra_step(&sample, 2, 12);
    // Handed back to the kernel as soon as they are freed (jemalloc with MALLOC_CONF=dirty_decay_ms:0,muzzy_decay_ms:0,
    // on the Xeon of README), a step's activations (16 MB each at a batch of 80) fault in again: about 72,000 faults a
    // step. Kept: under 1,000 (glibc holding freed memory: 900; jemalloc as set up in src/main.rs: 1). The bound sits
    // between, a factor of 9 from each.
    assert!(
        per_step < 8_000.0,
        "each sampler step faulted in {per_step:.0} pages ({short} faults with 2 steps, {long} with 12): freed memory goes back to the kernel"
    );
}
