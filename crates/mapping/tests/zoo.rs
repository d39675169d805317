//! Maps between real zoo activations: Qwen2.5-Coder-0.5B `resid_post.13` -> Qwen2.5-Coder-1.5B
//! `resid_post.8` over a small corpus (tests/fixtures/corpus_small.jsonl, about 3.7k tokens): validation
//! FVU well below the mean predictor's, KL through the target below mean ablation on held-out documents,
//! and KL fine-tuning lowering the KL it trains on. Needs the zoo (`make models`) unless
//! `ROSETTA_SKIP_ZOO_TESTS=1`.

mod common;

use rosetta_activation_store::*;
use rosetta_mapping::*;
use rosetta_model_hooks::{zoo, HookPoint, LoadOptions, Model, Tokenizer};
use std::path::PathBuf;
use tch::Device;

fn zoo_dir(name: &str) -> Option<PathBuf> {
    match zoo::find(name) {
        Ok(e) => Some(e.dir),
        Err(e) if std::env::var("ROSETTA_SKIP_ZOO_TESTS").is_ok_and(|v| v == "1") => {
            eprintln!("skipping: {e}");
            None
        }
        Err(e) => {
            panic!("{e}\nthis test needs the model zoo; set ROSETTA_SKIP_ZOO_TESTS=1 to skip it")
        }
    }
}

fn corpus() -> Vec<CorpusDoc> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/corpus_small.jsonl"
    );
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            CorpusDoc::new(i as i64, v["text"].as_str().unwrap())
        })
        .collect()
}

