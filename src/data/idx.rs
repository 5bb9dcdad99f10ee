//! The IDX file format of the MNIST distribution: a 4-byte magic (two zero bytes, a dtype byte, the number
//! of dimensions), one big-endian `u32` per dimension, then the elements in row-major order. Only the
//! unsigned-byte dtype (0x08) is supported, which is all that MNIST and Fashion-MNIST use.
//!
//! Files are read whole and decompressed transparently when they start with the gzip magic (whatever
//! their name says). Everything that a file controls is bounded before memory is committed to it: header
//! arithmetic is checked, so a huge dimension in a tiny file is rejected before anything is allocated,
//! and both the raw and the decompressed content are capped (see [`super::gunzip`]), so a gzip bomb
//! fails instead of exhausting memory.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

pub use super::gunzip::{read_decompressed, MAX_CONTENT_BYTES};
use super::PartialFile;

/// The only element type supported: unsigned byte.
pub const DTYPE_U8: u8 = 0x08;
/// IDX allows up to 255 dimensions; image data never needs more than 4 (N, C, H, W).
pub const MAX_RANK: usize = 4;

/// An unsigned-byte IDX array: `data` holds `dims.iter().product()` elements in row-major order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// What is wrong with an IDX file, or why it could not be read or written.
#[derive(Debug, Error)]
pub enum IdxError {
    #[error("cannot {action} {}: {error}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    /// A format error found in the file at `path`.
    #[error("{}: {kind}", path.display())]
    InFile { path: PathBuf, kind: Box<IdxError> },
    #[error("not an IDX file (magic bytes {})", hex(.0))]
    BadMagic([u8; 4]),
    #[error("unsupported IDX dtype 0x{0:02x} (only 0x08, unsigned byte, is supported)")]
    UnsupportedDtype(u8),
    #[error("IDX header declares {0} dimensions (1 to 4 are supported)")]
    BadRank(usize),
    #[error("IDX dimension {axis} is zero")]
    ZeroDim { axis: usize },
    #[error("dimension {axis} is {dim}, more than an IDX header can hold (u32)")]
    DimTooLarge { axis: usize, dim: usize },
    #[error("truncated: expected {expected} bytes, found {actual}")]
    Truncated { expected: usize, actual: usize },
    #[error("{} trailing bytes after the {expected} bytes the header declares", actual - expected)]
    TrailingBytes { expected: usize, actual: usize },
    #[error(
        "IDX dimensions {} describe more bytes than this machine can address",
        fmt_dims(dims)
    )]
    TooLarge { dims: Vec<usize> },
    #[error("data has {actual} bytes but dimensions {} need {expected}", fmt_dims(dims))]
    LengthMismatch {
        dims: Vec<usize>,
        expected: usize,
        actual: usize,
    },
    #[error("content exceeds the {limit}-byte limit (corrupt file or gzip bomb?)")]
    ExceedsLimit { limit: u64 },
    #[error("corrupt gzip data: {error}")]
    Gzip { error: io::Error },
}

impl IdxError {
    /// The format error itself, without the file it was found in (useful for matching).
    pub fn kind(&self) -> &IdxError {
        match self {
            IdxError::InFile { kind, .. } => kind.kind(),
            other => other,
        }
    }

    pub(crate) fn in_file(self, path: &Path) -> IdxError {
        match self {
            e @ (IdxError::Io { .. } | IdxError::InFile { .. }) => e,
            e => IdxError::InFile {
                path: path.to_path_buf(),
                kind: Box::new(e),
            },
        }
    }
}

/// `60000x28x28`, the way shapes are written in messages.
pub(crate) fn fmt_dims(dims: &[usize]) -> String {
    let parts: Vec<String> = dims.iter().map(usize::to_string).collect();
    parts.join("x")
}

fn hex(bytes: &[u8]) -> String {
    let parts: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(" ")
}

/// Validates the header against the total length and returns `(dims, header_len)`. Works only on the
/// header and lengths, so it allocates nothing proportional to what the header claims.
fn parse_header(bytes: &[u8]) -> Result<(Vec<usize>, usize), IdxError> {
    let Some(magic) = bytes.first_chunk::<4>() else {
        return Err(IdxError::Truncated {
            expected: 4,
            actual: bytes.len(),
        });
    };
    if magic[0] != 0 || magic[1] != 0 {
        return Err(IdxError::BadMagic(*magic));
    }
    if magic[2] != DTYPE_U8 {
        return Err(IdxError::UnsupportedDtype(magic[2]));
    }
    let rank = usize::from(magic[3]);
    if !(1..=MAX_RANK).contains(&rank) {
        return Err(IdxError::BadRank(rank));
    }
    let header_len = 4 + 4 * rank;
    let Some(dim_bytes) = bytes.get(4..header_len) else {
        return Err(IdxError::Truncated {
            expected: header_len,
            actual: bytes.len(),
        });
    };
    let mut dims = Vec::with_capacity(rank);
    for (axis, chunk) in dim_bytes.chunks_exact(4).enumerate() {
        let dim = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        if dim == 0 {
            return Err(IdxError::ZeroDim { axis });
        }
        // u32 -> usize only fails on 16-bit targets; treat it like an overflowing product.
        let dim = usize::try_from(dim).map_err(|_| IdxError::TooLarge { dims: dims.clone() })?;
        dims.push(dim);
    }
    let total = element_count(&dims).and_then(|n| n.checked_add(header_len));
    let Some(total) = total else {
        return Err(IdxError::TooLarge { dims });
    };
    if bytes.len() < total {
        return Err(IdxError::Truncated {
            expected: total,
            actual: bytes.len(),
        });
    }
    if bytes.len() > total {
        return Err(IdxError::TrailingBytes {
            expected: total,
            actual: bytes.len(),
        });
    }
    Ok((dims, header_len))
}

