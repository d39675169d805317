//! The paper's refusal experiment, honestly: find the refusal direction in a small model, carry it into a
//! larger one through a learned map, and see whether it still makes the larger model refuse (added) and
//! stop refusing (ablated), next to the larger model's own direction and a random vector of the same norm.
//!
//! ```text
//! cargo run --release --example refusal_transfer -- [--source qwen2.5-coder-0.5b-instruct] \
//!     [--target qwen2.5-coder-1.5b-instruct] [--out runs/refusal_transfer] [--source-layer L --target-layer L] \
//!     [--maps ridge,affine,autoencoder] [--alpha A] [--map-data F] [--generic-data F] [--vector-data F] \
//!     [--harmful-test F] [--harmless-test F]
//! ```
//!
//! Three disjoint prompt sets, each a JSONL file a user can replace (rows `{"instruction": ...}`,
//! `{"text": ...}` or `{"messages": [...]}`; vector and test rows carry `"label": "harmful" | "harmless"`; rows
//! with a `"split"` field are filtered to the split each set needs — `train` for vectors, `validation` for
//! choosing layers and strength, `test` for the test — so one file can hold all three):
//! - **map data** (default `crates/tasks/data/refusal_map.jsonl`, harmful and harmless requests written for
//!   mapping only): paired activations of both models at `resid_pre` of the chosen layers, every token of
//!   the chat, validation split by document; the maps (ridge, affine, autoencoder) are fitted on them. One
//!   more ridge map on generic instructions only (`crates/tasks/data/map_prompts.jsonl`, no harmful request)
//!   shows what the map data does.
//! - **vector data** (default `crates/tasks/data/refusal.jsonl`, train split): the source's refusal
//!   direction (harmful minus harmless means over the post-instruction tokens, Arditi et al.), the target's
//!   native direction from the same prompts (the reference), and the transferred ones (mapped contrast).
//! - **test** (the same file's test split): induced refusal on harmless prompts with each vector added at
//!   every position of its layer, refusal left on harmful prompts with each direction ablated at every layer,
//!   judged by the eval crate's refusal phrases in greedy completions.
//!
//! Layers: given, or chosen by Arditi's selection on the validation split (slow on a CPU: minutes per
//! model). Strength: given (the same for every vector), or chosen per vector as the smallest of 1, 2, 3,
//! 4, 6, 8 at which it makes half of the validation harmless prompts refuse — what a user of a transferred
//! vector can do in the target without its native direction; the random floor takes the strength of the
//! transferred vector it is norm-matched to.
//!
//! Everything lands in `--out`: `stores/`, `maps/`, `vectors/`, `cache/` (completions, by a key of everything
//! they depend on) and `report.{json,md}` with plots. A second run reuses all of it.

mod common;

use anyhow::{bail, Context, Result};
use clap::Parser;
use common::pairs::{get_map, load_side, paired_store, Side, RIDGE};
use rosetta::eval::plot::{bar_chart, histogram, BarChart, Histogram};
use rosetta::eval::report::{Cell, Section, Table};
use rosetta::eval::{is_refusal, perplexity, rouge};
use rosetta::hooks::weights::write_file_atomic;
use rosetta::hooks::{
    Batch, ChatMessage, GenerateOptions, HookPoint, Hooks, PaddingSide, Positions, Tokenizer,
};
use rosetta::mapping::{
    fit_ridge, kl_fidelity, CrossMoments, KlDoc, KlOptions, MapKind, Mapping, Metrics, Precision,
    SavedMap, TrainConfig, Trainer,
};
use rosetta::steering::{
    ablate_direction, activations_at, add_vector, encode_all, mean_difference, refusal_candidates,
    select_refusal_direction, AblationScope, Contrast, Fidelity, InduceThreshold, MappedPair,
    Method, ModelIdentity, PositionRule, Prompt, Provenance, Recipe, RefusalConfig, SteeringVector,
    Strength, Transfer, TransferData, VectorEntry, Where,
};
use rosetta::store::{Split, StoreReader};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Kind, Tensor};

#[derive(Parser, Debug, Clone, Serialize)]
#[command(
    about = "Carry a refusal direction from a small model to a larger one through a learned map"
)]
struct Args {
    /// Source model (zoo name or checkpoint directory).
    #[arg(long, default_value = "qwen2.5-coder-0.5b-instruct")]
    source: String,
    /// Target model (zoo name or checkpoint directory; it must share the source's tokenizer).
    #[arg(long, default_value = "qwen2.5-coder-1.5b-instruct")]
    target: String,
    /// Source layer (`resid_pre`); default: chosen by Arditi's selection on the validation split.
    #[arg(long)]
    source_layer: Option<usize>,
    /// Target layer (`resid_pre`); default: chosen by Arditi's selection on the validation split.
    #[arg(long)]
    target_layer: Option<usize>,
    /// Run directory (reused by a second run).
    #[arg(long, default_value = "runs/refusal_transfer")]
    out: PathBuf,
    /// Map data (JSONL); default crates/tasks/data/refusal_map.jsonl.
    #[arg(long)]
    map_data: Option<PathBuf>,
    /// Generic map data for the labelled generic-text row (JSONL); default crates/tasks/data/map_prompts.jsonl.
    #[arg(long)]
    generic_data: Option<PathBuf>,
    /// Leave out the generic-text map.
    #[arg(long)]
    no_generic: bool,
    /// Vector data (labelled JSONL, train split); default crates/tasks/data/refusal.jsonl.
    #[arg(long)]
    vector_data: Option<PathBuf>,
    /// Harmful test prompts (JSONL, test split); default crates/tasks/data/refusal.jsonl.
    #[arg(long)]
    harmful_test: Option<PathBuf>,
    /// Harmless test prompts (JSONL, test split); default crates/tasks/data/refusal.jsonl.
    #[arg(long)]
    harmless_test: Option<PathBuf>,
    /// Map kinds fitted on the map data: ridge, affine, autoencoder (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ridge,affine,autoencoder"
    )]
    maps: Vec<String>,
    /// Use at most this many map-data documents (default: all).
    #[arg(long)]
    map_docs: Option<usize>,
    /// Vector-data prompts per label.
    #[arg(long, default_value_t = 120)]
    vector_prompts: usize,
    /// Validation prompts per label (layer and strength selection).
    #[arg(long, default_value_t = 40)]
    selection_prompts: usize,
    /// Test prompts per label.
    #[arg(long, default_value_t = 40)]
    test_prompts: usize,
    /// Strength every vector is added with (default: chosen per vector on the validation split).
    #[arg(long)]
    alpha: Option<f64>,
    /// New tokens per test completion.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Optimiser steps for the trained maps (affine, autoencoder).
    #[arg(long, default_value_t = 2000)]
    train_steps: u64,
    /// Prompts (half harmful, half harmless test prompts) for mapped completions.
    #[arg(long, default_value_t = 16)]
    completions: usize,
    /// Held-out map-data documents for the KL of mapped vs mean-ablated activations.
    #[arg(long, default_value_t = 24)]
    kl_docs: usize,
    /// Also evaluate the offset and linear recipes' effects (their fidelity is always reported).
    #[arg(long)]
    all_recipes: bool,
    /// Instead of the experiment: for every pair of layers `S1-S2:T1-T2` (`resid_pre`), fit a ridge map on
    /// the map data in memory and print how well it carries the source's refusal direction to the target's
    /// (cosine to native), then stop. One forward pass per model; picks the layers to pass.
    #[arg(long, value_name = "S1-S2:T1-T2")]
    sweep_layers: Option<String>,
    /// Prompts per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Seed (random baselines, map initialisation and validation split).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device: auto, cpu, cuda, cuda:N (default: $ROSETTA_DEVICE or auto).
    #[arg(long)]
    device: Option<String>,
}

