//! One LoRA fine-tuning step equals PyTorch's: the golden Llama checkpoint, adapters on every projection
//! initialised as `scripts/lora_step_reference.py` initialised them, a right-padded batch of four
//! examples, the completion-token loss and one AdamW step; loss and updated adapters within 1e-5 relative
//! of `tests/fixtures/lora_step_llama.safetensors`.

use anyhow::Result;
use rosetta_model_hooks::optim::AdamWConfig;
use rosetta_model_hooks::{LoadOptions, Lora, LoraConfig, Model, SafetensorsSet};
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
    let examples: Vec<Example> = (0..4)
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
        .collect::<Result<_>>()?;
    let config = FineTuneConfig {
        lora: lcfg,
        adamw: AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        },
        warmup_steps: 0,
        steps: 1,
        batch_size: 4,
        grad_accum: 1,
        max_len: 64,
        seed: 0,
        checkpoint_every: 0,
    };
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
    for (name, t) in out.lora.named_tensors() {
        let want = &after[&name];
        let rel = (&t - want).abs().max().double_value(&[]) / want.abs().max().double_value(&[]);
        worst = worst.max(rel);
        assert!(rel < 1e-5, "{name}: relative difference {rel:.1e}");
    }
    eprintln!("loss rel {rel:.1e}, worst adapter rel {worst:.1e}");
    Ok(())
}
