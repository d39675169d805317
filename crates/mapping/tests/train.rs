//! The trainer on synthetic stores: recovery, autoencoder vs affine, schedules, early stopping,
//! checkpoint/resume, save/load.

mod common;

use common::*;
use rosetta_activation_store::StoreReader;
use rosetta_mapping::*;
use tch::{Device, Kind, Tensor};

const CPU: Device = Device::Cpu;

fn linear_teacher(d_src: i64, d_tgt: i64, noise: f64) -> impl Fn(&Tensor) -> Tensor {
    tch::manual_seed(100);
    let a = Tensor::randn([d_tgt, d_src], (Kind::Float, CPU)) / (d_src as f64).sqrt();
    let b = Tensor::randn([d_tgt], (Kind::Float, CPU));
    move |x: &Tensor| {
        x.matmul(&a.tr()) + &b + Tensor::randn([x.size()[0], d_tgt], (Kind::Float, CPU)) * noise
    }
}

fn relu_teacher(d_src: i64, h: i64, d_tgt: i64) -> impl Fn(&Tensor) -> Tensor {
    tch::manual_seed(200);
    let w1 = Tensor::randn([h, d_src], (Kind::Float, CPU)) / (d_src as f64).sqrt();
    let w2 = Tensor::randn([d_tgt, h], (Kind::Float, CPU)) / (h as f64).sqrt();
    move |x: &Tensor| x.matmul(&w1.tr()).relu().matmul(&w2.tr())
}

fn config(epochs: usize, lr: f64, batch: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: batch,
        optimizer: AdamWConfig {
            lr,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        },
        ..TrainConfig::paper()
    }
}

fn train(reader: &StoreReader, map: AnyMap, cfg: TrainConfig) -> TrainOutcome {
    Trainer::new(reader, cfg, CPU)
        .unwrap()
        .train(map, &mut |_| Control::Continue)
        .unwrap()
}