// ---------------------------------------------------------------------------------------------- data

/// One prompt of an input file.
#[derive(Debug, Clone)]
struct InputRow {
    prompt: Prompt,
    label: Option<String>,
    split: Option<String>,
}

fn data_file(arg: &Option<PathBuf>, default: &str) -> PathBuf {
    arg.clone().unwrap_or_else(|| common::task_data(default))
}

/// Read a prompt JSONL file; every error names the file and line.
fn read_prompts(path: &Path) -> Result<Vec<InputRow>> {
    let mut rows = Vec::new();
    for (i, v) in common::jsonl_values(path)? {
        let at = || format!("{}:{}", path.display(), i + 1);
        let s = |k: &str| -> Result<Option<String>> {
            match v.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => bail!("{}: field {k:?} must be a string, got {other}", at()),
            }
        };
        let prompt = if let Some(t) = s("instruction")?.or(s("prompt")?) {
            Prompt::user(t)
        } else if let Some(t) = s("text")? {
            Prompt::text(t)
        } else if let Some(m) = v.get("messages") {
            Prompt::Chat(
                serde_json::from_value::<Vec<ChatMessage>>(m.clone())
                    .with_context(|| format!("{}: bad \"messages\"", at()))?,
            )
        } else {
            bail!(
                "{}: a row needs \"instruction\", \"text\" or \"messages\"",
                at()
            );
        };
        let label = s("label")?;
        if let Some(l) = &label {
            if l != "harmful" && l != "harmless" {
                bail!(
                    "{}: label {l:?}: expected \"harmful\" or \"harmless\"",
                    at()
                );
            }
        }
        rows.push(InputRow {
            prompt,
            label,
            split: s("split")?,
        });
    }
    Ok(rows)
}

/// Rows of `label` (any label when `None`) in `split` (rows without a split always count), at most `n`.
/// With any label, the labels take turns (file order within each), so a cap keeps both sides.
fn pick(rows: &[InputRow], label: Option<&str>, split: &str, n: usize) -> Vec<Prompt> {
    let mut groups: BTreeMap<Option<&str>, Vec<&InputRow>> = BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| label.is_none_or(|l| r.label.as_deref() == Some(l)))
        .filter(|r| r.split.as_deref().is_none_or(|s| s == split))
    {
        groups.entry(r.label.as_deref()).or_default().push(r);
    }
    let longest = groups.values().map(Vec::len).max().unwrap_or(0);
    (0..longest)
        .flat_map(|i| groups.values().filter_map(move |g| g.get(i)))
        .take(n)
        .map(|r| r.prompt.clone())
        .collect()
}

fn need(prompts: Vec<Prompt>, what: &str, path: &Path) -> Result<Vec<Prompt>> {
    if prompts.is_empty() {
        bail!("{}: no {what}", path.display());
    }
    Ok(prompts)
}

// --------------------------------------------------------------------------------------------- cache

/// Completions and small results by key, in one JSON file rewritten atomically after each addition.
struct Cache {
    path: PathBuf,
    entries: BTreeMap<String, serde_json::Value>,
}

