//! `diffuse`: train, sample, evaluate and serve small diffusion and flow models on MNIST.
//!
//! The crate is split the way diffusers split it: a model ([`model`]) that knows nothing of noise, a schedule
//! ([`schedule`]) that is plain math, samplers ([`sampler`]) that only see a denoiser interface, and pipelines
//! ([`train`], the `diffuse` binary) that wire them together. libtorch (through `tch`) does the tensor work; the
//! rest of the code talks about models, schedules and samplers.

pub mod atomic_file;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod ema;
pub mod eval;
pub mod figures;
pub mod flow_path;
pub mod generate;
pub mod layout;
pub mod model;
pub mod optim;
pub mod precision;
pub mod precision_choice;
pub mod pretrained;
pub mod report;
pub mod rng;
pub mod run_figures;
pub mod sampler;
pub mod schedule;
pub mod server;
pub mod tensor_io;
pub mod train;
