//! One fine-tuning step equals PyTorch's (`scripts/lora_step_reference.py`), on the golden Llama
//! checkpoint and a right-padded batch of four examples, the completion-token loss and one AdamW step:
//! * LoRA: adapters on every projection initialised as the script initialised them; loss and updated
//!   adapters within 1e-5 relative of `tests/fixtures/lora_step_llama.safetensors`;
//! * full fine-tuning of every weight with the gradient norm clipped to 1 (`clip_grad_norm_`): loss,
//!   gradient norm and every updated weight within 1e-5 relative of
//!   `tests/fixtures/full_step_llama.safetensors`.

use anyhow::Result;
use rosetta_model_hooks::optim::AdamWConfig;
use rosetta_model_hooks::{FullConfig, LoadOptions, Lora, LoraConfig, Model, SafetensorsSet};
use rosetta_tasks::*;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind};

#[test]
fn one_lora_step_matches_pytorch() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let refs = SafetensorsSet::open_file(&root.join("tests/fixtures/lora_step_llama.safetensors"))?;
    let model = Model::load(
        root.join("tests/fixtures/golden/llama"),
        LoadOptions::default(),
    )?;
    let lcfg = LoraConfig {
        rank: 4,
        alpha: 8.0,
        ..LoraConfig::default()
    };
    let mut lora = Lora::new(model.spec(), lcfg.clone(), 0, Device::Cpu)?;
    let load = |prefix: &str| -> Result<BTreeMap<String, tch::Tensor>> {
        let mut m = BTreeMap::new();
        for name in refs.names() {
            if let Some(rest) = name.strip_prefix(prefix) {
                m.insert(
                    rest.to_string(),
                    refs.load(name, Some(Kind::Float), Device::Cpu)?,
                );
            }
        }
        Ok(m)
    };
    lora.load_tensors(&load("init.")?)?;
    let examples = reference_examples(&refs)?;
    let config = one_step(Method::Lora(lcfg), 1e-8, None);
    let out = fine_tune_from(&model, 0, &examples, &config, lora, None, &mut |_| {
        Flow::Continue
    })?;
    let want_loss = refs
        .load("loss", Some(Kind::Double), Device::Cpu)?
        .double_value(&[0]);
    let rel = (out.losses[0] - want_loss).abs() / want_loss;
    assert!(
        rel < 1e-5,
        "loss {} vs PyTorch {want_loss} (rel {rel:.1e})",
        out.losses[0]
    );
    let after = load("after.")?;
    let mut worst = 0.0f64;
    let lora = out.trained.lora().expect("a LoRA run");
    for (name, t) in lora.named_tensors() {
        let want = &after[&name];
        let rel = (&t - want).abs().max().double_value(&[]) / want.abs().max().double_value(&[]);
        worst = worst.max(rel);
        assert!(rel < 1e-5, "{name}: relative difference {rel:.1e}");
    }
    eprintln!("loss rel {rel:.1e}, worst adapter rel {worst:.1e}");
    Ok(())
}

/// The four examples the script trains on (stored in the LoRA fixture).
fn reference_examples(refs: &SafetensorsSet) -> Result<Vec<Example>> {
    (0..4)
        .map(|i| -> Result<Example> {
            let ids: Vec<i64> =
                Vec::try_from(refs.load(&format!("ex{i}.ids"), None, Device::Cpu)?)?;
            let start = refs
                .load(&format!("ex{i}.completion_start"), None, Device::Cpu)?
                .int64_value(&[0]);
            Ok(Example {
                ids,
                completion_start: start as usize,
            })
        })
        .collect()
}

#[test]
fn one_full_step_with_clipping_matches_pytorch() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let fixtures = root.join("tests/fixtures");
    let examples = reference_examples(&SafetensorsSet::open_file(
        &fixtures.join("lora_step_llama.safetensors"),
    )?)?;
    let refs = SafetensorsSet::open_file(&fixtures.join("full_step_llama.safetensors"))?;
    let mut model = Model::load(fixtures.join("golden/llama"), LoadOptions::default())?;
    // eps as the script's EPS_FULL: a first Adam step linear in small gradients (see there).
    let config = one_step(Method::Full(FullConfig::default()), 1e-3, Some(1.0));
    let mut norm = f64::NAN;
    let out = fine_tune(&mut model, 0, &examples, &config, None, &mut |r| {
        norm = r.grad_norm;
        Flow::Continue
    })?;
    let scalar = |name: &str| -> Result<f64> {
        Ok(refs
            .load(name, Some(Kind::Double), Device::Cpu)?
            .double_value(&[0]))
    };
    let (want_loss, want_norm) = (scalar("loss")?, scalar("grad_norm")?);
    assert!(want_norm > 1.0, "the reference must exercise the clipping");
    for (what, got, want) in [
        ("loss", out.losses[0], want_loss),
        ("grad norm", norm, want_norm),
    ] {
        let rel = (got - want).abs() / want;
        assert!(rel < 1e-5, "{what} {got} vs PyTorch {want} (rel {rel:.1e})");
    }
    let Trained::Full(weights) = &out.trained else {
        panic!("a full fine-tuning run")
    };
    let trained = weights.named_tensors()?;
    // Every weight of the model was trained (the tied LM head is the embedding).
    assert_eq!(trained.len(), refs.names().len() - 2);
    let mut worst = 0.0f64;
    for (name, t) in &trained {
        let want = refs.load(&format!("after.{name}"), Some(Kind::Float), Device::Cpu)?;
        let rel = (t - &want).abs().max().double_value(&[]) / want.abs().max().double_value(&[]);
        worst = worst.max(rel);
        assert!(rel < 1e-5, "{name}: relative difference {rel:.1e}");
    }
    // The model itself holds the trained weights, frozen again.
    let batch = rosetta_model_hooks::Batch::from_sequences(
        &[examples[0].ids.clone()],
        0,
        rosetta_model_hooks::PaddingSide::Right,
        Device::Cpu,
    )?;
    assert!(!model.logits(&batch)?.requires_grad());
    eprintln!("full step: worst weight rel {worst:.1e}");
    Ok(())
}

/// The script's optimiser settings: one step over the four examples in one batch, lr 1e-3, weight decay
/// 0.01, no warm-up.
fn one_step(method: Method, eps: f64, max_grad_norm: Option<f64>) -> FineTuneConfig {
    FineTuneConfig {
        method,
        adamw: AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps,
            weight_decay: 0.01,
        },
        warmup_steps: 0,
        steps: 1,
        batch_size: 4,
        grad_accum: 1,
        max_len: 64,
        seed: 0,
        checkpoint_every: 0,
        max_grad_norm,
    }
}
