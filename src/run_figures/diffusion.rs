//! Part 2 and 3 figures: sample grids after chosen epochs and the reverse-process GIF of the final model.

use std::path::PathBuf;

use image::GrayImage;
use tch::Tensor;

use crate::figures::gif::write_gif;
use crate::figures::grid::{digit_grid, labelled_grid, save_png, GridSpec};
use crate::figures::FigureError;
use crate::generate::{generate, step_count, GenerateOptions, Request, SampleDefaults};
use crate::model::Model;

use super::{to_pixels, RunFigures, FIGURE_SEED};

/// Samples per digit in class-conditioned grids (the assignment's part 3: 4 of each digit).
pub const PER_DIGIT: usize = 4;
/// Samples in unconditional grids, as 4 rows of 10.
const UNCONDITIONAL: (usize, usize) = (4, 10);
const SCALE: u32 = 3;
/// Animation frames are shown this long; the final grid is held.
const GIF_DELAY_MS: u32 = 80;
const GIF_HOLD_MS: u32 = 2000;

/// The grid layout of a run's samples: class-conditioned runs get one row per digit.
pub fn request_for(class_cond: bool) -> (Request, usize, usize) {
    if class_cond {
        let classes = (0..10u8).flat_map(|c| std::iter::repeat_n(c, PER_DIGIT)).collect();
        (Request::Classes(classes), 10, PER_DIGIT)
    } else {
        (
            Request::Unconditional(UNCONDITIONAL.0 * UNCONDITIONAL.1),
            UNCONDITIONAL.0,
            UNCONDITIONAL.1,
        )
    }
}

/// `samples-epoch-NNN.png`, plus `reverse.gif` when `with_gif`.
pub fn sample_figures(
    figures: &RunFigures,
    model: &Model,
    epoch: usize,
    with_gif: bool,
) -> Result<Vec<PathBuf>, FigureError> {
    let config = &figures.config;
    let (request, rows, cols) = request_for(config.model.class_cond);
    let defaults = SampleDefaults::for_objective(&config.objective);
    let mut options = GenerateOptions {
        seed: config.seed ^ FIGURE_SEED,
        precision: config.precision,
        ..defaults.options()
    };
    let evaluations = step_count(config, &options);
    options.frame_every = with_gif.then(|| SampleDefaults::frame_every(evaluations));
    let output = generate(model, config, &request, &options).map_err(|e| FigureError::BadInput(e.to_string()))?;
    let spec = GridSpec::mnist(rows, cols).with_scale(SCALE);
    let row_labels: Vec<String> = if config.model.class_cond {
        config.dataset.class_names().iter().map(|s| s.to_string()).collect()
    } else {
        Vec::new()
    };
    let guidance = if config.model.class_cond {
        format!(", guidance {}", options.guidance)
    } else {
        String::new()
    };
    let title = format!(
        "{} samples after epoch {epoch} ({}, {evaluations} evaluations{guidance})",
        config.objective.name(),
        defaults.sampler.label()
    );
    let img = labelled_grid(&to_pixels(&output.images)?, &spec, &row_labels, &[], Some(&title))?;
    let path = figures.dir.join(format!("samples-epoch-{epoch:03}.png"));
    save_png(&img, &path)?;
    let mut written = vec![path];
    if with_gif {
        let frames = frames_to_grids(&output.frames, &spec)?;
        let gif = figures.dir.join("reverse.gif");
        write_gif(&gif, &frames, GIF_DELAY_MS, GIF_HOLD_MS)?;
        written.push(gif);
    }
    Ok(written)
}

/// Frames of a sampler run as grid images.
pub fn frames_to_grids(frames: &[Tensor], spec: &GridSpec) -> Result<Vec<GrayImage>, FigureError> {
    frames.iter().map(|f| digit_grid(&to_pixels(f)?, spec)).collect()
}
