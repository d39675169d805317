//! LoRA adapters (Hu et al. 2021, as PEFT implements them) on a loaded model's projections:
//! `y = x Wᵀ + b + (alpha / r) · dropout(x) Aᵀ Bᵀ`, with `A` `[r, in]` and `B` `[out, r]` per adapted
//! projection of each block. `A` starts as PEFT's `kaiming_uniform_(a = √5)` (uniform in `±1/√in`, from a
//! seeded generator), `B` at zero, so a fresh adapter leaves the model unchanged.
//!
//! The model's weights are never modified: [`crate::Model::forward_lora`] adds the adapters' terms inside
//! the one forward pass (gradients reach only `A` and `B`), and [`Lora::merged_tensors`] gives the merged
//! weights `W + (alpha / r) B A` under their HF names (what a saved organism holds). Adapters are kept in
//! f32 whatever the model's dtype.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::config::ArchSpec;
use crate::error::{HookError, Result};

/// A projection LoRA can adapt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraTarget {
    /// `self_attn.q_proj`.
    QProj,
    /// `self_attn.k_proj`.
    KProj,
    /// `self_attn.v_proj`.
    VProj,
    /// `self_attn.o_proj`.
    OProj,
    /// `mlp.gate_proj`.
    GateProj,
    /// `mlp.up_proj`.
    UpProj,
    /// `mlp.down_proj`.
    DownProj,
}

impl LoraTarget {
    /// Every projection.
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::QProj,
        LoraTarget::KProj,
        LoraTarget::VProj,
        LoraTarget::OProj,
        LoraTarget::GateProj,
        LoraTarget::UpProj,
        LoraTarget::DownProj,
    ];

    /// The module's name inside a block, as HF writes it (`self_attn.q_proj`).
    pub fn hf_name(self) -> &'static str {
        match self {
            LoraTarget::QProj => "self_attn.q_proj",
            LoraTarget::KProj => "self_attn.k_proj",
            LoraTarget::VProj => "self_attn.v_proj",
            LoraTarget::OProj => "self_attn.o_proj",
            LoraTarget::GateProj => "mlp.gate_proj",
            LoraTarget::UpProj => "mlp.up_proj",
            LoraTarget::DownProj => "mlp.down_proj",
        }
    }

    /// `(in, out)` widths of the projection in a model of this architecture.
    pub fn dims(self, spec: &ArchSpec) -> (i64, i64) {
        let (d, q, kv, i) = (
            spec.hidden_size,
            spec.num_heads * spec.head_dim,
            spec.num_kv_heads * spec.head_dim,
            spec.intermediate_size,
        );
        match self {
            LoraTarget::QProj => (d, q),
            LoraTarget::KProj | LoraTarget::VProj => (d, kv),
            LoraTarget::OProj => (q, d),
            LoraTarget::GateProj | LoraTarget::UpProj => (d, i),
            LoraTarget::DownProj => (i, d),
        }
    }
}

impl std::str::FromStr for LoraTarget {
    type Err = HookError;
    fn from_str(s: &str) -> Result<Self> {
        let short = s.rsplit('.').next().unwrap_or(s);
        LoraTarget::ALL
            .into_iter()
            .find(|t| t.hf_name().ends_with(short) && !short.is_empty())
            .ok_or_else(|| {
                HookError::invalid(format!(
                    "unknown LoRA target {s:?} (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"
                ))
            })
    }
}

/// LoRA hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank `r`.
    pub rank: i64,
    /// Scale numerator: the update is multiplied by `alpha / r`.
    pub alpha: f64,
    /// Dropout on the adapter's input while training (0 disables it, and makes training steps exactly
    /// reproducible).
    pub dropout: f64,
    /// Projections to adapt.
    pub targets: Vec<LoraTarget>,
    /// Blocks to adapt (`None`: all).
    pub layers: Option<Vec<usize>>,
}

