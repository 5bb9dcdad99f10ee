//! Reading a data file's content, gunzipped when it starts with the gzip magic 1f 8b (the name is not
//! trusted: MNIST mirrors have served raw files under `.gz` names and vice versa). Both the bytes read from
//! disk and the bytes decompressed are capped at [`MAX_CONTENT_BYTES`], and the cap is enforced while
//! streaming, so a gzip bomb fails after 256 MiB instead of exhausting memory.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use super::idx::IdxError;

/// Cap on a file's content, compressed or not. The largest MNIST file is 47 MB uncompressed; 256 MiB
/// leaves room for bigger datasets in the same format while still stopping a gzip bomb.
pub const MAX_CONTENT_BYTES: u64 = 256 * 1024 * 1024;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// True when `bytes` starts with the gzip magic 1f 8b.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&GZIP_MAGIC)
}

/// The file's content, decompressed if it is gzip. This is what the published "uncompressed"
/// checksums are computed over.
pub fn read_decompressed(path: &Path) -> Result<Vec<u8>, IdxError> {
    let io_err = |action| {
        move |error| IdxError::Io {
            action,
            path: path.to_path_buf(),
            error,
        }
    };
    let file = File::open(path).map_err(io_err("open"))?;
    let raw = read_at_most(file, MAX_CONTENT_BYTES)
        .map_err(io_err("read"))?
        .ok_or_else(|| {
            IdxError::ExceedsLimit {
                limit: MAX_CONTENT_BYTES,
            }
            .in_file(path)
        })?;
    if !is_gzip(&raw) {
        return Ok(raw);
    }
    gunzip_bounded(&raw, MAX_CONTENT_BYTES).map_err(|e| e.in_file(path))
}

/// Decompresses every gzip member in `gz` (a multi-member file is valid gzip), failing as soon as the
/// output would exceed `limit`.
pub fn gunzip_bounded(gz: &[u8], limit: u64) -> Result<Vec<u8>, IdxError> {
    read_at_most(MultiGzDecoder::new(gz), limit)
        .map_err(|error| IdxError::Gzip { error })?
        .ok_or(IdxError::ExceedsLimit { limit })
}

/// Everything `reader` yields if that is at most `limit` bytes, `None` if there is more. Reads at most
/// one byte past the limit, so memory stays bounded whatever the input claims.
fn read_at_most(reader: impl Read, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    reader.take(limit.saturating_add(1)).read_to_end(&mut out)?;
    Ok((out.len() as u64 <= limit).then_some(out))
}

/// Gzips bytes in memory (test fixtures).
#[cfg(test)]
pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).expect("gzip in memory");
    enc.finish().expect("gzip in memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_bomb_stops_at_the_limit() {
        // 1 MiB of zeros compresses to about 1 kB: the ratio a bomb relies on.
        let bomb = gzip(&vec![0u8; 1 << 20]);
        let e = gunzip_bounded(&bomb, 1000).expect_err("over limit");
        assert!(matches!(e, IdxError::ExceedsLimit { limit: 1000 }));
        let exact = gunzip_bounded(&bomb, 1 << 20).expect("exactly at the limit");
        assert_eq!(exact.len(), 1 << 20);
    }

    #[test]
    fn multi_member_gzip_is_read_whole() {
        let mut gz = gzip(b"abc");
        gz.extend(gzip(b"def"));
        assert_eq!(gunzip_bounded(&gz, 100).expect("two members"), b"abcdef");
    }

    #[test]
    fn raw_file_is_returned_as_is_and_truncated_gzip_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = dir.path().join("raw.gz");
        std::fs::write(&raw, b"\x00\x00\x08\x01").expect("write");
        assert_eq!(read_decompressed(&raw).expect("raw"), b"\x00\x00\x08\x01");

        let cut = dir.path().join("cut");
        let gz = gzip(&[7u8; 5000]);
        std::fs::write(&cut, &gz[..gz.len() / 2]).expect("write");
        let e = read_decompressed(&cut).expect_err("truncated gzip");
        assert!(matches!(e.kind(), IdxError::Gzip { .. }), "{e}");
        assert!(e.to_string().contains("cut: corrupt gzip data"), "{e}");
    }
}
