//! # Rosetta
//!
//! Move activation-space interventions — steering vectors, refusal directions, a switch between a
//! fine-tuned model and its base — from one language model to another through a learned map between their
//! residual streams (Oozeer et al., arXiv 2503.04429).
//!
//! This facade re-exports the workspace's crates under short names; depend on the individual
//! `rosetta-*` crates instead when you need only one layer.
//!
//! | module | crate | owns |
//! |---|---|---|
//! | [`hooks`] | `rosetta-model-hooks` | models, tokenizers, hook points, generation |
//! | [`store`] | `rosetta-activation-store` | paired, aligned activations on disk |
//! | [`mapping`] | `rosetta-mapping` | maps between activation spaces and their trainer |
//! | [`steering`] | `rosetta-steering` | steering vectors and their transfer |
//! | [`tasks`] | `rosetta-tasks` | datasets and model organisms |
//! | [`eval`] | `rosetta-eval` | metrics and reports |
//!
//! [`guide`] is the user guide (`docs/GUIDE.md`): using the crates from another project, step by step.

#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub use rosetta_activation_store as store;
pub use rosetta_eval as eval;
pub use rosetta_mapping as mapping;
pub use rosetta_model_hooks as hooks;
pub use rosetta_steering as steering;
pub use rosetta_tasks as tasks;
pub use tch;

// docs/GUIDE.md as a module, so `cargo test --doc -p rosetta` compiles (and runs) every example in it.
// Its programs are whole files a reader copies, `fn main` included.
#[allow(clippy::needless_doctest_main)]
#[doc = include_str!("../../../docs/GUIDE.md")]
pub mod guide {}
