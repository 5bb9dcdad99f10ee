//! The sampling pipeline: a trained model + its run config + what the user asked for -> digits.
//!
//! This is the only place that wires a model, a schedule, guidance and a sampler together; the `sample`
//! command, training-time figures and the server all go through [`generate`].

mod samplers;
mod stop;

pub use samplers::{SampleDefaults, SamplerKind};

use tch::{Kind, Tensor};
use thiserror::Error;

use crate::diffusion::schedule::NoiseSchedule;
use crate::model::Model;
use crate::run::{Objective, TrainConfig};
use crate::runtime::cuda;
use crate::runtime::device::upload;
use crate::runtime::precision::{autocast, Precision};
use crate::runtime::rng::RunRng;
use crate::sampler::graphed::Graphed;
use crate::sampler::guidance::Guided;
use crate::sampler::levels::Spacing;
use crate::sampler::ode::{self, FlowSolver};
use crate::sampler::{ddim, ddpm, dpmpp, Denoiser, FrameEvery, NoiseSource, SampleOutput};

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// [default: the model's, `SampleDefaults`]
    pub sampler: Option<SamplerKind>,
    /// Step count of every sampler but DDPM [default: the model's, `SampleDefaults`]; DDPM always takes every
    /// timestep.
    pub steps: Option<usize>,
    /// Where DPM-Solver++ puts its timesteps.
    pub spacing: Spacing,
    /// Guidance scale gamma for class-conditioned models (1 = no guidance) [default: `SampleDefaults`].
    pub guidance: f64,
    /// Guide only at normalized times in [lo, hi] (1 = pure noise); None = at every step [default:
    /// `SampleDefaults`].
    pub guidance_interval: Option<(f64, f64)>,
    pub seed: u64,
    /// Keep an animation frame every k steps.
    pub frame_every: Option<usize>,
    pub precision: Precision,
}

impl Default for GenerateOptions {
    /// The sampler and steps resolve to the model's [`SampleDefaults`] at generation time; guidance and its interval
    /// are the same for every objective, so they are set here.
    fn default() -> Self {
        let defaults = SampleDefaults::DIFFUSION;
        Self {
            sampler: None,
            steps: None,
            spacing: Spacing::default(),
            guidance: defaults.guidance,
            guidance_interval: defaults.guidance_interval,
            seed: 0,
            frame_every: None,
            precision: Precision::Fp32,
        }
    }
}

/// Parses a guidance interval `LO,HI` with 0 <= LO <= HI <= 1 (the `--guidance-interval` flag and the API).
pub fn parse_guidance_interval(text: &str) -> Result<(f64, f64), GenerateError> {
    if text.trim() == "all" {
        return Ok((0.0, 1.0));
    }
    let bad = || GenerateError::BadGuidanceInterval(text.chars().take(40).collect());
    let (lo, hi) = text.split_once(',').ok_or_else(bad)?;
    let lo: f64 = lo.trim().parse().map_err(|_| bad())?;
    let hi: f64 = hi.trim().parse().map_err(|_| bad())?;
    check_guidance_interval((lo, hi)).map_err(|_| bad())?;
    Ok((lo, hi))
}

fn check_guidance_interval((lo, hi): (f64, f64)) -> Result<(), GenerateError> {
    // Written so that NaN fails too.
    if 0.0 <= lo && lo <= hi && hi <= 1.0 {
        Ok(())
    } else {
        Err(GenerateError::BadGuidanceInterval(format!("{lo},{hi}")))
    }
}

#[derive(Debug, Error)]
pub enum GenerateError {
    #[error("this run trains a one-step `denoiser`, which does not generate digits; sample from a ddpm or cfg run")]
    NotGenerative,
    #[error("this `{0}` model is not class-conditioned: it cannot be asked for specific digits (drop --digits)")]
    NotConditioned(&'static str),
    #[error("digit {0} is not a class (0..9)")]
    BadDigit(u8),
    #[error("{0}")]
    BadRequest(String),
    #[error("guidance interval must be LO,HI with 0 <= LO <= HI <= 1 (normalized time, 1 = pure noise), got `{0}`")]
    BadGuidanceInterval(String),
    #[error("generation stopped before it finished: nobody waits for it any more")]
    Stopped,
    #[error(
        "{count} of {n} samples came out NaN or infinite: the model's weights or the sampler diverged (a smaller \
         guidance or more steps may help)"
    )]
    Diverged { count: usize, n: usize },
    #[error("the `{}` sampler does not apply to a `{objective}` model (use {suggestion})", .sampler.name())]
    WrongSampler {
        sampler: SamplerKind,
        objective: &'static str,
        suggestion: &'static str,
    },
}

