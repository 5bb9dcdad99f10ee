//! Fetching the four gzipped MNIST files from a list of mirrors (the backend of `diffuse data download`).
//! Each file is tried on every mirror in order; a download counts only once its uncompressed content has
//! the canonical MD5, so a mirror serving an error page, a truncated transfer or different data is
//! skipped like one that is down. Files are streamed to `.name.partial` in the target folder and renamed
//! into place after an fsync, so whatever happens, the folder never holds a partial or unverified file
//! under a name a loader would read.

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use super::gunzip::{is_gzip, read_decompressed};
use super::idx::IdxError;
use super::mnist::{self, MNIST_MD5_UNCOMPRESSED};
use super::{md5_hex, DataError, PartialFile};

/// Mirrors tried when none is given. The classic yann.lecun.com site is often down, so it comes last.
pub const DEFAULT_MIRRORS: &[&str] = &[
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
];

/// The largest gzipped MNIST file is 9.9 MB; anything past 64 MiB is not MNIST.
const MAX_DOWNLOAD_BYTES: u64 = 64 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Per read, not per file: a slow but steady transfer may take as long as it needs, a stalled one fails.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Why one mirror could not provide one file.
#[derive(Debug, Error)]
pub enum MirrorError {
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("{0}")]
    Request(ureq::Error),
    #[error("transfer failed: {0}")]
    Transfer(io::Error),
    #[error("not gzip data, perhaps an error page")]
    NotGzip,
    #[error("{}", .0.kind())]
    Corrupt(IdxError),
    #[error("checksum mismatch: uncompressed MD5 {actual}, expected {expected}")]
    Checksum { expected: String, actual: String },
}

/// One failed try: which mirror, and why.
#[derive(Debug)]
pub struct MirrorAttempt {
    pub mirror: String,
    pub error: MirrorError,
}

pub(crate) fn fmt_attempts(attempts: &[MirrorAttempt]) -> String {
    let parts: Vec<String> = attempts.iter().map(|a| format!("{} ({})", a.mirror, a.error)).collect();
    parts.join("; ")
}

/// What happened to each file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadAction {
    /// A valid copy (gzipped or raw) was already in the folder.
    AlreadyPresent,
    Downloaded {
        mirror: String,
        bytes: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOutcome {
    /// File name without `.gz`.
    pub name: &'static str,
    /// Where the verified file now is.
    pub path: PathBuf,
    pub action: DownloadAction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadReport {
    pub dir: PathBuf,
    pub files: Vec<FileOutcome>,
}

impl fmt::Display for DownloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "data folder: {}", self.dir.display())?;
        for (i, o) in self.files.iter().enumerate() {
            let file = o
                .path
                .file_name()
                .map_or_else(|| o.name.into(), |n| n.to_string_lossy());
            match &o.action {
                DownloadAction::AlreadyPresent => write!(f, "{file:28}  already present, MD5 ok")?,
                DownloadAction::Downloaded { mirror, bytes } => {
                    write!(f, "{file:28}  downloaded {bytes} bytes from {mirror}, MD5 ok")?
                }
            }
            if i + 1 < self.files.len() {
                writeln!(f)?;
            }
        }
        Ok(())
    }
}

/// Makes `dir` hold verified gzipped copies of the four MNIST files, downloading what is missing or
/// invalid from `mirrors` (tried in order; an empty list means [`DEFAULT_MIRRORS`]). Stops at the first
/// file that no mirror could provide; files completed before that stay, since they are verified.
pub fn download(dir: &Path, mirrors: &[String]) -> Result<DownloadReport, DataError> {
    let mirrors: Vec<String> = if mirrors.is_empty() {
        DEFAULT_MIRRORS.iter().map(|m| m.to_string()).collect()
    } else {
        mirrors.to_vec()
    };
    fs::create_dir_all(dir).map_err(|error| DataError::Io {
        action: "create",
        path: dir.to_path_buf(),
        error,
    })?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(READ_TIMEOUT))
        .timeout_per_read(Some(READ_TIMEOUT))
        .build()
        .into();

    let mut files = Vec::with_capacity(MNIST_MD5_UNCOMPRESSED.len());
    for &(name, md5) in &MNIST_MD5_UNCOMPRESSED {
        if let Some(path) = existing_valid_copy(dir, name, md5) {
            tracing::info!(file = %path.display(), "already present and valid");
            files.push(FileOutcome {
                name,
                path,
                action: DownloadAction::AlreadyPresent,
            });
            continue;
        }
        files.push(fetch_from_mirrors(&agent, dir, name, md5, &mirrors)?);
    }
    Ok(DownloadReport {
        dir: dir.to_path_buf(),
        files,
    })
}

