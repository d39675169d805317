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

use crate::align::{hex, Alignment, KeepReport};
use crate::error::{Result, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use tch::Kind;

/// Version written to and required from `manifest.json`.
pub const FORMAT_VERSION: u32 = 1;
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

/// What a store holds, independent of its shards: a resumed or merged store must agree on all of it.
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
    /// File name inside the store directory.
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
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Models, dims, dtype, alignment, seed.
    #[serde(flatten)]
    pub spec: StoreSpec,
    /// Shards in write order.
    pub shards: Vec<ShardEntry>,
    /// `true` once the writer was finished; `false` while a collection is running or was interrupted.
    pub complete: bool,
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
        if m.format_version != FORMAT_VERSION {
            return Err(StoreError::Manifest {
                path,
                message: format!(
                    "format version {} (this library reads {FORMAT_VERSION})",
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
        for (i, s) in m.shards.iter().enumerate() {
            if s.file != shard_file_name(i) {
                return Err(StoreError::Manifest {
                    path,
                    message: format!(
                        "shard {i} is named {:?}, expected {:?}",
                        s.file,
                        shard_file_name(i)
                    ),
                });
            }
        }
        Ok(m)
    }

    /// Write `dir/manifest.json` atomically (temporary file, fsync, rename, fsync of the directory).
    pub fn write_atomic(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|source| StoreError::Json {
            path: path.clone(),
            source,
        })?;
        let tmp = dir.join(format!(".{MANIFEST_FILE}.tmp-{}", std::process::id()));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(StoreError::io(&path, e));
        }
        sync_dir(dir);
        Ok(())
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

/// Path of a listed shard.
pub(crate) fn shard_path(dir: &Path, entry: &ShardEntry) -> PathBuf {
    dir.join(&entry.file)
}
