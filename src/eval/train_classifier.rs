//! Training the evaluation classifier (`diffuse train classifier`): Adam, batch 128, lr 1e-3 decaying exponentially
//! per epoch to 1e-4, random shifts of up to 2 pixels as augmentation.

use tch::Tensor;

use super::classifier::Classifier;
use crate::runtime::rng::RunRng;
use crate::train::optim::{Adam, AdamConfig};

const BATCH: usize = 128;

/// Trains `classifier` for `epochs` on images [N, 1, 28, 28] / labels [N] (on its device), reporting each epoch's
/// mean loss through `on_epoch`.
pub fn train(
    classifier: &mut Classifier,
    images: &Tensor,
    labels: &Tensor,
    epochs: usize,
    seed: u64,
    mut on_epoch: impl FnMut(usize, f64),
) {
    let params: Vec<(String, Tensor)> = classifier.named_variables().into_iter().collect();
    let mut adam = Adam::new(params, AdamConfig::default());
    let mut rng = RunRng::new(seed);
    let n = images.size()[0] as usize;
    for epoch in 1..=epochs {
        let lr = 1e-3 * 0.1f64.powf((epoch - 1) as f64 / epochs.max(2).saturating_sub(1) as f64);
        let mut total = 0.0;
        let mut batches = 0;
        for chunk in rng.permutation(n).chunks(BATCH) {
            let index = Tensor::from_slice(chunk).to_device(classifier.device());
            // Augmentation: the whole batch shifted by up to 2 pixels each way (pad, then crop).
            let shift = rng.integers(2, 5);
            let x = images
                .index_select(0, &index)
                .constant_pad_nd([2, 2, 2, 2])
                .narrow(2, shift[0], 28)
                .narrow(3, shift[1], 28);
            let loss = classifier
                .logits(&x)
                .cross_entropy_for_logits(&labels.index_select(0, &index));
            adam.zero_grad();
            loss.backward();
            adam.step(lr);
            total += loss.double_value(&[]);
            batches += 1;
        }
        on_epoch(epoch, total / batches.max(1) as f64);
    }
}
