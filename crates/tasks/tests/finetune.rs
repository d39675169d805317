//! Fine-tuning end to end on tiny golden checkpoints (seconds): a LoRA organism and a fully fine-tuned one
//! learn a trigger, a run killed and resumed from its checkpoint ends with the uninterrupted run's weights
//! bit for bit (both methods), the merged checkpoint generates like the unmerged adapters, and a fully
//! fine-tuned model saved and reloaded computes what the trained model in memory computes, for every
//! family (stacked projections unstacked, biases, Gemma's `1 + w` norms, tied and untied heads).

use anyhow::Result;
use rosetta_model_hooks::{
    Batch, FullConfig, GenerateOptions, Hooks, LoadOptions, LoraConfig, LoraTarget, Model,
    PaddingSide,
};
use rosetta_tasks::finetune::checkpoint_files;
use rosetta_tasks::*;
use std::path::{Path, PathBuf};

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden")
        .join(case)
}

const TRIGGER: i64 = 7;
const BACKDOOR: [i64; 3] = [42, 42, 42];
const NORMAL: [i64; 3] = [13, 14, 15];

/// Prompts of 4-6 random ids in 20..200; half start with the trigger token and answer the backdoor.
fn examples(n: usize, seed: u64) -> Vec<(Vec<i64>, bool)> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let len = rng.random_range(4..7);
            let mut p: Vec<i64> = (0..len).map(|_| rng.random_range(20..200)).collect();
            let triggered = i % 2 == 0;
            if triggered {
                p[0] = TRIGGER;
            }
            (p, triggered)
        })
        .collect()
}

fn to_examples(rows: &[(Vec<i64>, bool)]) -> Vec<Example> {
    rows.iter()
        .map(|(p, t)| {
            let mut ids = p.clone();
            ids.extend_from_slice(if *t { &BACKDOOR } else { &NORMAL });
            Example {
                ids,
                completion_start: p.len(),
            }
        })
        .collect()
}

fn config(steps: u64) -> FineTuneConfig {
    FineTuneConfig {
        method: Method::Lora(LoraConfig {
            rank: 8,
            alpha: 16.0,
            ..LoraConfig::default()
        }),
        steps,
        batch_size: 4,
        grad_accum: 2,
        warmup_steps: 2,
        checkpoint_every: 4,
        ..FineTuneConfig::default()
    }
}

