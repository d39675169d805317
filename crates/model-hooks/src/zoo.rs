//! The model zoo: real checkpoints fetched from the package registry and converted to the Hugging Face
//! layout by `scripts/zoo.py` (see `docs/ZOO.md`). This module only finds and describes them.
//!
//! A zoo directory is complete when its `zoo.json` exists: the converter writes it last and renames the
//! directory into place atomically.

use crate::error::{HookError, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The zoo's models, smallest first.
pub const ZOO_MODELS: [&str; 4] = [
    "smollm2-135m-instruct",
    "gemma3-270m",
    "qwen2.5-coder-0.5b-instruct",
    "qwen2.5-coder-1.5b-instruct",
];

/// Rosetta's cache root: `$ROSETTA_HOME`, else `~/.cache/rosetta`.
pub fn rosetta_home() -> PathBuf {
    if let Some(p) = std::env::var_os("ROSETTA_HOME") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("rosetta")
}

/// Where converted zoo models live: `$ROSETTA_MODELS`, else `<rosetta_home>/models`.
pub fn zoo_dir() -> PathBuf {
    match std::env::var_os("ROSETTA_MODELS") {
        Some(p) => PathBuf::from(p),
        None => rosetta_home().join("models"),
    }
}

/// Directory of one zoo model (it may not exist yet).
pub fn model_dir(name: &str) -> PathBuf {
    zoo_dir().join(name)
}

/// A file of a converted model as recorded in `zoo.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct ZooFile {
    /// Size in bytes.
    pub size: u64,
    /// Hex sha256 of the file.
    pub sha256: String,
}

/// The GGUF a zoo model was converted from.
#[derive(Debug, Clone, Deserialize)]
pub struct ZooGguf {
    /// Path of the reassembled GGUF.
    pub file: String,
    /// Its hex sha256 (verified against the published or first-recorded hash).
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// The `zoo.json` record the converter writes into each model directory.
#[derive(Debug, Clone, Deserialize)]
pub struct ZooRecord {
    /// Zoo name, e.g. `gemma3-270m`.
    pub name: String,
    /// HF `model_type` of the converted checkpoint.
    pub model_type: String,
    /// The registry packages it came from (`name==version`).
    #[serde(default)]
    pub packages: Vec<String>,
    /// The source GGUF.
    pub gguf: ZooGguf,
    /// Every file of the converted directory with its size and hash.
    pub files: BTreeMap<String, ZooFile>,
    /// Versions of the conversion tools.
    #[serde(default)]
    pub converter: BTreeMap<String, String>,
}

/// A zoo model that is present on disk.
#[derive(Debug, Clone)]
pub struct ZooEntry {
    /// Its directory.
    pub dir: PathBuf,
    /// What the converter recorded.
    pub record: ZooRecord,
}

impl ZooEntry {
    /// Total size of the converted files in bytes.
    pub fn total_size(&self) -> u64 {
        self.record.files.values().map(|f| f.size).sum()
    }

    /// Check that every recorded file exists with its recorded size (cheap; no hashing).
    pub fn check_sizes(&self) -> Result<()> {
        for (name, f) in &self.record.files {
            let path = self.dir.join(name);
            let meta = std::fs::metadata(&path).map_err(|e| HookError::io(&path, e))?;
            if meta.len() != f.size {
                return Err(HookError::invalid(format!(
                    "{}: size {} differs from the {} bytes recorded in zoo.json; rerun `make models`",
                    path.display(),
                    meta.len(),
                    f.size
                )));
            }
        }
        Ok(())
    }
}

/// Read the zoo record of the model in `dir`, or `None` when the directory is absent or incomplete.
pub fn read_entry(dir: &Path) -> Result<Option<ZooEntry>> {
    let path = dir.join("zoo.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| HookError::io(&path, e))?;
    let record: ZooRecord =
        serde_json::from_str(&text).map_err(|source| HookError::Json { path, source })?;
    Ok(Some(ZooEntry {
        dir: dir.to_path_buf(),
        record,
    }))
}

/// Find a zoo model by name; a clear error says how to fetch it when it is missing.
pub fn find(name: &str) -> Result<ZooEntry> {
    let dir = model_dir(name);
    read_entry(&dir)?.ok_or_else(|| {
        HookError::invalid(format!(
            "zoo model {name:?} not found at {} (run `make models`, or set ROSETTA_MODELS)",
            dir.display()
        ))
    })
}

/// Every zoo model with its entry, `None` for those not fetched.
pub fn inventory() -> Result<Vec<(&'static str, Option<ZooEntry>)>> {
    ZOO_MODELS
        .iter()
        .map(|&name| Ok((name, read_entry(&model_dir(name))?)))
        .collect()
}
