//! llama.cpp / repeng GGUF control vectors: read and write.
//!
//! A control vector is a set of per-layer directions added to the residual stream. In this format
//! the direction named `direction.N` is added to the **output of transformer block `N`** (0-based),
//! i.e. to `resid_post(N)`. [`ControlVector::directions`] is keyed by that same block index, so the
//! map key and the tensor name agree and no off-by-one is applied anywhere in this module.
//!
//! # The file format (GGUF v3, little-endian)
//!
//! - header: magic `GGUF`, version `u32` (3 written; 2 and 3 read — v2 and v3 have the same
//!   little-endian layout, v3 only added big-endian files), `tensor_count: u64`, `kv_count: u64`;
//! - `kv_count` metadata pairs: key (gguf string: `u64` length + UTF-8 bytes), value type `u32`,
//!   value. Rosetta writes exactly three keys, in this order, which is also the order and the types
//!   that the `gguf` Python package produces for repeng's exporter:
//!   - `general.architecture` = `"controlvector"` (STRING),
//!   - `controlvector.model_hint` (STRING, the source model's architecture, e.g. `"qwen2"`),
//!   - `controlvector.layer_count` (UINT32, see below);
//! - `tensor_count` tensor infos: name (gguf string), `n_dims: u32`, `n_dims` × `u64` dimensions
//!   (ggml order, innermost first), ggml type `u32` (F32 = 0), data offset `u64` relative to the
//!   start of the data section;
//! - zero padding to the alignment (`general.alignment`, 32 when absent), then the data section:
//!   each tensor's bytes, each padded with zeros to the alignment (the last one too: ggml's reader
//!   reads the whole padded data section, so an unpadded last tensor makes llama.cpp refuse the file).
//!
//! Every tensor is F32, 1-D, of the model's residual width, named `direction.N`.
//!
//! # What llama.cpp and repeng do (checked against their sources)
//!
//! - **llama.cpp loader**, `common/common.cpp`, `common_control_vector_load_one` (formerly
//!   `llama_control_vector_load_one`): for every tensor it splits the name at the first `.`, requires
//!   the prefix `direction`, parses the rest with `std::stoi`; a negative or unparsable index is an
//!   error ("invalid/unparsable direction tensor layer index"), and **index 0 is an error**
//!   ("invalid (zero) direction tensor layer index"). The tensor must be F32 ("invalid (non-F32)
//!   direction tensor type") and `ggml_n_dims(tensor) == 1` ("invalid (non-1D) direction tensor
//!   shape"); all tensors must have the same number of elements ("does not match previous
//!   dimensions"). Data for layer `N` is stored at row `N - 1` (`// layer 1 at [0]`), and a repeated
//!   layer is **summed** into that row (`dst[j] += src[j] * strength`, commented "allows multiple
//!   directions for same layer in same file"). It never reads `controlvector.layer_count` or
//!   `controlvector.model_hint`.
//! - **llama.cpp application**, `src/llama-adapter.cpp` (`llama_adapter_cvec::init` / `apply` /
//!   `apply_to`): the adapter holds one tensor per layer `1..n_layer` ("there's never a tensor for
//!   layer 0"), and row `il - 1` of the loaded data goes to layer `il`. Each architecture's graph
//!   (`src/models/*.cpp`) calls `cur = build_cvec(cur, il); cb(cur, "l_out", il);` at the end of
//!   block `il` (0-based), i.e. the direction is added to block `il`'s output. Hence `direction.N`
//!   ↔ `resid_post(N)`, and block 0's output (and the embeddings) cannot be steered at all.
//! - **repeng**, `repeng/extract.py`: `ControlVector.export_gguf` writes `general.architecture =
//!   "controlvector"` (through `gguf.GGUFWriter(path, "controlvector")`), `controlvector.model_hint`
//!   (string) and `controlvector.layer_count` as **UINT32 equal to `len(self.directions)`**, then
//!   one tensor `direction.{layer}` per key of `directions`. Its keys are block indices:
//!   `read_representations` defaults to `range(-1, -num_hidden_layers, -1)` (blocks `n-1` down to
//!   `1`, never 0) and `batched_get_hiddens` takes layer `l` from `hidden_states[l + 1]`, the
//!   output of block `l`; `repeng/control.py` (`ControlModel`) wraps `model_layer_list(model)[l]`
//!   and adds `directions[l]` to that block's output. `import_gguf` ignores `layer_count`, warns on
//!   a wrong architecture and requires `controlvector.model_hint`.
//! - **llama.cpp generator**, `tools/cvector-generator/cvector-generator.cpp` (`export_gguf`)
//!   writes the same three keys but `controlvector.layer_count` as **INT32** (`gguf_set_val_i32`,
//!   value `v_ctrl.size()` = `n_layer - 1`, the number of tensors), and names its tensors
//!   `direction.{il + 1}` for `il = 0..n_layer - 1` (`tools/cvector-generator/mean.hpp`, `pca.hpp`).
//!   Note that the generator captures each block's `l_out` in graph order, so the difference
//!   measured at block `il`'s output is *saved* as `direction.{il + 1}` and therefore applied one
//!   block later by the loader; that is a property of that generator's measurement, not of the
//!   format. Rosetta follows the loader: `direction.N` is applied to block `N`'s output.
//! - **ggml's reader**, `ggml/src/gguf.cpp` (`gguf_init_from_reader`): rejects duplicate keys,
//!   empty keys, duplicate tensor names, names of 64 bytes or more, more than 4 dimensions,
//!   a `general.alignment` that is not UINT32 or not a power of two, and tensor offsets that are not
//!   exactly the running sum of the padded tensor sizes.
//!
//! # Rosetta's rules
//!
//! Writing ([`ControlVector::to_bytes`], [`ControlVector::write`]) refuses: an empty vector, a
//! direction at block 0 (llama.cpp rejects `direction.0`, and no tensor exists for layer 0 there: a
//! vector at the embeddings or at block 0's output cannot be expressed in this format), a block
//! index above `i32::MAX` (llama.cpp parses it with `std::stoi`), empty or unequal widths, and
//! non-finite values. `controlvector.layer_count` is written as UINT32 (like repeng) with the
//! **number of directions**: that is what both repeng (`len(self.directions)`) and llama.cpp's
//! generator (`v_ctrl.size()`) write, and neither llama.cpp's loader nor repeng's importer reads it,
//! so `max index + 1` would match neither writer while buying nothing. With the same content, a
//! Rosetta file is byte-identical to the one repeng's exporter writes through the `gguf` package
//! (the tests check this). Tensors are written in ascending block order.
//!
//! Reading ([`ControlVector::from_bytes`], [`ControlVector::read`]) accepts GGUF v2 and v3,
//! `general.alignment` when present, and skips every other metadata key of any type (arrays, nested
//! arrays included). It refuses, with a [`GgufError`] naming the file and the problem and without
//! panicking or allocating more than the input's size: truncated input, a wrong magic, another
//! version, counts or lengths that cannot fit in the remaining bytes, unknown value types,
//! duplicate or empty keys, `general.architecture` missing or not `"controlvector"`,
//! `controlvector.model_hint` missing or not a string (repeng's importer requires it too),
//! `controlvector.layer_count` that is neither UINT32 nor INT32 or is negative (its value is not
//! otherwise checked: writers disagree on it and no loader uses it), no tensors, tensor names that
//! are not `direction.N` with `N` plain ASCII digits (llama.cpp's `std::stoi` also accepts
//! `direction.+1` or `direction.1abc`; Rosetta does not), `direction.0`, block indices above
//! `i32::MAX`, duplicate tensor names,
//! non-F32 tensors, tensors that are not 1-D (in ggml's sense, `ggml_n_dims == 1`: trailing
//! dimensions of size 1 do not count, so a `[d, 1]` tensor is accepted like llama.cpp does),
//! zero-width tensors, misaligned or out-of-bounds data offsets, non-finite values and unequal
//! widths. Two tensors naming the same block (`direction.1` and `direction.01`, which llama.cpp's
//! `std::stoi` maps to the same layer) are **summed**, as llama.cpp's loader does.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

