//! Measuring sample quality with the tool's own MNIST classifier: the network ([`classifier`]), its training
//! ([`train_classifier`]), the metrics ([`metrics`]: FD and accuracy) and the protocol that makes numbers comparable
//! ([`protocol`]: reference set, floor, seeds).

pub mod classifier;
pub mod metrics;
pub mod protocol;
pub mod train_classifier;
