//! Behaviour of hooks, batching and the KV cache on the tiny golden checkpoints (fast, no zoo needed).

use anyhow::Result;
use rosetta_model_hooks::{
    Batch, GenerateOptions, HookPoint, Hooks, LoadOptions, Model, PaddingSide, Positions, Sampling,
};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden")
        .join(case)
}

fn load(case: &str) -> Model {
    Model::load(fixture(case), LoadOptions::default()).expect("golden fixture loads")
}

fn prompts() -> Vec<Vec<i64>> {
    vec![
        vec![5, 17, 42, 99, 7, 3, 250, 12, 8],
        vec![33, 21, 8],
        vec![101, 102, 103, 104, 105, 106],
    ]
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn kv_cache_generation_equals_full_forward_recomputation() -> Result<()> {
    // gemma3_text has sliding-window layers (window 4) shorter than the sequences: the cache must honour it.
    for case in ["llama", "qwen2", "gemma2", "gemma3_text"] {
        let model = load(case);
        let mut hooks = Hooks::new();
        hooks.capture(HookPoint::ResidPost(1));
        let gen = model.generate(&prompts(), 0, &hooks, &GenerateOptions::greedy(10))?;
        // Reference: no cache; re-run the whole sequence for every new token.
        let mut seqs = prompts();
        for _ in 0..10 {
            let batch = Batch::from_sequences(&seqs, 0, PaddingSide::Left, Device::Cpu)?;
            let logits = model.logits(&batch)?;
            let next = logits.select(1, batch.seq_len() - 1).argmax(-1, false);
            let next: Vec<i64> = Vec::try_from(next)?;
            for (s, n) in seqs.iter_mut().zip(next) {
                s.push(n);
            }
        }
        for (r, s) in seqs.iter().enumerate() {
            assert_eq!(
                &s[prompts()[r].len()..],
                gen.tokens[r].as_slice(),
                "{case} row {r}"
            );
        }
        // Cached activations equal a full pass over prompt + all but the last generated token.
        let fed: Vec<Vec<i64>> = seqs.iter().map(|s| s[..s.len() - 1].to_vec()).collect();
        let batch = Batch::from_sequences(&fed, 0, PaddingSide::Left, Device::Cpu)?;
        let mut h = Hooks::new();
        h.capture(HookPoint::ResidPost(1));
        let full = model.forward(&batch, &h)?;
        let a = batch.unpad(full.captured(HookPoint::ResidPost(1)).unwrap())?;
        let b = batch.unpad(gen.captured(HookPoint::ResidPost(1)).unwrap())?;
        assert!(
            max_abs(&a, &b) < 1e-5,
            "{case}: cached activations differ by {}",
            max_abs(&a, &b)
        );
    }
    Ok(())
}

#[test]
fn rows_do_not_depend_on_other_rows_or_padding_side() -> Result<()> {
    let model = load("gemma3_text");
    let p = prompts();
    let mut hooks = Hooks::new();
    hooks
        .capture(HookPoint::ResidPost(3))
        .capture(HookPoint::Logits);
    for side in [PaddingSide::Left, PaddingSide::Right] {
        let batch = Batch::from_sequences(&p, 0, side, Device::Cpu)?;
        let out = model.forward(&batch, &hooks)?;
        let all = batch.unpad(out.captured(HookPoint::Logits).unwrap())?;
        let mut offset = 0;
        for row in &p {
            let single = Batch::from_sequences(std::slice::from_ref(row), 0, side, Device::Cpu)?;
            let alone = model.forward(&single, &hooks)?;
            let alone = single.unpad(alone.captured(HookPoint::Logits).unwrap())?;
            let n = row.len() as i64;
            let d = max_abs(&all.narrow(0, offset, n), &alone);
            assert!(d < 1e-5, "{side:?}: row differs by {d} when batched");
            offset += n;
        }
    }
    let gen_batch = model.generate(&p, 0, &Hooks::new(), &GenerateOptions::greedy(6))?;
    for (r, row) in p.iter().enumerate() {
        let alone = model.generate(
            std::slice::from_ref(row),
            0,
            &Hooks::new(),
            &GenerateOptions::greedy(6),
        )?;
        assert_eq!(
            alone.tokens[0], gen_batch.tokens[r],
            "row {r} generation depends on the batch"
        );
    }
    Ok(())
}

#[test]
fn add_changes_exactly_the_chosen_positions() -> Result<()> {
    let model = load("llama");
    let batch = Batch::from_sequences(&prompts(), 0, PaddingSide::Left, Device::Cpu)?;
    let v = Tensor::randn([model.d_model()], (Kind::Float, Device::Cpu));
    let point = HookPoint::ResidPost(0);
    let mut hooks = Hooks::new();
    hooks
        .capture(point)
        .add(point, &v, 3.0, Positions::At(vec![1, 4]))
        .capture(point);
    hooks.capture(HookPoint::ResidPost(2));
    let out = model.forward(&batch, &hooks)?;
    let caps: Vec<&Tensor> = out
        .captures
        .iter()
        .filter(|(p, _)| *p == point)
        .map(|(_, t)| t)
        .collect();
    let changed = (caps[1] - caps[0])
        .abs()
        .sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)
        .gt(0.0);
    let pos = &batch.position_ids;
    let want = (pos.eq(1).logical_or(&pos.eq(4))).logical_and(&batch.valid);
    assert!(
        changed.equal(&want),
        "changed positions {changed:?} != chosen {want:?}"
    );
    // The added delta is exactly alpha * v where applied.
    let delta = (caps[1] - caps[0])
        .select(0, 0)
        .select(0, batch.seq_len() - 9 + 1);
    assert!(max_abs(&delta, &(&v * 3.0)) < 1e-5);
    // Downstream, causal attention leaves positions before the first edit untouched.
    let clean = model.forward(&batch, &{
        let mut h = Hooks::new();
        h.capture(HookPoint::ResidPost(2));
        h
    })?;
    let a = out.captured(HookPoint::ResidPost(2)).unwrap();
    let b = clean.captured(HookPoint::ResidPost(2)).unwrap();
    let before = pos.eq(0).logical_and(&batch.valid).unsqueeze(-1);
    assert_eq!(
        max_abs(&a.masked_select(&before), &b.masked_select(&before)),
        0.0
    );
    Ok(())
}

