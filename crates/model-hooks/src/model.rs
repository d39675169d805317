//! The decoder: one implementation for every family, driven by [`ArchSpec`].
//!
//! References: HF transformers `models/{llama,qwen2,qwen3,gemma,gemma2,gemma3}/modeling_*.py` (eager
//! attention path). Struct fields carry HF's tensor names so checkpoints load without renaming tables.
//! Where the families differ the spec says how; the comments say why a line differs from Llama.

use crate::batch::Batch;
use crate::cache::KvCache;
use crate::config::{ArchSpec, AttentionKind};
use crate::error::{HookError, Result};
use crate::hooks::{run_point, HookContext, HookPoint, Hooks};
use crate::lora::{Lora, LoraTarget};
use crate::numerics::{
    attention_mask, gated, rope_cos_sin, rope_heads, rope_inv_freq, softcap, RmsNorm,
};
use crate::weights::{LoadReport, SafetensorsSet};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

/// How attention scores are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionImpl {
    /// libtorch's fused `scaled_dot_product_attention` (fast); families with attention softcapping fall
    /// back to eager.
    #[default]
    Sdpa,
    /// HF's eager path, op for op: `softmax(q kᵀ · scale [softcap] + mask)` in f32, then `· v`.
    Eager,
}

/// Where and how to load a model.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Device for weights and activations.
    pub device: Device,
    /// Dtype of weights and activations (f32, bf16 or f16).
    pub kind: Kind,
    /// Attention implementation.
    pub attention: AttentionImpl,
    /// CPU only (default true): run Rosetta's own kernels where they apply instead of libtorch's operators
    /// (HF's path):
    /// * f32 linear layers on a few-row kernel (up to 16 rows, `skinny.rs`) and on oneDNN's inner product
    ///   (more rows, `onednn.rs`) instead of MKL's GEMM: capture 1.1-1.2x and decoding 2-3x faster on this
    ///   project's machine (docs/PERFORMANCE.md);
    /// * one-pass RMSNorm (bf16; f32 has aten's fused kernel either way), RoPE and gated activation (f32,
    ///   bf16) with HF's rounding points (`fused.rs`) instead of chains of libtorch operators;
    /// * attention over bf16 on bf16 dot-product instructions for unpadded prefills
    ///   (`bf16_attention.rs`) instead of libtorch's SDPA.
    ///
    /// Results differ from libtorch's by float rounding (~1e-6 relative in f32, a bf16 ulp in bf16).
    /// `false` reproduces HF's CPU computation operator for operator.
    pub fast_kernels: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            kind: Kind::Float,
            attention: AttentionImpl::Sdpa,
            fast_kernels: true,
        }
    }
}

impl LoadOptions {
    /// Set the device.
    pub fn with_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }
    /// Set the dtype.
    pub fn with_kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }
    /// Set the attention implementation.
    pub fn with_attention(mut self, attention: AttentionImpl) -> Self {
        self.attention = attention;
        self
    }
    /// Use Rosetta's CPU kernels or libtorch's operators only (see [`LoadOptions::fast_kernels`]).
    pub fn with_fast_kernels(mut self, fast: bool) -> Self {
        self.fast_kernels = fast;
        self
    }
}

/// `y = x Wᵀ + b`.
#[derive(Debug)]
struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    /// Run on Rosetta's CPU f32 kernels ([`LoadOptions::fast_kernels`], weights contiguous CPU f32).
    fast: bool,
}

/// Inputs with at most this many rows are decoding-sized: stacked projections run as one product.
const DECODING_MAX_ROWS: i64 = 64;

/// Stacked projections with more output bytes than this run as separate products (see
/// [`Linear::forward_parts`]).
const FUSED_OUTPUT_MAX_BYTES: i64 = 16 << 20;

impl Linear {
    /// `fast` asks for Rosetta's CPU f32 kernels; it holds only where the weights allow them.
    fn new(weight: Tensor, bias: Option<Tensor>, fast: bool) -> Self {
        let plain =
            |t: &Tensor| t.kind() == Kind::Float && t.device() == Device::Cpu && t.is_contiguous();
        let fast = fast && weight.dim() == 2 && plain(&weight) && bias.as_ref().is_none_or(plain);
        Self { weight, bias, fast }
    }

