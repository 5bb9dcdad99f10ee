//! The kill test: one run SIGKILLed at many random moments (start-up, inside an epoch, inside a checkpoint write)
//! and resumed after each kill must end on exactly the bytes of an uninterrupted run, and no `epoch-NNN` folder may
//! ever be incomplete.
//!
//! `DIFFUSE_KILLS` sets the number of kills (default 8). Each checkpoint file write is followed by a hidden
//! 200 ms pause (`--checkpoint-file-delay-ms`) so that a good share of the kills land inside a checkpoint write.
//! Run with `--nocapture` to see where each kill landed.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{resume, run_owned, spawn_quiet, stderr, tiny};

const EPOCHS: usize = 3;
/// Milliseconds of pause after each checkpoint file.
const FILE_DELAY: &str = "200";

const FILES: [&str; 4] = [
    "model.safetensors",
    "optimizer.safetensors",
    "ema.safetensors",
    "state.json",
];

fn flags(out: &Path) -> Vec<String> {
    let mut args = tiny("cfg", out, &["--epochs", "3", "--ema", "0.9", "--precision", "fp32"]);
    args.extend(["--checkpoint-file-delay-ms".to_string(), FILE_DELAY.to_string()]);
    args
}

fn resume_flags(run: &Path) -> Vec<String> {
    resume("cfg", run, &["--checkpoint-file-delay-ms", FILE_DELAY])
}

/// A safetensors file is whole: its header parses and the data it describes ends exactly at the end of the file.
fn assert_whole_safetensors(path: &Path) {
    let bytes = fs::read(path).expect("read");
    assert!(bytes.len() >= 8, "{}: shorter than a header", path.display());
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    assert!(
        8 + header_len <= bytes.len(),
        "{}: header runs past the end",
        path.display()
    );
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).expect("header JSON");
    let end = header
        .as_object()
        .expect("header object")
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .map(|(_, info)| info["data_offsets"][1].as_u64().expect("offsets") as usize)
        .max()
        .unwrap_or(0);
    assert_eq!(
        8 + header_len + end,
        bytes.len(),
        "{}: truncated or padded",
        path.display()
    );
}

/// Every folder that looks like a checkpoint is complete and readable. Returns the newest epoch.
fn assert_checkpoints_whole(run: &Path) -> usize {
    let Ok(entries) = fs::read_dir(run.join("checkpoints")) else {
        return 0;
    };
    let mut newest = 0;
    for entry in entries {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("name").to_string_lossy().into_owned();
        let Some(epoch) = name.strip_prefix("epoch-") else {
            assert!(name.ends_with(".partial"), "unexpected entry {name}");
            continue;
        };
        for file in FILES {
            assert!(path.join(file).is_file(), "{name} looks complete but lacks {file}");
        }
        for file in &FILES[..3] {
            assert_whole_safetensors(&path.join(file));
        }
        let state: serde_json::Value =
            serde_json::from_slice(&fs::read(path.join("state.json")).expect("state")).expect("state.json parses");
        let epoch: usize = epoch.parse().expect("epoch number");
        assert_eq!(
            state["epoch"].as_u64(),
            Some(epoch as u64),
            "{name}: state.json of another epoch"
        );
        newest = newest.max(epoch);
    }
    newest
}

/// Where the run was when it was killed.
fn moment(run: &Path, before: usize) -> &'static str {
    let partial = fs::read_dir(run.join("checkpoints"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        })
        .unwrap_or(false);
    if partial {
        "inside a checkpoint write"
    } else if run.join("checkpoints").exists() || before > 0 {
        "inside an epoch"
    } else {
        "before the first checkpoint"
    }
}

/// Deterministic pseudo-random kill delays from the clock (a new sequence every run).
struct Delays(u64);

impl Delays {
    fn next(&mut self, max_ms: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % max_ms.max(1)
    }
}

#[test]
fn sigkill_at_random_moments_then_resume_ends_on_the_uninterrupted_bytes() {
    let kills: usize = std::env::var("DIFFUSE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let tmp = tempfile::tempdir().expect("tempdir");

    let straight = tmp.path().join("straight");
    let started = Instant::now();
    let out = run_owned(&flags(&straight));
    assert!(out.status.success(), "{}", stderr(&out));
    let straight_ms = started.elapsed().as_millis() as u64;

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let mut delays = Delays(seed);
    let killed = tmp.path().join("killed");
    let mut landed: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut done = 0;
    while done < kills {
        let newest = assert_checkpoints_whole(&killed);
        let args = if newest > 0 {
            resume_flags(&killed)
        } else {
            flags(&killed)
        };
        let mut child = spawn_quiet(&args);
        // Somewhere in what is left of the run: start-up (about a quarter of it) plus the remaining epochs.
        let left = straight_ms / 4 + straight_ms * 3 / 4 * (EPOCHS - newest) as u64 / EPOCHS as u64;
        std::thread::sleep(Duration::from_millis(delays.next(left)));
        if child.try_wait().expect("wait").is_some() {
            // It finished before the kill: start over so the remaining kills still land somewhere.
            assert!(
                assert_checkpoints_whole(&killed) == EPOCHS,
                "a run exited early without finishing"
            );
            fs::remove_dir_all(&killed).expect("rm");
            continue;
        }
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        let at = moment(&killed, newest);
        *landed.entry(at).or_default() += 1;
        let after = assert_checkpoints_whole(&killed);
        eprintln!(
            "kill {}: {at}; newest checkpoint before {newest}, after {after}",
            done + 1
        );
        done += 1;
    }
    // Finish the run.
    let newest = assert_checkpoints_whole(&killed);
    let args = if newest > 0 {
        resume_flags(&killed)
    } else {
        flags(&killed)
    };
    let out = run_owned(&args);
    assert!(out.status.success(), "final resume failed: {}", stderr(&out));
    eprintln!("{kills} kills (uninterrupted run {straight_ms} ms): {landed:?}");

    for file in &FILES[..3] {
        let a = fs::read(straight.join("checkpoints/epoch-003").join(file)).expect("straight");
        let b = fs::read(killed.join("checkpoints/epoch-003").join(file)).expect("killed");
        assert!(a == b, "epoch-3 {file} differs from the uninterrupted run");
    }
    assert_eq!(
        fs::read_to_string(straight.join("losses.csv")).expect("csv"),
        fs::read_to_string(killed.join("losses.csv")).expect("csv"),
    );
}
