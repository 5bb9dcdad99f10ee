//! `diffuse train classifier` and `diffuse eval`: the tool's own sample-quality numbers.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use tch::{Device, Kind, Tensor};

use diffuse::classifier::{Classifier, ClassifierInfo};
use diffuse::data::{self, read_idx, sample_file_paths, Split};
use diffuse::device::DeviceChoice;
use diffuse::evaluate::{moments, score, Quality};
use diffuse::figures::plot::{line_plot, Series};
use diffuse::generate::{generate, GenerateOptions, Request, SamplerKind};
use diffuse::pretrained;
use diffuse::train::trainer::{digits_to_tensor, labels_to_tensor};
use diffuse::train::Objective;

use super::runtime::RuntimeArgs;

/// Where the shipped classifier lives.
pub const DEFAULT_CLASSIFIER: &str = "mnist-classifier";

#[derive(Args, Debug)]
pub struct ClassifierArgs {
    #[arg(long, default_value_t = 6)]
    pub epochs: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train on the first N training images only.
    #[arg(long)]
    pub subset: Option<usize>,
    /// Output folder (model.safetensors + classifier.json).
    #[arg(long, default_value = "runs/classifier")]
    pub out: PathBuf,
    /// Data folder [default: $MNIST_DIR, else ./data/mnist].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

pub fn train_classifier(args: ClassifierArgs) -> anyhow::Result<()> {
    if args.epochs == 0 {
        bail!("--epochs must be at least 1");
    }
    diffuse::device::set_threads(args.threads);
    let device = args.device.resolve()?;
    let dir = data::resolve_data_dir(args.data_dir.as_deref());
    let mut train = data::load(&dir, Split::Train)?;
    if let Some(n) = args.subset {
        train = train.subset(n.max(1));
    }
    let test = data::load(&dir, Split::Test)?;
    tch::manual_seed(args.seed as i64);
    let mut classifier = Classifier::new(device);
    let started = Instant::now();
    classifier.train(
        &digits_to_tensor(&train).to_device(device),
        &labels_to_tensor(&train).to_device(device),
        args.epochs,
        args.seed,
        |epoch, loss| {
            eprintln!(
                "epoch {epoch}: mean cross-entropy {loss:.4} ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        },
    );
    let test_accuracy = classifier.accuracy(&digits_to_tensor(&test), &test.labels);
    eprintln!("test accuracy {:.2}% on {} digits", test_accuracy * 100.0, test.n);
    classifier.save(
        &args.out,
        &ClassifierInfo {
            epochs: args.epochs,
            seed: args.seed,
            test_accuracy,
        },
    )?;
    println!("{}", args.out.display());
    Ok(())
}

#[derive(Args, Debug)]
#[command(allow_negative_numbers = true)]
pub struct EvalArgs {
    /// A training run (its newest checkpoint) or model folder to sample from.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["model", "idx"])]
    pub run: Option<PathBuf>,
    /// A shipped model [default: cfg-d64 when neither --run nor --idx is given].
    #[arg(long, conflicts_with = "idx")]
    pub model: Option<String>,
    /// Checkpoint epoch of --run [default: the newest].
    #[arg(long, requires = "run")]
    pub epoch: Option<usize>,
    /// Score existing samples instead: PREFIX-images-idx3-ubyte (+ PREFIX-labels-idx1-ubyte when present).
    #[arg(long, value_name = "PREFIX")]
    pub idx: Option<PathBuf>,
    /// Samples per digit (class-conditioned models; 10x this for unconditional ones).
    #[arg(long, default_value_t = 50)]
    pub per_digit: usize,
    #[arg(long, value_enum)]
    pub sampler: Option<SamplerKind>,
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long, default_value_t = 5.0)]
    pub guidance: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sweep sampler x steps x guidance (DDPM 300, DDIM 10/20/50 or flow Euler 5/10/20/50; guidance 1/3/5/7).
    #[arg(long)]
    pub sweep: bool,
    /// Where the sweep table goes.
    #[arg(long, default_value = "sweep.csv")]
    pub csv: PathBuf,
    /// Where the sweep's quality-vs-steps plot goes.
    #[arg(long, default_value = "sweep.png")]
    pub plot: PathBuf,
    /// Classifier folder [default: the shipped models/mnist-classifier].
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// Data folder for the MNIST test set [default: $MNIST_DIR, else ./data/mnist].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

struct Row {
    sampler: String,
    steps: usize,
    guidance: Option<f64>,
    quality: Quality,
    seconds: f64,
}

pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let device = args.runtime.device()?;
    let classifier_dir = match &args.classifier {
        Some(dir) => dir.clone(),
        None => pretrained::path_of(DEFAULT_CLASSIFIER)?,
    };
    let classifier = Classifier::load(&classifier_dir, device)
        .with_context(|| format!("cannot load the classifier from {}", classifier_dir.display()))?;
    let test = data::load(&data::resolve_data_dir(args.data_dir.as_deref()), Split::Test)?;
    let reference = moments(&classifier.features_and_predictions(&digits_to_tensor(&test)).0);

    let mut rows = Vec::new();
    if let Some(prefix) = &args.idx {
        let (images, labels) = read_samples(prefix)?;
        let quality = score(&classifier, &images, labels.as_deref(), &reference);
        rows.push(Row {
            sampler: "idx".into(),
            steps: 0,
            guidance: None,
            quality,
            seconds: 0.0,
        });
        print_rows(&rows);
        return Ok(());
    }
    let source = match (&args.run, &args.model) {
        (Some(run), _) => run.clone(),
        (None, name) => pretrained::path_of(name.as_deref().unwrap_or(pretrained::DEFAULT_MODEL))?,
    };
    let loaded = pretrained::load(&source, args.epoch, device)?;
    let class_cond = loaded.config.model.class_cond;
    if args.per_digit == 0 {
        bail!("--per-digit must be at least 1");
    }
    let request = if class_cond {
        Request::Classes((0..10u8).flat_map(|c| std::iter::repeat_n(c, args.per_digit)).collect())
    } else {
        Request::Unconditional(10 * args.per_digit)
    };
    let is_flow = matches!(loaded.config.objective, Objective::Flow { .. });
    let settings: Vec<(SamplerKind, Option<usize>, f64)> = if args.sweep {
        let samplers: Vec<(SamplerKind, Option<usize>)> = if is_flow {
            [5, 10, 20, 50].iter().map(|&s| (SamplerKind::Euler, Some(s))).collect()
        } else {
            let mut s = vec![
                (SamplerKind::Ddim, Some(10)),
                (SamplerKind::Ddim, Some(20)),
                (SamplerKind::Ddim, Some(50)),
            ];
            s.push((SamplerKind::Ddpm, None));
            s
        };
        let guidances: Vec<f64> = if class_cond {
            vec![1.0, 3.0, 5.0, 7.0]
        } else {
            vec![1.0]
        };
        guidances
            .iter()
            .flat_map(|&g| samplers.iter().map(move |&(k, s)| (k, s, g)))
            .collect()
    } else {
        vec![(
            args.sampler
                .unwrap_or_else(|| SamplerKind::default_for(&loaded.config.objective)),
            args.steps,
            args.guidance,
        )]
    };
    for (sampler, steps, guidance) in settings {
        let options = GenerateOptions {
            sampler: Some(sampler),
            steps,
            guidance,
            seed: args.seed,
            frame_every: None,
            precision: args.runtime.precision,
        };
        let started = Instant::now();
        let output = generate(&loaded.model, &loaded.config, &request, &options)?;
        let images = output.images.to_device(Device::Cpu);
        let seconds = started.elapsed().as_secs_f64();
        let labels = match &request {
            Request::Classes(c) => Some(c.clone()),
            _ => None,
        };
        let quality = score(&classifier, &images, labels.as_deref(), &reference);
        let steps = diffuse::generate::step_count(&loaded.config, &options);
        let row = Row {
            sampler: sampler.label().into(),
            steps,
            guidance: class_cond.then_some(guidance),
            quality,
            seconds,
        };
        eprintln!("{}", format_row(&row));
        rows.push(row);
    }
    print_rows(&rows);
    if args.sweep {
        write_sweep(&rows, &args.csv, &args.plot, &loaded.label)?;
    }
    Ok(())
}

fn read_samples(prefix: &Path) -> anyhow::Result<(Tensor, Option<Vec<u8>>)> {
    let (images_path, labels_path) = sample_file_paths(prefix);
    let images = read_idx(&images_path)?;
    if images.dims.len() != 3 || images.dims[1] != 28 || images.dims[2] != 28 {
        bail!(
            "{}: expected [N, 28, 28] images, found {:?}",
            images_path.display(),
            images.dims
        );
    }
    let n = images.dims[0];
    let labels = if labels_path.exists() {
        let labels = read_idx(&labels_path)?;
        if labels.dims != [n] {
            bail!("{}: {} labels for {n} images", labels_path.display(), labels.data.len());
        }
        Some(labels.data)
    } else {
        None
    };
    let tensor = Tensor::from_slice(&images.data)
        .view([n as i64, 1, 28, 28])
        .to_kind(Kind::Float)
        / 255.0;
    Ok((tensor, labels))
}

fn format_row(r: &Row) -> String {
    let guidance = r.guidance.map_or("-".to_string(), |g| format!("{g}"));
    let accuracy = r
        .quality
        .accuracy
        .map_or("-".to_string(), |a| format!("{:.1}%", a * 100.0));
    format!(
        "{:<7} {:>5} {:>8} {:>6} {:>9} {:>9.2} {:>9.1}",
        r.sampler, r.steps, guidance, r.quality.n, accuracy, r.quality.fd, r.seconds
    )
}

fn print_rows(rows: &[Row]) {
    println!(
        "{:<7} {:>5} {:>8} {:>6} {:>9} {:>9} {:>9}",
        "sampler", "steps", "guidance", "n", "accuracy", "FD", "seconds"
    );
    for r in rows {
        println!("{}", format_row(r));
    }
}

fn write_sweep(rows: &[Row], csv: &Path, plot: &Path, label: &str) -> anyhow::Result<()> {
    let mut text = String::from("sampler,steps,guidance,n,accuracy,fd,seconds\n");
    for r in rows {
        let g = r.guidance.map_or(String::new(), |g| g.to_string());
        let a = r.quality.accuracy.map_or(String::new(), |a| a.to_string());
        text.push_str(&format!(
            "{},{},{g},{},{a},{},{}\n",
            r.sampler, r.steps, r.quality.n, r.quality.fd, r.seconds
        ));
    }
    diffuse::atomic_file::write_atomic(csv, text.as_bytes())
        .with_context(|| format!("cannot write {}", csv.display()))?;
    let mut guidances: Vec<Option<f64>> = rows.iter().map(|r| r.guidance).collect();
    guidances.dedup();
    let curves: Vec<(String, Vec<(f64, f64)>)> = guidances
        .iter()
        .map(|g| {
            let name = g.map_or("FD".to_string(), |g| format!("guidance {g}"));
            (
                name,
                rows.iter()
                    .filter(|r| r.guidance == *g)
                    .map(|r| (r.steps as f64, r.quality.fd))
                    .collect(),
            )
        })
        .collect();
    let series: Vec<Series> = curves.iter().map(|(n, p)| Series::new(n, p)).collect();
    line_plot(
        plot,
        &format!("{label}: sample quality vs sampler steps"),
        "sampler steps",
        "FD to MNIST test (lower is better)",
        &series,
        true,
    )?;
    println!("{}\n{}", csv.display(), plot.display());
    Ok(())
}
