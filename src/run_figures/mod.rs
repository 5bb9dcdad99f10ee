//! The figures a training run writes into `RUN_DIR/figures/`, and their regeneration from checkpoints.
//!
//! Figure noise comes from its own seeded stream (never the run's), so drawing figures cannot change training,
//! and the same digits and noise appear in every epoch's figure.

mod denoiser;
pub mod diffusion;

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::data::Digits;
use crate::data::{digits_to_tensor, labels_to_tensor};
use crate::figures::plot::{line_plot, Series};
use crate::figures::FigureError;
use crate::model::Model;
use crate::run::{Objective, RunDir, TrainConfig, LOSS_FIGURE};

/// Seed offset of the figure noise stream.
const FIGURE_SEED: u64 = 0x05ee_df16;

/// Figures of one run.
pub struct RunFigures {
    dir: PathBuf,
    config: TrainConfig,
    /// Test images [N, 1, 28, 28] and labels [N], on CPU.
    test_images: Tensor,
    test_labels: Tensor,
}

impl RunFigures {
    pub fn new(run: &RunDir, config: &TrainConfig, test: &Digits) -> Self {
        Self {
            dir: run.figures_dir(),
            config: config.clone(),
            test_images: digits_to_tensor(test),
            test_labels: labels_to_tensor(test),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Figures that need no model (part 1: the noising grid).
    pub fn before_training(&self) -> Result<Vec<PathBuf>, FigureError> {
        match &self.config.objective {
            Objective::Denoiser { .. } => Ok(vec![denoiser::noising_grid(self)?]),
            _ => Ok(Vec::new()),
        }
    }

    /// Figures due after `epoch` (1-based): the loss curve always, model figures at the epochs that show them.
    pub fn after_epoch(&self, model: &Model, epoch: usize, losses: &[f32]) -> Result<Vec<PathBuf>, FigureError> {
        let mut written = vec![self.loss_curve(losses)?];
        if self.shows_epoch(epoch) {
            written.extend(self.model_figures(model, epoch)?);
        }
        Ok(written)
    }

    /// Epochs whose model figures are drawn: part 1 the first and last; diffusion 1, 5, 10, 15, 20 and the last.
    pub fn shows_epoch(&self, epoch: usize) -> bool {
        let last = epoch == self.config.epochs;
        match self.config.objective {
            Objective::Denoiser { .. } => epoch == 1 || last,
            _ => epoch == 1 || epoch.is_multiple_of(5) || last,
        }
    }

    /// The figures of one checkpoint's model.
    pub fn model_figures(&self, model: &Model, epoch: usize) -> Result<Vec<PathBuf>, FigureError> {
        match &self.config.objective {
            Objective::Denoiser { sigma } => {
                let mut written = vec![denoiser::denoised_grid(self, model, *sigma, epoch)?];
                if epoch == self.config.epochs {
                    written.push(denoiser::out_of_distribution_grid(self, model)?);
                }
                Ok(written)
            }
            _ => diffusion::sample_figures(self, model, epoch, epoch == self.config.epochs),
        }
    }

    /// `loss.png`: per-iteration training loss, log scale, with a moving average.
    pub fn loss_curve(&self, losses: &[f32]) -> Result<PathBuf, FigureError> {
        let points: Vec<(f64, f64)> = losses
            .iter()
            .enumerate()
            .map(|(i, &l)| ((i + 1) as f64, l as f64))
            .collect();
        let path = self.dir.join(LOSS_FIGURE);
        let title = format!(
            "{} training loss (D={})",
            self.config.objective.name(),
            self.config.model.hidden
        );
        line_plot(
            &path,
            &title,
            "iteration",
            "MSE loss (log scale)",
            &[Series::smoothed("loss", &points)],
            true,
        )?;
        Ok(path)
    }

    /// The first test image of each digit 0..9 in order, as indices.
    fn one_per_class(&self, count: usize) -> Result<Vec<i64>, FigureError> {
        let labels: Vec<i64> = Vec::try_from(&self.test_labels)?;
        let mut picked = Vec::new();
        for class in 0..10 {
            if let Some(i) = labels.iter().position(|&l| l == class) {
                picked.push(i as i64);
            }
        }
        picked.truncate(count);
        Ok(picked)
    }

    fn test_batch(&self, indices: &[i64]) -> Tensor {
        self.test_images.index_select(0, &Tensor::from_slice(indices))
    }
}

/// A [N, 1, H, W] tensor as a flat f32 vector for the image grid functions.
pub fn to_pixels(images: &Tensor) -> Result<Vec<f32>, FigureError> {
    Ok(Vec::try_from(
        images
            .detach()
            .to_device(tch::Device::Cpu)
            .to_kind(Kind::Float)
            .flatten(0, -1),
    )?)
}
