//! The on-disk format: a directory with `manifest.json` and safetensors shards.
//!
//! ```text
//! store/
//!   manifest.json            # Manifest (JSON), rewritten atomically after every shard
//!   shard-00000.safetensors  # Shard 0
//!   shard-00001.safetensors
//! ```
//!
//! Every shard holds `rows` rows, one per kept token, in the order they were written (documents are
//! contiguous and never split across shards):
//!
//! | tensor | dtype | shape | meaning |
//! |---|---|---|---|
//! | `x` | store dtype | `[rows, d_src]` | source model activation |
//! | `y` | store dtype | `[rows, d_tgt]` | target model activation (paired stores only) |
//! | `x_token_ids`, `y_token_ids` | i64 | `[rows]` | token id at that position, per model |
//! | `x_positions`, `y_positions` | i64 | `[rows]` | position of the token in its model's encoding |
//! | `doc_ids` | i64 | `[rows]` | document id |
//!
//! A shard is listed in the manifest only after it has been written completely (temporary file, fsync,
//! rename), with its byte size and SHA-256; files not listed are leftovers of an interrupted run.
//!
//! # Merged stores
//!
//! [`crate::merge_stores`] writes a store that owns no shard files: its manifest (format version
//! [`MERGED_FORMAT_VERSION`]) lists the shards of several worker stores by paths relative to its own
//! directory (`../worker-1/shard-00000.safetensors`) and names those stores in [`Manifest::merged_from`].
//! A merged manifest is accepted only when every shard path is `<one of merged_from>/shard-NNNNN.safetensors`,
//! every `merged_from` entry is a relative path of plain names and `..` (no root, no `.`), and no shard is
//! listed twice. Plain stores keep format version [`FORMAT_VERSION`] (1), so their manifests and shards are
//! unchanged and older manifests read as before; a library that only knows version 1 refuses a merged store
//! by its version instead of misreading it.

use crate::align::{hex, Alignment, KeepReport};
use crate::error::{Result, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::Kind;

/// Format version of a plain store's `manifest.json` (written by [`crate::StoreWriter`]; also recorded in
/// every shard's header metadata).
pub const FORMAT_VERSION: u32 = 1;
/// Format version of a merged store's `manifest.json` (shards listed by relative paths into other stores).
pub const MERGED_FORMAT_VERSION: u32 = 2;
/// Name of the manifest file inside a store directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Default shard byte budget: 256 MiB.
pub const DEFAULT_SHARD_BYTES: u64 = 256 << 20;

/// File name of shard `index`: `shard-00000.safetensors`.
pub fn shard_file_name(index: usize) -> String {
    format!("shard-{index:05}.safetensors")
}

/// Floating dtype activations are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreDtype {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
}

impl StoreDtype {
    /// The libtorch kind.
    pub fn kind(self) -> Kind {
        match self {
            Self::F32 => Kind::Float,
            Self::F16 => Kind::Half,
            Self::Bf16 => Kind::BFloat16,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }

    /// The safetensors dtype name (`F32`, `F16`, `BF16`).
    pub fn safetensors_name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Bf16 => "BF16",
        }
    }
}

/// One model whose activations a store holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelEntry {
    /// A short name (zoo name or checkpoint id).
    pub id: String,
    /// Checkpoint directory the activations were captured from.
    pub dir: String,
    /// [`crate::tokenizer_hash`] of its tokenizer.
    pub tokenizer_hash: String,
    /// Hook point, as `HookPoint`'s display form (e.g. `resid_post.13`).
    pub hook_point: String,
    /// Activation width.
    pub dim: i64,
}

/// What a store holds, independent of its shards. A resumed store must agree on all of it; stores merged by
/// [`crate::merge_stores`] on all of it except the checkpoint directories ([`ModelEntry::dir`]: workers on
/// different hosts load the same checkpoint from different paths).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreSpec {
    /// The source model (`x`).
    pub source: ModelEntry,
    /// The target model (`y`); `None` for single-model stores.
    pub target: Option<ModelEntry>,
    /// Activation dtype on disk.
    pub dtype: StoreDtype,
    /// How target positions were paired with source positions.
    pub alignment: Alignment,
    /// Seed of the collection (recorded for reproducibility).
    pub seed: u64,
}

