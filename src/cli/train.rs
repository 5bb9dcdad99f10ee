//! `diffuse train denoiser|ddpm|cfg`: flags -> validated [`TrainConfig`] -> the epoch loop with checkpoints and
//! figures.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};

use diffuse::data::{self, dataset::Dataset, Split};
use diffuse::device;
use diffuse::model::Arch;
use diffuse::precision::Precision;
use diffuse::run_figures;
use diffuse::schedule::ScheduleConfig;
use diffuse::train::config::ModelKind;
use diffuse::train::test_metrics;
use diffuse::train::{Objective, TrainConfig, TrainData, Trainer};

use super::progress::Bars;
use super::runtime::{resolve_precision, DeviceArgs};

/// The EMA decay of the improved recipe.
const IMPROVED_EMA_DECAY: f64 = 0.999;

#[derive(Subcommand, Debug)]
pub enum TrainCommand {
    /// Part 1: one-step denoiser (unconditional UNet, z = x + sigma eps -> x). Defaults: D=128, sigma 0.5,
    /// batch 256, 5 epochs, Adam 1e-4.
    #[command(allow_negative_numbers = true)]
    Denoiser {
        #[command(flatten)]
        common: CommonArgs,
        /// Noise level of the training inputs [default: 0.5].
        #[arg(long, conflicts_with = "resume")]
        sigma: Option<f64>,
    },
    /// Part 2: time-conditioned DDPM (T=300). Defaults: D=64, batch 128, 20 epochs, Adam 1e-3 decaying to a tenth.
    #[command(allow_negative_numbers = true)]
    Ddpm {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        schedule: ScheduleArgs,
    },
    /// Part 3: class-conditioned DDPM for classifier-free guidance (class dropped with probability p_uncond).
    #[command(allow_negative_numbers = true)]
    Cfg {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        schedule: ScheduleArgs,
        /// Probability of training a sample without its class [default: 0.1].
        #[arg(long, conflicts_with = "resume")]
        p_uncond: Option<f64>,
    },
    /// The MNIST classifier that `diffuse eval` scores samples with (small CNN, 6 epochs).
    Classifier(super::eval::ClassifierArgs),
    /// Rectified flow: class-conditioned velocity prediction on x_t = (1 - t) x0 + t eps, sampled with Euler steps
    /// and the same guidance. Same defaults as cfg.
    #[command(allow_negative_numbers = true)]
    Flow {
        #[command(flatten)]
        common: CommonArgs,
        /// Probability of training a sample without its class [default: 0.1].
        #[arg(long, conflicts_with = "resume")]
        p_uncond: Option<f64>,
    },
}

#[derive(Args, Debug)]
pub struct CommonArgs {
    /// Run folder to create (checkpoints, losses.csv, config.json, figures/) [default: runs/<kind>].
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in RUN_DIR from its newest complete checkpoint. Its configuration comes from the checkpoint,
    /// so the recipe flags conflict with it; only --epochs, --threads, --device and --data-dir may change.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// Epochs to train. With --resume, the run's new length: more than it had extends a finished run, and the
    /// learning rate keeps decaying at the rate it was planned with.
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long, conflicts_with = "resume")]
    pub batch_size: Option<usize>,
    /// Hidden width D of the UNet.
    #[arg(long, conflicts_with = "resume")]
    pub hidden: Option<i64>,
    /// Network: basic (the course assignment's UNet) or improved (residual GroupNorm blocks, sinusoidal time
    /// embedding, conditioning at every resolution; EMA 0.999 on by default) [default: basic].
    #[arg(long, value_enum, conflicts_with = "resume")]
    pub arch: Option<Arch>,
    #[arg(long, conflicts_with = "resume")]
    pub lr: Option<f64>,
    /// Final learning rate as a fraction of --lr (exponential decay stepped per epoch; 1 = constant).
    #[arg(long, conflicts_with = "resume")]
    pub lr_final_ratio: Option<f64>,
    /// Train on the first N training images only.
    #[arg(long, value_name = "N", conflicts_with = "resume")]
    pub subset: Option<usize>,
    #[arg(long, conflicts_with = "resume")]
    pub seed: Option<u64>,
    #[arg(long, value_enum, conflicts_with = "resume")]
    pub dataset: Option<Dataset>,
    /// Compute precision [default: bf16 on CPUs with native bf16 (AVX512-BF16 or AMX), else fp32].
    #[arg(long, value_enum, conflicts_with = "resume")]
    pub precision: Option<Precision>,
    /// Keep an exponential moving average of the weights with this decay (e.g. 0.999) and sample from it; 0 turns
    /// it off [default: 0.999 with --arch improved, else off].
    #[arg(long, value_name = "DECAY", conflicts_with = "resume")]
    pub ema: Option<f64>,
    /// Data folder [default: $MNIST_DIR, else ./data/mnist].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Skip drawing figures after epochs.
    #[arg(long)]
    pub no_figures: bool,
    /// Fault injection for tests: make the loss NaN at this global step.
    #[arg(long, hide = true)]
    pub inject_nan_at_step: Option<i64>,
    /// Fault injection for tests: pause this many milliseconds after writing each checkpoint file.
    #[arg(long, hide = true)]
    pub checkpoint_file_delay_ms: Option<u64>,
}

