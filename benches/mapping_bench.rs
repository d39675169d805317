#![allow(missing_docs)] // criterion_group! generates undocumented items
//! Criterion benchmarks of the mapping crate at the paper's dims (896 -> 1536: Qwen 0.5B -> 1.5B;
//! 2048 -> 3072: Llama 1B -> 3B): the trainer's step (forward, MSE, backward, AdamW) and inference of the
//! autoencoder at several batch sizes, and one ridge accumulation batch. Throughput is in rows.
//!
//! ```text
//! cargo bench --bench mapping_bench              # all
//! cargo bench --bench mapping_bench -- train_step
//! ```
//! The side-by-side comparison with a PyTorch loop is `scripts/bench_mapping.py` (docs/PERFORMANCE.md).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rosetta::hooks::default_device;
use rosetta::hooks::device::device_name;
use rosetta::mapping::*;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn benches(c: &mut Criterion) {
    rosetta::hooks::device::flush_denormals();
    let device = default_device().expect("device");
    let dev = device_name(device);
    for (d_src, d_tgt) in [(896i64, 1536i64), (2048, 3072)] {
        tch::manual_seed(0);
        let map: AnyMap = Autoencoder::new(d_src, d_tgt, None, AutoencoderInit::Default, device)
            .expect("map")
            .into();
        let params = map.parameters();
        let cfg = AdamWConfig::default();
        let mut opt = AdamW::new(cfg, &params).expect("adamw");
        let mut g = c.benchmark_group(format!("{dev}/map/{d_src}x{d_tgt}"));
        g.sample_size(10).measurement_time(Duration::from_secs(5));
        for batch in [64i64, 1024, 4096] {
            let x = Tensor::randn([batch, d_src], (Kind::Float, device));
            let y = Tensor::randn([batch, d_tgt], (Kind::Float, device));
            g.throughput(Throughput::Elements(batch as u64));
            g.bench_function(format!("train_step/b{batch}"), |b| {
                b.iter(|| {
                    let (_l, grads) =
                        loss_and_grads(&map, &params, &x, &y, 0.0, 1.0).expect("step");
                    opt.step(&params, &grads, cfg.lr).expect("adamw");
                    sync(device);
                })
            });
            g.bench_function(format!("infer/b{batch}"), |b| {
                b.iter(|| {
                    let _g = tch::no_grad_guard();
                    let _ = map.forward(&x).expect("forward");
                    sync(device);
                })
            });
        }
        let batch = 4096i64;
        let x = Tensor::randn([batch, d_src], (Kind::Float, device)) + 3.0;
        let y = Tensor::randn([batch, d_tgt], (Kind::Float, device));
        g.throughput(Throughput::Elements(batch as u64));
        for (p, name) in [(Precision::F32, "f32"), (Precision::F64, "f64")] {
            let mut m = CrossMoments::new(d_src, d_tgt, p, device).expect("moments");
            g.bench_function(format!("ridge_update_{name}/b{batch}"), |b| {
                b.iter(|| {
                    m.update(&x, &y).expect("update");
                    sync(device);
                })
            });
        }
        g.finish();
    }
}

criterion_group! {
    name = mapping;
    config = Criterion::default();
    targets = benches
}
criterion_main!(mapping);
