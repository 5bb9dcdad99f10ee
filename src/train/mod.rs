//! Training: per-objective batches, the optimiser and weight average, one epoch at a time ([`Trainer`]), and the
//! whole run with its per-epoch work ([`Session`]).

pub mod ema;
pub mod objective;
pub mod optim;
pub mod session;
pub mod test_metrics;
pub mod trainer;

pub use session::Session;
pub use trainer::{Faults, Hooks, TrainData, TrainError, Trainer};
