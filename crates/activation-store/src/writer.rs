//! Writing a store: buffered rows, shards flushed at a byte budget, resumable after a crash.

use crate::error::{Result, StoreError};
use crate::format::{
    sha256_file, shard_file_name, sync_dir, Manifest, ShardEntry, StoreSpec, DEFAULT_SHARD_BYTES,
    FORMAT_VERSION, MANIFEST_FILE,
};
use crate::reader::StoreReader;
use rosetta_model_hooks::weights::write_safetensors_atomic;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// One model's rows of one document.
#[derive(Debug)]
pub struct SideRows {
    /// Activations `[n, d]` (any floating dtype, any device; converted to the store dtype on CPU).
    pub acts: Tensor,
    /// Token id of each row, `n` entries.
    pub token_ids: Vec<i64>,
    /// Position of each row's token in this model's encoding, `n` entries.
    pub positions: Vec<i64>,
    /// Tokens in this model's encoding of the document (`>= n`), for the store's keep rate.
    pub encoded_tokens: u64,
}

/// The rows of one document: source rows and, for paired stores, the aligned target rows (row `k` of `x`
/// pairs with row `k` of `y`).
#[derive(Debug)]
pub struct DocRows {
    /// Document id, unique within the store.
    pub doc_id: i64,
    /// Source model rows.
    pub x: SideRows,
    /// Target model rows (required for paired stores, refused for single-model stores).
    pub y: Option<SideRows>,
}

/// Writer settings.
#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    /// A shard is flushed as soon as the buffered rows reach this many bytes (activations + ids). Documents
    /// are never split, so a shard may exceed it by up to one document. Default 256 MiB.
    pub shard_bytes: u64,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            shard_bytes: DEFAULT_SHARD_BYTES,
        }
    }
}

/// What an existing store already holds when a collection resumes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumeInfo {
    /// Documents stored in listed (complete, verified) shards: a collector skips them.
    pub stored_docs: BTreeSet<i64>,
    /// Shards kept.
    pub shards: usize,
    /// Rows kept.
    pub rows: u64,
    /// Unlisted leftovers of the interrupted run that were deleted (partial shards, temporary files).
    pub removed: Vec<PathBuf>,
}

struct Buffered {
    doc_id: i64,
    tokens: (u64, u64),
    x: Tensor,
    x_tok: Vec<i64>,
    x_pos: Vec<i64>,
    y: Option<(Tensor, Vec<i64>, Vec<i64>, u64)>,
}

/// Buffers document rows and writes them as shards of bounded size.
///
/// Every shard is written atomically and the manifest is rewritten atomically after it, so at any instant
/// the manifest lists only complete shards. Rows still buffered when the process dies are lost and
/// re-collected on resume; [`StoreWriter::finish`] flushes the last shard and marks the store complete.
/// Dropping a writer without `finish` does NOT flush (that is what a crash looks like).
pub struct StoreWriter {
    dir: PathBuf,
    manifest: Manifest,
    options: WriterOptions,
    buffer: Vec<Buffered>,
    buffered_bytes: u64,
    stored: BTreeSet<i64>,
}

impl StoreWriter {
    /// Create a new store in `dir` (created if needed); refuses a directory that already has a manifest.
    pub fn create(dir: impl AsRef<Path>, spec: StoreSpec, options: WriterOptions) -> Result<Self> {
        let dir = dir.as_ref();
        if dir.join(MANIFEST_FILE).exists() {
            return Err(StoreError::Incompatible {
                dir: dir.to_path_buf(),
                message: "a store already exists here (use open_or_resume to continue it)".into(),
            });
        }
        let (w, _) = Self::open_or_resume(dir, spec, options)?;
        Ok(w)
    }

