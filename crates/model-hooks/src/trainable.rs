//! Full fine-tuning: a loaded model's own weights as trainable tensors.
//!
//! [`crate::Model::trainable_weights`] marks the weights a [`FullConfig`] selects as autograd leaves; the
//! forward pass then differentiates through them (Rosetta's CPU kernels, which have no backward, step
//! aside for them) and an optimiser updates them in place. The model holds some projections stacked
//! (`q|k|v` and `gate|up`, one product each), so those train together; [`TrainableWeights::named_tensors`]
//! unstacks them under their HF names, which is what a checkpoint of the fine-tuned model holds
//! ([`TrainableWeights::save_checkpoint`]).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::config::ArchSpec;
use crate::error::{HookError, Result};
use crate::lora::LoraTarget;

/// Which weights full fine-tuning trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FullConfig {
    /// Projections to train, with their biases (the names LoRA adapts). `q_proj`, `k_proj` and `v_proj`
    /// are one stacked weight in Rosetta's model, as are `gate_proj` and `up_proj`: each group is trained
    /// whole or not at all.
    pub projections: Vec<LoraTarget>,
    /// Blocks whose projections and norms are trained (`None`: all).
    pub layers: Option<Vec<usize>>,
    /// Train the RMSNorm weights too (those of the selected blocks, and the final norm when every block
    /// is selected).
    pub norms: bool,
    /// Train the token embeddings and the LM head (one tensor when they are tied).
    pub embeddings: bool,
}

impl Default for FullConfig {
    /// Every weight of the model, as PyTorch's full fine-tuning trains them.
    fn default() -> Self {
        Self {
            projections: LoraTarget::ALL.to_vec(),
            layers: None,
            norms: true,
            embeddings: true,
        }
    }
}

/// What a weight of the model is, for selection.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SlotGroup {
    /// Token embeddings or LM head.
    Embedding,
    /// An RMSNorm weight, of a block or (`None`) the final norm.
    Norm(Option<usize>),
    /// A (stacked) projection's weight or bias in a block.
    Projection(usize, Vec<LoraTarget>),
}

/// One weight tensor as the model holds it, and the HF tensors it stands for (its rows, in order).
#[derive(Debug)]
pub(crate) struct WeightSlot {
    tensor: Tensor,
    /// `(HF name, rows)`: the tensor is these stacked along dimension 0.
    parts: Vec<(String, i64)>,
    /// Gemma's RMSNorm convention: the model holds `1 + w`, the checkpoint `w`.
    offset: bool,
    group: SlotGroup,
}

impl WeightSlot {
    pub(crate) fn new(
        tensor: &Tensor,
        parts: Vec<(String, i64)>,
        offset: bool,
        group: SlotGroup,
    ) -> Self {
        Self {
            tensor: tensor.shallow_clone(),
            parts,
            offset,
            group,
        }
    }
}

/// The weights of a model that full fine-tuning trains (see the module doc). They share storage with the
/// model: updating them updates it.
#[derive(Debug)]
pub struct TrainableWeights {
    slots: Vec<WeightSlot>,
    /// The LM head's HF name when it is tied to the (trained) embeddings: a checkpoint that stores it
    /// anyway gets the trained embeddings there too.
    tied_lm_head: Option<String>,
}

/// Pick the slots `config` names and make them trainable.
pub(crate) fn select(
    slots: Vec<WeightSlot>,
    config: &FullConfig,
    spec: &ArchSpec,
    lm_head_name: &str,
) -> Result<TrainableWeights> {
    if let Some(bad) = config
        .layers
        .iter()
        .flatten()
        .find(|&&l| l >= spec.num_layers)
    {
        return Err(HookError::invalid(format!(
            "full fine-tuning of layer {bad}, which does not exist (the model has {})",
            spec.num_layers
        )));
    }
    for group in [
        &[LoraTarget::QProj, LoraTarget::KProj, LoraTarget::VProj][..],
        &[LoraTarget::GateProj, LoraTarget::UpProj][..],
    ] {
        let named = group
            .iter()
            .filter(|t| config.projections.contains(t))
            .count();
        if named != 0 && named != group.len() {
            let names: Vec<&str> = group.iter().map(|t| t.hf_name()).collect();
            return Err(HookError::invalid(format!(
                "{} are one stacked weight in Rosetta's model: full fine-tuning trains all of them or none",
                names.join(", ")
            )));
        }
    }
    let all_layers = config.layers.is_none();
    let layer_on = |l: usize| config.layers.as_ref().is_none_or(|ls| ls.contains(&l));
    let chosen: Vec<WeightSlot> = slots
        .into_iter()
        .filter(|s| match &s.group {
            SlotGroup::Embedding => config.embeddings,
            SlotGroup::Norm(None) => config.norms && all_layers,
            SlotGroup::Norm(Some(l)) => config.norms && layer_on(*l),
            SlotGroup::Projection(l, targets) => {
                layer_on(*l) && targets.iter().any(|t| config.projections.contains(t))
            }
        })
        .collect();
    if chosen.is_empty() {
        return Err(HookError::invalid(
            "full fine-tuning with nothing to train (no projection, norm or embedding selected)",
        ));
    }
    for s in &chosen {
        let _ = s.tensor.f_set_requires_grad(true)?;
    }
    let tied = config.embeddings
        && !chosen
            .iter()
            .any(|s| s.parts.iter().any(|(n, _)| n == lm_head_name));
    Ok(TrainableWeights {
        slots: chosen,
        tied_lm_head: tied.then(|| lm_head_name.to_string()),
    })
}

