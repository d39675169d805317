//! Synthetic stores in temporary directories: round trip, epochs, splits, resume, corruption, statistics.

use rosetta_activation_store::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use tch::{Kind, Tensor};

const D_SRC: i64 = 6;
const D_TGT: i64 = 5;

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("rosetta-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

fn model(id: &str, dim: i64) -> ModelEntry {
    ModelEntry {
        id: id.into(),
        dir: format!("/models/{id}"),
        tokenizer_hash: format!("hash-{id}"),
        hook_point: "resid_post.2".into(),
        dim,
    }
}

fn spec(paired: bool, dtype: StoreDtype) -> StoreSpec {
    StoreSpec {
        source: model("src", D_SRC),
        target: paired.then(|| model("tgt", D_TGT)),
        dtype,
        alignment: if paired {
            Alignment::CharEnd
        } else {
            Alignment::Identity
        },
        seed: 42,
    }
}

fn rows_of(doc: i64) -> i64 {
    1 + (doc * 7) % 13
}

/// Activations whose column 0 is a global row tag (`doc * 100 + row`, exact in f32) and whose other
/// columns are smooth functions of the tag.
fn acts(doc: i64, dim: i64, salt: f64) -> Tensor {
    let n = rows_of(doc);
    let tag = Tensor::arange(n, (Kind::Double, tch::Device::Cpu)) + (doc * 100) as f64;
    let cols = Tensor::arange(dim, (Kind::Double, tch::Device::Cpu));
    let x = (tag.unsqueeze(1) * 0.37 + cols.unsqueeze(0) * 1.3 + salt).sin() * 3.0 + 0.5;
    x.narrow(1, 0, 1).copy_(&tag.unsqueeze(1));
    x.to_kind(Kind::Float)
}

fn doc_rows(doc: i64, paired: bool) -> DocRows {
    let n = rows_of(doc);
    let side = |dim, salt: f64, off: i64| SideRows {
        acts: acts(doc, dim, salt),
        token_ids: (0..n).map(|r| doc * 1000 + r + off).collect(),
        positions: (0..n).map(|r| r * 2 + off).collect(),
        encoded_tokens: (n + 2 + off) as u64,
    };
    DocRows {
        doc_id: doc,
        x: side(D_SRC, 0.0, 0),
        y: paired.then(|| side(D_TGT, 1.0, 1)),
    }
}

const SMALL: WriterOptions = WriterOptions { shard_bytes: 2000 };

fn write_store(dir: &PathBuf, docs: std::ops::Range<i64>, paired: bool) -> Manifest {
    let mut w = StoreWriter::create(dir, spec(paired, StoreDtype::F32), SMALL).unwrap();
    for d in docs {
        w.add(doc_rows(d, paired)).unwrap();
    }
    w.finish().unwrap()
}

#[test]
fn round_trip_is_bit_exact() {
    for paired in [true, false] {
        let dir = tmp(&format!("roundtrip-{paired}"));
        let m = write_store(&dir, 0..40, paired);
        assert!(
            m.shards.len() > 3,
            "expected several shards, got {}",
            m.shards.len()
        );
        assert!(m.complete);
        let rows = (0..40).map(rows_of).sum::<i64>() as u64;
        assert_eq!(m.rows(), rows);
        let keep = m.keep_report();
        assert_eq!(keep.total_a as u64, rows + 2 * 40);
        assert_eq!(keep.total_b as u64, if paired { rows + 3 * 40 } else { 0 });
        let r = StoreReader::open(&dir).unwrap();
        r.verify_full().unwrap();
        assert_eq!(r.manifest(), &m);
        let docs: Vec<Document> = r.documents(Split::All).map(|d| d.unwrap()).collect();
        assert_eq!(docs.len(), 40);
        for (k, d) in docs.iter().enumerate() {
            let want = doc_rows(k as i64, paired);
            assert_eq!(d.doc_id, k as i64);
            assert!(d.x.equal(&want.x.acts), "doc {k} x differs");
            assert_eq!(d.x_token_ids, want.x.token_ids);
            assert_eq!(d.x_positions, want.x.positions);
            match (want.y, &d.y) {
                (Some(wy), Some(y)) => {
                    assert!(y.equal(&wy.acts), "doc {k} y differs");
                    assert_eq!(d.y_token_ids, wy.token_ids);
                    assert_eq!(d.y_positions, wy.positions);
                }
                (None, None) => assert!(d.y_token_ids.is_empty()),
                _ => panic!("pairing of doc {k} differs"),
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn half_precision_dtypes_round_trip() {
    for dtype in [StoreDtype::F16, StoreDtype::Bf16] {
        let dir = tmp(&format!("dtype-{dtype:?}"));
        let mut w = StoreWriter::create(&dir, spec(true, dtype), SMALL).unwrap();
        for d in 0..5 {
            w.add(doc_rows(d, true)).unwrap();
        }
        w.finish().unwrap();
        let r = StoreReader::open(&dir).unwrap();
        for (k, d) in r.documents(Split::All).enumerate() {
            let d = d.unwrap();
            assert_eq!(d.x.kind(), dtype.kind());
            let want = acts(k as i64, D_SRC, 0.0).to_kind(dtype.kind());
            assert!(d.x.equal(&want));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Row tags of a batch stream: (x tag, y tag) pairs, checking pairing on the way.
fn tags(batches: Batches<'_>, batch_size: i64) -> Vec<i64> {
    let mut out = Vec::new();
    let mut sizes = Vec::new();
    for b in batches {
        let b = b.unwrap();
        let n = b.x.size()[0];
        sizes.push(n);
        let xt = Vec::<f32>::try_from(b.x.narrow(1, 0, 1).flatten(0, 1)).unwrap();
        let yt = Vec::<f32>::try_from(b.y.unwrap().narrow(1, 0, 1).flatten(0, 1)).unwrap();
        let docs = Vec::<i64>::try_from(&b.doc_ids).unwrap();
        for ((x, y), d) in xt.iter().zip(&yt).zip(&docs) {
            assert_eq!(x, y, "x and y rows out of step");
            assert_eq!((*x as i64) / 100, *d, "doc id out of step");
            out.push(*x as i64);
        }
    }
    let (last, full) = sizes.split_last().unwrap();
    assert!(full.iter().all(|&s| s == batch_size));
    assert!(*last <= batch_size && *last > 0);
    out
}

#[test]
fn every_row_once_per_epoch_and_shuffled() {
    let dir = tmp("epoch");
    let m = write_store(&dir, 0..60, true);
    let r = StoreReader::open(&dir).unwrap();
    let all: Vec<i64> = (0..60)
        .flat_map(|d| (0..rows_of(d)).map(move |k| d * 100 + k))
        .collect();
    // 52 bytes per buffered row ((6 + 5) * 4 + 8): a buffer of 60 rows, a seventh of the store.
    let opts = BatchOptions {
        buffer_bytes: 60 * 52,
        drop_last: false,
    };
    let in_order = tags(r.batches_with(7, None, Split::All, opts).unwrap(), 7);
    assert_eq!(in_order, all, "unshuffled epoch is store order");
    let mut epochs = Vec::new();
    for seed in 0..3u64 {
        let t = tags(r.batches_with(7, Some(seed), Split::All, opts).unwrap(), 7);
        let mut sorted = t.clone();
        sorted.sort();
        assert_eq!(sorted, all, "epoch {seed}: every row exactly once");
        assert_ne!(t, all, "epoch {seed} is not shuffled");
        epochs.push(t);
    }
    assert_ne!(epochs[0], epochs[1]);
    let again = tags(r.batches_with(7, Some(0), Split::All, opts).unwrap(), 7);
    assert_eq!(again, epochs[0], "same seed, same order");
    let dropped: usize = r
        .batches_with(
            7,
            Some(0),
            Split::All,
            BatchOptions {
                drop_last: true,
                ..opts
            },
        )
        .unwrap()
        .map(|b| b.unwrap().x.size()[0] as usize)
        .sum();
    assert_eq!(dropped as u64, m.rows() / 7 * 7);
    // Memory is bounded by the buffer's byte budget, not the store.
    let mut it = r.batches_with(7, Some(5), Split::All, opts).unwrap();
    assert_eq!(it.capacity_rows(), 60);
    for b in it.by_ref() {
        b.unwrap();
    }
    assert!(it.peak_buffer_rows() > 50, "{}", it.peak_buffer_rows());
    assert!(it.peak_buffer_rows() <= 60, "{}", it.peak_buffer_rows());
    assert!((it.peak_buffer_rows() as u64) < m.rows() / 3);
    // A budget below two batches still holds two batches; one above the store holds the store.
    let tiny = BatchOptions {
        buffer_bytes: 1,
        drop_last: false,
    };
    let t = tags(r.batches_with(7, Some(1), Split::All, tiny).unwrap(), 7);
    assert_eq!(t.len() as u64, m.rows());
    assert_eq!(
        r.batches_with(7, Some(1), Split::All, tiny)
            .unwrap()
            .capacity_rows(),
        14
    );
    assert_eq!(
        r.batches(7, Some(1), Split::All).unwrap().capacity_rows() as u64,
        m.rows()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn validation_documents_never_in_training() {
    let dir = tmp("split");
    write_store(&dir, 0..80, true);
    let r = StoreReader::open(&dir).unwrap();
    let split = DocSplit::new(0.25, 3);
    let docs_of = |s: Split| -> BTreeSet<i64> {
        tags(r.batches(5, Some(9), s).unwrap(), 5)
            .into_iter()
            .map(|t| t / 100)
            .collect()
    };
    let train = docs_of(Split::Train(split));
    let val = docs_of(Split::Validation(split));
    assert!(train.is_disjoint(&val));
    assert_eq!(train.union(&val).count(), 80);
    assert!(
        (8..=32).contains(&val.len()),
        "validation share off: {}",
        val.len()
    );
    let val_docs: BTreeSet<i64> = r
        .documents(Split::Validation(split))
        .map(|d| d.unwrap().doc_id)
        .collect();
    assert_eq!(val_docs, val);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_after_crash_equals_uninterrupted_run() {
    let whole = tmp("resume-whole");
    let want = write_store(&whole, 0..50, true);

    let dir = tmp("resume-crashed");
    {
        let mut w = StoreWriter::create(&dir, spec(true, StoreDtype::F32), SMALL).unwrap();
        let mut d = 0;
        // Injected failure: the process dies once 3 shards are on disk, with rows still buffered.
        while w.manifest().shards.len() < 3 {
            w.add(doc_rows(d, true)).unwrap();
            d += 1;
        }
        w.add(doc_rows(d, true)).unwrap();
        drop(w);
        // ...in the middle of writing shard 3: a partial shard and a temporary file lie around.
        std::fs::write(dir.join(shard_file_name(3)), b"partial").unwrap();
        std::fs::write(dir.join(".shard-00004.safetensors.tmp-1"), b"x").unwrap();
    }
    let crashed = StoreReader::open(&dir).unwrap();
    assert_eq!(crashed.manifest().shards.len(), 3);
    assert!(!crashed.manifest().complete);

    let (mut w, info) =
        StoreWriter::open_or_resume(&dir, spec(true, StoreDtype::F32), SMALL).unwrap();
    assert_eq!(info.shards, 3);
    assert_eq!(
        info.removed.len(),
        2,
        "leftovers removed: {:?}",
        info.removed
    );
    let stored = info.stored_docs.clone();
    assert!(!stored.is_empty());
    assert_eq!(stored, (0..stored.len() as i64).collect::<BTreeSet<_>>());
    for d in 0..50 {
        if !info.stored_docs.contains(&d) {
            w.add(doc_rows(d, true)).unwrap();
        }
    }
    let got = w.finish().unwrap();
    assert_eq!(
        got, want,
        "resumed manifest (with checksums) equals the uninterrupted one"
    );
    StoreReader::open(&dir).unwrap().verify_full().unwrap();

    // A store refuses to resume under a different configuration, and re-adding a stored doc fails.
    let mut other = spec(true, StoreDtype::F32);
    other.seed = 43;
    let err = StoreWriter::open_or_resume(&dir, other, SMALL)
        .err()
        .unwrap();
    assert!(err.to_string().contains("seed 42 vs 43"), "{err}");
    let (mut w, _) = StoreWriter::open_or_resume(&dir, spec(true, StoreDtype::F32), SMALL).unwrap();
    let err = w.add(doc_rows(0, true)).unwrap_err();
    assert!(err.to_string().contains("document 0"), "{err}");
    assert!(StoreWriter::create(&dir, spec(true, StoreDtype::F32), SMALL).is_err());
    // Shards without a manifest belong to an unknown store: refused, not deleted.
    std::fs::remove_file(dir.join(MANIFEST_FILE)).unwrap();
    let err = StoreWriter::open_or_resume(&dir, spec(true, StoreDtype::F32), SMALL)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no manifest.json"), "{err}");
    assert!(dir.join(shard_file_name(0)).exists());
    std::fs::remove_dir_all(&whole).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn damaged_shards_are_refused_by_name() {
    let dir = tmp("damaged");
    write_store(&dir, 0..20, true);
    let name = shard_file_name(1);
    let path = dir.join(&name);
    let original = std::fs::read(&path).unwrap();

    // Truncated: refused on open.
    std::fs::write(&path, &original[..original.len() - 10]).unwrap();
    let err = StoreReader::open(&dir).err().unwrap().to_string();
    assert!(err.contains(&name) && err.contains("truncated"), "{err}");

    // Same size, corrupted data: open is cheap and passes, the full check names the shard.
    let mut bad = original.clone();
    let last = bad.len() - 3;
    bad[last] ^= 0xff;
    std::fs::write(&path, &bad).unwrap();
    let r = StoreReader::open(&dir).unwrap();
    let err = r.verify_full().unwrap_err().to_string();
    assert!(err.contains(&name) && err.contains("SHA-256"), "{err}");

    // Same size, corrupted header: refused on open.
    let mut bad = original.clone();
    for b in &mut bad[8..40] {
        *b = b'#';
    }
    std::fs::write(&path, &bad).unwrap();
    let err = StoreReader::open(&dir).err().unwrap().to_string();
    assert!(err.contains(&name), "{err}");

    // Missing shard.
    std::fs::remove_file(&path).unwrap();
    let err = StoreReader::open(&dir).err().unwrap().to_string();
    assert!(err.contains(&name), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_rows_are_refused_with_context() {
    let dir = tmp("badrows");
    let mut w = StoreWriter::create(&dir, spec(true, StoreDtype::F32), SMALL).unwrap();
    let mut d = doc_rows(5, true);
    d.x.acts = Tensor::zeros([rows_of(5), D_SRC + 1], (Kind::Float, tch::Device::Cpu));
    let err = w.add(d).unwrap_err().to_string();
    assert!(err.contains("document 5") && err.contains("shape"), "{err}");
    let mut d = doc_rows(6, true);
    d.y = None;
    assert!(w
        .add(d)
        .unwrap_err()
        .to_string()
        .contains("y rows are required"));
    let mut d = doc_rows(7, true);
    d.x.positions.pop();
    assert!(w.add(d).is_err());
    let mut d = doc_rows(8, true);
    d.y.as_mut().unwrap().encoded_tokens = 0;
    let err = w.add(d).unwrap_err().to_string();
    assert!(
        err.contains("document 8") && err.contains("tokens"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn welford_matches_direct_computation() {
    let dir = tmp("stats");
    write_store(&dir, 0..30, true);
    let r = StoreReader::open(&dir).unwrap();
    let split = DocSplit::new(0.3, 1);
    for s in [Split::All, Split::Train(split)] {
        let (sx, sy) = r.stats(s).unwrap();
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for d in r.documents(s) {
            let d = d.unwrap();
            xs.push(d.x.to_kind(Kind::Double));
            ys.push(d.y.unwrap().to_kind(Kind::Double));
        }
        for (st, rows) in [
            (sx, Tensor::cat(&xs, 0)),
            (sy.unwrap(), Tensor::cat(&ys, 0)),
        ] {
            assert_eq!(st.count() as i64, rows.size()[0]);
            let mean = Vec::<f64>::try_from(rows.mean_dim(0, false, Kind::Double)).unwrap();
            let var = Vec::<f64>::try_from(rows.var_dim(0, false, false)).unwrap();
            for k in 0..mean.len() {
                approx::assert_relative_eq!(
                    st.mean()[k],
                    mean[k],
                    max_relative = 1e-12,
                    epsilon = 1e-12
                );
                approx::assert_relative_eq!(st.variance()[k], var[k], max_relative = 1e-12);
            }
        }
    }
    // Merging per-part statistics equals the whole.
    let (mut a, _) = r.stats(Split::Train(split)).unwrap();
    let (b, _) = r.stats(Split::Validation(split)).unwrap();
    let (all, _) = r.stats(Split::All).unwrap();
    a.merge(&b).unwrap();
    assert_eq!(a.count(), all.count());
    for k in 0..D_SRC as usize {
        approx::assert_relative_eq!(
            a.mean()[k],
            all.mean()[k],
            max_relative = 1e-12,
            epsilon = 1e-12
        );
        approx::assert_relative_eq!(a.variance()[k], all.variance()[k], max_relative = 1e-12);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shards_respect_the_byte_budget() {
    let dir = tmp("budget");
    let m = write_store(&dir, 0..40, true);
    let per_row = (D_SRC + D_TGT) as u64 * 4 + 5 * 8;
    let max_doc = (0..40).map(rows_of).max().unwrap() as u64;
    for s in &m.shards {
        assert!(
            s.rows * per_row < SMALL.shard_bytes + max_doc * per_row,
            "{s:?}"
        );
    }
    let docs: BTreeMap<i64, ()> = (0..40).map(|d| (d, ())).collect();
    assert_eq!(
        m.shards.iter().map(|s| s.docs).sum::<u64>(),
        docs.len() as u64
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A store of the given documents under `base/name` (paired f32 unless `spec` says otherwise).
fn worker(
    base: &std::path::Path,
    name: &str,
    docs: impl Iterator<Item = i64>,
    spec: StoreSpec,
) -> PathBuf {
    let dir = base.join(name);
    let mut w = StoreWriter::create(&dir, spec, SMALL).unwrap();
    for d in docs {
        w.add(doc_rows(d, true)).unwrap();
    }
    w.finish().unwrap();
    dir
}

#[test]
fn merged_stores_read_as_the_union_without_copying() {
    let base = tmp("merge");
    let sp = spec(true, StoreDtype::F32);
    let w0 = worker(&base, "w0", (0..40).filter(|d| d % 2 == 0), sp.clone());
    let w1 = worker(&base, "w1", (0..40).filter(|d| d % 2 == 1), sp.clone());
    let out = base.join("merged");
    let m = merge_stores(&out, &[&w0, &w1]).unwrap();
    assert_eq!(m.format_version, MERGED_FORMAT_VERSION);
    assert_eq!(m.merged_from, vec!["../w0", "../w1"]);
    assert!(m.complete && m.is_merged());
    let (m0, m1) = (Manifest::read(&w0).unwrap(), Manifest::read(&w1).unwrap());
    assert_eq!(m.shards.len(), m0.shards.len() + m1.shards.len());
    assert_eq!(m.rows(), m0.rows() + m1.rows());
    assert_eq!(m.shards[0].file, "../w0/shard-00000.safetensors");
    // Nothing was copied: the merged directory holds its manifest only.
    let files: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert_eq!(files.len(), 1);
    // Plain stores keep format version 1 and no merged_from key.
    assert_eq!(m0.format_version, FORMAT_VERSION);
    let text = std::fs::read_to_string(w0.join(MANIFEST_FILE)).unwrap();
    assert!(!text.contains("merged_from"));

    let r = StoreReader::open(&out).unwrap();
    r.verify_full().unwrap();
    let mut docs: Vec<Document> = r.documents(Split::All).map(|d| d.unwrap()).collect();
    docs.sort_by_key(|d| d.doc_id);
    assert_eq!(docs.len(), 40);
    for (k, d) in docs.iter().enumerate() {
        let want = doc_rows(k as i64, true);
        assert_eq!(d.doc_id, k as i64);
        assert!(d.x.equal(&want.x.acts), "doc {k} x differs");
        assert!(d.y.as_ref().unwrap().equal(&want.y.unwrap().acts));
        assert_eq!(d.x_token_ids, want.x.token_ids);
    }
    let all: Vec<i64> = (0..40)
        .flat_map(|d| (0..rows_of(d)).map(move |k| d * 100 + k))
        .collect();
    let mut t = tags(r.batches(9, Some(3), Split::All).unwrap(), 9);
    t.sort();
    assert_eq!(t, all, "every row of both stores exactly once");

    // Read-only for the writer.
    let err = StoreWriter::open_or_resume(&out, sp.clone(), SMALL)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("merged store") && err.contains("read-only"),
        "{err}"
    );

    // Merging a merged store flattens it: the result lists the worker shards.
    let w2 = worker(&base, "w2", 40..50, sp.clone());
    let out2 = base.join("deeper").join("all");
    let m2 = merge_stores(&out2, &[&out, &w2]).unwrap();
    assert_eq!(m2.merged_from, vec!["../../w0", "../../w1", "../../w2"]);
    let r2 = StoreReader::open(&out2).unwrap();
    assert_eq!(r2.documents(Split::All).count(), 50);
    r2.verify_full().unwrap();
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn merged_workers_hold_the_rows_of_one_worker() {
    let base = tmp("compare");
    let sp = spec(true, StoreDtype::F32);
    let single = worker(&base, "single", 0..30, sp.clone());
    let workers: Vec<PathBuf> = (0..3)
        .map(|i| {
            worker(
                &base,
                &format!("w{i}"),
                (0..30).filter(|d| d % 3 == i),
                sp.clone(),
            )
        })
        .collect();
    let merged = base.join("merged");
    merge_stores(&merged, &workers).unwrap();
    let (a, b) = (
        StoreReader::open(&single).unwrap(),
        StoreReader::open(&merged).unwrap(),
    );
    let c = compare_stores(&a, &b).unwrap();
    assert!(c.identical(), "{c}");
    assert_eq!((c.docs_a, c.docs_b, c.rows_a), (30, 30, a.rows()));
    assert!(c.to_string().ends_with("identical"), "{c}");

    // A missing worker, an extra document and one changed activation are each named.
    let two = base.join("two");
    merge_stores(&two, &workers[..2]).unwrap();
    let c = compare_stores(&a, &StoreReader::open(&two).unwrap()).unwrap();
    assert_eq!(
        c.only_in_a,
        (0..30).filter(|d| d % 3 == 2).collect::<Vec<_>>()
    );
    assert!(c.only_in_b.is_empty() && c.differing.is_empty() && !c.identical());
    let extra = worker(&base, "extra", 0..31, sp.clone());
    let c = compare_stores(&a, &StoreReader::open(&extra).unwrap()).unwrap();
    assert_eq!((c.only_in_a.len(), c.only_in_b.clone()), (0, vec![30]));
    let changed = base.join("changed");
    let mut w = StoreWriter::create(&changed, sp.clone(), SMALL).unwrap();
    for d in 0..30 {
        let mut rows = doc_rows(d, true);
        if d == 17 {
            rows.x.acts = rows.x.acts.copy();
            let _ = rows.x.acts.get(0).get(0).fill_(123.0);
        }
        w.add(rows).unwrap();
    }
    w.finish().unwrap();
    let c = compare_stores(&a, &StoreReader::open(&changed).unwrap()).unwrap();
    assert_eq!(c.differing, vec![17], "{c}");
    assert!(c.to_string().contains("differing 1 [17]"), "{c}");
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn mismatched_stores_refuse_to_merge() {
    let base = tmp("merge-bad");
    let sp = spec(true, StoreDtype::F32);
    let w0 = worker(&base, "w0", 0..10, sp.clone());
    let out = |n: &str| base.join(format!("out-{n}"));
    let refused = |name: &str, other: &PathBuf, what: &str| {
        let err = merge_stores(out(name), &[&w0, other])
            .unwrap_err()
            .to_string();
        let other_name = other.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            err.contains(&other_name) && err.contains(what),
            "{name}: {err}"
        );
        assert!(
            !out(name).exists(),
            "{name}: the output directory was left behind"
        );
    };

    let half = worker(
        &base,
        "half",
        10..20,
        StoreSpec {
            dtype: StoreDtype::F16,
            ..sp.clone()
        },
    );
    refused("dtype", &half, "dtype F32 vs F16");

    let mut other_model = sp.clone();
    other_model.target.as_mut().unwrap().id = "another".into();
    let model = worker(&base, "model", 10..20, other_model);
    refused("model", &model, "target model \"tgt\" vs \"another\"");

    let mut other_point = sp.clone();
    other_point.source.hook_point = "resid_post.3".into();
    let point = worker(&base, "point", 10..20, other_point);
    refused("point", &point, "source hook point");

    let overlap = worker(&base, "overlap", 8..12, sp.clone());
    refused("overlap", &overlap, "document 8 is also in");

    // A store whose collection was interrupted (never finished).
    let partial = base.join("partial");
    {
        let mut w = StoreWriter::create(&partial, sp.clone(), SMALL).unwrap();
        for d in 20..30 {
            w.add(doc_rows(d, true)).unwrap();
        }
        w.flush().unwrap();
    }
    refused("partial", &partial, "incomplete");

    // Checkpoint directories may differ (workers on different hosts).
    let mut moved = sp.clone();
    moved.source.dir = "/elsewhere/src".into();
    let moved = worker(&base, "moved", 30..40, moved);
    merge_stores(out("moved"), &[&w0, &moved]).unwrap();

    let err = merge_stores(out("twice"), &[&w0, &w0])
        .unwrap_err()
        .to_string();
    assert!(err.contains("listed twice"), "{err}");
    let err = merge_stores(&moved, &[&w0]).unwrap_err().to_string();
    assert!(err.contains("already holds a store"), "{err}");
    let err = merge_stores(out("none"), &[base.join("missing")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing"), "{err}");
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn merged_manifests_only_reach_worker_shards() {
    let base = tmp("merge-paths");
    let sp = spec(true, StoreDtype::F32);
    let w0 = worker(&base, "w0", 0..10, sp);
    let out = base.join("merged");
    merge_stores(&out, &[&w0]).unwrap();
    let path = out.join(MANIFEST_FILE);
    let good = std::fs::read_to_string(&path).unwrap();
    let tamper = |from: &str, to: &str, what: &str| {
        assert!(good.contains(from), "{from}");
        std::fs::write(&path, good.replace(from, to)).unwrap();
        let err = StoreReader::open(&out).err().unwrap().to_string();
        assert!(err.contains(what), "{to}: {err}");
    };
    tamper(
        "\"../w0/shard-00000.safetensors\"",
        "\"../w0/../../etc/shard-00000.safetensors\"",
        "merged store lists shard-NNNNN.safetensors files of the stores in merged_from only",
    );
    tamper(
        "\"../w0/shard-00000.safetensors\"",
        "\"../w0/passwd\"",
        "merged_from only",
    );
    tamper(
        "\"../w0/shard-00001.safetensors\"",
        "\"../w0/shard-00000.safetensors\"",
        "listed twice",
    );
    tamper(
        "\"../w0\"\n",
        "\"/tmp/w0\"\n",
        "absolute paths are not allowed",
    );
    tamper(
        "\"format_version\": 2",
        "\"format_version\": 1",
        "merged_from is set",
    );
    tamper(
        "\"format_version\": 2",
        "\"format_version\": 3",
        "format version 3",
    );
    std::fs::write(&path, &good).unwrap();
    StoreReader::open(&out).unwrap();
    std::fs::remove_dir_all(&base).unwrap();
}
