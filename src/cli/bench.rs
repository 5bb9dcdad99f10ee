//! `diffuse bench`: prints train img/s, sample img/s and peak memory per model kind, as a table or JSON lines.

use clap::Args;

use super::runtime::{resolve_choice, RuntimeArgs};
use diffuse::bench::{self, BenchConfig};
use diffuse::model::Arch;
use diffuse::run::config::ModelKind;
use diffuse::runtime::tuning::Workload;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model kinds to measure (repeatable) [default: all].
    #[arg(long, value_enum)]
    pub model: Vec<ModelKind>,
    /// Network architecture.
    #[arg(long, value_enum, default_value_t = Arch::Basic)]
    pub arch: Arch,
    /// Hidden width D [default: the kind's value in the assignment].
    #[arg(long)]
    pub hidden: Option<i64>,
    /// Batch size [default: the kind's value in the assignment].
    #[arg(long)]
    pub batch: Option<usize>,
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    #[arg(long, default_value_t = 20)]
    pub sample_steps: usize,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let device = args.runtime.device()?;
    // Each workload in the choice its own command makes: training as `train`, sampling as `sample` (measured apart;
    // --precision and --layout set both).
    let choice = resolve_choice(args.runtime.precision, args.runtime.layout, device, Workload::Train);
    let sample_choice = resolve_choice(args.runtime.precision, args.runtime.layout, device, Workload::Sample);
    let models = if args.model.is_empty() {
        vec![ModelKind::Denoiser, ModelKind::Ddpm, ModelKind::Cfg, ModelKind::Flow]
    } else {
        args.model
    };
    if !args.json {
        println!(
            "{:<9} {:<8} {:>4} {:>5} {:>6} {:>13} {:>7} {:>12} {:>13} {:>12} {:>12}",
            "model",
            "arch",
            "D",
            "batch",
            "prec",
            "layout",
            "threads",
            "train img/s",
            "sample img/s",
            "default 40 s",
            "peak RSS MB"
        );
    }
    for model in models {
        let spec = model.spec_config();
        let config = BenchConfig {
            model,
            arch: args.arch,
            hidden: args.hidden.unwrap_or(spec.model.hidden),
            batch: args.batch.unwrap_or(spec.batch_size),
            precision: choice.precision,
            layout: choice.layout,
            sample_precision: sample_choice.precision,
            sample_layout: sample_choice.layout,
            warmup: args.warmup,
            steps: args.steps.max(1),
            sample_steps: args.sample_steps,
        };
        let row = bench::run(&config, device)?;
        if args.json {
            println!("{}", serde_json::to_string(&row)?);
        } else {
            let sample = row.sample_img_per_s.map_or("-".to_string(), |v| format!("{v:.3}"));
            let default = row.sample_default_s.map_or("-".to_string(), |v| format!("{v:.1}"));
            println!(
                "{:<9} {:<8} {:>4} {:>5} {:>6} {:>13} {:>7} {:>12.1} {:>13} {:>12} {:>12.0}",
                row.model,
                row.arch.name(),
                row.hidden,
                row.batch,
                row.precision.name(),
                row.layout.name(),
                row.threads,
                row.train_img_per_s,
                sample,
                default,
                row.peak_rss_mb
            );
        }
    }
    let differs = (sample_choice.precision, sample_choice.layout) != (choice.precision, choice.layout);
    if differs && !args.json {
        println!(
            "sampling timed in {}: what `diffuse sample` measured fastest here",
            sample_choice.describe()
        );
    }
    Ok(())
}
