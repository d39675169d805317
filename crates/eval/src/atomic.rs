//! Atomic file writes through model-hooks' writer
//! ([`rosetta_model_hooks::weights::write_file_atomic`]: a temporary file in the target's directory,
//! fsynced, then renamed over the target), so a reader sees the old file or the new one, never half of one.

use std::path::Path;

use crate::error::{EvalError, Result};

/// Write `bytes` to `path` atomically (the parent directory must exist).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    rosetta_model_hooks::weights::write_file_atomic(path, bytes).map_err(|e| EvalError::io(path, e))
}

/// Create `dir` and its parents.
pub(crate) fn create_dir_all(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))
}
