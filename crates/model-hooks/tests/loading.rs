//! Loading: sharded checkpoints, dtypes, the load report, and user closures as hooks.

use anyhow::Result;
use rosetta_model_hooks::weights::write_safetensors_atomic;
use rosetta_model_hooks::{
    Batch, HookPoint, Hooks, LoadOptions, Model, PaddingSide, SafetensorsSet,
};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden")
        .join(case)
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rosetta-load-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn batch() -> Batch {
    Batch::from_sequences(
        &[vec![5, 17, 42, 99, 7], vec![33, 21]],
        0,
        PaddingSide::Left,
        Device::Cpu,
    )
    .expect("batch")
}

fn all_tensors(set: &SafetensorsSet) -> Vec<(String, Tensor)> {
    set.names()
        .into_iter()
        .map(|n| (n.to_string(), set.load(n, None, Device::Cpu).expect("load")))
        .collect()
}

#[test]
fn sharded_checkpoint_loads_like_a_single_file() -> Result<()> {
    let src = fixture("qwen2");
    let dir = scratch("sharded");
    std::fs::copy(src.join("config.json"), dir.join("config.json"))?;
    let tensors = all_tensors(&SafetensorsSet::open_file(&src.join("model.safetensors"))?);
    let (a, b) = tensors.split_at(tensors.len() / 2);
    write_safetensors_atomic(&dir.join("model-00001-of-00002.safetensors"), a, None)?;
    write_safetensors_atomic(&dir.join("model-00002-of-00002.safetensors"), b, None)?;
    let mut map = serde_json::Map::new();
    for (n, _) in a {
        map.insert(n.clone(), "model-00001-of-00002.safetensors".into());
    }
    for (n, _) in b {
        map.insert(n.clone(), "model-00002-of-00002.safetensors".into());
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string(&index)?,
    )?;
    let single = Model::load(&src, LoadOptions::default())?;
    let sharded = Model::load(&dir, LoadOptions::default())?;
    assert!(single.logits(&batch())?.equal(&sharded.logits(&batch())?));

    // An index naming a tensor no shard holds is refused with its name.
    let mut bad = index.clone();
    bad["weight_map"]["model.layers.9.mlp.up_proj.weight"] =
        "model-00001-of-00002.safetensors".into();
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string(&bad)?,
    )?;
    let msg = Model::load(&dir, LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("model.layers.9.mlp.up_proj.weight"), "{msg}");
    Ok(())
}

#[test]
fn half_precision_loads_close_to_f32() -> Result<()> {
    let f32_model = Model::load(fixture("gemma3_text"), LoadOptions::default())?;
    let want = f32_model.logits(&batch())?;
    for kind in [Kind::BFloat16, Kind::Half] {
        let m = Model::load(
            fixture("gemma3_text"),
            LoadOptions::default().with_kind(kind),
        )?;
        let got = m.logits(&batch())?;
        assert_eq!(got.kind(), kind);
        let valid = batch().valid.unsqueeze(-1);
        let diff = ((got.to_kind(Kind::Float) - &want).abs() * valid.to_kind(Kind::Float))
            .max()
            .double_value(&[]);
        let scale = want.abs().max().double_value(&[]);
        assert!(
            diff < 0.05 * scale,
            "{kind:?}: logits differ by {diff} (scale {scale})"
        );
    }
    assert!(Model::load(
        fixture("llama"),
        LoadOptions::default().with_kind(Kind::Int64)
    )
    .is_err());
    Ok(())
}

#[test]
fn unexpected_tensors_are_reported_not_fatal() -> Result<()> {
    let src = fixture("llama");
    let dir = scratch("unexpected");
    std::fs::copy(src.join("config.json"), dir.join("config.json"))?;
    let mut tensors = all_tensors(&SafetensorsSet::open_file(&src.join("model.safetensors"))?);
    tensors.push((
        "vision_tower.patch_embed.weight".into(),
        Tensor::zeros([4, 4], (Kind::Float, Device::Cpu)),
    ));
    write_safetensors_atomic(&dir.join("model.safetensors"), &tensors, None)?;
    let m = Model::load(&dir, LoadOptions::default())?;
    assert_eq!(
        m.load_report().unexpected,
        vec!["vision_tower.patch_embed.weight".to_string()]
    );
    assert!(m.load_report().missing.is_empty());
    Ok(())
}

#[test]
fn closures_run_at_their_point_and_edit_the_stream() -> Result<()> {
    let model = Model::load(fixture("llama"), LoadOptions::default())?;
    let point = HookPoint::ResidPost(1);
    let mut hooks = Hooks::new();
    hooks
        .func(point, move |ctx, x| {
            assert_eq!(ctx.point, point);
            Ok(x.f_zeros_like()?)
        })
        .capture(point)
        .capture(HookPoint::ResidPre(2));
    let out = model.forward(&batch(), &hooks)?;
    assert_eq!(
        out.captured(point).unwrap().abs().max().double_value(&[]),
        0.0
    );
    assert_eq!(
        out.captured(HookPoint::ResidPre(2))
            .unwrap()
            .abs()
            .max()
            .double_value(&[]),
        0.0
    );
    // A closure returning the wrong shape is refused.
    let mut bad = Hooks::new();
    bad.func(point, |_, x| Ok(x.f_narrow(1, 0, 1)?));
    let msg = model.forward(&batch(), &bad).unwrap_err().to_string();
    assert!(
        msg.contains("resid_post.1") && msg.contains("shape"),
        "{msg}"
    );
    Ok(())
}
