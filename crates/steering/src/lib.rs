//! # rosetta-steering
//!
//! Will own: steering vectors (difference of means, PCA, refusal direction, trigger-position contrasts),
//! their transfer from a source model to a target through a `rosetta-mapping` map, interventions in the
//! target (add, ablate, patch, replace-with-mapped, the safety switch), layer sweeps, and vector file formats
//! (safetensors + JSON, llama.cpp / repeng GGUF control vectors).
//!
//! Implemented so far: [`gguf`], llama.cpp / repeng control-vector files ([`ControlVector`]). The rest is
//! the project's steering issue.

#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod gguf;

pub use gguf::{ControlVector, GgufError};
