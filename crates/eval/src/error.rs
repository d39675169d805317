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
    /// The LLM judge is not (or wrongly) configured: a missing environment variable (named), an
    /// unusable URL.
    #[error("judge configuration: {0}")]
    JudgeConfig(String),
    /// The judge endpoint could not be reached (connection refused, timeout), after every attempt.
    #[error("judge endpoint {url}: {message} (after {attempts} attempt(s))")]
    JudgeTransport {
        /// The URL requested.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last transport error.
        message: String,
    },
    /// The judge endpoint answered with an HTTP error status (after every attempt, for retried
    /// statuses: 429 and 5xx).
    #[error("judge endpoint {url}: HTTP {status} (after {attempts} attempt(s)); body starts {body_start:?}")]
    JudgeStatus {
        /// The URL requested.
        url: String,
        /// The last HTTP status.
        status: u16,
        /// How many attempts were made.
        attempts: u32,
        /// The first bytes of the last response body (lossy UTF-8).
        body_start: String,
    },
    /// The judge endpoint answered 2xx with a body that is not an OpenAI chat-completions response (not
    /// JSON, or no `choices[0].message.content` string).
    #[error("judge endpoint {url}: {reason}; body starts {body_start:?}")]
    JudgeBody {
        /// The URL requested.
        url: String,
        /// What is wrong with the body.
        reason: String,
        /// The first bytes of the body (lossy UTF-8).
        body_start: String,
    },
    /// The judge's answer holds no score in the expected place (or an out-of-range or second one): never
    /// read as a score.
    #[error("judge answered garbage ({reason}): {answer:?}")]
    JudgeGarbage {
        /// The judge's whole answer.
        answer: String,
        /// Why it was refused.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (report, judge cache entry) could not be parsed or does not match its schema.
    #[error("{path}: {message}")]
    Json {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Drawing or encoding a plot failed.
    #[error("plot {what}: {message}")]
    Plot {
        /// The plot (its path stem).
        what: String,
        /// What failed.
        message: String,
    },
}

impl EvalError {
    /// An [`EvalError::Io`] for `path`.
    pub(crate) fn io(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Self {
        EvalError::Io {
            path: path.into(),
            source,
        }
    }
}

/// `Result` with [`EvalError`].
pub type Result<T, E = EvalError> = std::result::Result<T, E>;
