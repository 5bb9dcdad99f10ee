//! The training loop and exact resume.
//!
//! A [`Trainer`] owns everything that changes while a run trains: weights, Adam moments, the RNG, the epoch count
//! and the loss history. All of it goes into each epoch's checkpoint, so [`Trainer::resume`] continues as if the
//! run had never stopped: with the same seed and thread count on CPU, the weights after epoch N are the same bytes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};
use thiserror::Error;

use crate::atomic_file::write_atomic;
use crate::checkpoint::{self, CheckpointError, WriteError, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE};
use crate::data::{digits_to_tensor, labels_to_tensor, Digits};
use crate::ema::{Ema, EMA_FILE};
use crate::model::Model;
use crate::optim::Adam;
use crate::precision::autocast;
use crate::rng::RunRng;
use crate::tensor_io::TensorFileError;

use super::config::TrainConfig;
use super::objective::Prepared;

pub const CONFIG_FILE: &str = "config.json";
pub const LOSSES_FILE: &str = "losses.csv";
const STATE_FORMAT: u32 = 1;
/// On CUDA, losses are read back to the host every this many steps.
const CUDA_LOSS_READ_EVERY: usize = 32;

#[derive(Debug, Error)]
pub enum TrainError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("cannot read the losses back from the device: {0}")]
    ReadBack(#[from] tch::TchError),
    #[error(transparent)]
    Tensors(#[from] TensorFileError),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path}: unreadable checkpoint state ({message})")]
    State { path: PathBuf, message: String },
    #[error("{0}")]
    Config(String),
    #[error("{run} already holds a trained run (checkpoint epoch {epoch}); continue it with --resume {run} or pick another --out")]
    Exists { run: String, epoch: usize },
    #[error("cannot resume {run}: {what}")]
    Mismatch { run: String, what: String },
    #[error("loss became {value} at epoch {epoch}, step {step} (global step {global_step}); training stopped. The last good checkpoint is kept{kept}")]
    NonFinite {
        value: f32,
        epoch: usize,
        step: usize,
        global_step: i64,
        kept: String,
    },
}

/// The training split on the training device.
pub struct TrainData {
    /// [N, 1, 28, 28] float in [0, 1]
    pub images: Tensor,
    /// [N] int64
    pub labels: Tensor,
}

impl TrainData {
    pub fn new(digits: &Digits, device: Device) -> Self {
        Self {
            images: digits_to_tensor(digits).to_device(device),
            labels: labels_to_tensor(digits).to_device(device),
        }
    }

    pub fn len(&self) -> usize {
        self.images.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the loop reports as it goes (the binary draws progress bars from it).
pub trait Progress {
    fn epoch_start(&mut self, _epoch: usize, _epochs: usize, _steps: usize) {}
    fn step(&mut self, _loss: f32, _images: usize) {}
    fn epoch_end(&mut self, _epoch: usize, _mean_loss: f64, _images_per_sec: f64) {}
}

/// Everything besides tensors that a checkpoint restores (`state.json`).
#[derive(Serialize, Deserialize)]
struct TrainState {
    format: u32,
    epoch: usize,
    optimizer_step: i64,
    rng: RunRng,
    losses: Vec<f32>,
    /// Wall seconds of each epoch (training only).
    #[serde(default)]
    epoch_seconds: Vec<f64>,
    config: TrainConfig,
}

pub struct Trainer {
    pub config: TrainConfig,
    pub run_dir: PathBuf,
    pub model: Model,
    adam: Adam,
    ema: Option<Ema>,
    objective: Prepared,
    rng: RunRng,
    /// Completed epochs.
    pub epoch: usize,
    /// One loss per optimizer step, the whole run so far.
    pub losses: Vec<f32>,
    /// Wall seconds of each finished epoch.
    pub epoch_seconds: Vec<f64>,
    /// Testing aid for the fault tests: replace the loss at this global step (1-based) with NaN.
    pub inject_nan_at_step: Option<i64>,
    /// Testing aid for the kill tests: pause this long after writing each checkpoint file, so that a kill at a
    /// random moment often lands inside a checkpoint write.
    pub checkpoint_file_delay: Option<std::time::Duration>,
}

impl Trainer {
    /// Starts a new run in `run_dir`, refusing a folder that already holds checkpoints.
    pub fn create(config: TrainConfig, run_dir: &Path, device: Device) -> Result<Self, TrainError> {
        config.validate().map_err(TrainError::Config)?;
        if let Ok((epoch, _)) = checkpoint::latest(run_dir) {
            return Err(TrainError::Exists {
                run: run_dir.display().to_string(),
                epoch,
            });
        }
        std::fs::create_dir_all(run_dir).map_err(|source| TrainError::Write {
            path: run_dir.to_path_buf(),
            source,
        })?;
        let config_path = run_dir.join(CONFIG_FILE);
        write_json(&config_path, &config)?;
        tch::manual_seed(config.seed as i64);
        let model = Model::new(&config.model, device);
        let rng = RunRng::new(config.seed);
        Ok(Self::assemble(config, run_dir, model, rng))
    }

    /// A trainer that never touches the disk (benchmarks).
    pub fn in_memory(config: TrainConfig, device: Device) -> Result<Self, TrainError> {
        config.validate().map_err(TrainError::Config)?;
        tch::manual_seed(config.seed as i64);
        let model = Model::new(&config.model, device);
        let rng = RunRng::new(config.seed);
        Ok(Self::assemble(config, Path::new(""), model, rng))
    }

    fn assemble(config: TrainConfig, run_dir: &Path, model: Model, rng: RunRng) -> Self {
        let adam = Adam::new(model.named_parameters(), config.adam);
        let ema = config.ema.map(|decay| Ema::new(&model, decay));
        let objective = Prepared::new(&config.objective);
        Self {
            config,
            run_dir: run_dir.to_path_buf(),
            model,
            adam,
            ema,
            objective,
            rng,
            epoch: 0,
            losses: Vec::new(),
            epoch_seconds: Vec::new(),
            inject_nan_at_step: None,
            checkpoint_file_delay: None,
        }
    }

    /// Continues the run in `run_dir` from its newest complete checkpoint. `expected_kind` is the objective the
    /// caller asked for ("ddpm", ...); a run of another kind is refused.
    pub fn resume(run_dir: &Path, expected_kind: &str, device: Device) -> Result<Self, TrainError> {
        let (_, dir) = checkpoint::latest(run_dir)?;
        let state = read_state(&dir)?;
        let found = state.config.objective.name();
        if found != expected_kind {
            return Err(TrainError::Mismatch {
                run: run_dir.display().to_string(),
                what: format!(
                    "it trains a `{found}` model, not `{expected_kind}` (use `diffuse train {found} --resume`)"
                ),
            });
        }
        let mut model = Model::new(&state.config.model, device);
        model.load(&dir.join(MODEL_FILE))?;
        let mut trainer = Self::assemble(state.config, run_dir, model, state.rng);
        trainer.adam.load(&dir.join(OPTIMIZER_FILE), state.optimizer_step)?;
        if let Some(ema) = &mut trainer.ema {
            ema.load(&dir.join(EMA_FILE))?;
        }
        trainer.epoch = state.epoch;
        trainer.losses = state.losses;
        trainer.epoch_seconds = state.epoch_seconds;
        Ok(trainer)
    }

    /// The model to draw figures and samples from: the weight average when the run keeps one.
    pub fn sampling_model(&self) -> Option<Model> {
        self.ema.as_ref().map(|ema| ema.to_model(&self.model))
    }

    /// Sets the run's length to `epochs` (`--resume RUN --epochs N`), extending a finished run. The learning-rate
    /// decay keeps the rate it was planned with (see [`TrainConfig::lr_decay_epochs`]), so the epochs already
    /// trained are unchanged and the new ones continue the same exponential decay. Rewrites config.json.
    pub fn set_epochs(&mut self, epochs: usize) -> Result<(), TrainError> {
        if epochs < self.epoch.max(1) {
            return Err(TrainError::Config(format!(
                "--epochs {epochs}: the run has already trained {} epochs; give at least that many",
                self.epoch
            )));
        }
        if epochs == self.config.epochs {
            return Ok(());
        }
        self.config.lr_decay_epochs.get_or_insert(self.config.epochs);
        self.config.epochs = epochs;
        write_json(&self.run_dir.join(CONFIG_FILE), &self.config)
    }

    pub fn is_finished(&self) -> bool {
        self.epoch >= self.config.epochs
    }

    pub fn device(&self) -> Device {
        self.model.device()
    }

    /// Trains one epoch: a fresh shuffle, then one Adam step per batch.
    pub fn train_epoch(&mut self, data: &TrainData, progress: &mut dyn Progress) -> Result<(), TrainError> {
        let n = self.config.subset.map_or(data.len(), |s| s.min(data.len()));
        let batch_size = self.config.batch_size;
        let steps = n.div_ceil(batch_size);
        let lr = self.config.lr_at_epoch(self.epoch);
        let device = self.device();
        progress.epoch_start(self.epoch + 1, self.config.epochs, steps);
        let started = Instant::now();
        let first_loss = self.losses.len();
        let order = self.rng.permutation(n);
        // Reading a loss back waits for the device; on CUDA the values are read in groups so the host can queue
        // work ahead. Each is still checked before the epoch's checkpoint is written.
        let read_every = if device.is_cuda() { CUDA_LOSS_READ_EVERY } else { 1 };
        let mut pending: Vec<(Tensor, usize)> = Vec::with_capacity(read_every);
        for (step, chunk) in order.chunks(batch_size).enumerate() {
            let index = Tensor::from_slice(chunk).to_device(device);
            let x0 = data.images.index_select(0, &index);
            let labels = data.labels.index_select(0, &index);
            pending.push((self.train_step(&x0, &labels, lr), chunk.len()));
            if pending.len() == read_every || step + 1 == steps {
                self.record_losses(&mut pending, step + 1, progress)?;
            }
        }
        self.epoch += 1;
        let seconds = started.elapsed().as_secs_f64();
        self.epoch_seconds.push(seconds);
        let epoch_losses = &self.losses[first_loss..];
        let mean = epoch_losses.iter().map(|&l| l as f64).sum::<f64>() / epoch_losses.len().max(1) as f64;
        progress.epoch_end(self.epoch, mean, n as f64 / seconds.max(1e-9));
        tracing::info!(epoch = self.epoch, mean_loss = mean, seconds, "epoch done");
        Ok(())
    }

    /// One optimizer step on a batch: x0 [B, 1, 28, 28] in [0, 1], labels [B]. Returns the loss, a scalar still on
    /// the device (see [`Trainer::record_losses`]).
    pub fn train_step(&mut self, x0: &Tensor, labels: &Tensor, lr: f64) -> Tensor {
        let device = self.device();
        let batch = self.objective.batch(x0, labels, &mut self.rng);
        self.adam.zero_grad();
        let loss = autocast(self.config.precision, device, || {
            let prediction = self
                .model
                .forward_t(&batch.input, batch.t.as_ref(), batch.class.as_ref(), true);
            prediction.to_kind(Kind::Float).mse_loss(&batch.target, Reduction::Mean)
        });
        loss.backward();
        self.adam.step(lr);
        if let Some(ema) = &mut self.ema {
            ema.update(&self.model, self.adam.step);
        }
        loss.detach()
    }

    /// Reads the pending losses back (one wait for the device), appends them to the history and reports them.
    /// A NaN or infinite loss stops training with an error naming its step; nothing of this epoch is saved, so
    /// the last good checkpoint stays the newest. `done` is the 1-based step in the epoch of the last pending loss.
    fn record_losses(
        &mut self,
        pending: &mut Vec<(Tensor, usize)>,
        done: usize,
        progress: &mut dyn Progress,
    ) -> Result<(), TrainError> {
        let losses: Vec<Tensor> = pending.iter().map(|(l, _)| l.shallow_clone()).collect();
        let values: Vec<f32> = Vec::try_from(Tensor::stack(&losses, 0).to_device(Device::Cpu))?;
        let first_step = done + 1 - pending.len();
        for (i, ((_, images), mut value)) in pending.drain(..).zip(values).enumerate() {
            let global_step = self.losses.len() as i64 + 1;
            if self.inject_nan_at_step == Some(global_step) {
                value = f32::NAN;
            }
            if !value.is_finite() {
                let kept = checkpoint::latest(&self.run_dir)
                    .map(|(_, dir)| format!(": {}", dir.display()))
                    .unwrap_or_else(|_| " (none was written yet)".into());
                let (epoch, step) = (self.epoch + 1, first_step + i);
                return Err(TrainError::NonFinite {
                    value,
                    epoch,
                    step,
                    global_step,
                    kept,
                });
            }
            self.losses.push(value);
            progress.step(value, images);
        }
        Ok(())
    }

    /// Writes the checkpoint of the epoch just finished, then `losses.csv`.
    pub fn save_checkpoint(&self) -> Result<PathBuf, TrainError> {
        let state = TrainState {
            format: STATE_FORMAT,
            epoch: self.epoch,
            optimizer_step: self.adam.step,
            rng: self.rng.clone(),
            losses: self.losses.clone(),
            epoch_seconds: self.epoch_seconds.clone(),
            config: self.config.clone(),
        };
        let pause = || {
            if let Some(delay) = self.checkpoint_file_delay {
                std::thread::sleep(delay);
            }
        };
        let dir = checkpoint::write(&self.run_dir, self.epoch, |dir: &Path| -> Result<(), TrainError> {
            self.model.save(&dir.join(MODEL_FILE))?;
            pause();
            self.adam.save(&dir.join(OPTIMIZER_FILE))?;
            pause();
            if let Some(ema) = &self.ema {
                ema.save(&dir.join(EMA_FILE))?;
                pause();
            }
            write_json(&dir.join(STATE_FILE), &state)?;
            pause();
            Ok(())
        })
        .map_err(|e| match e {
            WriteError::Checkpoint(e) => TrainError::Checkpoint(e),
            WriteError::Fill(e) => e,
        })?;
        self.write_losses_csv()?;
        Ok(dir)
    }

    /// `losses.csv`: one row per optimizer step, rewritten whole so a resumed run's file matches its history.
    pub fn write_losses_csv(&self) -> Result<(), TrainError> {
        // Every epoch takes the same number of steps.
        let steps_per_epoch = self.losses.len() / self.epoch.max(1);
        let mut csv = String::from("step,epoch,loss\n");
        for (i, loss) in self.losses.iter().enumerate() {
            let _ = writeln!(csv, "{},{},{}", i + 1, i / steps_per_epoch.max(1) + 1, loss);
        }
        let path = self.run_dir.join(LOSSES_FILE);
        write_atomic(&path, csv.as_bytes()).map_err(|source| TrainError::Write { path, source })
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| TrainError::Config(e.to_string()))?;
    write_atomic(path, text.as_bytes()).map_err(|source| TrainError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn read_state(dir: &Path) -> Result<TrainState, TrainError> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::State {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| TrainError::State {
        path: path.clone(),
        message: e.to_string(),
    })?;
    if state.format != STATE_FORMAT {
        return Err(TrainError::State {
            path,
            message: format!("format {} is not {STATE_FORMAT}", state.format),
        });
    }
    Ok(state)
}

/// Reads the config of a run's newest checkpoint (for sampling and figures).
pub fn read_run_config(run_dir: &Path, epoch: Option<usize>) -> Result<(usize, PathBuf, TrainConfig), TrainError> {
    let (epoch, dir) = checkpoint::find(run_dir, epoch)?;
    let state = read_state(&dir)?;
    Ok((epoch, dir, state.config))
}

/// The loss history saved in a run's newest checkpoint.
pub fn read_losses(run_dir: &Path) -> Result<Vec<f32>, TrainError> {
    Ok(read_history(run_dir)?.losses)
}

/// What a run's newest checkpoint records about its progress.
pub struct History {
    pub epoch: usize,
    pub losses: Vec<f32>,
    pub epoch_seconds: Vec<f64>,
    pub config: TrainConfig,
}

pub fn read_history(run_dir: &Path) -> Result<History, TrainError> {
    let (_, dir) = checkpoint::latest(run_dir)?;
    let state = read_state(&dir)?;
    Ok(History {
        epoch: state.epoch,
        losses: state.losses,
        epoch_seconds: state.epoch_seconds,
        config: state.config,
    })
}

/// Loads the model of a run's checkpoint (`None` = newest) for inference.
pub fn load_model(
    run_dir: &Path,
    epoch: Option<usize>,
    device: Device,
) -> Result<(usize, Model, TrainConfig), TrainError> {
    let (epoch, dir, config) = read_run_config(run_dir, epoch)?;
    let mut model = Model::new(&config.model, device);
    // Runs that keep a weight average sample from it.
    let ema = dir.join(EMA_FILE);
    model.load(&if ema.is_file() { ema } else { dir.join(MODEL_FILE) })?;
    Ok((epoch, model, config))
}
