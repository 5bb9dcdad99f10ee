//! Checkpoint folders: `RUN_DIR/checkpoints/epoch-NNN/`, written so that a crash never leaves one that looks
//! complete but is not.
//!
//! A checkpoint is built in a hidden sibling folder (`.epoch-NNN.partial`), every file fsynced, and only then
//! renamed to `epoch-NNN`; the rename is the commit. A folder named `epoch-NNN` therefore always holds every file
//! of [`FILES`]. Leftover partial folders from a crash are ignored and cleaned up on the next write.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::io::atomic_file::sync_dir;

use super::{MODEL_FILE, OPTIMIZER_FILE, STATE_FILE};

/// The files every complete checkpoint holds (runs with a weight average add [`super::EMA_FILE`]).
pub const FILES: [&str; 3] = [MODEL_FILE, OPTIMIZER_FILE, STATE_FILE];

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("cannot write checkpoint {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{0}: no checkpoint found (expected checkpoints/epoch-NNN/ inside it)")]
    NoCheckpoint(PathBuf),
    #[error("{path}: checkpoint for epoch {epoch} not found (available: {available})")]
    NoSuchEpoch {
        path: PathBuf,
        epoch: usize,
        available: String,
    },
}

pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

pub fn epoch_dir(run_dir: &Path, epoch: usize) -> PathBuf {
    checkpoints_dir(run_dir).join(format!("epoch-{epoch:03}"))
}

/// Complete checkpoints of a run, by epoch, oldest first.
pub fn list(run_dir: &Path) -> Result<Vec<(usize, PathBuf)>, CheckpointError> {
    let dir = checkpoints_dir(run_dir);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(CheckpointError::Read { path: dir, source }),
    };
    let mut found: Vec<(usize, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let epoch = name.strip_prefix("epoch-")?.parse().ok()?;
            let path = entry.path();
            FILES.iter().all(|f| path.join(f).is_file()).then_some((epoch, path))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// The newest complete checkpoint.
pub fn latest(run_dir: &Path) -> Result<(usize, PathBuf), CheckpointError> {
    list(run_dir)?
        .pop()
        .ok_or_else(|| CheckpointError::NoCheckpoint(run_dir.to_path_buf()))
}

/// The checkpoint of `epoch`, or the newest when `None`.
pub fn find(run_dir: &Path, epoch: Option<usize>) -> Result<(usize, PathBuf), CheckpointError> {
    let Some(epoch) = epoch else {
        return latest(run_dir);
    };
    let all = list(run_dir)?;
    if all.is_empty() {
        return Err(CheckpointError::NoCheckpoint(run_dir.to_path_buf()));
    }
    all.iter()
        .find(|(e, _)| *e == epoch)
        .cloned()
        .ok_or_else(|| CheckpointError::NoSuchEpoch {
            path: run_dir.to_path_buf(),
            epoch,
            available: all.iter().map(|(e, _)| e.to_string()).collect::<Vec<_>>().join(", "),
        })
}

/// Writes the checkpoint of `epoch`: `fill` writes the files into a fresh hidden folder, which is then committed
/// by a rename. On any error the partial folder is removed and earlier checkpoints are untouched.
pub fn write<E>(
    run_dir: &Path,
    epoch: usize,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<PathBuf, WriteError<E>> {
    let parent = checkpoints_dir(run_dir);
    let final_dir = epoch_dir(run_dir, epoch);
    let partial = parent.join(format!(".epoch-{epoch:03}.partial"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WriteError::Checkpoint(CheckpointError::Write { path, source })
    };
    fs::create_dir_all(&parent).map_err(io(&parent))?;
    remove_partials(&parent);
    fs::create_dir(&partial).map_err(io(&partial))?;
    let committed = fill(&partial).map_err(WriteError::Fill).and_then(|()| {
        for file in FILES {
            let path = partial.join(file);
            fs::File::open(&path).and_then(|f| f.sync_all()).map_err(io(&path))?;
        }
        sync_dir(&partial).map_err(io(&partial))?;
        if final_dir.exists() {
            // Only reached when a run is redone over an existing epoch; the new folder replaces it whole.
            fs::remove_dir_all(&final_dir).map_err(io(&final_dir))?;
        }
        fs::rename(&partial, &final_dir).map_err(io(&final_dir))?;
        sync_dir(&parent).map_err(io(&parent))
    });
    if committed.is_err() {
        let _ = fs::remove_dir_all(&partial);
    }
    committed.map(|()| final_dir)
}

/// A checkpoint write failed in the folder mechanics or in the caller's `fill`.
#[derive(Debug, Error)]
pub enum WriteError<E> {
    #[error(transparent)]
    Checkpoint(CheckpointError),
    #[error(transparent)]
    Fill(E),
}

impl<E: From<super::RunError>> WriteError<E> {
    /// One error of the caller's type: the folder mechanics' as a [`super::RunError`], or the caller's own.
    pub fn flatten(self) -> E {
        match self {
            WriteError::Checkpoint(e) => super::RunError::Checkpoint(e).into(),
            WriteError::Fill(e) => e,
        }
    }
}

fn remove_partials(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        if entry.file_name().to_string_lossy().ends_with(".partial") {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill_all(dir: &Path) -> Result<(), io::Error> {
        for f in FILES {
            fs::write(dir.join(f), f)?;
        }
        Ok(())
    }

    #[test]
    fn write_then_list_and_find() {
        let run = tempfile::tempdir().expect("tempdir");
        write(run.path(), 1, fill_all).expect("write 1");
        write(run.path(), 2, fill_all).expect("write 2");
        let all = list(run.path()).expect("list");
        assert_eq!(all.iter().map(|(e, _)| *e).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(latest(run.path()).expect("latest").0, 2);
        assert_eq!(find(run.path(), Some(1)).expect("find").0, 1);
        assert!(find(run.path(), Some(3))
            .expect_err("no 3")
            .to_string()
            .contains("available: 1, 2"));
    }

    #[test]
    fn a_failed_fill_leaves_no_folder_and_keeps_the_previous_checkpoint() {
        let run = tempfile::tempdir().expect("tempdir");
        write(run.path(), 1, fill_all).expect("write 1");
        let failed = write(run.path(), 2, |dir: &Path| {
            fs::write(dir.join(MODEL_FILE), b"half")?;
            Err(io::Error::other("disk full"))
        });
        assert!(matches!(failed, Err(WriteError::Fill(_))));
        let names: Vec<String> = fs::read_dir(checkpoints_dir(run.path()))
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["epoch-001".to_string()]);
    }

    #[test]
    fn incomplete_folders_are_not_checkpoints() {
        let run = tempfile::tempdir().expect("tempdir");
        write(run.path(), 1, fill_all).expect("write 1");
        let fake = epoch_dir(run.path(), 2);
        fs::create_dir_all(&fake).expect("mkdir");
        fs::write(fake.join(MODEL_FILE), b"x").expect("write");
        fs::create_dir_all(checkpoints_dir(run.path()).join(".epoch-003.partial")).expect("mkdir");
        assert_eq!(latest(run.path()).expect("latest").0, 1);
        assert!(matches!(
            latest(&run.path().join("nothing")),
            Err(CheckpointError::NoCheckpoint(_))
        ));
    }
}