#[test]
fn qwen_half_to_one_and_a_half_billion() {
    let (Some(src_dir), Some(tgt_dir)) = (
        zoo_dir("qwen2.5-coder-0.5b-instruct"),
        zoo_dir("qwen2.5-coder-1.5b-instruct"),
    ) else {
        return;
    };
    let cpu = Device::Cpu;
    let load = |d: &PathBuf| {
        Model::load(
            d,
            LoadOptions {
                device: cpu,
                ..LoadOptions::default()
            },
        )
        .unwrap()
    };
    let (src, tgt) = (load(&src_dir), load(&tgt_dir));
    let (ts, tt) = (
        Tokenizer::from_dir(&src_dir).unwrap(),
        Tokenizer::from_dir(&tgt_dir).unwrap(),
    );
    let (sp, tp) = (HookPoint::ResidPost(13), HookPoint::ResidPost(8));
    let entry = |id: &str, dir: &PathBuf, p: HookPoint, dim: i64| ModelEntry {
        id: id.into(),
        dir: dir.display().to_string(),
        tokenizer_hash: tokenizer_hash(dir).unwrap(),
        hook_point: p.to_string(),
        dim,
    };
    let spec = StoreSpec {
        source: entry("qwen2.5-coder-0.5b-instruct", &src_dir, sp, 896),
        target: Some(entry("qwen2.5-coder-1.5b-instruct", &tgt_dir, tp, 1536)),
        dtype: StoreDtype::F16,
        alignment: Alignment::Identity,
        seed: 0,
    };
    let store_dir = common::tmp("zoo-store");
    let mut w = StoreWriter::create(&store_dir, spec, WriterOptions::default()).unwrap();
    let report = collect(
        ModelSide {
            model: &src,
            tokenizer: &ts,
            point: sp,
        },
        Some(ModelSide {
            model: &tgt,
            tokenizer: &tt,
            point: tp,
        }),
        corpus(),
        &mut w,
        &CollectOptions::default(),
        |_| {},
    )
    .unwrap();
    w.finish().unwrap();
    drop(src);
    let reader = StoreReader::open(&store_dir).unwrap();
    println!(
        "collected {} rows from {} documents",
        report.rows, report.docs
    );
    assert!(reader.rows() > 3000, "a few thousand tokens");

    let cfg = TrainConfig {
        epochs: 6,
        batch_size: 256,
        optimizer: AdamWConfig {
            lr: 1e-3,
            ..AdamWConfig::default()
        },
        validation_fraction: 0.2,
        standardize: true,
        ..TrainConfig::paper()
    };
    let trainer = Trainer::new(&reader, cfg, cpu).unwrap();
    tch::manual_seed(0);
    let ae = Autoencoder::new(896, 1536, None, AutoencoderInit::Default, cpu).unwrap();
    let out = trainer
        .train(ae.into(), &mut |_| Control::Continue)
        .unwrap();
    let v = out.validation.unwrap();
    println!("autoencoder validation: {v:?}");
    assert!(v.fvu < 0.4, "autoencoder FVU {} (mean predictor: 1)", v.fvu);

    // The mean predictor scores FVU 1 on the same rows (a check of the metric on real data).
    let (_, sy) = reader.stats(Split::Train(DocSplit::new(0.2, 0))).unwrap();
    let mean_y = tch::Tensor::from_slice(sy.unwrap().mean());
    let mean_map = Affine::from_parts(
        MapKind::Affine,
        tch::Tensor::zeros([1536, 896], (tch::Kind::Float, cpu)),
        mean_y.to_kind(tch::Kind::Float),
    )
    .unwrap();
    let mv = trainer.evaluate(&mean_map).unwrap().unwrap();
    println!("mean predictor validation: {mv:?}");
    assert!(mv.fvu > 0.95 && v.fvu < 0.4 * mv.fvu);

    // Ridge in one pass over the training split.
    let mut m = CrossMoments::new(896, 1536, Precision::F32, cpu).unwrap();
    for b in reader
        .batches(2048, None, Split::Train(DocSplit::new(0.2, 0)))
        .unwrap()
    {
        let b = b.unwrap();
        m.update(&b.x, b.y.as_ref().unwrap()).unwrap();
    }
    let ridge = fit_ridge(
        &m,
        &RidgeOptions {
            alpha: 1e-2,
            relative: true,
        },
        cpu,
    )
    .unwrap();
    let rv = trainer.evaluate(&ridge).unwrap().unwrap();
    println!("ridge validation: {rv:?}");
    assert!(rv.fvu < 0.5, "ridge FVU {}", rv.fvu);

    // KL through the target on held-out documents.
    let val = Split::Validation(DocSplit::new(0.2, 0));
    let opts = KlOptions {
        docs_per_batch: 4,
        max_docs: Some(8),
    };
    let kl = kl_fidelity(
        &tgt,
        tp,
        &out.map,
        &mean_y,
        KlDoc::from_store(&reader, val),
        &opts,
    )
    .unwrap();
    println!(
        "KL held-out ({} tokens): mapped {:?}, mean-ablated {:?}",
        kl.tokens, kl.mapped, kl.mean_ablated
    );
    assert!(kl.tokens > 300);
    assert!(kl.mapped.mean < 0.75 * kl.mean_ablated.mean);
    assert_eq!(kl.mapped_values.len(), kl.tokens);

    // KL fine-tuning lowers the KL it trains on (two passes over four training documents).
    let train = Split::Train(DocSplit::new(0.2, 0));
    let config = KlTrainConfig {
        epochs: 2,
        optimizer: AdamWConfig {
            lr: 1e-4,
            ..AdamWConfig::default()
        },
        // Backpropagating through 20 layers of a 1.5B model is slow on CPU: keep it to 4 documents.
        batches: KlOptions {
            docs_per_batch: 2,
            max_docs: Some(4),
        },
    };
    let history = fine_tune_kl(
        &tgt,
        tp,
        &out.map,
        || KlDoc::from_store(&reader, train),
        &config,
        &mut |_, _, _| {},
    )
    .unwrap();
    println!("KL fine-tuning, mean training KL per epoch: {history:?}");
    assert!(history[1] < history[0], "{history:?}");
    let _ = std::fs::remove_dir_all(&store_dir);
}