impl TrainableWeights {
    /// The trainable tensors, in a fixed order (as the model holds them: stacked projections whole).
    pub fn parameters(&self) -> Vec<Tensor> {
        self.slots
            .iter()
            .map(|s| s.tensor.shallow_clone())
            .collect()
    }

    /// Number of trained values.
    pub fn numel(&self) -> i64 {
        self.slots.iter().map(|s| s.tensor.numel() as i64).sum()
    }

    /// The trained tensors under their HF names (stacked projections split, Gemma norms back to `w`),
    /// detached, f32, on the CPU: what a checkpoint of the fine-tuned model holds, and what
    /// [`TrainableWeights::load_tensors`] reads back.
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let _guard = tch::no_grad_guard();
        let mut out = Vec::new();
        for s in &self.slots {
            let mut t = s.tensor.f_detach()?.f_to_kind(Kind::Float)?;
            if s.offset {
                t = t.f_sub_scalar(1.0)?;
            }
            let mut offset = 0;
            for (name, rows) in &s.parts {
                let part = t.f_narrow(0, offset, *rows)?;
                // A fresh CPU tensor, never a view of the model's storage.
                let mut fresh = Tensor::f_zeros(part.size(), (Kind::Float, Device::Cpu))?;
                fresh.f_copy_(&part)?;
                out.push((name.clone(), fresh));
                offset += rows;
            }
        }
        Ok(out)
    }

    /// Overwrite the trained weights with `tensors` (named as [`TrainableWeights::named_tensors`] names
    /// them); every one must be given, with its shape.
    pub fn load_tensors(&self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        let _guard = tch::no_grad_guard();
        for s in &self.slots {
            let mut offset = 0;
            for (name, rows) in &s.parts {
                let src = tensors
                    .get(name)
                    .ok_or_else(|| HookError::invalid(format!("trained tensor {name} missing")))?;
                let mut dst = s.tensor.f_narrow(0, offset, *rows)?;
                if src.size() != dst.size() {
                    return Err(HookError::invalid(format!(
                        "trained tensor {name} has shape {:?}, expected {:?}",
                        src.size(),
                        dst.size()
                    )));
                }
                let mut v = src.f_to_kind(Kind::Float)?;
                if s.offset {
                    v = v.f_add_scalar(1.0)?;
                }
                dst.f_copy_(&v.f_to_kind(dst.kind())?.f_to_device(dst.device())?)?;
                offset += rows;
            }
        }
        Ok(())
    }

    /// Stop training: the weights keep their values but no longer record autograd history, so the model
    /// runs inference on its fast kernels again.
    pub fn freeze(&self) -> Result<()> {
        for s in &self.slots {
            let _ = s.tensor.f_set_requires_grad(false)?;
        }
        Ok(())
    }

    /// Write a checkpoint directory `out` that any loader reads like the original `src`: every tensor of
    /// `src` in its own dtype, the trained ones replaced (see [`crate::weights::save_checkpoint_with`]).
    pub fn save_checkpoint(&self, src: &Path, out: &Path) -> Result<()> {
        let mut replaced: BTreeMap<String, Tensor> = self.named_tensors()?.into_iter().collect();
        if let Some(head) = &self.tied_lm_head {
            let set = crate::weights::SafetensorsSet::open_checkpoint(src)?;
            let embed = replaced
                .iter()
                .find(|(n, _)| n.ends_with("embed_tokens.weight"))
                .map(|(_, t)| t.shallow_clone());
            if let (true, Some(e)) = (set.contains(head), embed) {
                replaced.insert(head.clone(), e);
            }
        }
        crate::weights::save_checkpoint_with(src, out, &replaced)
    }
}