fn element_count(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Parses a complete, uncompressed IDX file held in memory.
pub fn parse_idx(bytes: &[u8]) -> Result<IdxArray, IdxError> {
    let (dims, header_len) = parse_header(bytes)?;
    Ok(IdxArray {
        dims,
        data: bytes[header_len..].to_vec(),
    })
}

/// Reads an IDX file, gunzipping it first when its content starts with the gzip magic.
pub fn read_idx(path: &Path) -> Result<IdxArray, IdxError> {
    let mut bytes = read_decompressed(path)?;
    let (dims, header_len) = parse_header(&bytes).map_err(|e| e.in_file(path))?;
    // Shift the data down in place rather than copying 47 MB into a second buffer.
    bytes.drain(..header_len);
    Ok(IdxArray { dims, data: bytes })
}

/// The header for an unsigned-byte array of shape `dims`, with the shape validated.
fn encode_header(dims: &[usize]) -> Result<Vec<u8>, IdxError> {
    if !(1..=MAX_RANK).contains(&dims.len()) {
        return Err(IdxError::BadRank(dims.len()));
    }
    let mut header = vec![0, 0, DTYPE_U8, dims.len() as u8];
    for (axis, &dim) in dims.iter().enumerate() {
        if dim == 0 {
            return Err(IdxError::ZeroDim { axis });
        }
        let dim32 = u32::try_from(dim).map_err(|_| IdxError::DimTooLarge { axis, dim })?;
        header.extend_from_slice(&dim32.to_be_bytes());
    }
    Ok(header)
}

/// The IDX pair that `diffuse sample --idx PREFIX` writes and `diffuse eval --idx PREFIX` reads:
/// (`PREFIX-images-idx3-ubyte`, `PREFIX-labels-idx1-ubyte`).
pub fn sample_file_paths(prefix: &Path) -> (PathBuf, PathBuf) {
    let with = |suffix: &str| {
        let mut s = prefix.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    (with("-images-idx3-ubyte"), with("-labels-idx1-ubyte"))
}

/// Writes `data` of shape `dims` as an uncompressed IDX file. The file appears at `path` complete or
/// not at all: it is written to a temporary file in the same folder, synced, then renamed.
pub fn write_idx(path: &Path, dims: &[usize], data: &[u8]) -> Result<(), IdxError> {
    let header = encode_header(dims)?;
    let expected = element_count(dims).ok_or_else(|| IdxError::TooLarge { dims: dims.to_vec() })?;
    if data.len() != expected {
        return Err(IdxError::LengthMismatch {
            dims: dims.to_vec(),
            expected,
            actual: data.len(),
        });
    }
    let io_err = |action, path: &Path| {
        let path = path.to_path_buf();
        move |error| IdxError::Io { action, path, error }
    };
    let Some(name) = path.file_name() else {
        let error = io::Error::new(io::ErrorKind::InvalidInput, "path has no file name");
        return Err(io_err("write", path)(error));
    };
    let tmp_name = format!(".{}.tmp{}", name.to_string_lossy(), std::process::id());
    let tmp = path.with_file_name(tmp_name);
    let mut partial = PartialFile::create(tmp.clone()).map_err(io_err("create", &tmp))?;
    let file = partial.file().map_err(io_err("write", &tmp))?;
    file.write_all(&header).map_err(io_err("write", &tmp))?;
    file.write_all(data).map_err(io_err("write", &tmp))?;
    partial.commit(path).map_err(io_err("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::gunzip::gzip;

    /// A 2x3 array written by hand from the format description, not by `write_idx`.
    fn tiny_idx() -> Vec<u8> {
        let mut b = vec![0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3];
        b.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
        b
    }

    #[test]
    fn parses_hand_written_file() {
        let a = parse_idx(&tiny_idx()).expect("valid file");
        assert_eq!(a.dims, vec![2, 3]);
        assert_eq!(a.data, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn write_then_read_round_trips_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a-idx3-ubyte");
        let data: Vec<u8> = (0..24).collect();
        write_idx(&path, &[2, 3, 4], &data).expect("write");
        assert_eq!(std::fs::read(&path).expect("read")[..4], [0, 0, 8, 3]);
        let a = read_idx(&path).expect("read back");
        assert_eq!(a.dims, vec![2, 3, 4]);
        assert_eq!(a.data, data);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a-idx3-ubyte")]);
    }

    #[test]
    fn write_rejects_wrong_length_and_bad_shapes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x");
        let e = write_idx(&path, &[2, 3], &[0; 5]).expect_err("5 != 6");
        assert!(matches!(
            e,
            IdxError::LengthMismatch {
                expected: 6,
                actual: 5,
                ..
            }
        ));
        assert!(matches!(write_idx(&path, &[], &[]), Err(IdxError::BadRank(0))));
        assert!(matches!(write_idx(&path, &[1; 5], &[0]), Err(IdxError::BadRank(5))));
        assert!(matches!(
            write_idx(&path, &[0], &[]),
            Err(IdxError::ZeroDim { axis: 0 })
        ));
        assert!(!path.exists());
    }

    #[test]
    fn reads_gzip_by_content_not_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("no-extension");
        std::fs::write(&path, gzip(&tiny_idx())).expect("write");
        let a = read_idx(&path).expect("gzipped file");
        assert_eq!(a.dims, vec![2, 3]);
        assert_eq!(a.data, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn gzip_file_without_idx_inside_names_file_and_magic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t10k-images-idx3-ubyte.gz");
        // A doubly gzipped file: after one gunzip the content still starts with 1f 8b.
        std::fs::write(&path, gzip(&gzip(&tiny_idx()))).expect("write");
        let e = read_idx(&path).expect_err("not IDX");
        assert!(matches!(e.kind(), IdxError::BadMagic([0x1f, 0x8b, 0x08, 0x00])));
        let msg = e.to_string();
        assert!(
            msg.contains("t10k-images-idx3-ubyte.gz: not an IDX file (magic bytes 1f 8b 08 00)"),
            "{msg}"
        );
    }

    #[test]
    fn missing_file_error_names_path() {
        let e = read_idx(Path::new("/nonexistent/dir/f-idx1-ubyte")).expect_err("missing");
        assert!(matches!(e, IdxError::Io { action: "open", .. }));
        assert!(e.to_string().contains("/nonexistent/dir/f-idx1-ubyte"));
    }

    #[test]
    fn truncated_data_and_header() {
        let b = tiny_idx();
        let e = parse_idx(&b[..b.len() - 1]).expect_err("one byte short");
        assert!(matches!(
            e,
            IdxError::Truncated {
                expected: 18,
                actual: 17
            }
        ));
        let e = parse_idx(&b[..6]).expect_err("header cut");
        assert!(matches!(
            e,
            IdxError::Truncated {
                expected: 12,
                actual: 6
            }
        ));
        assert!(matches!(
            parse_idx(&[0, 0]),
            Err(IdxError::Truncated { expected: 4, .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut b = tiny_idx();
        b.push(7);
        let e = parse_idx(&b).expect_err("one byte too many");
        assert!(matches!(
            e,
            IdxError::TrailingBytes {
                expected: 18,
                actual: 19
            }
        ));
        assert!(e.to_string().starts_with("1 trailing bytes"));
    }

    #[test]
    fn wrong_magic_and_dtype_and_rank() {
        let mut b = tiny_idx();
        b[1] = 1;
        assert!(matches!(parse_idx(&b), Err(IdxError::BadMagic([0, 1, 8, 2]))));
        let mut b = tiny_idx();
        b[2] = 0x0d; // float32 in the IDX spec
        let e = parse_idx(&b).expect_err("float dtype");
        assert!(matches!(e, IdxError::UnsupportedDtype(0x0d)));
        assert!(e.to_string().contains("0x0d"));
        let mut b = tiny_idx();
        b[3] = 0;
        assert!(matches!(parse_idx(&b), Err(IdxError::BadRank(0))));
        b[3] = 5;
        assert!(matches!(parse_idx(&b), Err(IdxError::BadRank(5))));
    }

    #[test]
    fn zero_dimension_is_rejected() {
        let b = [0, 0, 8, 2, 0, 0, 0, 3, 0, 0, 0, 0];
        assert!(matches!(parse_idx(&b), Err(IdxError::ZeroDim { axis: 1 })));
    }

    #[test]
    fn huge_dims_in_tiny_header_fail_without_allocating() {
        // 4 x u32::MAX overflows usize: rejected by checked arithmetic.
        let mut b = vec![0, 0, 8, 4];
        b.extend_from_slice(&[0xff; 16]);
        assert!(matches!(parse_idx(&b), Err(IdxError::TooLarge { .. })));
        // One huge dimension fits in usize but not in the file: truncated, and no 4 GB buffer is made.
        let b = [0, 0, 8, 1, 0xff, 0xff, 0xff, 0xff, 1, 2];
        let e = parse_idx(&b).expect_err("claims 4 GB");
        assert!(matches!(
            e,
            IdxError::Truncated {
                expected: 4_294_967_303,
                actual: 10
            }
        ));
    }
}