#[derive(Args, Debug)]
pub struct ScheduleArgs {
    /// Diffusion steps T [default: 300].
    #[arg(long, conflicts_with = "resume")]
    pub timesteps: Option<usize>,
    #[arg(long, conflicts_with = "resume")]
    pub beta_start: Option<f64>,
    #[arg(long, conflicts_with = "resume")]
    pub beta_end: Option<f64>,
}

impl ScheduleArgs {
    fn config(&self) -> ScheduleConfig {
        let d = ScheduleConfig::default();
        ScheduleConfig {
            timesteps: self.timesteps.unwrap_or(d.timesteps),
            beta_start: self.beta_start.unwrap_or(d.beta_start),
            beta_end: self.beta_end.unwrap_or(d.beta_end),
        }
    }
}

impl CommonArgs {
    /// The assignment's config for `kind`, with every flag given on the command line applied over it.
    fn config(&self, kind: ModelKind) -> TrainConfig {
        let mut c = kind.spec_config();
        c.model.hidden = self.hidden.unwrap_or(c.model.hidden);
        c.dataset = self.dataset.unwrap_or(c.dataset);
        c.epochs = self.epochs.unwrap_or(c.epochs);
        c.batch_size = self.batch_size.unwrap_or(c.batch_size);
        c.lr = self.lr.unwrap_or(c.lr);
        c.lr_final_ratio = self.lr_final_ratio.unwrap_or(c.lr_final_ratio);
        c.subset = self.subset;
        c.seed = self.seed.unwrap_or(c.seed);
        // Filled in by `train` once the device is known, unless given.
        c.precision = self.precision.unwrap_or(c.precision);
        c.model.arch = self.arch.unwrap_or(c.model.arch);
        c.ema = match self.ema {
            Some(0.0) => None,
            Some(decay) => Some(decay),
            None if c.model.arch == Arch::Improved => Some(IMPROVED_EMA_DECAY),
            None => None,
        };
        c
    }
}

pub fn run(cmd: TrainCommand) -> anyhow::Result<()> {
    let (common, config) = match cmd {
        TrainCommand::Classifier(args) => return super::eval::train_classifier(args),
        TrainCommand::Denoiser { common, sigma } => {
            let mut config = common.config(ModelKind::Denoiser);
            if let Some(sigma) = sigma {
                config.objective = Objective::Denoiser { sigma };
            }
            (common, config)
        }
        TrainCommand::Ddpm { common, schedule } => {
            let mut config = common.config(ModelKind::Ddpm);
            config.objective = Objective::Ddpm {
                schedule: schedule.config(),
            };
            (common, config)
        }
        TrainCommand::Cfg {
            common,
            schedule,
            p_uncond,
        } => {
            let mut config = common.config(ModelKind::Cfg);
            config.objective = Objective::Cfg {
                schedule: schedule.config(),
                p_uncond: p_uncond.unwrap_or(0.1),
            };
            (common, config)
        }
        TrainCommand::Flow { common, p_uncond } => {
            let mut config = common.config(ModelKind::Flow);
            config.objective = Objective::Flow {
                p_uncond: p_uncond.unwrap_or(0.1),
            };
            (common, config)
        }
    };
    train(common, config)
}

