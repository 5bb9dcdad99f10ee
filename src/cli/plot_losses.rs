//! `diffuse plot-losses A B ... --out overlay.png`: per-step loss curves of several runs on one plot (e.g. fp32
//! against bf16 at the same seed and budget).

use std::path::PathBuf;

use clap::Args;

use diffuse::figures::plot::{line_plot, Series};
use diffuse::run;

#[derive(Args, Debug)]
pub struct PlotLossesArgs {
    /// Run folders (their losses.csv) or losses.csv files.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Curve names, comma-separated, in input order [default: the folder names].
    #[arg(long, value_delimiter = ',')]
    pub labels: Option<Vec<String>>,
    /// Only the first N steps of each run.
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long, default_value = "loss-overlay.png")]
    pub out: PathBuf,
}

pub fn run(args: PlotLossesArgs) -> anyhow::Result<()> {
    let mut curves = Vec::new();
    for (i, input) in args.inputs.iter().enumerate() {
        let mut points = run::read_loss_curve(input)?;
        if let Some(n) = args.steps {
            points.truncate(n);
        }
        let default_label = input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let label = args
            .labels
            .as_ref()
            .and_then(|l| l.get(i).cloned())
            .unwrap_or(default_label);
        let mean = points.iter().rev().take(100).map(|p| p.1).sum::<f64>() / points.len().clamp(1, 100) as f64;
        println!("{label}: {} steps, mean of the last 100 losses {mean:.5}", points.len());
        curves.push((label, points));
    }
    let series: Vec<Series> = curves
        .iter()
        .map(|(name, points)| Series::smoothed(name, points))
        .collect();
    line_plot(
        &args.out,
        "training loss",
        "step",
        "MSE loss (log scale)",
        &series,
        true,
    )?;
    println!("{}", args.out.display());
    Ok(())
}
