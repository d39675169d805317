//! The crate's error type.

/// Errors of `rosetta-eval`.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A metric was asked for over no items (an empty corpus, no samples, no prompts).
    #[error("{0}: no items to score")]
    Empty(&'static str),
    /// Two inputs that must pair up item by item have different lengths.
    #[error("{what}: {left} vs {right} items")]
    LengthMismatch {
        /// Which inputs.
        what: &'static str,
        /// Length of the first.
        left: usize,
        /// Length of the second.
        right: usize,
    },
    /// Tensors of the wrong rank, shape or kind were passed.
    #[error("shape: {0}")]
    Shape(String),
    /// An input value is out of range (a target id outside the vocabulary, a NaN score, a row of logits
    /// with no finite entry).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// libtorch reported an error.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// `Result` with [`EvalError`].
pub type Result<T, E = EvalError> = std::result::Result<T, E>;
