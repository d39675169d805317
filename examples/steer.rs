//! Steer a model with a saved vector, a GGUF control vector, or a refusal direction computed on the spot,
//! and print each completion without and with the intervention.
//!
//! ```text
//! cargo run --release --example steer -- --model DIR --vector v/ --alpha 4 --prompt "..."
//! cargo run --release --example steer -- --model qwen2.5-coder-0.5b-instruct --refusal-direction v/ \
//!     --alpha 3 --prompt "Write a poem about the sea."
//! cargo run --release --example steer -- --model DIR --vector v/ --ablate --prompt "..."
//! cargo run --release --example steer -- --model DIR --vector v/ --export-gguf v.gguf   # for llama.cpp
//! cargo run --release --example steer -- --model DIR --import-gguf v.gguf --alpha 1 --prompt "..."
//! ```
//! `--model` is a checkpoint directory or a zoo name. Prompts go through the chat template when the model
//! has one (`--raw` to send them as plain text). `--refusal-direction OUT` computes Arditi et al.'s refusal
//! direction from `--data` (default: the project's refusal set, train split for the candidates, validation
//! split to choose the layer), prints the per-layer table and saves the vector to OUT (reused when OUT
//! already holds one for this model).

mod common;

use anyhow::{bail, Context, Result};
use clap::Parser;
use rosetta::hooks::{GenerateOptions, Hooks, LoadOptions, Model, Tokenizer};
use rosetta::steering::{
    ablate_direction, add_vector, refusal_candidates, select_refusal_direction, AblationScope,
    Contrast, ControlVector, InduceThreshold, ModelIdentity, Prompt, RefusalConfig, SteeringVector,
    Strength, Where,
};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Steer a model with a vector and compare completions")]
struct Args {
    /// Checkpoint directory (HF layout) or zoo name.
    #[arg(long)]
    model: String,
    /// A saved steering vector (vector.json + vector.safetensors).
    #[arg(long)]
    vector: Option<PathBuf>,
    /// A llama.cpp / repeng GGUF control vector instead of --vector.
    #[arg(long)]
    import_gguf: Option<PathBuf>,
    /// Compute the refusal direction, save it here and steer with it.
    #[arg(long)]
    refusal_direction: Option<PathBuf>,
    /// JSONL with {"label": "harmful"|"harmless", "split": "train"|"validation"|..., "instruction"} rows
    /// for --refusal-direction.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Strength: the vector is multiplied by alpha (or, with --relative, scaled to alpha times the mean
    /// activation norm it was computed at).
    #[arg(long, default_value_t = 1.0)]
    alpha: f64,
    /// Interpret --alpha in units of the vector's suggested scale.
    #[arg(long)]
    relative: bool,
    /// Project the direction out at every layer instead of adding it.
    #[arg(long)]
    ablate: bool,
    /// Where to add: all, prompt or generated.
    #[arg(long, default_value = "all")]
    positions: String,
    /// Prompt (repeatable).
    #[arg(long)]
    prompt: Vec<String>,
    /// Send prompts as plain text, without the chat template.
    #[arg(long)]
    raw: bool,
    /// New tokens per completion.
    #[arg(long, default_value_t = 48)]
    max_new_tokens: usize,
    /// Write the vector (times alpha) as a GGUF control vector for llama.cpp's --control-vector.
    #[arg(long)]
    export_gguf: Option<PathBuf>,
    /// Device: auto, cpu, cuda, cuda:N (default: $ROSETTA_DEVICE or auto).
    #[arg(long)]
    device: Option<String>,
}

fn refusal_data(path: &Path) -> Result<Vec<(String, String, String)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
            let field = |k: &str| {
                v[k].as_str().map(str::to_string).with_context(|| {
                    format!("{}:{}: missing string field {k:?}", path.display(), i + 1)
                })
            };
            Ok((field("label")?, field("split")?, field("instruction")?))
        })
        .collect()
}