    /// `[.., in] -> [.., out]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.product(x, &self.weight, self.bias.as_ref())
    }

    /// `x wᵀ + b` for this layer's weight or a block of its rows, on the kernel that suits the input.
    fn product(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        // Rosetta's kernels have no backward: anything autograd must see (a trainable input, weight or
        // bias) goes to libtorch.
        let frozen =
            !x.requires_grad() && !w.requires_grad() && b.is_none_or(|b| !b.requires_grad());
        if self.fast && frozen && x.kind() == Kind::Float && x.device() == Device::Cpu {
            let shape = x.size();
            let k = shape[shape.len() - 1];
            let rows = x.numel() as i64 / k.max(1);
            // Anything else (an input of the wrong width included) goes to libtorch, whose errors name
            // the shapes.
            let fits = rows > 0 && w.size()[1] == k;
            let skinny = fits && rows <= crate::skinny::MAX_ROWS && k % 8 == 0;
            if skinny && crate::skinny::available() {
                // A few rows (decoding): the weight-streaming kernel (see `skinny`).
                let xs = x.f_reshape([rows, k])?.f_contiguous()?;
                let n = w.size()[0];
                let y = Tensor::f_empty([rows, n], (Kind::Float, Device::Cpu))?;
                let bias = b.map_or(std::ptr::null(), |b| b.data_ptr() as *const f32);
                // SAFETY: `new` checked that the weight and bias are contiguous CPU f32; `w` and `b` are
                // they or blocks of their rows (still contiguous), `w` is [n, k] (checked above) and `b`
                // [n]; `xs` is contiguous [rows, k] f32 and `y` a fresh [rows, n] buffer.
                unsafe {
                    crate::skinny::linear(
                        xs.data_ptr() as *const f32,
                        w.data_ptr() as *const f32,
                        bias,
                        y.data_ptr() as *mut f32,
                        rows as usize,
                        n as usize,
                        k as usize,
                    );
                }
                let mut out_shape = shape;
                let last = out_shape.len() - 1;
                out_shape[last] = n;
                return Ok(y.f_reshape(out_shape)?);
            }
            if fits && crate::onednn::available() {
                // More rows: oneDNN's inner product beats MKL's sgemm here (see `onednn`).
                return crate::onednn::linear(x, w, b);
            }
        }
        Ok(x.f_linear(w, b)?)
    }

    /// Forward of a stacked projection, returned as its parts (`sizes` output columns each).
    ///
    /// Usually one product over the stacked weight, then views. Many rows with a large output: one
    /// product per part on row blocks of the stacked weight — a single allocation beyond glibc's mmap
    /// threshold (32 MB) is page-faulted afresh on every call and costs more than the fusion saves.
    /// (Splitting smaller outputs too, for contiguous parts, measured 2-9% slower end to end.)
    fn forward_parts(&self, x: &Tensor, sizes: &[i64]) -> Result<Vec<Tensor>> {
        let shape = x.size();
        let k = shape[shape.len() - 1].max(1);
        let rows = x.numel() as i64 / k;
        let mut parts = Vec::with_capacity(sizes.len());
        let mut offset = 0;
        let bytes = rows * sizes.iter().sum::<i64>() * x.kind().elt_size_in_bytes() as i64;
        if rows > DECODING_MAX_ROWS && bytes > FUSED_OUTPUT_MAX_BYTES {
            for &n in sizes {
                let w = self.weight.f_narrow(0, offset, n)?;
                let b = self
                    .bias
                    .as_ref()
                    .map(|b| b.f_narrow(0, offset, n))
                    .transpose()?;
                parts.push(self.product(x, &w, b.as_ref())?);
                offset += n;
            }
        } else {
            let y = self.forward(x)?;
            for &n in sizes {
                parts.push(y.f_narrow(-1, offset, n)?);
                offset += n;
            }
        }
        Ok(parts)
    }
}

#[derive(Debug)]
#[allow(clippy::struct_field_names)]
struct SelfAttn {
    /// HF's `q_proj`, `k_proj` and `v_proj` stacked into one matmul (outputs `[q | k | v]`).
    qkv_proj: Linear,
    o_proj: Linear,
    /// Qwen3 / Gemma 3: RMSNorm over each head's queries and keys before RoPE.
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
}

#[derive(Debug)]
#[allow(clippy::struct_field_names)]
struct Mlp {
    /// HF's `gate_proj` and `up_proj` stacked into one matmul (outputs `[gate | up]`).
    gate_up_proj: Linear,
    down_proj: Linear,
}

#[derive(Debug)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    /// Llama/Qwen/Gemma: the pre-MLP norm. Gemma 2/3: a post-norm of the attention branch (the pre-MLP norm
    /// is then `pre_feedforward_layernorm`).
    post_attention_layernorm: RmsNorm,
    pre_feedforward_layernorm: Option<RmsNorm>,
    post_feedforward_layernorm: Option<RmsNorm>,
    self_attn: SelfAttn,
    mlp: Mlp,
}

/// What a forward pass returns.
#[derive(Debug)]
pub struct ForwardOutput {
    /// Captured activations, in capture order (a point captured twice appears twice).
    pub captures: Vec<(HookPoint, Tensor)>,
    /// The activation at the last point computed (`[B, T, d]`, or `[B, T, vocab]` when logits ran).
    pub last: Tensor,
    /// The point `last` was taken at.
    pub last_point: HookPoint,
}

impl ForwardOutput {
    /// The (first) capture at `point`.
    pub fn captured(&self, point: HookPoint) -> Option<&Tensor> {
        self.captures
            .iter()
            .find(|(p, _)| *p == point)
            .map(|(_, t)| t)
    }

    /// Logits `[B, T, vocab]` if the pass ran the LM head.
    pub fn logits(&self) -> Option<&Tensor> {
        (self.last_point == HookPoint::Logits).then_some(&self.last)
    }
}

/// Inputs of one pass over new tokens (a whole batch, or one decoding step).
pub(crate) struct StepInput<'a> {
    pub input_ids: &'a Tensor,
    pub position_ids: &'a Tensor,
    pub valid: &'a Tensor,
    pub prompt_lengths: &'a Tensor,
    pub decode_step: Option<usize>,
    /// Run to the LM head and compute logits only at the last index (generation).
    pub last_logits_only: bool,
    /// LoRA adapters added inside the projections ([`Model::forward_lora`]).
    pub lora: Option<&'a Lora>,
}

/// A loaded decoder-only language model.
#[derive(Debug)]
pub struct Model {
    spec: ArchSpec,
    dir: PathBuf,
    options: LoadOptions,
    report: LoadReport,
    embed_tokens: Tensor,
    /// Shares storage with `embed_tokens` when tied.
    lm_head: Linear,
    norm: RmsNorm,
    layers: Vec<DecoderLayer>,
    /// One inverse-frequency table per distinct RoPE of the spec, f32.
    inv_freqs: Vec<Tensor>,
    /// The HF name of the LM head's weight (`lm_head.weight`, or the multimodal layout's).
    lm_head_name: String,
}

