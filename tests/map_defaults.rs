//! Map defaults a user can trust (issue: fresh machine and downstream use), judged by what maps are for:
//! carrying a direction from one model into another, not by FVU alone.
//!
//! Real zoo store: Qwen2.5-Coder-0.5B-Instruct `resid_post.L_S` -> Qwen2.5-Coder-1.5B-Instruct
//! `resid_post.L_T` over the project's map prompts (`crates/tasks/data/map_prompts.jsonl`, as chats). The
//! contrast set is disjoint from them: harmful and harmless instructions of the refusal dataset
//! (`crates/tasks/data/refusal.jsonl`, train split), read at the last prompt token. The target's native
//! refusal direction is `mean y(harmful) - mean y(harmless)`; the source's, pushed through a map, is
//! `mean M(x(harmful)) - mean M(x(harmless))`. A map carries the direction when the two point the same way.
//!
//! Checked: the default configuration (what `train_mapping --store S --kind autoencoder --out M` runs)
//! beats the mean predictor, raises no warning, and carries the direction at least as well as the
//! issue's best measured recipe (60 epochs, lr 1e-3, 256-row batches, raw: cosine 0.90); the paper's
//! settings on the same store are flagged as under-trained. Needs the zoo (`make models`) unless
//! `ROSETTA_SKIP_ZOO_TESTS=1`.

use anyhow::{Context, Result};
use rosetta::hooks::{zoo, ChatMessage, HookPoint, LoadOptions, Model, Tokenizer};
use rosetta::mapping::*;
use rosetta::store::*;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const SOURCE: &str = "qwen2.5-coder-0.5b-instruct";
const TARGET: &str = "qwen2.5-coder-1.5b-instruct";
const L_S: usize = 13;
const L_T: usize = 8;
/// The best measured direction fidelity (autoencoder, 60 epochs, lr 1e-3, batch 256, raw).
const MEASURED_BEST: f64 = 0.90;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tasks/data")
        .join(name)
}

