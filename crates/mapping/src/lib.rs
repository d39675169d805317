//! # rosetta-mapping
//!
//! Maps between two models' activation spaces, `[.., d_src]` -> `[.., d_tgt]`, and how to get them:
//!
//! - [`Mapping`]: the trait every map implements ([`Mapping::forward`], dims, parameters, folding of a
//!   standardisation). [`Autoencoder`] is the paper's `Linear -> ReLU -> Linear` map (hidden width
//!   `floor(sqrt(d_src d_tgt))`); [`Affine`] one linear layer, trained (the paper's baseline) or fitted in
//!   closed form by [`fit_ridge`] / [`fit_procrustes`] from one streamed pass ([`CrossMoments`], f64).
//! - [`Trainer`]: AdamW over shuffled store batches, gradient accumulation, schedules, validation every
//!   epoch, early stopping, checkpoints and exact resumption.
//! - [`Metrics`]: MSE, cosine, FVU, R² ([`mod@metrics`] gives the formulas); [`mod@kl`]: KL fidelity through
//!   the target model, and KL fine-tuning.
//! - [`save_map`] / [`SavedMap`]: `map.safetensors` + `map.json`, refused for the wrong model pair.
//!
//! It reads activations only through `rosetta-activation-store`'s reader, and runs a model only in
//! [`mod@kl`], through `rosetta-model-hooks`' patch hooks.
//!
//! ```no_run
//! use rosetta_activation_store::StoreReader;
//! use rosetta_mapping::*;
//! # fn main() -> Result<()> {
//! let reader = StoreReader::open("store")?;
//! let spec = &reader.manifest().spec;
//! let (d_src, d_tgt) = (spec.source.dim, spec.target.as_ref().map_or(0, |t| t.dim));
//! tch::manual_seed(0);
//! let map = Autoencoder::new(d_src, d_tgt, None, AutoencoderInit::Default, tch::Device::Cpu)?;
//! let trainer = Trainer::new(&reader, TrainConfig::default(), tch::Device::Cpu)?.with_checkpoints("ckpt");
//! let out = trainer.train(map.into(), &mut |_| Control::Continue)?;
//! println!("validation FVU {:?}", out.validation.map(|m| m.fvu));
//! # Ok(()) }
//! ```

#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod error;
pub mod fit;
pub mod kl;
pub mod map;
pub mod metrics;
pub mod save;
pub mod train;

pub use error::{MappingError, Result};
pub use fit::{
    fit_procrustes, fit_ridge, CrossMoments, Precision, ProcrustesOptions, RidgeOptions,
};
pub use kl::{fine_tune_kl, kl_fidelity, KlDoc, KlOptions, KlReport, KlSummary, KlTrainConfig};
pub use map::{Affine, AnyMap, Autoencoder, AutoencoderInit, MapKind, Mapping, Standardization};
pub use metrics::{metrics, Metrics, MetricsAccumulator};
pub use save::{save_map, Endpoint, MapDescription, MapInfo, SavedMap};
pub use train::{
    cosine_lr, evaluate, loss_and_grads, quality_warnings, AdamW, AdamWConfig, Control,
    EpochRecord, Schedule, StopReason, TrainConfig, TrainEvent, TrainOutcome, Trainer,
    DEFAULT_STEPS, MIN_TRUSTED_STEPS,
};