fn compute_refusal(
    model: &Model,
    tok: &Tokenizer,
    args: &Args,
    out: &Path,
) -> Result<SteeringVector> {
    let identity = ModelIdentity::of(model)?;
    if out.join("vector.json").exists() {
        let v = SteeringVector::load_for(out, &identity)?;
        println!("reusing the refusal direction in {}", out.display());
        return Ok(v);
    }
    let default = common::task_data("refusal.jsonl");
    let path = args.data.clone().unwrap_or(default);
    let rows = refusal_data(&path)?;
    let pick = |label: &str, split: &str| -> Vec<Prompt> {
        rows.iter()
            .filter(|r| r.0 == label && r.1 == split)
            .map(|r| Prompt::user(r.2.clone()))
            .collect()
    };
    let train = Contrast {
        positive: pick("harmful", "train"),
        negative: pick("harmless", "train"),
        data: Some(format!("{} (train split)", path.display())),
    };
    let held_out = Contrast {
        positive: pick("harmful", "validation"),
        negative: pick("harmless", "validation"),
        data: None,
    };
    if train.positive.is_empty() || held_out.positive.is_empty() {
        bail!(
            "{} needs harmful and harmless rows in the train and validation splits",
            path.display()
        );
    }
    let t0 = Instant::now();
    println!(
        "refusal direction: candidates from {} + {} train prompts, layer chosen on {} + {} validation prompts",
        train.positive.len(),
        train.negative.len(),
        held_out.positive.len(),
        held_out.negative.len()
    );
    let candidates = refusal_candidates(model, tok, &train, 16)?;
    let mut config = RefusalConfig::new(tok)?;
    // Small models' harmful prompts score below Arditi's absolute threshold themselves (see the steering
    // crate's docs): ask for a clear rise over the harmless score.
    config.induce = InduceThreshold::RiseOverHarmless(0.5);
    config.max_kl = 0.15;
    let sel = select_refusal_direction(model, tok, &candidates, &held_out, &config)?;
    println!("{}", sel.to_markdown());
    println!(
        "chose layer {} in {:.0}s",
        sel.layer,
        t0.elapsed().as_secs_f64()
    );
    sel.vector.save(out)?;
    println!("saved to {}", out.display());
    Ok(sel.vector)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = common::model_dir(&args.model)?;
    let device = common::device(args.device.as_deref())?;
    let model = Model::load(&dir, LoadOptions::default().with_device(device))?;
    let tok = Tokenizer::from_dir(&dir)?;
    let identity = ModelIdentity::of(&model)?;
    let vector = match (&args.vector, &args.import_gguf, &args.refusal_direction) {
        (Some(v), None, None) => SteeringVector::load_for(v, &identity)?,
        (None, Some(g), None) => {
            let cv = ControlVector::read(g)?;
            println!(
                "{}: model hint {:?}, blocks {:?}",
                g.display(),
                cv.model_hint,
                cv.directions.keys().collect::<Vec<_>>()
            );
            SteeringVector::from_control_vector(&cv, identity.clone())?
        }
        (None, None, Some(out)) => compute_refusal(&model, &tok, &args, out)?,
        _ => bail!("give exactly one of --vector, --import-gguf, --refusal-direction"),
    };
    println!(
        "vector: {} for {}, entries {}",
        rosetta::steering::method_name(&vector.method),
        vector.model.id,
        vector
            .entries
            .iter()
            .map(|e| format!("{} (norm {:.2}, scale {:.1})", e.point, e.norm(), e.scale))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(path) = &args.export_gguf {
        let cv = vector.to_control_vector(args.alpha, &model.spec().model_type)?;
        cv.write(path)?;
        println!(
            "wrote {} (blocks {:?}; llama.cpp: --control-vector {})",
            path.display(),
            cv.directions.keys().collect::<Vec<_>>(),
            path.display()
        );
    }
    if args.prompt.is_empty() {
        return Ok(());
    }
    let mut hooks = Hooks::new();
    if args.ablate {
        let e = vector.single()?;
        ablate_direction(
            &mut hooks,
            &e.direction,
            AblationScope::EveryLayer {
                num_layers: model.num_layers(),
            },
        )?;
    } else {
        let at = match args.positions.as_str() {
            "all" => Where::All,
            "prompt" => Where::Prompt,
            "generated" => Where::Generated,
            other => bail!("--positions must be all, prompt or generated, not {other:?}"),
        };
        let strength = if args.relative {
            Strength::Relative(args.alpha)
        } else {
            Strength::Raw(args.alpha)
        };
        add_vector(&mut hooks, &vector, strength, &at)?;
    }
    let chat = !args.raw && tok.has_chat_template();
    let ids = args
        .prompt
        .iter()
        .map(|p| {
            let prompt = if chat {
                Prompt::user(p.clone())
            } else {
                Prompt::text(p.clone())
            };
            Ok(rosetta::steering::EncodedPrompt::new(&tok, &prompt)?.ids)
        })
        .collect::<Result<Vec<_>>>()?;
    let opts =
        GenerateOptions::greedy(args.max_new_tokens).with_stop_tokens(tok.eos_token_ids().to_vec());
    let plain = model.generate(&ids, tok.pad_token_id(), &Hooks::new(), &opts)?;
    let steered = model.generate(&ids, tok.pad_token_id(), &hooks, &opts)?;
    let what = if args.ablate {
        "ablated".to_string()
    } else {
        format!("alpha {}", args.alpha)
    };
    for (i, p) in args.prompt.iter().enumerate() {
        println!("\n> {p}");
        println!(
            "  plain:   {}",
            tok.decode(&plain.tokens[i], true)?.replace('\n', " ")
        );
        println!(
            "  {what:<8} {}",
            tok.decode(&steered.tokens[i], true)?.replace('\n', " ")
        );
    }
    Ok(())
}
