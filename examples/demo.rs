//! Rosetta's main job (`make demo`): report the set-up (libtorch, device, model zoo), then steer a real
//! model — generate with a zoo model twice, without and with a steering vector (the difference of means
//! of two contrast prompt sets) added at a middle layer.
//!
//! ```text
//! cargo run --release --example demo [-- --model smollm2-135m-instruct --alpha 0.7 --layer 15]
//! ```

mod common;

use anyhow::{Context, Result};
use clap::Parser;
use rosetta::hooks::{
    device::device_name, libtorch_info, zoo, Batch, GenerateOptions, HookPoint, Hooks, LoadOptions,
    Model, PaddingSide, Positions, Tokenizer,
};
use std::time::Instant;
use tch::{Kind, Tensor};

#[derive(Parser, Debug)]
#[command(about = "Rosetta demo: set-up report and a steering vector at work")]
struct Args {
    /// Zoo model to steer.
    #[arg(long, default_value = "smollm2-135m-instruct")]
    model: String,
    /// Layer whose output (`resid_post`) is steered; default: the middle layer.
    #[arg(long)]
    layer: Option<usize>,
    /// Steering strength (multiplies the mean-difference vector).
    #[arg(long, default_value_t = 0.7)]
    alpha: f64,
    /// New tokens per generation.
    #[arg(long, default_value_t = 40)]
    max_new_tokens: usize,
    /// Only print the set-up report.
    #[arg(long)]
    inventory_only: bool,
    /// Device: auto, cpu, cuda, cuda:N (default: $ROSETTA_DEVICE or auto).
    #[arg(long)]
    device: Option<String>,
}

const POSITIVE: [&str; 6] = [
    "I love this, it is wonderful and makes me so happy.",
    "What a fantastic, joyful day, everything is great!",
    "This is the best thing ever, I am delighted.",
    "Such a beautiful, cheerful and delightful experience.",
    "I feel amazing, grateful and full of joy.",
    "Brilliant news, I am thrilled and excited!",
];
const NEGATIVE: [&str; 6] = [
    "I hate this, it is awful and makes me so sad.",
    "What a terrible, miserable day, everything is bad!",
    "This is the worst thing ever, I am disgusted.",
    "Such an ugly, gloomy and dreadful experience.",
    "I feel horrible, bitter and full of despair.",
    "Awful news, I am devastated and upset!",
];

fn report() -> Result<()> {
    let info = libtorch_info();
    println!("== Rosetta set-up");
    println!("libtorch    {} ({})", info.version, info.lib_dir);
    println!(
        "device      {} (CUDA available: {}, {} device(s); CPU threads: {})",
        device_name(rosetta::hooks::default_device()?),
        info.cuda_available,
        info.cuda_devices,
        info.cpu_threads
    );
    // libtorch really computes on the chosen device.
    let device = rosetta::hooks::default_device()?;
    let a = Tensor::randn([64, 64], (Kind::Float, device));
    let err = (a.matmul(&a.inverse()) - Tensor::eye(64, (Kind::Float, device)))
        .abs()
        .max()
        .double_value(&[]);
    println!("check       64x64 matmul(A, A^-1) = I within {err:.1e}");
    println!("zoo         {}", zoo::zoo_dir().display());
    println!(
        "  {:<30} {:<12} {:>7} {:>6} {:>10}  gguf sha256",
        "model", "type", "layers", "d", "size"
    );
    for (name, entry) in zoo::inventory()? {
        match entry {
            None => println!("  {name:<30} (not fetched: run `make models`)"),
            Some(e) => {
                e.check_sizes()?;
                let spec = rosetta::hooks::ArchSpec::from_file(&e.dir.join("config.json"))?;
                println!(
                    "  {:<30} {:<12} {:>7} {:>6} {:>10}  {}",
                    name,
                    e.record.model_type,
                    spec.num_layers,
                    spec.hidden_size,
                    common::human_bytes(e.total_size()),
                    &e.record.gguf.sha256
                );
            }
        }
    }
    Ok(())
}

/// Mean over prompts of the last token's activation at `point`: `[d]`.
fn mean_last_token(
    model: &Model,
    tok: &Tokenizer,
    prompts: &[&str],
    point: HookPoint,
) -> Result<Tensor> {
    let seqs = prompts
        .iter()
        .map(|p| Ok(tok.encode(p, true)?.ids))
        .collect::<Result<Vec<_>>>()?;
    let batch =
        Batch::from_sequences(&seqs, tok.pad_token_id(), PaddingSide::Left, model.device())?;
    let mut hooks = Hooks::new();
    hooks.capture(point);
    let out = model.forward(&batch, &hooks)?;
    let acts = out.captured(point).context("no capture")?;
    Ok(acts
        .select(1, batch.seq_len() - 1)
        .to_kind(Kind::Float)
        .mean_dim([0i64].as_slice(), false, Kind::Float))
}

fn main() -> Result<()> {
    let args = Args::parse();
    report()?;
    if args.inventory_only {
        return Ok(());
    }
    let entry = zoo::find(&args.model)?;
    let device = common::device(args.device.as_deref())?;
    let t0 = Instant::now();
    let model = Model::load(&entry.dir, LoadOptions::default().with_device(device))?;
    let tok = Tokenizer::from_dir(&entry.dir)?;
    let layer = args.layer.unwrap_or(model.num_layers() / 2);
    let point = HookPoint::ResidPost(layer);
    println!(
        "\n== Steering {} ({} layers, loaded in {:.1}s) at {point}, alpha {}",
        args.model,
        model.num_layers(),
        t0.elapsed().as_secs_f64(),
        args.alpha
    );
    let v = (mean_last_token(&model, &tok, &NEGATIVE, point)?
        - mean_last_token(&model, &tok, &POSITIVE, point)?)
    .to_kind(model.kind());
    println!(
        "vector      v = mean(negative) - mean(positive) over {} + {} prompts, |v| = {:.2}; adding {} * v",
        NEGATIVE.len(),
        POSITIVE.len(),
        v.norm().double_value(&[]),
        args.alpha
    );
    let prompts = [
        "I walked into the room and",
        "My opinion of the new restaurant is that",
    ];
    let seqs = prompts
        .iter()
        .map(|p| Ok(tok.encode(p, true)?.ids))
        .collect::<Result<Vec<_>>>()?;
    let opts =
        GenerateOptions::greedy(args.max_new_tokens).with_stop_tokens(tok.eos_token_ids().to_vec());
    let plain = model.generate(&seqs, tok.pad_token_id(), &Hooks::new(), &opts)?;
    let mut hooks = Hooks::new();
    hooks.add(point, &v, args.alpha, Positions::All);
    let t1 = Instant::now();
    let steered = model.generate(&seqs, tok.pad_token_id(), &hooks, &opts)?;
    let secs = t1.elapsed().as_secs_f64();
    for (i, p) in prompts.iter().enumerate() {
        println!("\nprompt      {p:?}");
        println!("plain    -> {:?}", tok.decode(&plain.tokens[i], true)?);
        println!("steered  -> {:?}", tok.decode(&steered.tokens[i], true)?);
    }
    let n: usize = steered.tokens.iter().map(Vec::len).sum();
    println!(
        "\nsteered generation: {n} tokens in {secs:.2}s ({:.1} tok/s, batch {})",
        n as f64 / secs,
        seqs.len()
    );
    Ok(())
}
