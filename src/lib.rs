//! `diffuse`: train, sample, evaluate and serve small diffusion and flow models on MNIST.
//!
//! The crate is split the way diffusers split it: a model ([`model`]) that knows nothing of noise, the noising
//! processes ([`diffusion`]) as plain math, samplers ([`sampler`]) that only see a denoiser interface, and pipelines
//! ([`train`], [`generate`], [`eval`], the `diffuse` binary) that wire them together. [`run`] owns the run folder
//! and the model folder; [`runtime`] is where and how the tensor work runs (device, precision, layout, RNG).
//! libtorch (through `tch`) does the tensor work; the rest of the code talks about models, schedules and samplers.

pub mod bench;
pub mod data;
pub mod diffusion;
pub mod eval;
pub mod figures;
pub mod generate;
pub mod io;
pub mod model;
pub mod report;
pub mod run;
pub mod run_figures;
pub mod runtime;
pub mod sampler;
pub mod server;
pub mod train;