#[test]
fn ablation_leaves_no_component_along_the_direction() -> Result<()> {
    let model = load("qwen3");
    let batch = Batch::from_sequences(&prompts(), 0, PaddingSide::Right, Device::Cpu)?;
    let v = Tensor::randn([model.d_model()], (Kind::Float, Device::Cpu));
    let point = HookPoint::ResidMid(1);
    let mut hooks = Hooks::new();
    hooks.ablate(point, &v, Positions::All).capture(point);
    let out = model.forward(&batch, &hooks)?;
    let x = batch.unpad(out.captured(point).unwrap())?;
    let unit = &v / v.norm().double_value(&[]);
    let comp = x.matmul(&unit).abs().max().double_value(&[]);
    let scale = x.abs().max().double_value(&[]);
    assert!(
        comp < 1e-5 * scale.max(1.0),
        "component {comp} left along the ablated direction"
    );
    Ok(())
}

#[test]
fn patching_every_position_reproduces_the_source_run() -> Result<()> {
    let model = load("gemma2");
    let a = Batch::from_sequences(
        &[vec![4, 8, 15, 16, 23, 42]],
        0,
        PaddingSide::Left,
        Device::Cpu,
    )?;
    let b = Batch::from_sequences(&[vec![9, 9, 9, 9, 9, 9]], 0, PaddingSide::Left, Device::Cpu)?;
    let point = HookPoint::ResidPost(1);
    let mut cap = Hooks::new();
    cap.capture(point).capture(HookPoint::Logits);
    let src = model.forward(&a, &cap)?;
    let mut patch = Hooks::new();
    patch
        .patch(point, src.captured(point).unwrap(), Positions::All)
        .capture(HookPoint::Logits);
    let patched = model.forward(&b, &patch)?;
    let d = max_abs(
        patched.captured(HookPoint::Logits).unwrap(),
        src.captured(HookPoint::Logits).unwrap(),
    );
    assert!(d < 1e-5, "patched run differs from the source run by {d}");
    Ok(())
}