/// Every tensor the architecture needs, with its shape.
pub fn expected_tensors(spec: &ArchSpec) -> Vec<(String, Vec<i64>)> {
    let p = &spec.weight_prefix;
    let (d, hd, i) = (spec.hidden_size, spec.head_dim, spec.intermediate_size);
    let (q, kv) = (spec.num_heads * hd, spec.num_kv_heads * hd);
    let mut v = vec![
        (format!("{p}embed_tokens.weight"), vec![spec.vocab_size, d]),
        (format!("{p}norm.weight"), vec![d]),
    ];
    for l in 0..spec.num_layers {
        let lp = format!("{p}layers.{l}.");
        let mut lin = |name: &str, out: i64, inp: i64, bias: bool| {
            v.push((format!("{lp}{name}.weight"), vec![out, inp]));
            if bias {
                v.push((format!("{lp}{name}.bias"), vec![out]));
            }
        };
        lin("self_attn.q_proj", q, d, spec.qkv_bias);
        lin("self_attn.k_proj", kv, d, spec.qkv_bias);
        lin("self_attn.v_proj", kv, d, spec.qkv_bias);
        lin("self_attn.o_proj", d, q, spec.o_bias);
        lin("mlp.gate_proj", i, d, spec.mlp_bias);
        lin("mlp.up_proj", i, d, spec.mlp_bias);
        lin("mlp.down_proj", d, i, spec.mlp_bias);
        let mut norms = vec!["input_layernorm", "post_attention_layernorm"];
        if spec.sandwich_norms {
            norms.extend(["pre_feedforward_layernorm", "post_feedforward_layernorm"]);
        }
        for n in norms {
            v.push((format!("{lp}{n}.weight"), vec![d]));
        }
        if spec.qk_norm {
            v.push((format!("{lp}self_attn.q_norm.weight"), vec![hd]));
            v.push((format!("{lp}self_attn.k_norm.weight"), vec![hd]));
        }
    }
    v
}

impl Model {
    /// Load a Hugging Face checkpoint directory (`config.json` + `model.safetensors` or a sharded index).
    ///
    /// Fails with the names of missing or mis-shaped tensors; tensors the architecture does not use are
    /// listed in [`Model::load_report`].
    pub fn load(dir: impl AsRef<Path>, options: LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        if !matches!(
            options.kind,
            Kind::Float | Kind::BFloat16 | Kind::Half | Kind::Double
        ) {
            return Err(HookError::invalid(format!(
                "unsupported model dtype {:?} (f32, bf16, f16)",
                options.kind
            )));
        }
        let mut spec = ArchSpec::from_file(&dir.join("config.json"))?;
        let weights = SafetensorsSet::open_checkpoint(dir)?;
        // Multimodal checkpoints in the wild store the text decoder as `language_model.model.*` (older
        // transformers) or `model.language_model.*` (transformers 5); plain ones as `model.*`.
        if !weights.contains(&format!("{}embed_tokens.weight", spec.weight_prefix)) {
            if let Some(p) = [
                "model.",
                "model.language_model.",
                "language_model.model.",
                "",
            ]
            .into_iter()
            .find(|p| weights.contains(&format!("{p}embed_tokens.weight")))
            {
                spec.weight_prefix = p.to_string();
            }
        }
        let lm_head_name = if spec.weight_prefix == "language_model.model." {
            "language_model.lm_head.weight"
        } else {
            "lm_head.weight"
        };
        let mut report = LoadReport::default();
        let mut expected = expected_tensors(&spec);
        let lm_head_stored = weights.contains(lm_head_name);
        if !spec.tie_word_embeddings {
            if lm_head_stored {
                expected.push((lm_head_name.into(), vec![spec.vocab_size, spec.hidden_size]));
            } else {
                report.lm_head_tied_by_absence = true;
            }
        }
        for (name, shape) in &expected {
            match weights.meta(name) {
                None => report.missing.push(name.clone()),
                Some(m) if &m.shape != shape => report.mismatched.push(format!(
                    "{name} in {}: expected {shape:?}, found {:?}",
                    m.file.display(),
                    m.shape
                )),
                Some(_) => {}
            }
        }
        let known: std::collections::HashSet<&str> =
            expected.iter().map(|(n, _)| n.as_str()).collect();
        report.unexpected = weights
            .names()
            .into_iter()
            .filter(|n| !(known.contains(n) || spec.tie_word_embeddings && *n == lm_head_name))
            .map(String::from)
            .collect();
        if !report.missing.is_empty() {
            let file = dir.join("model.safetensors");
            let missing = report
                .missing
                .iter()
                .map(|n| format!("{n} (expected in {})", file.display()))
                .collect();
            return Err(HookError::MissingTensors {
                dir: dir.to_path_buf(),
                missing,
            });
        }
        if !report.mismatched.is_empty() {
            return Err(HookError::ShapeMismatch {
                dir: dir.to_path_buf(),
                mismatched: report.mismatched.clone(),
            });
        }

        let (kind, device) = (options.kind, options.device);
        let fast = options.fast_kernels && device == Device::Cpu && kind == Kind::Float;
        let load = |name: &str| weights.load(name, Some(kind), device);
        let p = spec.weight_prefix.clone();
        let gemma = spec.norm_weight_offset;
        let norm = |name: &str| -> Result<RmsNorm> {
            RmsNorm::new(load(name)?, gemma, spec.rms_norm_eps, options.fast_kernels)
        };
        let linear = |name: &str, bias: bool| -> Result<Linear> {
            Ok(Linear::new(
                load(&format!("{name}.weight"))?,
                if bias {
                    Some(load(&format!("{name}.bias"))?)
                } else {
                    None
                },
                fast,
            ))
        };
        // Projections that read the same input are stacked into one matmul: fewer, larger GEMMs (each
        // output is the same dot product, so results are unchanged).
        let stacked = |names: &[String], bias: bool| -> Result<Linear> {
            let parts = names
                .iter()
                .map(|n| linear(n, bias))
                .collect::<Result<Vec<_>>>()?;
            let weights: Vec<&Tensor> = parts.iter().map(|l| &l.weight).collect();
            let biases: Option<Vec<&Tensor>> = parts.iter().map(|l| l.bias.as_ref()).collect();
            Ok(Linear::new(
                Tensor::f_cat(&weights, 0)?,
                biases.map(|b| Tensor::f_cat(&b, 0)).transpose()?,
                fast,
            ))
        };
        let mut layers = Vec::with_capacity(spec.num_layers);
        for l in 0..spec.num_layers {
            let lp = format!("{p}layers.{l}.");
            let opt_norm = |name: &str, on: bool| -> Result<Option<RmsNorm>> {
                if on {
                    Ok(Some(norm(&format!("{lp}{name}.weight"))?))
                } else {
                    Ok(None)
                }
            };
            layers.push(DecoderLayer {
                input_layernorm: norm(&format!("{lp}input_layernorm.weight"))?,
                post_attention_layernorm: norm(&format!("{lp}post_attention_layernorm.weight"))?,
                pre_feedforward_layernorm: opt_norm(
                    "pre_feedforward_layernorm",
                    spec.sandwich_norms,
                )?,
                post_feedforward_layernorm: opt_norm(
                    "post_feedforward_layernorm",
                    spec.sandwich_norms,
                )?,
                self_attn: SelfAttn {
                    qkv_proj: stacked(
                        &["q_proj", "k_proj", "v_proj"].map(|n| format!("{lp}self_attn.{n}")),
                        spec.qkv_bias,
                    )?,
                    o_proj: linear(&format!("{lp}self_attn.o_proj"), spec.o_bias)?,
                    q_norm: opt_norm("self_attn.q_norm", spec.qk_norm)?,
                    k_norm: opt_norm("self_attn.k_norm", spec.qk_norm)?,
                },
                mlp: Mlp {
                    gate_up_proj: stacked(
                        &["gate_proj", "up_proj"].map(|n| format!("{lp}mlp.{n}")),
                        spec.mlp_bias,
                    )?,
                    down_proj: linear(&format!("{lp}mlp.down_proj"), spec.mlp_bias)?,
                },
            });
        }
        let embed_tokens = load(&format!("{p}embed_tokens.weight"))?;
        let lm_head = Linear::new(
            if spec.tie_word_embeddings || report.lm_head_tied_by_absence {
                embed_tokens.shallow_clone()
            } else {
                load(lm_head_name)?
            },
            None,
            fast,
        );
        let inv_freqs = spec
            .ropes
            .iter()
            .map(|r| rope_inv_freq(r, spec.head_dim, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: norm(&format!("{p}norm.weight"))?,
            spec,
            dir: dir.to_path_buf(),
            options,
            report,
            embed_tokens,
            lm_head,
            layers,
            inv_freqs,
            lm_head_name: lm_head_name.to_string(),
        })
    }

