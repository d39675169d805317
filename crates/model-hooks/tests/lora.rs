//! LoRA adapters on the tiny golden checkpoints: a fresh adapter is the plain model, gradients reach only
//! the adapters, a merged checkpoint gives the unmerged adapter's logits, and a few optimiser steps learn a
//! target.

use anyhow::Result;
use rosetta_model_hooks::{
    Batch, Hooks, LoadOptions, Lora, LoraConfig, LoraTarget, Model, PaddingSide,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Reduction, Tensor};

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden")
        .join(case)
}

fn batch() -> Batch {
    Batch::from_sequences(
        &[vec![5, 17, 42, 99, 7, 3], vec![33, 21, 8]],
        0,
        PaddingSide::Left,
        Device::Cpu,
    )
    .unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Give every B a random value so the adapters change the model.
fn randomise(lora: &mut Lora, seed: i64) {
    tch::manual_seed(seed);
    let named: BTreeMap<String, Tensor> = lora
        .named_tensors()
        .into_iter()
        .map(|(n, t)| {
            let v = if n.ends_with("lora_B.weight") {
                Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.05
            } else {
                t.detach().copy()
            };
            (n, v)
        })
        .collect();
    lora.load_tensors(&named).unwrap();
}

#[test]
fn a_fresh_adapter_is_the_plain_model() -> Result<()> {
    for case in ["llama", "qwen2", "gemma2", "qwen3"] {
        let model = Model::load(fixture(case), LoadOptions::default())?;
        let lora = Lora::new(model.spec(), LoraConfig::default(), 0, Device::Cpu)?;
        let b = batch();
        let plain = model.logits(&b)?;
        let with = tch::no_grad(|| model.forward_lora(&b, &Hooks::new(), &lora))?.last;
        assert!(
            with.eq_tensor(&plain).all().int64_value(&[]) == 1,
            "{case}: B = 0 must change nothing"
        );
    }
    Ok(())
}

#[test]
fn merged_checkpoints_give_the_unmerged_logits() -> Result<()> {
    for case in ["llama", "gemma2", "qwen3", "llama_bias_untied"] {
        let dir = fixture(case);
        let model = Model::load(&dir, LoadOptions::default())?;
        let mut lora = Lora::new(
            model.spec(),
            LoraConfig {
                rank: 4,
                alpha: 8.0,
                ..LoraConfig::default()
            },
            1,
            Device::Cpu,
        )?;
        randomise(&mut lora, 2);
        let b = batch();
        let unmerged = tch::no_grad(|| model.forward_lora(&b, &Hooks::new(), &lora))?.last;
        assert!(
            max_abs(&unmerged, &model.logits(&b)?) > 1e-3,
            "{case}: the adapter should matter"
        );
        let out =
            std::env::temp_dir().join(format!("rosetta-lora-merged-{case}-{}", std::process::id()));
        lora.save_merged_checkpoint(&dir, &out)?;
        assert!(out.join("config.json").exists());
        let merged = Model::load(&out, LoadOptions::default())?;
        let diff = max_abs(&merged.logits(&b)?, &unmerged);
        assert!(
            diff < 1e-4,
            "{case}: merged vs unmerged logits differ by {diff}"
        );
        std::fs::remove_dir_all(&out)?;
    }
    Ok(())
}

#[test]
fn gradients_reach_only_the_adapters_and_steps_learn() -> Result<()> {
    let model = Model::load(fixture("qwen2"), LoadOptions::default())?;
    let config = LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: vec![LoraTarget::QProj, LoraTarget::VProj, LoraTarget::DownProj],
        ..LoraConfig::default()
    };
    let lora = Lora::new(model.spec(), config, 3, Device::Cpu)?;
    let params = lora.parameters();
    assert_eq!(params.len(), 2 * 3 * model.num_layers());
    let b = batch();
    // Teach the model to predict token 11 after every position of row 0.
    let target = Tensor::full([6], 11, (Kind::Int64, Device::Cpu));
    let loss_of = || -> Result<Tensor> {
        let logits = model.forward_lora(&b, &Hooks::new(), &lora)?.last.get(0);
        Ok(logits.cross_entropy_loss::<Tensor>(&target, None, Reduction::Mean, -100, 0.0))
    };
    let first = loss_of()?;
    first.backward();
    let grad_b: f64 = params
        .iter()
        .skip(1)
        .step_by(2)
        .map(|p| p.grad().abs().sum(Kind::Double).double_value(&[]))
        .sum();
    assert!(grad_b > 0.0, "B gets a gradient");
    // A's gradient is exactly zero at the start (B = 0), as in PEFT.
    let grad_a: f64 = params
        .iter()
        .step_by(2)
        .map(|p| p.grad().abs().sum(Kind::Double).double_value(&[]))
        .sum();
    assert_eq!(grad_a, 0.0);
    // Plain SGD: the loss falls.
    for _ in 0..20 {
        for p in &params {
            p.shallow_clone().zero_grad();
        }
        let loss = loss_of()?;
        loss.backward();
        tch::no_grad(|| {
            for p in &params {
                let g = p.grad();
                let mut p = p.shallow_clone();
                let _ = p.f_sub_(&(g * 0.5)).unwrap();
            }
        });
    }
    let last = tch::no_grad(loss_of)?.double_value(&[]);
    assert!(
        last < first.double_value(&[]) * 0.5,
        "loss {} -> {last}",
        first.double_value(&[])
    );
    Ok(())
}

#[test]
fn bad_configs_are_refused() {
    let model = Model::load(fixture("llama"), LoadOptions::default()).unwrap();
    let bad = |c: LoraConfig| Lora::new(model.spec(), c, 0, Device::Cpu).is_err();
    assert!(bad(LoraConfig {
        rank: 0,
        ..LoraConfig::default()
    }));
    assert!(bad(LoraConfig {
        alpha: -1.0,
        ..LoraConfig::default()
    }));
    assert!(bad(LoraConfig {
        dropout: 1.0,
        ..LoraConfig::default()
    }));
    assert!(bad(LoraConfig {
        targets: vec![],
        ..LoraConfig::default()
    }));
    assert!(bad(LoraConfig {
        layers: Some(vec![99]),
        ..LoraConfig::default()
    }));
    assert_eq!("q_proj".parse::<LoraTarget>().unwrap(), LoraTarget::QProj);
    assert_eq!(
        "mlp.down_proj".parse::<LoraTarget>().unwrap(),
        LoraTarget::DownProj
    );
    assert!("lm_head".parse::<LoraTarget>().is_err());
}
