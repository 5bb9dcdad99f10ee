//! `diffuse figures RUN_DIR`: redraws a run's figures from its checkpoints.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use diffuse::data::{self, Split};
use diffuse::run::{self, RunDir};
use diffuse::run_figures::RunFigures;

use super::runtime::{DataArgs, DeviceArgs};

#[derive(Args, Debug)]
pub struct FiguresArgs {
    /// The run folder.
    pub run_dir: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: FiguresArgs) -> anyhow::Result<()> {
    let device = args.device.resolve()?;
    let run_dir = RunDir::new(&args.run_dir);
    let (_, _, state) = run_dir.read_state(None)?;
    let config = state.config;
    let data_dir = config.dataset.resolve_dir(args.data.data_dir.as_deref());
    let test = data::load(&data_dir, Split::Test)?;
    let figures = RunFigures::new(&run_dir, &config, &test);
    let mut written = figures.before_training()?;
    for (epoch, _) in run_dir.checkpoints()? {
        if figures.shows_epoch(epoch) {
            let loaded = run::load(&args.run_dir, Some(epoch), device, config.layout)?;
            written.extend(
                figures
                    .model_figures(&loaded.model, epoch)
                    .with_context(|| format!("epoch {epoch}"))?,
            );
        }
    }
    written.push(figures.loss_curve(&state.losses)?);
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}
