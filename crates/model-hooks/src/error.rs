//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in `rosetta-model-hooks`. Each variant carries the context a user needs
/// to find the problem (file, tensor name, hook point, row).
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (config, tokenizer config, index, zoo record) could not be parsed.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// `config.json` names a model family Rosetta does not implement.
    #[error("{path}: unsupported model_type {model_type:?}; supported: {supported}")]
    UnsupportedModel {
        /// The config file.
        path: PathBuf,
        /// The `model_type` found.
        model_type: String,
        /// Comma-separated list of supported families.
        supported: String,
    },
    /// `config.json` is valid JSON but describes an inconsistent or unsupported architecture.
    #[error("{path}: invalid config: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A safetensors file is not readable as safetensors (bad header, truncated data).
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors {
        /// The file involved.
        path: PathBuf,
        /// What the parser reported.
        message: String,
    },
    /// Weights the architecture needs are absent from the checkpoint.
    #[error("checkpoint {dir}: missing tensor(s): {}", missing.join(", "))]
    MissingTensors {
        /// The checkpoint directory.
        dir: PathBuf,
        /// Names of missing tensors, with the file they were expected in where known.
        missing: Vec<String>,
    },
    /// Weights are present but with a shape other than the config implies.
    #[error("checkpoint {dir}: tensor(s) with wrong shape: {}", mismatched.join(", "))]
    ShapeMismatch {
        /// The checkpoint directory.
        dir: PathBuf,
        /// `name in file: expected [..], found [..]` for each mis-shaped tensor.
        mismatched: Vec<String>,
    },
    /// A tensor has a dtype Rosetta cannot load.
    #[error("{path}: tensor {name} has unsupported dtype {dtype}")]
    UnsupportedDtype {
        /// The file involved.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// The dtype found.
        dtype: String,
    },
    /// The tokenizer could not be loaded or failed to encode / decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A chat template failed to parse or render.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// The input to a forward pass or generation is unusable (empty prompt, too long, bad shapes).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A hook was configured inconsistently with the model or the batch.
    #[error("hook at {point}: {message}")]
    Hook {
        /// The hook point, e.g. `resid_post.12`.
        point: String,
        /// What is wrong.
        message: String,
    },
    /// A device string could not be parsed or names an unavailable device.
    #[error("device {0:?}: expected `cpu`, `cuda`, `cuda:N` or `auto`")]
    Device(String),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Result alias for this crate.
pub type Result<T, E = HookError> = std::result::Result<T, E>;

impl HookError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidInput(message.into())
    }
}
