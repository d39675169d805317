//! Reader memory does not grow with the store: 1M synthetic rows of d=1536 (f16, 3 GB on disk) read with
//! a small buffer, every row exactly once per epoch, against a store 20x smaller read the same way.
//!
//! The stores are written by the test; each epoch runs in a fresh child process (this binary again, test
//! `epoch_child`), so a peak resident set measures the reader alone, not the writer's freed memory. It
//! needs ~3.2 GB of free space in the temporary directory (`TMPDIR`) and takes about 20 s, mostly
//! writing. `ROSETTA_SCALE_ROWS` overrides the large store's row count.

use rosetta_activation_store::*;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const D: i64 = 1536;
const DOC_ROWS: i64 = 500;

/// `VmHWM` (peak resident set) or `VmRSS` of this process, in bytes.
fn status_kb(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(key)).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// Reset the peak resident set to the current one (Linux `clear_refs` 5).
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

/// Row `r` of document `doc` carries its global index `doc * DOC_ROWS + r` as (high, low) base-1024
/// digits in columns 0 and 1: exact in f16 up to 2M rows.
fn doc_rows(doc: i64) -> DocRows {
    let tag = Tensor::arange(DOC_ROWS, (Kind::Int64, Device::Cpu)) + doc * DOC_ROWS;
    let acts = Tensor::full([DOC_ROWS, D], (doc % 17) as f64, (Kind::Half, Device::Cpu));
    acts.narrow(1, 0, 1)
        .copy_(&tag.divide_scalar_mode(1024, "floor").unsqueeze(1));
    acts.narrow(1, 1, 1)
        .copy_(&tag.remainder(1024).unsqueeze(1));
    DocRows {
        doc_id: doc,
        x: SideRows {
            acts,
            token_ids: vec![1; DOC_ROWS as usize],
            positions: (0..DOC_ROWS).collect(),
            encoded_tokens: DOC_ROWS as u64,
        },
        y: None,
    }
}

fn write(dir: &Path, rows: i64) -> Manifest {
    let _ = std::fs::remove_dir_all(dir);
    let spec = StoreSpec {
        source: ModelEntry {
            id: "synthetic".into(),
            dir: "/none".into(),
            tokenizer_hash: "none".into(),
            hook_point: "resid_post.8".into(),
            dim: D,
        },
        target: None,
        dtype: StoreDtype::F16,
        alignment: Alignment::Identity,
        seed: 0,
    };
    let mut w = StoreWriter::create(dir, spec, WriterOptions::default()).unwrap();
    for doc in 0..rows / DOC_ROWS {
        w.add(doc_rows(doc)).unwrap();
    }
    w.finish().unwrap()
}

#[derive(Debug)]
struct Epoch {
    /// Peak resident set of the process over the epoch.
    peak_rss: u64,
    /// Resident set when the epoch started (libtorch loaded, store opened).
    start_rss: u64,
    peak_buffer_rows: i64,
    capacity_rows: i64,
    seconds: f64,
}

const CHILD: &str = "ROSETTA_SCALE_CHILD";

/// Run [`epoch`] in a fresh process and parse its result.
fn epoch_in_child(dir: &Path, buffer_bytes: u64, seed: u64) -> Epoch {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "epoch_child", "--nocapture", "--test-threads=1"])
        .env(CHILD, format!("{};{buffer_bytes};{seed}", dir.display()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child epoch failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("EPOCH ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no result from the child:\n{stdout}"));
    let v: Vec<f64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
    Epoch {
        peak_rss: v[0] as u64,
        start_rss: v[1] as u64,
        peak_buffer_rows: v[2] as i64,
        capacity_rows: v[3] as i64,
        seconds: v[4],
    }
}

/// The child side of [`epoch_in_child`]; does nothing in a normal test run.
#[test]
fn epoch_child() {
    let Ok(arg) = std::env::var(CHILD) else {
        return;
    };
    let parts: Vec<&str> = arg.split(';').collect();
    let options = BatchOptions {
        buffer_bytes: parts[1].parse().unwrap(),
        drop_last: false,
    };
    let e = epoch(Path::new(parts[0]), options, parts[2].parse().unwrap());
    println!(
        "EPOCH {} {} {} {} {}",
        e.peak_rss, e.start_rss, e.peak_buffer_rows, e.capacity_rows, e.seconds
    );
}

