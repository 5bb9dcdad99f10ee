//! The run folder and the model folder: the one place that knows their file names and formats.
//!
//! ```text
//! RUN_DIR/                    (diffuse train ... --out RUN_DIR)
//!   config.json               the run's TrainConfig, rewritten when `--resume RUN --epochs N` extends it
//!   losses.csv                step,epoch,loss: one row per optimizer step, rewritten whole after each epoch
//!   metrics.csv               held-out numbers per epoch (the denoiser's test MSE)
//!   figures/                  PNG and GIF figures (src/run_figures)
//!   checkpoints/epoch-NNN/    model.safetensors, optimizer.safetensors, ema.safetensors (runs with EMA),
//!                             state.json (epoch, optimizer step, RNG, loss history, config); see [`checkpoint`]
//! models/NAME/                (a shipped model; see [`shipped`])
//!   model.safetensors, config.json, losses.csv, command.txt
//! ```
//!
//! Everything that samples accepts either folder ([`load`]).

pub mod checkpoint;
pub mod config;
pub mod shipped;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Device;
use thiserror::Error;

use crate::io::atomic_file::write_atomic;
use crate::io::tensor_file::TensorFileError;
use crate::model::Model;
use crate::runtime::layout::Layout;
use crate::runtime::rng::RunRng;

pub use checkpoint::CheckpointError;
pub use config::{ModelKind, Objective, TrainConfig};

/// Weights and BatchNorm buffers (checkpoints, model folders, the classifier's folder).
pub const MODEL_FILE: &str = "model.safetensors";
/// Adam moments (checkpoints).
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The weight average, for runs that keep one (checkpoints).
pub const EMA_FILE: &str = "ema.safetensors";
/// [`CheckpointState`] as JSON (checkpoints).
pub const STATE_FILE: &str = "state.json";
/// The [`TrainConfig`] as JSON (run and model folders).
pub const CONFIG_FILE: &str = "config.json";
pub const LOSSES_FILE: &str = "losses.csv";
pub const METRICS_FILE: &str = "metrics.csv";
pub const FIGURES_DIR: &str = "figures";
/// The loss curve in `figures/`, first in the report.
pub const LOSS_FIGURE: &str = "loss.png";
/// The exact command that trained a shipped model (model folders).
pub const COMMAND_FILE: &str = "command.txt";

/// The version of [`CheckpointState`]'s format.
const STATE_FORMAT: u32 = 1;

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Tensors(#[from] TensorFileError),
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Model(String),
    #[error(
        "{0} is in use by another diffuse process that is training there (one training per run folder; wait for \
         it or stop it)"
    )]
    InUse(PathBuf),
}

/// Everything besides tensors that a checkpoint restores (`state.json`); the learning rate follows from the config.
#[derive(Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    format: u32,
    pub epoch: usize,
    pub optimizer_step: i64,
    pub rng: RunRng,
    /// One loss per optimizer step, the whole run so far.
    pub losses: Vec<f32>,
    /// Wall seconds of each epoch (training only).
    #[serde(default)]
    pub epoch_seconds: Vec<f64>,
    pub config: TrainConfig,
}

impl CheckpointState {
    pub fn new(
        epoch: usize,
        optimizer_step: i64,
        rng: RunRng,
        losses: Vec<f32>,
        epoch_seconds: Vec<f64>,
        config: TrainConfig,
    ) -> Self {
        Self {
            format: STATE_FORMAT,
            epoch,
            optimizer_step,
            rng,
            losses,
            epoch_seconds,
            config,
        }
    }

    pub fn write(&self, checkpoint_dir: &Path) -> Result<(), RunError> {
        write_json(&checkpoint_dir.join(STATE_FILE), self)
    }

