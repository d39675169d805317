//! One shard file as the reader sees it: where each tensor's bytes lie (from the safetensors header,
//! checked against the manifest) and positioned reads of row ranges straight into tensor memory.
//!
//! The reader does not memory-map shards: pages of a mapping count towards the process's resident set
//! while it is mapped, so mapping 256 MB shards would put the page cache into the reader's RSS. A
//! positioned read (`pread`) copies from the page cache into the destination tensor once, and memory
//! stays what the reader allocated.

use crate::error::{Result, StoreError};
use crate::format::{ShardEntry, StoreSpec};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// Byte range of one row-major tensor `[rows, cols]` inside a shard file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TensorRange {
    /// Absolute file offset of row 0.
    pub offset: u64,
    /// Bytes per row.
    pub row_bytes: u64,
}

impl TensorRange {
    fn rows(&self, start: u64, n: u64) -> (u64, usize) {
        (
            self.offset + start * self.row_bytes,
            (n * self.row_bytes) as usize,
        )
    }
}

/// Where a shard's tensors lie.
#[derive(Debug, Clone)]
pub(crate) struct ShardLayout {
    pub path: PathBuf,
    pub rows: u64,
    pub x: TensorRange,
    pub x_token_ids: TensorRange,
    pub x_positions: TensorRange,
    pub doc_ids: TensorRange,
    pub y: Option<TensorRange>,
    pub y_token_ids: Option<TensorRange>,
    pub y_positions: Option<TensorRange>,
}

/// Header entries beyond this size are refused (a corrupted length would otherwise allocate gigabytes).
const MAX_HEADER: u64 = 100 << 20;

fn elt_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F32" | "I32" => 4,
        "F16" | "BF16" => 2,
        "I64" | "F64" => 8,
        _ => return None,
    })
}

impl ShardLayout {
    /// Check a shard file against its manifest entry and the store spec (size, header, tensor names,
    /// dtypes, shapes, data ranges) and record where each tensor lies. Errors name the shard.
    pub fn parse(path: &Path, entry: &ShardEntry, spec: &StoreSpec) -> Result<Self> {
        let bad = |m: String| StoreError::shard(path, m);
        let file = File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
        let size = file
            .metadata()
            .map_err(|e| bad(format!("cannot stat: {e}")))?
            .len();
        if size != entry.bytes {
            return Err(bad(format!(
                "{size} bytes on disk but the manifest lists {} (truncated or overwritten)",
                entry.bytes
            )));
        }
        let mut len = [0u8; 8];
        file.read_exact_at(&mut len, 0)
            .map_err(|e| bad(format!("unreadable header: {e}")))?;
        let header_len = u64::from_le_bytes(len);
        if header_len > MAX_HEADER || 8 + header_len > size {
            return Err(bad(format!(
                "unreadable header: length {header_len} does not fit a {size}-byte file"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact_at(&mut header, 8)
            .map_err(|e| bad(format!("unreadable header: {e}")))?;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| bad(format!("unreadable header: {e}")))?;
        let data_start = 8 + header_len;
        let data_len = size - data_start;
        let rows = entry.rows;
        let dt = spec.dtype.safetensors_name();
        let mut data_end = 0u64;
        let mut range = |name: &str, cols: Option<i64>, dtype: &str| -> Result<TensorRange> {
            let t = header
                .get(name)
                .ok_or_else(|| bad(format!("no tensor {name:?}")))?;
            let got_dtype = t.get("dtype").and_then(|v| v.as_str()).unwrap_or("?");
            let got_shape: Vec<i64> = t
                .get("shape")
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|d| d.as_i64()).collect())
                .unwrap_or_default();
            let shape: Vec<i64> = std::iter::once(rows as i64).chain(cols).collect();
            if got_shape != shape || got_dtype != dtype {
                return Err(bad(format!(
                    "tensor {name:?} is {got_dtype} {got_shape:?}, the manifest implies {dtype} {shape:?}"
                )));
            }
            let offsets: Vec<u64> = t
                .get("data_offsets")
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|d| d.as_u64()).collect())
                .unwrap_or_default();
            let row_bytes = cols.unwrap_or(1) as u64 * elt_size(dtype).unwrap_or(0);
            let (begin, end) = match offsets[..] {
                [b, e] if b <= e && e <= data_len && e - b == rows * row_bytes => (b, e),
                _ => {
                    return Err(bad(format!(
                        "tensor {name:?} has data offsets {offsets:?}, expected {} bytes within {data_len}",
                        rows * row_bytes
                    )))
                }
            };
            data_end = data_end.max(end);
            Ok(TensorRange {
                offset: data_start + begin,
                row_bytes,
            })
        };
        let x = range("x", Some(spec.source.dim), dt)?;
        let x_token_ids = range("x_token_ids", None, "I64")?;
        let x_positions = range("x_positions", None, "I64")?;
        let doc_ids = range("doc_ids", None, "I64")?;
        let (y, y_token_ids, y_positions) = match &spec.target {
            Some(t) => (
                Some(range("y", Some(t.dim), dt)?),
                Some(range("y_token_ids", None, "I64")?),
                Some(range("y_positions", None, "I64")?),
            ),
            None => (None, None, None),
        };
        if data_end != data_len {
            return Err(bad(format!(
                "the header's tensors end at byte {data_end} of {data_len} data bytes"
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            rows,
            x,
            x_token_ids,
            x_positions,
            doc_ids,
            y,
            y_token_ids,
            y_positions,
        })
    }

    /// Open the shard for reading.
    pub fn open(&self) -> Result<File> {
        File::open(&self.path)
            .map_err(|e| StoreError::shard(&self.path, format!("cannot open: {e}")))
    }

    fn check_rows(&self, start: u64, n: u64) -> Result<()> {
        if start + n > self.rows {
            return Err(StoreError::InvalidArgument(format!(
                "{}: rows {start}..{} out of range ({} rows)",
                self.path.display(),
                start + n,
                self.rows
            )));
        }
        Ok(())
    }

    /// Rows `start..start + n` of an i64 column (`doc_ids`, token ids, positions).
    pub fn read_i64(&self, file: &File, t: TensorRange, start: u64, n: u64) -> Result<Vec<i64>> {
        self.check_rows(start, n)?;
        let (offset, len) = t.rows(start, n);
        let mut bytes = vec![0u8; len];
        file.read_exact_at(&mut bytes, offset)
            .map_err(|e| StoreError::shard(&self.path, format!("read failed: {e}")))?;
        Ok(bytes
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                i64::from_le_bytes(b)
            })
            .collect())
    }

    /// Read rows `start..start + n` of a `[rows, d]` tensor into rows `at..at + n` of `dst`, a contiguous
    /// CPU tensor `[>= at + n, d]` of the stored dtype.
    pub fn read_rows_into(
        &self,
        file: &File,
        t: TensorRange,
        start: u64,
        n: u64,
        dst: &Tensor,
        at: i64,
    ) -> Result<()> {
        self.check_rows(start, n)?;
        let size = dst.size();
        let dst_row_bytes =
            size.get(1).copied().unwrap_or(1) as u64 * dst.kind().elt_size_in_bytes() as u64;
        if dst.device() != Device::Cpu
            || !dst.is_contiguous()
            || size.len() != 2
            || dst_row_bytes != t.row_bytes
            || at < 0
            || at + n as i64 > size[0]
        {
            return Err(StoreError::InvalidArgument(format!(
                "{}: cannot read {n} rows of {} bytes into rows {at}.. of a {:?} {:?} tensor",
                self.path.display(),
                t.row_bytes,
                dst.kind(),
                size
            )));
        }
        if n == 0 {
            return Ok(());
        }
        let (offset, len) = t.rows(start, n);
        // SAFETY: `dst` is a contiguous CPU tensor of at least `(at + n) * row_bytes` bytes (checked
        // above), so the slice lies inside its storage; nothing else reads or writes that storage while
        // the slice lives (the reader owns its buffers and hands out copies only). Shards are
        // little-endian, like every host libtorch supports.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(
                (dst.data_ptr() as *mut u8).add(at as usize * t.row_bytes as usize),
                len,
            )
        };
        file.read_exact_at(bytes, offset)
            .map_err(|e| StoreError::shard(&self.path, format!("read failed: {e}")))
    }
}