/// One shuffled epoch; asserts every row is seen exactly once.
fn epoch(dir: &Path, options: BatchOptions, seed: u64) -> Epoch {
    let r = StoreReader::open(dir).unwrap();
    let rows = r.rows() as usize;
    let mut seen = vec![false; rows];
    reset_peak();
    let start_rss = status_kb("VmRSS");
    let start = std::time::Instant::now();
    let mut it = r
        .batches_with(4096, Some(seed), Split::All, options)
        .unwrap();
    let mut in_order = 0usize;
    let mut prev = None;
    for b in it.by_ref() {
        let b = b.unwrap();
        let tags =
            Vec::<f32>::try_from(b.x.narrow(1, 0, 2).to_kind(Kind::Float).flatten(0, 1)).unwrap();
        for t in tags.chunks_exact(2) {
            let row = (t[0] as usize) * 1024 + t[1] as usize;
            assert!(row < rows && !seen[row], "row {row} twice or out of range");
            seen[row] = true;
            if prev.is_some_and(|p| p + 1 == row) {
                in_order += 1;
            }
            prev = Some(row);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    assert!(seen.iter().all(|&s| s), "rows missing from the epoch");
    assert!(
        (in_order as f64) < 0.01 * rows as f64,
        "{in_order} of {rows} rows follow their predecessor: not shuffled"
    );
    Epoch {
        peak_rss: status_kb("VmHWM"),
        start_rss,
        peak_buffer_rows: it.peak_buffer_rows(),
        capacity_rows: it.capacity_rows(),
        seconds,
    }
}

#[test]
fn reader_memory_does_not_grow_with_store_size() {
    let large_rows: i64 = std::env::var("ROSETTA_SCALE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let base: PathBuf = std::env::temp_dir().join(format!("rosetta-scale-{}", std::process::id()));
    let small = base.join("small");
    let large = base.join("large");
    let t = std::time::Instant::now();
    write(&small, large_rows / 20);
    let m = write(&large, large_rows);
    eprintln!(
        "wrote {} + {} rows ({:.2} GB in {} shards) in {:.1} s",
        large_rows / 20,
        m.rows(),
        m.shards.iter().map(|s| s.bytes).sum::<u64>() as f64 / 1e9,
        m.shards.len(),
        t.elapsed().as_secs_f64()
    );
    let gb = |b: u64| b as f64 / (1u64 << 30) as f64;

    // A small buffer (64 MiB): the same peak for a store 20x larger.
    let opts = BatchOptions {
        buffer_bytes: 64 << 20,
        drop_last: false,
    };
    let s = epoch_in_child(&small, opts.buffer_bytes, 1);
    let l = epoch_in_child(&large, opts.buffer_bytes, 1);
    let row_bytes = (D * 2 + 8) as u64;
    eprintln!(
        "64 MiB buffer: small store peak RSS {:.3} GiB, large {:.3} GiB (at start {:.3} GiB; {:.2} GB/s); buffer rows {} / {}",
        gb(s.peak_rss),
        gb(l.peak_rss),
        gb(l.start_rss),
        large_rows as f64 * (D * 2) as f64 / l.seconds / 1e9,
        s.peak_buffer_rows,
        l.peak_buffer_rows
    );
    assert_eq!(s.capacity_rows, ((64u64 << 20) / row_bytes) as i64);
    assert_eq!(l.capacity_rows, s.capacity_rows);
    assert!(l.peak_buffer_rows <= l.capacity_rows);
    assert!(s.peak_buffer_rows <= s.capacity_rows);
    assert!(
        l.peak_rss < s.peak_rss + (32 << 20),
        "peak RSS grew with the store: {} -> {} bytes",
        s.peak_rss,
        l.peak_rss
    );

    // The default buffer (512 MiB) stays under 1 GB of resident memory.
    let d = epoch_in_child(&large, DEFAULT_BUFFER_BYTES, 2);
    eprintln!(
        "default buffer: peak RSS {:.3} GiB (at start {:.3} GiB), {} buffer rows, {:.2} GB/s",
        gb(d.peak_rss),
        gb(d.start_rss),
        d.peak_buffer_rows,
        large_rows as f64 * (D * 2) as f64 / d.seconds / 1e9
    );
    assert!(d.peak_buffer_rows <= (DEFAULT_BUFFER_BYTES / row_bytes) as i64);
    assert!(d.peak_rss < 1 << 30, "peak RSS {} bytes", d.peak_rss);
    std::fs::remove_dir_all(&base).unwrap();
}