    /// Make the weights `config` names trainable (full fine-tuning): they are returned as autograd leaves
    /// that [`Model::forward_grad`] differentiates through, and an optimiser updates them in place (the
    /// model is then the fine-tuned one). Needs an f32 or f64 model. Call
    /// [`TrainableWeights::freeze`](crate::TrainableWeights::freeze) after training so that inference
    /// runs on the fast kernels again.
    pub fn trainable_weights(
        &mut self,
        config: &crate::FullConfig,
    ) -> Result<crate::TrainableWeights> {
        if !matches!(self.options.kind, Kind::Float | Kind::Double) {
            return Err(HookError::invalid(format!(
                "full fine-tuning needs an f32 or f64 model (this one is {:?}): load it with Kind::Float",
                self.options.kind
            )));
        }
        crate::trainable::select(self.weight_slots(), config, &self.spec, &self.lm_head_name)
    }

    /// Every weight of the model as it is held (stacked projections as one tensor), with the HF tensors it
    /// stands for.
    fn weight_slots(&self) -> Vec<crate::trainable::WeightSlot> {
        use crate::trainable::{SlotGroup, WeightSlot};
        let p = &self.spec.weight_prefix;
        let spec = &self.spec;
        let gemma = spec.norm_weight_offset;
        let mut slots = vec![WeightSlot::new(
            &self.embed_tokens,
            vec![(format!("{p}embed_tokens.weight"), spec.vocab_size)],
            false,
            SlotGroup::Embedding,
        )];
        if self.lm_head.weight.data_ptr() != self.embed_tokens.data_ptr() {
            slots.push(WeightSlot::new(
                &self.lm_head.weight,
                vec![(self.lm_head_name.clone(), spec.vocab_size)],
                false,
                SlotGroup::Embedding,
            ));
        }
        slots.push(WeightSlot::new(
            &self.norm.weight,
            vec![(format!("{p}norm.weight"), spec.hidden_size)],
            gemma,
            SlotGroup::Norm(None),
        ));
        let (nh, nkv, hd, inter) = (
            spec.num_heads,
            spec.num_kv_heads,
            spec.head_dim,
            spec.intermediate_size,
        );
        for (l, layer) in self.layers.iter().enumerate() {
            let lp = format!("{p}layers.{l}.");
            let mut linear = |lin: &Linear, parts: &[(LoraTarget, i64)]| {
                let names = |suffix: &str| -> Vec<(String, i64)> {
                    parts
                        .iter()
                        .map(|(t, rows)| (format!("{lp}{}.{suffix}", t.hf_name()), *rows))
                        .collect()
                };
                let targets: Vec<LoraTarget> = parts.iter().map(|(t, _)| *t).collect();
                slots.push(WeightSlot::new(
                    &lin.weight,
                    names("weight"),
                    false,
                    SlotGroup::Projection(l, targets.clone()),
                ));
                if let Some(b) = &lin.bias {
                    slots.push(WeightSlot::new(
                        b,
                        names("bias"),
                        false,
                        SlotGroup::Projection(l, targets),
                    ));
                }
            };
            let d = spec.hidden_size;
            linear(
                &layer.self_attn.qkv_proj,
                &[
                    (LoraTarget::QProj, nh * hd),
                    (LoraTarget::KProj, nkv * hd),
                    (LoraTarget::VProj, nkv * hd),
                ],
            );
            linear(&layer.self_attn.o_proj, &[(LoraTarget::OProj, d)]);
            linear(
                &layer.mlp.gate_up_proj,
                &[(LoraTarget::GateProj, inter), (LoraTarget::UpProj, inter)],
            );
            linear(&layer.mlp.down_proj, &[(LoraTarget::DownProj, d)]);
            let mut norm = |n: &RmsNorm, name: &str, rows: i64| {
                slots.push(WeightSlot::new(
                    &n.weight,
                    vec![(format!("{lp}{name}.weight"), rows)],
                    gemma,
                    SlotGroup::Norm(Some(l)),
                ));
            };
            norm(&layer.input_layernorm, "input_layernorm", d);
            norm(
                &layer.post_attention_layernorm,
                "post_attention_layernorm",
                d,
            );
            if let Some(n) = &layer.pre_feedforward_layernorm {
                norm(n, "pre_feedforward_layernorm", d);
            }
            if let Some(n) = &layer.post_feedforward_layernorm {
                norm(n, "post_feedforward_layernorm", d);
            }
            if let Some(n) = &layer.self_attn.q_norm {
                norm(n, "self_attn.q_norm", hd);
            }
            if let Some(n) = &layer.self_attn.k_norm {
                norm(n, "self_attn.k_norm", hd);
            }
        }
        slots
    }

