//! The crate's error type.

use std::path::{Path, PathBuf};

/// Errors of `rosetta-mapping`.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
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
    /// A saved map or checkpoint is malformed (missing tensor, wrong shape, unknown kind or version).
    #[error("{}: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A map was loaded or applied for a model pair, hook point or width it was not trained for.
    #[error("map {}: {message}", path.display())]
    WrongPair {
        /// The map directory.
        path: PathBuf,
        /// Which field differs and how.
        message: String,
    },
    /// Tensors of the wrong shape or width were passed.
    #[error("shape: {0}")]
    Shape(String),
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A closed-form fit failed (e.g. a singular system without ridge penalty, too few rows).
    #[error("fit: {0}")]
    Fit(String),
    /// Training diverged (non-finite loss).
    #[error("training diverged at epoch {epoch}, step {step}: loss is {loss}")]
    Diverged {
        /// Epoch (0-based).
        epoch: usize,
        /// Optimiser step within the run.
        step: u64,
        /// The loss value.
        loss: f64,
    },
    /// The activation store failed.
    #[error(transparent)]
    Store(#[from] rosetta_activation_store::StoreError),
    /// The target model failed (KL fidelity / KL training).
    #[error(transparent)]
    Model(#[from] rosetta_model_hooks::HookError),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl MappingError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        MappingError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// `Result` with [`MappingError`].
pub type Result<T, E = MappingError> = std::result::Result<T, E>;
