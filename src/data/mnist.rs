//! The MNIST folder layout: four IDX files (train/test x images/labels), each stored either gzipped
//! (`name.gz`, preferred when both exist) or raw. Fashion-MNIST uses the same names and shapes, so it loads
//! through the same path; [`check_dir`] (in `check.rs`) tells the two apart by the MD5 of the uncompressed content, which
//! every correct copy of MNIST shares however it was compressed.

use std::fmt;
use std::path::{Path, PathBuf};

use super::idx::read_idx;
use super::DataError;

pub use super::check::{check_dir, CheckReport, FileCheck, FileStatus};

pub const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
pub const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
pub const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
pub const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";

/// `(file name, MD5 of its uncompressed content)` for the canonical MNIST files.
pub const MNIST_MD5_UNCOMPRESSED: [(&str, &str); 4] = [
    (TEST_IMAGES, "2646ac647ad5339dbf082846283269ea"),
    (TEST_LABELS, "27ae3e4e09519cfbb04c329615203637"),
    (TRAIN_IMAGES, "6bbc9ace898e44ae57da46a324031adb"),
    (TRAIN_LABELS, "a25bea736e30d166cdddb491f175f624"),
];

/// Image side length of MNIST and Fashion-MNIST.
pub const SIDE: usize = 28;
/// Number of digit classes; labels are `0..NUM_CLASSES`.
pub const NUM_CLASSES: u8 = 10;

/// Folder used when neither `--data-dir` nor `MNIST_DIR` is given.
pub const DEFAULT_DATA_DIR: &str = "data/mnist";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// `(images file, labels file)` without the optional `.gz`.
    pub fn file_names(self) -> (&'static str, &'static str) {
        match self {
            Split::Train => (TRAIN_IMAGES, TRAIN_LABELS),
            Split::Test => (TEST_IMAGES, TEST_LABELS),
        }
    }

    /// Number of examples in the official split.
    pub fn official_len(self) -> usize {
        match self {
            Split::Train => 60_000,
            Split::Test => 10_000,
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Test => "test",
        })
    }
}

/// `n` grey-scale images with their labels. `images` is `[n, rows, cols]` row-major, 0 = background.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digits {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub n: usize,
    pub rows: usize,
    pub cols: usize,
}

impl Digits {
    pub fn pixels_per_image(&self) -> usize {
        self.rows * self.cols
    }

    /// Pixels scaled to [0, 1] (`p / 255`), same layout as `images`.
    pub fn pixel_f32(&self) -> Vec<f32> {
        self.images.iter().map(|&p| f32::from(p) / 255.0).collect()
    }

    /// The `i`-th image, `rows * cols` bytes, or `None` past the end.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let len = self.pixels_per_image();
        self.images
            .get(i.checked_mul(len)?..i.checked_add(1)?.checked_mul(len)?)
    }

    /// The first `n` examples (all of them when `n >= self.n`).
    pub fn subset(&self, n: usize) -> Digits {
        let n = n.min(self.n);
        // `min` with the buffer lengths keeps a hand-built, inconsistent `Digits` from panicking.
        let pixels = n.saturating_mul(self.pixels_per_image()).min(self.images.len());
        Digits {
            images: self.images[..pixels].to_vec(),
            labels: self.labels[..n.min(self.labels.len())].to_vec(),
            n,
            rows: self.rows,
            cols: self.cols,
        }
    }
    /// The digits at `indices`, in that order; None when one is past the end.
    pub fn select(&self, indices: &[usize]) -> Option<Digits> {
        let mut images = Vec::with_capacity(indices.len() * self.pixels_per_image());
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(self.image(i)?);
            labels.push(*self.labels.get(i)?);
        }
        Some(Digits {
            n: indices.len(),
            rows: self.rows,
            cols: self.cols,
            images,
            labels,
        })
    }
}

/// The data folder: the `--data-dir` flag, else `$MNIST_DIR` (when set and non-empty), else
/// `./data/mnist`.
pub fn resolve_data_dir(flag: Option<&Path>) -> PathBuf {
    pick_data_dir(flag, std::env::var_os("MNIST_DIR"))
}

/// [`resolve_data_dir`] with the value of `MNIST_DIR` given.
fn pick_data_dir(flag: Option<&Path>, env: Option<std::ffi::OsString>) -> PathBuf {
    match (flag, env) {
        (Some(dir), _) => dir.to_path_buf(),
        (None, Some(dir)) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_DATA_DIR),
    }
}

