//! # rosetta-mapping
//!
//! Will own: the `Mapping` trait (a map from one model's activation space `[.., d_src]` to another's
//! `[.., d_tgt]`), its implementations (the paper's ReLU autoencoder, affine, closed-form ridge and
//! Procrustes), the trainer (AdamW, schedules, early stopping, checkpoints, resume), fidelity metrics (MSE,
//! cosine, FVU, R², KL through the target model) and save/load as safetensors + JSON.
//!
//! It reads activations only through `rosetta-activation-store`'s reader.
//!
//! Not yet implemented: see the project's mapping issue.

#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
