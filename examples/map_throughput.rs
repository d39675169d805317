//! Time the mapping trainer's step (forward, MSE loss, backward, AdamW) or inference on in-memory batches,
//! for the side-by-side comparison with a PyTorch loop (`scripts/bench_mapping.py`).
//!
//! ```text
//! cargo run --release --example map_throughput -- --d-src 896 --d-tgt 1536 --batch 1024 --mode train
//! ```
//! Prints `rows/s: X` (best of `--rounds`, each `--steps` steps after `--warmup` steps). With `--serve` it
//! stays up after the warm-up and answers each line `N` on stdin with `rows/s: X` for `N` further steps,
//! so a comparison script can interleave short measurements of both sides on warm processes.

mod common;

use anyhow::Result;
use clap::Parser;
use rosetta::mapping::*;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 896)]
    d_src: i64,
    #[arg(long, default_value_t = 1536)]
    d_tgt: i64,
    /// autoencoder or affine.
    #[arg(long, default_value = "autoencoder")]
    kind: String,
    #[arg(long, default_value_t = 1024)]
    batch: i64,
    /// train (step: forward, MSE, backward, AdamW), infer, or adamw (the optimiser step alone).
    #[arg(long, default_value = "train")]
    mode: String,
    #[arg(long, default_value_t = 20)]
    steps: usize,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long)]
    device: Option<String>,
    /// Write a synthetic paired f16 store of `--rows` rows (`d_src` -> `d_tgt`, y = A x + noise) into this
    /// directory and exit (input for `train_mapping --kind ridge` timings).
    #[arg(long)]
    make_store: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 1_000_000)]
    rows: i64,
    /// After the warm-up, time `N` steps for each line `N` read from stdin (until end of input).
    #[arg(long)]
    serve: bool,
}

fn make_store(dir: &std::path::Path, a: &Args) -> Result<()> {
    use rosetta::store::*;
    let entry = |id: &str, dim| ModelEntry {
        id: id.into(),
        dir: format!("synthetic/{id}"),
        tokenizer_hash: "synthetic".into(),
        hook_point: "resid_post.0".into(),
        dim,
    };
    let spec = StoreSpec {
        source: entry("synthetic-src", a.d_src),
        target: Some(entry("synthetic-tgt", a.d_tgt)),
        dtype: StoreDtype::F16,
        alignment: Alignment::Identity,
        seed: 0,
    };
    let mut w = StoreWriter::create(dir, spec, WriterOptions::default())?;
    tch::manual_seed(0);
    let o = (Kind::Float, Device::Cpu);
    let m = Tensor::randn([a.d_src, a.d_tgt], o) / (a.d_src as f64).sqrt();
    let doc_rows = 1000i64;
    let bar = common::progress((a.rows / doc_rows) as u64, "docs");
    for doc in 0..a.rows / doc_rows {
        let x = Tensor::randn([doc_rows, a.d_src], o) + 2.0;
        let y = x.matmul(&m) + Tensor::randn([doc_rows, a.d_tgt], o) * 0.1;
        let ids: Vec<i64> = (0..doc_rows).collect();
        let side = |acts: Tensor| SideRows {
            acts,
            token_ids: ids.clone(),
            positions: ids.clone(),
            encoded_tokens: doc_rows as _,
        };
        w.add(DocRows {
            doc_id: doc,
            x: side(x),
            y: Some(side(y)),
        })?;
        bar.inc(1);
    }
    w.finish()?;
    bar.finish_and_clear();
    println!(
        "wrote {} rows to {}",
        a.rows / doc_rows * doc_rows,
        dir.display()
    );
    Ok(())
}

fn sync(d: Device) {
    if let Device::Cuda(i) = d {
        tch::Cuda::synchronize(i as i64);
    }
}

fn main() -> Result<()> {
    rosetta::hooks::device::flush_denormals();
    let a = Args::parse();
    if let Some(dir) = &a.make_store {
        return make_store(dir, &a);
    }
    let device = common::device(a.device.as_deref())?;
    tch::manual_seed(0);
    let map: AnyMap = match a.kind.as_str() {
        "affine" => Affine::new(a.d_src, a.d_tgt, device)?.into(),
        _ => Autoencoder::new(a.d_src, a.d_tgt, None, AutoencoderInit::Default, device)?.into(),
    };
    let data: Vec<(Tensor, Tensor)> = (0..4)
        .map(|_| {
            (
                Tensor::randn([a.batch, a.d_src], (Kind::Float, device)),
                Tensor::randn([a.batch, a.d_tgt], (Kind::Float, device)),
            )
        })
        .collect();
    let params = map.parameters();
    let cfg = AdamWConfig::default();
    let mut opt = AdamW::new(cfg, &params)?;
    let fixed_grads: Vec<Tensor> = params.iter().map(|p| p.randn_like() * 1e-3).collect();
    let mut step = |i: usize| -> Result<()> {
        let (x, y) = &data[i % data.len()];
        if a.mode == "adamw" {
            opt.step(&params, &fixed_grads, cfg.lr)?;
        } else if a.mode == "train" {
            let (_loss, grads) = loss_and_grads(&map, &params, x, y, 0.0, 1.0)?;
            opt.step(&params, &grads, cfg.lr)?;
        } else {
            let _g = tch::no_grad_guard();
            let _ = map.forward(x)?;
        }
        Ok(())
    };
    for i in 0..a.warmup {
        step(i)?;
    }
    sync(device);
    if a.serve {
        let mut i = 0;
        return common::serve(
            "rows",
            || {
                step(i)?;
                i += 1;
                Ok(a.batch as usize)
            },
            || sync(device),
        );
    }
    let mut best = 0f64;
    for _ in 0..a.rounds {
        let t = Instant::now();
        for i in 0..a.steps {
            step(i)?;
        }
        sync(device);
        best = best.max((a.steps as i64 * a.batch) as f64 / t.elapsed().as_secs_f64());
    }
    println!("rows/s: {best:.1}");
    Ok(())
}
