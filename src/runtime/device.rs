//! Where tensors live: CPU by default, an NVIDIA GPU automatically when libtorch sees one.

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};
use thiserror::Error;

/// The `--device` flag.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when available, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("--device cuda: no CUDA device is visible to libtorch (is this an NVIDIA machine with its driver, and is libtorch_cuda on the library path?)")]
    NoCuda,
}

impl DeviceChoice {
    pub fn resolve(self) -> Result<Device, DeviceError> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Auto if tch::Cuda::is_available() => Ok(cuda()),
            DeviceChoice::Auto => Ok(Device::Cpu),
            DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(cuda()),
            DeviceChoice::Cuda => Err(DeviceError::NoCuda),
        }
    }
}

/// The first GPU.
fn cuda() -> Device {
    Device::Cuda(0)
}

/// Lets cuDNN time its convolution algorithms for each new input shape and keep the fastest (off unless called).
/// Training calls it: the tuning costs about 4 s once (epoch 1 of cfg ran at 9,900 img/s with it and 20,000 without,
/// on an H200), then every step is 12% faster (26,200 against 23,500 img/s with CUDA graphs). One-shot sampling does
/// not: 40 guided DDPM digits took 1.24 s with it and 0.55-0.69 s without (README, Performance).
pub fn autotune_convolutions(device: Device) {
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
}

/// `host` (a CPU tensor) on `device`. To a GPU the copy goes through pinned memory and is only queued: the host goes
/// on without waiting for the work queued before it (a copy from ordinary memory would wait), and libtorch keeps the
/// pinned block until the copy has run. This is how per-step values drawn on the host (noise, timesteps, batch
/// indices) reach the GPU with no host sync inside an epoch.
pub fn upload(host: Tensor, device: Device) -> Tensor {
    match device {
        // aten::_pin_memory: Tensor::pin_memory(device) warns at every call that its device argument is deprecated.
        Device::Cuda(_) => host
            .internal_pin_memory(device)
            .to_device_(device, host.kind(), true, false),
        _ => host.to_device(device),
    }
}

/// Sets libtorch's intra-op thread count; `None` keeps libtorch's choice (one per core).
pub fn set_threads(threads: Option<usize>) {
    if let Some(n) = threads {
        tch::set_num_threads(n.max(1) as i32);
    }
}

/// The thread count libtorch will use.
pub fn threads() -> usize {
    tch::get_num_threads().max(1) as usize
}

pub fn describe(device: Device) -> String {
    match device {
        Device::Cpu => match threads() {
            1 => "cpu (1 thread)".to_string(),
            n => format!("cpu ({n} threads)"),
        },
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}