/// The copy a loader would pick (`.gz` first), if it has the right content. An invalid `.gz` returns
/// `None` even when a valid raw file exists, because the loader would still read the `.gz`.
fn existing_valid_copy(dir: &Path, name: &str, md5: &str) -> Option<PathBuf> {
    let path = mnist::find_file(dir, name)?;
    match read_decompressed(&path) {
        Ok(bytes) if md5_hex(&bytes) == md5 => Some(path),
        Ok(_) => {
            tracing::warn!(file = %path.display(), "checksum mismatch, downloading again");
            None
        }
        Err(e) => {
            tracing::warn!(file = %path.display(), "{e}; downloading again");
            None
        }
    }
}

/// `base` joined with `name`, whether or not `base` ends with '/'.
fn file_url(base: &str, name: &str) -> String {
    format!("{}/{name}", base.trim_end_matches('/'))
}

fn fetch_from_mirrors(
    agent: &ureq::Agent,
    dir: &Path,
    name: &'static str,
    md5: &str,
    mirrors: &[String],
) -> Result<FileOutcome, DataError> {
    let gz_name = format!("{name}.gz");
    let dest = dir.join(&gz_name);
    let partial_path = dir.join(format!(".{gz_name}.partial"));
    let mut attempts = Vec::new();
    for mirror in mirrors {
        let url = file_url(mirror, &gz_name);
        tracing::info!(%url, "downloading");
        // Created per attempt, so a failed attempt's bytes are deleted before the next one starts.
        let mut partial = PartialFile::create(partial_path.clone()).map_err(|error| DataError::Io {
            action: "create",
            path: partial_path.clone(),
            error,
        })?;
        match fetch_one(agent, &url, &mut partial, md5) {
            Ok(bytes) => {
                partial.commit(&dest).map_err(|error| DataError::Io {
                    action: "write",
                    path: dest.clone(),
                    error,
                })?;
                tracing::info!(file = %dest.display(), bytes, "downloaded and verified");
                return Ok(FileOutcome {
                    name,
                    path: dest,
                    action: DownloadAction::Downloaded {
                        mirror: mirror.clone(),
                        bytes,
                    },
                });
            }
            Err(error) => {
                tracing::warn!(%mirror, file = %gz_name, "mirror failed: {error}");
                attempts.push(MirrorAttempt {
                    mirror: mirror.clone(),
                    error,
                });
            }
        }
    }
    Err(DataError::AllMirrorsFailed {
        name: gz_name,
        attempts,
    })
}

/// Streams `url` into `partial`, then checks it is gzip whose content has MD5 `md5`. Returns the
/// compressed size.
fn fetch_one(agent: &ureq::Agent, url: &str, partial: &mut PartialFile, md5: &str) -> Result<u64, MirrorError> {
    let response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::StatusCode(code) => MirrorError::Status(code),
        e => MirrorError::Request(e),
    })?;
    let mut body = response
        .into_body()
        .into_with_config()
        .limit(MAX_DOWNLOAD_BYTES)
        .reader();
    let file = partial.file().map_err(MirrorError::Transfer)?;
    let bytes = io::copy(&mut body, file).map_err(MirrorError::Transfer)?;

    let mut magic = [0u8; 2];
    let is_gzip = fs::File::open(partial.path())
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| is_gzip(&magic));
    if !is_gzip {
        return Err(MirrorError::NotGzip);
    }
    let content = read_decompressed(partial.path()).map_err(MirrorError::Corrupt)?;
    let actual = md5_hex(&content);
    if actual != md5 {
        return Err(MirrorError::Checksum {
            expected: md5.to_string(),
            actual,
        });
    }
    Ok(bytes)
}

// The end-to-end tests, against a local HTTP server, are in tests/cli/data_download.rs.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_urls_with_and_without_trailing_slash() {
        let want = "http://h/mnist/t10k-labels-idx1-ubyte.gz";
        assert_eq!(file_url("http://h/mnist/", "t10k-labels-idx1-ubyte.gz"), want);
        assert_eq!(file_url("http://h/mnist", "t10k-labels-idx1-ubyte.gz"), want);
    }

    #[test]
    fn all_mirrors_failed_lists_every_reason() {
        let e = DataError::AllMirrorsFailed {
            name: "x.gz".into(),
            attempts: vec![
                MirrorAttempt {
                    mirror: "http://a/".into(),
                    error: MirrorError::Status(404),
                },
                MirrorAttempt {
                    mirror: "http://b/".into(),
                    error: MirrorError::NotGzip,
                },
            ],
        };
        assert_eq!(
            e.to_string(),
            "could not download x.gz from any mirror: http://a/ (HTTP status 404); \
             http://b/ (not gzip data, perhaps an error page)"
        );
    }
}