    /// Open the store in `dir` to continue an interrupted collection, or create it.
    ///
    /// An existing manifest must have the same [`StoreSpec`]; its shards are verified (size + header) and
    /// their documents reported in [`ResumeInfo::stored_docs`]. Shard and temporary files the manifest does
    /// not list are deleted. New shards continue the numbering. Feeding the remaining documents in the
    /// original order gives the same shards as an uninterrupted run. Without a manifest, a directory that
    /// already holds shard files is refused (they belong to an unknown store).
    ///
    /// A merged store ([`crate::merge_stores`]) is refused: it is read-only.
    ///
    /// One writer per directory: nothing locks the store against a second concurrent writer.
    pub fn open_or_resume(
        dir: impl AsRef<Path>,
        spec: StoreSpec,
        options: WriterOptions,
    ) -> Result<(Self, ResumeInfo)> {
        let dir = dir.as_ref().to_path_buf();
        if options.shard_bytes == 0 {
            return Err(StoreError::InvalidArgument(
                "shard_bytes must be > 0".into(),
            ));
        }
        if let Some(t) = &spec.target {
            if t.dim <= 0 {
                return Err(StoreError::InvalidArgument(format!(
                    "target dim {} must be > 0",
                    t.dim
                )));
            }
        }
        if spec.source.dim <= 0 {
            return Err(StoreError::InvalidArgument(format!(
                "source dim {} must be > 0",
                spec.source.dim
            )));
        }
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        let mut info = ResumeInfo::default();
        let manifest = if dir.join(MANIFEST_FILE).exists() {
            let existing = Manifest::read(&dir)?;
            if existing.is_merged() {
                return Err(StoreError::Incompatible {
                    dir: dir.clone(),
                    message: format!(
                        "this is a merged store (over {}); it is read-only: resume or extend a worker \
                         store and merge again",
                        existing.merged_from.join(", ")
                    ),
                });
            }
            let reader = StoreReader::open(&dir)?;
            let mut m = reader.manifest().clone();
            if m.spec != spec {
                return Err(StoreError::Incompatible {
                    dir: dir.clone(),
                    message: spec_difference(&m.spec, &spec),
                });
            }
            for i in 0..m.shards.len() {
                for d in reader.shard_doc_ids(i)? {
                    info.stored_docs.insert(d);
                }
            }
            info.shards = m.shards.len();
            info.rows = m.rows();
            m.complete = false;
            m
        } else {
            if let Some(foreign) = first_shard_file(&dir)? {
                return Err(StoreError::Incompatible {
                    dir: dir.clone(),
                    message: format!(
                        "{} exists but there is no {MANIFEST_FILE}: refusing to overwrite shards of an \
                         unknown store",
                        foreign.display()
                    ),
                });
            }
            Manifest {
                format_version: FORMAT_VERSION,
                spec,
                shards: Vec::new(),
                complete: false,
                merged_from: Vec::new(),
            }
        };
        info.removed = remove_leftovers(&dir, &manifest)?;
        manifest.write_atomic(&dir)?;
        Ok((
            Self {
                dir,
                stored: info.stored_docs.clone(),
                manifest,
                options,
                buffer: Vec::new(),
                buffered_bytes: 0,
            },
            info,
        ))
    }

    /// The manifest as of the last flushed shard.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether a document is already stored or buffered.
    pub fn contains(&self, doc_id: i64) -> bool {
        self.stored.contains(&doc_id)
    }

