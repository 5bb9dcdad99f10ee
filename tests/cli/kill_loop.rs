//! The kill test: one run SIGKILLed at many random moments (start-up, inside an epoch, inside a checkpoint write)
//! and resumed after each kill must end on exactly the bytes of an uninterrupted run, and no `epoch-NNN` folder may
//! ever be incomplete.
//!
//! `DIFFUSE_KILLS` sets the number of kills (default 8). Each kill aims at a moment in turn (start-up, inside an
//! epoch, inside a checkpoint write), found from the run's progress lines and from its `.partial` checkpoint
//! folder, with a random delay inside that moment; where it landed is read back from the disk and the log, and a
//! kill that missed its moment is followed by another until every moment has been hit. Each checkpoint file
//! write is followed by a hidden 200 ms pause (`--checkpoint-file-delay-ms`) so that the write is long enough to
//! aim at. Run with `--nocapture` to see where each kill landed.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{resume, run_owned, spawn_with_lines, stderr, tiny, wait_for_line};

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

const START_UP: &str = "during start-up";
const INSIDE_AN_EPOCH: &str = "inside an epoch";
const INSIDE_A_CHECKPOINT_WRITE: &str = "inside a checkpoint write";
const MOMENTS: [&str; 3] = [START_UP, INSIDE_AN_EPOCH, INSIDE_A_CHECKPOINT_WRITE];

/// The hidden partial checkpoint folders in the run, by inode. A kill inside a write leaves its folder behind until
/// the next write replaces it, so a partial folder means a write under way only if it is not one of these.
fn partial_folders(run: &Path) -> HashSet<u64> {
    fs::read_dir(run.join("checkpoints"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
                .filter_map(|e| e.metadata().ok().map(|m| m.ino()))
                .collect()
        })
        .unwrap_or_default()
}

/// A partial folder for `epoch` that was not there before (`before`): that epoch's checkpoint write is under way.
fn writing(run: &Path, epoch: usize, before: &HashSet<u64>) -> bool {
    let path = run.join(format!("checkpoints/.epoch-{epoch:03}.partial"));
    path.metadata().is_ok_and(|m| !before.contains(&m.ino()))
}

/// Where the process was when it was killed: inside a checkpoint write when it had started a partial folder,
/// during start-up when it had not logged a training step (it logs every step of these tiny epochs), else inside
/// an epoch.
fn moment(
    run: &Path,
    before: &HashSet<u64>,
    lines: &std::sync::mpsc::Receiver<String>,
    saw_step: bool,
) -> &'static str {
    let saw_step = saw_step || lines.try_iter().any(|l| l.contains(": step "));
    if partial_folders(run).difference(before).next().is_some() {
        INSIDE_A_CHECKPOINT_WRITE
    } else if saw_step {
        INSIDE_AN_EPOCH
    } else {
        START_UP
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

/// Waits until the running child reaches `target` in `epoch`, then a random few milliseconds more. Returns whether
/// it got there, and whether a step line was read on the way (false, false when the run ended first).
fn wait_for_moment(
    target: &str,
    epoch: usize,
    run: &Path,
    before: &HashSet<u64>,
    lines: &std::sync::mpsc::Receiver<String>,
    delays: &mut Delays,
) -> (bool, bool) {
    let limit = Duration::from_secs(300);
    let reached = match target {
        // Start-up reads the data and builds (or loads) the model before the first step.
        START_UP => {
            std::thread::sleep(Duration::from_millis(delays.next(300)));
            return (true, false);
        }
        // A step line of that epoch ("epoch 2/3: step 4/8, ..."): its next steps are under way.
        INSIDE_AN_EPOCH => wait_for_line(lines, &format!("epoch {epoch}/{EPOCHS}: step "), limit),
        // The partial folder appears when the write starts and is renamed once all four files (200 ms each) are in.
        _ => {
            let started = Instant::now();
            while !writing(run, epoch, before) {
                if started.elapsed() > limit {
                    return (false, false);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            true
        }
    };
    let jitter = if target == INSIDE_A_CHECKPOINT_WRITE { 500 } else { 20 };
    std::thread::sleep(Duration::from_millis(delays.next(jitter)));
    (reached, target == INSIDE_AN_EPOCH)
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
    let mut attempts = 0;
    // Every moment must be hit at least once, however many kills that takes.
    while landed.values().sum::<usize>() < kills || MOMENTS.iter().any(|m| !landed.contains_key(m)) {
        attempts += 1;
        assert!(
            attempts <= 6 * kills.max(MOMENTS.len()),
            "after {attempts} attempts the kills landed only {landed:?}"
        );
        if assert_checkpoints_whole(&killed) == EPOCHS {
            // The run finished between kills: start over so the remaining kills still land somewhere.
            fs::remove_dir_all(&killed).expect("rm");
        }
        let newest = assert_checkpoints_whole(&killed);
        // Aim at the moments still missing first, then at each in turn.
        let target = MOMENTS
            .iter()
            .copied()
            .find(|m| !landed.contains_key(m))
            .unwrap_or(MOMENTS[attempts % MOMENTS.len()]);
        let args = if newest > 0 {
            resume_flags(&killed)
        } else {
            flags(&killed)
        };
        // Any epoch still to come, so that kills land all along the run.
        let epoch = newest + 1 + delays.next((EPOCHS - newest) as u64) as usize;
        let before = partial_folders(&killed);
        let (mut child, lines) = spawn_with_lines(&args);
        let (reached, saw_step) = wait_for_moment(target, epoch, &killed, &before, &lines, &mut delays);
        if !reached || child.try_wait().expect("wait").is_some() {
            // It finished before the kill: start over so the remaining kills still land somewhere.
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                assert_checkpoints_whole(&killed) == EPOCHS,
                "a run exited early without finishing"
            );
            fs::remove_dir_all(&killed).expect("rm");
            continue;
        }
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        let at = moment(&killed, &before, &lines, saw_step);
        *landed.entry(at).or_default() += 1;
        let after = assert_checkpoints_whole(&killed);
        eprintln!(
            "kill {attempts}: aimed {target} of epoch {epoch}, landed {at}; newest checkpoint before {newest}, after {after}"
        );
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
    eprintln!("{attempts} kills (uninterrupted run {straight_ms} ms): {landed:?}");

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
