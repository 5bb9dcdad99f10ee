//! `diffuse train denoiser|ddpm|cfg`: flags -> validated [`TrainConfig`] -> the epoch loop with checkpoints and
//! figures.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use diffuse::data::{self, dataset::Dataset, Split};
use diffuse::diffusion::schedule::ScheduleConfig;
use diffuse::model::Arch;
use diffuse::run::{ModelKind, Objective, RunDir, TrainConfig};
use diffuse::runtime::device;
use diffuse::runtime::layout::Layout;
use diffuse::runtime::precision::Precision;
use diffuse::runtime::tuning::{Choice, Workload};
use diffuse::train::{Faults, Session, Trainer};

use super::progress::Bars;
use super::runtime::{resolve_choice, DataArgs, DeviceArgs};

/// The EMA decay of the improved recipe.
const IMPROVED_EMA_DECAY: f64 = 0.999;

#[derive(Subcommand, Debug)]
pub enum TrainCommand {
    #[command(flatten)]
    Model(Box<TrainArgs>),
    /// The MNIST classifier that `diffuse eval` scores samples with (small CNN, 6 epochs).
    Classifier(super::eval::ClassifierArgs),
}

/// The four models of the assignment and their recipe flags.
#[derive(Subcommand, Debug)]
pub enum TrainArgs {
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
    /// Run folder to create (checkpoints, losses.csv, config.json, figures/) [default: runs/<kind>]. With --resume
    /// and --from-epoch: the new folder the run continues in.
    #[arg(long, value_name = "RUN_DIR")]
    pub out: Option<PathBuf>,
    /// Continue the run in RUN_DIR from its newest complete checkpoint. Its configuration comes from the checkpoint,
    /// so the recipe flags conflict with it; only --epochs, --threads, --device and --data-dir may change.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// With --resume: continue from this epoch's checkpoint instead of the newest; an earlier one continues in a
    /// new folder (--out), which gets a copy of it, leaving RUN_DIR as it is.
    #[arg(long, value_name = "EPOCH", requires = "resume")]
    pub from_epoch: Option<usize>,
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
    /// Compute precision [default: the faster on this CPU, measured once (bf16 only where the CPU has native bf16);
    /// fp32 on CUDA].
    #[arg(long, value_enum, conflicts_with = "resume")]
    pub precision: Option<Precision>,
    /// Memory layout of activations and weights [default: the faster on this CPU, measured with the precision;
    /// channels-last on CUDA].
    #[arg(long, value_enum, conflicts_with = "resume")]
    pub layout: Option<Layout>,
    /// Keep an exponential moving average of the weights with this decay (e.g. 0.999) and sample from it; 0 turns
    /// it off [default: 0.999 with --arch improved, else off].
    #[arg(long, value_name = "DECAY", conflicts_with = "resume")]
    pub ema: Option<f64>,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Skip drawing figures after epochs.
    #[arg(long)]
    pub no_figures: bool,
    #[command(flatten)]
    pub faults: FaultArgs,
}

/// Fault injection for the tests (hidden).
#[derive(Args, Debug)]
pub struct FaultArgs {
    /// Make the loss NaN at this global step.
    #[arg(long, hide = true)]
    pub inject_nan_at_step: Option<i64>,
    /// Pause this many milliseconds after writing each checkpoint file.
    #[arg(long, hide = true)]
    pub checkpoint_file_delay_ms: Option<u64>,
}

impl FaultArgs {
    fn faults(&self) -> Faults {
        Faults {
            nan_at_step: self.inject_nan_at_step,
            checkpoint_file_delay: self.checkpoint_file_delay_ms.map(Duration::from_millis),
        }
    }
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
        // When not given, `train` fills these in from the per-machine measurement once the device is known.
        c.precision = self.precision.unwrap_or(c.precision);
        c.layout = self.layout.unwrap_or(c.layout);
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

impl TrainArgs {
    fn common(&self) -> &CommonArgs {
        match self {
            TrainArgs::Denoiser { common, .. }
            | TrainArgs::Ddpm { common, .. }
            | TrainArgs::Cfg { common, .. }
            | TrainArgs::Flow { common, .. } => common,
        }
    }
}

/// The recipe a command line asks for: the assignment's config for the kind, every flag given applied over it,
/// validated. A precision or layout not given is chosen by [`train`] once the device is known.
impl TryFrom<&TrainArgs> for TrainConfig {
    type Error = anyhow::Error;

