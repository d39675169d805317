//! Train or fit a map between the two models of a paired activation store, print per-epoch metrics and
//! save it (`map.safetensors` + `map.json`).
//!
//! ```text
//! cargo run --release --example train_mapping -- --store store/ --kind autoencoder|affine|ridge|procrustes \
//!     --out map/ [--steps 5000 | --epochs N] [--paper] [--lr 1e-3 --batch-size 256 --grad-accum 1] \
//!     [--weight-decay 0.01] [--schedule constant|cosine|plateau] [--early-stopping 20] [--standardize] \
//!     [--cosine-weight W] [--hidden H] [--alpha A] [--kl-target MODEL_DIR --kl-docs 16]
//! ```
//! The defaults are Rosetta's measured recipe (docs/MAPPING.md: a step budget, early stopping on
//! validation, raw activations); `--paper` starts from the paper's settings instead. A run of fewer than
//! 200 optimiser steps, or a map worse than the mean predictor, ends with a warning.
//! Trained kinds checkpoint into `OUT/checkpoints/` after every epoch; re-running the same command after an
//! interruption resumes there. `--kl-target` also measures KL fidelity through the target model on held-out
//! documents (the store must hold every target token: identical tokenizers, `--filter all`).

mod common;

use anyhow::{bail, Context, Result};
use clap::Parser;
use rosetta::hooks::{HookPoint, LoadOptions, Model};
use rosetta::mapping::*;
use rosetta::store::{Split, StoreReader};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Train or fit a map between the two models of a paired activation store")]
struct Args {
    /// Paired activation store (from the collect example).
    #[arg(long)]
    store: PathBuf,
    /// autoencoder, affine, ridge or procrustes.
    #[arg(long, default_value = "autoencoder")]
    kind: String,
    /// Output map directory.
    #[arg(long)]
    out: PathBuf,
    /// Optimiser-step budget (trained kinds): as many epochs as it takes, early stopping may end sooner.
    /// Default: rosetta_mapping::DEFAULT_STEPS.
    #[arg(long, conflicts_with = "epochs")]
    steps: Option<u64>,
    /// Train exactly this many epochs instead of a step budget.
    #[arg(long)]
    epochs: Option<usize>,
    /// Start from the paper's settings (3 epochs, lr 1e-4, 1024-row batches, no early stopping) instead
    /// of Rosetta's measured defaults; other flags still override.
    #[arg(long)]
    paper: bool,
    /// Peak learning rate (default 1e-3; --paper: 1e-4).
    #[arg(long)]
    lr: Option<f64>,
    /// Rows per micro-batch (default 256; --paper: 1024).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches per optimiser step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// constant, cosine or plateau.
    #[arg(long, default_value = "constant")]
    schedule: String,
    /// Warm-up steps (cosine schedule).
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Share of documents held out for validation.
    #[arg(long, default_value_t = 0.1)]
    validation: f64,
    /// Seed (initialisation, data order, split).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop after N epochs without validation improvement, keeping the best weights (default 20; 0 turns
    /// it off; off without a validation split).
    #[arg(long)]
    early_stopping: Option<usize>,
    /// Weight of a 1 - cosine term in the loss.
    #[arg(long, default_value_t = 0.0)]
    cosine_weight: f64,
    /// Train on standardised activations (folded into the saved map).
    #[arg(long)]
    standardize: bool,
    /// Autoencoder hidden width (default floor(sqrt(d_src * d_tgt))).
    #[arg(long)]
    hidden: Option<i64>,
    /// Autoencoder initialisation: default or identity.
    #[arg(long, default_value = "default")]
    init: String,
    /// Ridge penalty, relative to the mean variance of x.
    #[arg(long, default_value_t = 1e-4)]
    alpha: f64,
    /// Procrustes: also fit a global scale.
    #[arg(long)]
    scaling: bool,
    /// Device: cpu, cuda, cuda:N (default: ROSETTA_DEVICE or auto).
    #[arg(long)]
    device: Option<String>,
    /// Target model directory: also measure KL fidelity on validation documents.
    #[arg(long)]
    kl_target: Option<PathBuf>,
    /// Validation documents for KL fidelity.
    #[arg(long, default_value_t = 16)]
    kl_docs: usize,
}