/// One shard as listed in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// File name inside the store directory; in a merged store, a relative path into one of the stores in
    /// [`Manifest::merged_from`] (`../worker-1/shard-00000.safetensors`).
    pub file: String,
    /// Rows it holds.
    pub rows: u64,
    /// Documents it holds (documents are never split across shards).
    pub docs: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// Tokens the source model read for these documents (before alignment and position filters).
    pub source_tokens: u64,
    /// Tokens the target model read for these documents (0 for single-model stores).
    pub target_tokens: u64,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`], or [`MERGED_FORMAT_VERSION`] for a merged store.
    pub format_version: u32,
    /// Models, dims, dtype, alignment, seed.
    #[serde(flatten)]
    pub spec: StoreSpec,
    /// Shards in write order.
    pub shards: Vec<ShardEntry>,
    /// `true` once the writer was finished; `false` while a collection is running or was interrupted.
    pub complete: bool,
    /// For a merged store: the stores whose shards it lists, as paths relative to its directory (empty,
    /// and absent from the JSON, for a plain store).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<String>,
}

impl Manifest {
    /// Total rows over all shards.
    pub fn rows(&self) -> u64 {
        self.shards.iter().map(|s| s.rows).sum()
    }

    /// Share of each model's tokens kept as rows over the whole store (alignment and position filters).
    pub fn keep_report(&self) -> KeepReport {
        KeepReport {
            total_a: self.shards.iter().map(|s| s.source_tokens as usize).sum(),
            total_b: self.shards.iter().map(|s| s.target_tokens as usize).sum(),
            kept: self.rows() as usize,
        }
    }

    /// Read and check `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| StoreError::io(&path, e))?;
        let m: Manifest = serde_json::from_str(&text).map_err(|source| StoreError::Json {
            path: path.clone(),
            source,
        })?;
        if m.format_version != FORMAT_VERSION && m.format_version != MERGED_FORMAT_VERSION {
            return Err(StoreError::Manifest {
                path,
                message: format!(
                    "format version {} (this library reads {FORMAT_VERSION} and {MERGED_FORMAT_VERSION})",
                    m.format_version
                ),
            });
        }
        let check = |e: &ModelEntry, which: &str| -> Result<()> {
            if e.dim <= 0 {
                return Err(StoreError::Manifest {
                    path: path.clone(),
                    message: format!("{which} model {:?} has dim {}", e.id, e.dim),
                });
            }
            Ok(())
        };
        check(&m.spec.source, "source")?;
        if let Some(t) = &m.spec.target {
            check(t, "target")?;
        }
        let bad = |message: String| StoreError::Manifest {
            path: path.clone(),
            message,
        };
        if m.is_merged() {
            if m.format_version != MERGED_FORMAT_VERSION {
                return Err(bad(format!(
                    "merged_from is set but the format version is {}",
                    m.format_version
                )));
            }
            for input in &m.merged_from {
                check_relative_dir(input)
                    .map_err(|e| bad(format!("merged_from {input:?}: {e}")))?;
            }
            let mut seen = std::collections::BTreeSet::new();
            for (i, s) in m.shards.iter().enumerate() {
                let p = Path::new(&s.file);
                let in_input = p
                    .parent()
                    .is_some_and(|parent| m.merged_from.iter().any(|d| Path::new(d) == parent));
                let named = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(is_shard_file_name);
                if !in_input || !named {
                    return Err(bad(format!(
                        "shard {i} is {:?}: a merged store lists shard-NNNNN.safetensors files of the \
                         stores in merged_from only",
                        s.file
                    )));
                }
                if !seen.insert(s.file.as_str()) {
                    return Err(bad(format!("shard {:?} is listed twice", s.file)));
                }
            }
        } else {
            if m.format_version != FORMAT_VERSION {
                return Err(bad(format!(
                    "format version {} without merged_from (plain stores are version {FORMAT_VERSION})",
                    m.format_version
                )));
            }
            for (i, s) in m.shards.iter().enumerate() {
                if s.file != shard_file_name(i) {
                    return Err(bad(format!(
                        "shard {i} is named {:?}, expected {:?}",
                        s.file,
                        shard_file_name(i)
                    )));
                }
            }
        }
        Ok(m)
    }

    /// Whether this is a merged store (its shards belong to the stores in [`Manifest::merged_from`]).
    pub fn is_merged(&self) -> bool {
        !self.merged_from.is_empty()
    }

    /// Write `dir/manifest.json` atomically (temporary file, fsync, rename, fsync of the directory).
    pub fn write_atomic(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|source| StoreError::Json {
            path: path.clone(),
            source,
        })?;
        let mut bytes = text.into_bytes();
        bytes.push(b'\n');
        rosetta_model_hooks::weights::write_file_atomic(&path, &bytes)
            .map_err(|e| StoreError::io(&path, e))
    }
}

/// fsync a directory so a rename inside it is durable (best effort: not every platform allows it).
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// SHA-256 (hex) of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| StoreError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| StoreError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Path of a listed shard (relative entries of merged stores resolve against the store directory).
pub(crate) fn shard_path(dir: &Path, entry: &ShardEntry) -> PathBuf {
    dir.join(&entry.file)
}

/// Whether `name` is `shard-NNNNN.safetensors` (five or more digits).
pub(crate) fn is_shard_file_name(name: &str) -> bool {
    name.strip_prefix("shard-")
        .and_then(|r| r.strip_suffix(".safetensors"))
        .is_some_and(|n| n.len() >= 5 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// A `merged_from` entry must be a non-empty relative path of plain names and `..`.
fn check_relative_dir(p: &str) -> std::result::Result<(), &'static str> {
    use std::path::Component;
    let path = Path::new(p);
    if p.is_empty() {
        return Err("empty path");
    }
    for c in path.components() {
        match c {
            Component::Normal(_) | Component::ParentDir => {}
            Component::RootDir | Component::Prefix(_) => return Err(
                "absolute paths are not allowed (merged stores refer to their inputs relatively)",
            ),
            Component::CurDir => return Err("`.` components are not allowed"),
        }
    }
    Ok(())
}
