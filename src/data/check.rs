//! Checking a data folder before training on it: each of the four MNIST files is read, its shape and
//! label range compared with the official ones (60000 train / 10000 test, 28x28, labels 0..=9), and the
//! MD5 of its uncompressed content compared with MNIST's. A folder that has the right structure but
//! different content (Fashion-MNIST, say) is reported as such rather than as broken, so the CLI can
//! print a per-file table and decide for itself what is fatal.

use std::fmt;
use std::path::{Path, PathBuf};

use super::idx::{self, parse_idx, read_decompressed, IdxArray};
use super::mnist::{find_file, Split, MNIST_MD5_UNCOMPRESSED, NUM_CLASSES, SIDE};
use super::{md5_hex, DataError};

/// How one of the four files looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileStatus {
    /// Parses, has the official shape, and its content is byte-identical to MNIST.
    Mnist,
    /// Parses and has the official shape and label range, but is not MNIST (e.g. Fashion-MNIST).
    OtherDataset,
    Missing,
    /// Unreadable, not IDX, or the wrong shape; the reason is in the string.
    Invalid(String),
}

impl fmt::Display for FileStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileStatus::Mnist => f.write_str("ok (MNIST)"),
            FileStatus::OtherDataset => f.write_str("not MNIST (e.g. Fashion-MNIST): structure ok"),
            FileStatus::Missing => f.write_str("missing"),
            FileStatus::Invalid(why) => write!(f, "invalid: {why}"),
        }
    }
}

/// The result of checking one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCheck {
    /// File name without `.gz`.
    pub name: &'static str,
    /// The file that was checked (`.gz` preferred), `None` when missing.
    pub path: Option<PathBuf>,
    pub dims: Option<Vec<usize>>,
    /// MD5 of the uncompressed content.
    pub md5: Option<String>,
    pub status: FileStatus,
}

/// The result of [`check_dir`]: one row per file, in the order of [`MNIST_MD5_UNCOMPRESSED`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub dir: PathBuf,
    pub files: Vec<FileCheck>,
}

impl CheckReport {
    /// All four files are the canonical MNIST files.
    pub fn is_mnist(&self) -> bool {
        self.files.iter().all(|f| f.status == FileStatus::Mnist)
    }

    /// All four files have the official shapes, so training can run on them (MNIST or not).
    pub fn is_usable(&self) -> bool {
        self.files
            .iter()
            .all(|f| matches!(f.status, FileStatus::Mnist | FileStatus::OtherDataset))
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "data folder: {}", self.dir.display())?;
        let file_of = |c: &FileCheck| match &c.path {
            Some(p) => p
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            None => c.name.to_string(),
        };
        let width = self.files.iter().map(|c| file_of(c).len()).max().unwrap_or(0).max(4);
        writeln!(
            f,
            "{:width$}  {:12}  {:32}  status",
            "file", "shape", "md5 (uncompressed)"
        )?;
        for c in &self.files {
            let shape = c.dims.as_deref().map_or_else(|| "-".to_string(), idx::fmt_dims);
            let md5 = c.md5.as_deref().unwrap_or("-");
            writeln!(f, "{:width$}  {shape:12}  {md5:32}  {}", file_of(c), c.status)?;
        }
        if self.is_mnist() {
            write!(f, "all 4 files are MNIST")
        } else if self.is_usable() {
            write!(f, "structure ok, but not (all) MNIST")
        } else {
            let dir = self.dir.display();
            write!(
                f,
                "problems found: run `diffuse data download --data-dir {dir}` to fetch MNIST"
            )
        }
    }
}

/// Checks the four files in `dir`: readable IDX, official shapes and counts (60000 train, 10000 test,
/// 28x28), labels in 0..=9, and whether the content is MNIST's. Problems with a file are reported in its
/// row; only a missing folder is an error.
pub fn check_dir(dir: &Path) -> Result<CheckReport, DataError> {
    if !dir.is_dir() {
        return Err(DataError::MissingDir { dir: dir.to_path_buf() });
    }
    let files = MNIST_MD5_UNCOMPRESSED
        .iter()
        .map(|&(name, md5)| check_file(dir, name, md5))
        .collect();
    Ok(CheckReport {
        dir: dir.to_path_buf(),
        files,
    })
}

fn check_file(dir: &Path, name: &'static str, expected_md5: &str) -> FileCheck {
    let mut check = FileCheck {
        name,
        path: find_file(dir, name),
        dims: None,
        md5: None,
        status: FileStatus::Missing,
    };
    let Some(path) = check.path.clone() else {
        return check;
    };
    let parsed = read_decompressed(&path).and_then(|bytes| {
        let md5 = md5_hex(&bytes);
        parse_idx(&bytes).map(|a| (a, md5))
    });
    check.status = match parsed {
        Err(e) => FileStatus::Invalid(e.kind().to_string()),
        Ok((array, md5)) => {
            let status = match official_shape_problem(name, &array) {
                Some(why) => FileStatus::Invalid(why),
                None if md5 == expected_md5 => FileStatus::Mnist,
                None => FileStatus::OtherDataset,
            };
            check.dims = Some(array.dims);
            check.md5 = Some(md5);
            status
        }
    };
    check
}

/// Why `array` does not have the official shape of file `name`, if it does not.
fn official_shape_problem(name: &str, array: &IdxArray) -> Option<String> {
    let n = if name.starts_with("train") {
        Split::Train.official_len()
    } else {
        Split::Test.official_len()
    };
    let is_images = name.contains("images");
    let expected = if is_images { vec![n, SIDE, SIDE] } else { vec![n] };
    if array.dims != expected {
        let (want, got) = (idx::fmt_dims(&expected), idx::fmt_dims(&array.dims));
        return Some(format!("expected shape {want}, found {got}"));
    }
    if is_images {
        return None;
    }
    let bad = array.data.iter().position(|&l| l >= NUM_CLASSES)?;
    Some(format!("label {} at index {bad} is not 0..=9", array.data[bad]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::idx::write_idx;
    use crate::data::mnist::tests::{mnist_dir, write_tiny};
    use crate::data::mnist::TEST_LABELS;

    #[test]
    fn check_dir_reports_missing_and_wrong_shapes() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_tiny(dir.path(), Split::Test, &[0, 1, 2]);
        let report = check_dir(dir.path()).expect("dir exists");
        assert!(!report.is_usable());
        let status: Vec<_> = report.files.iter().map(|f| f.status.clone()).collect();
        assert!(matches!(&status[0], FileStatus::Invalid(why) if why.contains("10000x28x28")));
        assert_eq!(status[2], FileStatus::Missing);
        assert!(report.to_string().contains("problems found"));
        assert!(matches!(
            check_dir(&dir.path().join("nope")),
            Err(DataError::MissingDir { .. })
        ));
    }

    #[test]
    fn other_dataset_with_official_shapes_is_usable_but_not_mnist() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_idx(&dir.path().join(TEST_LABELS), &[10_000], &[7; 10_000]).expect("write");
        let check = check_file(dir.path(), TEST_LABELS, "27ae3e4e09519cfbb04c329615203637");
        assert_eq!(check.status, FileStatus::OtherDataset);
        assert_eq!(check.dims, Some(vec![10_000]));
    }

    #[test]
    fn real_mnist_passes_check_dir() {
        let dir = mnist_dir();
        let report = check_dir(&dir).expect("folder exists");
        assert!(report.is_mnist(), "{report}");
        assert!(report.to_string().contains("all 4 files are MNIST"));
    }
}
