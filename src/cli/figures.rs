//! `diffuse figures RUN_DIR`: redraws a run's figures from its checkpoints.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use diffuse::checkpoint;
use diffuse::data::{self, Split};
use diffuse::device::DeviceChoice;
use diffuse::run_figures::RunFigures;
use diffuse::train::trainer::{load_model, read_losses, read_run_config};

#[derive(Args, Debug)]
pub struct FiguresArgs {
    /// The run folder.
    pub run_dir: PathBuf,
    /// Data folder for the test digits [default: $MNIST_DIR, else ./data/mnist].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

pub fn run(args: FiguresArgs) -> anyhow::Result<()> {
    let device = args.device.resolve()?;
    let (_, _, config) = read_run_config(&args.run_dir, None)?;
    let data_dir = config.dataset.resolve_dir(args.data_dir.as_deref());
    let test = data::load(&data_dir, Split::Test)?;
    let figures = RunFigures::new(&args.run_dir, &config, &test);
    let mut written = figures.before_training()?;
    for (epoch, _) in checkpoint::list(&args.run_dir)? {
        if figures.shows_epoch(epoch) {
            let (_, model, _) = load_model(&args.run_dir, Some(epoch), device)?;
            written.extend(
                figures
                    .model_figures(&model, epoch)
                    .with_context(|| format!("epoch {epoch}"))?,
            );
        }
    }
    let losses = read_losses(&args.run_dir)?;
    written.push(figures.loss_curve(&losses)?);
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}