    /// The normalised architecture.
    pub fn spec(&self) -> &ArchSpec {
        &self.spec
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Device of weights and activations.
    pub fn device(&self) -> Device {
        self.options.device
    }

    /// Dtype of weights and activations.
    pub fn kind(&self) -> Kind {
        self.options.kind
    }

    /// Unused / tied tensors found while loading.
    pub fn load_report(&self) -> &LoadReport {
        &self.report
    }

    /// Residual stream width `d`.
    pub fn d_model(&self) -> i64 {
        self.spec.hidden_size
    }

    /// Number of decoder blocks.
    pub fn num_layers(&self) -> usize {
        self.spec.num_layers
    }

    /// Load options the model was loaded with.
    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    /// Allocate a KV cache for `batch` rows and `capacity` tokens.
    pub fn new_cache(&self, batch: i64, capacity: i64) -> Result<KvCache> {
        KvCache::new(
            self.spec.num_layers,
            batch,
            self.spec.num_kv_heads,
            self.spec.head_dim,
            capacity,
            self.options.kind,
            self.options.device,
        )
    }

    /// Run the model over a batch, applying `hooks`.
    ///
    /// Stops after the last point any hook names; with no hooks at all it runs to the logits. Shapes:
    /// `batch.input_ids` `[B, T]`; captures `[B, T, d]` (`[B, T, vocab]` for logits).
    pub fn forward(&self, batch: &Batch, hooks: &Hooks) -> Result<ForwardOutput> {
        let _guard = tch::no_grad_guard();
        self.forward_grad(batch, hooks)
    }

    /// Like [`Model::forward`] but records autograd history (weights stay frozen; gradients flow to
    /// tensors a hook introduces), e.g. for training a map through the model's upper layers.
    pub fn forward_grad(&self, batch: &Batch, hooks: &Hooks) -> Result<ForwardOutput> {
        self.check_batch(batch)?;
        self.run_batch(batch, hooks, false, None)
    }

    /// [`Model::forward_grad`] with LoRA adapters inside the projections: gradients reach the adapters'
    /// `A` and `B` (the model's weights stay frozen). Wrap in `tch::no_grad` to evaluate.
    pub fn forward_lora(&self, batch: &Batch, hooks: &Hooks, lora: &Lora) -> Result<ForwardOutput> {
        self.check_batch(batch)?;
        if lora
            .config()
            .layers
            .as_ref()
            .is_some_and(|ls| ls.iter().any(|&l| l >= self.num_layers()))
        {
            return Err(HookError::invalid(
                "the adapters name layers this model does not have",
            ));
        }
        self.run_batch(batch, hooks, false, Some(lora))
    }

    /// One uncached pass over a whole batch (`last_logits_only`: the LM head on the last column only).
    fn run_batch(
        &self,
        batch: &Batch,
        hooks: &Hooks,
        last_logits_only: bool,
        lora: Option<&Lora>,
    ) -> Result<ForwardOutput> {
        let prompt_lengths = Tensor::from_slice(
            &batch
                .prompt_lengths
                .iter()
                .map(|&l| l as i64)
                .collect::<Vec<_>>(),
        )
        .f_to_device(batch.input_ids.device())?;
        let step = StepInput {
            input_ids: &batch.input_ids,
            position_ids: &batch.position_ids,
            valid: &batch.valid,
            prompt_lengths: &prompt_lengths,
            decode_step: None,
            last_logits_only,
            lora,
        };
        self.run(&step, hooks, None)
    }

    /// Run the whole model over a left-padded (or unpadded) batch and return, as `last`, the logits of each
    /// row's last token only, `[B, 1, vocab]` (no `[B, T, vocab]` tensor is built); hooks apply and captures
    /// are returned as in [`Model::forward`]. The next-token distribution a refusal score or a KL needs.
    pub fn forward_last(&self, batch: &Batch, hooks: &Hooks) -> Result<ForwardOutput> {
        let _guard = tch::no_grad_guard();
        self.check_batch(batch)?;
        if batch.padding == crate::PaddingSide::Right
            && batch.lengths.iter().any(|&l| l as i64 != batch.seq_len())
        {
            return Err(HookError::invalid(
                "forward_last needs a left-padded batch (the last column must be every row's last token)",
            ));
        }
        self.run_batch(batch, hooks, true, None)
    }

    /// Full-model logits `[B, T, vocab]`.
    pub fn logits(&self, batch: &Batch) -> Result<Tensor> {
        Ok(self.forward(batch, &Hooks::new())?.last)
    }

    fn check_batch(&self, batch: &Batch) -> Result<()> {
        let t = batch.seq_len();
        if t > self.spec.max_position_embeddings {
            return Err(HookError::invalid(format!(
                "prompt of {t} tokens exceeds the model's context of {} (max_position_embeddings)",
                self.spec.max_position_embeddings
            )));
        }
        let max_id = batch.input_ids.f_max()?.int64_value(&[]);
        let min_id = batch.input_ids.f_min()?.int64_value(&[]);
        if min_id < 0 || max_id >= self.spec.vocab_size {
            return Err(HookError::invalid(format!(
                "token id {} outside the vocabulary [0, {})",
                if min_id < 0 { min_id } else { max_id },
                self.spec.vocab_size
            )));
        }
        Ok(())
    }

    /// The forward pass proper, shared by [`Model::forward`] and generation (with a cache).
    pub(crate) fn run(
        &self,
        step: &StepInput<'_>,
        hooks: &Hooks,
        mut cache: Option<&mut KvCache>,
    ) -> Result<ForwardOutput> {
        let spec = &self.spec;
        let n = spec.num_layers;
        hooks.validate(n, spec.hidden_size, spec.vocab_size)?;
        // Generation (last_logits_only) always needs the LM head; otherwise stop at the last hooked point.
        let stop = match hooks.last_point() {
            Some(p) if !step.last_logits_only => p,
            _ => HookPoint::Logits,
        };
        let stop_order = stop.order(n);
        let (b, t) = (step.input_ids.size()[0], step.input_ids.size()[1]);
        let kind = self.options.kind;
        let device = self.options.device;

        let mut captures = Vec::new();
        let ctx = |point| HookContext {
            point,
            position_ids: step.position_ids,
            valid: step.valid,
            prompt_lengths: step.prompt_lengths,
            decode_step: step.decode_step,
        };
        // Apply the hooks at `point`; return early once the last needed point is reached.
        macro_rules! visit {
            ($point:expr, $x:expr) => {{
                let point = $point;
                let ops = hooks.at(point);
                let x = if ops.is_empty() {
                    $x
                } else {
                    run_point(ops, &ctx(point), $x, &mut captures)?
                };
                if point.order(n) >= stop_order {
                    return Ok(ForwardOutput {
                        captures,
                        last: x,
                        last_point: point,
                    });
                }
                x
            }};
        }

        // Embeddings. Gemma multiplies by sqrt(d) rounded to the activation dtype first (HF casts the
        // normalizer), which matters in bf16.
        let mut x = Tensor::f_embedding(&self.embed_tokens, step.input_ids, -1, false, false)?;
        if let Some(scale) = spec.embed_scale {
            let normalizer = Tensor::f_from_slice(&[scale])?
                .f_to_kind(kind)?
                .f_to_device(device)?;
            x = x.f_mul(&normalizer)?;
        }
        let mut x = visit!(HookPoint::Embed, x);

        // RoPE tables and masks, once per pass.
        let cos_sin = self
            .inv_freqs
            .iter()
            .map(|f| rope_cos_sin(f, step.position_ids, kind))
            .collect::<Result<Vec<_>>>()?;
        let past = cache.as_ref().map_or(0, |c| c.len());
        let key_valid = match cache.as_deref_mut() {
            Some(c) => c.extend_mask(step.valid)?,
            None => step.valid.shallow_clone(),
        };
        // The fused kernel needs no explicit mask when nothing is padded and a sliding window cannot cut
        // anything off: causal for a prefill, none at all for a single new token. Otherwise (and always on
        // the eager path) an additive mask is built once per distinct window.
        let fused = self.options.attention == AttentionImpl::Sdpa && spec.attn_softcap.is_none();
        let no_padding = fused && key_valid.f_all()?.int64_value(&[]) != 0;
        let mut masks: HashMap<Option<i64>, AttnMask> = HashMap::new();

        for (l, layer) in self.layers.iter().enumerate() {
            let ls = &spec.layers[l];
            let window = match ls.attention {
                AttentionKind::Full => None,
                AttentionKind::Sliding { window } => Some(window),
            };
            let mask = match masks.entry(window) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let window_cuts = window.is_some_and(|w| past + t > w);
                    e.insert(if no_padding && !window_cuts && (t == 1 || past == 0) {
                        if t == 1 {
                            AttnMask::None
                        } else {
                            AttnMask::Causal
                        }
                    } else {
                        AttnMask::Additive(attention_mask(&key_valid, t, past, window, kind)?)
                    })
                }
            };
            let (cos, sin) = &cos_sin[ls.rope];

            x = visit!(HookPoint::ResidPre(l), x);
            let h = layer.input_layernorm.forward(&x)?;
            let mut attn = self.attention(
                l,
                layer,
                &h,
                cos,
                sin,
                mask,
                cache.as_deref_mut(),
                b,
                t,
                step.lora,
            )?;
            if spec.sandwich_norms {
                // Gemma 2/3: post_attention_layernorm normalises the attention branch itself.
                attn = layer.post_attention_layernorm.forward(&attn)?;
            }
            let attn = visit!(HookPoint::AttnOut(l), attn);
            x = visit!(HookPoint::ResidMid(l), x.f_add(&attn)?);
            let h = match &layer.pre_feedforward_layernorm {
                Some(pre) => pre.forward(&x)?,
                None => layer.post_attention_layernorm.forward(&x)?,
            };
            let mlp = &layer.mlp;
            let inter = spec.intermediate_size;
            let mut gate_up = mlp.gate_up_proj.forward_parts(&h, &[inter, inter])?;
            let lora = step.lora.filter(|lo| lo.touches(l));
            if let Some(lo) = lora {
                for (i, target) in [LoraTarget::GateProj, LoraTarget::UpProj]
                    .into_iter()
                    .enumerate()
                {
                    let y = std::mem::replace(&mut gate_up[i], Tensor::new());
                    gate_up[i] = lo.add_to(l, target, &h, y)?;
                }
            }
            let gate = gated(
                &gate_up[0],
                &gate_up[1],
                spec.activation,
                self.options.fast_kernels,
            )?;
            let mut m = mlp.down_proj.forward(&gate)?;
            if let Some(lo) = lora {
                m = lo.add_to(l, LoraTarget::DownProj, &gate, m)?;
            }
            if let Some(post) = &layer.post_feedforward_layernorm {
                m = post.forward(&m)?;
            }
            let m = visit!(HookPoint::MlpOut(l), m);
            x = visit!(HookPoint::ResidPost(l), x.f_add(&m)?);
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        let x = visit!(HookPoint::FinalNorm, self.norm.forward(&x)?);
        let x = if step.last_logits_only {
            x.f_narrow(1, t - 1, 1)?
        } else {
            x
        };
        let mut logits = self.lm_head.forward(&x)?;
        if let Some(cap) = spec.final_softcap {
            logits = softcap(&logits, cap)?;
        }
        let logits = if step.last_logits_only {
            // Hooks at `logits` see only the last position during generation.
            let ops = hooks.at(HookPoint::Logits);
            if ops.is_empty() {
                logits
            } else {
                let pos = step.position_ids.f_narrow(1, t - 1, 1)?;
                let valid = step.valid.f_narrow(1, t - 1, 1)?;
                let c = HookContext {
                    point: HookPoint::Logits,
                    position_ids: &pos,
                    valid: &valid,
                    prompt_lengths: step.prompt_lengths,
                    decode_step: step.decode_step,
                };
                run_point(ops, &c, logits, &mut captures)?
            }
        } else {
            visit!(HookPoint::Logits, logits)
        };
        Ok(ForwardOutput {
            captures,
            last: logits,
            last_point: HookPoint::Logits,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        l: usize,
        layer: &DecoderLayer,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &AttnMask,
        cache: Option<&mut KvCache>,
        b: i64,
        t: i64,
        lora: Option<&Lora>,
    ) -> Result<Tensor> {
        let spec = &self.spec;
        let (nh, nkv, hd) = (spec.num_heads, spec.num_kv_heads, spec.head_dim);
        let a = &layer.self_attn;
        let mut qkv = a
            .qkv_proj
            .forward_parts(h, &[nh * hd, nkv * hd, nkv * hd])?;
        let lora = lora.filter(|lo| lo.touches(l));
        if let Some(lo) = lora {
            for (i, target) in [LoraTarget::QProj, LoraTarget::KProj, LoraTarget::VProj]
                .into_iter()
                .enumerate()
            {
                let y = std::mem::replace(&mut qkv[i], Tensor::new());
                qkv[i] = lo.add_to(l, target, h, y)?;
            }
        }
        let o_proj = |x: &Tensor| -> Result<Tensor> {
            let y = a.o_proj.forward(x)?;
            match lora {
                Some(lo) => lo.add_to(l, LoraTarget::OProj, x, y),
                None => Ok(y),
            }
        };
        let mut q = qkv[0].f_view([b, t, nh, hd])?;
        let mut k = qkv[1].f_view([b, t, nkv, hd])?;
        let v = qkv[2].f_view([b, t, nkv, hd])?.f_transpose(1, 2)?;
        if let (Some(qn), Some(kn)) = (&a.q_norm, &a.k_norm) {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        let fused = self.options.attention == AttentionImpl::Sdpa && spec.attn_softcap.is_none();
        let fast = self.options.fast_kernels;
        let kind = q.kind();
        // Unpadded bf16 prefills on CPUs with AVX512-BF16 run Rosetta's attention (`bf16_attention.rs`:
        // bf16 dot-product instructions, f32 softmax), which scales with bf16 where libtorch's does not.
        let own = fast
            && fused
            && t > 1
            && kind == Kind::BFloat16
            && q.device() == Device::Cpu
            && !matches!(mask, AttnMask::Additive(_))
            && crate::bf16_attention::supports_head_dim(hd)
            && crate::bf16_attention::available();
        // Otherwise: libtorch's CPU flash attention multiplies bf16/f16 through MKL's mixed-precision GEMM,
        // which converts to f32 and runs sgemm unless the CPU has AMX: f32 inputs are faster (f16 ~3x, bf16
        // ~10% on this project's machine, docs/PERFORMANCE.md) and keep the probabilities in f32. Decoding
        // steps (one query) keep the cache's dtype: converting the whole cache every step would cost more
        // than it saves. The rotation writes queries (and keys, unless they go to the cache) in f32
        // directly.
        let upcast = !own && fused && t > 1 && reduced_attention_in_f32(kind, q.device());
        let q_kind = if upcast { Kind::Float } else { kind };
        let k_kind = if cache.is_none() { q_kind } else { kind };
        let q = rope_heads(&q, cos, sin, q_kind, fast)?;
        let k = rope_heads(&k, cos, sin, k_kind, fast)?;
        let (k, v) = match cache {
            Some(c) => c.append(l, &k, &v)?,
            None => (k, v),
        };
        if own {
            let causal = matches!(mask, AttnMask::Causal);
            if let Some(out) = crate::bf16_attention::attention(&q, &k, &v, causal, spec.attn_scale)
            {
                // [B, T, H, D] contiguous: the heads are already concatenated per token.
                return o_proj(&out?.f_view([b, t, nh * hd])?);
            }
        }
        let out = if fused {
            let (mask, causal) = match mask {
                AttnMask::Additive(m) => (Some(m), false),
                AttnMask::Causal => (None, true),
                AttnMask::None => (None, false),
            };
            let cast = |x: &Tensor| -> Result<Tensor> {
                Ok(if upcast {
                    x.f_to_kind(Kind::Float)?
                } else {
                    x.shallow_clone()
                })
            };
            let mask = mask.map(cast).transpose()?;
            let out = Tensor::f_scaled_dot_product_attention(
                &cast(&q)?,
                &cast(&k)?,
                &cast(&v)?,
                mask.as_ref(),
                0.0,
                causal,
                spec.attn_scale,
                nh != nkv,
            )?;
            out.f_to_kind(kind)?
        } else {
            let AttnMask::Additive(mask) = mask else {
                return Err(HookError::invalid("eager attention needs an explicit mask"));
            };
            let (k, v) = (
                repeat_kv(&k, spec.kv_groups())?,
                repeat_kv(&v, spec.kv_groups())?,
            );
            let mut scores = q
                .f_matmul(&k.f_transpose(2, 3)?)?
                .f_mul_scalar(spec.attn_scale)?;
            if let Some(cap) = spec.attn_softcap {
                scores = softcap(&scores, cap)?;
            }
            let probs = scores
                .f_add(mask)?
                .f_softmax(-1, Kind::Float)?
                .f_to_kind(q.kind())?;
            probs.f_matmul(&v)?
        };
        let out = out.f_transpose(1, 2)?.f_reshape([b, t, nh * hd])?;
        o_proj(&out)
    }
}

/// Whether fused attention over `kind` inputs on `device` should run in f32 (see [`Model::attention`]).
fn reduced_attention_in_f32(kind: Kind, device: Device) -> bool {
    static NO_AMX: OnceLock<bool> = OnceLock::new();
    matches!(kind, Kind::BFloat16 | Kind::Half)
        && device == Device::Cpu
        && *NO_AMX.get_or_init(|| !crate::device::cpu_has_amx_bf16())
}

/// The attention mask of one pass for one attention kind.
enum AttnMask {
    /// Additive `[B, 1, Tq, Tk]` (0 = visible, dtype minimum = hidden).
    Additive(Tensor),
    /// Plain causal attention over an unpadded prefill (fused kernel's `is_causal`).
    Causal,
    /// Everything visible (one new token, no padding, window not reached).
    None,
}

/// `[B, kv, T, D] -> [B, kv * n_rep, T, D]`, each kv head repeated consecutively (HF `repeat_kv`).
fn repeat_kv(x: &Tensor, n_rep: i64) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.shallow_clone());
    }
    let s = x.size();
    Ok(x.f_unsqueeze(2)?
        .f_expand([s[0], s[1], n_rep, s[2], s[3]], false)?
        .f_reshape([s[0], s[1] * n_rep, s[2], s[3]])?)
}