impl Cache {
    fn open(path: PathBuf) -> Result<Self> {
        let entries = match std::fs::read_to_string(&path) {
            Ok(s) => serde_json::from_str(&s)
                .with_context(|| format!("{}: not a cache file", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Self { path, entries })
    }

    fn get<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Option<T> {
        self.entries
            .get(key)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    fn put<T: Serialize>(&mut self, key: &str, value: &T) -> Result<()> {
        self.entries
            .insert(key.to_string(), serde_json::to_value(value)?);
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        write_file_atomic(&self.path, &serde_json::to_vec_pretty(&self.entries)?)
            .with_context(|| format!("writing {}", self.path.display()))?;
        Ok(())
    }
}

/// A short hash of everything a result depends on.
fn key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    h.finalize()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn tensor_hash(t: &Tensor) -> Result<String> {
    let v = Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1))?;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut h = Sha256::new();
    h.update(&bytes);
    Ok(h.finalize()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn prompts_hash(ps: &[Prompt]) -> String {
    key(&[&serde_json::to_string(ps).unwrap_or_default()])
}

// -------------------------------------------------------------------------------------------- models

fn step(msg: &str) {
    println!("\n== {msg}");
}

// ----------------------------------------------------------------------------------------- selection

#[derive(Serialize, Deserialize)]
struct Selected {
    layer: usize,
    table: String,
}

/// Arditi's layer selection for one model, cached in `OUT/selection-<label>.json`.
fn choose_layer(
    side: &Side,
    train: &Contrast,
    held_out: &Contrast,
    out: &Path,
    batch: usize,
) -> Result<usize> {
    let path = out.join(format!("selection-{}.json", side.label));
    let mut cache = Cache::open(path)?;
    let k = key(&[
        &side.identity.id,
        &side.identity.tokenizer_hash,
        &prompts_hash(&train.positive),
        &prompts_hash(&train.negative),
        &prompts_hash(&held_out.positive),
        &prompts_hash(&held_out.negative),
    ]);
    if let Some(s) = cache.get::<Selected>(&k) {
        println!(
            "{}: refusal layer {} (chosen before, {})",
            side.label,
            s.layer,
            cache.path.display()
        );
        return Ok(s.layer);
    }
    let t0 = Instant::now();
    println!(
        "{}: choosing the refusal layer (Arditi: {} candidates measured on {} + {} validation prompts)",
        side.label,
        side.model.num_layers(),
        held_out.positive.len(),
        held_out.negative.len()
    );
    let cands = refusal_candidates(&side.model, &side.tok, train, batch)?;
    let mut config = RefusalConfig::new(&side.tok)?;
    // Small models' harmful prompts score below Arditi's absolute induce threshold themselves (see the
    // steering crate): ask for a clear rise over the harmless score, and allow a little more KL.
    config.induce = InduceThreshold::RiseOverHarmless(0.5);
    config.max_kl = 0.15;
    let sel = select_refusal_direction(&side.model, &side.tok, &cands, held_out, &config)?;
    let table = sel.to_markdown();
    println!(
        "{table}\n{}: layer {} in {:.0}s",
        side.label,
        sel.layer,
        t0.elapsed().as_secs_f64()
    );
    cache.put(
        &k,
        &Selected {
            layer: sel.layer,
            table,
        },
    )?;
    Ok(sel.layer)
}

// ---------------------------------------------------------------------------------------------- store

// ----------------------------------------------------------------------------------------------- maps

/// A fitted or trained map with its validation metrics.
struct MapRow {
    name: String,
    data: &'static str,
    saved: SavedMap,
    store: PathBuf,
}

fn map_config(args: &Args) -> TrainConfig {
    common::pairs::map_train_config(args.train_steps, args.seed)
}

// ------------------------------------------------------------------------------------------- vectors

/// Post-instruction activations `[n, d]` of the positive and negative prompts at `point`.
fn contrast_rows(
    side: &Side,
    c: &Contrast,
    point: HookPoint,
    batch: usize,
) -> Result<(Tensor, Tensor)> {
    let rule = PositionRule::PostInstruction;
    let p = activations_at(&side.model, &side.tok, &c.positive, &rule, &[point], batch)?;
    let n = activations_at(&side.model, &side.tok, &c.negative, &rule, &[point], batch)?;
    Ok((p[0].acts.shallow_clone(), n[0].acts.shallow_clone()))
}

/// The refusal direction at `point` from contrast rows: harmful mean minus harmless mean.
fn direction_from(
    side: &Side,
    c: &Contrast,
    point: HookPoint,
    rows: &(Tensor, Tensor),
) -> Result<SteeringVector> {
    let dir = mean_difference(&rows.0, &rows.1)?;
    let all = Tensor::cat(&[&rows.0, &rows.1], 0).to_kind(Kind::Float);
    let scale = all
        .norm_scalaropt_dim(2.0, [1i64].as_slice(), false)
        .mean(Kind::Float)
        .double_value(&[]);
    let layer = point.layer().unwrap_or(0);
    Ok(SteeringVector::new(
        side.identity.clone(),
        Method::RefusalDirection { layer },
        Provenance {
            positive_prompts: c.positive.len(),
            negative_prompts: c.negative.len(),
            rows: (rows.0.size()[0] + rows.1.size()[0]) as usize,
            positions: Some(PositionRule::PostInstruction),
            data: c.data.clone(),
        },
        vec![VectorEntry::new(point, &dir, scale)?],
    )?)
}

fn load_or<F: FnOnce() -> Result<SteeringVector>>(
    dir: &Path,
    model: &ModelIdentity,
    make: F,
) -> Result<SteeringVector> {
    if dir.join("vector.json").exists() {
        return Ok(SteeringVector::load_for(dir, model)?);
    }
    let v = make()?;
    v.save(dir)?;
    Ok(v)
}

/// Strengths tried, smallest first, when `--alpha` is not given.
const ALPHAS: [f64; 6] = [1.0, 2.0, 3.0, 4.0, 6.0, 8.0];

/// The strength a vector is added with.
#[derive(Clone, Copy, Serialize)]
struct AlphaChoice {
    alpha: f64,
    /// Chosen on validation: whether it made half the harmless prompts refuse (`None`: given by --alpha).
    reached: Option<bool>,
}

impl std::fmt::Display for AlphaChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.reached {
            Some(false) => write!(f, "{} (50% not reached)", self.alpha),
            _ => write!(f, "{}", self.alpha),
        }
    }
}

/// One row of the held-out refusal table.
#[derive(Serialize)]
struct EffectRow {
    name: String,
    alpha: Option<AlphaChoice>,
    /// Refusal on harmless test prompts with the vector added.
    induced: f64,
    /// Refusal on harmful test prompts with the direction ablated.
    ablated: f64,
}

/// A transferred vector under evaluation.
struct Candidate {
    name: String,
    vector: SteeringVector,
    fidelity: Option<Fidelity>,
    evaluate: bool,
}

// -------------------------------------------------------------------------------------------- effects

fn gen_opts(tok: &Tokenizer, n: usize) -> GenerateOptions {
    GenerateOptions::greedy(n).with_stop_tokens(tok.eos_token_ids().to_vec())
}

/// Greedy completions of `prompts` under `hooks`, in batches.
fn complete(side: &Side, prompts: &[Prompt], hooks: &Hooks, args: &Args) -> Result<Vec<String>> {
    let enc = encode_all(&side.tok, prompts)?;
    let ids: Vec<Vec<i64>> = enc.iter().map(|e| e.ids.clone()).collect();
    let opts = gen_opts(&side.tok, args.max_new_tokens);
    let mut out = Vec::new();
    for chunk in ids.chunks(args.batch_size.max(1)) {
        let g = side
            .model
            .generate(chunk, side.tok.pad_token_id(), hooks, &opts)?;
        for t in g.tokens {
            out.push(side.tok.decode(&t, true)?);
        }
    }
    Ok(out)
}

fn refusal_rate(texts: &[String]) -> f64 {
    texts.iter().filter(|t| is_refusal(t)).count() as f64 / texts.len().max(1) as f64
}

/// What one intervention does to a prompt set.
#[derive(Clone, Copy, PartialEq)]
enum Op {
    None,
    Add(f64),
    Ablate,
}

struct Effects<'a> {
    side: &'a Side,
    args: &'a Args,
    cache: Cache,
}

impl Effects<'_> {
    fn run(
        &mut self,
        what: &str,
        prompts: &[Prompt],
        v: Option<&SteeringVector>,
        op: Op,
    ) -> Result<Vec<String>> {
        let vh = match v {
            Some(v) => tensor_hash(&v.single()?.direction)?,
            None => "-".into(),
        };
        let ops = match op {
            Op::None => "none".to_string(),
            Op::Add(a) => format!("add {a}"),
            Op::Ablate => "ablate".to_string(),
        };
        let k = key(&[
            &self.side.identity.id,
            &vh,
            &ops,
            &prompts_hash(prompts),
            &self.args.max_new_tokens.to_string(),
        ]);
        if let Some(t) = self.cache.get::<Vec<String>>(&k) {
            return Ok(t);
        }
        let t0 = Instant::now();
        let mut hooks = Hooks::new();
        match (op, v) {
            (Op::Add(a), Some(v)) => add_vector(&mut hooks, v, Strength::Raw(a), &Where::All)?,
            (Op::Ablate, Some(v)) => ablate_direction(
                &mut hooks,
                &v.single()?.direction,
                AblationScope::EveryLayer {
                    num_layers: self.side.model.num_layers(),
                },
            )?,
            _ => {}
        }
        let texts = complete(self.side, prompts, &hooks, self.args)?;
        println!(
            "  {what:<48} refusal {:>5.1}%  ({} prompts, {:.0}s)",
            100.0 * refusal_rate(&texts),
            texts.len(),
            t0.elapsed().as_secs_f64()
        );
        self.cache.put(&k, &texts)?;
        Ok(texts)
    }
}

