//! Bad input gives a clear error naming what and where — never a panic.

use anyhow::Result;
use rosetta_model_hooks::{
    Batch, GenerateOptions, HookError, HookPoint, Hooks, LoadOptions, Model, PaddingSide,
    SafetensorsSet,
};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden")
        .join(case)
}

/// A scratch copy of a fixture whose files can be edited.
fn scratch(case: &str, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rosetta-bad-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(case).join(f), dir.join(f)).unwrap();
    }
    dir
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn missing_tensor_is_named() -> Result<()> {
    let dir = scratch("llama", "missing");
    // Drop one tensor from the checkpoint.
    let set = SafetensorsSet::open_file(&dir.join("model.safetensors"))?;
    let keep: Vec<(String, Tensor)> = set
        .names()
        .into_iter()
        .filter(|n| *n != "model.layers.1.mlp.up_proj.weight")
        .map(|n| (n.to_string(), set.load(n, None, Device::Cpu).unwrap()))
        .collect();
    drop(set);
    rosetta_model_hooks::weights::write_safetensors_atomic(
        &dir.join("model.safetensors"),
        &keep,
        None,
    )?;
    let err = Model::load(&dir, LoadOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, HookError::MissingTensors { .. }), "{msg}");
    assert!(
        msg.contains("model.layers.1.mlp.up_proj.weight") && msg.contains("model.safetensors"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn wrong_shape_is_named() {
    let dir = scratch("qwen2", "shape");
    edit_config(&dir, |v| v["intermediate_size"] = serde_json::json!(100));
    let err = Model::load(&dir, LoadOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, HookError::ShapeMismatch { .. }), "{msg}");
    assert!(
        msg.contains("mlp.gate_proj.weight") && msg.contains("expected [100, 32]"),
        "{msg}"
    );
}

#[test]
fn unknown_family_lists_supported_ones() {
    let dir = scratch("llama", "family");
    edit_config(&dir, |v| v["model_type"] = serde_json::json!("gpt2"));
    let msg = Model::load(&dir, LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("\"gpt2\"") && msg.contains("qwen2") && msg.contains("gemma3_text"),
        "{msg}"
    );
}

#[test]
fn corrupt_safetensors_header_is_refused() {
    let dir = scratch("llama", "corrupt");
    let p = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[8..20].copy_from_slice(b"not json!!!!");
    std::fs::write(&p, &bytes).unwrap();
    let msg = Model::load(&dir, LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("not a valid safetensors"),
        "{msg}"
    );
    // Truncated data is refused too.
    let good = std::fs::read(fixture("llama").join("model.safetensors")).unwrap();
    std::fs::write(&p, &good[..good.len() - 100]).unwrap();
    let msg = Model::load(&dir, LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("not a valid safetensors"), "{msg}");
}

#[test]
fn empty_and_too_long_prompts_are_refused() -> Result<()> {
    let model = Model::load(fixture("llama"), LoadOptions::default())?;
    let msg = Batch::from_sequences(&[vec![1, 2], vec![]], 0, PaddingSide::Left, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("row 1") && msg.contains("empty"), "{msg}");
    let msg = model
        .generate(&[vec![]], 0, &Hooks::new(), &GenerateOptions::greedy(4))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("empty"), "{msg}");
    let long = vec![vec![3i64; 200]]; // max_position_embeddings is 128
    let batch = Batch::from_sequences(&long, 0, PaddingSide::Left, Device::Cpu)?;
    let msg = model
        .forward(&batch, &Hooks::new())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("200 tokens") && msg.contains("128"), "{msg}");
    let msg = model
        .generate(
            &[vec![3; 120]],
            0,
            &Hooks::new(),
            &GenerateOptions::greedy(20),
        )
        .unwrap_err()
        .to_string();
    assert!(msg.contains("context of 128"), "{msg}");
    let bad = Batch::from_sequences(&[vec![1, 5000]], 0, PaddingSide::Left, Device::Cpu)?;
    let msg = model.forward(&bad, &Hooks::new()).unwrap_err().to_string();
    assert!(msg.contains("5000") && msg.contains("vocabulary"), "{msg}");
    Ok(())
}

#[test]
fn bad_hooks_are_refused() -> Result<()> {
    let model = Model::load(fixture("llama"), LoadOptions::default())?;
    let batch = Batch::from_sequences(&[vec![1, 2, 3]], 0, PaddingSide::Left, Device::Cpu)?;
    let mut h = Hooks::new();
    h.capture(HookPoint::ResidPost(7));
    let msg = model.forward(&batch, &h).unwrap_err().to_string();
    assert!(msg.contains("resid_post.7") && msg.contains("3"), "{msg}");
    let mut h = Hooks::new();
    h.add(
        HookPoint::ResidPost(0),
        &Tensor::ones([5], (Kind::Float, Device::Cpu)),
        1.0,
        rosetta_model_hooks::Positions::All,
    );
    let msg = model.forward(&batch, &h).unwrap_err().to_string();
    assert!(msg.contains("[32]"), "{msg}");
    Ok(())
}
