#![allow(missing_docs)] // criterion_group! generates undocumented items
//! Criterion benchmarks of steering on SmolLM2-135M-Instruct (zoo): what an intervention costs in
//! generation, what mapped completions cost against the two models' own passes, and what sharing one
//! prefill saves a layer sweep. Four chat prompts, 32 greedy tokens each (no early stop), f32.
//!
//! ```text
//! cargo bench --bench steering_bench
//! ```
//! - `generate/plain` vs `generate/add` (a vector added at `resid_post.15`, every position) vs
//!   `generate/ablate_every_layer` (a direction projected out of 3 points of all 30 blocks);
//! - `mapped/plain_x2` (the source's and the target's plain generations) vs `mapped/side_by_side` (the target
//!   reading a 576 -> 576 affine map of the source's `resid_post.15` at every token);
//! - `sweep_cell/shared_prefill` (fork a prefilled cache, decode with the vector at generated tokens) vs
//!   `sweep_cell/own_prefill` (a full generation per cell).

use criterion::{criterion_group, criterion_main, Criterion};
use rosetta::hooks::device::device_name;
use rosetta::hooks::{
    zoo, ChatMessage, GenerateOptions, HookPoint, Hooks, LoadOptions, Model, Tokenizer,
};
use rosetta::mapping::{Affine, AnyMap, MapKind};
use rosetta::steering::*;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

fn benches(c: &mut Criterion) {
    let entry = match zoo::find("smollm2-135m-instruct") {
        Ok(e) => e,
        Err(e) => {
            eprintln!("skipping steering benches: {e}");
            return;
        }
    };
    let device = Device::Cpu;
    let model = Model::load(&entry.dir, LoadOptions::default().with_device(device)).expect("model");
    let tok = Tokenizer::from_dir(&entry.dir).expect("tokenizer");
    let prompts: Vec<Vec<i64>> = [
        "Tell me about the moon.",
        "Write a sentence about trains.",
        "What is your favourite colour?",
        "Describe a forest in autumn.",
    ]
    .iter()
    .map(|p| {
        tok.encode_chat(&[ChatMessage::user(*p)], true)
            .expect("encode")
            .ids
    })
    .collect();
    let pad = tok.pad_token_id();
    let opts = GenerateOptions::greedy(32);
    let d = model.d_model();
    tch::manual_seed(0);
    let point = HookPoint::ResidPost(15);
    let dir = Tensor::randn([d], (Kind::Float, device));
    let identity = ModelIdentity::of(&model).expect("identity");
    let v = SteeringVector::new(
        identity,
        Method::Other {
            description: "random".into(),
        },
        Provenance::default(),
        vec![VectorEntry::new(point, &dir, 1.0).expect("entry")],
    )
    .expect("vector");
    let mut add = Hooks::new();
    add_vector(&mut add, &v, Strength::Raw(2.0), &Where::All).expect("add");
    let mut ablate = Hooks::new();
    ablate_direction(
        &mut ablate,
        &dir,
        AblationScope::EveryLayer {
            num_layers: model.num_layers(),
        },
    )
    .expect("ablate");
    let plain = Hooks::new();

    let dev = device_name(device);
    let mut g = c.benchmark_group(format!("{dev}/steering/smollm2-135m"));
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    for (name, hooks) in [
        ("plain", &plain),
        ("add", &add),
        ("ablate_every_layer", &ablate),
    ] {
        g.bench_function(format!("generate/{name}"), |b| {
            b.iter(|| {
                model
                    .generate(&prompts, pad, hooks, &opts)
                    .expect("generate")
            })
        });
    }

    let w =
        Tensor::eye(d, (Kind::Float, device)) + Tensor::randn([d, d], (Kind::Float, device)) * 0.01;
    let map: AnyMap = Affine::from_parts(
        MapKind::Affine,
        w,
        Tensor::zeros([d], (Kind::Float, device)),
    )
    .expect("map")
    .into();
    let pair = MappedPair::new(&model, &model, &map, point, point).expect("pair");
    g.bench_function("mapped/plain_x2", |b| {
        b.iter(|| {
            model
                .generate(&prompts, pad, &plain, &opts)
                .expect("source");
            model
                .generate(&prompts, pad, &plain, &opts)
                .expect("target")
        })
    });
    g.bench_function("mapped/side_by_side", |b| {
        b.iter(|| pair.generate(&prompts, pad, &opts, None).expect("mapped"))
    });

    let mut gen_only = Hooks::new();
    add_vector(&mut gen_only, &v, Strength::Raw(2.0), &Where::Generated).expect("add");
    let (prefilled, _) = model
        .prefill(&prompts, pad, &plain, opts.max_new_tokens)
        .expect("prefill");
    g.bench_function("sweep_cell/shared_prefill", |b| {
        b.iter(|| {
            prefilled
                .fork()
                .expect("fork")
                .finish(pad, &gen_only, &opts, Vec::new())
                .expect("finish")
        })
    });
    g.bench_function("sweep_cell/own_prefill", |b| {
        b.iter(|| {
            model
                .generate(&prompts, pad, &gen_only, &opts)
                .expect("generate")
        })
    });
    g.finish();
}

criterion_group! {
    name = steering;
    config = Criterion::default();
    targets = benches
}
criterion_main!(steering);