// ------------------------------------------------------------------------------- mapped completions

#[derive(Serialize, Deserialize, Clone)]
struct CompletionScores {
    rouge_l_mapped: f64,
    rouge_l_mean_ablated: f64,
    ppl_mapped: f64,
    ppl_mean_ablated: f64,
    ppl_target: f64,
    kl_mapped: f64,
    kl_mean_ablated: f64,
    kl_mapped_values: Vec<f32>,
    kl_mean_ablated_values: Vec<f32>,
    example: [String; 3],
}

/// Perplexity of each completion under the plain model (teacher-forced after its prompt).
fn completion_ppl(side: &Side, prompts: &[Prompt], texts: &[String]) -> Result<f64> {
    let enc = encode_all(&side.tok, prompts)?;
    let mut ppl = Vec::new();
    for (e, t) in enc.iter().zip(texts) {
        let new = side.tok.encode(t, false)?.ids;
        if new.is_empty() {
            continue;
        }
        let ids: Vec<i64> = e.ids.iter().chain(&new).copied().collect();
        let batch = Batch::from_sequences(
            std::slice::from_ref(&ids),
            side.tok.pad_token_id(),
            PaddingSide::Left,
            side.model.device(),
        )?;
        let logits = side.model.logits(&batch)?.get(0);
        let p = e.ids.len() as i64 - 1;
        let n = ids.len() as i64 - p;
        let tail = Tensor::from_slice(&ids[p as usize..]).to_device(side.model.device());
        ppl.push(perplexity(&logits.narrow(0, p, n), &tail)?);
    }
    Ok(ppl.iter().sum::<f64>() / ppl.len().max(1) as f64)
}

#[allow(clippy::too_many_arguments)]
fn mapped_completions(
    src: &Side,
    tgt: &Side,
    row: &MapRow,
    sp: HookPoint,
    tp: HookPoint,
    prompts: &[Prompt],
    plain: &[String],
    args: &Args,
    cache: &mut Cache,
) -> Result<CompletionScores> {
    let k = key(&[
        "mapped",
        &row.saved.info.tensors_sha256,
        &prompts_hash(prompts),
        &args.max_new_tokens.to_string(),
        &args.kl_docs.to_string(),
    ]);
    if let Some(s) = cache.get::<CompletionScores>(&k) {
        return Ok(s);
    }
    let t0 = Instant::now();
    let reader = StoreReader::open(&row.store)?;
    let trainer = Trainer::new(&reader, map_config(args), tgt.model.device())?;
    let (_, sy) = reader.stats(Split::Train(trainer.split()))?;
    let mean = Tensor::from_slice(sy.context("no target statistics")?.mean())
        .to_kind(Kind::Float)
        .to_device(tgt.model.device());
    // KL of next-token distributions on held-out map-data documents.
    let kl = kl_fidelity(
        &tgt.model,
        tp,
        &row.saved.map,
        &mean,
        KlDoc::from_store(&reader, Split::Validation(trainer.split())),
        &KlOptions {
            docs_per_batch: 4,
            max_docs: Some(args.kl_docs),
        },
    )?;
    // Completions: mapped (source and target side by side) and mean-ablated.
    let pair = MappedPair::new(&src.model, &tgt.model, &row.saved.map, sp, tp)?;
    let enc = encode_all(&tgt.tok, prompts)?;
    let ids: Vec<Vec<i64>> = enc.iter().map(|e| e.ids.clone()).collect();
    let opts = gen_opts(&tgt.tok, args.max_new_tokens);
    let mut mapped = Vec::new();
    for chunk in ids.chunks(args.batch_size.max(1)) {
        for t in pair
            .generate(chunk, tgt.tok.pad_token_id(), &opts, None)?
            .tokens
        {
            mapped.push(tgt.tok.decode(&t, true)?);
        }
    }
    let mut hooks = Hooks::new();
    hooks.set(tp, &mean.to_kind(tgt.model.kind()), Positions::All);
    let ablated = complete(tgt, prompts, &hooks, args)?;
    let rl = |xs: &[String]| {
        xs.iter()
            .zip(plain)
            .map(|(c, r)| rouge(r, c, false).rouge_l.fmeasure)
            .sum::<f64>()
            / xs.len().max(1) as f64
    };
    let s = CompletionScores {
        rouge_l_mapped: rl(&mapped),
        rouge_l_mean_ablated: rl(&ablated),
        ppl_mapped: completion_ppl(tgt, prompts, &mapped)?,
        ppl_mean_ablated: completion_ppl(tgt, prompts, &ablated)?,
        ppl_target: completion_ppl(tgt, prompts, plain)?,
        kl_mapped: kl.mapped.mean,
        kl_mean_ablated: kl.mean_ablated.mean,
        kl_mapped_values: kl.mapped_values.clone(),
        kl_mean_ablated_values: kl.mean_ablated_values.clone(),
        example: [plain[0].clone(), mapped[0].clone(), ablated[0].clone()],
    };
    println!(
        "  {:<28} KL {:.3} vs mean-ablated {:.3}; ROUGE-L {:.3} vs {:.3} ({:.0}s)",
        row.name,
        s.kl_mapped,
        s.kl_mean_ablated,
        s.rouge_l_mapped,
        s.rouge_l_mean_ablated,
        t0.elapsed().as_secs_f64()
    );
    cache.put(&k, &s)?;
    Ok(s)
}

// ----------------------------------------------------------------------------------------------- main

// ------------------------------------------------------------------------------------- layer sweep

fn parse_range(s: &str, n: usize, what: &str) -> Result<Vec<usize>> {
    let (a, b) = s
        .split_once('-')
        .with_context(|| format!("--sweep-layers: {what} range {s:?} is not A-B"))?;
    let (a, b): (usize, usize) = (a.trim().parse()?, b.trim().parse()?);
    if a > b || b >= n {
        bail!("--sweep-layers: {what} range {s:?} must satisfy A <= B < {n} (layers)");
    }
    Ok((a..=b).collect())
}

