//! Flags shared by every command that runs the network: where (device, threads) and, for the commands that run a
//! trained model (`sample`, `eval`, `serve`), in what precision.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tch::Device;

use diffuse::run::{self, shipped, Loaded};
use diffuse::runtime::device::{self, DeviceChoice};
use diffuse::runtime::precision::Precision;

/// `--device` and `--threads`, flattened into each command.
#[derive(Args, Debug, Clone, Copy)]
pub struct DeviceArgs {
    /// Where to compute (also `DIFFUSE_DEVICE`).
    #[arg(long, value_enum, env = "DIFFUSE_DEVICE", default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// libtorch threads [default: one per core].
    #[arg(long)]
    pub threads: Option<usize>,
}

impl DeviceArgs {
    /// Applies the thread count and resolves the device.
    pub fn resolve(&self) -> anyhow::Result<Device> {
        device::set_threads(self.threads);
        Ok(self.device.resolve()?)
    }
}

#[derive(Args, Debug)]
pub struct RuntimeArgs {
    /// Compute precision [default: bf16 on CPUs with native bf16 (AVX512-BF16 or AMX), else fp32].
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl RuntimeArgs {
    /// Applies the thread count and resolves the device.
    pub fn device(&self) -> anyhow::Result<Device> {
        self.device.resolve()
    }

    /// The precision for `device` (warning once on stderr when it will be slow there).
    pub fn precision(&self, device: Device) -> Precision {
        resolve_precision(self.precision, device)
    }
}

/// `--precision` resolved for `device`, with the warning for bf16 on a CPU that only emulates it.
pub fn resolve_precision(requested: Option<Precision>, device: Device) -> Precision {
    let precision = Precision::resolve(requested, device);
    if let Some(warning) = precision.slow_here(device) {
        eprintln!("{warning}");
    }
    precision
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
    /// Loads the model onto `device`.
    pub fn load(&self, device: Device) -> anyhow::Result<Loaded> {
        let (source, _) = shipped::resolve(self.run.as_deref(), self.model.as_deref())?;
        run::load(&source, self.epoch, device).with_context(|| format!("cannot load a model from {}", source.display()))
    }
}