    /// Add one document's rows; flushes a shard when the buffer reaches the byte budget.
    ///
    /// Shapes: `x.acts` is `[n, d_src]`, `y.acts` is `[n, d_tgt]` with the same `n`; id and position
    /// vectors have `n` entries. A document with `n = 0` is recorded as seen but adds no rows, so a resume
    /// does not report it (it has nothing to store).
    pub fn add(&mut self, doc: DocRows) -> Result<()> {
        let doc_id = doc.doc_id;
        let bad = |message: String| StoreError::BadRows { doc_id, message };
        if self.stored.contains(&doc_id) {
            return Err(bad("document already stored".into()));
        }
        let spec = &self.manifest.spec;
        let kind = spec.dtype.kind();
        let x = check_side(&doc.x, spec.source.dim, kind, "x").map_err(bad)?;
        let n = x.size()[0];
        let y = match (&spec.target, doc.y) {
            (Some(t), Some(y)) => {
                let acts = check_side(&y, t.dim, kind, "y").map_err(bad)?;
                if acts.size()[0] != n {
                    return Err(bad(format!("x has {n} rows but y has {}", acts.size()[0])));
                }
                Some((acts, y.token_ids, y.positions, y.encoded_tokens))
            }
            (Some(_), None) => return Err(bad("paired store: y rows are required".into())),
            (None, Some(_)) => return Err(bad("single-model store: y rows given".into())),
            (None, None) => None,
        };
        self.stored.insert(doc_id);
        if n == 0 {
            return Ok(());
        }
        let d_tgt = spec.target.as_ref().map_or(0, |t| t.dim) as u64;
        let id_cols = if y.is_some() { 5 } else { 3 };
        self.buffered_bytes +=
            n as u64 * ((spec.source.dim as u64 + d_tgt) * spec.dtype.size() + 8 * id_cols);
        self.buffer.push(Buffered {
            doc_id,
            tokens: (doc.x.encoded_tokens, y.as_ref().map_or(0, |y| y.3)),
            x,
            x_tok: doc.x.token_ids,
            x_pos: doc.x.positions,
            y,
        });
        if self.buffered_bytes >= self.options.shard_bytes {
            self.flush()?;
        }
        Ok(())
    }

    /// Write the buffered rows as a shard now (no-op when empty).
    pub fn flush(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let index = self.manifest.shards.len();
        let file = shard_file_name(index);
        let path = self.dir.join(&file);
        let ctx = |e: tch::TchError| StoreError::shard(&path, format!("assembling tensors: {e}"));
        let xs: Vec<&Tensor> = self.buffer.iter().map(|b| &b.x).collect();
        let x = Tensor::f_cat(&xs, 0).map_err(ctx)?;
        let rows = x.size()[0];
        let ids = |f: &dyn Fn(&Buffered) -> &[i64]| -> Tensor {
            let v: Vec<i64> = self
                .buffer
                .iter()
                .flat_map(|b| f(b).iter().copied())
                .collect();
            Tensor::from_slice(&v)
        };
        let doc_ids: Vec<i64> = self
            .buffer
            .iter()
            .flat_map(|b| std::iter::repeat_n(b.doc_id, b.x_tok.len()))
            .collect();
        let mut tensors = vec![
            ("x".to_string(), x),
            ("x_token_ids".to_string(), ids(&|b| &b.x_tok)),
            ("x_positions".to_string(), ids(&|b| &b.x_pos)),
            ("doc_ids".to_string(), Tensor::from_slice(&doc_ids)),
        ];
        if self.manifest.spec.target.is_some() {
            let ys: Vec<&Tensor> = self
                .buffer
                .iter()
                .filter_map(|b| b.y.as_ref().map(|y| &y.0))
                .collect();
            tensors.push(("y".to_string(), Tensor::f_cat(&ys, 0).map_err(ctx)?));
            tensors.push((
                "y_token_ids".to_string(),
                ids(&|b| b.y.as_ref().map_or(&[][..], |y| &y.1)),
            ));
            tensors.push((
                "y_positions".to_string(),
                ids(&|b| b.y.as_ref().map_or(&[][..], |y| &y.2)),
            ));
        }
        // One metadata key only: safetensors serialises the map in HashMap order, and shards must be
        // byte-identical across runs (resume equals an uninterrupted run, checksums are reproducible).
        let mut meta = HashMap::new();
        meta.insert(
            "format".to_string(),
            format!("rosetta-activation-store/{FORMAT_VERSION}"),
        );
        write_safetensors_atomic(&path, &tensors, Some(meta))?;
        sync_dir(&self.dir);
        let bytes = std::fs::metadata(&path)
            .map_err(|e| StoreError::io(&path, e))?
            .len();
        let sha256 = sha256_file(&path)?;
        self.manifest.shards.push(ShardEntry {
            file,
            rows: rows as u64,
            docs: self.buffer.len() as u64,
            bytes,
            sha256,
            source_tokens: self.buffer.iter().map(|b| b.tokens.0).sum(),
            target_tokens: self.buffer.iter().map(|b| b.tokens.1).sum(),
        });
        if let Err(e) = self.manifest.write_atomic(&self.dir) {
            self.manifest.shards.pop();
            return Err(e);
        }
        self.buffer.clear();
        self.buffered_bytes = 0;
        Ok(())
    }

