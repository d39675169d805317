#![allow(missing_docs)] // criterion_group! generates undocumented items
//! Criterion benchmarks of the model-hooks hot paths on the zoo's SmolLM2 (`make models` first):
//! capture to a middle layer (the forward stops there), and steered greedy generation at batch 1 and 8.
//! Names are prefixed with the device (`cpu/...`, `cuda:0/...`). `cpu/kernels/...` times the element-wise
//! layers at SmolLM2's shapes (1024 tokens) with Rosetta's fused CPU kernels against libtorch's operator
//! chains (HF's computation), through the public `numerics` functions.
//!
//! ```text
//! cargo bench --bench bench_main            # all
//! cargo bench --bench bench_main -- capture # a subset
//! cargo bench --bench bench_main -- kernels
//! ```
//! The side-by-side comparison with HF transformers is `scripts/bench_hf.py` (docs/PERFORMANCE.md).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rosetta::hooks::config::{Activation, RopeScaling, RopeSpec};
use rosetta::hooks::device::device_name;
use rosetta::hooks::numerics::{gated, rope_cos_sin, rope_heads, rope_inv_freq, RmsNorm};
use rosetta::hooks::{
    default_device, zoo, Batch, GenerateOptions, HookPoint, Hooks, LoadOptions, Model, PaddingSide,
    Positions, Tokenizer,
};
use std::time::Duration;
use tch::{Device, Kind, Tensor};

const MODEL: &str = "smollm2-135m-instruct";
const LAYER: usize = 15;

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// `rows` sequences of `len` real tokens from a fixed text.
fn token_rows(tok: &Tokenizer, rows: usize, len: usize) -> Vec<Vec<i64>> {
    let text = include_str!("../docs/ARCHITECTURE.md").repeat(4);
    let ids = tok.encode(&text, false).expect("tokenize").ids;
    (0..rows)
        .map(|r| ids[r * len..(r + 1) * len].to_vec())
        .collect()
}

fn benches(c: &mut Criterion) {
    let Ok(entry) = zoo::find(MODEL) else {
        eprintln!("{MODEL} not in the zoo (run `make models`): skipping benchmarks");
        return;
    };
    let device = default_device().expect("device");
    let dev = device_name(device);
    let tok = Tokenizer::from_dir(&entry.dir).expect("tokenizer");

    // `f32-torch-kernels`: libtorch's operators (HF's computation) instead of Rosetta's CPU kernels.
    for (kind, kname, fast) in [
        (Kind::Float, "f32", true),
        (Kind::Float, "f32-torch-kernels", false),
        (Kind::BFloat16, "bf16", true),
    ] {
        let options = LoadOptions::default()
            .with_device(device)
            .with_kind(kind)
            .with_fast_kernels(fast);
        let model = Model::load(&entry.dir, options).expect("load");
        let rows = token_rows(&tok, 8, 128);
        let batch = Batch::from_sequences(&rows, 0, PaddingSide::Right, device).expect("batch");
        let mut hooks = Hooks::new();
        hooks.capture(HookPoint::ResidPost(LAYER));
        let mut g = c.benchmark_group(format!("{dev}/capture/{MODEL}"));
        g.sample_size(10).measurement_time(Duration::from_secs(8));
        g.throughput(Throughput::Elements(8 * 128));
        g.bench_function(format!("resid_post.{LAYER}/8x128/{kname}"), |b| {
            b.iter(|| {
                let out = model.forward(&batch, &hooks).expect("forward");
                sync(device);
                out
            })
        });
        g.finish();
    }

    let model = Model::load(&entry.dir, LoadOptions::default().with_device(device)).expect("load");
    let v = Tensor::randn([model.d_model()], (Kind::Float, Device::Cpu));
    let v = &v * (4.0 / v.norm().double_value(&[]));
    let mut hooks = Hooks::new();
    hooks.add(HookPoint::ResidPost(LAYER), &v, 1.0, Positions::All);
    let prompt = tok
        .encode("The capital of France is", false)
        .expect("tokenize")
        .ids;
    let opts = GenerateOptions::greedy(64);
    let mut g = c.benchmark_group(format!("{dev}/generate/{MODEL}"));
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    for batch in [1usize, 8] {
        let prompts = vec![prompt.clone(); batch];
        g.throughput(Throughput::Elements(64 * batch as u64));
        g.bench_function(format!("steered_greedy64/b{batch}/f32"), |b| {
            b.iter(|| {
                let out = model
                    .generate(&prompts, 0, &hooks, &opts)
                    .expect("generate");
                sync(device);
                out
            })
        });
    }
    g.finish();
}

/// RMSNorm, RoPE (queries) and the gated activation at SmolLM2's shapes, 8 x 128 tokens, each with
/// Rosetta's fused CPU kernel (`rosetta`) and libtorch's operators (`libtorch`), in f32 and bf16.
fn kernels(c: &mut Criterion) {
    let (b, t, d, heads, hd, inter) = (8i64, 128i64, 576i64, 9i64, 64i64, 1536i64);
    let mut g = c.benchmark_group("cpu/kernels");
    g.throughput(Throughput::Elements((b * t) as u64));
    for (kind, name) in [(Kind::Float, "f32"), (Kind::BFloat16, "bf16")] {
        let o = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([b, t, d], o).to_kind(kind);
        let w = (Tensor::randn([d], o) * 0.1 + 1.0).to_kind(kind);
        // The projection output RoPE reads: q heads as a view of [B, T, (9 + 2 * 3) * 64].
        let proj = Tensor::randn([b, t, (heads + 6) * hd], o).to_kind(kind);
        let q = proj.narrow(2, 0, heads * hd).view([b, t, heads, hd]);
        let spec = RopeSpec {
            theta: 100_000.0,
            scaling: RopeScaling::None,
        };
        let inv = rope_inv_freq(&spec, hd, Device::Cpu).expect("inv freq");
        let pos = Tensor::arange(t, (Kind::Int64, Device::Cpu))
            .view([1, t])
            .repeat([b, 1]);
        let (cos, sin) = rope_cos_sin(&inv, &pos, kind).expect("cos/sin");
        let stacked = Tensor::randn([b * t, 2 * inter], o).to_kind(kind);
        for (fast, side) in [(true, "rosetta"), (false, "libtorch")] {
            let norm = RmsNorm::new(w.shallow_clone(), false, 1e-5, fast).expect("norm");
            g.bench_function(format!("rms_norm/{name}/{side}"), |bch| {
                bch.iter(|| norm.forward(&x).expect("norm"))
            });
            g.bench_function(format!("rope_q/{name}/{side}"), |bch| {
                bch.iter(|| rope_heads(&q, &cos, &sin, kind, fast).expect("rope"))
            });
            // In place: a fresh copy of the stacked projection output per call (not timed).
            g.bench_function(format!("gated_silu/{name}/{side}"), |bch| {
                bch.iter_batched_ref(
                    || stacked.copy(),
                    |s| {
                        gated(
                            &s.narrow(1, 0, inter),
                            &s.narrow(1, inter, inter),
                            Activation::Silu,
                            fast,
                        )
                        .expect("gated")
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = model_hooks;
    config = Criterion::default();
    targets = benches, kernels
}
criterion_main!(model_hooks);
