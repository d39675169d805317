//! # rosetta-model-hooks
//!
//! Decoder-only language models from Hugging Face checkpoints on libtorch (`tch`), with forward hooks.
//!
//! **Design decision:** one forward pass for every family, driven by a normalised [`ArchSpec`]; hook points
//! are visited in a fixed order and the pass stops after the last one any hook needs. tch has no module
//! hooks (tch-rs #218), so the hook mechanism lives here, in [`hooks`], shared by every family.
//!
//! ```no_run
//! use rosetta_model_hooks::{Batch, HookPoint, Hooks, LoadOptions, Model, PaddingSide, Positions};
//! # fn main() -> Result<(), rosetta_model_hooks::HookError> {
//! let model = Model::load("path/to/checkpoint", LoadOptions::default())?;
//! let batch = Batch::from_sequences(&[vec![1, 2, 3]], 0, PaddingSide::Left, model.device())?;
//! let mut hooks = Hooks::new();
//! hooks.capture(HookPoint::ResidPost(3)); // the pass stops after block 3
//! let out = model.forward(&batch, &hooks)?;
//! let acts = out.captured(HookPoint::ResidPost(3)); // [B, T, d]
//! # Ok(()) }
//! ```
//!
//! Families: Llama (incl. Llama 3 RoPE scaling, SmolLM2, Mistral-style), Qwen2, Qwen3, Gemma, Gemma 2,
//! Gemma 3 (text, and the language model of multimodal checkpoints). Numerics follow HF's eager path; the
//! golden tests hold every hook point to 1e-5 in f32.

#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod batch;
mod bf16_attention;
pub mod cache;
pub mod config;
pub mod device;
pub mod error;
mod fused;
pub mod generate;
pub mod hooks;
pub mod lora;
pub mod model;
pub mod numerics;
mod omp;
mod onednn;
pub mod optim;
mod skinny;
pub mod tokenizer;
pub mod trainable;
pub mod weights;
pub mod zoo;

pub use batch::{Batch, PaddingSide};
pub use cache::KvCache;
pub use config::{ArchSpec, Family};
pub use device::{default_device, libtorch_info};
pub use error::{HookError, Result};
pub use generate::{
    concat_captures, Decoder, FinishReason, GenerateOptions, Generation, Sampling, TokenChooser,
    TokenLog,
};
pub use hooks::{CaptureOptions, HookContext, HookOp, HookPoint, Hooks, Positions};
pub use lora::{Lora, LoraConfig, LoraPair, LoraTarget};
pub use model::{AttentionImpl, ForwardOutput, LoadOptions, Model};
pub use tokenizer::{ChatMessage, Encoded, Tokenizer};
pub use trainable::{FullConfig, TrainableWeights};
pub use weights::{LoadReport, SafetensorsSet};