/// Cosine to the target's native refusal direction of the source's direction carried by a ridge map, for
/// every pair of layers: one forward pass per model over the map data (every token of every chat, paired
/// position by position: the models share a tokenizer) and over the vector data.
fn sweep_layers(
    spec: &str,
    src: &Side,
    tgt: &Side,
    map_docs: &[Prompt],
    vector_data: &Contrast,
    out: &Path,
    batch: usize,
) -> Result<()> {
    let (a, b) = spec
        .split_once(':')
        .context("--sweep-layers takes S1-S2:T1-T2")?;
    let sl = parse_range(a, src.model.num_layers(), "source")?;
    let tl = parse_range(b, tgt.model.num_layers(), "target")?;
    let t0 = Instant::now();
    let capture = |side: &Side, layers: &[usize]| -> Result<Vec<Tensor>> {
        let points: Vec<HookPoint> = layers.iter().map(|&l| HookPoint::ResidPre(l)).collect();
        let acts = activations_at(
            &side.model,
            &side.tok,
            map_docs,
            &PositionRule::All,
            &points,
            batch,
        )?;
        Ok(acts
            .into_iter()
            .map(|a| a.acts.to_kind(Kind::Float))
            .collect())
    };
    println!(
        "capturing {} source and {} target layers over {} map-data documents",
        sl.len(),
        tl.len(),
        map_docs.len()
    );
    let xs = capture(src, &sl)?;
    let ys = capture(tgt, &tl)?;
    if xs[0].size()[0] != ys[0].size()[0] {
        bail!(
            "the two models read different token counts ({} vs {}): the sweep needs one tokenizer",
            xs[0].size()[0],
            ys[0].size()[0]
        );
    }
    let vs = refusal_candidates(&src.model, &src.tok, vector_data, batch)?;
    let vt = refusal_candidates(&tgt.model, &tgt.tok, vector_data, batch)?;
    let dir = |v: &SteeringVector, l: usize| -> Result<Tensor> {
        Ok(v.entry(HookPoint::ResidPre(l))
            .with_context(|| format!("no candidate at resid_pre.{l}"))?
            .direction
            .to_kind(Kind::Float))
    };
    let device = src.model.device();
    let mut header = vec!["source layer / target layer".to_string()];
    header.extend(tl.iter().map(|l| l.to_string()));
    let mut table = Table::new(
        format!(
            "Cosine to native of the ridge-mapped refusal direction ({} map-data documents, {} rows)",
            map_docs.len(),
            xs[0].size()[0]
        ),
        header,
    );
    let mut best = (f64::NEG_INFINITY, 0, 0);
    let mut cells = Vec::new();
    for (i, &ls) in sl.iter().enumerate() {
        let v = dir(&vs, ls)?.to_device(device);
        let mut row = vec![Cell::from(ls.to_string())];
        for (j, &lt) in tl.iter().enumerate() {
            let mut m =
                CrossMoments::new(xs[i].size()[1], ys[j].size()[1], Precision::F32, device)?;
            m.update(&xs[i], &ys[j])?;
            let map = fit_ridge(&m, &RIDGE, device)?;
            let both = Tensor::stack(&[v.shallow_clone(), v.zeros_like()], 0);
            let y = map.forward(&both)?;
            let carried = y.get(0) - y.get(1);
            let native = dir(&vt, lt)?.to_device(device);
            let cos = carried.dot(&native).double_value(&[])
                / (carried.norm().double_value(&[]) * native.norm().double_value(&[]));
            if cos > best.0 {
                best = (cos, ls, lt);
            }
            cells.push(serde_json::json!({"source": ls, "target": lt, "cosine": cos}));
            row.push(Cell::from(cos));
        }
        table.push_row(row)?;
    }
    let md = table.to_markdown();
    println!("{md}");
    println!(
        "best pair: source resid_pre.{} -> target resid_pre.{} (cosine {:.3}); {:.0}s",
        best.1,
        best.2,
        best.0,
        t0.elapsed().as_secs_f64()
    );
    let path = out.join("layer-sweep.json");
    let text = serde_json::to_string_pretty(&serde_json::json!({
        "source": src.identity.id, "target": tgt.identity.id, "map_docs": map_docs.len(),
        "vector_data": [vector_data.positive.len(), vector_data.negative.len()],
        "pairs": cells, "best": {"source": best.1, "target": best.2, "cosine": best.0},
    }))?;
    write_file_atomic(&path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    write_file_atomic(&out.join("layer-sweep.md"), format!("{md}\n").as_bytes())?;
    println!("written: {} and layer-sweep.md", path.display());
    Ok(())
}

fn fmt_pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn main() -> Result<()> {
    rosetta::hooks::device::flush_denormals();
    let args = Args::parse();
    let t_start = Instant::now();
    let device = common::device(args.device.as_deref())?;
    let out = args.out.clone();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    step("models");
    let src = load_side("source", &args.source, device)?;
    let tgt = load_side("target", &args.target, device)?;
    if src.identity.tokenizer_hash != tgt.identity.tokenizer_hash {
        bail!(
            "{} and {} have different tokenizers; this experiment runs both models on the same token ids \
             (mapped completions). Use models of one family.",
            src.identity.id,
            tgt.identity.id
        );
    }

    step("data");
    let map_path = data_file(&args.map_data, "refusal_map.jsonl");
    let generic_path = data_file(&args.generic_data, "map_prompts.jsonl");
    let vec_path = data_file(&args.vector_data, "refusal.jsonl");
    let harmful_path = data_file(&args.harmful_test, "refusal.jsonl");
    let harmless_path = data_file(&args.harmless_test, "refusal.jsonl");
    let map_docs_n = args.map_docs.unwrap_or(usize::MAX);
    let map_rows = read_prompts(&map_path)?;
    let map_docs = need(
        pick(&map_rows, None, "train", map_docs_n),
        "map-data rows",
        &map_path,
    )?;
    let vec_rows = read_prompts(&vec_path)?;
    let n = args.vector_prompts;
    let vector_data = Contrast {
        positive: need(
            pick(&vec_rows, Some("harmful"), "train", n),
            "harmful train rows",
            &vec_path,
        )?,
        negative: need(
            pick(&vec_rows, Some("harmless"), "train", n),
            "harmless train rows",
            &vec_path,
        )?,
        data: Some(format!("{} (train split)", vec_path.display())),
    };
    let m = args.selection_prompts;
    let selection = Contrast {
        positive: pick(&vec_rows, Some("harmful"), "validation", m),
        negative: pick(&vec_rows, Some("harmless"), "validation", m),
        data: None,
    };
    let t = args.test_prompts;
    let harmful_test = need(
        pick(&read_prompts(&harmful_path)?, Some("harmful"), "test", t),
        "harmful test rows",
        &harmful_path,
    )?;
    let harmless_test = need(
        pick(&read_prompts(&harmless_path)?, Some("harmless"), "test", t),
        "harmless test rows",
        &harmless_path,
    )?;
    // Disjointness: the same prompt in two sets would make the test less than held out.
    let all_sets: [(&str, Vec<&Prompt>); 4] = [
        ("map data", map_docs.iter().collect()),
        (
            "vector data",
            vector_data
                .positive
                .iter()
                .chain(&vector_data.negative)
                .collect(),
        ),
        (
            "validation",
            selection
                .positive
                .iter()
                .chain(&selection.negative)
                .collect(),
        ),
        ("test", harmful_test.iter().chain(&harmless_test).collect()),
    ];
    for i in 0..all_sets.len() {
        for j in i + 1..all_sets.len() {
            if let Some(p) = all_sets[i].1.iter().find(|p| all_sets[j].1.contains(p)) {
                bail!(
                    "the {} and the {} share a prompt ({p:?}): the three sets must be disjoint",
                    all_sets[i].0,
                    all_sets[j].0
                );
            }
        }
    }
    println!(
        "map data {} docs ({}), vector data {} + {} ({}), validation {} + {}, test {} harmful + {} harmless",
        map_docs.len(),
        map_path.display(),
        vector_data.positive.len(),
        vector_data.negative.len(),
        vec_path.display(),
        selection.positive.len(),
        selection.negative.len(),
        harmful_test.len(),
        harmless_test.len()
    );

    if let Some(spec) = &args.sweep_layers {
        step("layer pairs");
        let docs = &map_docs[..map_docs.len().min(args.map_docs.unwrap_or(200))];
        return sweep_layers(spec, &src, &tgt, docs, &vector_data, &out, args.batch_size);
    }

    step("layers");
    let pick_layer = |side: &Side, given: Option<usize>| -> Result<usize> {
        match given {
            Some(l) if l >= side.model.num_layers() => bail!(
                "{} layer {l} out of range ({} layers)",
                side.label,
                side.model.num_layers()
            ),
            Some(l) => Ok(l),
            None if selection.positive.is_empty() || selection.negative.is_empty() => bail!(
                "choosing the {} layer needs validation rows in {} (or pass --{}-layer)",
                side.label,
                vec_path.display(),
                side.label
            ),
            None => choose_layer(side, &vector_data, &selection, &out, args.batch_size),
        }
    };
    let ls = pick_layer(&src, args.source_layer)?;
    let lt = pick_layer(&tgt, args.target_layer)?;
    let (sp, tp) = (HookPoint::ResidPre(ls), HookPoint::ResidPre(lt));
    println!("source {sp} -> target {tp}");

    step("paired activations and maps");
    // Directory names carry the layers and a hash of the documents, so changed data never reuses a
    // store or map made from other documents.
    let tag = format!("{ls}-{lt}-{}", &prompts_hash(&map_docs)[..8]);
    let in_domain = paired_store(
        &out.join(format!("stores/map-data-{tag}")),
        &src,
        sp,
        &tgt,
        tp,
        &map_docs,
        args.batch_size,
    )?;
    let config = map_config(&args);
    let mut maps: Vec<MapRow> = Vec::new();
    for name in &args.maps {
        let kind: MapKind = name.parse()?;
        if !matches!(
            kind,
            MapKind::Ridge | MapKind::Affine | MapKind::Autoencoder
        ) {
            bail!("--maps {name}: expected ridge, affine or autoencoder");
        }
        let dir = out.join(format!("maps/{kind}-map-data-{tag}"));
        maps.push(MapRow {
            name: kind.to_string(),
            data: "map data",
            saved: get_map(&dir, kind, &in_domain, &config, device)?,
            store: out.join(format!("stores/map-data-{tag}")),
        });
    }
    if !args.no_generic {
        let generic_rows = read_prompts(&generic_path)?;
        let docs = pick(&generic_rows, None, "train", map_docs_n);
        let gtag = format!("{ls}-{lt}-{}", &prompts_hash(&docs)[..8]);
        let store_dir = out.join(format!("stores/generic-{gtag}"));
        let reader = paired_store(&store_dir, &src, sp, &tgt, tp, &docs, args.batch_size)?;
        let dir = out.join(format!("maps/ridge-generic-{gtag}"));
        maps.push(MapRow {
            name: "ridge (generic text)".into(),
            data: "generic text",
            saved: get_map(&dir, MapKind::Ridge, &reader, &config, device)?,
            store: store_dir,
        });
    }

    step("vectors");
    let vdir = out.join(format!("vectors/{tag}"));
    let mut src_rows: Option<(Tensor, Tensor)> = None;
    let mut source_rows = || -> Result<(Tensor, Tensor)> {
        if src_rows.is_none() {
            src_rows = Some(contrast_rows(&src, &vector_data, sp, args.batch_size)?);
        }
        let r = src_rows.as_ref().context("source rows")?;
        Ok((r.0.shallow_clone(), r.1.shallow_clone()))
    };
    let source_vec = load_or(&vdir.join("source"), &src.identity, || {
        let rows = source_rows()?;
        direction_from(&src, &vector_data, sp, &rows)
    })?;
    let native = load_or(&vdir.join("native"), &tgt.identity, || {
        let rows = contrast_rows(&tgt, &vector_data, tp, args.batch_size)?;
        direction_from(&tgt, &vector_data, tp, &rows)
    })?;
    println!(
        "source direction |v| = {:.2} at {sp}; target's native direction |v| = {:.2} at {tp}",
        source_vec.single()?.norm(),
        native.single()?.norm()
    );
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut random: Option<SteeringVector> = None;
    for (mi, row) in maps.iter().enumerate() {
        let transfer = Transfer::from_saved(&row.saved, tgt.identity.clone())?;
        let mut recipes = vec![Recipe::MappedContrast, Recipe::Offset];
        if row.saved.map.kind() != MapKind::Autoencoder {
            recipes.push(Recipe::Linear);
        }
        for recipe in recipes {
            let slug = format!("{}-{recipe}", row.saved.info.kind).replace(' ', "-");
            let dir = vdir.join(format!("{}-{}", row.data.replace(' ', "-"), slug));
            let rdir = vdir.join(format!("random-{}-{}", row.data.replace(' ', "-"), slug));
            let (vector, rand) =
                if dir.join("vector.json").exists() && rdir.join("vector.json").exists() {
                    (
                        SteeringVector::load_for(&dir, &tgt.identity)?,
                        SteeringVector::load_for(&rdir, &tgt.identity)?,
                    )
                } else {
                    let rows = source_rows()?;
                    let data = match recipe {
                        Recipe::MappedContrast => TransferData::Contrast {
                            positive: &rows.0,
                            negative: &rows.1,
                        },
                        Recipe::Offset => TransferData::Reference(&rows.1),
                        _ => TransferData::None,
                    };
                    let o = transfer.carry(&source_vec, recipe, data, Some(&native), args.seed)?;
                    o.vector.save(&dir)?;
                    o.random.save(&rdir)?;
                    (o.vector, o.random)
                };
            let fidelity = vector
                .extra
                .get("fidelity")
                .and_then(|f| serde_json::from_value::<Fidelity>(f.clone()).ok());
            let primary = recipe == Recipe::MappedContrast;
            if mi == 0 && primary {
                random = Some(rand);
            }
            candidates.push(Candidate {
                name: format!("{} / {recipe}", row.name),
                vector,
                fidelity,
                evaluate: primary || args.all_recipes,
            });
        }
    }
    let random = random.context("no map to transfer through (--maps is empty and --no-generic)")?;
    for c in &candidates {
        if let Some(f) = &c.fidelity {
            println!(
                "  {:<40} cosine to native {:>6.3}  norm ratio {:>5.2}  (random: {:>6.3})",
                c.name,
                f.cosine_to_native.unwrap_or(f64::NAN),
                f.norm_ratio.unwrap_or(f64::NAN),
                f.random_cosine_to_native.unwrap_or(f64::NAN)
            );
        }
    }

    step("held-out effects in the target");
    let mut effects = Effects {
        side: &tgt,
        args: &args,
        cache: Cache::open(out.join("cache/completions.json"))?,
    };
    // Strength: given, or chosen per vector on the validation harmless prompts (what a user of the
    // transferred vector can do in the target without its native direction). The random floor takes the
    // strength of the transferred vector it is norm-matched to.
    if args.alpha.is_none() && selection.negative.is_empty() {
        bail!("choosing the strength needs harmless validation rows (or pass --alpha)");
    }
    let strength = |effects: &mut Effects, name: &str, v: &SteeringVector| -> Result<AlphaChoice> {
        if let Some(a) = args.alpha {
            return Ok(AlphaChoice {
                alpha: a,
                reached: None,
            });
        }
        for a in ALPHAS {
            let texts = effects.run(
                &format!("validation, {name} added, alpha {a}"),
                &selection.negative,
                Some(v),
                Op::Add(a),
            )?;
            if refusal_rate(&texts) >= 0.5 {
                return Ok(AlphaChoice {
                    alpha: a,
                    reached: Some(true),
                });
            }
        }
        Ok(AlphaChoice {
            alpha: ALPHAS[ALPHAS.len() - 1],
            reached: Some(false),
        })
    };
    let mut rows: Vec<EffectRow> = Vec::new();
    let none_induce =
        refusal_rate(&effects.run("harmless, no vector", &harmless_test, None, Op::None)?);
    let none_ablate =
        refusal_rate(&effects.run("harmful, no vector", &harmful_test, None, Op::None)?);
    rows.push(EffectRow {
        name: "none".into(),
        alpha: None,
        induced: none_induce,
        ablated: none_ablate,
    });
    let eval_one = |effects: &mut Effects,
                    name: &str,
                    v: &SteeringVector,
                    s: AlphaChoice|
     -> Result<EffectRow> {
        let induced = refusal_rate(&effects.run(
            &format!("harmless, {name} added"),
            &harmless_test,
            Some(v),
            Op::Add(s.alpha),
        )?);
        let ablated = refusal_rate(&effects.run(
            &format!("harmful, {name} ablated"),
            &harmful_test,
            Some(v),
            Op::Ablate,
        )?);
        Ok(EffectRow {
            name: name.to_string(),
            alpha: Some(s),
            induced,
            ablated,
        })
    };
    let s = strength(&mut effects, "native", &native)?;
    if s.reached == Some(false) {
        bail!(
            "no strength up to {} makes half the validation harmless prompts refuse with the native vector",
            ALPHAS[ALPHAS.len() - 1]
        );
    }
    let native_row = eval_one(&mut effects, "native (target's own)", &native, s)?;
    let (ni, na) = (native_row.induced, native_row.ablated);
    rows.push(native_row);
    let mut primary_strength = None;
    for (k, c) in candidates.iter().filter(|c| c.evaluate).enumerate() {
        let s = strength(&mut effects, &c.name, &c.vector)?;
        if k == 0 {
            primary_strength = Some(s);
        }
        rows.push(eval_one(&mut effects, &c.name, &c.vector, s)?);
    }
    let random_row = eval_one(
        &mut effects,
        "random (norm-matched)",
        &random,
        primary_strength.context("no transferred vector evaluated")?,
    )?;
    let ri = random_row.induced;
    rows.push(random_row);

    step("mapped completions");
    let half = args.completions.div_ceil(2);
    let comp_prompts: Vec<Prompt> = harmful_test
        .iter()
        .take(half)
        .chain(
            harmless_test
                .iter()
                .take(args.completions - half.min(args.completions)),
        )
        .cloned()
        .collect();
    let plain = effects.run("target's own completions", &comp_prompts, None, Op::None)?;
    let mut cache = effects.cache;
    let mut completion_scores = Vec::new();
    for row in &maps {
        completion_scores.push(mapped_completions(
            &src,
            &tgt,
            row,
            sp,
            tp,
            &comp_prompts,
            &plain,
            &args,
            &mut cache,
        )?);
    }

    // ------------------------------------------------------------------------------------ report
    step("report");
    let mut report = common::pairs::pair_report(
        format!(
            "Refusal transfer: {} -> {}",
            src.identity.id, tgt.identity.id
        ),
        ("source", "target"),
        &src,
        &tgt,
    )
    .with_config(serde_json::json!({
        "args": args,
        "source_point": sp.to_string(),
        "target_point": tp.to_string(),
        "alpha": args.alpha,
        "effects": &rows,
        "sizes": {
            "map_docs": map_docs.len(),
            "vector_data": [vector_data.positive.len(), vector_data.negative.len()],
            "validation": [selection.positive.len(), selection.negative.len()],
            "test": [harmful_test.len(), harmless_test.len()],
        },
        "refusal_phrases": rosetta::eval::REFUSAL_PHRASES,
    }));

    let mut mt = Table::new(
        "Maps (validation split of their data, by document)",
        [
            "map",
            "data",
            "FVU",
            "R2",
            "cosine",
            "KL mapped",
            "KL mean-ablated",
        ],
    );
    for (row, s) in maps.iter().zip(&completion_scores) {
        let m: Option<&Metrics> = row.saved.info.metrics.as_ref();
        mt.push_row([
            Cell::from(row.name.as_str()),
            Cell::from(row.data),
            Cell::from(m.map_or(f64::NAN, |m| m.fvu)),
            Cell::from(m.map_or(f64::NAN, |m| m.r2)),
            Cell::from(m.map_or(f64::NAN, |m| m.cosine)),
            Cell::from(s.kl_mapped),
            Cell::from(s.kl_mean_ablated),
        ])?;
    }
    let mut ft = Table::new(
        "Direction fidelity (against the target's native direction from the same vector data)",
        [
            "transferred vector",
            "cosine to native",
            "norm ratio",
            "random's cosine",
        ],
    );
    for c in &candidates {
        let f = c.fidelity.as_ref();
        ft.push_row([
            Cell::from(c.name.as_str()),
            Cell::from(f.and_then(|f| f.cosine_to_native).unwrap_or(f64::NAN)),
            Cell::from(f.and_then(|f| f.norm_ratio).unwrap_or(f64::NAN)),
            Cell::from(
                f.and_then(|f| f.random_cosine_to_native)
                    .unwrap_or(f64::NAN),
            ),
        ])?;
    }
    let mut et = Table::new(
        "Held-out test prompts (refusal by phrase list)",
        [
            "vector",
            "alpha",
            "harmless: refusal with vector added",
            "harmful: refusal with direction ablated",
        ],
    );
    for r in &rows {
        et.push_row([
            Cell::from(r.name.as_str()),
            Cell::from(r.alpha.map_or("—".into(), |a| a.to_string())),
            Cell::from(fmt_pct(r.induced)),
            Cell::from(fmt_pct(r.ablated)),
        ])?;
    }
    let mut ct = Table::new(
        "Mapped completions vs mean ablation (target's own completion as the reference)",
        [
            "map",
            "ROUGE-L mapped",
            "ROUGE-L mean-ablated",
            "perplexity mapped",
            "perplexity mean-ablated",
            "perplexity target",
        ],
    );
    for (row, s) in maps.iter().zip(&completion_scores) {
        ct.push_row([
            Cell::from(row.name.as_str()),
            Cell::from(s.rouge_l_mapped),
            Cell::from(s.rouge_l_mean_ablated),
            Cell::from(s.ppl_mapped),
            Cell::from(s.ppl_mean_ablated),
            Cell::from(s.ppl_target),
        ])?;
    }

    // The issue's bars, for the first map's mapped-contrast vector.
    let primary = rows
        .iter()
        .find(|r| r.name == candidates[0].name)
        .map(|r| (r.name.clone(), r.induced, r.ablated));
    let mut checks = Vec::new();
    if let Some((name, pi, pa)) = &primary {
        let removed_native = none_ablate - na;
        let removed = none_ablate - pa;
        let kl0 = &completion_scores[0];
        checks.push((
            format!(
                "{name}: induced refusal >= 80% of native's ({} vs {})",
                fmt_pct(*pi),
                fmt_pct(ni)
            ),
            ni > none_induce && *pi >= 0.8 * ni,
        ));
        checks.push((
            format!(
                "{name}: induced refusal >= 3x random's ({} vs {})",
                fmt_pct(*pi),
                fmt_pct(ri)
            ),
            *pi >= 3.0 * ri && *pi > 0.0,
        ));
        checks.push((
            format!(
                "{name}: ablation removes >= 80% of what native ablation removes ({} vs {} points)",
                fmt_pct(removed),
                fmt_pct(removed_native)
            ),
            removed_native > 0.0 && removed >= 0.8 * removed_native,
        ));
        checks.push((
            format!(
                "{}: mapped KL at most half of mean ablation's ({:.3} vs {:.3})",
                maps[0].name, kl0.kl_mapped, kl0.kl_mean_ablated
            ),
            kl0.kl_mapped <= 0.5 * kl0.kl_mean_ablated,
        ));
    }
    let check_text = checks
        .iter()
        .map(|(t, ok)| format!("- {} {t}", if *ok { "PASS" } else { "FAIL" }))
        .collect::<Vec<_>>()
        .join("\n");
    let selected_text = ["source", "target"]
        .iter()
        .filter_map(|l| {
            let c = Cache::open(out.join(format!("selection-{l}.json"))).ok()?;
            let s: Selected = c
                .entries
                .values()
                .last()
                .and_then(|v| serde_json::from_value(v.clone()).ok())?;
            Some(format!("### {l}: layer {}\n\n{}", s.layer, s.table))
        })
        .collect::<Vec<_>>()
        .join("\n\n");
    let categories: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
    let bars = bar_chart(
        &out.join("refusal_rates"),
        &BarChart::new("Refusal on held-out prompts", "refusal rate", categories)
            .with_series("harmless, vector added", rows.iter().map(|r| r.induced))
            .with_series("harmful, direction ablated", rows.iter().map(|r| r.ablated))
            .with_y_range(0.0, 1.0),
    )?;
    let kl_plot = histogram(
        &out.join("kl_histogram"),
        &Histogram::new(
            format!("Per-token KL, {} map vs mean ablation", maps[0].name),
            "KL(target || patched), nats",
        )
        .with_values(
            "mapped",
            completion_scores[0]
                .kl_mapped_values
                .iter()
                .map(|&x| x as f64),
        )
        .with_values(
            "mean-ablated",
            completion_scores[0]
                .kl_mean_ablated_values
                .iter()
                .map(|&x| x as f64),
        ),
    )?;
    let fid_plot = bar_chart(
        &out.join("cosine_to_native"),
        &BarChart::new(
            "Transferred direction vs the target's native one",
            "cosine",
            candidates.iter().map(|c| c.name.clone()),
        )
        .with_series(
            "cosine to native",
            candidates.iter().map(|c| {
                c.fidelity
                    .as_ref()
                    .and_then(|f| f.cosine_to_native)
                    .unwrap_or(0.0)
            }),
        )
        .with_y_range(-0.1, 1.0),
    )?;
    let ex = &completion_scores[0].example;
    report = report
        .with_section(Section::new("Checks (the end-to-end issue's bars)").with_text(check_text.clone()))
        .with_section(Section::new("Refusal").with_table(et))
        .with_section(Section::new("Transfer").with_table(ft))
        .with_section(Section::new("Maps").with_table(mt))
        .with_section(Section::new("Mapped completions").with_table(ct).with_text(format!(
            "First prompt, target's own: {:?}\n\nmapped ({}): {:?}\n\nmean-ablated: {:?}",
            ex[0], maps[0].name, ex[1], ex[2]
        )))
        .with_plot("Refusal rates", &bars)
        .with_plot("Cosine to native", &fid_plot)
        .with_plot("KL histogram", &kl_plot)
        .with_note(format!(
            "Source {sp} -> target {tp}. Each vector is added at every position of its layer, with `--alpha` \
             or with the smallest of {ALPHAS:?} at which it makes half the validation harmless prompts refuse \
             (chosen per vector; the random floor takes the strength of the transferred vector it is \
             norm-matched to). Ablation projects the direction out of every layer's block input and \
             attention/MLP outputs."
        ));
    if !selected_text.is_empty() {
        report =
            report.with_section(Section::new("Layer selection (Arditi)").with_text(selected_text));
    }
    let (json, md) = report.write(&out)?;

    println!(
        "\n{}",
        rosetta::eval::report::Table::to_markdown(&{
            let mut t = Table::new(
                "",
                [
                    "vector",
                    "cos to native",
                    "alpha",
                    "harmless refusal (added)",
                    "harmful refusal (ablated)",
                ],
            );
            for r in &rows {
                let name = &r.name;
                let cos = candidates
                    .iter()
                    .find(|c| &c.name == name)
                    .and_then(|c| c.fidelity.as_ref())
                    .and_then(|f| f.cosine_to_native)
                    .map_or(
                        if name.starts_with("native") {
                            "1.000".to_string()
                        } else {
                            "—".to_string()
                        },
                        |c| format!("{c:.3}"),
                    );
                t.push_row([
                    Cell::from(name.as_str()),
                    Cell::from(cos),
                    Cell::from(r.alpha.map_or("—".into(), |a| a.to_string())),
                    Cell::from(fmt_pct(r.induced)),
                    Cell::from(fmt_pct(r.ablated)),
                ])?;
            }
            t
        })
    );
    println!("{check_text}");
    common::print_written(&md, &json, &[&bars, &fid_plot, &kl_plot], t_start);
    Ok(())
}
