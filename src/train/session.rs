//! A whole training run: the epoch loop, and the work due after each epoch in this order: the checkpoint (with
//! `losses.csv`), held-out metrics (`metrics.csv`), figures. The binary only fills [`Hooks`].

use tch::{Device, Tensor};

use crate::data::{digits_to_tensor, Digits};
use crate::run::Objective;
use crate::run_figures::RunFigures;

use super::test_metrics::{denoiser_test_mse, TEST_MSE_IMAGES};
use super::trainer::{Hooks, TrainData, TrainError, Trainer};

/// A trainer with its data: the training split on the device and the test split for held-out numbers and figures.
pub struct Session {
    pub trainer: Trainer,
    data: TrainData,
    /// The test images [N, 1, 28, 28] in [0, 1], on CPU, made once for the denoiser's held-out MSE of every epoch
    /// (the only objective that uses them).
    test_images: Option<Tensor>,
    figures: Option<RunFigures>,
}

impl Session {
    /// `figures` false skips drawing (`--no-figures`).
    pub fn new(trainer: Trainer, train: &Digits, test: Digits, figures: bool) -> Self {
        let data = TrainData::new(train, trainer.device());
        let figures = figures.then(|| RunFigures::new(&trainer.run, &trainer.config, &test));
        let test_images =
            matches!(trainer.config.objective, Objective::Denoiser { .. }).then(|| digits_to_tensor(&test));
        Self {
            trainer,
            data,
            test_images,
            figures,
        }
    }

    /// Images trained on per epoch.
    pub fn images_per_epoch(&self) -> usize {
        let n = self.data.len();
        self.trainer.config.subset.map_or(n, |s| s.min(n))
    }

    /// Trains until the run's last epoch, saving and reporting after each.
    pub fn run(&mut self, hooks: &mut dyn Hooks) -> Result<(), TrainError> {
        if let (Some(figures), 0) = (&self.figures, self.trainer.epoch) {
            figures.before_training()?;
        }
        while !self.trainer.is_finished() {
            self.trainer.train_epoch(&self.data, hooks)?;
            let averaged = self.trainer.sampling_model();
            let model = averaged.as_ref().unwrap_or(&self.trainer.model);
            // The epoch's metrics row goes before its checkpoint: a stop between the two leaves a row that no
            // checkpoint holds, which a resume drops and measures again (RunDir::keep_metrics_through), never a
            // checkpoint without its row.
            self.held_out_metrics(model, hooks)?;
            let dir = self.trainer.save_checkpoint()?;
            hooks.checkpoint_saved(self.trainer.epoch, &dir);
            if let Some(figures) = &self.figures {
                figures.after_epoch(model, self.trainer.epoch, &self.trainer.losses)?;
            }
        }
        Ok(())
    }

    /// Held-out numbers of the epoch just trained, from `model` (the weight average when the run keeps one),
    /// appended to metrics.csv.
    fn held_out_metrics(&self, model: &crate::model::Model, hooks: &mut dyn Hooks) -> Result<(), TrainError> {
        let trainer = &self.trainer;
        if let (&Objective::Denoiser { sigma }, Some(images)) = (&trainer.config.objective, &self.test_images) {
            let (denoised, noisy) = denoiser_test_mse(model, images, sigma, trainer.config.precision);
            hooks.test_mse(
                trainer.epoch,
                TEST_MSE_IMAGES.min(images.size()[0]),
                sigma,
                denoised,
                noisy,
            );
            let row = format!("{},{denoised},{noisy}", trainer.epoch);
            trainer
                .run
                .append_metrics("epoch,test_mse_denoised,test_mse_noisy", &row)?;
        }
        Ok(())
    }

    pub fn device(&self) -> Device {
        self.trainer.device()
    }
}
