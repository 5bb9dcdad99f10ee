//! Crash-safe file replacement: write a sibling temp file, fsync it, rename it over the target, fsync the folder.
//! A reader (or a resumed run) sees the old file or the new one, never a torn one.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

/// A hidden sibling of `path` for staging its replacement.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// fsyncs `tmp`, renames it to `path` and fsyncs the folder; removes `tmp` on failure.
pub fn commit(tmp: &Path, path: &Path) -> io::Result<()> {
    let result = File::open(tmp)
        .and_then(|f| f.sync_all())
        .and_then(|()| fs::rename(tmp, path))
        .and_then(|()| sync_dir(path.parent().unwrap_or(Path::new("."))));
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

/// Replaces `path` with `bytes` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_path(path);
    if let Err(e) = fs::write(&tmp, bytes) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    commit(&tmp, path)
}

/// fsyncs a folder, making renames inside it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.json");
        write_atomic(&path, b"one").expect("write");
        write_atomic(&path, b"two").expect("rewrite");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
        assert!(write_atomic(&dir.path().join("missing/a.json"), b"x").is_err());
    }
}
