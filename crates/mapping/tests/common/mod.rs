//! Synthetic paired stores for the mapping tests.
#![allow(dead_code)]

use rosetta_activation_store::*;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Tests in one binary run on parallel threads, but libtorch's random generator is global: a test that
/// seeds it and draws (data, initial weights) holds this lock for its whole run so that no other test
/// draws in between.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("rosetta-mapping-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

pub fn entry(id: &str, dim: i64) -> ModelEntry {
    ModelEntry {
        id: id.into(),
        dir: format!("/models/{id}"),
        tokenizer_hash: format!("hash-{id}"),
        hook_point: "resid_post.3".into(),
        dim,
    }
}

/// Write a paired f32 store of `docs` documents of `rows_per_doc` rows: `x` standard normal (times
/// `x_scale`, plus `x_shift`), `y = f(x)`.
#[allow(clippy::too_many_arguments)]
pub fn write_store(
    dir: &Path,
    d_src: i64,
    d_tgt: i64,
    docs: i64,
    rows_per_doc: i64,
    seed: i64,
    shard_bytes: u64,
    f: impl Fn(&Tensor) -> Tensor,
) -> StoreReader {
    tch::manual_seed(seed);
    let spec = StoreSpec {
        source: entry("src", d_src),
        target: Some(entry("tgt", d_tgt)),
        dtype: StoreDtype::F32,
        alignment: Alignment::Identity,
        seed: seed as u64,
    };
    let mut w = StoreWriter::create(dir, spec, WriterOptions { shard_bytes }).unwrap();
    for doc_id in 0..docs {
        let x = Tensor::randn([rows_per_doc, d_src], (Kind::Float, tch::Device::Cpu));
        let y = f(&x);
        let ids: Vec<i64> = (0..rows_per_doc).collect();
        let side = |acts: Tensor| SideRows {
            acts,
            token_ids: ids.clone(),
            positions: ids.clone(),
            encoded_tokens: rows_per_doc as _,
        };
        w.add(DocRows {
            doc_id,
            x: side(x),
            y: Some(side(y)),
        })
        .unwrap();
    }
    w.finish().unwrap();
    StoreReader::open(dir).unwrap()
}

/// Max absolute difference.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}
