//! Models shipped with the tool (`models/NAME/`): where they live and which there are.
//!
//! A model folder holds `model.safetensors` (weights and BatchNorm buffers), `config.json` (the run's
//! [`super::TrainConfig`]), and for provenance `losses.csv` and `command.txt` (the exact command that trained it).
//! [`super::load`] reads it.

use std::path::{Path, PathBuf};

use super::{is_model_folder, RunError, MODEL_FILE};

/// The model used when none is named: the class-conditioned DDPM trained with the assignment's full budget.
pub const DEFAULT_MODEL: &str = "cfg-d64";

/// Where shipped models live: `$DIFFUSE_MODELS`, else `./models` when it exists, else `models/` beside the
/// executable (the release bundle's layout), else the source tree's `models/`.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DIFFUSE_MODELS") {
        return PathBuf::from(dir);
    }
    let local = PathBuf::from("models");
    if local.is_dir() {
        return local;
    }
    let beside_exe = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("models")));
    if let Some(dir) = beside_exe.filter(|d| d.is_dir()) {
        return dir;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// Names of the shipped models (folders of [`models_dir`] holding a model file and a config).
pub fn list() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(models_dir())
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| is_model_folder(&e.path()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// A shipped model's folder, by name.
pub fn path_of(name: &str) -> Result<PathBuf, RunError> {
    if name.contains('/') || name.contains("..") {
        return Err(RunError::Model(format!(
            "model name `{name}` must be a plain name, one of: {} (a folder goes to --run)",
            list().join(", ")
        )));
    }
    let dir = models_dir().join(name);
    if dir.join(MODEL_FILE).is_file() {
        Ok(dir)
    } else {
        let available = list();
        Err(RunError::Model(format!(
            "no model named `{name}` in {} (available: {})",
            models_dir().display(),
            if available.is_empty() {
                "none".to_string()
            } else {
                available.join(", ")
            }
        )))
    }
}

/// The folder to load from a `--run` folder or a `--model` name (the default model when neither is given), with a
/// name for it.
pub fn resolve(run: Option<&Path>, model: Option<&str>) -> Result<(PathBuf, String), RunError> {
    match (run, model) {
        (Some(run), _) => Ok((run.to_path_buf(), run.display().to_string())),
        (None, name) => {
            let name = name.unwrap_or(DEFAULT_MODEL);
            Ok((path_of(name)?, name.to_string()))
        }
    }
}
