//! The normalised architecture: one explicit description that every family's `config.json` maps into, so
//! the forward pass (in `crate::model`) is a single implementation driven by data. Whatever differs between
//! families is decided here, once.

use super::hf::HfConfig;
use crate::error::{HookError, Result};
use serde_json::Value;
use std::path::Path;

/// The model families Rosetta implements (HF `model_type`s they come from in brackets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `llama` (incl. Llama 3 RoPE scaling, SmolLM2) and `mistral`.
    Llama,
    /// `qwen2`.
    Qwen2,
    /// `qwen3` (per-head q/k RMSNorm).
    Qwen3,
    /// `gemma`.
    Gemma,
    /// `gemma2` (sandwich norms, softcaps, alternating sliding window).
    Gemma2,
    /// `gemma3_text`, and the text part of multimodal `gemma3`.
    Gemma3,
}

/// The `model_type` values accepted in `config.json`.
pub const SUPPORTED_MODEL_TYPES: [&str; 8] = [
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "gemma3",
];

impl Family {
    fn from_model_type(model_type: &str) -> Option<Self> {
        Some(match model_type {
            "llama" | "mistral" => Family::Llama,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            "gemma" => Family::Gemma,
            "gemma2" => Family::Gemma2,
            "gemma3_text" | "gemma3" => Family::Gemma3,
            _ => return None,
        })
    }

    /// Gemma-style RMSNorm (`x̂ * (1 + w)`), embedding scaling and BOS conventions.
    pub fn is_gemma(self) -> bool {
        matches!(self, Family::Gemma | Family::Gemma2 | Family::Gemma3)
    }
}

