//! Files written so that a crash never leaves a half-written one: atomic replacement, and tensors in safetensors.

pub mod atomic_file;
pub mod tensor_file;