    /// Flush the last shard and mark the store complete; returns the final manifest.
    pub fn finish(mut self) -> Result<Manifest> {
        self.flush()?;
        self.manifest.complete = true;
        self.manifest.write_atomic(&self.dir)?;
        Ok(self.manifest)
    }
}

/// Validate one side's rows; returns the activations on CPU in the store dtype, contiguous.
fn check_side(side: &SideRows, dim: i64, kind: Kind, name: &str) -> Result<Tensor, String> {
    let size = side.acts.size();
    if size.len() != 2 || size[1] != dim {
        return Err(format!(
            "{name} activations have shape {size:?}, expected [n, {dim}]"
        ));
    }
    if !side.acts.is_floating_point() {
        return Err(format!(
            "{name} activations are {:?}, expected a floating dtype",
            side.acts.kind()
        ));
    }
    let n = size[0] as usize;
    if side.encoded_tokens < n as u64 {
        return Err(format!(
            "{name}: {n} rows but the encoding has only {} tokens",
            side.encoded_tokens
        ));
    }
    if side.token_ids.len() != n || side.positions.len() != n {
        return Err(format!(
            "{name}: {n} rows but {} token ids and {} positions",
            side.token_ids.len(),
            side.positions.len()
        ));
    }
    side.acts
        .f_to_device(Device::Cpu)
        .and_then(|t| t.f_to_kind(kind))
        .and_then(|t| t.f_contiguous())
        .map_err(|e| format!("{name}: {e}"))
}

fn spec_difference(old: &StoreSpec, new: &StoreSpec) -> String {
    let mut diffs = Vec::new();
    if old.source != new.source {
        diffs.push(format!("source {:?} vs {:?}", old.source, new.source));
    }
    if old.target != new.target {
        diffs.push(format!("target {:?} vs {:?}", old.target, new.target));
    }
    if old.dtype != new.dtype {
        diffs.push(format!("dtype {:?} vs {:?}", old.dtype, new.dtype));
    }
    if old.alignment != new.alignment {
        diffs.push(format!(
            "alignment {:?} vs {:?}",
            old.alignment, new.alignment
        ));
    }
    if old.seed != new.seed {
        diffs.push(format!("seed {} vs {}", old.seed, new.seed));
    }
    format!(
        "the store was written with a different configuration (stored vs requested): {}",
        diffs.join("; ")
    )
}

fn is_shard_name(name: &str) -> bool {
    name.starts_with("shard-") && name.ends_with(".safetensors")
}

/// The first shard-like file in `dir`, if any.
fn first_shard_file(dir: &Path) -> Result<Option<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        if is_shard_name(&entry.file_name().to_string_lossy()) {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

/// Delete shard files the manifest does not list and temporary files of interrupted writes.
fn remove_leftovers(dir: &Path, manifest: &Manifest) -> Result<Vec<PathBuf>> {
    let listed: BTreeSet<&str> = manifest.shards.iter().map(|s| s.file.as_str()).collect();
    let mut removed = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let stray_shard = is_shard_name(&name) && !listed.contains(name.as_str());
        let temp = name.starts_with('.') && name.contains(".tmp-");
        if stray_shard || temp {
            let p = entry.path();
            std::fs::remove_file(&p).map_err(|e| StoreError::io(&p, e))?;
            removed.push(p);
        }
    }
    removed.sort();
    Ok(removed)
}
