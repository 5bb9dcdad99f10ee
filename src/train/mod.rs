//! Training: the run configuration, per-objective batches, and the loop that checkpoints every epoch.

pub mod config;
pub mod objective;
pub mod test_metrics;
pub mod trainer;

pub use config::{Objective, TrainConfig};
pub use trainer::{Progress, TrainData, TrainError, Trainer};
