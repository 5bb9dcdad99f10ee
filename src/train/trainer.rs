//! The training loop and exact resume.
//!
//! A [`Trainer`] owns everything that changes while a run trains: weights, Adam moments, the RNG, the epoch count
//! and the loss history. All of it goes into each epoch's checkpoint, so [`Trainer::resume`] continues as if the
//! run had never stopped: with the same seed and thread count on CPU, the weights after epoch N are the same bytes.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tch::{Device, Kind, Reduction, Tensor};
use thiserror::Error;

use crate::data::{digits_to_tensor, labels_to_tensor, Digits};
use crate::figures::FigureError;
use crate::io::tensor_file::TensorFileError;
use crate::model::Model;
use crate::run::checkpoint::{self, WriteError};
use crate::run::config::InvalidConfig;
use crate::run::{
    CheckpointError, CheckpointState, RunDir, RunError, RunLock, TrainConfig, EMA_FILE, MODEL_FILE, OPTIMIZER_FILE,
};
use crate::runtime::cuda::{self, CudaError, CudaGraph, Event};
use crate::runtime::device::upload;
use crate::runtime::precision::{autocast, Precision};
use crate::runtime::rng::RunRng;

use super::ema::Ema;
use super::objective::{Prepared, TrainingBatch};
use super::optim::Adam;

/// On CUDA, losses are sent back to the host in groups of this many steps.
const CUDA_LOSS_READ_EVERY: usize = 32;
/// With `--cuda-graphs on`, full-size steps run eagerly this many times in each process before the step is
/// captured: they fill cuDNN's algorithm cache and create the gradients, which capture cannot do.
const EAGER_STEPS_BEFORE_CAPTURE: usize = 3;