fn jsonl(path: &Path) -> Result<Vec<serde_json::Value>> {
    std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

fn chat(id: i64, instruction: &str) -> CorpusDoc {
    CorpusDoc::chat(id, vec![ChatMessage::user(instruction)])
}

struct Pair {
    src: Model,
    tgt: Model,
    ts: Tokenizer,
    tt: Tokenizer,
    src_dir: PathBuf,
    tgt_dir: PathBuf,
}

impl Pair {
    fn spec(&self) -> Result<StoreSpec> {
        let entry = |id: &str, dir: &Path, p: HookPoint, dim: i64| -> Result<ModelEntry> {
            Ok(ModelEntry {
                id: id.into(),
                dir: dir.display().to_string(),
                tokenizer_hash: tokenizer_hash(dir)?,
                hook_point: p.to_string(),
                dim,
            })
        };
        Ok(StoreSpec {
            source: entry(
                SOURCE,
                &self.src_dir,
                HookPoint::ResidPost(L_S),
                self.src.d_model(),
            )?,
            target: Some(entry(
                TARGET,
                &self.tgt_dir,
                HookPoint::ResidPost(L_T),
                self.tgt.d_model(),
            )?),
            dtype: StoreDtype::F32,
            alignment: Alignment::Identity,
            seed: 0,
        })
    }

    /// A paired store of `docs` at `dir` (resumed when it is already there, complete or not).
    fn store(
        &self,
        dir: &Path,
        docs: Vec<CorpusDoc>,
        filter: PositionFilter,
    ) -> Result<StoreReader> {
        let mut w = StoreWriter::open_or_resume(dir, self.spec()?, WriterOptions::default())?.0;
        let side = |model, tokenizer, point| ModelSide {
            model,
            tokenizer,
            point,
        };
        let options = CollectOptions {
            filter,
            ..CollectOptions::default()
        };
        let report = collect(
            side(&self.src, &self.ts, HookPoint::ResidPost(L_S)),
            Some(side(&self.tgt, &self.tt, HookPoint::ResidPost(L_T))),
            docs,
            &mut w,
            &options,
            |_| {},
        )?;
        w.finish()?;
        println!(
            "{}: {} documents, {} rows in {:.1}s",
            dir.display(),
            report.docs + report.skipped,
            report.rows,
            report.seconds
        );
        Ok(StoreReader::open(dir)?)
    }
}

/// All rows of a store: `x` `[n, d_src]`, `y` `[n, d_tgt]` (f32).
fn rows(reader: &StoreReader) -> Result<(Tensor, Tensor)> {
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for doc in reader.documents(Split::All) {
        let doc = doc?;
        xs.push(doc.x.to_kind(Kind::Float));
        ys.push(doc.y.context("paired store")?.to_kind(Kind::Float));
    }
    Ok((Tensor::cat(&xs, 0), Tensor::cat(&ys, 0)))
}

fn cosine(a: &Tensor, b: &Tensor) -> f64 {
    Tensor::cosine_similarity(a, b, 0, 1e-12).double_value(&[])
}

/// Direction contrast: harmful and harmless last-token rows in both models.
struct Contrast {
    harmful: (Tensor, Tensor),
    harmless: (Tensor, Tensor),
}

impl Contrast {
    fn native(&self) -> Tensor {
        self.harmful.1.mean_dim(0, false, Kind::Float)
            - self.harmless.1.mean_dim(0, false, Kind::Float)
    }

    /// Cosine between the native direction and the source's pushed through `map` (`M(h+) - M(h-)`).
    fn fidelity(&self, map: &dyn Mapping) -> Result<f64> {
        let _g = tch::no_grad_guard();
        let m =
            |x: &Tensor| -> Result<Tensor> { Ok(map.forward(x)?.mean_dim(0, false, Kind::Float)) };
        let mapped = m(&self.harmful.0)? - m(&self.harmless.0)?;
        Ok(cosine(&mapped, &self.native()))
    }
}

fn train(reader: &StoreReader, config: TrainConfig, d: (i64, i64)) -> Result<TrainOutcome> {
    tch::manual_seed(0);
    let map = Autoencoder::new(d.0, d.1, None, AutoencoderInit::Default, Device::Cpu)?;
    let trainer = Trainer::new(reader, config, Device::Cpu)?;
    Ok(trainer.train(map.into(), &mut |_| Control::Continue)?)
}

#[test]
fn default_map_carries_a_contrast_direction_on_a_real_zoo_store() -> Result<()> {
    let (src_dir, tgt_dir) = match (zoo::find(SOURCE), zoo::find(TARGET)) {
        (Ok(s), Ok(t)) => (s.dir, t.dir),
        (Err(e), _) | (_, Err(e)) => {
            if std::env::var("ROSETTA_SKIP_ZOO_TESTS").is_ok_and(|v| v == "1") {
                eprintln!("skipping: {e}");
                return Ok(());
            }
            return Err(e)
                .context("this test needs the model zoo; set ROSETTA_SKIP_ZOO_TESTS=1 to skip it");
        }
    };
    let load = |d: &Path| Model::load(d, LoadOptions::default());
    let pair = Pair {
        src: load(&src_dir)?,
        tgt: load(&tgt_dir)?,
        ts: Tokenizer::from_dir(&src_dir)?,
        tt: Tokenizer::from_dir(&tgt_dir)?,
        src_dir,
        tgt_dir,
    };
    let work = match std::env::var_os("ROSETTA_TEST_STORE_CACHE") {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("rosetta-map-defaults-{}", std::process::id())),
    };

    let map_docs: Vec<CorpusDoc> = jsonl(&data("map_prompts.jsonl"))?
        .iter()
        .enumerate()
        .map(|(i, v)| chat(i as i64, v["instruction"].as_str().unwrap_or_default()))
        .collect();
    let refusal = jsonl(&data("refusal.jsonl"))?;
    let contrast_docs = |label: &str| -> Vec<CorpusDoc> {
        refusal
            .iter()
            .filter(|v| v["label"] == label && v["split"] == "train")
            .enumerate()
            .map(|(i, v)| chat(i as i64, v["instruction"].as_str().unwrap_or_default()))
            .collect()
    };
    let store = pair.store(&work.join("map"), map_docs, PositionFilter::All)?;
    let contrast = Contrast {
        harmful: rows(&pair.store(
            &work.join("harmful"),
            contrast_docs("harmful"),
            PositionFilter::Last,
        )?)?,
        harmless: rows(&pair.store(
            &work.join("harmless"),
            contrast_docs("harmless"),
            PositionFilter::Last,
        )?)?,
    };
    let d = (pair.src.d_model(), pair.tgt.d_model());
    drop(pair);

    let mut table = vec![];
    let mut report = |name: &str, out: &TrainOutcome| -> Result<f64> {
        let v = out.validation.context("validation metrics")?;
        let f = contrast.fidelity(&out.map)?;
        table.push(format!(
            "{name:<34} {:>6} {:>7.4} {:>7.3} {:>7.3} {:>8.3}   {}",
            out.steps,
            v.fvu,
            v.cosine,
            v.cosine_std.unwrap_or(f64::NAN),
            f,
            out.warnings.len()
        ));
        Ok(f)
    };

    if std::env::var_os("ROSETTA_SWEEP").is_some() {
        // TEMPORARY sweep
        let mk = |steps: Option<u64>,
                  epochs: usize,
                  lr: f64,
                  b: usize,
                  std: bool,
                  pat: Option<usize>,
                  sched: Schedule| TrainConfig {
            steps,
            epochs,
            batch_size: b,
            standardize: std,
            early_stopping_patience: pat,
            schedule: sched,
            optimizer: AdamWConfig {
                lr,
                ..AdamWConfig::default()
            },
            ..TrainConfig::default()
        };
        let c = Schedule::Constant;
        let cos = Schedule::Cosine {
            warmup_steps: 0,
            min_lr_ratio: 0.0,
        };
        let which = std::env::var("ROSETTA_SWEEP").unwrap();
        let configs: Vec<(&str, TrainConfig)> = vec![
            (
                "60ep lr1e-3 b256 raw",
                mk(None, 60, 1e-3, 256, false, None, c),
            ),
            (
                "60ep lr1e-3 b256 std",
                mk(None, 60, 1e-3, 256, true, None, c),
            ),
            (
                "1500 steps lr1e-3 b256 pat20",
                mk(Some(1500), 3, 1e-3, 256, false, Some(20), c),
            ),
            (
                "1500 steps lr1e-3 b256 cos",
                mk(Some(1500), 3, 1e-3, 256, false, None, cos),
            ),
            (
                "3000 steps lr1e-3 b256 cos",
                mk(Some(3000), 3, 1e-3, 256, false, None, cos),
            ),
            (
                "1500 steps lr3e-4 b256",
                mk(Some(1500), 3, 3e-4, 256, false, None, c),
            ),
            (
                "1500 steps lr3e-3 b256 cos",
                mk(Some(1500), 3, 3e-3, 256, false, None, cos),
            ),
        ];
        for (i, (name, cfg)) in configs.into_iter().enumerate() {
            if !which.is_empty() && !which.split(',').any(|w| w == i.to_string()) {
                continue;
            }
            let t = std::time::Instant::now();
            let out = train(&store, cfg, d)?;
            let f = report(name, &out)?;
            println!(
                "{name}: {:.1}s, fidelity {f:.3} steps {} fvu {:?}",
                t.elapsed().as_secs_f64(),
                out.steps,
                out.validation.map(|v| (v.fvu, v.cosine, v.cosine_std))
            );
        }
        let o = {
            let reader = &store;
            let tr = Trainer::new(reader, TrainConfig::default(), Device::Cpu)?;
            let mut m = CrossMoments::new(d.0, d.1, Precision::F32, Device::Cpu)?;
            for b in reader.batches(4096, None, Split::Train(tr.split()))? {
                let b = b?;
                m.update(&b.x, &b.y.unwrap())?;
            }
            let map: AnyMap = fit_ridge(
                &m,
                &RidgeOptions {
                    alpha: 1e-4,
                    relative: true,
                },
                Device::Cpu,
            )?
            .into();
            let v = tr.evaluate(&map)?;
            TrainOutcome {
                map,
                history: vec![],
                stop: StopReason::Completed,
                validation: v,
                steps: 0,
                warnings: vec![],
            }
        };
        report("ridge", &o)?;
        drop(report);
        for row in &table {
            println!("{row}");
        }
        return Ok(());
    }
    let default = train(&store, TrainConfig::default(), d)?;
    let default_fidelity = report("default", &default)?;
    let paper = train(&store, TrainConfig::paper(), d)?;
    report("paper (3 epochs, lr 1e-4, b1024)", &paper)?;

    println!(
        "{:<34} {:>6} {:>7} {:>7} {:>7} {:>8}   warnings",
        "map", "steps", "FVU", "cos", "cos std", "dir cos"
    );
    for row in &table {
        println!("{row}");
    }
    let v = default.validation.context("validation")?;
    assert!(
        v.fvu < 1.0,
        "default map worse than the mean predictor: FVU {}",
        v.fvu
    );
    assert!(
        default.warnings.is_empty(),
        "default map warned: {:?}",
        default.warnings
    );
    assert!(
        default_fidelity >= MEASURED_BEST,
        "default map carries the contrast direction with cosine {default_fidelity:.3} < {MEASURED_BEST}"
    );
    assert!(
        paper.warnings.iter().any(|w| w.contains("optimiser steps")),
        "the paper's settings on a small store should be flagged: {:?}",
        paper.warnings
    );
    if std::env::var_os("ROSETTA_TEST_STORE_CACHE").is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(())
}
