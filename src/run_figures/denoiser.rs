//! Part 1 figures: the noising grid, clean / noisy / denoised test digits, and the out-of-distribution grid.

use std::path::PathBuf;

use tch::Tensor;

use crate::figures::grid::{labelled_grid, save_png, GridSpec};
use crate::figures::FigureError;
use crate::model::Model;
use crate::runtime::rng::RunRng;

use super::{to_pixels, RunFigures, FIGURE_SEED};

/// The noise levels of the assignment's noising and out-of-distribution figures.
pub const SIGMAS: [f64; 7] = [0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0];
const SCALE: u32 = 3;

fn sigma_labels() -> Vec<String> {
    SIGMAS.iter().map(|s| format!("σ={s:.1}")).collect()
}

/// x [N, 1, 28, 28] noised at each sigma with a fixed noise draw: [N * sigmas, 1, 28, 28], one row per image.
fn noised_rows(figures: &RunFigures, x: &Tensor) -> Tensor {
    let n = x.size()[0];
    let mut rng = RunRng::new(figures.config.seed ^ FIGURE_SEED);
    let eps = rng.normal_tensor(&x.size(), x.device());
    let rows: Vec<Tensor> = (0..n)
        .map(|i| {
            let (xi, ei) = (x.narrow(0, i, 1), eps.narrow(0, i, 1));
            Tensor::cat(&SIGMAS.iter().map(|&s| &xi + &ei * s).collect::<Vec<_>>(), 0)
        })
        .collect();
    Tensor::cat(&rows, 0)
}

/// `noising.png`: a few test digits (rows) at every sigma (columns).
pub fn noising_grid(figures: &RunFigures) -> Result<PathBuf, FigureError> {
    let picked = figures.one_per_class(5)?;
    let noisy = noised_rows(figures, &figures.test_batch(&picked));
    let spec = GridSpec::mnist(picked.len(), SIGMAS.len()).with_scale(SCALE);
    let img = labelled_grid(&to_pixels(&noisy)?, &spec, &[], &sigma_labels(), Some("z = x + σ·ε"))?;
    let path = figures.dir.join("noising.png");
    save_png(&img, &path)?;
    Ok(path)
}

fn denoise(model: &Model, z: &Tensor) -> Tensor {
    tch::no_grad(|| model.forward_t(&z.to_device(model.device()), None, None, false))
}

/// `denoised-epoch-NNN.png`: rows clean, noisy (training sigma), denoised, for one test digit of each class.
pub fn denoised_grid(figures: &RunFigures, model: &Model, sigma: f64, epoch: usize) -> Result<PathBuf, FigureError> {
    let picked = figures.one_per_class(10)?;
    let x = figures.test_batch(&picked);
    let mut rng = RunRng::new(figures.config.seed ^ FIGURE_SEED);
    let z = &x + rng.normal_tensor(&x.size(), x.device()) * sigma;
    let out = denoise(model, &z).to_device(x.device());
    let all = Tensor::cat(&[&x, &z, &out], 0);
    let spec = GridSpec::mnist(3, picked.len()).with_scale(SCALE);
    let rows = ["clean".to_string(), format!("noisy σ={sigma}"), "denoised".to_string()];
    let title = format!("Denoiser after epoch {epoch}");
    let img = labelled_grid(&to_pixels(&all)?, &spec, &rows, &[], Some(&title))?;
    let path = figures.dir.join(format!("denoised-epoch-{epoch:03}.png"));
    save_png(&img, &path)?;
    Ok(path)
}

/// `ood.png`: one test digit noised at every sigma (top row) and the denoiser's output (bottom row); the model
/// was trained at one sigma only, so the other columns are out of distribution.
pub fn out_of_distribution_grid(figures: &RunFigures, model: &Model) -> Result<PathBuf, FigureError> {
    let picked = figures.one_per_class(1)?;
    let noisy = noised_rows(figures, &figures.test_batch(&picked));
    let out = denoise(model, &noisy).to_device(noisy.device());
    let all = Tensor::cat(&[&noisy, &out], 0);
    let spec = GridSpec::mnist(2, SIGMAS.len()).with_scale(SCALE);
    let rows = ["noisy".to_string(), "denoised".to_string()];
    let img = labelled_grid(
        &to_pixels(&all)?,
        &spec,
        &rows,
        &sigma_labels(),
        Some("Out-of-distribution noise levels"),
    )?;
    let path = figures.dir.join("ood.png");
    save_png(&img, &path)?;
    Ok(path)
}
