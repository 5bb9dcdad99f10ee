//! The evaluation protocol, so that every quality number compares with every other:
//!
//! - the **reference** is the 10,000 MNIST test digits, seen through the classifier's penultimate features;
//! - a setting is scored on `per_digit` samples of each digit (n = 10 x per_digit), once per sample seed, and
//!   reported as the mean and the sample standard deviation over the seeds;
//! - the **floor** is the same score for n real *training* digits (per_digit of each class, drawn at random): real
//!   data that is disjoint from the reference, so the FD a perfect sampler would get at that n. The FD estimate is
//!   biased upwards for small n, so a sample's FD only means something beside the floor at the same n.

use std::path::Path;

use tch::{Kind, Tensor};
use thiserror::Error;

use super::classifier::Classifier;
use super::metrics::{moments, score, Quality};
use crate::data::{self, digits_to_tensor, Digits};
use crate::generate::{generate, step_count, GenerateError, GenerateOptions, Request, SamplerKind};
use crate::run::Loaded;
use crate::runtime::rng::RunRng;

#[derive(Debug, Error)]
pub enum EvalError {
    #[error(transparent)]
    Tensor(#[from] tch::TchError),
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Idx(#[from] data::IdxError),
    #[error("{path}: expected [N, 28, 28] images, found {dims:?}")]
    NotDigits { path: String, dims: Vec<usize> },
    #[error("{path}: {labels} labels for {images} images")]
    LabelCount { path: String, labels: usize, images: usize },
    #[error("{path}: label {label} of image {index} is not a digit (0..9)")]
    NotALabel { path: String, index: usize, label: u8 },
    #[error("{path} holds {n} image(s); a Frechet distance needs at least 2")]
    TooFewSamples { path: String, n: usize },
    #[error("the training split has only {have} digits of class {digit}; the floor needs {need}")]
    TooFewDigits { digit: u8, have: usize, need: usize },
    #[error(transparent)]
    Generate(#[from] GenerateError),
}

/// Feature moments of the reference set (the MNIST test split).
pub fn reference(classifier: &Classifier, test: &Digits) -> Result<(Tensor, Tensor), EvalError> {
    Ok(moments(
        &classifier.features_and_predictions(&digits_to_tensor(test))?.0,
    ))
}

/// `n` real training digits, balanced over the classes (n / 10 of each, one more of each of the first n % 10),
/// drawn without replacement with `seed`, in class order like the samples: (images [n, 1, 28, 28], labels).
pub fn training_digits(train: &Digits, n: usize, seed: u64) -> Result<(Tensor, Vec<u8>), EvalError> {
    let order = RunRng::new(seed).permutation(train.n);
    let mut picked = Vec::with_capacity(n);
    for digit in 0..10u8 {
        let per_digit = n / 10 + usize::from((digit as usize) < n % 10);
        let of_digit: Vec<usize> = order
            .iter()
            .map(|&i| i as usize)
            .filter(|&i| train.labels[i] == digit)
            .take(per_digit)
            .collect();
        if of_digit.len() < per_digit {
            return Err(EvalError::TooFewDigits {
                digit,
                have: of_digit.len(),
                need: per_digit,
            });
        }
        picked.extend(of_digit);
    }
    // Only the picked digits become floats, not the whole split.
    let chosen = train
        .select(&picked)
        .expect("the indices come from a permutation of the split");
    Ok((digits_to_tensor(&chosen), chosen.labels))
}

/// The floor at `n`: that many real training digits ([`training_digits`]) scored like samples.
pub fn floor(
    classifier: &Classifier,
    train: &Digits,
    n: usize,
    seed: u64,
    reference: &(Tensor, Tensor),
) -> Result<Quality, EvalError> {
    let (images, labels) = training_digits(train, n, seed)?;
    Ok(score(classifier, &images, Some(&labels), reference)?)
}

/// Mean and sample standard deviation (0 for a single value).
pub fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// One setting's scores over several seeds.
#[derive(Clone, Debug)]
pub struct Summary {
    pub n: usize,
    pub seeds: usize,
    /// (mean, sd) of the accuracy, a fraction; None without labels.
    pub accuracy: Option<(f64, f64)>,
    /// (mean, sd) of the FD.
    pub fd: (f64, f64),
    /// Mean wall seconds to draw the n samples.
    pub seconds: f64,
}

impl Summary {
    pub fn of(scores: &[(Quality, f64)]) -> Self {
        let fds: Vec<f64> = scores.iter().map(|(q, _)| q.fd).collect();
        let accuracies: Option<Vec<f64>> = scores.iter().map(|(q, _)| q.accuracy).collect();
        let seconds: Vec<f64> = scores.iter().map(|(_, s)| *s).collect();
        Self {
            n: scores.first().map_or(0, |(q, _)| q.n),
            seeds: scores.len(),
            accuracy: accuracies.map(|a| mean_sd(&a)),
            fd: mean_sd(&fds),
            seconds: mean_sd(&seconds).0,
        }
    }
}

/// One way of drawing samples: a sampler, its steps, the guidance scale and where guidance applies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Setting {
    pub sampler: SamplerKind,
    /// None: the sampler's default (DDPM always takes every timestep).
    pub steps: Option<usize>,
    pub guidance: f64,
    pub guidance_interval: Option<(f64, f64)>,
}

impl Setting {
    /// Generation options for this setting with `base` for everything else (precision, spacing, seed).
    pub fn options(&self, base: &GenerateOptions) -> GenerateOptions {
        GenerateOptions {
            sampler: Some(self.sampler),
            steps: self.steps,
            guidance: self.guidance,
            guidance_interval: self.guidance_interval,
            ..base.clone()
        }
    }
}

/// The settings `diffuse eval --sweep` tries for a model with this objective: every sampler that fits, at step
/// counts around the 20-evaluation budget (DDPM at its fixed 300), each at every guidance scale (class-conditioned
/// models only), without and with a guidance interval.
pub fn sweep_samplers(objective: &crate::run::Objective) -> Vec<(SamplerKind, Option<usize>)> {
    SamplerKind::fitting(objective)
        .into_iter()
        .flat_map(|sampler| {
            let steps: &[usize] = match sampler {
                SamplerKind::Ddpm => &[],
                SamplerKind::Ddim | SamplerKind::Euler => &[10, 20, 50],
                SamplerKind::DpmPP2M | SamplerKind::DpmPP2MSde => &[5, 10, 15, 20],
                SamplerKind::Heun | SamplerKind::Midpoint => &[3, 5, 10],
            };
            let steps: Vec<Option<usize>> = if steps.is_empty() {
                vec![None]
            } else {
                steps.iter().map(|&s| Some(s)).collect()
            };
            steps.into_iter().map(move |s| (sampler, s))
        })
        .collect()
}

/// The guidance scales of a sweep.
pub const SWEEP_GUIDANCE: [f64; 4] = [1.0, 2.0, 3.0, 5.0];

/// Every combination of `samplers` x `guidances` x `intervals`, except that guidance 1 (off) appears once, without an
/// interval.
pub fn grid(
    samplers: &[(SamplerKind, Option<usize>)],
    guidances: &[f64],
    intervals: &[Option<(f64, f64)>],
) -> Vec<Setting> {
    let mut settings = Vec::new();
    for &guidance in guidances {
        // Guidance 1 is the conditional prediction alone, whatever the interval: one setting, without one.
        let unguided = [None];
        let intervals = if guidance == 1.0 { &unguided[..] } else { intervals };
        for &guidance_interval in intervals {
            for &(sampler, steps) in samplers {
                settings.push(Setting {
                    sampler,
                    steps,
                    guidance,
                    guidance_interval,
                });
            }
        }
    }
    settings
}

/// Draws `request` with `setting` once per seed (`base.seed`, `base.seed + 1`, ...) and scores each draw.
pub fn evaluate_setting(
    loaded: &Loaded,
    request: &Request,
    setting: &Setting,
    base: &GenerateOptions,
    seeds: usize,
    classifier: &Classifier,
    reference: &(Tensor, Tensor),
) -> Result<Summary, EvalError> {
    let labels = match request {
        Request::Classes(c) => Some(c.clone()),
        _ => None,
    };
    let mut scores = Vec::with_capacity(seeds);
    for k in 0..seeds.max(1) {
        let options = GenerateOptions {
            seed: base.seed + k as u64,
            ..setting.options(base)
        };
        let started = std::time::Instant::now();
        let images = generate(&loaded.model, &loaded.config, request, &options)?
            .images
            .to_device(tch::Device::Cpu);
        let seconds = started.elapsed().as_secs_f64();
        scores.push((score(classifier, &images, labels.as_deref(), reference)?, seconds));
    }
    Ok(Summary::of(&scores))
}

/// Network evaluations per sample of a setting (guidance doubles the batch, not the count).
pub fn evaluations(loaded: &Loaded, setting: &Setting, base: &GenerateOptions) -> usize {
    step_count(&loaded.config, &setting.options(base))
}

/// Samples written as IDX files by `diffuse sample --idx PREFIX` or any tool: images [N, 1, 28, 28] in [0, 1]
/// and, when PREFIX-labels-idx1-ubyte exists, the digit each was asked to be.
pub fn read_samples(prefix: &Path) -> Result<(Tensor, Option<Vec<u8>>), EvalError> {
    let (images_path, labels_path) = data::sample_file_paths(prefix);
    let images = data::read_idx(&images_path)?;
    if images.dims.len() != 3 || images.dims[1] != 28 || images.dims[2] != 28 {
        return Err(EvalError::NotDigits {
            path: images_path.display().to_string(),
            dims: images.dims,
        });
    }
    let n = images.dims[0];
    if n < 2 {
        return Err(EvalError::TooFewSamples {
            path: images_path.display().to_string(),
            n,
        });
    }
    let labels = if labels_path.exists() {
        let labels = data::read_idx(&labels_path)?;
        if labels.dims != [n] {
            return Err(EvalError::LabelCount {
                path: labels_path.display().to_string(),
                labels: labels.data.len(),
                images: n,
            });
        }
        if let Some((index, &label)) = labels.data.iter().enumerate().find(|(_, &l)| l > 9) {
            return Err(EvalError::NotALabel {
                path: labels_path.display().to_string(),
                index,
                label,
            });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Guidance 1 appears once and without an interval, whatever intervals are asked for (a default interval must not
    /// drop it); every other scale gets each interval.
    #[test]
    fn the_grid_keeps_guidance_1_once_and_pairs_other_scales_with_each_interval() {
        let samplers = [(SamplerKind::Ddim, Some(3)), (SamplerKind::Ddim, Some(4))];
        type Key = (f64, Option<(f64, f64)>, Option<usize>);
        let keys = |settings: Vec<Setting>| -> Vec<Key> {
            settings
                .iter()
                .map(|s| (s.guidance, s.guidance_interval, s.steps))
                .collect()
        };
        let half = Some((0.0, 0.5));
        assert_eq!(
            keys(grid(&samplers, &[1.0, 3.0], &[half])),
            vec![
                (1.0, None, Some(3)),
                (1.0, None, Some(4)),
                (3.0, half, Some(3)),
                (3.0, half, Some(4))
            ]
        );
        let one = [samplers[0]];
        assert_eq!(
            keys(grid(&one, &[1.0, 2.0], &[None, half])),
            vec![(1.0, None, Some(3)), (2.0, None, Some(3)), (2.0, half, Some(3))]
        );
    }

    #[test]
    fn mean_and_sample_sd() {
        // numpy: np.mean([2, 4, 4, 4, 5, 5, 7, 9]) = 5, np.std([...], ddof=1) = 2.138089935299395
        let (m, sd) = mean_sd(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert!((m - 5.0).abs() < 1e-12);
        assert!((sd - 2.138089935299395).abs() < 1e-12);
        assert_eq!(mean_sd(&[3.5]), (3.5, 0.0));
    }

    #[test]
    fn training_digits_are_balanced_distinct_and_seeded() {
        // 30 tiny "digits" whose only pixel is their own index, labels 0..9 three times.
        let train = Digits {
            n: 30,
            rows: 1,
            cols: 1,
            images: (0..30).collect(),
            labels: (0..30).map(|i| (i % 10) as u8).collect(),
        };
        let (images, labels) = training_digits(&train, 20, 7).expect("enough");
        assert_eq!(labels, vec![0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9]);
        let index: Vec<f64> =
            Vec::try_from((images * 255.0).round().flatten(0, -1).to_kind(Kind::Double)).expect("vec");
        for (k, (i, l)) in index.iter().zip(&labels).enumerate() {
            assert_eq!(*i as usize % 10, *l as usize, "image {k} is not of its label");
        }
        let mut distinct = index.clone();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        assert_eq!(distinct.len(), 20);
        let again = training_digits(&train, 20, 7).expect("enough").0;
        let other = training_digits(&train, 20, 8).expect("enough").0;
        let (again, other): (Vec<f64>, Vec<f64>) = (
            Vec::try_from((again * 255.0).round().flatten(0, -1).to_kind(Kind::Double)).expect("vec"),
            Vec::try_from((other * 255.0).round().flatten(0, -1).to_kind(Kind::Double)).expect("vec"),
        );
        assert_eq!(again, index);
        assert_ne!(other, index);
        assert!(matches!(
            training_digits(&train, 40, 7),
            Err(EvalError::TooFewDigits { need: 4, .. })
        ));
        // n not a multiple of 10: the first n % 10 classes get one more, the floor is at exactly n.
        let (images, labels) = training_digits(&train, 13, 7).expect("enough");
        assert_eq!(labels, vec![0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(images.size(), [13, 1, 1, 1]);
    }
}
