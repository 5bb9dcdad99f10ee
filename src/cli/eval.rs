//! `diffuse train classifier` and `diffuse eval`: the tool's own sample-quality numbers, by the protocol of
//! [`diffuse::eval::protocol`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;

use diffuse::data::{self, digits_to_tensor, labels_to_tensor, Split};
use diffuse::eval::classifier::{Classifier, ClassifierInfo};
use diffuse::eval::metrics::{score, Quality};
use diffuse::eval::protocol::{self, Setting, Summary};
use diffuse::eval::train_classifier;
use diffuse::figures::plot::{line_plot, Series};
use diffuse::generate::{parse_guidance_interval, GenerateOptions, Request, SampleDefaults, SamplerKind};
use diffuse::run::shipped;
use diffuse::sampler::levels::Spacing;

use super::runtime::{DataArgs, DeviceArgs, ModelArgs, RuntimeArgs};

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
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn train_classifier(args: ClassifierArgs) -> anyhow::Result<()> {
    if args.epochs == 0 {
        bail!("--epochs must be at least 1");
    }
    let device = args.device.resolve()?;
    let dir = data::resolve_data_dir(args.data.data_dir.as_deref());
    let mut train = data::load(&dir, Split::Train)?;
    if let Some(n) = args.subset {
        train = train.subset(n.max(1));
    }
    let test = data::load(&dir, Split::Test)?;
    tch::manual_seed(args.seed as i64);
    let mut classifier = Classifier::new(device);
    let started = Instant::now();
    train_classifier::train(
        &mut classifier,
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
    let test_accuracy = classifier.accuracy(&digits_to_tensor(&test), &test.labels)?;
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
    #[command(flatten)]
    pub source: ModelArgs,
    /// Score existing samples instead: PREFIX-images-idx3-ubyte (+ PREFIX-labels-idx1-ubyte when present).
    /// Repeatable: one row per PREFIX, named by its file name, all against one reference and floor.
    #[arg(
        long,
        value_name = "PREFIX",
        conflicts_with_all = ["run", "model", "sweep", "sampler", "steps", "guidance", "guidance_interval", "seeds"]
    )]
    pub idx: Vec<PathBuf>,
    /// Samples per digit (class-conditioned models; 10x this for unconditional ones).
    #[arg(long, default_value_t = 50)]
    pub per_digit: usize,
    /// Sampler(s) to score, comma-separated [default: the model's (README Sampling); with --sweep: every one that
    /// fits].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub sampler: Vec<SamplerKind>,
    /// Step count(s) for every sampler but ddpm, comma-separated [default: the model's; with --sweep: per sampler].
    #[arg(long, value_delimiter = ',')]
    pub steps: Vec<usize>,
    /// Guidance scale(s), comma-separated [default: the model's; with --sweep: 1,2,3,5].
    #[arg(long, value_delimiter = ',')]
    pub guidance: Vec<f64>,
    /// Guidance interval(s) LO,HI in normalized time (repeatable; `all` = guide at every step) [default: the model's;
    /// with --sweep: all and the model's].
    #[arg(long, value_name = "LO,HI")]
    pub guidance_interval: Vec<String>,
    /// Where dpmpp-2m places its timesteps [default: trailing].
    #[arg(long, value_enum, default_value_t = Spacing::default())]
    pub spacing: Spacing,
    /// First sample seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Score each setting with this many sample seeds (seed, seed+1, ...) and report mean and sd.
    #[arg(long, default_value_t = 1)]
    pub seeds: usize,
    /// Score a grid: every sampler that fits at several step counts, guidance 1,2,3,5 (flags given narrow it).
    #[arg(long)]
    pub sweep: bool,
    /// Where the sweep table goes.
    #[arg(long, default_value = "sweep.csv")]
    pub csv: PathBuf,
    /// Where the sweep's quality-vs-evaluations plot goes.
    #[arg(long, default_value = "sweep.png")]
    pub plot: PathBuf,
    /// Classifier folder [default: the shipped models/mnist-classifier].
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// One line of the table: what was scored, with how many network evaluations per sample.
struct Row {
    name: String,
    steps: Option<usize>,
    evaluations: Option<usize>,
    guidance: Option<f64>,
    interval: Option<(f64, f64)>,
    summary: Summary,
}

