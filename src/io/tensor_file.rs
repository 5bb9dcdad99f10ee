//! Named-tensor files (safetensors): atomic writes and loads that check every name and shape.
//!
//! Writes go to a temporary file in the same folder, are fsynced, then renamed over the target, so a crash leaves
//! either the old file or the new one, never a torn one. Loads refuse files that do not hold exactly the tensors
//! the receiver expects, with a message that names the first difference.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use tch::{Device, Tensor};

use crate::io::atomic_file::{commit, temp_path};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TensorFileError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path}: not a readable safetensors file ({message})")]
    Format { path: PathBuf, message: String },
    #[error("{path}: tensor `{name}` is missing")]
    Missing { path: PathBuf, name: String },
    #[error("{path}: unexpected tensor `{name}` (saved by a different model?)")]
    Unexpected { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        name: String,
        found: Vec<i64>,
        expected: Vec<i64>,
    },
    #[error("{path}: tensor `{name}` has dtype {found:?}, expected {expected:?}")]
    Dtype {
        path: PathBuf,
        name: String,
        found: tch::Kind,
        expected: tch::Kind,
    },
}

/// Writes `tensors` to `path` atomically (temp file, fsync, rename).
pub fn write(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<(), TensorFileError> {
    let host: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(name, t)| (name.clone(), t.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    let tmp = temp_path(path);
    let write = |source| TensorFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Err(e) = Tensor::write_safetensors(&host, &tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(match e {
            // A full disk, a read-only folder, a file-size limit: the operating system's own words.
            tch::TchError::SafeTensorError {
                err: safetensors::SafeTensorError::IoError(source),
                ..
            } => write(source),
            other => write(io::Error::other(other.to_string())),
        });
    }
    commit(&tmp, path).map_err(write)
}

/// Reads every tensor of a safetensors file, by name.
pub fn read(path: &Path) -> Result<BTreeMap<String, Tensor>, TensorFileError> {
    if !path.exists() {
        return Err(TensorFileError::Io {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::NotFound, "no such file"),
        });
    }
    let tensors = Tensor::read_safetensors(path).map_err(|e| TensorFileError::Format {
        path: path.to_path_buf(),
        message: first_line(&e.to_string()),
    })?;
    Ok(tensors.into_iter().collect())
}

/// Loads a file into `targets` (copying in place, so views held elsewhere see the new values). The file must
/// hold exactly the names of `targets`, each with the same shape and dtype.
pub fn load_into(path: &Path, targets: &BTreeMap<String, Tensor>) -> Result<(), TensorFileError> {
    let loaded = read(path)?;
    check_matches(path, &loaded, targets)?;
    tch::no_grad(|| {
        for (name, target) in targets {
            let mut target = target.shallow_clone();
            target.copy_(&loaded[name]);
        }
    });
    Ok(())
}

/// Checks that `loaded` holds exactly the tensors of `expected`, with equal shapes and dtypes.
pub fn check_matches(
    path: &Path,
    loaded: &BTreeMap<String, Tensor>,
    expected: &BTreeMap<String, Tensor>,
) -> Result<(), TensorFileError> {
    let path = path.to_path_buf();
    for (name, want) in expected {
        let Some(got) = loaded.get(name) else {
            return Err(TensorFileError::Missing {
                path,
                name: name.clone(),
            });
        };
        if got.size() != want.size() {
            return Err(TensorFileError::Shape {
                path,
                name: name.clone(),
                found: got.size(),
                expected: want.size(),
            });
        }
        if got.kind() != want.kind() {
            return Err(TensorFileError::Dtype {
                path,
                name: name.clone(),
                found: got.kind(),
                expected: want.kind(),
            });
        }
    }
    if let Some(name) = loaded.keys().find(|name| !expected.contains_key(*name)) {
        return Err(TensorFileError::Unexpected {
            path,
            name: name.clone(),
        });
    }
    Ok(())
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or("").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use tch::Kind;

    fn sample() -> BTreeMap<String, Tensor> {
        let mut m = BTreeMap::new();
        m.insert(
            "a.weight".to_string(),
            Tensor::randn([3, 4], (Kind::Float, Device::Cpu)),
        );
        m.insert("b.bias".to_string(), Tensor::randn([5], (Kind::Float, Device::Cpu)));
        m
    }

    #[test]
    fn round_trip_is_bit_exact_and_loads_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.safetensors");
        let saved = sample();
        write(&path, &saved).expect("write");
        let targets: BTreeMap<String, Tensor> = saved.iter().map(|(k, v)| (k.clone(), v.zeros_like())).collect();
        load_into(&path, &targets).expect("load");
        for (name, t) in &saved {
            assert!(t.equal(&targets[name]), "{name}");
        }
        let leftovers: Vec<_> = fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(leftovers.len(), 1, "temp file left behind");
    }

    #[test]
    fn refuses_missing_extra_and_misshapen_tensors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.safetensors");
        write(&path, &sample()).expect("write");

        let mut more = sample();
        more.insert("c".to_string(), Tensor::zeros([1], (Kind::Float, Device::Cpu)));
        assert!(matches!(load_into(&path, &more), Err(TensorFileError::Missing { .. })));

        let mut fewer = sample();
        fewer.remove("b.bias");
        assert!(matches!(
            load_into(&path, &fewer),
            Err(TensorFileError::Unexpected { .. })
        ));

        let mut reshaped = sample();
        reshaped.insert(
            "a.weight".to_string(),
            Tensor::zeros([4, 3], (Kind::Float, Device::Cpu)),
        );
        let err = load_into(&path, &reshaped).expect_err("shape");
        assert!(err.to_string().contains("a.weight"), "{err}");
    }

    #[test]
    fn corrupt_and_missing_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.safetensors");
        assert!(matches!(read(&path), Err(TensorFileError::Io { .. })));
        fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}     ").expect("write");
        assert!(matches!(read(&path), Err(TensorFileError::Format { .. })));
        write(&path, &sample()).expect("write");
        let bytes = fs::read(&path).expect("read");
        fs::write(&path, &bytes[..bytes.len() - 7]).expect("truncate");
        assert!(read(&path).is_err());
    }
}
