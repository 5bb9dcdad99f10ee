//! Where and how the tensor work runs: device and threads, precision (and its measured choice per CPU), memory
//! layout, and the seeded random streams.

pub mod device;
pub mod layout;
pub mod precision;
pub mod rng;
pub mod tuning;
