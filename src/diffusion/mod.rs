//! The noising processes, as plain math: the DDPM variance schedule and the rectified-flow path.

pub mod flow_path;
pub mod schedule;
