//! Saving and loading maps: `map.safetensors` (the parameters, f32) and `map.json` ([`MapInfo`]: kind, dims,
//! the two models and hook points, training configuration, validation metrics, format version).
//!
//! Both files are written atomically (temporary file, then rename), the JSON last, so a directory with a
//! `map.json` always holds a complete map; the JSON records the SHA-256 of the tensors file and loading
//! checks it. [`SavedMap::expect_pair`] refuses a map trained for another model pair, hook point or width.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rosetta_activation_store::format::sha256_file;
use rosetta_activation_store::ModelEntry;
use rosetta_model_hooks::SafetensorsSet;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::error::{MappingError, Result};
use crate::map::{Affine, AnyMap, Autoencoder, MapKind, Mapping};
use crate::metrics::Metrics;

/// Version of the saved-map format this library writes and reads.
pub const MAP_FORMAT_VERSION: u32 = 1;
/// Tensors file inside a map directory.
pub const MAP_TENSORS_FILE: &str = "map.safetensors";
/// JSON sidecar inside a map directory.
pub const MAP_INFO_FILE: &str = "map.json";

/// One side of a map: which model, where in it, how wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Model id (zoo name or checkpoint id).
    pub id: String,
    /// Tokenizer hash (`rosetta_activation_store::tokenizer_hash`).
    pub tokenizer_hash: String,
    /// Hook point (e.g. `resid_post.13`).
    pub hook_point: String,
    /// Activation width.
    pub dim: i64,
}

impl From<&ModelEntry> for Endpoint {
    fn from(e: &ModelEntry) -> Self {
        Self {
            id: e.id.clone(),
            tokenizer_hash: e.tokenizer_hash.clone(),
            hook_point: e.hook_point.clone(),
            dim: e.dim,
        }
    }
}

/// `map.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapInfo {
    /// [`MAP_FORMAT_VERSION`].
    pub format_version: u32,
    /// Version of `rosetta-mapping` that wrote the map.
    pub library_version: String,
    /// The kind of map.
    pub kind: MapKind,
    /// Input width.
    pub d_src: i64,
    /// Output width.
    pub d_tgt: i64,
    /// Hidden width (autoencoders).
    pub hidden: Option<i64>,
    /// The model mapped from (`None` for maps fitted on anonymous data).
    pub source: Option<Endpoint>,
    /// The model mapped to.
    pub target: Option<Endpoint>,
    /// Whether the map was trained on standardised data (the standardisation is folded into the saved
    /// parameters either way: the map always takes raw activations).
    pub standardized: bool,
    /// The training or fit configuration, free-form.
    pub training: Option<serde_json::Value>,
    /// Validation metrics at save time.
    pub metrics: Option<Metrics>,
    /// SHA-256 of `map.safetensors` (hex).
    pub tensors_sha256: String,
}

/// A map with its description, as saved on disk.
#[derive(Debug)]
pub struct SavedMap {
    /// The sidecar.
    pub info: MapInfo,
    /// The map itself.
    pub map: AnyMap,
}

/// What describes a map beyond its parameters when saving.
#[derive(Debug, Clone, Default)]
pub struct MapDescription {
    /// Source model.
    pub source: Option<Endpoint>,
    /// Target model.
    pub target: Option<Endpoint>,
    /// Trained on standardised data.
    pub standardized: bool,
    /// Training/fit configuration.
    pub training: Option<serde_json::Value>,
    /// Validation metrics.
    pub metrics: Option<Metrics>,
}

/// Save `map` into directory `dir` (created if missing): `map.safetensors`, then `map.json`, each atomic.
/// Returns the written [`MapInfo`].
pub fn save_map(
    dir: impl AsRef<Path>,
    map: &dyn Mapping,
    desc: &MapDescription,
) -> Result<MapInfo> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| MappingError::io(dir, e))?;
    if let Some(s) = &desc.source {
        check_dim(dir, "source", s.dim, map.d_src())?;
    }
    if let Some(t) = &desc.target {
        check_dim(dir, "target", t.dim, map.d_tgt())?;
    }
    let tensors_path = dir.join(MAP_TENSORS_FILE);
    let tensors: Vec<(String, Tensor)> = map
        .named_tensors()
        .into_iter()
        .map(|(n, t)| Ok((n, t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?)))
        .collect::<Result<_>>()?;
    let mut meta = HashMap::new();
    meta.insert("kind".to_string(), map.kind().to_string());
    meta.insert("format".to_string(), "rosetta-map".to_string());
    rosetta_model_hooks::weights::write_safetensors_atomic(&tensors_path, &tensors, Some(meta))?;
    let info = MapInfo {
        format_version: MAP_FORMAT_VERSION,
        library_version: env!("CARGO_PKG_VERSION").to_string(),
        kind: map.kind(),
        d_src: map.d_src(),
        d_tgt: map.d_tgt(),
        hidden: map.hidden(),
        source: desc.source.clone(),
        target: desc.target.clone(),
        standardized: desc.standardized,
        training: desc.training.clone(),
        metrics: desc.metrics,
        tensors_sha256: sha256_file(&tensors_path)?,
    };
    write_json_atomic(&dir.join(MAP_INFO_FILE), &info)?;
    Ok(info)
}

fn check_dim(dir: &Path, which: &str, declared: i64, actual: i64) -> Result<()> {
    if declared != actual {
        return Err(MappingError::WrongPair {
            path: dir.to_path_buf(),
            message: format!("{which} model has width {declared} but the map's is {actual}"),
        });
    }
    Ok(())
}