#[test]
fn hooks_at_generated_positions_work_under_the_cache() -> Result<()> {
    let model = load("gemma3_text");
    let v = Tensor::randn([model.d_model()], (Kind::Float, Device::Cpu)) * 4.0;
    let point = HookPoint::ResidPost(2);
    let mut hooks = Hooks::new();
    hooks.add(point, &v, 1.0, Positions::Generated);
    let steered = model.generate(&prompts(), 0, &hooks, &GenerateOptions::greedy(8))?;
    let plain = model.generate(&prompts(), 0, &Hooks::new(), &GenerateOptions::greedy(8))?;
    // The first token comes from the prompt only, which the hook must not touch.
    for r in 0..3 {
        assert_eq!(steered.tokens[r][0], plain.tokens[r][0]);
    }
    // Reference without cache: full forward over prompt + generated so far, hook on generated positions.
    let mut seqs = prompts();
    let plens: Vec<usize> = seqs.iter().map(Vec::len).collect();
    for _ in 0..8 {
        let batch = Batch::from_sequences(&seqs, 0, PaddingSide::Left, Device::Cpu)?
            .with_prompt_lengths(plens.clone())?;
        let mut h = Hooks::new();
        h.add(point, &v, 1.0, Positions::Generated)
            .capture(HookPoint::Logits);
        let logits = model.forward(&batch, &h)?.last;
        let next: Vec<i64> =
            Vec::try_from(logits.select(1, batch.seq_len() - 1).argmax(-1, false))?;
        for (s, n) in seqs.iter_mut().zip(next) {
            s.push(n);
        }
    }
    for r in 0..3 {
        assert_eq!(
            &seqs[r][plens[r]..],
            steered.tokens[r].as_slice(),
            "row {r}"
        );
    }
    assert_ne!(
        steered.tokens, plain.tokens,
        "the steering vector had no effect at all"
    );
    Ok(())
}

#[test]
fn sampling_is_seeded_and_stop_tokens_end_rows() -> Result<()> {
    let model = load("qwen2");
    let sampling = Sampling::Sample {
        temperature: 1.5,
        top_k: 50,
        top_p: 0.9,
    };
    let opts = GenerateOptions::greedy(12)
        .with_sampling(sampling)
        .with_seed(7);
    let a = model.generate(&prompts(), 0, &Hooks::new(), &opts)?;
    let b = model.generate(&prompts(), 0, &Hooks::new(), &opts)?;
    assert_eq!(a.tokens, b.tokens);
    let c = model.generate(&prompts(), 0, &Hooks::new(), &opts.clone().with_seed(8))?;
    assert_ne!(
        a.tokens, c.tokens,
        "a different seed gave identical samples"
    );
    let greedy = model.generate(&prompts(), 0, &Hooks::new(), &GenerateOptions::greedy(12))?;
    let stop = greedy.tokens[0][3];
    let stopped = model.generate(
        &prompts(),
        0,
        &Hooks::new(),
        &GenerateOptions::greedy(12).with_stop_tokens(vec![stop]),
    )?;
    let first = greedy.tokens[0].iter().position(|&t| t == stop).unwrap();
    assert_eq!(stopped.tokens[0], greedy.tokens[0][..=first].to_vec());
    assert_eq!(stopped.finish[0], rosetta_model_hooks::FinishReason::Stop);
    Ok(())
}