fn main() -> Result<()> {
    // Before any tensor operation, so libtorch's threads inherit it (see the function's docs).
    rosetta::hooks::device::flush_denormals();
    let args = Args::parse();
    let device = common::device(args.device.as_deref())?;
    let kind: MapKind = args.kind.parse()?;
    let reader = StoreReader::open(&args.store)
        .with_context(|| format!("opening store {}", args.store.display()))?;
    let spec = reader.manifest().spec.clone();
    let Some(target) = spec.target.clone() else {
        bail!(
            "{} holds one model's activations; a map needs a paired store",
            args.store.display()
        );
    };
    println!(
        "store {}: {} rows, {} ({}, d={}) -> {} ({}, d={}), {:?}",
        args.store.display(),
        reader.rows(),
        spec.source.id,
        spec.source.hook_point,
        spec.source.dim,
        target.id,
        target.hook_point,
        target.dim,
        spec.dtype
    );
    let base = if args.paper {
        TrainConfig::paper()
    } else {
        TrainConfig::default()
    };
    let schedule = match args.schedule.as_str() {
        "constant" => Schedule::Constant,
        "cosine" => Schedule::Cosine {
            warmup_steps: args.warmup,
            min_lr_ratio: 0.0,
        },
        "plateau" => Schedule::ReduceOnPlateau {
            factor: 0.5,
            patience: 0,
            min_lr: args.lr.unwrap_or(base.optimizer.lr) * 1e-3,
        },
        s => bail!("unknown --schedule {s:?} (constant, cosine, plateau)"),
    };
    let patience = match args.early_stopping {
        Some(0) => None,
        Some(n) => Some(n),
        None => base.early_stopping_patience,
    };
    let config = TrainConfig {
        epochs: args.epochs.unwrap_or(base.epochs),
        steps: match (args.epochs, args.steps) {
            (Some(_), _) => None,
            (None, Some(s)) => Some(s),
            (None, None) => base.steps,
        },
        batch_size: args.batch_size.unwrap_or(base.batch_size),
        grad_accum: args.grad_accum,
        optimizer: AdamWConfig {
            lr: args.lr.unwrap_or(base.optimizer.lr),
            weight_decay: args.weight_decay,
            ..base.optimizer
        },
        schedule,
        validation_fraction: args.validation,
        split_seed: args.seed,
        seed: args.seed,
        early_stopping_patience: patience.filter(|_| args.validation > 0.0),
        cosine_weight: args.cosine_weight,
        standardize: args.standardize,
        ..base
    };
    let trainer = Trainer::new(&reader, config.clone(), device)?
        .with_checkpoints(args.out.join("checkpoints"));
    let t0 = Instant::now();
    let mut warnings: Vec<String> = Vec::new();
    let (map, training, validation): (AnyMap, serde_json::Value, Option<Metrics>) = if kind
        .is_trained()
    {
        tch::manual_seed(args.seed as i64);
        let map: AnyMap = match kind {
            MapKind::Autoencoder => {
                let init = match args.init.as_str() {
                    "default" => AutoencoderInit::Default,
                    "identity" => AutoencoderInit::Identity,
                    s => bail!("unknown --init {s:?} (default, identity)"),
                };
                Autoencoder::new(spec.source.dim, target.dim, args.hidden, init, device)?.into()
            }
            _ => Affine::new(spec.source.dim, target.dim, device)?.into(),
        };
        println!(
            "{kind} map {} -> {}{}: {} parameters, {config:?}",
            map.d_src(),
            map.d_tgt(),
            map.hidden()
                .map(|h| format!(" (hidden {h})"))
                .unwrap_or_default(),
            map.parameters().iter().map(|t| t.numel()).sum::<usize>()
        );
        println!(
            "\n{:>5} {:>12} {:>12} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>7}",
            "epoch",
            "train loss",
            "val MSE",
            "cosine",
            "cos std",
            "FVU",
            "R2",
            "lr",
            "rows/s",
            "time"
        );
        let mut bar = None;
        let mut per_epoch = 0u64;
        let out = trainer.train(map, &mut |e| {
            match e {
                TrainEvent::Start { start_epoch, batches_per_epoch, train_rows, validation_rows, .. } => {
                    per_epoch = *batches_per_epoch;
                    if *start_epoch > 0 {
                        println!("(resuming after epoch {start_epoch} from {}/checkpoints)", args.out.display());
                    }
                    eprintln!("{train_rows} training rows, {validation_rows} validation rows, {batches_per_epoch} batches per epoch");
                }
                TrainEvent::Batch { batch, .. } => {
                    let b = bar.get_or_insert_with(|| common::progress(per_epoch, "batches"));
                    b.set_position(*batch);
                }
                TrainEvent::Epoch(r) => {
                    if let Some(b) = bar.take() {
                        b.finish_and_clear();
                    }
                    let v = r.validation;
                    let f = |g: fn(&Metrics) -> f64| v.as_ref().map(g).map(|x| format!("{x:.4}")).unwrap_or("-".into());
                    println!(
                        "{:>5} {:>12.5e} {:>12} {:>8} {:>8} {:>8} {:>8} {:>10.2e} {:>10.0} {:>6.1}s",
                        r.epoch + 1,
                        r.train_loss,
                        v.map(|m| format!("{:.5e}", m.mse)).unwrap_or("-".into()),
                        f(|m| m.cosine),
                        f(|m| m.cosine_std.unwrap_or(f64::NAN)),
                        f(|m| m.fvu),
                        f(|m| m.r2),
                        r.lr,
                        r.rows_per_s,
                        r.seconds
                    );
                }
            }
            Control::Continue
        })?;
        println!(
            "stopped: {:?} after {} optimiser steps",
            out.stop, out.steps
        );
        warnings.extend(out.warnings.iter().cloned());
        let training = serde_json::json!({ "config": config, "history": out.history, "stop": out.stop,
            "steps": out.steps, "warnings": out.warnings });
        (out.map, training, out.validation)
    } else {
        let bar = common::progress(reader.rows(), "rows");
        let split = Split::Train(trainer.split());
        let mut m = CrossMoments::new(spec.source.dim, target.dim, Precision::F32, device)?;
        for b in reader.batches(4096, None, split)? {
            let b = b?;
            let y = b.y.context("store batch without y")?;
            m.update(&b.x, &y)?;
            bar.inc(b.x.size()[0] as u64);
        }
        bar.finish_and_clear();
        let (map, fit_cfg) = match kind {
            MapKind::Ridge => {
                let o = RidgeOptions {
                    alpha: args.alpha,
                    relative: true,
                };
                (fit_ridge(&m, &o, device)?, serde_json::to_value(o)?)
            }
            _ => {
                let o = ProcrustesOptions {
                    scaling: args.scaling,
                };
                (fit_procrustes(&m, &o, device)?, serde_json::to_value(o)?)
            }
        };
        let map: AnyMap = map.into();
        let validation = trainer.evaluate(&map)?;
        println!(
            "{kind} fit over {} rows in {:.1}s",
            m.rows(),
            t0.elapsed().as_secs_f64()
        );
        if validation.is_none() {
            println!(
                "no validation split (--validation 0): the map is saved without validation metrics"
            );
        }
        warnings.extend(quality_warnings(None, validation.as_ref()));
        let training = serde_json::json!({ "fit": fit_cfg, "rows": m.rows(), "validation_fraction": args.validation, "split_seed": args.seed, "warnings": warnings });
        (map, training, validation)
    };
    if let Some(v) = validation {
        println!(
            "\nvalidation ({} rows): MSE {:.5e}  cosine {:.4}  standardised cosine {:.4}  FVU {:.4}  R2 {:.4}",
            v.rows,
            v.mse,
            v.cosine,
            v.cosine_std.unwrap_or(f64::NAN),
            v.fvu,
            v.r2
        );
    }
    for w in &warnings {
        eprintln!("\n*** WARNING: {w}");
    }
    let desc = MapDescription {
        source: Some((&spec.source).into()),
        target: Some((&target).into()),
        standardized: args.standardize,
        training: Some(training),
        metrics: validation,
    };
    save_map(&args.out, &map, &desc)?;
    println!(
        "saved {} in {:.1}s total",
        args.out.display(),
        t0.elapsed().as_secs_f64()
    );

    if let Some(dir) = &args.kl_target {
        let model = Model::load(
            dir,
            LoadOptions {
                device,
                ..LoadOptions::default()
            },
        )?;
        let point: HookPoint = target.hook_point.parse()?;
        let (_, sy) = reader.stats(Split::Train(trainer.split()))?;
        let mean = tch::Tensor::from_slice(sy.context("no target statistics")?.mean());
        let docs = KlDoc::from_store(&reader, Split::Validation(trainer.split()));
        let opts = KlOptions {
            docs_per_batch: 4,
            max_docs: Some(args.kl_docs),
        };
        let r = kl_fidelity(&model, point, &map, &mean, docs, &opts)?;
        println!(
            "KL fidelity on {} held-out documents ({} tokens), nats:\n{:>14} {:>9} {:>9} {:>9} {:>9}\n{:>14} {:>9.4} {:>9.4} {:>9.4} {:>9.4}\n{:>14} {:>9.4} {:>9.4} {:>9.4} {:>9.4}",
            r.docs, r.tokens, "", "mean", "median", "p90", "max",
            "mapped", r.mapped.mean, r.mapped.median, r.mapped.p90, r.mapped.max,
            "mean-ablated", r.mean_ablated.mean, r.mean_ablated.median, r.mean_ablated.p90, r.mean_ablated.max
        );
    }
    Ok(())
}
