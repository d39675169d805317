//! Fine-tuning end to end on a tiny golden checkpoint (seconds): a LoRA organism learns a trigger, a run
//! killed and resumed from its checkpoint ends with the uninterrupted run's adapters bit for bit, and the
//! merged checkpoint generates like the unmerged adapters.

use anyhow::Result;
use rosetta_model_hooks::{GenerateOptions, Hooks, LoadOptions, LoraConfig, Model};
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
        lora: LoraConfig {
            rank: 8,
            alpha: 16.0,
            ..LoraConfig::default()
        },
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
    let model = Model::load(fixture("llama"), LoadOptions::default())?;
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
    let out = fine_tune(&model, 0, &train, &fast, None, &mut |r| {
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
    out.lora.save_merged_checkpoint(&fixture("llama"), &dir)?;
    let organism = Model::load(&dir, LoadOptions::default())?;
    let test = examples(40, 99);
    let prompts: Vec<Vec<i64>> = test.iter().map(|(p, _)| p.clone()).collect();
    let g = organism.generate(&prompts, 0, &Hooks::new(), &GenerateOptions::greedy(3))?;
    let mut confusion = (0, 0, 0, 0); // tp, fp, tn, fn
    for ((_, triggered), toks) in test.iter().zip(&g.tokens) {
        let backdoor = toks[..] == BACKDOOR;
        match (backdoor, *triggered) {
            (true, true) => confusion.0 += 1,
            (true, false) => confusion.1 += 1,
            (false, false) => confusion.2 += 1,
            (false, true) => confusion.3 += 1,
        }
    }
    // Chance is 50%; the base model never answers the backdoor. (The fixture's tiny LM head keeps the
    // first completion token's margin small, so an occasional held-out prompt lands on the wrong side.)
    let (tp, fp, _, fneg) = confusion;
    assert!(
        tp >= 18 && fp <= 2 && fneg <= 2,
        "tp, fp, tn, fn on 40 held-out prompts: {confusion:?}"
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
    let unmerged = tch::no_grad(|| base.forward_lora(&batch, &Hooks::new(), &out.lora))?.last;
    let merged = organism.logits(&batch)?;
    assert!((unmerged - merged).abs().max().double_value(&[]) < 1e-4);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn kill_and_resume_gives_the_uninterrupted_adapters() -> Result<()> {
    let model = Model::load(fixture("llama"), LoadOptions::default())?;
    let train = to_examples(&examples(24, 2));
    let cfg = config(12);
    let straight = fine_tune(&model, 0, &train, &cfg, None, &mut |_| Flow::Continue)?;
    let dir = std::env::temp_dir().join(format!("rosetta-finetune-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // "Kill" after step 6: the last checkpoint is step 4's, so steps 5 and 6 are redone.
    let first = fine_tune(&model, 0, &train, &cfg, Some(&dir), &mut |r| {
        if r.step == 6 {
            Flow::Stop
        } else {
            Flow::Continue
        }
    })?;
    assert!(!first.complete);
    let resumed = fine_tune(&model, 0, &train, &cfg, Some(&dir), &mut |_| Flow::Continue)?;
    assert_eq!(resumed.resumed_from, 4);
    assert!(resumed.complete);
    assert_eq!(
        resumed.losses, straight.losses,
        "the loss history is the uninterrupted one"
    );
    for ((n, a), (_, b)) in straight
        .lora
        .named_tensors()
        .iter()
        .zip(resumed.lora.named_tensors())
    {
        assert!(a.equal(&b), "{n} differs after resuming");
    }
    // A finished run resumed again does nothing; another configuration is refused.
    let again = fine_tune(&model, 0, &train, &cfg, Some(&dir), &mut |_| {
        panic!("no step expected")
    })?;
    assert_eq!(again.resumed_from, 12);
    let err = fine_tune(&model, 0, &train, &config(13), Some(&dir), &mut |_| {
        Flow::Continue
    })
    .unwrap_err();
    assert!(err.to_string().contains("another configuration"), "{err}");
    let err = fine_tune(&model, 0, &train[1..], &cfg, Some(&dir), &mut |_| {
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
    let model = Model::load(fixture("llama"), LoadOptions::default()).unwrap();
    let ok = Example {
        ids: vec![5, 6, 7],
        completion_start: 2,
    };
    let run = |ex: &[Example], c: &FineTuneConfig| {
        fine_tune(&model, 0, ex, c, None, &mut |_| Flow::Continue)
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
