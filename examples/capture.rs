//! Capture activations at hook points over a JSONL prompt file and write them to safetensors.
//!
//! ```text
//! cargo run --release --example capture -- --model DIR --input prompts.jsonl \
//!     --points resid_post:all,logits --out acts.safetensors [--dtype f32|bf16] [--chat] [--repeat N]
//! ```
//! Each tensor is `[total_tokens, d]` (`logits`: `[total_tokens, vocab]`), prompts concatenated in input
//! order with padding removed; `token_ids` is `[total_tokens]` i64. With `--repeat N` the batch's forward
//! pass is timed N times after a warm-up (load time excluded) and `tokens/s: X` printed; with `--serve` as
//! well, the process then stays up and times `N` more passes for each line `N` on stdin (for
//! `scripts/bench_hf.py`, which interleaves short measurements of both sides).

mod common;

use anyhow::{bail, Context, Result};
use clap::Parser;
use rosetta::hooks::{
    Batch, CaptureOptions, HookPoint, Hooks, LoadOptions, Model, PaddingSide, Tokenizer,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Tensor};

#[derive(Parser, Debug)]
#[command(about = "Capture activations at hook points over a JSONL prompt file")]
struct Args {
    /// Checkpoint directory (HF layout).
    #[arg(long)]
    model: PathBuf,
    /// JSONL file: one {"text": ...} or {"messages": [...]} per line.
    #[arg(long)]
    input: PathBuf,
    /// Comma-separated hook points: `resid_post:all`, `resid_post.12`, `resid_pre:3-5`, `embed`,
    /// `final_norm`, `logits`, ...
    #[arg(long, default_value = "resid_post:all")]
    points: String,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
    /// Model dtype (f32, bf16, f16).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Treat text rows as single user messages rendered with the chat template.
    #[arg(long)]
    chat: bool,
    /// Rows per forward pass (rows are sorted by length to limit padding).
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Time N forward passes over the first batch after a warm-up and print tokens/s.
    #[arg(long)]
    repeat: Option<usize>,
    /// With --repeat: then answer each stdin line `N` with the tokens/s of N more passes.
    #[arg(long, requires = "repeat")]
    serve: bool,
    /// Attention implementation: sdpa (fused) or eager (HF's op order).
    #[arg(long, default_value = "sdpa")]
    attention: String,
    /// Device: auto, cpu, cuda, cuda:N (default: $ROSETTA_DEVICE or auto).
    #[arg(long)]
    device: Option<String>,
    /// Run libtorch's operators only (HF's computation, operator for operator: MKL's GEMM, unfused
    /// norms and activations) instead of Rosetta's faster CPU kernels.
    #[arg(long)]
    torch_kernels: bool,
}