/// Write JSON atomically ([`rosetta_model_hooks::weights::write_file_atomic`]).
pub(crate) fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|source| MappingError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    bytes.push(b'\n');
    rosetta_model_hooks::weights::write_file_atomic(path, &bytes)
        .map_err(|e| MappingError::io(path, e))
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| MappingError::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| MappingError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Read named f32 tensors from a safetensors file onto `device`.
pub(crate) fn read_tensors(path: &Path, names: &[&str], device: Device) -> Result<Vec<Tensor>> {
    let set = SafetensorsSet::open_file(path).map_err(|e| MappingError::Format {
        path: path.to_path_buf(),
        message: format!("unreadable: {e}"),
    })?;
    names
        .iter()
        .map(|n| {
            set.load(n, None, device).map_err(|e| MappingError::Format {
                path: path.to_path_buf(),
                message: format!("tensor {n:?}: {e}"),
            })
        })
        .collect()
}

impl SavedMap {
    /// Load a map directory onto `device`, checking the format version, the tensors' checksum, names and
    /// shapes against `map.json`.
    pub fn load(dir: impl AsRef<Path>, device: Device) -> Result<Self> {
        let dir = dir.as_ref();
        let info_path = dir.join(MAP_INFO_FILE);
        if !info_path.exists() {
            return Err(MappingError::Format {
                path: dir.to_path_buf(),
                message: format!("not a map directory (no {MAP_INFO_FILE})"),
            });
        }
        let info: MapInfo = read_json(&info_path)?;
        if info.format_version != MAP_FORMAT_VERSION {
            return Err(MappingError::Format {
                path: info_path,
                message: format!(
                    "map format version {} (this library reads {MAP_FORMAT_VERSION})",
                    info.format_version
                ),
            });
        }
        let tensors_path = dir.join(MAP_TENSORS_FILE);
        let sha = sha256_file(&tensors_path)?;
        if sha != info.tensors_sha256 {
            return Err(MappingError::Format {
                path: tensors_path,
                message: format!(
                    "checksum {sha} differs from {} recorded in {MAP_INFO_FILE} (corrupted or replaced)",
                    info.tensors_sha256
                ),
            });
        }
        let map: AnyMap = match info.kind {
            MapKind::Autoencoder => {
                let t = read_tensors(&tensors_path, &["w1", "b1", "w2", "b2"], device)?;
                let [w1, b1, w2, b2] =
                    <[Tensor; 4]>::try_from(t).map_err(|_| MappingError::Format {
                        path: tensors_path.clone(),
                        message: "expected 4 tensors".into(),
                    })?;
                Autoencoder::from_parts(w1, b1, w2, b2)
                    .map_err(|e| shape_error(&tensors_path, e))?
                    .into()
            }
            kind => {
                let t = read_tensors(&tensors_path, &["weight", "bias"], device)?;
                let [w, b] = <[Tensor; 2]>::try_from(t).map_err(|_| MappingError::Format {
                    path: tensors_path.clone(),
                    message: "expected 2 tensors".into(),
                })?;
                Affine::from_parts(kind, w, b)
                    .map_err(|e| shape_error(&tensors_path, e))?
                    .into()
            }
        };
        if map.d_src() != info.d_src || map.d_tgt() != info.d_tgt || map.hidden() != info.hidden {
            return Err(MappingError::Format {
                path: tensors_path,
                message: format!(
                    "tensors give {} -> {} (hidden {:?}) but {MAP_INFO_FILE} says {} -> {} (hidden {:?})",
                    map.d_src(),
                    map.d_tgt(),
                    map.hidden(),
                    info.d_src,
                    info.d_tgt,
                    info.hidden
                ),
            });
        }
        Ok(Self { info, map })
    }

    /// Load and check that the map was made for this model pair: same model ids, tokenizer hashes, hook
    /// points and widths. A side the map does not record is only checked for its width.
    pub fn load_for(
        dir: impl AsRef<Path>,
        source: &Endpoint,
        target: &Endpoint,
        device: Device,
    ) -> Result<Self> {
        let m = Self::load(dir.as_ref(), device)?;
        m.expect_pair(dir.as_ref(), source, target)?;
        Ok(m)
    }

    /// Refuse the map unless it maps `source` to `target`; the message names every field that differs.
    pub fn expect_pair(&self, dir: &Path, source: &Endpoint, target: &Endpoint) -> Result<()> {
        let mut problems = Vec::new();
        let mut side = |which: &str, saved: &Option<Endpoint>, want: &Endpoint, dim: i64| {
            if dim != want.dim {
                problems.push(format!(
                    "{which} width is {dim}, the {which} model's is {}",
                    want.dim
                ));
            }
            if let Some(s) = saved {
                if s.id != want.id {
                    problems.push(format!("{which} model is {:?}, not {:?}", s.id, want.id));
                }
                if s.tokenizer_hash != want.tokenizer_hash {
                    problems.push(format!(
                        "{which} tokenizer hash is {}, not {}",
                        s.tokenizer_hash, want.tokenizer_hash
                    ));
                }
                if s.hook_point != want.hook_point {
                    problems.push(format!(
                        "{which} hook point is {}, not {}",
                        s.hook_point, want.hook_point
                    ));
                }
            }
        };
        side("source", &self.info.source, source, self.info.d_src);
        side("target", &self.info.target, target, self.info.d_tgt);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(MappingError::WrongPair {
                path: dir.to_path_buf(),
                message: format!(
                    "this {} map was not made for {} ({}) -> {} ({}): {}",
                    self.info.kind,
                    source.id,
                    source.hook_point,
                    target.id,
                    target.hook_point,
                    problems.join("; ")
                ),
            })
        }
    }
}

fn shape_error(path: &Path, e: MappingError) -> MappingError {
    MappingError::Format {
        path: PathBuf::from(path),
        message: e.to_string(),
    }
}