const MAGIC: [u8; 4] = *b"GGUF";
const WRITE_VERSION: u32 = 3;
const DEFAULT_ALIGNMENT: u64 = 32;
const ARCH: &str = "controlvector";
const KEY_ARCH: &str = "general.architecture";
const KEY_ALIGNMENT: &str = "general.alignment";
const KEY_HINT: &str = "controlvector.model_hint";
const KEY_LAYER_COUNT: &str = "controlvector.layer_count";
const GGML_TYPE_F32: u32 = 0;
/// ggml's `GGML_MAX_DIMS`.
const GGML_MAX_DIMS: u32 = 4;
/// ggml's `GGML_MAX_NAME`: names must be shorter than this.
const GGML_MAX_NAME: usize = 64;
/// Nested arrays deeper than this are refused rather than recursed into.
const MAX_ARRAY_DEPTH: u32 = 8;
/// Smallest possible encoded KV pair: key length, a 1-byte key, value type, a 1-byte value.
const MIN_KV_BYTES: usize = 8 + 1 + 4 + 1;
/// Smallest possible encoded tensor info: name length, a 1-byte name, `n_dims` = 0, type, offset.
const MIN_TENSOR_INFO_BYTES: usize = 8 + 1 + 4 + 4 + 8;

/// What went wrong reading or writing a GGUF control vector. Every variant names the file (or
/// `what` the caller passed to [`ControlVector::from_bytes`]) and the problem.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be read, written, synced or renamed.
    #[error("{what}: cannot {action}: {source}")]
    Io {
        /// The file.
        what: String,
        /// What was being done ("read", "write (temporary file ..., then rename)", ...).
        action: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The input ended before a field was complete.
    #[error("{what}: truncated GGUF: {field} at byte {offset} needs {needed} bytes, only {available} left")]
    Truncated {
        /// The file.
        what: String,
        /// The field being read.
        field: String,
        /// Byte offset of the field.
        offset: usize,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left in the input.
        available: usize,
    },
    /// The input does not start with `GGUF`.
    #[error("{what}: not a GGUF file: it starts with \"{}\", expected \"GGUF\"", found.as_slice().escape_ascii())]
    BadMagic {
        /// The file.
        what: String,
        /// The first bytes found (fewer than 4 when the input is shorter).
        found: Vec<u8>,
    },
    /// A GGUF version other than 2 or 3.
    #[error("{what}: unsupported GGUF version {version} (Rosetta reads versions 2 and 3{hint})")]
    BadVersion {
        /// The file.
        what: String,
        /// The version found.
        version: u32,
        /// Extra explanation (e.g. a big-endian file), possibly empty.
        hint: String,
    },
    /// The GGUF structure is invalid: absurd counts or lengths, unknown value types, bad UTF-8,
    /// duplicate keys, a bad alignment, out-of-bounds offsets.
    #[error("{what}: malformed GGUF at byte {offset}: {reason}")]
    Malformed {
        /// The file.
        what: String,
        /// Byte offset where the problem was found.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// A valid GGUF file that is not a control vector, or whose control-vector metadata is wrong.
    #[error("{what}: not a usable control vector: {reason}")]
    NotControlVector {
        /// The file.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor that is not a valid direction (bad name, `direction.0`, non-F32, not 1-D, empty,
    /// non-finite values).
    #[error("{what}: tensor `{tensor}`: {reason}")]
    BadTensor {
        /// The file.
        what: String,
        /// The tensor's name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// A direction whose width differs from the others (or from the width asked for).
    #[error("{what}: direction for block {layer} has {found} values, expected {expected}")]
    WidthMismatch {
        /// The file or vector.
        what: String,
        /// The block index whose direction has the wrong width.
        layer: usize,
        /// The width expected.
        expected: usize,
        /// The width found.
        found: usize,
    },
    /// The vector cannot be written in this format.
    #[error("{what}: cannot export as a GGUF control vector: {reason}")]
    Export {
        /// The destination file (for [`ControlVector::to_bytes`], the vector and its model hint).
        what: String,
        /// Why not.
        reason: String,
    },
}

/// A llama.cpp / repeng control vector: one direction per transformer block, added to that
/// block's output (`resid_post(N)` for `direction.N`). See the [module docs](self) for the format.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlVector {
    /// The source model's architecture as GGUF names it (`controlvector.model_hint`, e.g.
    /// `"qwen2"`). llama.cpp does not check it; repeng records its `model_type` here.
    pub model_hint: String,
    /// Block index (0-based; the direction is added to that block's output) → direction. Block 0
    /// cannot be written (llama.cpp refuses `direction.0`).
    pub directions: BTreeMap<usize, Vec<f32>>,
}

impl ControlVector {
    /// The residual width: the length of the first direction, `None` when there is none. Use
    /// [`check_width`](Self::check_width) to check that every direction has it.
    pub fn width(&self) -> Option<usize> {
        self.directions.values().next().map(Vec::len)
    }

    /// Checks that every direction has length `d` (the target model's residual width); the error
    /// names the first block that does not.
    pub fn check_width(&self, d: usize) -> Result<(), GgufError> {
        for (&layer, dir) in &self.directions {
            if dir.len() != d {
                return Err(GgufError::WidthMismatch {
                    what: format!("control vector (model_hint {:?})", self.model_hint),
                    layer,
                    expected: d,
                    found: dir.len(),
                });
            }
        }
        Ok(())
    }

    /// Encodes the vector as a GGUF v3 file (see the [module docs](self) for what is refused).
    pub fn to_bytes(&self) -> Result<Vec<u8>, GgufError> {
        self.encode(&format!(
            "control vector (model_hint {:?})",
            self.model_hint
        ))
    }

    /// Writes the vector to `path` atomically: the bytes go to a temporary file in the same
    /// directory, which is fsynced and then renamed over `path` (the directory is then fsynced,
    /// best effort). Nothing is written when the vector is refused.
    pub fn write(&self, path: &Path) -> Result<(), GgufError> {
        let what = path.display().to_string();
        let bytes = self.encode(&what)?;
        if path.file_name().is_none() {
            return Err(GgufError::Export {
                what,
                reason: "the path has no file name".into(),
            });
        }
        rosetta_model_hooks::weights::write_file_atomic(path, &bytes).map_err(|source| {
            GgufError::Io {
                what,
                action: "write (temporary file in the same directory, then rename)".into(),
                source,
            }
        })?;
        Ok(())
    }

    /// Reads a control vector from a GGUF file (see the [module docs](self) for what is refused).
    pub fn read(path: &Path) -> Result<Self, GgufError> {
        let what = path.display().to_string();
        let bytes = fs::read(path).map_err(|source| GgufError::Io {
            what: what.clone(),
            action: "read".into(),
            source,
        })?;
        Self::from_bytes(&bytes, &what)
    }

    /// Decodes a control vector from GGUF bytes; `what` names the input in errors (usually the
    /// file's path).
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<Self, GgufError> {
        decode(bytes, what)
    }

    fn encode(&self, what: &str) -> Result<Vec<u8>, GgufError> {
        let export = |reason: String| GgufError::Export {
            what: what.to_string(),
            reason,
        };
        let width = match self.directions.values().next() {
            None => return Err(export("the vector has no directions".into())),
            Some(d) => d.len(),
        };
        if width == 0 {
            return Err(export("directions are empty (width 0)".into()));
        }
        for (&layer, dir) in &self.directions {
            if layer == 0 {
                return Err(export(
                    "it has a direction at block 0, which llama.cpp cannot apply: its loader \
                     (common/common.cpp) rejects `direction.0` as an invalid (zero) layer index and \
                     keeps no control tensor for layer 0, so a vector at the embeddings or at block \
                     0's output cannot be expressed in a GGUF control vector; steer block 1 or later"
                        .into(),
                ));
            }
            if i32::try_from(layer).is_err() {
                return Err(export(format!(
                    "block index {layer} does not fit in the 32-bit int llama.cpp parses it into"
                )));
            }
            if dir.len() != width {
                return Err(GgufError::WidthMismatch {
                    what: what.to_string(),
                    layer,
                    expected: width,
                    found: dir.len(),
                });
            }
            if let Some((i, v)) = dir.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(export(format!(
                    "the direction for block {layer} has a non-finite value {v} at index {i}"
                )));
            }
        }
        let n = self.directions.len();
        let layer_count = u32::try_from(n)
            .map_err(|_| export(format!("{n} directions do not fit in a u32 layer_count")))?;
        let tensor_bytes = width
            .checked_mul(4)
            .ok_or_else(|| export(format!("width {width} is too large")))?;
        let padded = align_up(tensor_bytes as u64, DEFAULT_ALIGNMENT)
            .ok_or_else(|| export(format!("width {width} is too large")))?;
        let capacity = (padded as usize)
            .checked_mul(n)
            .and_then(|d| d.checked_add(512 + 64 * n + self.model_hint.len()))
            .ok_or_else(|| export("the vector is too large".into()))?;

        let mut out = Vec::with_capacity(capacity);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&WRITE_VERSION.to_le_bytes());
        out.extend_from_slice(&(n as u64).to_le_bytes());
        out.extend_from_slice(&3u64.to_le_bytes());

        put_str(&mut out, KEY_ARCH);
        out.extend_from_slice(&(ValueType::String as u32).to_le_bytes());
        put_str(&mut out, ARCH);
        put_str(&mut out, KEY_HINT);
        out.extend_from_slice(&(ValueType::String as u32).to_le_bytes());
        put_str(&mut out, &self.model_hint);
        put_str(&mut out, KEY_LAYER_COUNT);
        out.extend_from_slice(&(ValueType::U32 as u32).to_le_bytes());
        out.extend_from_slice(&layer_count.to_le_bytes());

        for (i, &layer) in self.directions.keys().enumerate() {
            put_str(&mut out, &format!("direction.{layer}"));
            out.extend_from_slice(&1u32.to_le_bytes());
            out.extend_from_slice(&(width as u64).to_le_bytes());
            out.extend_from_slice(&GGML_TYPE_F32.to_le_bytes());
            out.extend_from_slice(&(padded * i as u64).to_le_bytes());
        }
        pad_to(&mut out, DEFAULT_ALIGNMENT as usize);
        for dir in self.directions.values() {
            for v in dir {
                out.extend_from_slice(&v.to_le_bytes());
            }
            pad_to(&mut out, DEFAULT_ALIGNMENT as usize);
        }
        Ok(out)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn pad_to(out: &mut Vec<u8>, align: usize) {
    let rem = out.len() % align;
    if rem != 0 {
        out.resize(out.len() + (align - rem), 0);
    }
}

fn align_up(x: u64, align: u64) -> Option<u64> {
    Some(x.checked_add(align - 1)? / align * align)
}

/// GGUF metadata value types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::U8,
            1 => Self::I8,
            2 => Self::U16,
            3 => Self::I16,
            4 => Self::U32,
            5 => Self::I32,
            6 => Self::F32,
            7 => Self::Bool,
            8 => Self::String,
            9 => Self::Array,
            10 => Self::U64,
            11 => Self::I64,
            12 => Self::F64,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::U8 => "UINT8",
            Self::I8 => "INT8",
            Self::U16 => "UINT16",
            Self::I16 => "INT16",
            Self::U32 => "UINT32",
            Self::I32 => "INT32",
            Self::F32 => "FLOAT32",
            Self::Bool => "BOOL",
            Self::String => "STRING",
            Self::Array => "ARRAY",
            Self::U64 => "UINT64",
            Self::I64 => "INT64",
            Self::F64 => "FLOAT64",
        }
    }

    /// Encoded size of a scalar of this type; `None` for strings and arrays.
    fn fixed_size(self) -> Option<u64> {
        match self {
            Self::U8 | Self::I8 | Self::Bool => Some(1),
            Self::U16 | Self::I16 => Some(2),
            Self::U32 | Self::I32 | Self::F32 => Some(4),
            Self::U64 | Self::I64 | Self::F64 => Some(8),
            Self::String | Self::Array => None,
        }
    }
}