/// MLP activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (Llama, Qwen).
    Silu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`, Gemma).
    GeluTanh,
    /// Exact GELU.
    Gelu,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "silu" | "swish" => Activation::Silu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            _ => return None,
        })
    }
}

/// How RoPE frequencies are scaled.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Position interpolation: frequencies divided by `factor`.
    Linear {
        /// Scaling factor.
        factor: f64,
    },
    /// Llama 3.1 frequency smoothing.
    Llama3 {
        /// Scaling factor.
        factor: f64,
        /// Low-frequency factor.
        low_freq_factor: f64,
        /// High-frequency factor.
        high_freq_factor: f64,
        /// Context length the model was pretrained with.
        original_max_position_embeddings: f64,
    },
}

/// One RoPE table.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeSpec {
    /// Base wavelength θ.
    pub theta: f64,
    /// Frequency scaling.
    pub scaling: RopeScaling,
}

/// Attention pattern of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKind {
    /// Causal attention over the whole prefix.
    Full,
    /// Causal attention over the last `window` keys, the query's own position included (HF keeps exactly
    /// `window` keys: key `j` is visible from query `i` when `i - window < j <= i`).
    Sliding {
        /// Number of keys kept.
        window: i64,
    },
}

/// Per-layer attention layout.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpec {
    /// Full or sliding-window attention.
    pub attention: AttentionKind,
    /// Index into [`ArchSpec::ropes`].
    pub rope: usize,
}

/// A decoder-only transformer described explicitly. Built from `config.json` by [`ArchSpec::from_hf`].
#[derive(Debug, Clone, PartialEq)]
pub struct ArchSpec {
    /// Family the checkpoint belongs to.
    pub family: Family,
    /// `model_type` as written in the config.
    pub model_type: String,
    /// Vocabulary size (rows of the embedding matrix).
    pub vocab_size: i64,
    /// Residual stream width `d`.
    pub hidden_size: i64,
    /// MLP inner width.
    pub intermediate_size: i64,
    /// Number of decoder blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: i64,
    /// Key/value heads (GQA when fewer than query heads).
    pub num_kv_heads: i64,
    /// Per-head width.
    pub head_dim: i64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Norm weights are stored as offsets from one: `x̂ * (1 + w)` (Gemma).
    pub norm_weight_offset: bool,
    /// Embeddings are multiplied by `sqrt(hidden_size)` (cast to the activation dtype first, as HF does).
    pub embed_scale: Option<f64>,
    /// q/k/v projections have biases.
    pub qkv_bias: bool,
    /// o_proj has a bias.
    pub o_bias: bool,
    /// MLP projections have biases.
    pub mlp_bias: bool,
    /// Per-head RMSNorm on queries and keys before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Post-attention and post-MLP norms inside the residual branches (Gemma 2/3 "sandwich" norms).
    pub sandwich_norms: bool,
    /// MLP activation.
    pub activation: Activation,
    /// Softcap applied to attention scores before masking: `tanh(s / c) * c`.
    pub attn_softcap: Option<f64>,
    /// Softcap applied to the final logits.
    pub final_softcap: Option<f64>,
    /// Multiplier of `q·k` (usually `head_dim^-0.5`; Gemma 2/3: `query_pre_attn_scalar^-0.5`).
    pub attn_scale: f64,
    /// Attention layout per layer.
    pub layers: Vec<LayerSpec>,
    /// The distinct RoPE tables layers refer to.
    pub ropes: Vec<RopeSpec>,
    /// The LM head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Longest context the model supports.
    pub max_position_embeddings: i64,
    /// Prefix of the decoder's tensor names (`model.` or `model.language_model.`).
    pub weight_prefix: String,
    /// BOS token id from the config, if any.
    pub bos_token_id: Option<i64>,
    /// EOS token ids from the config.
    pub eos_token_ids: Vec<i64>,
    /// Padding token id from the config, if any.
    pub pad_token_id: Option<i64>,
}

fn get_f64(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

impl ArchSpec {
    /// Read and normalise `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| HookError::io(path, e))?;
        let hf: HfConfig = serde_json::from_str(&text).map_err(|source| HookError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_hf(&hf, path)
    }

    /// Normalise a parsed config. `path` is only used in error messages.
    pub fn from_hf(outer: &HfConfig, path: &Path) -> Result<Self> {
        let err = |message: String| HookError::Config {
            path: path.to_path_buf(),
            message,
        };
        let outer_type = outer.model_type.clone().unwrap_or_default();
        // Multimodal wrappers keep the language model's config under `text_config`.
        let (hf, weight_prefix) = match (&outer.text_config, outer_type.as_str()) {
            (Some(text), "gemma3") => (text.as_ref(), "model.language_model."),
            _ => (outer, "model."),
        };
        let model_type = hf.model_type.clone().unwrap_or_else(|| outer_type.clone());
        let family = Family::from_model_type(&model_type)
            .or_else(|| Family::from_model_type(&outer_type))
            .ok_or_else(|| HookError::UnsupportedModel {
                path: path.to_path_buf(),
                model_type: if model_type.is_empty() {
                    "<missing>".to_string()
                } else {
                    model_type.clone()
                },
                supported: SUPPORTED_MODEL_TYPES.join(", "),
            })?;
        let req = |v: Option<i64>, name: &str| {
            v.filter(|&x| x > 0)
                .ok_or_else(|| err(format!("`{name}` missing or not positive")))
        };
        let hidden_size = req(hf.hidden_size, "hidden_size")?;
        let num_heads = req(hf.num_attention_heads, "num_attention_heads")?;
        let num_layers = req(hf.num_hidden_layers, "num_hidden_layers")? as usize;
        let vocab_size = req(hf.vocab_size, "vocab_size")?;
        let intermediate_size = req(hf.intermediate_size, "intermediate_size")?;
        let num_kv_heads = hf.num_key_value_heads.unwrap_or(num_heads);
        if num_kv_heads <= 0 || num_heads % num_kv_heads != 0 {
            return Err(err(format!(
                "num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"
            )));
        }
        let head_dim = match (hf.head_dim, family) {
            (Some(d), _) => d,
            (None, Family::Gemma | Family::Gemma2 | Family::Gemma3) => 256,
            (None, Family::Qwen3) => 128,
            (None, _) => {
                if hidden_size % num_heads != 0 {
                    return Err(err(format!(
                        "hidden_size {hidden_size} not divisible by num_attention_heads {num_heads} and no head_dim"
                    )));
                }
                hidden_size / num_heads
            }
        };
        if head_dim <= 0 || head_dim % 2 != 0 {
            return Err(err(format!(
                "head_dim {head_dim} must be positive and even"
            )));
        }
        if let Some(f) = hf.partial_rotary_factor {
            if (f - 1.0).abs() > 1e-12 {
                return Err(err(format!("partial_rotary_factor {f} is not supported")));
            }
        }
        if hf.use_bidirectional_attention == Some(true) {
            return Err(err(
                "use_bidirectional_attention is not supported (decoder-only models only)".into(),
            ));
        }
        let act_name = match family {
            Family::Gemma2 | Family::Gemma3 => {
                hf.hidden_activation.clone().or(hf.hidden_act.clone())
            }
            Family::Gemma => hf.hidden_act.clone().or(hf.hidden_activation.clone()),
            _ => hf.hidden_act.clone(),
        };
        let activation = match act_name {
            None if family.is_gemma() => Activation::GeluTanh,
            None => Activation::Silu,
            // HF maps Gemma 1's legacy "gelu" to the tanh approximation.
            Some(ref a) if a == "gelu" && family == Family::Gemma => Activation::GeluTanh,
            Some(a) => {
                Activation::parse(&a).ok_or_else(|| err(format!("unsupported activation {a:?}")))?
            }
        };

        // Per-layer attention kinds.
        let window = match family {
            Family::Qwen2 | Family::Qwen3 => {
                if hf.use_sliding_window == Some(true) {
                    hf.sliding_window
                } else {
                    None
                }
            }
            Family::Gemma2 | Family::Gemma3 => hf.sliding_window.or(Some(4096)),
            _ => hf.sliding_window,
        };
        let layer_types: Vec<String> = match &hf.layer_types {
            Some(t) => {
                if t.len() != num_layers {
                    return Err(err(format!(
                        "layer_types has {} entries for {num_layers} layers",
                        t.len()
                    )));
                }
                t.clone()
            }
            None => (0..num_layers)
                .map(|i| {
                    let sliding = match family {
                        Family::Gemma2 => (i + 1) % 2 != 0,
                        Family::Gemma3 => {
                            let pattern = hf.sliding_window_pattern.unwrap_or(6).max(1) as usize;
                            (i + 1) % pattern != 0
                        }
                        Family::Qwen2 | Family::Qwen3 => {
                            window.is_some() && i as i64 >= hf.max_window_layers.unwrap_or(28)
                        }
                        Family::Llama => window.is_some(),
                        Family::Gemma => false,
                    };
                    if sliding {
                        "sliding_attention"
                    } else {
                        "full_attention"
                    }
                    .to_string()
                })
                .collect(),
        };

        // RoPE tables: one per distinct layer type (Gemma 3 has two bases).
        let rope_for = |layer_type: &str| -> Result<RopeSpec> {
            let default_theta = match (family, layer_type) {
                (Family::Gemma3, "sliding_attention") => {
                    hf.rope_local_base_freq.unwrap_or(10_000.0)
                }
                (Family::Gemma3, _) => 1_000_000.0,
                _ => 10_000.0,
            };
            let params: Option<Value> = match &hf.rope_parameters {
                Some(p)
                    if p.get("full_attention").is_some()
                        || p.get("sliding_attention").is_some() =>
                {
                    p.get(layer_type).cloned()
                }
                Some(p) => Some(p.clone()),
                None => match (family, layer_type) {
                    // Old-style Gemma 3: `rope_scaling` applies to global layers only.
                    (Family::Gemma3, "sliding_attention") => None,
                    _ => hf.rope_scaling.clone(),
                },
            };
            let theta_fallback = match (family, layer_type) {
                (Family::Gemma3, "sliding_attention") => default_theta,
                _ => hf.rope_theta.unwrap_or(default_theta),
            };
            let Some(p) = params.filter(|p| !p.is_null()) else {
                return Ok(RopeSpec {
                    theta: theta_fallback,
                    scaling: RopeScaling::None,
                });
            };
            let theta = get_f64(&p, "rope_theta").unwrap_or(theta_fallback);
            let kind = p
                .get("rope_type")
                .or_else(|| p.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("default");
            let factor = || {
                get_f64(&p, "factor")
                    .ok_or_else(|| err(format!("rope type {kind:?} needs `factor`")))
            };
            let scaling = match kind {
                "default" => RopeScaling::None,
                "linear" => RopeScaling::Linear { factor: factor()? },
                "llama3" => RopeScaling::Llama3 {
                    factor: factor()?,
                    low_freq_factor: get_f64(&p, "low_freq_factor").unwrap_or(1.0),
                    high_freq_factor: get_f64(&p, "high_freq_factor").unwrap_or(4.0),
                    original_max_position_embeddings: get_f64(
                        &p,
                        "original_max_position_embeddings",
                    )
                    .or(hf.max_position_embeddings.map(|m| m as f64))
                    .ok_or_else(|| {
                        err("llama3 rope needs original_max_position_embeddings".into())
                    })?,
                },
                other => {
                    return Err(err(format!(
                        "rope type {other:?} is not supported (default, linear, llama3)"
                    )))
                }
            };
            Ok(RopeSpec { theta, scaling })
        };
        let mut ropes: Vec<RopeSpec> = Vec::new();
        let mut layers = Vec::with_capacity(num_layers);
        for (i, t) in layer_types.iter().enumerate() {
            let attention = match t.as_str() {
                "full_attention" => AttentionKind::Full,
                "sliding_attention" => AttentionKind::Sliding {
                    window: window.filter(|&w| w > 0).ok_or_else(|| {
                        err(format!(
                            "layer {i} is sliding_attention but sliding_window is unset"
                        ))
                    })?,
                },
                other => return Err(err(format!("layer {i}: unsupported layer type {other:?}"))),
            };
            let rope = rope_for(t)?;
            let idx = match ropes.iter().position(|r| *r == rope) {
                Some(idx) => idx,
                None => {
                    ropes.push(rope);
                    ropes.len() - 1
                }
            };
            layers.push(LayerSpec {
                attention,
                rope: idx,
            });
        }

        let is_gemma = family.is_gemma();
        let sandwich = matches!(family, Family::Gemma2 | Family::Gemma3);
        let attn_scale = match family {
            Family::Gemma2 | Family::Gemma3 => hf.query_pre_attn_scalar.unwrap_or(256.0).powf(-0.5),
            _ => (head_dim as f64).powf(-0.5),
        };
        let softcap = |v: Option<f64>| v.filter(|&c| c > 0.0);
        let (attn_softcap, final_softcap) = match family {
            Family::Gemma2 => (
                softcap(hf.attn_logit_softcapping.or(Some(50.0))),
                softcap(hf.final_logit_softcapping.or(Some(30.0))),
            ),
            // Gemma 3 never softcaps attention; its multimodal wrapper (Gemma3ForConditionalGeneration)
            // does not apply the final softcap either.
            Family::Gemma3 if weight_prefix != "model." => (None, None),
            Family::Gemma3 => (None, softcap(hf.final_logit_softcapping)),
            _ => (
                softcap(hf.attn_logit_softcapping),
                softcap(hf.final_logit_softcapping),
            ),
        };
        let attention_bias = hf.attention_bias.unwrap_or(false);
        let spec = ArchSpec {
            family,
            model_type,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
            norm_weight_offset: is_gemma,
            embed_scale: is_gemma.then(|| (hidden_size as f64).sqrt()),
            qkv_bias: family == Family::Qwen2 || attention_bias,
            o_bias: attention_bias,
            mlp_bias: hf.mlp_bias.unwrap_or(false),
            qk_norm: matches!(family, Family::Qwen3 | Family::Gemma3),
            sandwich_norms: sandwich,
            activation,
            attn_softcap,
            final_softcap,
            attn_scale,
            layers,
            ropes,
            tie_word_embeddings: outer
                .tie_word_embeddings
                .or(hf.tie_word_embeddings)
                .unwrap_or(is_gemma),
            max_position_embeddings: hf.max_position_embeddings.unwrap_or(8192),
            weight_prefix: weight_prefix.to_string(),
            bos_token_id: hf.bos_token_id.or(outer.bos_token_id),
            eos_token_ids: hf
                .eos_token_id
                .as_ref()
                .or(outer.eos_token_id.as_ref())
                .map(|e| e.to_vec())
                .unwrap_or_default(),
            pad_token_id: hf.pad_token_id.or(outer.pad_token_id),
        };
        Ok(spec)
    }

    /// Number of query heads sharing one key/value head.
    pub fn kv_groups(&self) -> i64 {
        self.num_heads / self.num_kv_heads
    }
}
