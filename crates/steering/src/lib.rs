//! # rosetta-steering
//!
//! Steering vectors, their transfer from a source model to a target through a `rosetta-mapping` map, and
//! interventions in a model:
//!
//! - [`SteeringVector`] ([`mod@vector`]): directions at hook points of one model with its identity, method,
//!   provenance and suggested scale; `vector.safetensors` + `vector.json`, refused for the wrong model.
//! - [`mod@positions`]: prompts (texts or chats) and the positions a method reads ([`PositionRule`]: last
//!   token, all tokens, post-instruction template tokens, tokens of a trigger text).
//! - [`mod@methods`]: difference of means, PCA (`pca_diff`, `pca_center`), trigger contrasts;
//!   [`mod@refusal`]: Arditi et al.'s refusal direction with its per-layer selection on held-out prompts.
//! - [`mod@intervene`]: add (all / prompt / generated / trigger positions), directional ablation at one or
//!   every layer, patching, mean ablation, the [`SafetySwitch`], conditional steering ([`Conditional`]).
//! - [`mod@mapped`]: mapped completions — the target reading the map of the source's activations, both
//!   models decoding side by side ([`MappedPair`]).
//! - [`mod@transfer`]: mapped contrast, offset and linear-part transfer, a seeded random baseline, and the
//!   [`Fidelity`] report every transfer comes with.
//! - [`mod@sweep`]: a metric of steered completions per (layer, alpha), one prefill per prompt when only
//!   generated tokens are steered.
//! - [`gguf`]: llama.cpp / repeng control-vector files ([`ControlVector`]).
//!
//! ```no_run
//! use rosetta_model_hooks::{GenerateOptions, HookPoint, Hooks, LoadOptions, Model, Tokenizer};
//! use rosetta_steering::*;
//! # fn main() -> Result<()> {
//! let model = Model::load("qwen", LoadOptions::default())?;
//! let tok = Tokenizer::from_dir("qwen")?;
//! let contrast = Contrast {
//!     positive: vec![Prompt::user("Write an insult about my neighbour.")],
//!     negative: vec![Prompt::user("Write a poem about my neighbour.")],
//!     data: None,
//! };
//! let v = diff_of_means(&model, &tok, &contrast, &PositionRule::Last, &[HookPoint::ResidPost(12)], 8)?;
//! v.save("insult-vector")?;
//! let mut hooks = Hooks::new();
//! add_vector(&mut hooks, &v, Strength::Relative(0.5), &Where::All)?;
//! let prompt = tok.encode_chat(&[rosetta_model_hooks::ChatMessage::user("Hi!")], true)?.ids;
//! let out = model.generate(&[prompt], tok.pad_token_id(), &hooks, &GenerateOptions::greedy(20))?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod error;
pub mod gguf;
pub mod intervene;
pub mod mapped;
pub mod methods;
pub mod positions;
pub mod refusal;
pub mod sweep;
pub mod transfer;
pub mod vector;

pub use error::{Result, SteeringError};
pub use gguf::{ControlVector, GgufError};
pub use intervene::{
    ablate_direction, add_vector, capture_by_position, choose_threshold, condition_scores,
    mean_activation, patch_from, trigger_spans, AblationScope, ConditionFlags, Conditional,
    SafetySwitch, Strength, Where,
};
pub use mapped::{ExtraHooks, MappedPair};
pub use methods::{
    activations_at, activations_at_indices, diff_of_means, mean_difference, pca_center, pca_diff,
    pca_vector, trigger_contrast, Contrast, Pca, PositionActs, TriggerPairs,
};
pub use positions::{encode_all, EncodedPrompt, PositionRule, Prompt};
pub use refusal::{
    first_token_ids, mean_kl, next_token_logprobs, refusal_candidates, refusal_score,
    select_refusal_direction, InduceThreshold, RefusalCandidate, RefusalConfig, RefusalSelection,
};
pub use sweep::{layer_sweep, SweepCell, SweepConfig, SweepPositions, SweepResult};
pub use transfer::{
    cosine, random_like, reindex_rows, trigger_alignment, Effect, Fidelity, Transfer, TransferData,
    TransferOutcome,
};
pub use vector::{
    method_name, EntryInfo, Method, ModelIdentity, Provenance, Recipe, SteeringVector, VectorEntry,
    VectorInfo,
};
