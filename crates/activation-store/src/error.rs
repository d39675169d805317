//! The crate's error type: every variant names the file, shard, document or row it concerns.

use std::path::{Path, PathBuf};

/// Errors of `rosetta-activation-store`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (manifest, tokenizer.json) could not be parsed or written.
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// The manifest is inconsistent or of an unsupported version.
    #[error("manifest {}: {message}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A shard disagrees with the manifest (missing, truncated, wrong header, wrong checksum).
    #[error("shard {}: {message}", path.display())]
    Shard {
        /// The shard file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An existing store was opened with a configuration it was not written with.
    #[error("store {}: {message}", dir.display())]
    Incompatible {
        /// The store directory.
        dir: PathBuf,
        /// Which field differs.
        message: String,
    },
    /// Stores cannot be merged: the store named is incomplete, differs from the first store, shares
    /// documents with another store, or is not a store.
    #[error("cannot merge {}: {message}", store.display())]
    Merge {
        /// The store (input or output directory) concerned.
        store: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Rows handed to the writer are malformed (shapes, dtypes, duplicate documents).
    #[error("document {doc_id}: {message}")]
    BadRows {
        /// The document the rows belong to.
        doc_id: i64,
        /// What is wrong.
        message: String,
    },
    /// Two encodings cannot be aligned (different texts, identity on different lengths).
    #[error("alignment: {0}")]
    Alignment(String),
    /// An invalid argument (batch size 0, fraction out of range, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An error from model-hooks (tokenizers, safetensors parsing and writing).
    #[error(transparent)]
    Hooks(#[from] rosetta_model_hooks::HookError),
    /// A libtorch error.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

impl StoreError {
    pub(crate) fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub(crate) fn shard(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Self::Shard {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }
}

/// `Result` with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