impl Default for LoraConfig {
    /// Rank 16, alpha 32, no dropout, every projection of every block.
    fn default() -> Self {
        Self {
            rank: 16,
            alpha: 32.0,
            dropout: 0.0,
            targets: LoraTarget::ALL.to_vec(),
            layers: None,
        }
    }
}

/// One adapted projection: `A` `[r, in]`, `B` `[out, r]`.
#[derive(Debug)]
pub struct LoraPair {
    /// Down projection `[r, in]`.
    pub a: Tensor,
    /// Up projection `[out, r]`.
    pub b: Tensor,
}

/// The adapters of a model.
#[derive(Debug)]
pub struct Lora {
    config: LoraConfig,
    scale: f64,
    weight_prefix: String,
    num_layers: usize,
    adapters: BTreeMap<(usize, LoraTarget), LoraPair>,
    training: bool,
}

impl Lora {
    /// Fresh adapters for a model of architecture `spec` on `device` (`A` from `seed`, `B` zero), as
    /// trainable leaves.
    pub fn new(spec: &ArchSpec, config: LoraConfig, seed: u64, device: Device) -> Result<Self> {
        if config.rank < 1 || !(config.alpha.is_finite() && config.alpha > 0.0) {
            return Err(HookError::invalid(format!(
                "LoRA needs rank >= 1 and alpha > 0 (got rank {}, alpha {})",
                config.rank, config.alpha
            )));
        }
        if !(0.0..1.0).contains(&config.dropout) {
            return Err(HookError::invalid(format!(
                "LoRA dropout must be in [0, 1), got {}",
                config.dropout
            )));
        }
        if config.targets.is_empty() {
            return Err(HookError::invalid("LoRA with no target projections"));
        }
        let layers: Vec<usize> = match &config.layers {
            Some(ls) => {
                if let Some(bad) = ls.iter().find(|&&l| l >= spec.num_layers) {
                    return Err(HookError::invalid(format!(
                        "LoRA layer {bad} does not exist (the model has {})",
                        spec.num_layers
                    )));
                }
                ls.clone()
            }
            None => (0..spec.num_layers).collect(),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut adapters = BTreeMap::new();
        for &l in &layers {
            for &t in &config.targets {
                let (d_in, d_out) = t.dims(spec);
                let bound = 1.0 / (d_in as f64).sqrt();
                let vals: Vec<f32> = (0..config.rank * d_in)
                    .map(|_| rng.random_range(-bound..bound) as f32)
                    .collect();
                let a = Tensor::from_slice(&vals)
                    .f_view([config.rank, d_in])?
                    .f_to_device(device)?
                    .f_set_requires_grad(true)?;
                let b = Tensor::f_zeros([d_out, config.rank], (Kind::Float, device))?
                    .f_set_requires_grad(true)?;
                adapters.insert((l, t), LoraPair { a, b });
            }
        }
        Ok(Self {
            scale: config.alpha / config.rank as f64,
            config,
            weight_prefix: spec.weight_prefix.clone(),
            num_layers: spec.num_layers,
            adapters,
            training: false,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Apply dropout (training) or not (evaluation, the default).
    pub fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    /// The trainable tensors, in a fixed order (block, projection, `A` then `B`).
    pub fn parameters(&self) -> Vec<Tensor> {
        self.adapters
            .values()
            .flat_map(|p| [p.a.shallow_clone(), p.b.shallow_clone()])
            .collect()
    }

    /// Named adapter tensors in PEFT's naming (`base_model.model.<prefix>layers.L.<module>.lora_A.weight`),
    /// for saving and exact resumption.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for ((l, t), p) in &self.adapters {
            let base = format!(
                "base_model.model.{}layers.{l}.{}",
                self.weight_prefix,
                t.hf_name()
            );
            out.push((format!("{base}.lora_A.weight"), p.a.shallow_clone()));
            out.push((format!("{base}.lora_B.weight"), p.b.shallow_clone()));
        }
        out
    }

    /// Overwrite the adapters with `tensors` (as [`Lora::named_tensors`] names them); every adapter must
    /// be given, with its shape.
    pub fn load_tensors(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        let _guard = tch::no_grad_guard();
        for (name, mut t) in self.named_tensors() {
            let src = tensors
                .get(&name)
                .ok_or_else(|| HookError::invalid(format!("adapter tensor {name} missing")))?;
            if src.size() != t.size() {
                return Err(HookError::invalid(format!(
                    "adapter tensor {name} has shape {:?}, expected {:?}",
                    src.size(),
                    t.size()
                )));
            }
            t.f_copy_(&src.f_to_kind(Kind::Float)?.f_to_device(t.device())?)?;
        }
        Ok(())
    }

    /// The adapter's term for projection `target` of block `layer` on input `x` (`[.., in]` -> `[.., out]`,
    /// in `x`'s dtype), or `None` when that projection is not adapted.
    pub(crate) fn delta(
        &self,
        layer: usize,
        target: LoraTarget,
        x: &Tensor,
    ) -> Result<Option<Tensor>> {
        let Some(p) = self.adapters.get(&(layer, target)) else {
            return Ok(None);
        };
        let mut h = x.f_to_kind(Kind::Float)?;
        if self.training && self.config.dropout > 0.0 {
            h = h.f_dropout(self.config.dropout, true)?;
        }
        let y = h
            .f_matmul(&p.a.f_transpose(0, 1)?)?
            .f_matmul(&p.b.f_transpose(0, 1)?)?
            .f_mul_scalar(self.scale)?;
        Ok(Some(y.f_to_kind(x.kind())?))
    }

    /// Add the adapter's term to `y` (the projection's output) when the projection is adapted.
    pub(crate) fn add_to(
        &self,
        layer: usize,
        target: LoraTarget,
        x: &Tensor,
        y: Tensor,
    ) -> Result<Tensor> {
        Ok(match self.delta(layer, target, x)? {
            Some(d) => y.f_add(&d)?,
            None => y,
        })
    }

    /// Whether any projection of block `layer` is adapted (lets the forward pass skip work).
    pub(crate) fn touches(&self, layer: usize) -> bool {
        layer < self.num_layers && self.adapters.keys().any(|(l, _)| *l == layer)
    }

    /// `W + (alpha / r) B A` for every adapted projection, by HF weight name
    /// (`<prefix>layers.L.self_attn.q_proj.weight`), from the checkpoint's own weights `original(name)`
    /// (loaded in any dtype; the result has the original's dtype and device).
    pub fn merged_tensors(
        &self,
        original: &dyn Fn(&str) -> Result<Tensor>,
    ) -> Result<Vec<(String, Tensor)>> {
        let _guard = tch::no_grad_guard();
        let mut out = Vec::new();
        for ((l, t), p) in &self.adapters {
            let name = format!("{}layers.{l}.{}.weight", self.weight_prefix, t.hf_name());
            let w = original(&name)?;
            let delta = p.b.f_matmul(&p.a)?.f_mul_scalar(self.scale)?;
            let merged = w
                .f_to_kind(Kind::Float)?
                .f_add(&delta.f_to_device(w.device())?)?
                .f_to_kind(w.kind())?;
            out.push((name, merged));
        }
        Ok(out)
    }

    /// Write a checkpoint directory `out` that any loader reads like the original `src`: every tensor of
    /// `src` (in its own dtype) with the adapted projections merged, as one `model.safetensors` (atomic),
    /// and every other file of `src` (config, tokenizer, chat template, ...) copied. Sharded indexes are
    /// not copied (the output is one file).
    pub fn save_merged_checkpoint(
        &self,
        src: &std::path::Path,
        out: &std::path::Path,
    ) -> Result<()> {
        let set = crate::weights::SafetensorsSet::open_checkpoint(src)?;
        let load = |name: &str| set.load(name, None, Device::Cpu);
        let merged: BTreeMap<String, Tensor> = self.merged_tensors(&load)?.into_iter().collect();
        crate::weights::save_checkpoint_with(src, out, &merged)
    }
}
