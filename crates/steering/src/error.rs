//! The crate's error type.

use std::path::PathBuf;

/// What went wrong computing, transferring, applying, saving or loading a steering vector.
#[derive(Debug, thiserror::Error)]
pub enum SteeringError {
    /// A model-hooks operation (forward pass, tokenizer, hook) failed.
    #[error(transparent)]
    Hooks(#[from] rosetta_model_hooks::HookError),
    /// A mapping operation failed.
    #[error(transparent)]
    Mapping(#[from] rosetta_mapping::MappingError),
    /// Hashing a tokenizer or reading a store failed.
    #[error(transparent)]
    Store(#[from] rosetta_activation_store::StoreError),
    /// Writing a plot or computing a metric failed.
    #[error(transparent)]
    Eval(#[from] rosetta_eval::EvalError),
    /// A GGUF control-vector file could not be read or written.
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    /// A tensor operation failed inside libtorch.
    #[error("tensor operation: {0}")]
    Torch(#[from] tch::TchError),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON sidecar could not be parsed or written.
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// A saved vector is malformed (missing tensor, wrong shape, unknown version, bad checksum).
    #[error("{}: {message}", path.display())]
    Format {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A vector (or map) was loaded or applied for a model it was not made for.
    #[error("{what}: {message}")]
    WrongModel {
        /// The vector directory or the vector's description.
        what: String,
        /// Every field that differs, and how.
        message: String,
    },
    /// Inputs of the wrong shape, count or kind were passed.
    #[error("{0}")]
    Invalid(String),
}

impl SteeringError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// `Result` with [`SteeringError`].
pub type Result<T, E = SteeringError> = std::result::Result<T, E>;
