//! Flags shared by every command that runs the network: where (device, threads) and, for the commands that run a
//! trained model (`sample`, `eval`, `serve`), in what precision.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tch::Device;

use diffuse::run::{self, shipped, Loaded};
use diffuse::runtime::cuda::{self, Graphs};
use diffuse::runtime::device::{self, DeviceChoice};
use diffuse::runtime::layout::Layout;
use diffuse::runtime::precision::Precision;
use diffuse::runtime::tuning::{self, Choice, Workload};

/// `--device` and `--threads`, flattened into each command.
#[derive(Args, Debug, Clone, Copy)]
pub struct DeviceArgs {
    /// Where to compute (also `DIFFUSE_DEVICE`).
    #[arg(long, value_enum, env = "DIFFUSE_DEVICE", default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// libtorch threads, 1 to 1024 (also `DIFFUSE_THREADS`) [default: one per core].
    #[arg(
        long,
        env = "DIFFUSE_THREADS",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024)
    )]
    pub threads: Option<usize>,
    /// On CUDA, run each training step and each network evaluation of a sampler as one captured CUDA graph (also
    /// `DIFFUSE_CUDA_GRAPHS`). No effect on CPU.
    #[arg(long, value_enum, env = "DIFFUSE_CUDA_GRAPHS", default_value_t = Graphs::On)]
    pub cuda_graphs: Graphs,
}

impl DeviceArgs {
    /// Applies the thread count and resolves the device.
    pub fn resolve(&self) -> anyhow::Result<Device> {
        device::set_threads(self.threads);
        cuda::set(self.cuda_graphs);
        Ok(self.device.resolve()?)
    }
}

#[derive(Args, Debug)]
pub struct RuntimeArgs {
    /// Compute precision [default: the faster on this CPU, measured once (bf16 only where the CPU has native bf16);
    /// fp32 on CUDA].
    #[arg(long, value_enum, env = "DIFFUSE_PRECISION")]
    pub precision: Option<Precision>,
    /// Memory layout of activations and weights [default: the faster on this CPU, measured with the precision;
    /// channels-last on CUDA].
    #[arg(long, value_enum, env = "DIFFUSE_LAYOUT")]
    pub layout: Option<Layout>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl RuntimeArgs {
    /// Applies the thread count and resolves the device.
    pub fn device(&self) -> anyhow::Result<Device> {
        self.device.resolve()
    }

    /// The precision and layout to sample on `device` (warning once on stderr when the precision will be slow there).
    pub fn choice(&self, device: Device) -> Choice {
        resolve_choice(self.precision, self.layout, device, Workload::Sample)
    }
}

/// `--precision` and `--layout` resolved for `device` and `workload`, with the warning for bf16 on a CPU that only
/// emulates it.
pub fn resolve_choice(
    precision: Option<Precision>,
    layout: Option<Layout>,
    device: Device,
    workload: Workload,
) -> Choice {
    let choice = tuning::resolve(precision, layout, device, workload, &diffuse::model::tuning::time_pass);
    if let Some(warning) = choice.precision.slow_here(device) {
        super::note(&warning);
    }
    choice
}

/// `--data-dir`, flattened into each command that reads the dataset.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Data folder [default: $MNIST_DIR, else ./data/mnist].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Which trained model to run: a training run or model folder, or a shipped model by name.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// A training run (its newest checkpoint, or --epoch) or a model folder.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "model")]
    pub run: Option<PathBuf>,
    /// A shipped model from models/ [default: cfg-d64 when no --run is given].
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// Checkpoint epoch of --run [default: the newest].
    #[arg(long, requires = "run")]
    pub epoch: Option<usize>,
}

impl ModelArgs {
    /// The folder to load: the run or model folder, or the shipped model's (an unknown name is refused here).
    pub fn source(&self) -> anyhow::Result<PathBuf> {
        Ok(shipped::resolve(self.run.as_deref(), self.model.as_deref())?.0)
    }

    /// Loads `source` (from [`ModelArgs::source`]) onto `device`, in `layout`.
    pub fn load(&self, source: &std::path::Path, device: Device, layout: Layout) -> anyhow::Result<Loaded> {
        run::load(source, self.epoch, device, layout)
            .with_context(|| format!("cannot load a model from {}", source.display()))
    }
}