/// ggml type names for error messages (the common ones).
fn ggml_type_name(t: u32) -> String {
    let name = match t {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        30 => "BF16",
        _ => return format!("ggml type {t}"),
    };
    format!("{name} (ggml type {t})")
}

/// A bounds-checked little-endian reader over the input.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    what: &'a str,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    fn malformed(&self, offset: usize, reason: String) -> GgufError {
        GgufError::Malformed {
            what: self.what.to_string(),
            offset,
            reason,
        }
    }

    fn take(&mut self, n: u64, field: &str) -> Result<&'a [u8], GgufError> {
        let available = self.remaining();
        let truncated = || GgufError::Truncated {
            what: self.what.to_string(),
            field: field.to_string(),
            offset: self.pos,
            needed: n,
            available,
        };
        let n = usize::try_from(n).map_err(|_| truncated())?;
        if n > available {
            return Err(truncated());
        }
        let end = self.pos + n;
        let slice = self.bytes.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, field: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn i32(&mut self, field: &str) -> Result<i32, GgufError> {
        Ok(i32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// A gguf string's raw bytes (`u64` length, then the bytes), bounded by the remaining input.
    fn raw_str(&mut self, field: &str) -> Result<&'a [u8], GgufError> {
        let at = self.pos;
        let len = self.u64(&format!("length of {field}"))?;
        if len > self.remaining() as u64 {
            return Err(self.malformed(
                at,
                format!(
                    "{field} claims {len} bytes but only {} remain (truncated or corrupt file)",
                    self.remaining()
                ),
            ));
        }
        self.take(len, field)
    }

    fn string(&mut self, field: &str) -> Result<String, GgufError> {
        let at = self.pos;
        let raw = self.raw_str(field)?;
        std::str::from_utf8(raw)
            .map(str::to_string)
            .map_err(|e| self.malformed(at, format!("{field} is not UTF-8: {e}")))
    }

    fn value_type(&mut self, field: &str) -> Result<ValueType, GgufError> {
        let at = self.pos;
        let t = self.u32(field)?;
        ValueType::from_u32(t).ok_or_else(|| {
            self.malformed(
                at,
                format!("{field} is {t}, not a GGUF value type (0..=12)"),
            )
        })
    }

    /// Skips one value of type `ty` (arrays included, nested ones up to [`MAX_ARRAY_DEPTH`]).
    fn skip_value(&mut self, ty: ValueType, key: &str, depth: u32) -> Result<(), GgufError> {
        if let Some(size) = ty.fixed_size() {
            self.take(size, &format!("value of `{key}`"))?;
            return Ok(());
        }
        match ty {
            ValueType::String => {
                self.raw_str(&format!("string value of `{key}`"))?;
            }
            _ => {
                let at = self.pos;
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.malformed(
                        at,
                        format!("`{key}` nests arrays deeper than {MAX_ARRAY_DEPTH} levels"),
                    ));
                }
                let elem = self.value_type(&format!("element type of array `{key}`"))?;
                let n = self.u64(&format!("length of array `{key}`"))?;
                // Every element takes at least one byte, so this bounds the loop and allocation.
                if n > self.remaining() as u64 {
                    return Err(self.malformed(
                        at,
                        format!(
                            "array `{key}` claims {n} elements but only {} bytes remain (truncated or corrupt file)",
                            self.remaining()
                        ),
                    ));
                }
                match elem.fixed_size() {
                    Some(size) => {
                        let total = n.checked_mul(size).ok_or_else(|| {
                            self.malformed(at, format!("array `{key}` is too large"))
                        })?;
                        self.take(total, &format!("elements of array `{key}`"))?;
                    }
                    None => {
                        for _ in 0..n {
                            self.skip_value(elem, key, depth + 1)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A parsed tensor info.
struct TensorInfo<'a> {
    name: &'a [u8],
    dims: Vec<u64>,
    ggml_type: u32,
    offset: u64,
    /// Where the tensor info starts, for errors.
    at: usize,
}

/// The metadata values Rosetta looks at.
enum Meta {
    Str(String),
    U32(u32),
    I32(i32),
    Other(ValueType),
}

impl Meta {
    fn type_name(&self) -> &'static str {
        match self {
            Meta::Str(_) => ValueType::String.name(),
            Meta::U32(_) => ValueType::U32.name(),
            Meta::I32(_) => ValueType::I32.name(),
            Meta::Other(t) => t.name(),
        }
    }
}

fn decode(bytes: &[u8], what: &str) -> Result<ControlVector, GgufError> {
    let mut c = Cursor {
        bytes,
        pos: 0,
        what,
    };
    let not_cv = |reason: String| GgufError::NotControlVector {
        what: what.to_string(),
        reason,
    };

    // Header.
    let magic = bytes.get(..4).unwrap_or(bytes);
    if magic != MAGIC {
        return Err(GgufError::BadMagic {
            what: what.to_string(),
            found: magic.to_vec(),
        });
    }
    c.pos = 4;
    let version = c.u32("GGUF version")?;
    if version != 2 && version != 3 {
        let hint = if version & 0xFFFF == 0 {
            "; the byte order suggests a big-endian file, which Rosetta does not read".to_string()
        } else if version == 1 {
            "; GGUF v1 is obsolete and llama.cpp no longer reads it either".to_string()
        } else {
            String::new()
        };
        return Err(GgufError::BadVersion {
            what: what.to_string(),
            version,
            hint,
        });
    }
    let at = c.pos;
    let tensor_count = c.u64("tensor count")?;
    let kv_count = c.u64("metadata key count")?;
    let rest = c.remaining() as u64;
    if kv_count > rest / MIN_KV_BYTES as u64 {
        return Err(c.malformed(
            at + 8,
            format!(
                "{kv_count} metadata pairs cannot fit in the {rest} remaining bytes \
                 (truncated or corrupt file)"
            ),
        ));
    }
    if tensor_count > rest / MIN_TENSOR_INFO_BYTES as u64 {
        return Err(c.malformed(
            at,
            format!(
                "{tensor_count} tensor infos cannot fit in the {rest} remaining bytes \
                 (truncated or corrupt file)"
            ),
        ));
    }

    // Metadata.
    let mut seen_keys: BTreeSet<&[u8]> = BTreeSet::new();
    let mut arch: Option<Meta> = None;
    let mut hint: Option<Meta> = None;
    let mut layer_count: Option<Meta> = None;
    let mut alignment: Option<(Meta, usize)> = None;
    for i in 0..kv_count {
        let key_at = c.pos;
        let key_raw = c.raw_str(&format!("key of metadata pair {i}"))?;
        let key = String::from_utf8_lossy(key_raw).into_owned();
        if key_raw.is_empty() {
            return Err(c.malformed(key_at, format!("metadata key {i} is empty")));
        }
        if !seen_keys.insert(key_raw) {
            return Err(c.malformed(key_at, format!("duplicate metadata key `{key}`")));
        }
        let ty = c.value_type(&format!("value type of `{key}`"))?;
        let value_at = c.pos;
        let slot = match key_raw {
            k if k == KEY_ARCH.as_bytes() => Some(&mut arch),
            k if k == KEY_HINT.as_bytes() => Some(&mut hint),
            k if k == KEY_LAYER_COUNT.as_bytes() => Some(&mut layer_count),
            _ => None,
        };
        let is_alignment = key_raw == KEY_ALIGNMENT.as_bytes();
        if slot.is_none() && !is_alignment {
            c.skip_value(ty, &key, 0)?;
            continue;
        }
        let value = match ty {
            ValueType::String => Meta::Str(c.string(&format!("value of `{key}`"))?),
            ValueType::U32 => Meta::U32(c.u32(&format!("value of `{key}`"))?),
            ValueType::I32 => Meta::I32(c.i32(&format!("value of `{key}`"))?),
            other => {
                c.skip_value(other, &key, 0)?;
                Meta::Other(other)
            }
        };
        match slot {
            Some(slot) => *slot = Some(value),
            None => alignment = Some((value, value_at)),
        }
    }
    let alignment = match alignment {
        None => DEFAULT_ALIGNMENT,
        Some((Meta::U32(a), at)) => {
            if a == 0 || !a.is_power_of_two() {
                return Err(
                    c.malformed(at, format!("`{KEY_ALIGNMENT}` is {a}, not a power of two"))
                );
            }
            u64::from(a)
        }
        Some((other, at)) => {
            return Err(c.malformed(
                at,
                format!(
                    "`{KEY_ALIGNMENT}` must be UINT32 (as ggml requires), not {}",
                    other.type_name()
                ),
            ))
        }
    };
    match arch {
        Some(Meta::Str(a)) if a == ARCH => {}
        Some(Meta::Str(a)) => {
            return Err(not_cv(format!("`{KEY_ARCH}` is {a:?}, expected {ARCH:?}")))
        }
        Some(other) => {
            return Err(not_cv(format!(
                "`{KEY_ARCH}` is {}, expected the string {ARCH:?}",
                other.type_name()
            )))
        }
        None => return Err(not_cv(format!("no `{KEY_ARCH}` key"))),
    }
    let model_hint = match hint {
        Some(Meta::Str(h)) => h,
        Some(other) => {
            return Err(not_cv(format!(
                "`{KEY_HINT}` is {}, expected a string",
                other.type_name()
            )))
        }
        None => return Err(not_cv(format!("no `{KEY_HINT}` key"))),
    };
    match layer_count {
        None | Some(Meta::U32(_)) => {}
        Some(Meta::I32(n)) if n >= 0 => {}
        Some(Meta::I32(n)) => return Err(not_cv(format!("`{KEY_LAYER_COUNT}` is negative ({n})"))),
        Some(other) => {
            return Err(not_cv(format!(
                "`{KEY_LAYER_COUNT}` is {}, expected UINT32 (repeng) or INT32 (llama.cpp)",
                other.type_name()
            )))
        }
    }

    // Tensor infos.
    let mut infos: Vec<TensorInfo> = Vec::new();
    for i in 0..tensor_count {
        let at = c.pos;
        let name = c.raw_str(&format!("name of tensor {i}"))?;
        let label = String::from_utf8_lossy(name).into_owned();
        let dims_at = c.pos;
        let n_dims = c.u32(&format!("dimension count of tensor `{label}`"))?;
        if n_dims > GGML_MAX_DIMS {
            return Err(c.malformed(
                dims_at,
                format!("tensor `{label}` has {n_dims} dimensions (ggml allows at most {GGML_MAX_DIMS})"),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for j in 0..n_dims {
            let d_at = c.pos;
            let d = c.u64(&format!("dimension {j} of tensor `{label}`"))?;
            if d > i64::MAX as u64 {
                return Err(c.malformed(
                    d_at,
                    format!("dimension {j} of tensor `{label}` is absurd ({d})"),
                ));
            }
            dims.push(d);
        }
        let ggml_type = c.u32(&format!("type of tensor `{label}`"))?;
        let offset = c.u64(&format!("data offset of tensor `{label}`"))?;
        infos.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            at,
        });
    }
    if infos.is_empty() {
        return Err(not_cv("the file has no direction tensors".into()));
    }

    // Data section.
    let data_start = align_up(c.pos as u64, alignment)
        .and_then(|s| usize::try_from(s).ok())
        .filter(|&s| s <= bytes.len())
        .ok_or_else(|| GgufError::Truncated {
            what: what.to_string(),
            field: format!("padding to the {alignment}-byte aligned data section"),
            offset: c.pos,
            needed: align_up(c.pos as u64, alignment).unwrap_or(u64::MAX) - c.pos as u64,
            available: c.remaining(),
        })?;
    let data = bytes.get(data_start..).unwrap_or(&[]);

    let mut seen_names: BTreeSet<&[u8]> = BTreeSet::new();
    let mut directions: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
    let mut width: Option<usize> = None;
    for info in &infos {
        let label = String::from_utf8_lossy(info.name).into_owned();
        let bad = |reason: String| GgufError::BadTensor {
            what: what.to_string(),
            tensor: label.clone(),
            reason,
        };
        if !seen_names.insert(info.name) {
            return Err(c.malformed(info.at, format!("duplicate tensor name `{label}`")));
        }
        let layer = parse_direction_name(info.name).map_err(bad)?;
        if info.ggml_type != GGML_TYPE_F32 {
            return Err(bad(format!(
                "is {}, but control vector directions must be F32 (llama.cpp refuses other types)",
                ggml_type_name(info.ggml_type)
            )));
        }
        // ggml_n_dims: trailing dimensions of size 1 do not count.
        let effective_dims = info.dims.iter().rposition(|&d| d != 1).map_or(1, |p| p + 1);
        if effective_dims != 1 {
            return Err(bad(format!(
                "has shape {:?}, but directions must be 1-D",
                info.dims
            )));
        }
        let n = info.dims.first().copied().unwrap_or(1);
        if n == 0 {
            return Err(bad("has no elements".into()));
        }
        let nbytes = n
            .checked_mul(4)
            .ok_or_else(|| bad(format!("{n} elements is absurd")))?;
        if info.offset % alignment != 0 {
            return Err(bad(format!(
                "data offset {} is not a multiple of the alignment {alignment}",
                info.offset
            )));
        }
        let end = info
            .offset
            .checked_add(nbytes)
            .filter(|&e| e <= data.len() as u64);
        let Some(end) = end else {
            return Err(GgufError::Truncated {
                what: what.to_string(),
                field: format!("data of tensor `{label}`"),
                offset: data_start
                    .saturating_add(usize::try_from(info.offset).unwrap_or(usize::MAX)),
                needed: nbytes,
                available: data
                    .len()
                    .saturating_sub(usize::try_from(info.offset).unwrap_or(usize::MAX)),
            });
        };
        // Both bounds were checked against `data.len()` above.
        let raw = data
            .get(info.offset as usize..end as usize)
            .ok_or_else(|| bad("data out of bounds".into()))?;
        let n = n as usize;
        match width {
            None => width = Some(n),
            Some(w) if w == n => {}
            Some(w) => {
                return Err(GgufError::WidthMismatch {
                    what: what.to_string(),
                    layer,
                    expected: w,
                    found: n,
                })
            }
        }
        let values: Vec<f32> = raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(bad(format!("has a non-finite value {v} at index {i}")));
        }
        match directions.get_mut(&layer) {
            None => {
                directions.insert(layer, values);
            }
            Some(sum) => {
                // Another spelling of the same block (e.g. `direction.01`): llama.cpp sums them.
                for (s, v) in sum.iter_mut().zip(&values) {
                    *s += v;
                }
                if let Some((i, v)) = sum.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                    return Err(bad(format!(
                        "summed with another direction for block {layer} gives a non-finite value {v} at index {i}"
                    )));
                }
            }
        }
    }
    Ok(ControlVector {
        model_hint,
        directions,
    })
}

/// Parses `direction.N` (N plain ASCII digits, not 0) into N.
fn parse_direction_name(name: &[u8]) -> Result<usize, String> {
    if name.len() >= GGML_MAX_NAME {
        return Err(format!(
            "name is {} bytes long; ggml allows at most {}",
            name.len(),
            GGML_MAX_NAME - 1
        ));
    }
    let digits = name
        .strip_prefix(b"direction.")
        .filter(|d| !d.is_empty() && d.iter().all(u8::is_ascii_digit))
        .ok_or_else(|| "name is not `direction.N` with N a block index".to_string())?;
    let mut n: usize = 0;
    for &d in digits {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(usize::from(d - b'0')))
            .ok_or_else(|| "block index is too large".to_string())?;
    }
    if i32::try_from(n).is_err() {
        return Err(format!(
            "block index {n} does not fit in the 32-bit int llama.cpp parses it into"
        ));
    }
    if n == 0 {
        return Err(
            "`direction.0` is not allowed: llama.cpp rejects layer index 0 (it cannot steer the \
             embeddings or block 0's output)"
                .into(),
        );
    }
    Ok(n)
}

/// The GGUF block index a steering entry at `point` maps to: `resid_post(N)` is block `N`'s output and
/// `resid_pre(N + 1)` the same tensor. Anything else — block 0's output, the embeddings, attention or MLP
/// outputs — has no control-vector form (the error says why).
pub fn gguf_block(point: rosetta_model_hooks::HookPoint) -> Result<usize, String> {
    use rosetta_model_hooks::HookPoint as P;
    let n = match point {
        P::ResidPost(n) => n,
        P::ResidPre(l) if l >= 1 => l - 1,
        P::ResidPre(_) | P::Embed => {
            return Err(format!(
                "{point} is the embedding output: llama.cpp cannot steer it (no direction.0)"
            ))
        }
        other => {
            return Err(format!(
                "{other} is not a block output; control vectors are added to resid_post(N) only"
            ))
        }
    };
    if n == 0 {
        return Err(format!(
            "{point} is block 0's output, which llama.cpp refuses (direction.0)"
        ));
    }
    Ok(n)
}

impl crate::SteeringVector {
    /// This vector as a control vector, every direction multiplied by `alpha` (llama.cpp's
    /// `--control-vector-scaled FILE S` multiplies again by `S`). Entries must be `[d]` directions at block
    /// outputs (`resid_post(N)`, N >= 1, or `resid_pre(N + 1)`); the model hint is `model_hint` (the
    /// architecture, e.g. `qwen2`).
    pub fn to_control_vector(&self, alpha: f64, model_hint: &str) -> crate::Result<ControlVector> {
        let mut directions = BTreeMap::new();
        for e in &self.entries {
            let what = || format!("steering vector for {}", self.model.id);
            if e.per_position() {
                return Err(GgufError::Export {
                    what: what(),
                    reason: format!(
                        "the entry at {} has one row per trigger token; control vectors hold one [d] \
                         direction per block",
                        e.point
                    ),
                }
                .into());
            }
            let block = gguf_block(e.point).map_err(|reason| GgufError::Export {
                what: what(),
                reason,
            })?;
            let v: Vec<f32> = Vec::<f32>::try_from(e.direction.f_mul_scalar(alpha)?)
                .map_err(|err| crate::SteeringError::invalid(err.to_string()))?;
            if directions.insert(block, v).is_some() {
                return Err(GgufError::Export {
                    what: what(),
                    reason: format!("two entries land on block {block}'s output"),
                }
                .into());
            }
        }
        Ok(ControlVector {
            model_hint: model_hint.to_string(),
            directions,
        })
    }

    /// A steering vector from a control vector, for `model`: `direction.N` becomes an entry at
    /// `resid_post(N)`. The file carries no activation scale, so each entry's scale is its direction's
    /// norm (`Strength::Relative(a)` then equals `Strength::Raw(a)`).
    pub fn from_control_vector(
        cv: &ControlVector,
        model: crate::ModelIdentity,
    ) -> crate::Result<Self> {
        cv.check_width(model.d_model as usize)?;
        let entries = cv
            .directions
            .iter()
            .map(|(&n, dir)| {
                let t = tch::Tensor::from_slice(dir);
                let norm = t.f_norm()?.double_value(&[]);
                crate::VectorEntry::new(rosetta_model_hooks::HookPoint::ResidPost(n), &t, norm)
            })
            .collect::<crate::Result<Vec<_>>>()?;
        crate::SteeringVector::new(
            model,
            crate::Method::Imported {
                model_hint: cv.model_hint.clone(),
            },
            crate::Provenance::default(),
            entries,
        )
    }
}