/// Move rows `rows` of a contiguous CPU tensor `[n, d]` to its first `rows.len()` rows (in that order).
pub(crate) fn move_rows_to_front(buf: &Tensor, rows: &[i64]) -> Result<()> {
    let moved = gather_rows(buf, rows)?;
    let bytes = moved.numel() * moved.kind().elt_size_in_bytes();
    // SAFETY: `moved` is a fresh contiguous copy of `rows.len()` rows of `buf` (same kind and width), so
    // its bytes fit into the front of `buf`'s storage; the two storages are distinct.
    unsafe {
        std::ptr::copy_nonoverlapping(
            moved.data_ptr() as *const u8,
            buf.data_ptr() as *mut u8,
            bytes,
        );
    }
    Ok(())
}

/// Rows `rows` of a contiguous CPU tensor `[n, d]`, gathered into a new contiguous tensor `[rows.len(), d]`.
///
/// A plain row-by-row copy on the calling thread: libtorch's `index_select` splits the same work over
/// its OpenMP pool, whose threads spin at barriers when the cores are shared with other work (a training
/// loop, a collection) and then cost more than the copy itself.
pub(crate) fn gather_rows(src: &Tensor, rows: &[i64]) -> Result<Tensor> {
    let size = src.size();
    if src.device() != Device::Cpu || !src.is_contiguous() || size.len() != 2 {
        return Err(StoreError::InvalidArgument(format!(
            "gather from a {:?} {:?} tensor on {:?}",
            src.kind(),
            size,
            src.device()
        )));
    }
    let (n, d) = (size[0], size[1]);
    if let Some(&bad) = rows.iter().find(|&&r| r < 0 || r >= n) {
        return Err(StoreError::InvalidArgument(format!(
            "row {bad} out of range ({n} rows)"
        )));
    }
    let out = Tensor::f_empty([rows.len() as i64, d], (src.kind(), Device::Cpu))?;
    let row_bytes = d as usize * src.kind().elt_size_in_bytes();
    if row_bytes == 0 || rows.is_empty() {
        return Ok(out);
    }
    // SAFETY: both tensors are contiguous CPU tensors (checked above; `out` was just allocated), every
    // index is in range, so each source and destination row lies inside its tensor's storage; the two
    // storages are distinct allocations, and `out` is not shared yet.
    unsafe {
        let src_ptr = src.data_ptr() as *const u8;
        let dst = std::slice::from_raw_parts_mut(out.data_ptr() as *mut u8, rows.len() * row_bytes);
        for (k, &r) in rows.iter().enumerate() {
            let from = std::slice::from_raw_parts(src_ptr.add(r as usize * row_bytes), row_bytes);
            dst[k * row_bytes..(k + 1) * row_bytes].copy_from_slice(from);
        }
    }
    Ok(out)
}
