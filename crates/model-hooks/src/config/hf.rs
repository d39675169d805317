//! Serde mirror of Hugging Face `config.json` for the supported families. Field names are HF's; every field
//! is optional here and defaults are applied per family in [`super::spec`]. Both the transformers-5 style
//! (`rope_parameters`, `layer_types`) and the older style (`rope_theta`, `rope_scaling`,
//! `sliding_window_pattern`, `rope_local_base_freq`) are accepted.

use serde::Deserialize;
use serde_json::Value;

/// `eos_token_id` is an int or a list of ints in the wild.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id.
    One(i64),
    /// Several ids.
    Many(Vec<i64>),
}

impl TokenIds {
    /// The ids as a vector.
    pub fn to_vec(&self) -> Vec<i64> {
        match self {
            TokenIds::One(i) => vec![*i],
            TokenIds::Many(v) => v.clone(),
        }
    }
}

/// The fields of `config.json` Rosetta reads.
#[allow(missing_docs)] // field names and meanings are HF's
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HfConfig {
    pub model_type: Option<String>,
    #[serde(default)]
    pub architectures: Vec<String>,
    pub vocab_size: Option<i64>,
    pub hidden_size: Option<i64>,
    pub intermediate_size: Option<i64>,
    pub num_hidden_layers: Option<i64>,
    pub num_attention_heads: Option<i64>,
    pub num_key_value_heads: Option<i64>,
    pub head_dim: Option<i64>,
    pub hidden_act: Option<String>,
    pub hidden_activation: Option<String>,
    pub max_position_embeddings: Option<i64>,
    pub rms_norm_eps: Option<f64>,
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    // RoPE, new style
    pub rope_parameters: Option<Value>,
    // RoPE, old style
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<Value>,
    pub rope_local_base_freq: Option<f64>,
    pub partial_rotary_factor: Option<f64>,
    // attention layout
    pub layer_types: Option<Vec<String>>,
    pub sliding_window: Option<i64>,
    pub sliding_window_pattern: Option<i64>,
    pub use_sliding_window: Option<bool>,
    pub max_window_layers: Option<i64>,
    pub query_pre_attn_scalar: Option<f64>,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
    pub use_bidirectional_attention: Option<bool>,
    // tokens
    pub bos_token_id: Option<i64>,
    pub eos_token_id: Option<TokenIds>,
    pub pad_token_id: Option<i64>,
    pub torch_dtype: Option<String>,
    pub dtype: Option<String>,
    /// Multimodal wrappers (`gemma3`) hold the language model's config here.
    pub text_config: Option<Box<HfConfig>>,
}
