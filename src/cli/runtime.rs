//! Flags shared by the commands that run a trained model (`sample`, `serve`): device, threads and precision.

use clap::Args;
use tch::Device;

use diffuse::device::{self, DeviceChoice};
use diffuse::precision::Precision;

#[derive(Args, Debug)]
pub struct RuntimeArgs {
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// libtorch threads [default: one per core].
    #[arg(long)]
    pub threads: Option<usize>,
}

impl RuntimeArgs {
    /// Applies the thread count and resolves the device.
    pub fn device(&self) -> anyhow::Result<Device> {
        device::set_threads(self.threads);
        Ok(self.device.resolve()?)
    }
}
