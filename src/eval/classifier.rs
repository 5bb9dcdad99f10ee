//! The MNIST classifier the tool evaluates samples with: the network and its files (training is in
//! [`super::train_classifier`]).
//!
//! A small CNN: conv 3x3 (1 -> 32), ReLU, max-pool, conv 3x3 (32 -> 64), ReLU, max-pool, linear 3136 -> 128, ReLU
//! (the 128 "penultimate" features used for the Frechet distance), linear 128 -> 10. Inception features are the
//! wrong tool for 28x28 digits; a classifier trained on the digits themselves sees what matters for them.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use crate::io::atomic_file::write_atomic;
use crate::io::tensor_file::{self, TensorFileError};
use crate::run::MODEL_FILE;

pub const INFO_FILE: &str = "classifier.json";
/// Width of the penultimate features.
pub const FEATURES: i64 = 128;

/// What `classifier.json` records beside the weights.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClassifierInfo {
    pub epochs: usize,
    pub seed: u64,
    pub test_accuracy: f64,
}

/// Fraction of `predictions` equal to `labels`.
pub fn agreement(predictions: &[i64], labels: &[u8]) -> f64 {
    let right = predictions
        .iter()
        .zip(labels)
        .filter(|(p, l)| **p == **l as i64)
        .count();
    right as f64 / labels.len().max(1) as f64
}

pub struct Classifier {
    vs: nn::VarStore,
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl Classifier {
    pub fn new(device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let pad = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let conv1 = nn::conv2d(&root / "conv1", 1, 32, 3, pad);
        let conv2 = nn::conv2d(&root / "conv2", 32, 64, 3, pad);
        let fc1 = nn::linear(&root / "fc1", 64 * 7 * 7, FEATURES, Default::default());
        let fc2 = nn::linear(&root / "fc2", FEATURES, 10, Default::default());
        Self {
            vs,
            conv1,
            conv2,
            fc1,
            fc2,
        }
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// x [N, 1, 28, 28] in [0, 1] -> penultimate features [N, 128].
    pub fn features(&self, x: &Tensor) -> Tensor {
        let x = (x.to_device(self.device()) - 0.1307) / 0.3081;
        let h = x
            .apply(&self.conv1)
            .relu()
            .max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false); // [N, 32, 14, 14]
        let h = h
            .apply(&self.conv2)
            .relu()
            .max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false); // [N, 64, 7, 7]
        h.flatten(1, -1).apply(&self.fc1).relu() // [N, 128]
    }

    /// x [N, 1, 28, 28] -> logits [N, 10].
    pub fn logits(&self, x: &Tensor) -> Tensor {
        self.fc2.forward(&self.features(x))
    }

    /// (features [N, 128] as f64 on CPU, predicted digit [N]) in batches, under no-grad.
    pub fn features_and_predictions(&self, images: &Tensor) -> Result<(Tensor, Vec<i64>), tch::TchError> {
        let n = images.size()[0];
        let mut features = Vec::new();
        let mut predictions = Vec::new();
        tch::no_grad(|| -> Result<(), tch::TchError> {
            let mut start = 0;
            while start < n {
                let len = 1000.min(n - start);
                let f = self.features(&images.narrow(0, start, len));
                let p = self.fc2.forward(&f).argmax(1, false).to_device(Device::Cpu);
                predictions.extend(Vec::<i64>::try_from(p)?);
                features.push(f.to_device(Device::Cpu).to_kind(Kind::Double));
                start += len;
            }
            Ok(())
        })?;
        Ok((Tensor::cat(&features, 0), predictions))
    }

    /// Fraction of `images` classified as `labels`.
    pub fn accuracy(&self, images: &Tensor, labels: &[u8]) -> Result<f64, tch::TchError> {
        Ok(agreement(&self.features_and_predictions(images)?.1, labels))
    }

    /// The weights by name (training and persistence).
    pub(crate) fn named_variables(&self) -> std::collections::BTreeMap<String, Tensor> {
        self.vs.variables().into_iter().collect()
    }

    pub fn save(&self, dir: &Path, info: &ClassifierInfo) -> Result<(), TensorFileError> {
        let io = |source| TensorFileError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        tensor_file::write(&dir.join(MODEL_FILE), &self.named_variables())?;
        let text = serde_json::to_string_pretty(info).map_err(|e| io(e.into()))?;
        write_atomic(&dir.join(INFO_FILE), text.as_bytes()).map_err(io)
    }

    pub fn load(dir: &Path, device: Device) -> Result<Self, TensorFileError> {
        let classifier = Self::new(device);
        tensor_file::load_into(&dir.join(MODEL_FILE), &classifier.named_variables())?;
        Ok(classifier)
    }
}
