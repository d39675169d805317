//! Memory-mapped safetensors checkpoints (single file or sharded with `model.safetensors.index.json`).
//!
//! Tensors are read straight from the mapping into libtorch in the requested dtype and device; the whole
//! file is never read into memory. Headers are parsed once per file.

use crate::error::{HookError, Result};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// One mapped safetensors file with its parsed header.
struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
    header_len: usize,
    metadata: Metadata,
}

impl MappedFile {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| HookError::io(path, e))?;
        // SAFETY: the mapping is read-only; like every mmap-based loader (HF's included) we rely on the
        // checkpoint not being truncated while it is open.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| HookError::io(path, e))?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| HookError::Safetensors {
                path: path.to_path_buf(),
                message: format!("{e:?}"),
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            header_len,
            metadata,
        })
    }
}

/// Shape and dtype of a stored tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    /// Shape as stored.
    pub shape: Vec<i64>,
    /// Stored dtype, e.g. `F32`, `BF16`.
    pub dtype: String,
    /// File that holds it.
    pub file: PathBuf,
}

/// A set of safetensors files addressed by tensor name.
pub struct SafetensorsSet {
    files: Vec<MappedFile>,
    index: HashMap<String, usize>,
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

impl SafetensorsSet {
    /// Open one safetensors file.
    pub fn open_file(path: &Path) -> Result<Self> {
        Self::from_files(&[path.to_path_buf()])
    }

    /// Open the checkpoint in `dir`: `model.safetensors`, or the shards listed by
    /// `model.safetensors.index.json`.
    pub fn open_checkpoint(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| HookError::io(&index_path, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| HookError::Json {
                    path: index_path.clone(),
                    source,
                })?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| HookError::Safetensors {
                    path: index_path.clone(),
                    message: "no `weight_map` object".into(),
                })?;
            let mut shards: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            shards.sort();
            shards.dedup();
            let paths: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
            let set = Self::from_files(&paths)?;
            // The index must agree with the shards' own headers.
            for (name, shard) in map {
                let shard = shard.as_str().unwrap_or_default();
                match set.index.get(name) {
                    Some(&i) if set.files[i].path.ends_with(shard) => {}
                    Some(&i) => {
                        return Err(HookError::Safetensors {
                            path: index_path.clone(),
                            message: format!(
                                "index maps {name} to {shard} but it is stored in {}",
                                set.files[i].path.display()
                            ),
                        })
                    }
                    None => {
                        return Err(HookError::MissingTensors {
                            dir: dir.to_path_buf(),
                            missing: vec![format!("{name} (listed in the index for {shard})")],
                        })
                    }
                }
            }
            Ok(set)
        } else if single.exists() {
            Self::open_file(&single)
        } else {
            Err(HookError::invalid(format!(
                "{}: no model.safetensors or model.safetensors.index.json",
                dir.display()
            )))
        }
    }

    fn from_files(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for (i, p) in paths.iter().enumerate() {
            let f = MappedFile::open(p)?;
            for name in f.metadata.tensors().keys() {
                if let Some(prev) = index.insert(name.clone(), i) {
                    return Err(HookError::Safetensors {
                        path: p.clone(),
                        message: format!("tensor {name} also stored in {}", paths[prev].display()),
                    });
                }
            }
            files.push(f);
        }
        Ok(Self { files, index })
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.index.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Whether a tensor is stored.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Shape, dtype and file of a stored tensor.
    pub fn meta(&self, name: &str) -> Option<TensorMeta> {
        let f = &self.files[*self.index.get(name)?];
        let info = f.metadata.info(name)?;
        Some(TensorMeta {
            shape: info.shape.iter().map(|&d| d as i64).collect(),
            dtype: format!("{:?}", info.dtype),
            file: f.path.clone(),
        })
    }

    /// String metadata of the first file's header (`__metadata__`).
    pub fn header_metadata(&self) -> BTreeMap<String, String> {
        self.files
            .first()
            .and_then(|f| f.metadata.metadata().clone())
            .map(|m| m.into_iter().collect())
            .unwrap_or_default()
    }

    /// Load a tensor, converted to `kind` (None keeps the stored dtype) on `device`.
    pub fn load(&self, name: &str, kind: Option<Kind>, device: Device) -> Result<Tensor> {
        let &i = self
            .index
            .get(name)
            .ok_or_else(|| HookError::MissingTensors {
                dir: self
                    .files
                    .first()
                    .map(|f| f.path.clone())
                    .unwrap_or_default(),
                missing: vec![name.to_string()],
            })?;
        let f = &self.files[i];
        let info = f
            .metadata
            .info(name)
            .ok_or_else(|| HookError::Safetensors {
                path: f.path.clone(),
                message: format!("{name} indexed but absent from header"),
            })?;
        let stored = kind_of(info.dtype).ok_or_else(|| HookError::UnsupportedDtype {
            path: f.path.clone(),
            name: name.to_string(),
            dtype: format!("{:?}", info.dtype),
        })?;
        let start = 8 + f.header_len + info.data_offsets.0;
        let end = 8 + f.header_len + info.data_offsets.1;
        let bytes = f
            .mmap
            .get(start..end)
            .ok_or_else(|| HookError::Safetensors {
                path: f.path.clone(),
                message: format!("{name}: data range {start}..{end} beyond the end of the file"),
            })?;
        let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(bytes, &shape, stored)?;
        let t = match kind {
            Some(k) if k != stored => t.f_to_kind(k)?,
            _ => t,
        };
        Ok(if device == Device::Cpu {
            t
        } else {
            t.f_to_device(device)?
        })
    }
}