fn parse_points(spec: &str, num_layers: usize) -> Result<Vec<HookPoint>> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Some((name, range)) = item.split_once(':') {
            let layers: Vec<usize> = if range == "all" {
                (0..num_layers).collect()
            } else if let Some((a, b)) = range.split_once('-') {
                (a.parse()?..=b.parse()?).collect()
            } else {
                vec![range
                    .parse()
                    .with_context(|| format!("bad layer in {item:?}"))?]
            };
            for l in layers {
                out.push(format!("{name}.{l}").parse::<HookPoint>()?);
            }
        } else {
            out.push(item.parse::<HookPoint>()?);
        }
    }
    if out.is_empty() {
        bail!("--points is empty");
    }
    out.dedup();
    Ok(out)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = common::device(args.device.as_deref())?;
    let kind = common::dtype(&args.dtype)?;
    let t0 = Instant::now();
    let model = Model::load(
        &args.model,
        LoadOptions::default()
            .with_device(device)
            .with_kind(kind)
            .with_attention(common::attention(&args.attention)?)
            .with_fast_kernels(!args.torch_kernels),
    )?;
    let tok = Tokenizer::from_dir(&args.model)?;
    eprintln!(
        "loaded {} ({:?}, {} layers, d={}) on {} as {:?} in {:.1}s",
        args.model.display(),
        model.spec().family,
        model.num_layers(),
        model.d_model(),
        rosetta::hooks::device::device_name(device),
        kind,
        t0.elapsed().as_secs_f64()
    );
    let points = parse_points(&args.points, model.num_layers())?;
    let rows = common::read_jsonl(&args.input)?;
    let encoded: Vec<Vec<i64>> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let e =
                common::encode_row(&tok, r, args.chat).with_context(|| format!("row {}", i + 1))?;
            if e.ids.is_empty() {
                bail!("row {} tokenizes to no tokens", i + 1);
            }
            Ok(e.ids)
        })
        .collect::<Result<_>>()?;

    let mut hooks = Hooks::new();
    for &p in &points {
        hooks.capture_with(
            p,
            CaptureOptions {
                device: Some(Device::Cpu),
                kind: None,
            },
        );
    }
    // Sort by length so batches hold similar lengths; outputs are put back in input order.
    let mut order: Vec<usize> = (0..encoded.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(encoded[i].len()));
    let total_tokens: usize = encoded.iter().map(Vec::len).sum();
    let pb = common::progress(total_tokens as u64, "tokens");
    let mut per_row: HashMap<usize, Vec<Tensor>> = HashMap::new();
    let pad = tok.pad_token_id();
    for chunk in order.chunks(args.batch_size.max(1)) {
        let seqs: Vec<Vec<i64>> = chunk.iter().map(|&i| encoded[i].clone()).collect();
        let batch = Batch::from_sequences(&seqs, pad, PaddingSide::Right, device)?;
        let out = model.forward(&batch, &hooks)?;
        for (j, &row) in chunk.iter().enumerate() {
            let n = encoded[row].len() as i64;
            let tensors = points
                .iter()
                .map(|&p| {
                    let t = out.captured(p).context("capture missing")?;
                    Ok(t.get(j as i64).narrow(0, 0, n))
                })
                .collect::<Result<Vec<_>>>()?;
            per_row.insert(row, tensors);
        }
        pb.inc(seqs.iter().map(Vec::len).sum::<usize>() as u64);
    }
    pb.finish_and_clear();

    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (k, p) in points.iter().enumerate() {
        let parts: Vec<&Tensor> = (0..encoded.len()).map(|i| &per_row[&i][k]).collect();
        tensors.push((p.to_string(), Tensor::cat(&parts, 0)));
    }
    let ids: Vec<i64> = encoded.iter().flatten().copied().collect();
    tensors.push(("token_ids".into(), Tensor::from_slice(&ids)));
    let meta = HashMap::from([
        ("model".to_string(), args.model.display().to_string()),
        ("rows".to_string(), encoded.len().to_string()),
        ("dtype".to_string(), format!("{kind:?}")),
    ]);
    rosetta::hooks::weights::write_safetensors_atomic(&args.out, &tensors, Some(meta))?;
    println!(
        "wrote {} ({} tensors, {} tokens from {} rows)",
        args.out.display(),
        tensors.len(),
        total_tokens,
        encoded.len()
    );

    if let Some(n) = args.repeat {
        // Time the forward pass over the first batch (in input order), hooks as requested, load excluded.
        let seqs: Vec<Vec<i64>> = encoded
            .iter()
            .take(args.batch_size.max(1))
            .cloned()
            .collect();
        let batch = Batch::from_sequences(&seqs, pad, PaddingSide::Right, device)?;
        let mut timing_hooks = Hooks::new();
        for &p in &points {
            timing_hooks.capture(p);
        }
        let tokens: usize = seqs.iter().map(Vec::len).sum();
        model.forward(&batch, &timing_hooks)?; // warm-up
        let sync = || {
            if let Device::Cuda(i) = device {
                tch::Cuda::synchronize(i as i64);
            }
        };
        sync();
        let t = Instant::now();
        for _ in 0..n.max(1) {
            let out = model.forward(&batch, &timing_hooks)?;
            drop(out);
        }
        sync();
        let secs = t.elapsed().as_secs_f64();
        println!(
            "batch {}x{} ({} tokens), {} passes to {}: {:.3}s per pass",
            batch.size(),
            batch.seq_len(),
            tokens,
            n.max(1),
            points.last().map(|p| p.to_string()).unwrap_or_default(),
            secs / n.max(1) as f64
        );
        println!("tokens/s: {:.1}", (tokens * n.max(1)) as f64 / secs);
        if args.serve {
            common::serve(
                "tokens",
                || {
                    drop(model.forward(&batch, &timing_hooks)?);
                    Ok(tokens)
                },
                sync,
            )?;
        }
    }
    Ok(())
}
