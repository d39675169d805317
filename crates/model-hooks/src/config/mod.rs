//! Model configuration: the serde mirror of HF `config.json` ([`hf`]) and the normalised architecture
//! ([`spec`]) the forward pass is driven by.

pub mod hf;
pub mod spec;

pub use hf::HfConfig;
pub use spec::{
    Activation, ArchSpec, AttentionKind, Family, LayerSpec, RopeScaling, RopeSpec,
    SUPPORTED_MODEL_TYPES,
};
