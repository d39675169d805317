//! Generate from a checkpoint, optionally steered, and time it.
//!
//! ```text
//! cargo run --release --example generate -- --model DIR --prompt "The capital of France is" \
//!     [--input prompts.jsonl] [--chat] [--max-new-tokens 64] [--batch 8] \
//!     [--steer-layer 15 --alpha 4] [--sample --temperature 0.8 --top-p 0.9 --top-k 50 --seed 0] \
//!     [--ignore-eos] [--repeat 3] [--dtype bf16]
//! ```
//! `--steer-layer L` adds `alpha * v` to `resid_post.L` at every position, with `v` a fixed random unit
//! vector (seeded) — a stand-in for a real steering vector that costs the same. `--repeat N` times N
//! generations after a warm-up and prints `tokens/s: X` (new tokens only, load time excluded); `--serve`
//! then keeps the process up and times `N` more generations for each line `N` on stdin (for
//! `scripts/bench_hf.py`).

mod common;

use anyhow::{bail, Result};
use clap::Parser;
use rosetta::hooks::{
    GenerateOptions, HookPoint, Hooks, LoadOptions, Model, Positions, Sampling, Tokenizer,
};
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Parser, Debug)]
#[command(about = "Generate from a checkpoint, optionally steered, and time it")]
struct Args {
    /// Checkpoint directory (HF layout).
    #[arg(long)]
    model: PathBuf,
    /// Prompt text (repeatable).
    #[arg(long)]
    prompt: Vec<String>,
    /// JSONL prompts ({"text"}, {"messages"} or {"ids"} per line), after any --prompt.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Render text prompts as user messages through the chat template.
    #[arg(long)]
    chat: bool,
    /// New tokens per row.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Batch size: the prompts are cycled to fill it (default: number of prompts).
    #[arg(long)]
    batch: Option<usize>,
    /// Steer `resid_post` of this layer.
    #[arg(long)]
    steer_layer: Option<usize>,
    /// Steering strength (multiplies a random unit vector).
    #[arg(long, default_value_t = 4.0)]
    alpha: f64,
    /// Sample instead of greedy decoding.
    #[arg(long)]
    sample: bool,
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Nucleus mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Keep the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Seed of the sampler and of the steering vector.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Do not stop at EOS (fixed-length outputs, for timing).
    #[arg(long)]
    ignore_eos: bool,
    /// Time N generations after a warm-up.
    #[arg(long)]
    repeat: Option<usize>,
    /// With --repeat: then answer each stdin line `N` with the tokens/s of N more generations.
    #[arg(long, requires = "repeat")]
    serve: bool,
    /// Model dtype (f32, bf16, f16).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Device: auto, cpu, cuda, cuda:N (default: $ROSETTA_DEVICE or auto).
    #[arg(long)]
    device: Option<String>,
    /// Run libtorch's operators only (HF's computation, operator for operator: MKL's GEMM, unfused
    /// norms and activations) instead of Rosetta's faster CPU kernels.
    #[arg(long)]
    torch_kernels: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = common::device(args.device.as_deref())?;
    let kind = common::dtype(&args.dtype)?;
    let model = Model::load(
        &args.model,
        LoadOptions::default()
            .with_device(device)
            .with_kind(kind)
            .with_fast_kernels(!args.torch_kernels),
    )?;
    let tok = Tokenizer::from_dir(&args.model)?;
    let mut rows: Vec<common::Row> = args
        .prompt
        .iter()
        .map(|t| common::Row::Text { text: t.clone() })
        .collect();
    if let Some(p) = &args.input {
        rows.extend(common::read_jsonl(p)?);
    }
    if rows.is_empty() {
        bail!("give at least one --prompt or an --input file");
    }
    let encoded = rows
        .iter()
        .map(|r| Ok(common::encode_row(&tok, r, args.chat)?.ids))
        .collect::<Result<Vec<_>>>()?;
    let batch = args.batch.unwrap_or(encoded.len()).max(1);
    let prompts: Vec<Vec<i64>> = (0..batch)
        .map(|i| encoded[i % encoded.len()].clone())
        .collect();

    let mut hooks = Hooks::new();
    if let Some(l) = args.steer_layer {
        tch::manual_seed(args.seed as i64);
        let v = Tensor::randn([model.d_model()], (Kind::Float, Device::Cpu));
        let v = &v / v.norm().double_value(&[]);
        hooks.add(HookPoint::ResidPost(l), &v, args.alpha, Positions::All);
    }
    let sampling = if args.sample {
        Sampling::Sample {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
        }
    } else {
        Sampling::Greedy
    };
    let stop = if args.ignore_eos {
        vec![]
    } else {
        tok.eos_token_ids().to_vec()
    };
    let opts = GenerateOptions::greedy(args.max_new_tokens)
        .with_sampling(sampling)
        .with_seed(args.seed)
        .with_stop_tokens(stop);
    let t = Instant::now();
    let gen = model.generate(&prompts, tok.pad_token_id(), &hooks, &opts)?;
    let first = t.elapsed().as_secs_f64();
    for (i, (p, out)) in prompts
        .iter()
        .zip(&gen.tokens)
        .enumerate()
        .take(encoded.len())
    {
        println!("[{i}] {}", tok.decode(p, false)?);
        println!("  -> {:?} ({:?})", tok.decode(out, true)?, gen.finish[i]);
    }
    let n: usize = gen.tokens.iter().map(Vec::len).sum();
    eprintln!("{n} new tokens in {first:.2}s (batch {batch}, incl. warm-up)");
    if let Some(r) = args.repeat {
        let sync = || {
            if let Device::Cuda(i) = device {
                tch::Cuda::synchronize(i as i64);
            }
        };
        sync();
        let t = Instant::now();
        let mut tokens = 0;
        for _ in 0..r.max(1) {
            let g = model.generate(&prompts, tok.pad_token_id(), &hooks, &opts)?;
            tokens += g.tokens.iter().map(Vec::len).sum::<usize>();
        }
        sync();
        let secs = t.elapsed().as_secs_f64();
        println!(
            "batch {batch}, {} new tokens per row, {} runs: {:.3}s per run",
            args.max_new_tokens,
            r.max(1),
            secs / r.max(1) as f64
        );
        println!("tokens/s: {:.2}", tokens as f64 / secs);
        if args.serve {
            common::serve(
                "tokens",
                || {
                    let g = model.generate(&prompts, tok.pad_token_id(), &hooks, &opts)?;
                    Ok(g.tokens.iter().map(Vec::len).sum())
                },
                sync,
            )?;
        }
    }
    Ok(())
}
