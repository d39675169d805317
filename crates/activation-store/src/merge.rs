//! Merging the stores of several workers into one store, without copying data.
//!
//! `n` workers each collect their part of a corpus (`shard i/n`: documents with `id % n == i`) into their
//! own store. [`merge_stores`] checks that the stores can be read as one (same models, tokenizers, hook
//! points, dims, dtype, alignment and seed; every store complete; no document in two stores) and writes a
//! manifest that lists every worker shard by a path relative to the merged directory
//! (`../worker-1/shard-00000.safetensors`). Shards are not copied, moved or rewritten; their sizes and
//! checksums are carried over, so [`crate::StoreReader::verify_full`] works on the merged store too.
//!
//! A merged store is read-only: [`crate::StoreWriter::open_or_resume`] refuses it (resume a worker store
//! and merge again). Keep the worker stores where they are, or move the whole tree together: the merged
//! manifest refers to them relatively. Merging merged stores flattens them: the result lists the original
//! worker shards.

use crate::error::{Result, StoreError};
use crate::format::{
    is_shard_file_name, Manifest, ShardEntry, StoreSpec, MANIFEST_FILE, MERGED_FORMAT_VERSION,
};
use crate::reader::StoreReader;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

fn merge_err(store: &Path, message: impl Into<String>) -> StoreError {
    StoreError::Merge {
        store: store.to_path_buf(),
        message: message.into(),
    }
}

/// What differs between the spec of the first store and another one (empty when they can be merged).
/// Checkpoint directories may differ; everything else must be equal.
fn differences(first: &StoreSpec, other: &StoreSpec) -> Vec<String> {
    let mut d = Vec::new();
    let mut model = |which: &str, a: &crate::ModelEntry, b: &crate::ModelEntry| {
        if a.id != b.id {
            d.push(format!("{which} model {:?} vs {:?}", a.id, b.id));
        }
        if a.tokenizer_hash != b.tokenizer_hash {
            d.push(format!(
                "{which} tokenizer hash {} vs {}",
                a.tokenizer_hash, b.tokenizer_hash
            ));
        }
        if a.hook_point != b.hook_point {
            d.push(format!(
                "{which} hook point {} vs {}",
                a.hook_point, b.hook_point
            ));
        }
        if a.dim != b.dim {
            d.push(format!("{which} dim {} vs {}", a.dim, b.dim));
        }
    };
    model("source", &first.source, &other.source);
    match (&first.target, &other.target) {
        (Some(a), Some(b)) => model("target", a, b),
        (None, None) => {}
        (Some(a), None) => d.push(format!("paired (target {:?}) vs single-model", a.id)),
        (None, Some(b)) => d.push(format!("single-model vs paired (target {:?})", b.id)),
    }
    if first.dtype != other.dtype {
        d.push(format!("dtype {:?} vs {:?}", first.dtype, other.dtype));
    }
    if first.alignment != other.alignment {
        d.push(format!(
            "alignment {:?} vs {:?}",
            first.alignment, other.alignment
        ));
    }
    if first.seed != other.seed {
        d.push(format!("seed {} vs {}", first.seed, other.seed));
    }
    d
}

/// `to` relative to `from` (both absolute and canonical): `../worker-1`.
fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let f: Vec<Component<'_>> = from.components().collect();
    let t: Vec<Component<'_>> = to.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c.as_os_str());
    }
    out
}

fn canonical(p: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(p).map_err(|e| merge_err(p, format!("not a store directory: {e}")))
}

/// Merge complete stores written by independent workers into one store in `out_dir`, without copying
/// data; returns the merged manifest (format version [`MERGED_FORMAT_VERSION`]).
///
/// Every input is opened like [`StoreReader::open`] (each shard's size and header checked; use
/// [`StoreReader::verify_full`] on the result for checksums) and must be complete. Inputs must agree
/// with the first one on the source and target model ids, tokenizer hashes, hook points and dims, the
/// dtype, the alignment and the seed; no document id may be in two inputs. The merged spec is the first
/// input's. `out_dir` is created if needed and must not hold a store or shard files; it must not be
/// one of the inputs. Errors name the store and what is wrong ([`StoreError::Merge`]).
pub fn merge_stores<P: AsRef<Path>>(out_dir: impl AsRef<Path>, inputs: &[P]) -> Result<Manifest> {
    let out = out_dir.as_ref();
    if inputs.is_empty() {
        return Err(StoreError::InvalidArgument("merge of no stores".into()));
    }
    if out.join(MANIFEST_FILE).exists() {
        return Err(merge_err(
            out,
            format!("the output directory already holds a store ({MANIFEST_FILE}); merge into a new directory"),
        ));
    }
    if out.is_dir() {
        let entries = std::fs::read_dir(out).map_err(|e| StoreError::io(out, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(out, e))?;
            if is_shard_file_name(&entry.file_name().to_string_lossy()) {
                return Err(merge_err(
                    out,
                    format!(
                        "the output directory holds shard files ({}) of an unknown store",
                        entry.path().display()
                    ),
                ));
            }
        }
    }
    let created = !out.exists();
    std::fs::create_dir_all(out).map_err(|e| StoreError::io(out, e))?;
    let result = merge_into(out, inputs);
    if result.is_err() && created {
        // Leave nothing behind for a refused merge (the directory is still empty).
        let _ = std::fs::remove_dir(out);
    }
    result
}