    pub fn read(checkpoint_dir: &Path) -> Result<Self, RunError> {
        let path = checkpoint_dir.join(STATE_FILE);
        let state: Self = read_json(&path)?;
        if state.format != STATE_FORMAT {
            return Err(RunError::Read {
                path,
                message: format!("state format {} is not {STATE_FORMAT}", state.format),
            });
        }
        Ok(state)
    }
}

/// A training run's folder.
#[derive(Clone, Debug)]
pub struct RunDir {
    path: PathBuf,
}

/// A run folder held by this process ([`RunDir::lock`]); dropping it lets another process train there.
pub struct RunLock {
    _folder: std::fs::File,
}

impl RunDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn figures_dir(&self) -> PathBuf {
        self.path.join(FIGURES_DIR)
    }

    pub fn metrics_path(&self) -> PathBuf {
        self.path.join(METRICS_FILE)
    }

    /// Creates the folder (and its parents) when missing.
    pub fn create(&self) -> Result<(), RunError> {
        std::fs::create_dir_all(&self.path).map_err(|source| RunError::Write {
            path: self.path.clone(),
            source,
        })
    }

    pub fn write_config(&self, config: &TrainConfig) -> Result<(), RunError> {
        write_json(&self.path.join(CONFIG_FILE), config)
    }

    /// Complete checkpoints by epoch, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<(usize, PathBuf)>, RunError> {
        Ok(checkpoint::list(&self.path)?)
    }

    /// The newest complete checkpoint's epoch and folder.
    pub fn latest_checkpoint(&self) -> Result<(usize, PathBuf), RunError> {
        Ok(checkpoint::latest(&self.path)?)
    }

    /// The state of checkpoint `epoch` (`None` = the newest), with its epoch and folder.
    pub fn read_state(&self, epoch: Option<usize>) -> Result<(usize, PathBuf, CheckpointState), RunError> {
        let (epoch, dir) = checkpoint::find(&self.path, epoch)?;
        let state = CheckpointState::read(&dir)?;
        Ok((epoch, dir, state))
    }

    /// The run's config as its newest checkpoint holds it.
    pub fn read_config(&self) -> Result<TrainConfig, RunError> {
        Ok(self.read_state(None)?.2.config)
    }

    /// `losses.csv`, rewritten whole so a resumed run's file matches its history. Every epoch takes the same number
    /// of steps, so the epoch of step i follows from the count.
    pub fn write_losses(&self, losses: &[f32], epochs: usize) -> Result<(), RunError> {
        let steps_per_epoch = (losses.len() / epochs.max(1)).max(1);
        let mut csv = String::from("step,epoch,loss\n");
        for (i, loss) in losses.iter().enumerate() {
            let _ = writeln!(csv, "{},{},{}", i + 1, i / steps_per_epoch + 1, loss);
        }
        let path = self.path.join(LOSSES_FILE);
        write_atomic(&path, csv.as_bytes()).map_err(|source| RunError::Write { path, source })
    }

    /// Appends one row to `metrics.csv`, writing the header first when the file is new.
    pub fn append_metrics(&self, header: &str, row: &str) -> Result<(), RunError> {
        let path = self.metrics_path();
        let append = || -> std::io::Result<()> {
            let new = !path.exists();
            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
            if new {
                writeln!(file, "{header}")?;
            }
            writeln!(file, "{row}")?;
            file.sync_all()
        };
        append().map_err(|source| RunError::Write {
            path: path.clone(),
            source,
        })
    }

    /// Writes `metrics.csv` from rows of cells (header first), replacing it whole.
    pub fn write_metrics(&self, rows: &[Vec<String>]) -> Result<(), RunError> {
        let mut csv = String::new();
        for row in rows {
            let _ = writeln!(csv, "{}", row.join(","));
        }
        let path = self.metrics_path();
        write_atomic(&path, csv.as_bytes()).map_err(|source| RunError::Write { path, source })
    }

    /// Drops the rows of `metrics.csv` after epoch `epochs` (its first column): rows of epochs that no checkpoint
    /// holds, which a resume from that checkpoint trains and measures again.
    pub fn keep_metrics_through(&self, epochs: usize) -> Result<(), RunError> {
        let Some(rows) = self.read_metrics()? else {
            return Ok(());
        };
        let keep = |row: &Vec<String>| row[0].parse::<usize>().map_or(true, |epoch| epoch <= epochs);
        if rows.iter().skip(1).all(keep) {
            return Ok(());
        }
        let kept: Vec<Vec<String>> = rows
            .iter()
            .enumerate()
            .filter(|(i, row)| *i == 0 || keep(row))
            .map(|(_, row)| row.clone())
            .collect();
        self.write_metrics(&kept)
    }

    /// Takes the run folder for this process until the lock is dropped, refusing a folder another process holds
    /// (an advisory `flock` on the folder itself: released by the kernel when the process ends, however it ends).
    /// The folder must exist. Where the file system has no such locks, training goes on unlocked.
    pub fn lock(&self) -> Result<RunLock, RunError> {
        let folder = std::fs::File::open(&self.path).map_err(|e| RunError::Read {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        use std::os::fd::AsRawFd as _;
        // SAFETY: a plain call on a descriptor this function owns.
        if unsafe { libc::flock(folder.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::WouldBlock {
                return Err(RunError::InUse(self.path.clone()));
            }
            tracing::debug!("no lock on {}: {error}; training unlocked", self.path.display());
        }
        Ok(RunLock { _folder: folder })
    }

    /// `metrics.csv` as rows of cells, header first; `None` when the run has none.
    pub fn read_metrics(&self) -> Result<Option<Vec<Vec<String>>>, RunError> {
        let path = self.metrics_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(
                text.lines()
                    .map(|line| line.split(',').map(str::to_string).collect())
                    .collect(),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RunError::Read {
                path,
                message: e.to_string(),
            }),
        }
    }

    /// The PNG and GIF files in `figures/`, the loss curve first, then by name (epoch figures sort by their
    /// zero-padded epoch); none when the run has no `figures/`.
    pub fn figure_files(&self) -> Result<Vec<PathBuf>, RunError> {
        let dir = self.figures_dir();
        let unreadable = |e: std::io::Error| RunError::Read {
            path: dir.clone(),
            message: e.to_string(),
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(unreadable(e)),
        };
        let mut figures = Vec::new();
        for entry in entries {
            let path = entry.map_err(unreadable)?.path();
            if matches!(path.extension().and_then(|e| e.to_str()), Some("png" | "gif")) {
                figures.push(path);
            }
        }
        figures.sort_by_key(|p| (p.file_name().is_none_or(|n| n != LOSS_FIGURE), p.clone()));
        Ok(figures)
    }
}

/// Per-step losses `(step, loss)` from a run folder's `losses.csv` or from any CSV file with `step` and `loss`
/// columns.
pub fn read_loss_curve(path: &Path) -> Result<Vec<(f64, f64)>, RunError> {
    let file = if path.is_dir() {
        path.join(LOSSES_FILE)
    } else {
        path.to_path_buf()
    };
    let bad = |message: String| RunError::Read {
        path: file.clone(),
        message,
    };
    let text = std::fs::read_to_string(&file).map_err(|e| bad(e.to_string()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let (Some(step), Some(loss)) = (
        header.iter().position(|h| *h == "step"),
        header.iter().position(|h| *h == "loss"),
    ) else {
        return Err(bad("expected a CSV with `step` and `loss` columns".into()));
    };
    lines
        .enumerate()
        .map(|(i, line)| {
            let cells: Vec<&str> = line.split(',').collect();
            let parse = |c: usize| cells.get(c).and_then(|v| v.trim().parse::<f64>().ok());
            match (parse(step), parse(loss)) {
                (Some(s), Some(l)) => Ok((s, l)),
                _ => Err(bad(format!("line {} is not `step,...,loss`", i + 2))),
            }
        })
        .collect()
}

/// A model ready to sample from, with where it came from.
pub struct Loaded {
    pub model: Model,
    pub config: TrainConfig,
    /// e.g. "runs/cfg epoch 20" or "models/cfg-d64".
    pub label: String,
}

/// Loads a model folder, or a run folder's checkpoint `epoch` (`None` = the newest), for inference on `device` in
/// `layout`. Runs that keep a weight average sample from it.
pub fn load(path: &Path, epoch: Option<usize>, device: Device, layout: Layout) -> Result<Loaded, RunError> {
    if is_model_folder(path) {
        if let Some(epoch) = epoch {
            return Err(RunError::Model(format!(
                "{} is a model folder (one set of final weights), not a run with checkpoints: drop --epoch {epoch}",
                path.display()
            )));
        }
        let config: TrainConfig = read_json(&path.join(CONFIG_FILE))?;
        let mut model = Model::with_layout(&config.model, device, layout);
        model.load(&path.join(MODEL_FILE))?;
        return Ok(Loaded {
            model,
            config,
            label: path.display().to_string(),
        });
    }
    if path.join(crate::eval::classifier::INFO_FILE).is_file() {
        return Err(RunError::Model(format!(
            "{} is a digit classifier (for `diffuse eval --classifier`), not a model that draws digits",
            path.display()
        )));
    }
    let (epoch, dir, state) = RunDir::new(path).read_state(epoch)?;
    let mut model = Model::with_layout(&state.config.model, device, layout);
    let ema = dir.join(EMA_FILE);
    model.load(&if ema.is_file() { ema } else { dir.join(MODEL_FILE) })?;
    Ok(Loaded {
        model,
        config: state.config,
        label: format!("{} epoch {epoch}", path.display()),
    })
}

/// A folder holding a model file and its config (a shipped model), as opposed to a run with checkpoints.
pub fn is_model_folder(path: &Path) -> bool {
    path.join(MODEL_FILE).is_file() && path.join(CONFIG_FILE).is_file()
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RunError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| RunError::Write {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    write_atomic(path, text.as_bytes()).map_err(|source| RunError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, RunError> {
    let bad = |message: String| RunError::Read {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_csv_numbers_steps_and_epochs_and_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = RunDir::new(dir.path());
        run.write_losses(&[0.5, 0.25, 0.125, 0.0625], 2).expect("write");
        let text = std::fs::read_to_string(dir.path().join(LOSSES_FILE)).expect("read");
        assert_eq!(text, "step,epoch,loss\n1,1,0.5\n2,1,0.25\n3,2,0.125\n4,2,0.0625\n");
        let curve = read_loss_curve(dir.path()).expect("curve");
        assert_eq!(curve, vec![(1.0, 0.5), (2.0, 0.25), (3.0, 0.125), (4.0, 0.0625)]);
    }

    #[test]
    fn metrics_get_one_header_and_read_back_as_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = RunDir::new(dir.path());
        assert!(run.read_metrics().expect("none yet").is_none());
        run.append_metrics("epoch,mse", "1,0.5").expect("row 1");
        run.append_metrics("epoch,mse", "2,0.25").expect("row 2");
        let rows = run.read_metrics().expect("read").expect("some");
        assert_eq!(rows, vec![vec!["epoch", "mse"], vec!["1", "0.5"], vec!["2", "0.25"]]);
    }

    #[test]
    fn a_checkpoint_state_of_another_format_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut state = CheckpointState::new(
            1,
            10,
            RunRng::new(0),
            vec![0.5],
            vec![1.0],
            ModelKind::Cfg.spec_config(),
        );
        state.format = STATE_FORMAT + 1;
        state.write(dir.path()).expect("write");
        let err = CheckpointState::read(dir.path()).err().expect("refused").to_string();
        assert!(err.contains(STATE_FILE) && err.contains("format"), "{err}");
    }
}