#[test]
fn affine_training_recovers_a_linear_map() {
    let _serial = serial();
    let dir = tmp("affine");
    let reader = write_store(
        &dir,
        16,
        12,
        80,
        100,
        1,
        1 << 16,
        linear_teacher(16, 12, 0.01),
    );
    tch::manual_seed(0);
    let map = Affine::new(16, 12, CPU).unwrap();
    let out = train(&reader, map.into(), config(8, 2e-2, 64));
    let v = out.validation.unwrap();
    println!(
        "{:?}",
        out.history
            .iter()
            .map(|r| r.validation.unwrap().fvu)
            .collect::<Vec<_>>()
    );
    assert_eq!(out.stop, StopReason::Completed);
    assert_eq!(out.history.len(), 8);
    assert!(v.fvu < 1e-3, "FVU {}", v.fvu);
    assert!(v.r2 > 0.99 && v.cosine > 0.99);
    // Ridge on the same store, for comparison: at the noise floor.
    let mut m = CrossMoments::new(16, 12, Precision::F32, CPU).unwrap();
    for b in reader
        .batches(1000, None, rosetta_activation_store::Split::All)
        .unwrap()
    {
        let b = b.unwrap();
        m.update(&b.x, b.y.as_ref().unwrap()).unwrap();
    }
    let ridge = fit_ridge(&m, &RidgeOptions::default(), CPU).unwrap();
    let rv = Trainer::new(&reader, config(1, 1e-3, 128), CPU)
        .unwrap()
        .evaluate(&ridge)
        .unwrap()
        .unwrap();
    assert!(rv.fvu < 2e-4, "ridge FVU {}", rv.fvu);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn autoencoder_beats_affine_on_a_relu_map() {
    let _serial = serial();
    let dir = tmp("relu");
    let reader = write_store(&dir, 16, 12, 80, 100, 2, 1 << 16, relu_teacher(16, 24, 12));
    tch::manual_seed(0);
    let ae = Autoencoder::new(16, 12, Some(64), AutoencoderInit::Default, CPU).unwrap();
    let ae_out = train(&reader, ae.into(), config(10, 3e-3, 64));
    tch::manual_seed(0);
    let aff = Affine::new(16, 12, CPU).unwrap();
    let aff_out = train(&reader, aff.into(), config(10, 3e-3, 64));
    let (a, l) = (
        ae_out.validation.unwrap().fvu,
        aff_out.validation.unwrap().fvu,
    );
    println!("autoencoder FVU {a:.4}, affine FVU {l:.4}");
    assert!(a < 0.5 * l, "autoencoder {a} vs affine {l}");
    assert!(l > 0.1, "a ReLU map is not affine: affine FVU {l}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn weights(m: &AnyMap) -> Vec<Tensor> {
    m.named_tensors().into_iter().map(|(_, t)| t).collect()
}

#[test]
fn resume_after_interruption_gives_the_uninterrupted_weights() {
    let _serial = serial();
    let dir = tmp("resume-store");
    let reader = write_store(&dir, 8, 6, 40, 50, 3, 1 << 14, relu_teacher(8, 12, 6));
    assert!(reader.manifest().shards.len() > 3, "several shards");
    let mut cfg = config(3, 3e-3, 32);
    cfg.schedule = Schedule::Cosine {
        warmup_steps: 10,
        min_lr_ratio: 0.1,
    };
    cfg.grad_accum = 2;
    cfg.standardize = true;
    cfg.early_stopping_patience = Some(5);
    let fresh = || -> AnyMap {
        tch::manual_seed(7);
        Autoencoder::new(8, 6, None, AutoencoderInit::Default, CPU)
            .unwrap()
            .into()
    };
    let ck_a = tmp("resume-a");
    let full = Trainer::new(&reader, cfg.clone(), CPU)
        .unwrap()
        .with_checkpoints(&ck_a)
        .train(fresh(), &mut |_| Control::Continue)
        .unwrap();
    assert_eq!(full.stop, StopReason::Completed);

    let ck_b = tmp("resume-b");
    let mut seen = 0;
    let part = Trainer::new(&reader, cfg.clone(), CPU)
        .unwrap()
        .with_checkpoints(&ck_b)
        .train(fresh(), &mut |e| match e {
            TrainEvent::Batch {
                epoch: 1, batch: 5, ..
            } => Control::Stop,
            _ => {
                seen += 1;
                Control::Continue
            }
        })
        .unwrap();
    assert!(seen > 0);
    assert_eq!(part.stop, StopReason::Interrupted);
    assert_eq!(part.history.len(), 1);
    // Resume with a different initialisation: the checkpoint's weights must win.
    tch::manual_seed(12345);
    let other: AnyMap = Autoencoder::new(8, 6, None, AutoencoderInit::Default, CPU)
        .unwrap()
        .into();
    let mut start = None;
    let resumed = Trainer::new(&reader, cfg.clone(), CPU)
        .unwrap()
        .with_checkpoints(&ck_b)
        .train(other, &mut |e| {
            if let TrainEvent::Start { start_epoch, .. } = e {
                start = Some(*start_epoch);
            }
            Control::Continue
        })
        .unwrap();
    assert_eq!(start, Some(1));
    assert_eq!(resumed.stop, StopReason::Completed);
    assert_eq!(resumed.history.len(), 3);
    for (a, b) in weights(&full.map).iter().zip(weights(&resumed.map)) {
        assert!(
            a.equal(&b),
            "resumed weights differ from the uninterrupted run's"
        );
    }
    assert_eq!(full.history[2].validation, resumed.history[2].validation);

    // A checkpoint of another configuration is refused, not overwritten.
    let mut other_cfg = cfg.clone();
    other_cfg.optimizer.lr = 1e-2;
    let err = Trainer::new(&reader, other_cfg, CPU)
        .unwrap()
        .with_checkpoints(&ck_b)
        .train(fresh(), &mut |_| Control::Continue)
        .unwrap_err()
        .to_string();
    assert!(err.contains("different training configuration"), "{err}");

    // A checkpoint from before the current layout (format 2: moments in `parameters()` layout) is
    // refused with its format named, not loaded into transposed moments.
    let json = ck_b.join("checkpoint.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    state.as_object_mut().unwrap().remove("format");
    std::fs::write(&json, serde_json::to_string(&state).unwrap()).unwrap();
    let err = Trainer::new(&reader, cfg.clone(), CPU)
        .unwrap()
        .with_checkpoints(&ck_b)
        .train(fresh(), &mut |_| Control::Continue)
        .unwrap_err()
        .to_string();
    assert!(err.contains("checkpoint format 0"), "{err}");
    for d in [dir, ck_a, ck_b] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn early_stopping_keeps_the_best_epoch() {
    let _serial = serial();
    let dir = tmp("early");
    // y is noise independent of x: a large rate overfits, validation gets worse.
    let reader = write_store(&dir, 8, 4, 30, 20, 4, 1 << 14, |x: &Tensor| {
        Tensor::randn([x.size()[0], 4], (Kind::Float, CPU))
    });
    let mut cfg = config(30, 3e-2, 16);
    cfg.validation_fraction = 0.3;
    cfg.early_stopping_patience = Some(2);
    tch::manual_seed(0);
    let map = Autoencoder::new(8, 4, Some(64), AutoencoderInit::Default, CPU).unwrap();
    let out = train(&reader, map.into(), cfg);
    assert_eq!(out.stop, StopReason::EarlyStopped);
    assert!(out.history.len() < 30);
    let best = out
        .history
        .iter()
        .min_by(|a, b| {
            a.validation_loss
                .unwrap()
                .total_cmp(&b.validation_loss.unwrap())
        })
        .unwrap();
    assert_eq!(
        out.history.len(),
        best.epoch + 1 + 2,
        "stops `patience` epochs after the best"
    );
    approx::assert_relative_eq!(
        out.validation.unwrap().mse,
        best.validation.unwrap().mse,
        max_relative = 1e-9
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reduce_on_plateau_lowers_the_rate() {
    let _serial = serial();
    let dir = tmp("plateau");
    let reader = write_store(&dir, 8, 4, 30, 20, 5, 1 << 14, |x: &Tensor| {
        Tensor::randn([x.size()[0], 4], (Kind::Float, CPU))
    });
    let mut cfg = config(8, 3e-2, 16);
    cfg.validation_fraction = 0.3;
    cfg.schedule = Schedule::ReduceOnPlateau {
        factor: 0.5,
        patience: 0,
        min_lr: 1e-3,
    };
    tch::manual_seed(0);
    let map = Autoencoder::new(8, 4, Some(64), AutoencoderInit::Default, CPU).unwrap();
    let out = train(&reader, map.into(), cfg);
    let lrs: Vec<f64> = out.history.iter().map(|r| r.lr).collect();
    println!("{lrs:?}");
    assert!(lrs.windows(2).all(|w| w[1] <= w[0]));
    assert!(*lrs.last().unwrap() < 3e-2 && *lrs.last().unwrap() >= 1e-3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn schedules_and_config_errors() {
    let _serial = serial();
    approx::assert_relative_eq!(cosine_lr(1.0, 0, 0, 100, 0.0), 1.0);
    approx::assert_relative_eq!(cosine_lr(1.0, 50, 0, 100, 0.0), 0.5, epsilon = 1e-12);
    approx::assert_relative_eq!(cosine_lr(1.0, 100, 0, 100, 0.1), 0.1, epsilon = 1e-12);
    approx::assert_relative_eq!(cosine_lr(1.0, 4, 10, 100, 0.0), 0.5);
    let bad = [
        TrainConfig {
            epochs: 0,
            ..TrainConfig::default()
        },
        TrainConfig {
            batch_size: 0,
            ..TrainConfig::default()
        },
        TrainConfig {
            validation_fraction: 1.0,
            ..TrainConfig::default()
        },
        TrainConfig {
            validation_fraction: 0.0,
            early_stopping_patience: Some(1),
            ..TrainConfig::default()
        },
        TrainConfig {
            optimizer: AdamWConfig {
                lr: -1.0,
                ..AdamWConfig::default()
            },
            ..TrainConfig::default()
        },
    ];
    for c in bad {
        assert!(
            matches!(c.validate(), Err(MappingError::Config(_))),
            "{c:?}"
        );
    }
    let dir = tmp("errors");
    let reader = write_store(&dir, 8, 4, 4, 10, 6, 1 << 14, |x: &Tensor| {
        x.narrow(1, 0, 4)
    });
    let wrong = Affine::new(5, 4, CPU).unwrap();
    let err = Trainer::new(&reader, TrainConfig::default(), CPU)
        .unwrap()
        .train(wrong.into(), &mut |_| Control::Continue)
        .unwrap_err()
        .to_string();
    assert!(err.contains("5 -> 4") && err.contains("8 -> 4"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn save_load_round_trip_is_bit_exact_and_checks_the_pair() {
    let _serial = serial();
    let dir = tmp("save");
    tch::manual_seed(4);
    let map = Autoencoder::new(10, 6, None, AutoencoderInit::Default, CPU).unwrap();
    let src = Endpoint {
        id: "qwen-0.5b".into(),
        tokenizer_hash: "h1".into(),
        hook_point: "resid_post.13".into(),
        dim: 10,
    };
    let tgt = Endpoint {
        id: "qwen-1.5b".into(),
        tokenizer_hash: "h1".into(),
        hook_point: "resid_post.8".into(),
        dim: 6,
    };
    let desc = MapDescription {
        source: Some(src.clone()),
        target: Some(tgt.clone()),
        training: Some(serde_json::to_value(TrainConfig::default()).unwrap()),
        ..MapDescription::default()
    };
    let info = save_map(&dir, &map, &desc).unwrap();
    assert_eq!(info.hidden, Some(7));
    let loaded = SavedMap::load_for(&dir, &src, &tgt, CPU).unwrap();
    assert_eq!(loaded.info, info);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("map.safetensors"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644, "maps are readable by other users");
    }
    for ((n1, a), (n2, b)) in map.named_tensors().iter().zip(loaded.map.named_tensors()) {
        assert_eq!(n1, &n2);
        assert!(a.equal(&b), "{n1} differs after the round trip");
    }
    // Wrong pair: every differing field is named.
    let other = Endpoint {
        id: "smollm2".into(),
        hook_point: "resid_post.15".into(),
        ..src.clone()
    };
    let err = SavedMap::load_for(&dir, &other, &tgt, CPU)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"qwen-0.5b\", not \"smollm2\"")
            && err.contains("resid_post.13, not resid_post.15"),
        "{err}"
    );
    let wide = Endpoint {
        dim: 12,
        ..tgt.clone()
    };
    let err = SavedMap::load_for(&dir, &src, &wide, CPU)
        .unwrap_err()
        .to_string();
    assert!(err.contains("target width is 6"), "{err}");
    // Saving with a description of the wrong width is refused.
    assert!(save_map(
        tmp("save-bad"),
        &map,
        &MapDescription {
            source: Some(wide),
            ..MapDescription::default()
        }
    )
    .is_err());
    // A corrupted tensors file is refused by checksum.
    let path = dir.join("map.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let err = SavedMap::load(&dir, CPU).unwrap_err().to_string();
    assert!(err.contains("checksum"), "{err}");
    let err = SavedMap::load(tmp("nothing"), CPU).unwrap_err().to_string();
    assert!(err.contains("not a map directory"), "{err}");
    // Affine kinds round-trip with their kind.
    let ridge = Affine::from_parts(
        MapKind::Ridge,
        Tensor::randn([3, 2], (Kind::Float, CPU)),
        Tensor::randn([3], (Kind::Float, CPU)),
    )
    .unwrap();
    let d2 = tmp("save-ridge");
    save_map(&d2, &ridge, &MapDescription::default()).unwrap();
    let l2 = SavedMap::load(&d2, CPU).unwrap();
    assert_eq!(l2.map.kind(), MapKind::Ridge);
    assert!(l2.map.named_tensors()[0].1.equal(ridge.weight()));
    for d in [dir, d2] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A store of 8 documents: a 10% hash split is often empty; the trainer's split always validates on at
/// least one document, a closed-form fit then has metrics, and a 1-document store is refused up front.
#[test]
fn tiny_stores_get_a_validation_document_or_a_clear_error() {
    let _serial = serial();
    let dir = tmp("tiny");
    let reader = write_store(&dir, 6, 3, 8, 5, 11, 1 << 14, |x: &Tensor| {
        x.narrow(1, 0, 3) * 2.0
    });
    assert_eq!(reader.doc_ids().unwrap(), (0..8).collect::<Vec<i64>>());
    let mut moved = 0;
    for seed in 0..16u64 {
        let hash_only =
            validation_docs(&reader, rosetta_activation_store::DocSplit::new(0.1, seed));
        let split = reader.doc_split(0.1, seed).unwrap();
        let n = validation_docs(&reader, split);
        assert!(
            (1..8).contains(&n),
            "seed {seed}: {n} of 8 documents in validation"
        );
        if hash_only == 0 {
            assert_eq!(n, 1, "seed {seed}: exactly one document moved");
            assert!(split.moved.is_some());
            moved += 1;
        } else {
            assert_eq!(
                (n, split.moved),
                (hash_only, None),
                "seed {seed}: a non-empty split is untouched"
            );
        }
    }
    assert!(
        moved > 0,
        "some seed leaves the 10% hash split of 8 documents empty"
    );
    // Nearly everything in validation: one document stays for training.
    let split = reader.doc_split(0.99, 3).unwrap();
    assert_eq!(validation_docs(&reader, split), 7);

    // The closed-form path of `train_mapping`: fit on the training part, then validate.
    let cfg = TrainConfig {
        validation_fraction: 0.1,
        ..TrainConfig::default()
    };
    let trainer = Trainer::new(&reader, cfg, CPU).unwrap();
    let mut m = CrossMoments::new(6, 3, Precision::F64, CPU).unwrap();
    for b in reader
        .batches(
            64,
            None,
            rosetta_activation_store::Split::Train(trainer.split()),
        )
        .unwrap()
    {
        let b = b.unwrap();
        m.update(&b.x, &b.y.unwrap()).unwrap();
    }
    let ridge: AnyMap = fit_ridge(&m, &RidgeOptions::default(), CPU).unwrap().into();
    let v = trainer
        .evaluate(&ridge)
        .unwrap()
        .expect("a validation split");
    assert!(v.rows >= 5 && v.fvu < 1e-3, "{v:?}");
    // Without a validation split there is nothing to evaluate, and that is not an error.
    let none = Trainer::new(
        &reader,
        TrainConfig {
            validation_fraction: 0.0,
            early_stopping_patience: None,
            ..TrainConfig::default()
        },
        CPU,
    )
    .unwrap();
    assert!(none.evaluate(&ridge).unwrap().is_none());
    let _ = std::fs::remove_dir_all(&dir);

    let one = tmp("one-doc");
    let reader = write_store(&one, 6, 3, 1, 40, 12, 1 << 14, |x: &Tensor| {
        x.narrow(1, 0, 3)
    });
    let err = Trainer::new(&reader, TrainConfig::default(), CPU)
        .err()
        .expect("one document cannot be split")
        .to_string();
    assert!(
        err.contains("1 document(s)") && err.contains("at least two"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&one);
}

/// Validation documents of a split.
fn validation_docs(reader: &StoreReader, split: rosetta_activation_store::DocSplit) -> usize {
    reader
        .doc_ids()
        .unwrap()
        .into_iter()
        .filter(|&d| split.is_validation(d))
        .count()
}

/// The step budget sets the epoch count from the store's size; the paper's settings on a small store and a
/// map worse than the mean predictor are flagged.
#[test]
fn step_budget_and_quality_warnings() {
    let _serial = serial();
    let cfg = TrainConfig {
        steps: Some(1000),
        ..TrainConfig::default()
    };
    assert_eq!(cfg.epochs_for(7), 143);
    assert_eq!(cfg.epochs_for(5000), 1);
    assert_eq!(TrainConfig::paper().epochs_for(7), 3);
    assert!(TrainConfig {
        steps: Some(0),
        ..TrainConfig::default()
    }
    .validate()
    .is_err());

    let dir = tmp("budget");
    // 12 documents of 40 rows: ~430 training rows, 2 steps per epoch at 256 rows.
    let reader = write_store(&dir, 8, 4, 12, 40, 13, 1 << 16, linear_teacher(8, 4, 0.0));
    let budget = TrainConfig {
        steps: Some(60),
        early_stopping_patience: None,
        ..TrainConfig::default()
    };
    let out = train(&reader, Affine::new(8, 4, CPU).unwrap().into(), budget);
    assert!(out.steps >= 60 && out.steps < 64, "{} steps", out.steps);
    assert!(
        out.warnings.iter().any(|w| w.contains("optimiser steps")),
        "{:?}",
        out.warnings
    );

    let paper = train(
        &reader,
        Affine::new(8, 4, CPU).unwrap().into(),
        TrainConfig::paper(),
    );
    assert_eq!(paper.steps, 3, "one 1024-row batch per epoch, 3 epochs");
    assert!(
        paper
            .warnings
            .iter()
            .any(|w| w.contains("3 optimiser steps")),
        "{:?}",
        paper.warnings
    );

    let good = train(
        &reader,
        Affine::new(8, 4, CPU).unwrap().into(),
        TrainConfig::default(),
    );
    assert!(good.steps >= MIN_TRUSTED_STEPS);
    assert!(good.warnings.is_empty(), "{:?}", good.warnings);
    let v = good.validation.unwrap();
    assert!(
        v.fvu < 0.05 && v.cosine_std.unwrap() > 0.98,
        "{v:?} after {} steps, {:?}",
        good.steps,
        good.stop
    );

    let bad = Metrics {
        rows: 10,
        mse: 1.0,
        cosine: 0.1,
        fvu: 1.08,
        r2: -0.3,
        cosine_std: Some(0.0),
    };
    let w = quality_warnings(None, Some(&bad));
    assert!(
        w.len() == 1 && w[0].contains("worse than its mean"),
        "{w:?}"
    );
    assert!(quality_warnings(Some(500), Some(&v)).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