#[derive(Debug, Error)]
pub enum TrainError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("cannot read the losses back from the device: {0}")]
    ReadBack(#[from] tch::TchError),
    #[error("cannot read the losses back from the device: {0}")]
    Cuda(#[from] CudaError),
    #[error(transparent)]
    Tensors(#[from] TensorFileError),
    #[error("cannot draw figures: {0}")]
    Figures(#[from] FigureError),
    #[error(transparent)]
    Invalid(#[from] InvalidConfig),
    #[error("{0}")]
    Config(String),
    #[error("{run} already holds a trained run (checkpoint epoch {epoch}); continue it with --resume {run} or pick another --out")]
    Exists { run: String, epoch: usize },
    /// The run is not of the kind asked for (callers name the run: "cannot resume RUN").
    #[error("{0}")]
    Mismatch(String),
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

/// What the loop reports as it goes (the binary prints progress from it). Every method has an empty default.
pub trait Hooks {
    fn epoch_start(&mut self, _epoch: usize, _epochs: usize, _steps: usize) {}
    fn step(&mut self, _loss: f32, _images: usize) {}
    fn epoch_end(&mut self, _epoch: usize, _mean_loss: f64, _images_per_sec: f64) {}
    /// After the checkpoint of `epoch` is committed in `dir`.
    fn checkpoint_saved(&mut self, _epoch: usize, _dir: &std::path::Path) {}
    /// After `epoch`, the denoiser's held-out MSE on `images` test digits noised at `sigma`: of its output and of
    /// its noisy input.
    fn test_mse(&mut self, _epoch: usize, _images: i64, _sigma: f64, _denoised: f64, _noisy: f64) {}
}

/// Test-only fault injection (hidden flags of `diffuse train`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Replace the loss at this global step (1-based) with NaN.
    pub nan_at_step: Option<i64>,
    /// Pause this long after writing each checkpoint file, so that a kill at a random moment often lands inside a
    /// checkpoint write.
    pub checkpoint_file_delay: Option<Duration>,
}

pub struct Trainer {
    pub config: TrainConfig,
    pub run: RunDir,
    /// The run folder held for this process (none for a trainer that never touches the disk).
    lock: Option<RunLock>,
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
    pub faults: Faults,
    /// The captured step (`--cuda-graphs on`), the full-size steps run eagerly so far in this process, and whether
    /// a capture or replay failed (the run then goes on eagerly).
    graphed: Option<GraphedStep>,
    eager_full_steps: usize,
    graphs_failed: bool,
}

/// A training step captured as a CUDA graph: the whole step for a full-size batch at one learning rate (recaptured
/// when the rate changes, once an epoch), reading its batch from `batch` and writing its loss to `loss`.
struct GraphedStep {
    graph: CudaGraph,
    lr: f64,
    batch: TrainingBatch,
    loss: Tensor,
}

/// Losses of consecutive steps on their way to the host. From CUDA they are copied into pinned host memory without
/// waiting, and readable once `copied` is done; on CPU they are there at once.
struct LossesInFlight {
    /// [steps] float, on the host.
    values: Tensor,
    copied: Option<Event>,
    /// Images of each step.
    images: Vec<usize>,
    /// The 1-based step in the epoch of the last loss.
    last_step: usize,
}

impl LossesInFlight {
    /// Sends the `pending` losses (drained) on their way; `last_step` is the step of the last one.
    fn send(pending: &mut Vec<(Tensor, usize)>, last_step: usize, device: Device) -> Self {
        let losses: Vec<Tensor> = pending.iter().map(|(loss, _)| loss.shallow_clone()).collect();
        let stacked = Tensor::stack(&losses, 0);
        let (values, copied) = match device {
            // non_blocking to the host: libtorch allocates the destination pinned and only queues the copy.
            Device::Cuda(index) => {
                let values = stacked.to_device_(Device::Cpu, Kind::Float, true, false);
                match Event::record(device) {
                    Ok(event) => (values, Some(event)),
                    Err(e) => {
                        // No mark to wait for: wait for the whole queue, as a blocking copy would.
                        tracing::debug!("{e}; reading the losses back with a wait");
                        tch::Cuda::synchronize(index as i64);
                        (values, None)
                    }
                }
            }
            _ => (stacked, None),
        };
        Self {
            values,
            copied,
            images: pending.drain(..).map(|(_, images)| images).collect(),
            last_step,
        }
    }

    /// Whether the values are on the host yet (never waits).
    fn arrived(&self) -> Result<bool, CudaError> {
        self.copied.as_ref().map_or(Ok(true), Event::is_done)
    }

    /// Waits until the values are on the host.
    fn wait(&self) -> Result<(), CudaError> {
        self.copied.as_ref().map_or(Ok(()), Event::wait)
    }
}

/// Creates `run` when missing and holds it for this process, refusing a folder that already holds checkpoints or
/// whose checkpoints cannot be read (a new run, or a run continued into a new folder).
fn take_new_folder(run: &RunDir) -> Result<RunLock, TrainError> {
    run.create()?;
    let lock = run.lock()?;
    match run.latest_checkpoint() {
        Ok((epoch, _)) => Err(TrainError::Exists {
            run: run.path().display().to_string(),
            epoch,
        }),
        Err(RunError::Checkpoint(CheckpointError::NoCheckpoint(_))) => Ok(lock),
        Err(e) => Err(e.into()),
    }
}

/// Refuses a run of another kind than the one asked for ("ddpm", ...).
fn check_kind(config: &TrainConfig, expected_kind: &str) -> Result<(), TrainError> {
    let found = config.objective.name();
    match found == expected_kind {
        true => Ok(()),
        false => Err(TrainError::Mismatch(format!(
            "it trains a `{found}` model, not `{expected_kind}` (use `diffuse train {found} --resume`)"
        ))),
    }
}

/// The device work of one optimizer step: gradients zeroed, forward (under autocast), loss, backward, the Adam
/// update (without counting the step, see [`Adam::update`]). Returns the loss, detached, on the device.
fn step_work(model: &Model, adam: &mut Adam, precision: Precision, batch: &TrainingBatch, lr: f64) -> Tensor {
    adam.zero_grad();
    let loss = autocast(precision, model.device(), || {
        let prediction = model.forward_t(&batch.input, batch.t.as_ref(), batch.class.as_ref(), true);
        prediction.to_kind(Kind::Float).mse_loss(&batch.target, Reduction::Mean)
    });
    loss.backward();
    adam.update(lr);
    loss.detach()
}

impl Trainer {
    /// Starts a new run in the folder `run`, refusing one that already holds checkpoints or whose checkpoints cannot
    /// be read.
    pub fn create(config: TrainConfig, run: RunDir, device: Device) -> Result<Self, TrainError> {
        config.validate()?;
        let lock = take_new_folder(&run)?;
        run.write_config(&config)?;
        tch::manual_seed(config.seed as i64);
        let model = Model::with_layout(&config.model, device, config.layout);
        let rng = RunRng::new(config.seed);
        let mut trainer = Self::assemble(config, run, model, rng);
        trainer.lock = Some(lock);
        Ok(trainer)
    }

    /// A trainer that never touches the disk (benchmarks).
    pub fn in_memory(config: TrainConfig, device: Device) -> Result<Self, TrainError> {
        config.validate()?;
        tch::manual_seed(config.seed as i64);
        let model = Model::with_layout(&config.model, device, config.layout);
        let rng = RunRng::new(config.seed);
        Ok(Self::assemble(config, RunDir::new(""), model, rng))
    }

    fn assemble(config: TrainConfig, run: RunDir, model: Model, rng: RunRng) -> Self {
        crate::runtime::device::autotune_convolutions(model.device());
        let adam = Adam::new(model.named_parameters(), config.adam);
        let ema = config.ema.map(|decay| Ema::new(&model, decay));
        let objective = Prepared::new(&config.objective);
        Self {
            config,
            run,
            model,
            adam,
            ema,
            objective,
            rng,
            epoch: 0,
            losses: Vec::new(),
            epoch_seconds: Vec::new(),
            faults: Faults::default(),
            graphed: None,
            eager_full_steps: 0,
            graphs_failed: false,
            lock: None,
        }
    }

    /// Continues the run in the folder `run` from its newest complete checkpoint. `expected_kind` is the objective the
    /// caller asked for ("ddpm", ...); a run of another kind is refused.
    pub fn resume(run: RunDir, expected_kind: &str, device: Device) -> Result<Self, TrainError> {
        let lock = run.lock()?;
        Self::resume_locked(run, lock, None, expected_kind, device)
    }

    /// Continues `source` from its checkpoint of `epoch` in its own folder when that is its newest, else in the new
    /// folder `into`, which receives a copy of that checkpoint, the run's config and its metrics.csv (the epochs
    /// after it are trained there as they would have been: with the same seed and threads on CPU, byte for byte).
    /// `source` is left as it is. An earlier checkpoint without `into` is refused: training on in place would
    /// replace the later checkpoints.
    pub fn resume_from(
        source: RunDir,
        epoch: usize,
        into: Option<RunDir>,
        expected_kind: &str,
        device: Device,
    ) -> Result<Self, TrainError> {
        let newest = source.latest_checkpoint()?.0;
        let Some(into) = into else {
            if epoch != newest {
                // Names the epoch first: a missing one is refused as such.
                source.read_state(Some(epoch))?;
                return Err(TrainError::Config(format!(
                    "{} has checkpoints after epoch {epoch} (up to {newest}); training on in place would replace \
                     them: give --out NEW_RUN_DIR to continue from epoch {epoch} there, leaving {} as it is",
                    source.path().display(),
                    source.path().display()
                )));
            }
            return Self::resume(source, expected_kind, device);
        };
        let (_, dir, state) = source.read_state(Some(epoch))?;
        check_kind(&state.config, expected_kind)?;
        let lock = take_new_folder(&into)?;
        checkpoint::write(into.path(), epoch, |copy: &std::path::Path| -> Result<(), RunError> {
            for file in checkpoint::FILES.into_iter().chain([EMA_FILE]) {
                let from = dir.join(file);
                if from.is_file() {
                    std::fs::copy(&from, copy.join(file)).map_err(|source| RunError::Write {
                        path: copy.join(file),
                        source,
                    })?;
                }
            }
            Ok(())
        })
        .map_err(WriteError::flatten)?;
        into.write_config(&state.config)?;
        if let Some(rows) = source.read_metrics()? {
            into.write_metrics(&rows)?;
        }
        Self::resume_locked(into, lock, Some(epoch), expected_kind, device)
    }

    fn resume_locked(
        run: RunDir,
        lock: RunLock,
        epoch: Option<usize>,
        expected_kind: &str,
        device: Device,
    ) -> Result<Self, TrainError> {
        let (_, dir, state) = run.read_state(epoch)?;
        check_kind(&state.config, expected_kind)?;
        let mut model = Model::with_layout(&state.config.model, device, state.config.layout);
        model.load(&dir.join(MODEL_FILE))?;
        let mut trainer = Self::assemble(state.config, run, model, state.rng);
        trainer.adam.load(&dir.join(OPTIMIZER_FILE), state.optimizer_step)?;
        if let Some(ema) = &mut trainer.ema {
            ema.load(&dir.join(EMA_FILE))?;
        }
        trainer.epoch = state.epoch;
        trainer.losses = state.losses;
        trainer.epoch_seconds = state.epoch_seconds;
        trainer.lock = Some(lock);
        Ok(trainer)
    }

    /// The model to draw figures and samples from: the weight average when the run keeps one.
    pub fn sampling_model(&self) -> Option<Model> {
        self.ema.as_ref().map(|ema| ema.to_model(&self.model))
    }

    /// Sets the run's length to `epochs` (`--resume RUN --epochs N`), extending a finished run. The learning-rate
    /// decay keeps the rate it was planned with (see [`TrainConfig::lr_decay_epochs`]), so the epochs already
    /// trained are unchanged and the new ones continue the same exponential decay. config.json follows with the
    /// first checkpoint of the longer run: until one exists, the run is what its checkpoint says (an extension
    /// stopped before then is asked for again with the same `--epochs`).
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
        Ok(())
    }

    pub fn is_finished(&self) -> bool {
        self.epoch >= self.config.epochs
    }

    pub fn device(&self) -> Device {
        self.model.device()
    }

    /// Trains one epoch: a fresh shuffle, then one Adam step per batch.
    pub fn train_epoch(&mut self, data: &TrainData, progress: &mut dyn Hooks) -> Result<(), TrainError> {
        let n = self.config.subset.map_or(data.len(), |s| s.min(data.len()));
        let batch_size = self.config.batch_size;
        let steps = n.div_ceil(batch_size);
        let lr = self.config.lr_at_epoch(self.epoch);
        let device = self.device();
        progress.epoch_start(self.epoch + 1, self.config.epochs, steps);
        let started = Instant::now();
        let first_loss = self.losses.len();
        let order = self.rng.permutation(n);
        // On CUDA the losses go back in groups, each read once it has arrived, so the host never waits for the
        // device inside the epoch and keeps work queued ahead. Each is still checked before the epoch's checkpoint
        // is written. On CPU every loss is read at once.
        let read_every = if device.is_cuda() { CUDA_LOSS_READ_EVERY } else { 1 };
        let mut pending: Vec<(Tensor, usize)> = Vec::with_capacity(read_every);
        let mut in_flight = VecDeque::new();
        for (step, chunk) in order.chunks(batch_size).enumerate() {
            let index = upload(Tensor::from_slice(chunk), device);
            let x0 = data.images.index_select(0, &index);
            let labels = data.labels.index_select(0, &index);
            pending.push((self.train_step(&x0, &labels, lr), chunk.len()));
            if pending.len() == read_every || step + 1 == steps {
                in_flight.push_back(LossesInFlight::send(&mut pending, step + 1, device));
                while let Some(group) = in_flight.pop_front() {
                    if !group.arrived()? {
                        in_flight.push_front(group);
                        break;
                    }
                    self.record_losses(group, progress)?;
                }
            }
        }
        for group in in_flight {
            group.wait()?;
            self.record_losses(group, progress)?;
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
        let batch = self.objective.batch(x0, labels, &mut self.rng);
        let full = batch.input.size()[0] == self.config.batch_size as i64;
        let graphed = if full
            && !self.graphs_failed
            && self.eager_full_steps >= EAGER_STEPS_BEFORE_CAPTURE
            && cuda::applies(self.device())
        {
            self.graphed_step(&batch, lr).map(Some).unwrap_or_else(|e| {
                // Nothing of the step ran (a capture only records; a replay that fails launches nothing).
                tracing::warn!("{e}; training goes on without CUDA graphs");
                (self.graphs_failed, self.graphed) = (true, None);
                None
            })
        } else {
            None
        };
        let loss = match graphed {
            Some(loss) => loss,
            None => {
                self.eager_full_steps += usize::from(full);
                self.adam.step += 1;
                step_work(&self.model, &mut self.adam, self.config.precision, &batch, lr)
            }
        };
        if let Some(ema) = &mut self.ema {
            ema.update(&self.model, self.adam.step);
        }
        loss
    }

    /// [`step_work`] through a CUDA graph: the batch is copied into the graph's inputs and the graph replayed,
    /// capturing it first when there is none yet for this learning rate. The same kernels as an eager step.
    fn graphed_step(&mut self, batch: &TrainingBatch, lr: f64) -> Result<Tensor, CudaError> {
        match &mut self.graphed {
            Some(graphed) if graphed.lr == lr => graphed.batch.copy_from(batch),
            _ => {
                self.graphed = None; // the old graph's memory goes back before the new capture takes its own
                let inputs = batch.copy();
                let (model, adam, precision) = (&self.model, &mut self.adam, self.config.precision);
                let (graph, loss) =
                    CudaGraph::capture(model.device(), || step_work(model, adam, precision, &inputs, lr))?;
                tracing::info!(lr, "training step captured as a CUDA graph");
                self.graphed = Some(GraphedStep {
                    graph,
                    lr,
                    batch: inputs,
                    loss,
                });
            }
        }
        let graphed = self.graphed.as_ref().expect("a graph was captured above");
        graphed.graph.replay()?;
        self.adam.step += 1;
        // The graph overwrites its loss on the next replay; the caller keeps this one until it reads it back.
        Ok(graphed.loss.copy())
    }

    /// Appends a group of losses that has arrived on the host to the history and reports them. A NaN or infinite
    /// loss stops training with an error naming its step; nothing of this epoch is saved, so the last good
    /// checkpoint stays the newest.
    fn record_losses(&mut self, group: LossesInFlight, progress: &mut dyn Hooks) -> Result<(), TrainError> {
        let values: Vec<f32> = Vec::try_from(&group.values)?;
        let first_step = group.last_step + 1 - group.images.len();
        for (i, (images, mut value)) in group.images.into_iter().zip(values).enumerate() {
            let global_step = self.losses.len() as i64 + 1;
            if self.faults.nan_at_step == Some(global_step) {
                value = f32::NAN;
            }
            if !value.is_finite() {
                let kept = self
                    .run
                    .latest_checkpoint()
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

    /// Writes the checkpoint of the epoch just finished, then `losses.csv` and `config.json` (which a longer run set
    /// by [`Trainer::set_epochs`] changes).
    pub fn save_checkpoint(&self) -> Result<PathBuf, TrainError> {
        let state = CheckpointState::new(
            self.epoch,
            self.adam.step,
            self.rng.clone(),
            self.losses.clone(),
            self.epoch_seconds.clone(),
            self.config.clone(),
        );
        let pause = || {
            if let Some(delay) = self.faults.checkpoint_file_delay {
                std::thread::sleep(delay);
            }
        };
        let dir = checkpoint::write(
            self.run.path(),
            self.epoch,
            |dir: &std::path::Path| -> Result<(), TrainError> {
                self.model.save(&dir.join(MODEL_FILE))?;
                pause();
                self.adam.save(&dir.join(OPTIMIZER_FILE))?;
                pause();
                if let Some(ema) = &self.ema {
                    ema.save(&dir.join(EMA_FILE))?;
                    pause();
                }
                state.write(dir)?;
                pause();
                Ok(())
            },
        )
        .map_err(WriteError::flatten)?;
        self.write_losses_csv()?;
        self.run.write_config(&self.config)?;
        Ok(dir)
    }

    /// `losses.csv` from the loss history.
    pub fn write_losses_csv(&self) -> Result<(), TrainError> {
        Ok(self.run.write_losses(&self.losses, self.epoch)?)
    }
}