impl Row {
    /// A row for real or given digits scored once: no sampler settings, no time.
    fn scored(name: String, quality: Quality) -> Self {
        Row {
            name,
            steps: None,
            evaluations: None,
            guidance: None,
            interval: None,
            summary: Summary::of(&[(quality, 0.0)]),
        }
    }
}

pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let device = args.runtime.device()?;
    if args.per_digit == 0 || args.seeds == 0 {
        bail!("--per-digit and --seeds must be at least 1");
    }
    if args.steps.contains(&0) {
        bail!("--steps must be at least 1");
    }
    if args.sweep {
        // A sweep takes hours; a path it cannot write must not be found out at its end.
        super::check_output_file(&args.csv, None)?;
        super::check_output_file(&args.plot, Some("png"))?;
    }
    let classifier_dir = match &args.classifier {
        Some(dir) => dir.clone(),
        None => shipped::path_of(DEFAULT_CLASSIFIER)?,
    };
    let classifier = Classifier::load(&classifier_dir, device)
        .with_context(|| format!("cannot load the classifier from {}", classifier_dir.display()))?;
    let data_dir = data::resolve_data_dir(args.data.data_dir.as_deref());
    let reference = protocol::reference(&classifier, &data::load(&data_dir, Split::Test)?)?;
    let train = data::load(&data_dir, Split::Train)?;
    let floor_row = |n: usize| -> anyhow::Result<Row> {
        let quality = protocol::floor(&classifier, &train, n, args.seed, &reference)?;
        Ok(Row::scored("floor".into(), quality))
    };

    if !args.idx.is_empty() {
        print_rows(&idx_rows(&args.idx, &classifier, &reference, floor_row)?);
        return Ok(());
    }
    let source = args.source.source()?;
    let choice = args.runtime.choice(device);
    let loaded = args.source.load(&source, device, choice.layout)?;
    let class_cond = loaded.config.model.class_cond;
    if !class_cond && (!args.guidance.is_empty() || !args.guidance_interval.is_empty()) {
        bail!(
            "--guidance and --guidance-interval apply to class-conditioned models; this `{}` model is not one",
            loaded.config.objective.name()
        );
    }
    let request = if class_cond {
        Request::Classes((0..10u8).flat_map(|c| std::iter::repeat_n(c, args.per_digit)).collect())
    } else {
        Request::Unconditional(10 * args.per_digit)
    };
    let settings = settings(&args, &loaded.config.objective, class_cond)?;
    let base = GenerateOptions {
        spacing: args.spacing,
        seed: args.seed,
        precision: choice.precision,
        ..GenerateOptions::default()
    };
    let mut rows = vec![floor_row(request.len())?];
    eprintln!("{}", format_row(&rows[0]));
    for setting in &settings {
        let summary =
            protocol::evaluate_setting(&loaded, &request, setting, &base, args.seeds, &classifier, &reference)?;
        let row = Row {
            name: setting.sampler.name().into(),
            steps: setting.steps,
            evaluations: Some(protocol::evaluations(&loaded, setting, &base)),
            guidance: class_cond.then_some(setting.guidance),
            interval: setting.guidance_interval,
            summary,
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

/// One row per sample file, each after the floor at its n (one floor row per distinct n).
fn idx_rows(
    prefixes: &[PathBuf],
    classifier: &Classifier,
    reference: &(tch::Tensor, tch::Tensor),
    floor_row: impl Fn(usize) -> anyhow::Result<Row>,
) -> anyhow::Result<Vec<Row>> {
    let mut scored = Vec::with_capacity(prefixes.len());
    for prefix in prefixes {
        let (images, labels) = protocol::read_samples(prefix)?;
        let quality = score(classifier, &images, labels.as_deref(), reference)?;
        let name = prefix
            .file_name()
            .map_or_else(|| prefix.display().to_string(), |n| n.to_string_lossy().into_owned());
        scored.push(Row::scored(name, quality));
    }
    let mut sizes: Vec<usize> = scored.iter().map(|r| r.summary.n).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut rows = Vec::with_capacity(sizes.len() + scored.len());
    for n in sizes {
        rows.push(floor_row(n)?);
    }
    rows.extend(scored);
    Ok(rows)
}

/// The settings the flags ask for: each list given, else the sweep's (with --sweep) or the single default.
fn settings(args: &EvalArgs, objective: &diffuse::run::Objective, class_cond: bool) -> anyhow::Result<Vec<Setting>> {
    let defaults = SampleDefaults::for_objective(objective);
    let samplers: Vec<(SamplerKind, Option<usize>)> = match (args.sampler.is_empty(), args.steps.is_empty()) {
        (true, true) if args.sweep => protocol::sweep_samplers(objective),
        (true, _) => with_steps(&[defaults.sampler], &args.steps),
        (false, _) => with_steps(&args.sampler, &args.steps),
    };
    for (sampler, _) in &samplers {
        if !sampler.fits(objective) {
            bail!(
                "--sampler {} does not apply to a `{}` model (use one of: {})",
                sampler.name(),
                objective.name(),
                SamplerKind::fitting(objective)
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let guidances: Vec<f64> = match (args.guidance.is_empty(), class_cond) {
        (_, false) => vec![1.0],
        (true, true) if args.sweep => protocol::SWEEP_GUIDANCE.to_vec(),
        (true, true) => vec![defaults.guidance],
        (false, true) => args.guidance.clone(),
    };
    let mut intervals = Vec::new();
    for text in &args.guidance_interval {
        intervals.push(match text.as_str() {
            "all" => None,
            _ => Some(parse_guidance_interval(text)?),
        });
    }
    if intervals.is_empty() {
        // The sweep sets guidance at every step beside the model's default interval.
        if args.sweep && defaults.guidance_interval.is_some() {
            intervals.push(None);
        }
        intervals.push(defaults.guidance_interval);
    }
    Ok(protocol::grid(&samplers, &guidances, &intervals))
}

/// Each sampler at each step count (DDPM once: it always takes every timestep).
fn with_steps(samplers: &[SamplerKind], steps: &[usize]) -> Vec<(SamplerKind, Option<usize>)> {
    let mut pairs = Vec::new();
    for &sampler in samplers {
        if sampler == SamplerKind::Ddpm || steps.is_empty() {
            pairs.push((sampler, None));
        } else {
            pairs.extend(steps.iter().map(|&s| (sampler, Some(s))));
        }
    }
    pairs
}

const HEADER: [&str; 12] = [
    "sampler", "steps", "evals", "guidance", "interval", "n", "seeds", "accuracy", "acc_sd", "FD", "FD_sd", "seconds",
];

/// The row's cells, in [`HEADER`]'s order ("-" where a cell does not apply).
fn cells(r: &Row) -> Vec<String> {
    let dash = || "-".to_string();
    let s = &r.summary;
    vec![
        r.name.clone(),
        r.steps.map_or_else(dash, |v| v.to_string()),
        r.evaluations.map_or_else(dash, |v| v.to_string()),
        r.guidance.map_or_else(dash, |g| g.to_string()),
        r.interval.map_or_else(dash, |(lo, hi)| format!("{lo},{hi}")),
        s.n.to_string(),
        s.seeds.to_string(),
        s.accuracy.map_or_else(dash, |(a, _)| format!("{:.1}%", a * 100.0)),
        s.accuracy.map_or_else(dash, |(_, sd)| format!("{:.1}", sd * 100.0)),
        format!("{:.2}", s.fd.0),
        format!("{:.2}", s.fd.1),
        if r.evaluations.is_some() {
            format!("{:.1}", s.seconds)
        } else {
            dash()
        },
    ]
}

fn format_cells(cells: &[String]) -> String {
    let widths = [12, 5, 5, 8, 9, 6, 5, 8, 6, 8, 6, 8];
    cells
        .iter()
        .zip(widths)
        .enumerate()
        .map(|(i, (c, w))| if i == 0 { format!("{c:<w$}") } else { format!("{c:>w$}") })
        .collect::<Vec<_>>()
        .join(" ")
}

fn format_row(r: &Row) -> String {
    format_cells(&cells(r))
}

fn print_rows(rows: &[Row]) {
    println!("{}", format_cells(&HEADER.map(String::from)));
    for r in rows {
        println!("{}", format_row(r));
    }
}

fn write_sweep(rows: &[Row], csv: &Path, plot: &Path, label: &str) -> anyhow::Result<()> {
    let mut text = HEADER.join(",").to_lowercase() + "\n";
    for r in rows {
        text.push_str(
            &cells(r)
                .iter()
                .map(|c| c.replace(',', ";"))
                .collect::<Vec<_>>()
                .join(","),
        );
        text.push('\n');
    }
    diffuse::io::atomic_file::write_atomic(csv, text.as_bytes())
        .with_context(|| format!("cannot write {}", csv.display()))?;
    // One curve per sampler, guidance and interval: FD against network evaluations.
    let mut curves: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in rows.iter().filter(|r| r.evaluations.is_some()) {
        let mut name = r.name.clone();
        if let Some(g) = r.guidance {
            name.push_str(&format!(" g{g}"));
        }
        if let Some((lo, hi)) = r.interval {
            name.push_str(&format!(" [{lo},{hi}]"));
        }
        let point = (r.evaluations.unwrap_or(0) as f64, r.summary.fd.0);
        match curves.iter_mut().find(|(n, _)| *n == name) {
            Some((_, points)) => points.push(point),
            None => curves.push((name, vec![point])),
        }
    }
    let series: Vec<Series> = curves.iter().map(|(n, p)| Series::new(n, p)).collect();
    line_plot(
        plot,
        &format!("{label}: sample quality vs network evaluations"),
        "network evaluations per sample",
        "FD to MNIST test (lower is better)",
        &series,
        true,
    )?;
    println!("{}\n{}", csv.display(), plot.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use diffuse::diffusion::schedule::ScheduleConfig;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        eval: EvalArgs,
    }

    fn settings_for(flags: &[&str]) -> Vec<Setting> {
        let args = Cli::parse_from(std::iter::once("eval").chain(flags.iter().copied())).eval;
        let cfg = diffuse::run::Objective::Cfg {
            schedule: ScheduleConfig::default(),
            p_uncond: 0.1,
        };
        settings(&args, &cfg, true).expect("settings")
    }

    #[test]
    fn the_sweep_explores_guidance_everywhere_and_in_the_default_interval() {
        let default = SampleDefaults::DIFFUSION.guidance_interval;
        assert!(default.is_some());
        let sweep = settings_for(&["--sweep"]);
        for &guidance in protocol::SWEEP_GUIDANCE.iter().filter(|&&g| g != 1.0) {
            for interval in [None, default] {
                assert!(
                    sweep
                        .iter()
                        .any(|s| s.guidance == guidance && s.guidance_interval == interval),
                    "the sweep has no guidance {guidance} with interval {interval:?}"
                );
            }
        }
        // Guidance 1 ignores the interval, so it appears without one.
        assert!(sweep
            .iter()
            .filter(|s| s.guidance == 1.0)
            .all(|s| s.guidance_interval.is_none()));

        // Without --sweep: the model's one default setting; an interval given replaces it.
        let single = settings_for(&[]);
        assert_eq!(single.len(), 1);
        assert_eq!(single[0].guidance_interval, default);
        let given = settings_for(&["--sweep", "--guidance-interval", "0.2,0.9"]);
        assert!(given
            .iter()
            .filter(|s| s.guidance != 1.0)
            .all(|s| s.guidance_interval == Some((0.2, 0.9))));
    }
}
