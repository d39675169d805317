#![allow(missing_docs)] // criterion_group! generates undocumented items
//! Criterion benchmarks of the activation-store reader: one epoch of shuffled batches over a synthetic
//! paired store from the page cache, reported as bytes of activations per second, and the reader's peak
//! resident set.
//!
//! ```text
//! cargo bench --bench store_bench                      # all
//! cargo bench --bench store_bench -- cpu/store/read    # a subset
//! ```
//! The store (262 144 rows of the paper's pair, Qwen2.5-Coder-0.5B d=896 -> 1.5B d=1536, f16: 1.27 GB) is
//! written once to `$TMPDIR/rosetta-store-bench` and reused; the first iteration warms the page cache.
//! After the benchmarks, the peak resident set of the reading alone (the peak is reset after the store
//! is written) is printed: `peak RSS while reading: ...`.

use criterion::{criterion_group, Criterion, Throughput};
use rosetta::store::{
    Alignment, BatchOptions, DocRows, ModelEntry, SideRows, Split, StoreDtype, StoreReader,
    StoreSpec, StoreWriter, WriterOptions, DEFAULT_BUFFER_BYTES,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tch::{Device, Kind, Tensor};

const ROWS: i64 = 262_144;
const DOC_ROWS: i64 = 512;
const D_SRC: i64 = 896;
const D_TGT: i64 = 1536;
const BATCH: usize = 4096;

fn entry(id: &str, dim: i64) -> ModelEntry {
    ModelEntry {
        id: id.into(),
        dir: format!("/synthetic/{id}"),
        tokenizer_hash: "synthetic".into(),
        hook_point: "resid_post.8".into(),
        dim,
    }
}

/// Set in the child process that writes the store.
const WRITE_ONLY: &str = "ROSETTA_STORE_BENCH_WRITE";

/// The benchmark store; written by a child process (so the writer's freed memory does not count in this
/// process's resident set) unless a complete one of the right size is already there.
fn store() -> PathBuf {
    let dir = std::env::temp_dir().join("rosetta-store-bench");
    if StoreReader::open(&dir).is_ok_and(|r| r.manifest().complete && r.rows() == ROWS as u64) {
        return dir;
    }
    let status = std::process::Command::new(std::env::current_exe().expect("current exe"))
        .env(WRITE_ONLY, &dir)
        .status()
        .expect("spawn the store writer");
    assert!(status.success(), "writing the benchmark store failed");
    dir
}

fn write_store(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    let spec = StoreSpec {
        source: entry("qwen2.5-coder-0.5b-instruct", D_SRC),
        target: Some(entry("qwen2.5-coder-1.5b-instruct", D_TGT)),
        dtype: StoreDtype::F16,
        alignment: Alignment::Identity,
        seed: 0,
    };
    let mut w = StoreWriter::create(dir, spec, WriterOptions::default()).expect("create store");
    for doc in 0..ROWS / DOC_ROWS {
        let side = |dim: i64| SideRows {
            acts: Tensor::randn([DOC_ROWS, dim], (Kind::Float, Device::Cpu)).to_kind(Kind::Half),
            token_ids: vec![7; DOC_ROWS as usize],
            positions: (0..DOC_ROWS).collect(),
            encoded_tokens: DOC_ROWS as u64,
        };
        w.add(DocRows {
            doc_id: doc,
            x: side(D_SRC),
            y: Some(side(D_TGT)),
        })
        .expect("add");
    }
    w.finish().expect("finish");
}

fn status_bytes(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

fn epoch(reader: &StoreReader, seed: Option<u64>, options: BatchOptions) -> usize {
    let mut rows = 0;
    for b in reader
        .batches_with(BATCH, seed, Split::All, options)
        .expect("batches")
    {
        let b = b.expect("batch");
        rows += b.x.size()[0] as usize;
    }
    rows
}

fn benches(c: &mut Criterion) {
    let dir = store();
    // Measure the reader alone: reset VmHWM (Linux) to the current RSS.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let reader = StoreReader::open(&dir).expect("open");
    let bytes = reader.rows() * reader.activation_bytes_per_row();
    let mut g = c.benchmark_group("cpu/store/read");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Bytes(bytes));
    let mib = |m: u64| BatchOptions {
        buffer_bytes: m << 20,
        drop_last: false,
    };
    let mut seed = 0;
    g.bench_function(format!("epoch_shuffled_b{BATCH}_buffer512MiB"), |b| {
        b.iter(|| {
            seed += 1;
            epoch(&reader, Some(seed), BatchOptions::default())
        })
    });
    g.bench_function(format!("epoch_shuffled_b{BATCH}_buffer64MiB"), |b| {
        b.iter(|| {
            seed += 1;
            epoch(&reader, Some(seed), mib(64))
        })
    });
    g.bench_function(format!("epoch_in_order_b{BATCH}"), |b| {
        b.iter(|| epoch(&reader, None, BatchOptions::default()))
    });
    g.finish();
    if let (true, Some(hwm), Some(rss)) = (reset, status_bytes("VmHWM"), status_bytes("VmRSS")) {
        println!(
            "peak RSS while reading: {:.1} MiB (RSS now {:.1} MiB; default buffer {} MiB)",
            hwm as f64 / (1u64 << 20) as f64,
            rss as f64 / (1u64 << 20) as f64,
            DEFAULT_BUFFER_BYTES >> 20
        );
    }
}

criterion_group!(store_benches, benches);

fn main() {
    if let Some(dir) = std::env::var_os(WRITE_ONLY) {
        write_store(Path::new(&dir));
        return;
    }
    store_benches();
    Criterion::default().configure_from_args().final_summary();
}
