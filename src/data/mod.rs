//! Getting MNIST-shaped digits from disk into memory: the IDX file format (`idx`) read through a bounded
//! gunzip (`gunzip`), the four-file MNIST / Fashion-MNIST layout (`mnist`), checking a folder against
//! MNIST's shapes and checksums (`check`), and fetching the files from mirrors (`download`).
//! Nothing here knows about tensors; callers get plain `u8`/`f32` buffers with their shapes. Every write
//! into a data folder goes through a temporary file that is renamed into place only once complete, so an
//! interrupted run never leaves a half-written file where a loader would pick it up.
//!
//! Error messages are complete one-liners that already include their cause, so the binary can print them
//! as they are; they do not repeat the cause through `source()`.

pub mod check;
pub mod dataset;
pub mod download;
pub mod gunzip;
pub mod idx;
pub mod mnist;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};
use thiserror::Error;

pub use check::{check_dir, CheckReport, FileCheck, FileStatus};
pub use download::{download, DownloadReport, MirrorAttempt, MirrorError, DEFAULT_MIRRORS};
pub use idx::{parse_idx, read_idx, sample_file_paths, write_idx, IdxArray, IdxError};
pub use mnist::{digits_to_tensor, labels_to_tensor, load, resolve_data_dir, Digits, Split};

/// Everything that can go wrong between a data folder and a [`Digits`] in memory.
#[derive(Debug, Error)]
pub enum DataError {
    #[error(transparent)]
    Idx(#[from] IdxError),

    #[error(
        "{name}(.gz) not found in {dir}: run `diffuse data download --data-dir {dir}` \
         or set MNIST_DIR to a folder holding the MNIST files",
        dir = dir.display()
    )]
    MissingFile { name: String, dir: PathBuf },

    #[error(
        "data folder {dir} does not exist: run `diffuse data download --data-dir {dir}` \
         or set MNIST_DIR to a folder holding the MNIST files",
        dir = dir.display()
    )]
    MissingDir { dir: PathBuf },

    #[error("{}: expected a {expected}-D IDX array ({what}), found dimensions {}", path.display(), idx::fmt_dims(dims))]
    WrongRank {
        path: PathBuf,
        what: &'static str,
        expected: usize,
        dims: Vec<usize>,
    },

    #[error(
        "{} holds {n_images} images but {} holds {n_labels} labels",
        images.display(),
        labels.display()
    )]
    CountMismatch {
        images: PathBuf,
        n_images: usize,
        labels: PathBuf,
        n_labels: usize,
    },

    #[error("{}: label {label} at index {index} is not a digit class (0..=9)", path.display())]
    BadLabel { path: PathBuf, index: usize, label: u8 },

    #[error("{}: images are {rows}x{cols}; the models take 28x28 (MNIST's size)", path.display())]
    ImageSize { path: PathBuf, rows: usize, cols: usize },

    #[error("cannot {action} {}: {error}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        error: io::Error,
    },

    #[error("could not download {name} from any mirror: {}", download::fmt_attempts(attempts))]
    AllMirrorsFailed { name: String, attempts: Vec<MirrorAttempt> },
}

/// Lowercase hex MD5, the form published checksums use.
pub(crate) fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A file being written beside its final destination. Dropping it without [`PartialFile::commit`]
/// deletes it, so every early return on an error path cleans up by itself.
pub(crate) struct PartialFile {
    path: PathBuf,
    // `Option` so that `Drop` can close the handle before deleting (required on Windows).
    file: Option<File>,
}

impl PartialFile {
    /// Creates (or truncates a stale leftover of) `path`, opened for reading and writing.
    pub(crate) fn create(path: PathBuf) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        Ok(Self { path, file: Some(file) })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn file(&mut self) -> io::Result<&mut File> {
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("partial file already closed"))
    }

    /// Flushes the data to disk, then renames it onto `dest`: a reader sees either the old file or the
    /// complete new one. The fsync comes first because a rename can reach the disk before the data does.
    pub(crate) fn commit(mut self, dest: &Path) -> io::Result<()> {
        if let Some(file) = self.file.take() {
            file.sync_all()?;
        }
        fs::rename(&self.path, dest)?;
        // The rename succeeded: from here on `Drop` must not delete anything.
        self.path = PathBuf::new();
        sync_parent_dir(dest);
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        drop(self.file.take());
        if !self.path.as_os_str().is_empty() {
            // Best effort: a failure here leaves a dot-file that the next run truncates and reuses.
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Makes the rename itself durable. Best effort: not every platform or filesystem lets a directory be
/// opened and synced, and the data is already safe by the time this runs.
fn sync_parent_dir(path: &Path) {
    #[cfg(unix)]
    {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if let Ok(dir) = File::open(parent) {
            let _ = dir.sync_all();
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn md5_of_empty_input_matches_rfc1321() {
        // RFC 1321 appendix A.5: MD5("") = d41d8cd98f00b204e9800998ecf8427e.
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn partial_file_is_removed_unless_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = dir.path().join(".x.partial");
        {
            let mut p = PartialFile::create(tmp.clone()).expect("create");
            p.file().expect("file").write_all(b"half").expect("write");
        }
        assert!(!tmp.exists());

        let dest = dir.path().join("x");
        let mut p = PartialFile::create(tmp.clone()).expect("create");
        p.file().expect("file").write_all(b"whole").expect("write");
        p.commit(&dest).expect("commit");
        assert!(!tmp.exists());
        assert_eq!(fs::read(&dest).expect("read"), b"whole");
    }
}