/// What to draw: `n` unconditional samples, or one sample per entry of `classes`.
#[derive(Clone, Debug)]
pub enum Request {
    Unconditional(usize),
    Classes(Vec<u8>),
    /// Per image: a digit, or None for "any digit" (the no-class input).
    Mixed(Vec<Option<u8>>),
}

impl Request {
    pub fn len(&self) -> usize {
        match self {
            Request::Unconditional(n) => *n,
            Request::Classes(c) => c.len(),
            Request::Mixed(c) => c.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The request cut, in order, into requests of at most `size` samples.
    fn chunks(&self, size: usize) -> Vec<Request> {
        let size = size.max(1);
        match self {
            Request::Unconditional(n) => (0..*n)
                .step_by(size)
                .map(|start| Request::Unconditional(size.min(n - start)))
                .collect(),
            Request::Classes(c) => c.chunks(size).map(|c| Request::Classes(c.to_vec())).collect(),
            Request::Mixed(c) => c.chunks(size).map(|c| Request::Mixed(c.to_vec())).collect(),
        }
    }
}

/// Samples drawn in one batch by [`generate`]: larger requests go through in parts of this size, one after the
/// other, so that memory stays bounded (about 1.4 MB a sample for the D=64 UNet on the CPU, guided).
pub const GENERATE_CHUNK: usize = 500;

/// Draws digits from `model` (trained with `config`), with noise from `options.seed`, in batches of at most
/// [`GENERATE_CHUNK`] samples. A request of at most that many is one batch; a larger one continues the same noise
/// stream from part to part.
pub fn generate(
    model: &Model,
    config: &TrainConfig,
    request: &Request,
    options: &GenerateOptions,
) -> Result<SampleOutput, GenerateError> {
    generate_in_chunks(model, config, request, options, GENERATE_CHUNK)
}

fn generate_in_chunks(
    model: &Model,
    config: &TrainConfig,
    request: &Request,
    options: &GenerateOptions,
    chunk: usize,
) -> Result<SampleOutput, GenerateError> {
    let mut noise = RunRng::new(options.seed);
    let mut parts = Vec::new();
    for part in request.chunks(chunk) {
        parts.push(draw(model, config, &part, options, &mut noise, &|| false)?);
    }
    let output = match parts.len() {
        // An empty request: let `draw` refuse it.
        0 => draw(model, config, request, options, &mut noise, &|| false)?,
        1 => parts.remove(0),
        _ => SampleOutput::concat(parts),
    };
    finite(output, request.len())
}

/// [`generate`] with the noise drawn from `noise` (e.g. one stream per batched server request).
pub fn generate_with_noise(
    model: &Model,
    config: &TrainConfig,
    request: &Request,
    options: &GenerateOptions,
    noise: &mut dyn NoiseSource,
) -> Result<SampleOutput, GenerateError> {
    generate_until(model, config, request, options, noise, &|| false)
}

/// [`generate_with_noise`] that asks `stop` before every network evaluation and, once it answers true, gives up
/// with [`GenerateError::Stopped`] (the server stops a batch whose every requester has gone).
pub fn generate_until(
    model: &Model,
    config: &TrainConfig,
    request: &Request,
    options: &GenerateOptions,
    noise: &mut dyn NoiseSource,
    stop: &dyn Fn() -> bool,
) -> Result<SampleOutput, GenerateError> {
    finite(draw(model, config, request, options, noise, stop)?, request.len())
}

/// The whole request in one batch, its output unchecked.
fn draw(
    model: &Model,
    config: &TrainConfig,
    request: &Request,
    options: &GenerateOptions,
    noise: &mut dyn NoiseSource,
    stop: &dyn Fn() -> bool,
) -> Result<SampleOutput, GenerateError> {
    if matches!(config.objective, Objective::Denoiser { .. }) {
        return Err(GenerateError::NotGenerative);
    }
    let sampler = options
        .sampler
        .unwrap_or_else(|| SamplerKind::default_for(&config.objective));
    let plan = Plan::new(sampler, &config.objective)?;
    if request.is_empty() {
        return Err(GenerateError::BadRequest("nothing to generate (n = 0)".into()));
    }
    if !(options.guidance.is_finite()) {
        return Err(GenerateError::BadRequest(format!(
            "guidance must be a finite number, got {}",
            options.guidance
        )));
    }
    if let Some(interval) = options.guidance_interval {
        check_guidance_interval(interval)?;
    }
    let device = Denoiser::device(model);
    let class = match (request, config.model.class_cond) {
        (Request::Classes(classes), true) => {
            if let Some(&bad) = classes.iter().find(|&&c| c > 9) {
                return Err(GenerateError::BadDigit(bad));
            }
            Some(class_vectors(
                &classes.iter().map(|&c| Some(c)).collect::<Vec<_>>(),
                device,
            ))
        }
        (Request::Mixed(labels), true) => {
            if let Some(bad) = labels.iter().flatten().find(|&&c| c > 9) {
                return Err(GenerateError::BadDigit(*bad));
            }
            Some(class_vectors(labels, device))
        }
        (Request::Classes(_) | Request::Mixed(_), false) => {
            return Err(GenerateError::NotConditioned(config.objective.name()))
        }
        // An unconditional draw from a class-conditioned model: the "no class" vector.
        (Request::Unconditional(n), true) => Some(Tensor::zeros([*n as i64, 10], (Kind::Float, device))),
        (Request::Unconditional(_), false) => None,
    };
    let n = request.len() as i64;
    let graphed = cuda::applies(device).then(|| Graphed::new(model));
    let network: &dyn Denoiser = match &graphed {
        Some(graphed) => graphed,
        None => model,
    };
    let stoppable = stop::Stoppable { inner: network, stop };
    let guided = Guided {
        inner: &stoppable,
        gamma: options.guidance,
        interval: options.guidance_interval,
    };
    let frames = FrameEvery(options.frame_every);
    let steps = options
        .steps
        .unwrap_or(SampleDefaults::for_objective(&config.objective).steps);
    let class = class.as_ref();
    let run = || {
        autocast(options.precision, device, || match &plan {
            Plan::Ddpm(schedule) => ddpm::sample(&guided, schedule, n, class, noise, frames),
            Plan::Ddim(schedule) => ddim::sample(&guided, schedule, steps, n, class, noise, frames),
            Plan::DpmPP2M(schedule, sde) => {
                let visit = options.spacing.timesteps(schedule.timesteps(), steps);
                dpmpp::sample(&guided, schedule, &visit, *sde, n, class, noise, frames)
            }
            Plan::Flow(solver) => ode::sample(*solver, &guided, steps, n, class, noise, frames),
        })
    };
    stop::unless_stopped(run).ok_or(GenerateError::Stopped)
}

/// `output` of `n` samples, unless some hold a NaN or an infinity: a NaN survives the samplers' final clamp, and
/// would be drawn black and scored as a digit.
fn finite(output: SampleOutput, n: usize) -> Result<SampleOutput, GenerateError> {
    match non_finite_samples(&output.images) {
        0 => Ok(output),
        count => Err(GenerateError::Diverged { count, n }),
    }
}

/// How many of `images` [N, ...] hold a NaN or infinite value.
fn non_finite_samples(images: &Tensor) -> usize {
    images
        .isfinite()
        .logical_not()
        .flatten(1, -1)
        .any_dim(1, false)
        .sum(Kind::Int64)
        .int64_value(&[]) as usize
}

/// A sampler paired with what it integrates: a noise schedule, or a flow solver.
enum Plan {
    Ddpm(NoiseSchedule),
    Ddim(NoiseSchedule),
    /// DPM-Solver++(2M): the ODE, or the SDE when true.
    DpmPP2M(NoiseSchedule, bool),
    Flow(FlowSolver),
}

impl Plan {
    /// Pairs `sampler` with the model's objective, refusing a sampler that cannot read the model's prediction:
    /// ddpm, ddim and dpmpp-2m read a noise prediction (ddpm, cfg objectives), euler, heun and midpoint a velocity
    /// (flow).
    fn new(sampler: SamplerKind, objective: &Objective) -> Result<Self, GenerateError> {
        let wrong = || GenerateError::WrongSampler {
            sampler,
            objective: objective.name(),
            suggestion: if matches!(objective, Objective::Flow { .. }) {
                "--sampler euler, heun or midpoint"
            } else {
                "--sampler ddpm, ddim, dpmpp-2m or dpmpp-2m-sde"
            },
        };
        if !sampler.fits(objective) {
            return Err(wrong());
        }
        if let Some(solver) = sampler.flow_solver() {
            return Ok(Plan::Flow(solver));
        }
        // A noise-prediction sampler that fits: the objective has a schedule.
        let schedule = NoiseSchedule::new(objective.schedule().ok_or_else(wrong)?);
        Ok(match sampler {
            SamplerKind::Ddpm => Plan::Ddpm(schedule),
            SamplerKind::Ddim => Plan::Ddim(schedule),
            SamplerKind::DpmPP2M => Plan::DpmPP2M(schedule, false),
            SamplerKind::DpmPP2MSde => Plan::DpmPP2M(schedule, true),
            SamplerKind::Euler | SamplerKind::Heun | SamplerKind::Midpoint => return Err(wrong()),
        })
    }
}

/// [N, 10]: the one-hot of each digit, all zeros for None.
fn class_vectors(labels: &[Option<u8>], device: tch::Device) -> Tensor {
    let mut values = vec![0f32; labels.len() * 10];
    for (i, label) in labels.iter().enumerate() {
        if let Some(c) = label {
            values[i * 10 + *c as usize] = 1.0;
        }
    }
    upload(Tensor::from_slice(&values).view([labels.len() as i64, 10]), device)
}

/// The number of network evaluations per sample a sampler will make (for frame spacing and titles); a guided
/// evaluation counts once, though it runs a batch of 2N.
pub fn step_count(config: &TrainConfig, options: &GenerateOptions) -> usize {
    let steps = options
        .steps
        .unwrap_or(SampleDefaults::for_objective(&config.objective).steps);
    let sampler = options
        .sampler
        .unwrap_or_else(|| SamplerKind::default_for(&config.objective));
    match (sampler.flow_solver(), config.objective.schedule()) {
        (Some(solver), _) => solver.evaluations(steps),
        (None, Some(schedule)) => match sampler {
            SamplerKind::Ddim => ddim::timesteps(schedule.timesteps, steps).len(),
            SamplerKind::DpmPP2M | SamplerKind::DpmPP2MSde => {
                options.spacing.timesteps(schedule.timesteps, steps).len()
            }
            _ => schedule.timesteps,
        },
        // A noise sampler on a model without a schedule: generate refuses it.
        (None, None) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::ModelKind;

    const ALL: [SamplerKind; 7] = [
        SamplerKind::Ddpm,
        SamplerKind::Ddim,
        SamplerKind::DpmPP2M,
        SamplerKind::DpmPP2MSde,
        SamplerKind::Euler,
        SamplerKind::Heun,
        SamplerKind::Midpoint,
    ];

    #[test]
    fn samplers_pair_only_with_the_prediction_they_read() {
        for kind in [ModelKind::Ddpm, ModelKind::Cfg, ModelKind::Flow] {
            let objective = kind.spec_config().objective;
            let is_flow = matches!(objective, Objective::Flow { .. });
            for sampler in ALL {
                let flow_sampler = matches!(sampler, SamplerKind::Euler | SamplerKind::Heun | SamplerKind::Midpoint);
                let plan = Plan::new(sampler, &objective);
                assert_eq!(
                    plan.is_ok(),
                    flow_sampler == is_flow,
                    "{sampler:?} on {}",
                    objective.name()
                );
                assert_eq!(sampler.fits(&objective), flow_sampler == is_flow);
                if let Err(e) = plan {
                    let message = e.to_string();
                    assert!(message.contains(sampler.name()), "{message}");
                    assert!(message.contains(if is_flow { "euler" } else { "ddim" }), "{message}");
                }
            }
        }
        let denoiser = ModelKind::Denoiser.spec_config().objective;
        assert!(ALL
            .iter()
            .all(|&s| Plan::new(s, &denoiser).is_err() && !s.fits(&denoiser)));
    }

    /// A request larger than a chunk is drawn part by part, continuing one noise stream: the first part is what a
    /// request of that size alone draws, and no part repeats another's noise. Frames come back whole.
    #[test]
    fn large_requests_go_through_in_parts_of_one_noise_stream() {
        let mut config = ModelKind::Cfg.spec_config();
        config.model.hidden = 8;
        let model = Model::new(&config.model, tch::Device::Cpu);
        let options = GenerateOptions {
            sampler: Some(SamplerKind::Ddim),
            steps: Some(3),
            guidance_interval: None,
            frame_every: Some(1),
            ..Default::default()
        };
        let classes = vec![3, 5, 7, 3, 5, 7, 1];
        assert_eq!(
            Request::Classes(classes.clone())
                .chunks(3)
                .iter()
                .map(Request::len)
                .collect::<Vec<_>>(),
            [3, 3, 1]
        );
        let whole = generate_in_chunks(&model, &config, &Request::Classes(classes.clone()), &options, 3)
            .expect("drawn in parts");
        assert_eq!(whole.images.size(), [7, 1, 28, 28]);
        let alone = generate_in_chunks(&model, &config, &Request::Classes(classes[..3].to_vec()), &options, 3)
            .expect("one part");
        assert!(whole.images.narrow(0, 0, 3).equal(&alone.images));
        // The second part asks for the same digits as the first, with the stream's next noise.
        let (first, second) = (whole.images.narrow(0, 0, 3), whole.images.narrow(0, 3, 3));
        assert!(f64::try_from((first - second).abs().mean(Kind::Float)).expect("scalar") > 1e-3);
        assert_eq!(whole.frames.len(), alone.frames.len());
        assert!(whole.frames.iter().all(|f| f.size()[0] == 7));
        assert!(whole
            .frames
            .last()
            .expect("a frame")
            .equal(&whole.images.to_device(tch::Device::Cpu)));
        let unconditional = Request::Unconditional(7).chunks(3);
        assert_eq!(unconditional.iter().map(Request::len).collect::<Vec<_>>(), [3, 3, 1]);
    }

    #[test]
    fn names_round_trip_through_cli_and_serde() {
        use clap::ValueEnum;
        for sampler in ALL {
            assert_eq!(SamplerKind::from_name(sampler.name()), Some(sampler));
            assert_eq!(SamplerKind::from_str(sampler.name(), false), Ok(sampler));
            let json = serde_json::to_string(&sampler).expect("json");
            assert_eq!(json, format!("\"{}\"", sampler.name()));
        }
        assert_eq!(SamplerKind::from_name("dpmpp-2m"), Some(SamplerKind::DpmPP2M));
        assert_eq!(SamplerKind::from_name("dpm"), None);
    }

    /// Options left at their defaults guide as every objective's `SampleDefaults` say (the sampler and steps resolve
    /// per model at generation time, guidance and its interval do not).
    #[test]
    fn default_options_guide_as_every_objective_defaults() {
        let options = GenerateOptions::default();
        for kind in [ModelKind::Cfg, ModelKind::Ddpm, ModelKind::Flow] {
            let defaults = SampleDefaults::for_objective(&kind.spec_config().objective);
            assert_eq!(options.guidance, defaults.guidance, "{kind:?}");
            assert_eq!(options.guidance_interval, defaults.guidance_interval, "{kind:?}");
        }
    }

    /// Evaluations per sample: S for DDIM, DPM-Solver++ and Euler, 2S - 1 for Heun, 2S for midpoint, T for DDPM.
    #[test]
    fn step_count_is_network_evaluations() {
        let count = |kind: ModelKind, sampler, steps, spacing| {
            let options = GenerateOptions {
                sampler: Some(sampler),
                steps,
                spacing,
                ..Default::default()
            };
            step_count(&kind.spec_config(), &options)
        };
        let t = Spacing::Trailing;
        assert_eq!(count(ModelKind::Cfg, SamplerKind::Ddpm, None, t), 300);
        assert_eq!(count(ModelKind::Cfg, SamplerKind::Ddim, Some(10), t), 10);
        assert_eq!(count(ModelKind::Cfg, SamplerKind::Ddim, Some(5000), t), 300);
        assert_eq!(
            count(ModelKind::Ddpm, SamplerKind::DpmPP2M, None, t),
            SampleDefaults::DIFFUSION.steps
        );
        assert_eq!(
            count(ModelKind::Ddpm, SamplerKind::DpmPP2M, Some(10), Spacing::Leading),
            10
        );
        assert_eq!(count(ModelKind::Flow, SamplerKind::Euler, Some(10), t), 10);
        assert_eq!(count(ModelKind::Flow, SamplerKind::Heun, Some(10), t), 19);
        assert_eq!(count(ModelKind::Flow, SamplerKind::Midpoint, Some(10), t), 20);
        assert_eq!(
            count(ModelKind::Flow, SamplerKind::Heun, None, t),
            2 * SampleDefaults::FLOW.steps - 1
        );
    }

    #[test]
    fn guidance_interval_parsing() {
        assert_eq!(parse_guidance_interval("0.2,0.8").expect("ok"), (0.2, 0.8));
        assert_eq!(parse_guidance_interval(" 0 , 1 ").expect("ok"), (0.0, 1.0));
        assert_eq!(parse_guidance_interval("0.5,0.5").expect("ok"), (0.5, 0.5));
        for bad in [
            "",
            "0.2",
            "0.8,0.2",
            "-0.1,0.5",
            "0.5,1.5",
            "NaN,1",
            "a,b",
            "0.1,0.2,0.3",
        ] {
            let err = parse_guidance_interval(bad).expect_err(bad);
            assert!(err.to_string().contains("0 <= LO <= HI <= 1"), "{err}");
        }
    }
}
