#![allow(missing_docs)] // criterion_group! generates undocumented items
//! Criterion benchmarks of the model-hooks hot paths on the zoo's SmolLM2 (`make models` first):
//! capture to a middle layer (the forward stops there), and steered greedy generation at batch 1 and 8.
//! Names are prefixed with the device (`cpu/...`, `cuda:0/...`).
//!
//! ```text
//! cargo bench --bench bench_main            # all
//! cargo bench --bench bench_main -- capture # a subset
//! ```
//! The side-by-side comparison with HF transformers is `scripts/bench_hf.py` (docs/PERFORMANCE.md).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rosetta::hooks::device::device_name;
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

criterion_group! {
    name = model_hooks;
    config = Criterion::default();
    targets = benches
}
criterion_main!(model_hooks);