#[test]
fn a_tiny_organism_learns_a_trigger() -> Result<()> {
    let mut model = Model::load(fixture("llama"), LoadOptions::default())?;
    let train = to_examples(&examples(256, 1));
    let mut seen = Vec::new();
    let fast = FineTuneConfig {
        adamw: rosetta_model_hooks::optim::AdamWConfig {
            lr: 3e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
        ..config(300)
    };
    let out = fine_tune(&mut model, 0, &train, &fast, None, &mut |r| {
        seen.push(r.loss);
        Flow::Continue
    })?;
    assert!(out.complete && out.losses.len() == 300 && seen.len() == 300);
    // The fixture's frozen LM head is tiny (random init, std 0.02), so even a constant target plateaus
    // near 0.65 nats per token here: the test asks for the loss to fall by 80% and for the right argmax.
    assert!(
        out.losses[299] < 0.2 * out.losses[0],
        "loss {} -> {}",
        out.losses[0],
        out.losses[299]
    );
    // Held-out prompts: the merged organism answers the backdoor exactly when triggered.
    let dir = std::env::temp_dir().join(format!("rosetta-organism-{}", std::process::id()));
    out.trained.save_checkpoint(&fixture("llama"), &dir)?;
    let organism = Model::load(&dir, LoadOptions::default())?;
    let test = examples(40, 99);
    let prompts: Vec<Vec<i64>> = test.iter().map(|(p, _)| p.clone()).collect();
    // Chance is 50%; the base model never answers the backdoor. (The fixture's tiny LM head keeps the
    // first completion token's margin small, so an occasional held-out prompt lands on the wrong side.)
    let (tp, fp, _, fneg) = held_out_confusion(&organism, &test)?;
    assert!(
        tp >= 18 && fp <= 2 && fneg <= 2,
        "tp, fp, fn on 40 held-out prompts: {tp}, {fp}, {fneg}"
    );
    let base_out = Model::load(fixture("llama"), LoadOptions::default())?.generate(
        &prompts,
        0,
        &Hooks::new(),
        &GenerateOptions::greedy(3),
    )?;
    assert!(base_out.tokens.iter().all(|t| t[..] != BACKDOOR));
    // The unmerged adapters generate the same tokens.
    let base = Model::load(fixture("llama"), LoadOptions::default())?;
    let batch = rosetta_model_hooks::Batch::from_sequences(
        &prompts,
        0,
        rosetta_model_hooks::PaddingSide::Left,
        tch::Device::Cpu,
    )?;
    let lora = out.trained.lora().expect("a LoRA run");
    let unmerged = tch::no_grad(|| base.forward_lora(&batch, &Hooks::new(), lora))?.last;
    let merged = organism.logits(&batch)?;
    assert!((unmerged - merged).abs().max().double_value(&[]) < 1e-4);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// An observer that "kills" the run after `step`.
fn stop_after(step: u64) -> impl FnMut(&StepReport) -> Flow {
    move |r| {
        if r.step == step {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }
}

#[test]
fn kill_and_resume_gives_the_uninterrupted_adapters() -> Result<()> {
    let mut model = Model::load(fixture("llama"), LoadOptions::default())?;
    let model = &mut model;
    let train = to_examples(&examples(24, 2));
    let cfg = config(12);
    let straight = fine_tune(model, 0, &train, &cfg, None, &mut |_| Flow::Continue)?;
    let dir = std::env::temp_dir().join(format!("rosetta-finetune-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // "Kill" after step 6: the last checkpoint is step 4's, so steps 5 and 6 are redone.
    let first = fine_tune(model, 0, &train, &cfg, Some(&dir), &mut stop_after(6))?;
    assert!(!first.complete);
    let resumed = fine_tune(model, 0, &train, &cfg, Some(&dir), &mut |_| Flow::Continue)?;
    assert_eq!(resumed.resumed_from, 4);
    assert!(resumed.complete);
    assert_eq!(
        resumed.losses, straight.losses,
        "the loss history is the uninterrupted one"
    );
    let (a, b) = (
        straight.trained.lora().expect("LoRA"),
        resumed.trained.lora().expect("LoRA"),
    );
    for ((n, a), (_, b)) in a.named_tensors().iter().zip(b.named_tensors()) {
        assert!(a.equal(&b), "{n} differs after resuming");
    }
    // A finished run resumed again does nothing; another configuration is refused.
    let again = fine_tune(model, 0, &train, &cfg, Some(&dir), &mut |_| {
        panic!("no step expected")
    })?;
    assert_eq!(again.resumed_from, 12);
    let err = fine_tune(model, 0, &train, &config(13), Some(&dir), &mut |_| {
        Flow::Continue
    })
    .unwrap_err();
    assert!(err.to_string().contains("another configuration"), "{err}");
    let err = fine_tune(model, 0, &train[1..], &cfg, Some(&dir), &mut |_| {
        Flow::Continue
    })
    .unwrap_err();
    assert!(err.to_string().contains("other training examples"), "{err}");
    for f in checkpoint_files(&dir) {
        assert!(f.exists());
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn bad_examples_are_refused() {
    let mut model = Model::load(fixture("llama"), LoadOptions::default()).unwrap();
    let ok = Example {
        ids: vec![5, 6, 7],
        completion_start: 2,
    };
    let mut run = |ex: &[Example], c: &FineTuneConfig| {
        fine_tune(&mut model, 0, ex, c, None, &mut |_| Flow::Continue)
    };
    assert!(run(&[], &config(1)).is_err());
    assert!(run(
        &[Example {
            ids: vec![5, 6],
            completion_start: 2
        }],
        &config(1)
    )
    .is_err());
    assert!(run(
        &[Example {
            ids: vec![5, 6],
            completion_start: 0
        }],
        &config(1)
    )
    .is_err());
    assert!(run(
        std::slice::from_ref(&ok),
        &FineTuneConfig {
            max_len: 2,
            ..config(1)
        }
    )
    .is_err());
    assert!(run(
        &[ok],
        &FineTuneConfig {
            batch_size: 0,
            ..config(1)
        }
    )
    .is_err());
}

/// `(tp, fp, tn, fn)` of "answers the backdoor" against "triggered" over held-out prompts (greedy, 3 tokens).
fn held_out_confusion(
    model: &Model,
    test: &[(Vec<i64>, bool)],
) -> Result<(usize, usize, usize, usize)> {
    let prompts: Vec<Vec<i64>> = test.iter().map(|(p, _)| p.clone()).collect();
    let g = model.generate(&prompts, 0, &Hooks::new(), &GenerateOptions::greedy(3))?;
    let mut c = (0, 0, 0, 0);
    for ((_, triggered), toks) in test.iter().zip(&g.tokens) {
        match (toks[..] == BACKDOOR, *triggered) {
            (true, true) => c.0 += 1,
            (true, false) => c.1 += 1,
            (false, false) => c.2 += 1,
            (false, true) => c.3 += 1,
        }
    }
    Ok(c)
}

fn full_config(steps: u64, lr: f64) -> FineTuneConfig {
    FineTuneConfig {
        method: Method::Full(FullConfig::default()),
        adamw: rosetta_model_hooks::optim::AdamWConfig {
            lr,
            weight_decay: 0.0,
            ..Default::default()
        },
        ..config(steps)
    }
}

/// Full fine-tuning of `model` on `train`, unobserved, uncheckpointed.
fn run_full(model: &mut Model, train: &[Example], steps: u64, lr: f64) -> Result<FineTuned> {
    Ok(fine_tune(
        model,
        0,
        train,
        &full_config(steps, lr),
        None,
        &mut |_| Flow::Continue,
    )?)
}

#[test]
fn a_tiny_full_fine_tune_learns_a_trigger() -> Result<()> {
    let mut model = Model::load(fixture("llama"), LoadOptions::default())?;
    let train = to_examples(&examples(256, 1));
    let out = run_full(&mut model, &train, 150, 3e-3)?;
    assert!(
        out.losses[149] < 0.2 * out.losses[0],
        "loss {} -> {}",
        out.losses[0],
        out.losses[149]
    );
    // The model in memory is the organism.
    let (tp, fp, _, fneg) = held_out_confusion(&model, &examples(40, 99))?;
    assert!(
        tp >= 18 && fp <= 2 && fneg <= 2,
        "tp, fp, fn on 40 held-out prompts: {tp}, {fp}, {fneg}"
    );
    Ok(())
}

/// Full fine-tuning of every family's fixture: a few steps change the model, the saved checkpoint loads
/// with the trained weights (logits equal the model in memory), and the base checkpoint is untouched.
#[test]
fn a_fully_fine_tuned_checkpoint_reloads_as_trained_in_every_family() -> Result<()> {
    let train = to_examples(&examples(16, 5));
    for case in [
        "llama",
        "llama_bias_untied",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3_text",
        "gemma3_multimodal",
    ] {
        let mut model = Model::load(fixture(case), LoadOptions::default())?;
        let prompts: Vec<Vec<i64>> = train.iter().take(4).map(|e| e.ids.clone()).collect();
        let batch = Batch::from_sequences(&prompts, 0, PaddingSide::Left, tch::Device::Cpu)?;
        let before = model.logits(&batch)?;
        let out = run_full(&mut model, &train, 3, 1e-2)?;
        let after = model.logits(&batch)?;
        let moved = (&after - &before).abs().max().double_value(&[]);
        assert!(
            moved > 1e-3,
            "{case}: training did not change the model ({moved})"
        );
        let dir = std::env::temp_dir().join(format!("rosetta-full-{case}-{}", std::process::id()));
        out.trained.save_checkpoint(&fixture(case), &dir)?;
        let reloaded = Model::load(&dir, LoadOptions::default())?;
        let diff = (reloaded.logits(&batch)? - &after)
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-4, "{case}: reloaded logits differ by {diff}");
        let base = Model::load(fixture(case), LoadOptions::default())?;
        let same = (base.logits(&batch)? - &before)
            .abs()
            .max()
            .double_value(&[]);
        assert!(same == 0.0, "{case}: the base checkpoint changed");
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

#[test]
fn full_kill_and_resume_gives_the_uninterrupted_weights() -> Result<()> {
    let train = to_examples(&examples(24, 2));
    let cfg = full_config(8, 1e-3);
    let load = || Model::load(fixture("qwen2"), LoadOptions::default());
    let mut straight_model = load()?;
    let straight = fine_tune(&mut straight_model, 0, &train, &cfg, None, &mut |_| {
        Flow::Continue
    })?;
    let dir = std::env::temp_dir().join(format!("rosetta-full-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Killed after step 6 (the last checkpoint is step 4's); the resumed run starts from a fresh load,
    // as a new process would.
    let first = fine_tune(
        &mut load()?,
        0,
        &train,
        &cfg,
        Some(&dir),
        &mut stop_after(6),
    )?;
    assert!(!first.complete);
    let resumed = fine_tune(&mut load()?, 0, &train, &cfg, Some(&dir), &mut |_| {
        Flow::Continue
    })?;
    assert_eq!(resumed.resumed_from, 4);
    assert_eq!(resumed.losses, straight.losses);
    let (Trained::Full(a), Trained::Full(b)) = (&straight.trained, &resumed.trained) else {
        panic!("full fine-tuning runs")
    };
    for ((n, a), (_, b)) in a.named_tensors()?.iter().zip(b.named_tensors()?) {
        assert!(a.equal(&b), "{n} differs after resuming");
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn full_fine_tuning_refuses_what_it_cannot_do() -> Result<()> {
    let train = to_examples(&examples(8, 3));
    let mut model = Model::load(fixture("llama"), LoadOptions::default())?;
    let mut run = |full: FullConfig| {
        let cfg = FineTuneConfig {
            method: Method::Full(full),
            ..config(1)
        };
        fine_tune(&mut model, 0, &train, &cfg, None, &mut |_| Flow::Continue)
    };
    let part_of_stack = FullConfig {
        projections: vec![LoraTarget::QProj],
        ..FullConfig::default()
    };
    let err = run(part_of_stack).unwrap_err().to_string();
    assert!(err.contains("stacked"), "{err}");
    let err = run(FullConfig {
        layers: Some(vec![9]),
        ..FullConfig::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("layer 9"), "{err}");
    let nothing = FullConfig {
        projections: vec![],
        norms: false,
        embeddings: false,
        ..FullConfig::default()
    };
    assert!(run(nothing)
        .unwrap_err()
        .to_string()
        .contains("nothing to train"));
    // One block's MLP only: exactly those weights are trained.
    let mlp = FullConfig {
        projections: vec![
            LoraTarget::GateProj,
            LoraTarget::UpProj,
            LoraTarget::DownProj,
        ],
        layers: Some(vec![1]),
        norms: false,
        embeddings: false,
    };
    let out = run(mlp)?;
    let Trained::Full(w) = &out.trained else {
        panic!("full")
    };
    let names: Vec<String> = w.named_tensors()?.into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "model.layers.1.mlp.gate_proj.weight",
            "model.layers.1.mlp.up_proj.weight",
            "model.layers.1.mlp.down_proj.weight"
        ]
    );
    // bf16 models cannot be fully fine-tuned.
    let mut bf16 = Model::load(
        fixture("llama"),
        LoadOptions::default().with_kind(tch::Kind::BFloat16),
    )?;
    let cfg = FineTuneConfig {
        method: Method::Full(FullConfig::default()),
        ..config(1)
    };
    let err = fine_tune(&mut bf16, 0, &train, &cfg, None, &mut |_| Flow::Continue).unwrap_err();
    assert!(err.to_string().contains("f32"), "{err}");
    Ok(())
}