/// Outcome of matching a checkpoint against what an architecture expects.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Expected but absent tensors (`name (expected in FILE)`); loading fails when non-empty.
    pub missing: Vec<String>,
    /// Stored tensors the architecture does not use (e.g. vision tower weights of a multimodal checkpoint).
    pub unexpected: Vec<String>,
    /// Tensors whose stored shape differs from the expected one; loading fails when non-empty.
    pub mismatched: Vec<String>,
    /// The config says the LM head is untied but the checkpoint has no `lm_head.weight`: the embedding
    /// matrix is used, as for a tied head.
    pub lm_head_tied_by_absence: bool,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} missing, {} unexpected, {} mis-shaped",
            self.missing.len(),
            self.unexpected.len(),
            self.mismatched.len()
        )?;
        if self.lm_head_tied_by_absence {
            write!(f, ", lm_head tied to embeddings (absent from checkpoint)")?;
        }
        Ok(())
    }
}

/// A fresh temporary path in `dir` for a file that will be renamed to `path`: named after the target, the
/// process and a per-process counter, so concurrent writers (other processes, or threads of this one
/// writing the same target) never share a temporary file.
fn temp_path(dir: &Path, path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Write `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename, then a
/// best-effort fsync of the directory. Readers see the old file or the new one, never a part; concurrent
/// writers of one target (processes or threads) each write their own temporary file and the last rename
/// wins. The file is made readable by all (`0644`). Every file Rosetta writes in one piece (manifests,
/// map sidecars, checkpoints' JSON, datasets, reports, plots) goes through here.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = temp_path(dir, path);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        readable_by_all(&tmp)?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Write tensors to a safetensors file atomically (temporary file in the same directory, then rename).
pub fn write_safetensors_atomic(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| HookError::io(dir, e))?;
    let tmp = temp_path(dir, path);
    let views: Vec<(String, TensorBytes)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), TensorBytes::new(t)?)))
        .collect::<Result<_>>()?;
    let result = safetensors::serialize_to_file(views, metadata, &tmp)
        .map_err(|e| HookError::Safetensors {
            path: tmp.clone(),
            message: format!("{e:?}"),
        })
        .and_then(|_| {
            File::open(&tmp)
                .and_then(|f| f.sync_all())
                .and_then(|_| readable_by_all(&tmp))
                .map_err(|e| HookError::io(&tmp, e))
        })
        .and_then(|_| std::fs::rename(&tmp, path).map_err(|e| HookError::io(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `rw-r--r--`: the safetensors writer creates owner-only files, but stores and maps are shared (workers of
/// a cluster job write, another user merges and trains).
fn readable_by_all(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

/// A contiguous CPU copy of a tensor's bytes for serialisation.
struct TensorBytes {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl TensorBytes {
    fn new(t: &Tensor) -> Result<Self> {
        let t = t.f_to_device(Device::Cpu)?.f_contiguous()?;
        let dtype = match t.kind() {
            Kind::Float => Dtype::F32,
            Kind::Half => Dtype::F16,
            Kind::BFloat16 => Dtype::BF16,
            Kind::Double => Dtype::F64,
            Kind::Int64 => Dtype::I64,
            Kind::Int => Dtype::I32,
            Kind::Int16 => Dtype::I16,
            Kind::Int8 => Dtype::I8,
            Kind::Uint8 => Dtype::U8,
            Kind::Bool => Dtype::BOOL,
            k => {
                return Err(HookError::invalid(format!(
                    "cannot serialise tensor of kind {k:?}"
                )))
            }
        };
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let numel: usize = shape.iter().product();
        let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut data, numel)?;
        Ok(Self { dtype, shape, data })
    }
}

impl safetensors::View for TensorBytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Write a checkpoint directory `out` that any loader reads like the original `src`: every tensor of
/// `src`, those in `replaced` (by HF name) swapped for the given values cast to the stored dtype, as one
/// `model.safetensors` (atomic), and every other file of `src` (config, tokenizer, chat template, ...)
/// copied. Sharded indexes are not copied (the output is one file). A name in `replaced` that `src` does
/// not hold is an error.
pub fn save_checkpoint_with(
    src: &Path,
    out: &Path,
    replaced: &BTreeMap<String, Tensor>,
) -> Result<()> {
    let set = SafetensorsSet::open_checkpoint(src)?;
    if let Some(name) = replaced.keys().find(|n| !set.contains(n)) {
        return Err(HookError::invalid(format!(
            "{} has no tensor {name} to replace",
            src.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| HookError::io(out, e))?;
    let mut tensors = Vec::new();
    for name in set.names() {
        let original = set.load(name, None, Device::Cpu)?;
        let t = match replaced.get(name) {
            Some(r) => {
                if r.size() != original.size() {
                    return Err(HookError::invalid(format!(
                        "replacement for {name} has shape {:?}, {} stores {:?}",
                        r.size(),
                        src.display(),
                        original.size()
                    )));
                }
                r.f_to_device(Device::Cpu)?.f_to_kind(original.kind())?
            }
            None => original,
        };
        tensors.push((name.to_string(), t));
    }
    let entries = std::fs::read_dir(src).map_err(|e| HookError::io(src, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| HookError::io(src, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let skip = name.ends_with(".safetensors") || name == "model.safetensors.index.json";
        if skip || !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| HookError::io(&path, e))?;
        let dst = out.join(&name);
        write_file_atomic(&dst, &bytes).map_err(|e| HookError::io(&dst, e))?;
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    write_safetensors_atomic(&out.join("model.safetensors"), &tensors, Some(meta))
}