    fn try_from(args: &TrainArgs) -> anyhow::Result<Self> {
        let config = match args {
            TrainArgs::Denoiser { common, sigma } => {
                let mut config = common.config(ModelKind::Denoiser);
                if let Some(sigma) = *sigma {
                    config.objective = Objective::Denoiser { sigma };
                }
                config
            }
            TrainArgs::Ddpm { common, schedule } => TrainConfig {
                objective: Objective::Ddpm {
                    schedule: schedule.config(),
                },
                ..common.config(ModelKind::Ddpm)
            },
            TrainArgs::Cfg {
                common,
                schedule,
                p_uncond,
            } => TrainConfig {
                objective: Objective::Cfg {
                    schedule: schedule.config(),
                    p_uncond: p_uncond.unwrap_or(0.1),
                },
                ..common.config(ModelKind::Cfg)
            },
            TrainArgs::Flow { common, p_uncond } => TrainConfig {
                objective: Objective::Flow {
                    p_uncond: p_uncond.unwrap_or(0.1),
                },
                ..common.config(ModelKind::Flow)
            },
        };
        config.validate()?;
        Ok(config)
    }
}

pub fn run(cmd: TrainCommand) -> anyhow::Result<()> {
    match cmd {
        TrainCommand::Classifier(args) => super::eval::train_classifier(args),
        TrainCommand::Model(args) => train(args.common(), TrainConfig::try_from(&*args)?),
    }
}

fn train(common: &CommonArgs, config: TrainConfig) -> anyhow::Result<()> {
    let device = common.device.resolve()?;
    let kind = config.objective.name();
    let mut test_digits = None;
    if common.resume.is_some() && common.out.is_some() && common.from_epoch.is_none() {
        bail!("--out with --resume needs --from-epoch (the checkpoint to continue from in the new folder)");
    }
    let mut trainer = if let Some(source) = &common.resume {
        let resumed = match common.from_epoch {
            Some(epoch) => Trainer::resume_from(
                RunDir::new(source),
                epoch,
                common.out.clone().map(RunDir::new),
                kind,
                device,
            ),
            None => Trainer::resume(RunDir::new(source), kind, device),
        };
        let mut trainer = resumed.with_context(|| format!("cannot resume {}", source.display()))?;
        let run_dir = trainer.run.path().to_path_buf();
        if let Some(epochs) = common.epochs {
            trainer
                .set_epochs(epochs)
                .with_context(|| format!("cannot extend {}", run_dir.display()))?;
        }
        if let Some(warning) = trainer.config.precision.slow_here(device) {
            eprintln!("{warning}");
        }
        // A kill between a checkpoint's commit and the losses.csv that follows it leaves the csv one epoch behind;
        // the checkpoint holds the whole history, so rewrite it. metrics.csv rows of epochs past the checkpoint
        // (a kill before its commit, or newer checkpoints deleted) are trained and measured again: drop them.
        trainer
            .write_losses_csv()
            .with_context(|| format!("cannot write losses.csv in {}", run_dir.display()))?;
        trainer.run.keep_metrics_through(trainer.epoch)?;
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
        // Read the data before a run folder exists, so a wrong --data-dir leaves nothing behind (and costs no
        // measurement).
        let data_dir = config.dataset.resolve_dir(common.data.data_dir.as_deref());
        test_digits = Some(load_split(&data_dir, Split::Test)?);
        let choice = resolve_choice(common.precision, common.layout, device, Workload::Train);
        (config.precision, config.layout) = (choice.precision, choice.layout);
        let run_dir = common.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(kind));
        Trainer::create(config, RunDir::new(run_dir), device)?
    };
    trainer.faults = common.faults.faults();

    let data_dir = trainer.config.dataset.resolve_dir(common.data.data_dir.as_deref());
    let train_digits = load_split(&data_dir, Split::Train)?;
    let test_digits = match test_digits {
        Some(digits) => digits,
        None => load_split(&data_dir, Split::Test)?,
    };
    let mut session = Session::new(trainer, &train_digits, test_digits, !common.no_figures);
    let trainer = &session.trainer;
    eprintln!(
        "training {kind} ({} parameters) on {} images from {} on {}, {}, run folder {}",
        trainer.model.parameter_count(),
        session.images_per_epoch(),
        data_dir.display(),
        device::describe(device),
        Choice {
            precision: trainer.config.precision,
            layout: trainer.config.layout
        }
        .describe(),
        trainer.run.path().display()
    );
    session.run(&mut Bars::new())?;
    eprintln!("done: {}", session.trainer.run.path().display());
    Ok(())
}

fn load_split(dir: &Path, split: Split) -> anyhow::Result<data::Digits> {
    Ok(data::load(dir, split)?)
}