/// `dir/name.gz` if it exists, else `dir/name`, else `None`.
pub fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Some(gz);
    }
    let raw = dir.join(name);
    raw.is_file().then_some(raw)
}

/// The canonical MNIST MD5 of `name` (without `.gz`).
pub fn expected_md5(name: &str) -> Option<&'static str> {
    MNIST_MD5_UNCOMPRESSED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, md5)| *md5)
}

fn find_required(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    find_file(dir, name).ok_or_else(|| DataError::MissingFile {
        name: name.to_string(),
        dir: dir.to_path_buf(),
    })
}

/// Loads one split for the models. Shapes are checked (images 3-D and 28x28, labels 1-D, equal counts, labels < 10),
/// but the count is not fixed, so a smaller IDX set in the same layout loads too.
pub fn load(dir: &Path, split: Split) -> Result<Digits, DataError> {
    let digits = read_split(dir, split)?;
    if (digits.rows, digits.cols) != (SIDE, SIDE) {
        return Err(DataError::ImageSize {
            path: find_required(dir, split.file_names().0)?,
            rows: digits.rows,
            cols: digits.cols,
        });
    }
    Ok(digits)
}

/// [`load`] without the image size check.
fn read_split(dir: &Path, split: Split) -> Result<Digits, DataError> {
    let (images_name, labels_name) = split.file_names();
    let images_path = find_required(dir, images_name)?;
    let labels_path = find_required(dir, labels_name)?;
    let images = read_idx(&images_path)?;
    let labels = read_idx(&labels_path)?;
    let &[n, rows, cols] = images.dims.as_slice() else {
        return Err(wrong_rank(images_path, "images", 3, images.dims));
    };
    let &[n_labels] = labels.dims.as_slice() else {
        return Err(wrong_rank(labels_path, "labels", 1, labels.dims));
    };
    if n != n_labels {
        return Err(DataError::CountMismatch {
            images: images_path,
            n_images: n,
            labels: labels_path,
            n_labels,
        });
    }
    check_labels(&labels_path, &labels.data)?;
    tracing::debug!(%split, n, rows, cols, dir = %dir.display(), "loaded digits");
    Ok(Digits {
        images: images.data,
        labels: labels.data,
        n,
        rows,
        cols,
    })
}

fn wrong_rank(path: PathBuf, what: &'static str, expected: usize, dims: Vec<usize>) -> DataError {
    DataError::WrongRank {
        path,
        what,
        expected,
        dims,
    }
}

fn check_labels(path: &Path, labels: &[u8]) -> Result<(), DataError> {
    match labels.iter().position(|&l| l >= NUM_CLASSES) {
        Some(index) => Err(DataError::BadLabel {
            path: path.to_path_buf(),
            index,
            label: labels[index],
        }),
        None => Ok(()),
    }
}

/// Digits as a [N, 1, H, W] float tensor in [0, 1] (CPU).
pub fn digits_to_tensor(digits: &Digits) -> tch::Tensor {
    tch::Tensor::from_slice(&digits.images)
        .view([digits.n as i64, 1, digits.rows as i64, digits.cols as i64])
        .to_kind(tch::Kind::Float)
        / 255.0
}

