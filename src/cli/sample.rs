//! `diffuse sample`: draw digits from a trained run as a PNG grid, a GIF of the reverse process, and IDX files.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;
use clap::Args;

use super::runtime::{ModelArgs, RuntimeArgs};
use tch::{Kind, Tensor};

use diffuse::data::{sample_file_paths, write_idx};
use diffuse::figures::gif::write_gif;
use diffuse::figures::grid::{labelled_grid, save_png, GridSpec};
use diffuse::generate::{
    generate, parse_guidance_interval, step_count, GenerateOptions, Request, SampleDefaults, SamplerKind,
};
use diffuse::run::Loaded;
use diffuse::run_figures::diffusion::frames_to_grids;
use diffuse::run_figures::to_pixels;
use diffuse::runtime::device;
use diffuse::sampler::levels::Spacing;

#[derive(Args, Debug)]
#[command(allow_negative_numbers = true)]
pub struct SampleArgs {
    #[command(flatten)]
    pub source: ModelArgs,
    /// Digits to draw, comma-separated (class-conditioned models) [default: 0,1,...,9].
    #[arg(long, value_delimiter = ',')]
    pub digits: Option<Vec<u8>>,
    /// Samples of each digit [default: 4].
    #[arg(long)]
    pub per_digit: Option<usize>,
    /// Number of samples for unconditional models [default: 40].
    #[arg(long)]
    pub n: Option<usize>,
    /// Classifier-free guidance scale (class-conditioned models) [default: the model's, README Sampling].
    #[arg(long)]
    pub guidance: Option<f64>,
    /// [default: dpmpp-2m-sde for diffusion models, heun for flow models; README Sampling]
    #[arg(long, value_enum)]
    pub sampler: Option<SamplerKind>,
    /// Steps of every sampler but ddpm [default: the model's, README Sampling]. Heun makes 2 network evaluations per step but 1 on the last,
    /// midpoint 2.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Where dpmpp-2m places its timesteps [default: trailing].
    #[arg(long, value_enum)]
    pub spacing: Option<Spacing>,
    /// Guide only at normalized times LO..HI (0 = data, 1 = pure noise), e.g. 0.2,0.8; the conditional prediction
    /// alone elsewhere. `all` guides at every step [default: the model's, README Sampling].
    #[arg(long, value_name = "LO,HI", value_parser = parse_guidance_interval)]
    pub guidance_interval: Option<(f64, f64)>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output PNG grid.
    #[arg(long, value_name = "PNG")]
    pub out: PathBuf,
    /// Also write the reverse process as an animated GIF.
    #[arg(long, value_name = "GIF")]
    pub gif: Option<PathBuf>,
    /// Also write PREFIX-images-idx3-ubyte (uint8 [N,28,28]) and PREFIX-labels-idx1-ubyte (the requested digits).
    #[arg(long, value_name = "PREFIX")]
    pub idx: Option<PathBuf>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

const MAX_SAMPLES: usize = 10_000;

pub fn run(args: SampleArgs) -> anyhow::Result<()> {
    let device = args.runtime.device()?;
    let source = args.source.source()?;
    let choice = args.runtime.choice(device);
    let Loaded { model, config, label } = args.source.load(&source, device, choice.layout)?;
    let class_cond = config.model.class_cond;
    let (request, rows, cols) = if class_cond {
        if args.n.is_some() {
            bail!("--n is for unconditional models; this cfg model takes --digits and --per-digit");
        }
        let digits = args.digits.clone().unwrap_or_else(|| (0..10).collect());
        let per_digit = args.per_digit.unwrap_or(4);
        if per_digit == 0 || digits.is_empty() {
            bail!("nothing to draw: --per-digit and --digits must not be empty");
        }
        let classes: Vec<u8> = digits.iter().flat_map(|&d| std::iter::repeat_n(d, per_digit)).collect();
        (Request::Classes(classes), digits.len(), per_digit)
    } else {
        if args.digits.is_some() || args.per_digit.is_some() {
            bail!(
                "this `{}` model is not class-conditioned: use --n instead of --digits/--per-digit",
                config.objective.name()
            );
        }
        let n = args.n.unwrap_or(40);
        if n == 0 {
            bail!("--n must be at least 1");
        }
        (Request::Unconditional(n), n.div_ceil(10), n.min(10))
    };
    if request.len() > MAX_SAMPLES {
        bail!("{} samples requested; at most {MAX_SAMPLES} per call", request.len());
    }
    if args.steps == Some(0) {
        bail!("--steps must be at least 1");
    }
    if !class_cond && (args.guidance.is_some() || args.guidance_interval.is_some()) {
        bail!(
            "--guidance and --guidance-interval apply to class-conditioned models; this `{}` model is not one",
            config.objective.name()
        );
    }
    let defaults = SampleDefaults::for_objective(&config.objective);
    let sampler = args.sampler.unwrap_or(defaults.sampler);
    if args.steps.is_some() && sampler == SamplerKind::Ddpm {
        bail!("--steps applies to the other samplers (DDPM always takes every timestep)");
    }
    if args.spacing.is_some() && !matches!(sampler, SamplerKind::DpmPP2M | SamplerKind::DpmPP2MSde) {
        bail!("--spacing applies to --sampler dpmpp-2m and dpmpp-2m-sde");
    }
    let mut options = GenerateOptions {
        sampler: Some(sampler),
        steps: args.steps,
        spacing: args.spacing.unwrap_or_default(),
        guidance: args.guidance.unwrap_or(defaults.guidance),
        guidance_interval: args.guidance_interval.or(defaults.guidance_interval),
        seed: args.seed,
        frame_every: None,
        precision: choice.precision,
    };
    let evaluations = step_count(&config, &options);
    if args.gif.is_some() {
        options.frame_every = Some(SampleDefaults::frame_every(evaluations));
    }
    super::check_output_file(&args.out, Some("png"))?;
    if let Some(gif) = &args.gif {
        super::check_output_file(gif, Some("gif"))?;
    }
    if let Some(prefix) = &args.idx {
        super::check_output_folder(prefix)?;
    }
    let started = Instant::now();
    let output = generate(&model, &config, &request, &options)?;
    let images = output.images.to_device(tch::Device::Cpu);
    let seconds = started.elapsed().as_secs_f64();

    // Grid: one row per digit (conditioned) or rows of 10; unconditional leftovers are padded with blanks.
    let n = request.len() as i64;
    let padded = pad_to(&images, (rows * cols) as i64);
    let spec = GridSpec::mnist(rows, cols).with_scale(3);
    let row_labels: Vec<String> = match &request {
        Request::Classes(classes) => classes
            .chunks(cols)
            .map(|c| config.dataset.class_names()[c[0] as usize].to_string())
            .collect(),
        Request::Unconditional(_) | Request::Mixed(_) => Vec::new(),
    };
    let guidance = if class_cond {
        format!(", guidance {}", options.guidance)
    } else {
        String::new()
    };
    let title = format!(
        "{label}: {} {evaluations} evaluations{guidance}, seed {}",
        sampler.label(),
        args.seed
    );
    save_png(
        &labelled_grid(&to_pixels(&padded)?, &spec, &row_labels, &[], Some(&title))?,
        &args.out,
    )?;
    println!("{}", args.out.display());

    if let Some(gif) = &args.gif {
        let frames: Vec<Tensor> = output.frames.iter().map(|f| pad_to(f, (rows * cols) as i64)).collect();
        write_gif(gif, &frames_to_grids(&frames, &spec)?, 80, 2000)?;
        println!("{}", gif.display());
    }
    if let Some(prefix) = &args.idx {
        let bytes: Vec<u8> = Vec::try_from(
            (images * 255.0)
                .round()
                .clamp(0.0, 255.0)
                .to_kind(Kind::Uint8)
                .flatten(0, -1),
        )?;
        let (images_path, labels_path) = sample_file_paths(prefix);
        write_idx(&images_path, &[n as usize, 28, 28], &bytes)?;
        println!("{}", images_path.display());
        match &request {
            Request::Classes(classes) => {
                write_idx(&labels_path, &[classes.len()], classes)?;
                println!("{}", labels_path.display());
            }
            // No digits were asked for: a labels file left by an earlier call must not be read as these samples'.
            _ if labels_path.exists() => std::fs::remove_file(&labels_path)
                .map_err(|e| anyhow::anyhow!("cannot remove the old {}: {e}", labels_path.display()))?,
            _ => {}
        }
    }
    eprintln!(
        "{n} samples in {seconds:.2} s ({:.1} img/s) on {}, {}",
        n as f64 / seconds,
        device::describe(device),
        choice.describe()
    );
    Ok(())
}

fn pad_to(images: &Tensor, total: i64) -> Tensor {
    let n = images.size()[0];
    if n >= total {
        return images.shallow_clone();
    }
    Tensor::cat(
        &[
            images,
            &images.zeros_like().narrow(0, 0, 1).repeat([total - n, 1, 1, 1]),
        ],
        0,
    )
}