fn merge_into<P: AsRef<Path>>(out: &Path, inputs: &[P]) -> Result<Manifest> {
    let out_canon = canonical(out)?;

    let mut first: Option<(PathBuf, StoreSpec)> = None;
    let mut seen_inputs: Vec<PathBuf> = Vec::new();
    let mut doc_owner: HashMap<i64, usize> = HashMap::new();
    let mut shards: Vec<ShardEntry> = Vec::new();
    let mut merged_from: Vec<String> = Vec::new();
    for (k, input) in inputs.iter().enumerate() {
        let input = input.as_ref();
        let canon = canonical(input)?;
        if canon == out_canon {
            return Err(merge_err(input, "the output directory is also an input"));
        }
        if let Some(j) = seen_inputs.iter().position(|p| p == &canon) {
            return Err(merge_err(
                input,
                format!("listed twice (inputs {j} and {k})"),
            ));
        }
        seen_inputs.push(canon.clone());
        let reader = StoreReader::open(input)?;
        let m = reader.manifest();
        if !m.complete {
            return Err(merge_err(
                input,
                "the store is incomplete (its collection is still running or was interrupted): \
                 finish it (re-run the collection to resume) before merging",
            ));
        }
        match &first {
            None => first = Some((input.to_path_buf(), m.spec.clone())),
            Some((first_dir, spec)) => {
                let diffs = differences(spec, &m.spec);
                if !diffs.is_empty() {
                    return Err(merge_err(
                        input,
                        format!(
                            "it differs from the first store {} (first vs this one): {}",
                            first_dir.display(),
                            diffs.join("; ")
                        ),
                    ));
                }
            }
        }
        for i in 0..m.shards.len() {
            let ids = reader.shard_doc_ids(i)?;
            let mut last = None;
            for d in ids {
                if last == Some(d) {
                    continue;
                }
                last = Some(d);
                match doc_owner.insert(d, k) {
                    Some(other) if other != k => {
                        return Err(merge_err(
                            input,
                            format!(
                                "document {d} is also in {} (each document must be collected by one \
                                 worker only: use --shard i/n with the same n everywhere)",
                                inputs[other].as_ref().display()
                            ),
                        ));
                    }
                    _ => {}
                }
            }
        }
        for entry in &m.shards {
            // Resolve the shard's own directory (a merged input lists shards of other stores).
            let path = canon.join(&entry.file);
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .filter(|n| is_shard_file_name(n))
                .ok_or_else(|| {
                    merge_err(input, format!("shard {:?} is not a shard file", entry.file))
                })?
                .to_string();
            let origin = path
                .parent()
                .ok_or_else(|| merge_err(input, format!("shard {:?} has no directory", entry.file)))
                .and_then(canonical)?;
            if origin == out_canon {
                return Err(merge_err(input, "it lists shards of the output directory"));
            }
            let rel = relative_path(&out_canon, &origin);
            let rel = rel
                .to_str()
                .ok_or_else(|| merge_err(input, format!("path {} is not UTF-8", origin.display())))?
                .to_string();
            if !merged_from.contains(&rel) {
                merged_from.push(rel.clone());
            }
            shards.push(ShardEntry {
                file: format!("{rel}/{name}"),
                ..entry.clone()
            });
        }
        if m.shards.is_empty() {
            let rel = relative_path(&out_canon, &canon);
            if let Some(rel) = rel.to_str().map(String::from) {
                if !merged_from.contains(&rel) {
                    merged_from.push(rel);
                }
            }
        }
    }
    let Some((_, spec)) = first else {
        return Err(StoreError::InvalidArgument("merge of no stores".into()));
    };
    let manifest = Manifest {
        format_version: MERGED_FORMAT_VERSION,
        spec,
        shards,
        complete: true,
        merged_from,
    };
    manifest.write_atomic(out)?;
    // The merged store must read back: every relative path resolves to the shard checked above.
    let merged = StoreReader::open(out)?;
    Ok(merged.manifest().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        let r = |a: &str, b: &str| relative_path(Path::new(a), Path::new(b));
        assert_eq!(r("/s/merged", "/s/w0"), PathBuf::from("../w0"));
        assert_eq!(r("/s/a/merged", "/t/w0"), PathBuf::from("../../../t/w0"));
        assert_eq!(r("/s", "/s/w0/x"), PathBuf::from("w0/x"));
    }
}