#[cfg(test)]
mod tests {
    use super::Linear;
    use tch::{Device, Kind, Tensor};

    /// Every path of `Linear::forward` (few-row kernel, oneDNN, libtorch) agrees with libtorch's `linear`.
    #[test]
    fn fast_paths_match_linear() {
        let o = (Kind::Float, Device::Cpu);
        let (n, k) = (48i64, 64i64);
        let w = Tensor::randn([n, k], o);
        let b = Tensor::randn([n], o);
        for fast in [true, false] {
            let lin = Linear::new(w.shallow_clone(), Some(b.shallow_clone()), fast);
            assert_eq!(lin.fast, fast);
            for rows in [0i64, 1, 8, 16, 17, 64, 65, 300] {
                let x = Tensor::randn([rows, 1, k], o);
                let got = lin.forward(&x).unwrap();
                assert_eq!(got.size(), [rows, 1, n]);
                if rows == 0 {
                    continue;
                }
                let err = (&got - x.linear(&w, Some(&b)))
                    .abs()
                    .max()
                    .double_value(&[]);
                assert!(err < 1e-4, "fast={fast}, {rows} rows: {err}");
            }
        }
        // An input of the wrong width gets libtorch's error, which names the shapes.
        let lin = Linear::new(w.shallow_clone(), None, true);
        for rows in [4i64, 100] {
            let err = lin.forward(&Tensor::randn([rows, k + 8], o)).unwrap_err();
            assert!(
                err.to_string().contains("shapes cannot be multiplied"),
                "{err}"
            );
        }
        // Weights the kernels cannot take turn the fast path off.
        let strided = Linear::new(w.tr(), None, true);
        assert!(!strided.fast);
        let half = Linear::new(w.to_kind(Kind::BFloat16), None, true);
        assert!(!half.fast);
    }
}