fn train(common: CommonArgs, config: TrainConfig) -> anyhow::Result<()> {
    let device = common.device.resolve()?;
    let kind = config.objective.name();
    let mut test_digits = None;
    let mut trainer = if let Some(run_dir) = &common.resume {
        let mut trainer =
            Trainer::resume(run_dir, kind, device).with_context(|| format!("cannot resume {}", run_dir.display()))?;
        if let Some(epochs) = common.epochs {
            trainer
                .set_epochs(epochs)
                .with_context(|| format!("cannot extend {}", run_dir.display()))?;
        }
        if let Some(warning) = trainer.config.precision.slow_here(device) {
            eprintln!("{warning}");
        }
        // A kill between a checkpoint's commit and the losses.csv that follows it leaves the csv one epoch behind;
        // the checkpoint holds the whole history, so rewrite it.
        trainer
            .write_losses_csv()
            .with_context(|| format!("cannot write losses.csv in {}", run_dir.display()))?;
        if trainer.is_finished() {
            eprintln!(
                "{} is already complete ({} epochs); nothing to train",
                run_dir.display(),
                trainer.epoch
            );
            return Ok(());
        }
        eprintln!(
            "resuming {} after epoch {} of {}",
            run_dir.display(),
            trainer.epoch,
            trainer.config.epochs
        );
        trainer
    } else {
        let mut config = config;
        config.precision = resolve_precision(common.precision, device);
        config.validate().map_err(anyhow::Error::msg)?;
        // Read the data before a run folder exists, so a wrong --data-dir leaves nothing behind.
        let data_dir = config.dataset.resolve_dir(common.data_dir.as_deref());
        test_digits = Some(load_split(&data_dir, Split::Test)?);
        let run_dir = common.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(kind));
        Trainer::create(config, &run_dir, device)?
    };
    trainer.inject_nan_at_step = common.inject_nan_at_step;
    trainer.checkpoint_file_delay = common.checkpoint_file_delay_ms.map(std::time::Duration::from_millis);

    let data_dir = trainer.config.dataset.resolve_dir(common.data_dir.as_deref());
    let train_digits = load_split(&data_dir, Split::Train)?;
    let test_digits = match test_digits {
        Some(digits) => digits,
        None => load_split(&data_dir, Split::Test)?,
    };
    let data = TrainData::new(&train_digits, device);
    eprintln!(
        "training {kind} ({} parameters) on {} images from {} on {}, {}, run folder {}",
        trainer.model.parameter_count(),
        trainer.config.subset.map_or(data.len(), |s| s.min(data.len())),
        data_dir.display(),
        device::describe(device),
        trainer.config.precision.name(),
        trainer.run_dir.display()
    );
    let figures =
        (!common.no_figures).then(|| run_figures::RunFigures::new(&trainer.run_dir, &trainer.config, &test_digits));
    if let (Some(figures), 0) = (&figures, trainer.epoch) {
        figures.before_training().context("cannot draw figures")?;
    }
    let mut bars = Bars::new();
    while !trainer.is_finished() {
        trainer.train_epoch(&data, &mut bars)?;
        let dir = trainer.save_checkpoint()?;
        tracing::info!(checkpoint = %dir.display(), "saved");
        // Held-out numbers and figures come from the weight average when the run keeps one.
        let averaged = trainer.sampling_model();
        let model = averaged.as_ref().unwrap_or(&trainer.model);
        if let Objective::Denoiser { sigma } = trainer.config.objective {
            let test_images = data::digits_to_tensor(&test_digits);
            let (denoised, noisy) =
                test_metrics::denoiser_test_mse(model, &test_images, sigma, trainer.config.precision);
            eprintln!(
                "epoch {}: test MSE on {} digits at sigma {sigma}: denoised {denoised:.5}, noisy input {noisy:.5}",
                trainer.epoch,
                test_metrics::TEST_MSE_IMAGES
            );
            let row = format!("{},{denoised},{noisy}", trainer.epoch);
            test_metrics::append_metrics(&trainer.run_dir, "epoch,test_mse_denoised,test_mse_noisy", &row)
                .with_context(|| format!("cannot write metrics.csv in {}", trainer.run_dir.display()))?;
        }
        if let Some(figures) = &figures {
            figures
                .after_epoch(model, trainer.epoch, &trainer.losses)
                .context("cannot draw figures")?;
        }
    }
    eprintln!("done: {}", trainer.run_dir.display());
    Ok(())
}

fn load_split(dir: &Path, split: Split) -> anyhow::Result<data::Digits> {
    Ok(data::load(dir, split)?)
}
