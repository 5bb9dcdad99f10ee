//! Models shipped with the tool (`models/NAME/`) and loading any model for inference.
//!
//! A model folder holds `model.safetensors` (weights and BatchNorm buffers), `config.json` (the run's
//! [`TrainConfig`]), and for provenance `losses.csv` and `command.txt` (the exact command that trained it).
//! Everything that samples accepts either such a folder or a training run folder.

use std::path::{Path, PathBuf};

use tch::Device;

use crate::model::Model;
use crate::train::trainer::{load_model, TrainError};
use crate::train::TrainConfig;

/// The model used when none is named: the class-conditioned DDPM trained with the assignment's full budget.
pub const DEFAULT_MODEL: &str = "cfg-d64";
pub const MODEL_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";

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
        .filter(|e| e.path().join(MODEL_FILE).is_file() && e.path().join(CONFIG_FILE).is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// A shipped model's folder, by name.
pub fn path_of(name: &str) -> Result<PathBuf, TrainError> {
    if name.contains('/') || name.contains("..") {
        return Err(TrainError::Config(format!(
            "model name `{name}` must be a plain name (see `diffuse models`)"
        )));
    }
    let dir = models_dir().join(name);
    if dir.join(MODEL_FILE).is_file() {
        Ok(dir)
    } else {
        let available = list();
        Err(TrainError::Config(format!(
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

/// A model ready to sample from, with where it came from.
pub struct Loaded {
    pub model: Model,
    pub config: TrainConfig,
    /// e.g. "runs/cfg epoch 20" or "models/cfg-d64".
    pub label: String,
}

/// Loads a model folder or a run folder (its checkpoint `epoch`, or the newest).
pub fn load(path: &Path, epoch: Option<usize>, device: Device) -> Result<Loaded, TrainError> {
    if path.join(MODEL_FILE).is_file() && path.join(CONFIG_FILE).is_file() {
        let config_path = path.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path).map_err(|e| TrainError::State {
            path: config_path.clone(),
            message: e.to_string(),
        })?;
        let config: TrainConfig = serde_json::from_str(&text).map_err(|e| TrainError::State {
            path: config_path,
            message: e.to_string(),
        })?;
        let mut model = Model::new(&config.model, device);
        model.load(&path.join(MODEL_FILE))?;
        return Ok(Loaded {
            model,
            config,
            label: path.display().to_string(),
        });
    }
    let (epoch, model, config) = load_model(path, epoch, device)?;
    Ok(Loaded {
        model,
        config,
        label: format!("{} epoch {epoch}", path.display()),
    })
}