/// Labels as a [N] int64 tensor (CPU).
pub fn labels_to_tensor(digits: &Digits) -> tch::Tensor {
    tch::Tensor::from_slice(&digits.labels).to_kind(tch::Kind::Int64)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::idx::write_idx;

    /// The real data folder. Tests on real MNIST fail without `MNIST_DIR` rather than pass unchecked (README's
    /// test command sets it).
    pub(crate) fn mnist_dir() -> PathBuf {
        std::env::var_os("MNIST_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .expect("MNIST_DIR must point at the real MNIST files (README: export MNIST_DIR=../shared/data/mnist)")
    }

    /// A 3-example, 2x2 split written into `dir`.
    pub(crate) fn write_tiny(dir: &Path, split: Split, labels: &[u8]) {
        let (images_name, labels_name) = split.file_names();
        let images: Vec<u8> = (0..12).map(|i| i * 20).collect();
        write_idx(&dir.join(images_name), &[3, 2, 2], &images).expect("write images");
        write_idx(&dir.join(labels_name), &[labels.len()], labels).expect("write labels");
    }

    #[test]
    fn loads_tiny_split_and_scales_pixels() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_tiny(dir.path(), Split::Test, &[3, 1, 4]);
        let d = read_split(dir.path(), Split::Test).expect("load");
        assert_eq!((d.n, d.rows, d.cols), (3, 2, 2));
        assert_eq!(d.labels, vec![3, 1, 4]);
        assert_eq!(d.image(1), Some(&[80, 100, 120, 140][..]));
        assert_eq!(d.image(3), None);
        let px = d.pixel_f32();
        assert_eq!(px[0], 0.0);
        assert!((px[11] - 220.0 / 255.0).abs() < 1e-7);
        let s = d.subset(2);
        assert_eq!((s.n, s.images.len(), s.labels.clone()), (2, 8, vec![3, 1]));
        assert_eq!(d.subset(99), d);
        let picked = d.select(&[2, 1]).expect("in range");
        assert_eq!((picked.n, picked.labels.clone()), (2, vec![4, 1]));
        assert_eq!(picked.image(0), d.image(2));
        assert_eq!(picked.image(1), d.image(1));
        assert_eq!(d.select(&[0, 3]), None);
        // The models take 28x28 only: load refuses the 2x2 split by its size.
        let e = load(dir.path(), Split::Test).expect_err("2x2");
        assert!(matches!(e, DataError::ImageSize { rows: 2, cols: 2, .. }), "{e}");
    }

    #[test]
    fn missing_file_says_where_and_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = load(dir.path(), Split::Train).expect_err("empty dir");
        let msg = e.to_string();
        assert!(msg.contains("train-images-idx3-ubyte"), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(
            msg.contains("diffuse data download --data-dir") && msg.contains("MNIST_DIR"),
            "{msg}"
        );
    }

    #[test]
    fn rejects_count_mismatch_bad_label_and_wrong_rank() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_tiny(dir.path(), Split::Test, &[1, 2]);
        assert!(matches!(
            read_split(dir.path(), Split::Test),
            Err(DataError::CountMismatch {
                n_images: 3,
                n_labels: 2,
                ..
            })
        ));
        write_tiny(dir.path(), Split::Test, &[1, 10, 2]);
        let e = read_split(dir.path(), Split::Test).expect_err("label 10");
        assert!(matches!(
            e,
            DataError::BadLabel {
                index: 1,
                label: 10,
                ..
            }
        ));
        assert!(e.to_string().contains(TEST_LABELS));
        write_idx(&dir.path().join(TEST_LABELS), &[3, 1], &[1, 2, 3]).expect("write");
        assert!(matches!(
            read_split(dir.path(), Split::Test),
            Err(DataError::WrongRank { expected: 1, .. })
        ));
    }

    #[test]
    fn gz_is_preferred_over_raw() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(find_file(dir.path(), TEST_LABELS), None);
        std::fs::write(dir.path().join(TEST_LABELS), b"raw").expect("write");
        assert_eq!(find_file(dir.path(), TEST_LABELS), Some(dir.path().join(TEST_LABELS)));
        let gz = dir.path().join(format!("{TEST_LABELS}.gz"));
        std::fs::write(&gz, b"gz").expect("write");
        assert_eq!(find_file(dir.path(), TEST_LABELS), Some(gz));
    }

    /// The order itself; tests/cli/data_download.rs checks it end to end with the variable set for the binary.
    #[test]
    fn flag_wins_over_env_and_env_over_default() {
        let flag = Path::new("/some/where");
        let env = || Some(std::ffi::OsString::from("/from/env"));
        assert_eq!(pick_data_dir(Some(flag), env()), flag);
        assert_eq!(pick_data_dir(None, env()), Path::new("/from/env"));
        assert_eq!(pick_data_dir(None, Some("".into())), Path::new(DEFAULT_DATA_DIR));
        assert_eq!(pick_data_dir(None, None), Path::new(DEFAULT_DATA_DIR));
    }

    #[test]
    fn real_mnist_loads_with_official_shapes() {
        let dir = mnist_dir();
        let train = load(&dir, Split::Train).expect("train split");
        assert_eq!((train.n, train.rows, train.cols), (60_000, 28, 28));
        assert_eq!(train.images.len(), 60_000 * 28 * 28);
        // The first training digit of MNIST is a 5 (LeCun et al.'s train-labels file, offset 8).
        assert_eq!(train.labels[0], 5);
        let test = load(&dir, Split::Test).expect("test split");
        assert_eq!((test.n, test.rows, test.cols), (10_000, 28, 28));
        assert_eq!(test.labels[0], 7);
    }
}
