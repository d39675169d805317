//! Map defaults a user can trust (issue: fresh machine and downstream use), judged by what maps are for:
//! carrying a direction from one model into another, not by FVU alone.
//!
//! Real zoo store: Qwen2.5-Coder-0.5B-Instruct `resid_post.13` -> Qwen2.5-Coder-1.5B-Instruct `resid_post.8`
//! (the paper's pair) over chats: the project's generic map prompts (`crates/tasks/data/map_prompts.jsonl`)
//! plus the refusal dataset's validation and test instructions (`crates/tasks/data/refusal.jsonl`), so the
//! map sees the kind of text the direction lives on. The contrast set is disjoint from all of them: the
//! refusal set's train split, read at the last prompt token. The target's native direction is
//! `mean y(harmful) - mean y(harmless)`; the source's, pushed through a map, `mean M(x(harmful)) -
//! mean M(x(harmless))`. A map carries the direction when the two point the same way (cosine).
//!
//! Checked: the default configuration (what `train_mapping --store S --kind autoencoder --out M` runs)
//! beats the mean predictor, raises no warning, and carries the direction as well as the best
//! recipe (60 epochs, lr 1e-3, 256-row batches, raw activations) trained here on the same store; the
//! paper's settings on it are flagged as under-trained. Needs the zoo (`make models`) unless
//! `ROSETTA_SKIP_ZOO_TESTS=1`; `ROSETTA_TEST_STORE_CACHE=DIR` keeps the stores between runs.

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
/// How far below the 60-epoch recipe's direction cosine the default may land (measured on this store:
/// 0.709 vs 0.711 collected in one run, 0.730 vs 0.736 on a resumed collection; docs/MAPPING.md).
const TOLERANCE: f64 = 0.02;
/// The default must carry the direction at least this well on this store (measured 0.71-0.73; maps trained
/// on generic text only reach 0.42-0.46, the paper's settings 0.03).
const FLOOR: f64 = 0.65;

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
    // In-domain map data: the refusal set's validation and test instructions (never the contrast set).
    let n = map_docs.len() as i64;
    let mut map_docs = map_docs;
    for (k, v) in refusal.iter().filter(|v| v["split"] != "train").enumerate() {
        map_docs.push(chat(
            n + k as i64,
            v["instruction"].as_str().unwrap_or_default(),
        ));
    }
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
    println!(
        "map store: {} rows; contrast: 120 + 120 prompts",
        store.rows()
    );

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

    let default = train(&store, TrainConfig::default(), d)?;
    let default_fidelity = report("default", &default)?;
    // The best measured recipe: 60 epochs, lr 1e-3, 256-row batches, raw activations.
    let reference = TrainConfig {
        epochs: 60,
        steps: None,
        early_stopping_patience: None,
        ..TrainConfig::default()
    };
    let reference = train(&store, reference, d)?;
    let reference_fidelity = report("60 epochs, lr 1e-3, b256, raw", &reference)?;
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
        default_fidelity >= reference_fidelity - TOLERANCE && default_fidelity >= FLOOR,
        "default map carries the contrast direction with cosine {default_fidelity:.3}; the 60-epoch \
         recipe reaches {reference_fidelity:.3}"
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
