//! Giving up a generation part-way: the server stops a batch once every request in it has gone.
//!
//! Samplers return plain tensors, so a stop does not thread a `Result` through every step of every sampler: the
//! denoiser they call ([`Stoppable`]) asks before each network evaluation and, when told to stop, unwinds out of
//! the sampler with a private payload, which [`unless_stopped`] catches. `resume_unwind` skips the panic hook, so
//! nothing is printed; any other panic goes on unwinding as it was.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use tch::{Device, Tensor};

use crate::sampler::Denoiser;

/// The unwinding payload of a stop.
struct StopRequested;

/// A denoiser that asks `stop` before each prediction of `inner`.
pub(super) struct Stoppable<'a> {
    pub inner: &'a dyn Denoiser,
    pub stop: &'a dyn Fn() -> bool,
}

impl Denoiser for Stoppable<'_> {
    fn predict(&self, x: &Tensor, t: f64, class: Option<&Tensor>) -> Tensor {
        if (self.stop)() {
            resume_unwind(Box::new(StopRequested));
        }
        self.inner.predict(x, t, class)
    }

    fn device(&self) -> Device {
        self.inner.device()
    }
}

/// Runs `sample` (a sampler calling a [`Stoppable`]); None when it was stopped. Samplers only read the model, and
/// the thread's gradient mode (which each sampler turns off while it runs, with no guard that would restore it on
/// unwinding) and autocast state (restored by its guard) are as they were before, however it ends.
pub(super) fn unless_stopped<T>(sample: impl FnOnce() -> T) -> Option<T> {
    let _gradients_as_they_were = tch::no_grad_guard();
    match catch_unwind(AssertUnwindSafe(sample)) {
        Ok(output) => Some(output),
        Err(payload) if payload.is::<StopRequested>() => None,
        Err(payload) => resume_unwind(payload),
    }
}

#[cfg(test)]
mod tests {
    use crate::generate::{generate_until, GenerateError, GenerateOptions, Request, SamplerKind};
    use crate::model::Model;
    use crate::run::ModelKind;
    use crate::runtime::precision::{autocast_enabled, Precision};
    use crate::runtime::rng::RunRng;
    use tch::{Device, Kind, Tensor};

    /// `stop` is asked before every network evaluation; once it says so the generation gives up with `Stopped`,
    /// evaluating nothing more, and leaves gradients and autocast on the thread as they were. Never asked to stop,
    /// the same call draws the digits.
    #[test]
    fn a_stop_gives_up_before_the_next_network_evaluation() {
        let mut config = ModelKind::Cfg.spec_config();
        config.model.hidden = 8;
        let model = Model::new(&config.model, Device::Cpu);
        // bf16 so that autocast is on while it runs
        let options = GenerateOptions {
            sampler: Some(SamplerKind::Ddim),
            steps: Some(10),
            precision: Precision::Bf16,
            ..Default::default()
        };
        let request = Request::Classes(vec![3, 5]);
        let asked = std::cell::Cell::new(0);
        let stop_at_fifth = || {
            asked.set(asked.get() + 1);
            asked.get() >= 5
        };
        let stopped = generate_until(&model, &config, &request, &options, &mut RunRng::new(0), &stop_at_fifth);
        assert!(matches!(stopped, Err(GenerateError::Stopped)), "{:?}", stopped.err());
        assert_eq!(
            asked.get(),
            5,
            "asked once per step (guided or not), and not after the stop"
        );
        let w = Tensor::ones([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        assert!((&w * 2.0).requires_grad(), "gradients are recorded again after a stop");
        assert!(!autocast_enabled(Device::Cpu), "autocast is off again after a stop");
        let drawn = generate_until(&model, &config, &request, &options, &mut RunRng::new(0), &|| false);
        assert_eq!(drawn.expect("never stopped").images.size(), [2, 1, 28, 28]);
    }

    /// A panic that is not a stop reaches the caller unchanged.
    #[test]
    fn other_panics_go_on_unwinding() {
        let caught = std::panic::catch_unwind(|| super::unless_stopped(|| panic!("not a stop")));
        let payload = caught.expect_err("the panic reaches the caller");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"not a stop"));
    }
}
