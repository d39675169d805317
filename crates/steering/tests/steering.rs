//! Steering methods, interventions, transfer and vector files on synthetic activations and the tiny golden
//! checkpoints (fast, no zoo needed).

use anyhow::Result;
use rosetta_mapping::{Affine, AnyMap, MapKind, Mapping};
use rosetta_model_hooks::{
    Batch, GenerateOptions, HookPoint, Hooks, LoadOptions, Model, PaddingSide, Positions,
};
use rosetta_steering::*;
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

fn identity(model: &Model, id: &str) -> ModelIdentity {
    ModelIdentity {
        id: id.into(),
        tokenizer_hash: "golden-has-no-tokenizer".into(),
        d_model: model.d_model(),
        num_layers: model.num_layers(),
    }
}

fn prompts() -> Vec<Vec<i64>> {
    vec![
        vec![5, 17, 42, 99, 7, 3, 250, 12, 8],
        vec![33, 21, 8],
        vec![101, 102, 103, 104, 105, 106],
    ]
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn bit_equal(a: &Tensor, b: &Tensor) -> bool {
    a.size() == b.size() && a.eq_tensor(b).all().int64_value(&[]) == 1
}

fn vector(model: &Model, point: HookPoint, dir: &Tensor) -> SteeringVector {
    SteeringVector::new(
        identity(model, "golden"),
        Method::DiffOfMeans,
        Provenance::default(),
        vec![VectorEntry::new(point, dir, 2.0).unwrap()],
    )
    .unwrap()
}

// ---------------------------------------------------------------- methods on synthetic activations

#[test]
fn difference_of_means_is_the_closed_form() -> Result<()> {
    tch::manual_seed(1);
    let pos = Tensor::randn([7, 5], (Kind::Float, Device::Cpu));
    let neg = Tensor::randn([4, 5], (Kind::Float, Device::Cpu));
    let got = mean_difference(&pos, &neg)?;
    let p: Vec<f32> = Vec::try_from(pos.flatten(0, -1))?;
    let n: Vec<f32> = Vec::try_from(neg.flatten(0, -1))?;
    for j in 0..5 {
        let mp: f64 = (0..7).map(|i| p[i * 5 + j] as f64).sum::<f64>() / 7.0;
        let mn: f64 = (0..4).map(|i| n[i * 5 + j] as f64).sum::<f64>() / 4.0;
        assert!((got.double_value(&[j as i64]) - (mp - mn)).abs() < 1e-6);
    }
    assert!(mean_difference(&pos, &Tensor::zeros([3, 4], (Kind::Float, Device::Cpu))).is_err());
    assert!(mean_difference(&pos, &Tensor::zeros([0, 5], (Kind::Float, Device::Cpu))).is_err());
    Ok(())
}

#[test]
fn pca_recovers_a_planted_direction_with_the_right_sign() -> Result<()> {
    tch::manual_seed(2);
    let d = 16;
    let u = Tensor::randn([d], (Kind::Float, Device::Cpu));
    let u = &u / u.norm();
    // Pairs share a random base; the positive member sits along +u, by a varying amount.
    let base = Tensor::randn([40, d], (Kind::Float, Device::Cpu)) * 3.0;
    let amount = Tensor::rand([40, 1], (Kind::Float, Device::Cpu)) * 4.0 + 1.0;
    let noise = |s: f64| Tensor::randn([40, d], (Kind::Float, Device::Cpu)) * s;
    let pos = &base + &amount * u.unsqueeze(0) + noise(0.05);
    let neg = &base - &amount * u.unsqueeze(0) + noise(0.05);
    for (name, v) in [
        ("pca_diff", pca_diff(&pos, &neg)?),
        ("pca_center", pca_center(&pos, &neg)?),
    ] {
        let cos = v.dot(&u).double_value(&[]);
        assert!(cos > 0.99, "{name}: cosine to the planted direction {cos}");
        assert!((v.norm().double_value(&[]) - 1.0).abs() < 1e-5);
        // Swapping the sides flips the sign.
        let flipped = if name == "pca_diff" {
            pca_diff(&neg, &pos)?
        } else {
            pca_center(&neg, &pos)?
        };
        assert!(flipped.dot(&u).double_value(&[]) < -0.99, "{name} sign");
    }
    assert!(
        pca_diff(&pos, &neg.narrow(0, 0, 39)).is_err(),
        "unpaired rows"
    );
    Ok(())
}

// ---------------------------------------------------------------- interventions on golden models

#[test]
fn ablation_zeroes_the_projection_and_changes_nothing_else() -> Result<()> {
    let model = load("llama");
    let batch = Batch::from_sequences(&prompts(), 0, PaddingSide::Left, Device::Cpu)?;
    let point = HookPoint::ResidPost(1);
    tch::manual_seed(3);
    let dir = Tensor::randn([model.d_model()], (Kind::Float, Device::Cpu));
    let unit = &dir / dir.norm();
    let mut plain = Hooks::new();
    plain.capture(point);
    let before = model.forward(&batch, &plain)?.captures.remove(0).1;
    let mut hooks = Hooks::new();
    ablate_direction(&mut hooks, &dir, AblationScope::At(point))?;
    hooks.capture(point);
    let after = model.forward(&batch, &hooks)?.captures.remove(0).1;
    let valid = batch.valid.unsqueeze(-1);
    let proj_after = after.matmul(&unit).unsqueeze(-1);
    assert!(
        proj_after
            .where_scalarother(&valid, 0.0)
            .abs()
            .max()
            .double_value(&[])
            < 1e-4,
        "a projection survives the ablation"
    );
    // The orthogonal part is untouched: after + (before . u) u == before at real tokens; padding is bit-equal.
    let restored = &after + before.matmul(&unit).unsqueeze(-1) * &unit;
    assert!(max_abs(&restored.where_self(&valid, &before), &before) < 1e-4);
    let pad = valid.logical_not().expand_as(&before);
    assert!(bit_equal(
        &after.masked_select(&pad),
        &before.masked_select(&pad)
    ));

    // Every layer: no block input or output keeps the direction, up to the final residual.
    let n = model.num_layers();
    let mut every = Hooks::new();
    ablate_direction(
        &mut every,
        &dir,
        AblationScope::EveryLayer { num_layers: n },
    )?;
    for l in 0..n {
        every.capture(HookPoint::ResidPre(l));
        every.capture(HookPoint::ResidPost(l));
    }
    let out = model.forward(&batch, &every)?;
    for (p, x) in &out.captures {
        let proj = x.matmul(&unit).where_scalarother(&batch.valid, 0.0);
        assert!(
            proj.abs().max().double_value(&[]) < 1e-3,
            "{p} keeps the direction"
        );
    }
    Ok(())
}

#[test]
fn adding_at_generated_positions_changes_only_those_under_the_kv_cache() -> Result<()> {
    let model = load("qwen2");
    let point = HookPoint::ResidPost(1);
    tch::manual_seed(4);
    let dir = Tensor::randn([model.d_model()], (Kind::Float, Device::Cpu));
    let v = vector(&model, point, &dir);
    let opts = GenerateOptions::greedy(6);
    let mut plain = Hooks::new();
    plain.capture(point);
    let a = model.generate(&prompts(), 0, &plain, &opts)?;
    let mut hooks = Hooks::new();
    add_vector(&mut hooks, &v, Strength::Raw(0.5), &Where::Generated)?;
    hooks.capture(point);
    let b = model.generate(&prompts(), 0, &hooks, &opts)?;
    let (xa, xb) = (a.captured(point).unwrap(), b.captured(point).unwrap());
    let t = 9; // padded prompt length
    assert!(
        bit_equal(&xa.narrow(1, 0, t), &xb.narrow(1, 0, t)),
        "prompt positions changed"
    );
    // The first token comes from the prefill, so it is the same; at its position (the first decoding step)
    // the steered activation is exactly the plain one plus 0.5 v.
    assert_eq!(
        a.tokens.iter().map(|t| t[0]).collect::<Vec<_>>(),
        b.tokens.iter().map(|t| t[0]).collect::<Vec<_>>()
    );
    let step = xb.narrow(1, t, 1) - xa.narrow(1, t, 1);
    let want = (&dir * 0.5).view([1, 1, -1]).expand_as(&step);
    assert!(max_abs(&step, &want) < 1e-5);
    // Relative strength: alpha * scale along the unit direction.
    let mut rel = Hooks::new();
    add_vector(&mut rel, &v, Strength::Relative(1.5), &Where::Generated)?;
    rel.capture(point);
    let c = model.generate(&prompts(), 0, &rel, &opts)?;
    let step = c.captured(point).unwrap().narrow(1, t, 1) - xa.narrow(1, t, 1);
    let want = (&dir * (1.5 * 2.0 / dir.norm().double_value(&[])))
        .view([1, 1, -1])
        .expand_as(&step);
    assert!(max_abs(&step, &want) < 1e-5);
    Ok(())
}

#[test]
fn patching_with_the_runs_own_activations_is_the_identity() -> Result<()> {
    for case in ["llama", "gemma2"] {
        let model = load(case);
        for side in [PaddingSide::Left, PaddingSide::Right] {
            let batch = Batch::from_sequences(&prompts(), 0, side, Device::Cpu)?;
            let points = [HookPoint::ResidPost(0), HookPoint::AttnOut(1)];
            let captured = capture_by_position(&model, &batch, &points)?;
            assert_eq!(captured[0].1.size()[1], 9, "indexed by absolute position");
            let mut hooks = Hooks::new();
            patch_from(&mut hooks, &captured, Positions::All);
            hooks.capture(HookPoint::Logits);
            let patched = model.forward(&batch, &hooks)?;
            let plain = model.logits(&batch)?;
            assert!(
                bit_equal(patched.logits().unwrap(), &plain),
                "{case} {side:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn patching_from_a_contrast_run_moves_the_output_towards_it() -> Result<()> {
    let model = load("llama");
    let a = Batch::from_sequences(&[vec![5, 17, 42, 99]], 0, PaddingSide::Left, Device::Cpu)?;
    let b = Batch::from_sequences(&[vec![5, 17, 43, 99]], 0, PaddingSide::Left, Device::Cpu)?;
    let n = model.num_layers();
    let captured = capture_by_position(&model, &b, &[HookPoint::ResidPost(n - 1)])?;
    let mut hooks = Hooks::new();
    patch_from(&mut hooks, &captured, Positions::At(vec![3]));
    let patched = model.forward_last(&a, &hooks)?.last;
    let want = model.forward_last(&b, &Hooks::new())?.last;
    assert!(
        max_abs(&patched, &want) < 1e-4,
        "patching the last residual gives the contrast run's logits"
    );
    Ok(())
}

#[test]
fn per_position_vectors_apply_at_each_rows_trigger_tokens() -> Result<()> {
    let model = load("llama");
    let batch = Batch::from_sequences(&prompts(), 0, PaddingSide::Left, Device::Cpu)?;
    let point = HookPoint::ResidPost(0);
    tch::manual_seed(5);
    let rows = Tensor::randn([2, model.d_model()], (Kind::Float, Device::Cpu));
    let v = vector(&model, point, &rows);
    let spans = vec![vec![3, 4], vec![0, 1], vec![4, 5]];
    let mut plain = Hooks::new();
    plain.capture(point);
    let before = model.forward(&batch, &plain)?.captures.remove(0).1;
    let mut hooks = Hooks::new();
    add_vector(
        &mut hooks,
        &v,
        Strength::Raw(1.0),
        &Where::Trigger(spans.clone()),
    )?;
    hooks.capture(point);
    let after = model.forward(&batch, &hooks)?.captures.remove(0).1;
    let delta = &after - &before;
    for (r, len) in [9i64, 3, 6].into_iter().enumerate() {
        let offset = 9 - len;
        for c in 0..9 {
            let d = delta.get(r as i64).get(c);
            let pos = c - offset;
            match spans[r].iter().position(|&p| p == pos) {
                Some(j) if pos >= 0 => assert!(max_abs(&d, &rows.get(j as i64)) < 1e-5),
                _ => assert_eq!(d.abs().max().double_value(&[]), 0.0, "row {r} col {c}"),
            }
        }
    }
    // A span of the wrong length is refused.
    let mut bad = Hooks::new();
    assert!(add_vector(
        &mut bad,
        &v,
        Strength::Raw(1.0),
        &Where::Trigger(vec![vec![1]; 3])
    )
    .is_err());
    assert!(add_vector(&mut bad, &v, Strength::Raw(1.0), &Where::All).is_err());
    Ok(())
}

#[test]
fn the_safety_switch_off_is_the_plain_model_and_flips_at_run_time() -> Result<()> {
    let model = load("qwen3");
    let batch = Batch::from_sequences(&prompts(), 0, PaddingSide::Left, Device::Cpu)?;
    let d = model.d_model();
    // A map that zeroes the residual stream: obviously different when on.
    let zero = Affine::from_parts(
        MapKind::Affine,
        Tensor::zeros([d, d], (Kind::Float, Device::Cpu)),
        Tensor::zeros([d], (Kind::Float, Device::Cpu)),
    )?;
    let switch = SafetySwitch::new(&model, HookPoint::ResidPost(0), zero.into())?;
    let mut hooks = Hooks::new();
    switch.install(&mut hooks);
    hooks.capture(HookPoint::Logits);
    let plain = model.logits(&batch)?;
    let run = |h: &Hooks| model.forward(&batch, h).unwrap().logits().unwrap().copy();
    assert!(bit_equal(&run(&hooks), &plain), "off must be bit-equal");
    switch.set(true);
    assert!(max_abs(&run(&hooks), &plain) > 1e-3);
    switch.set(false);
    assert!(bit_equal(&run(&hooks), &plain));
    // Generation honours the switch too.
    let opts = GenerateOptions::greedy(4);
    let g_plain = model.generate(&prompts(), 0, &Hooks::new(), &opts)?;
    assert_eq!(
        model.generate(&prompts(), 0, &hooks, &opts)?.tokens,
        g_plain.tokens
    );
    // An identity map on is the plain model up to rounding.
    let ident = SafetySwitch::new(
        &model,
        HookPoint::ResidPost(0),
        Affine::identity(d, Device::Cpu)?.into(),
    )?;
    let mut h2 = Hooks::new();
    ident.install(&mut h2);
    h2.capture(HookPoint::Logits);
    ident.set(true);
    assert!(max_abs(&run(&h2), &plain) < 1e-4);
    let wrong = Affine::identity(d + 1, Device::Cpu)?;
    assert!(SafetySwitch::new(&model, HookPoint::ResidPost(0), wrong.into()).is_err());
    Ok(())
}

#[test]
fn conditional_steering_decides_per_row() -> Result<()> {
    let model = load("llama");
    let batch = Batch::from_sequences(&prompts(), 0, PaddingSide::Left, Device::Cpu)?;
    let cond_point = HookPoint::ResidPost(0);
    let steer_point = HookPoint::ResidPost(1);
    let mut cap = Hooks::new();
    cap.capture(cond_point).capture(steer_point);
    let out = model.forward(&batch, &cap)?;
    let h = out.captured(cond_point).unwrap();
    // Condition direction: row 0's mean prompt activation, so row 0 scores 1.
    let valid = batch.valid.unsqueeze(-1).to_kind(Kind::Float);
    let means = (h * &valid).sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
        / valid.sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    let c = means.get(0);
    let scores: Vec<f64> = Vec::try_from(
        Tensor::cosine_similarity(&means, &c.unsqueeze(0), 1, 1e-12).to_kind(Kind::Double),
    )?;
    let threshold = (scores[0] + scores[1].max(scores[2])) / 2.0;
    assert!(scores[0] > threshold && scores[1] < threshold && scores[2] < threshold);
    tch::manual_seed(6);
    let dir = Tensor::randn([model.d_model()], (Kind::Float, Device::Cpu));
    let cond = Conditional {
        condition_point: cond_point,
        condition: c.copy(),
        threshold,
        vector: vector(&model, steer_point, &dir),
        strength: Strength::Raw(1.0),
    };
    let mut hooks = Hooks::new();
    let flags = cond.install(&mut hooks, model.num_layers())?;
    hooks.capture(steer_point);
    let steered = model.forward(&batch, &hooks)?.captures.remove(0).1;
    assert_eq!(flags.get(), Some(vec![true, false, false]));
    let plain = out.captured(steer_point).unwrap();
    assert!(
        bit_equal(&steered.narrow(0, 1, 2), &plain.narrow(0, 1, 2)),
        "unsteered rows changed"
    );
    let d0 = steered.get(0).narrow(0, 0, 9) - plain.get(0);
    assert!(max_abs(&d0, &dir.unsqueeze(0).expand_as(&d0)) < 1e-5);
    // Thresholds from held-out scores.
    let (t, acc) = choose_threshold(&[0.9, 0.8, 0.7], &[0.1, 0.75, 0.2])?;
    assert!(t > 0.2 && t < 0.7 || (t > 0.75 && t < 0.8), "{t}");
    assert!((acc - 5.0 / 6.0).abs() < 1e-12, "{acc}");
    // A condition read after the steered point is refused.
    let late = Conditional {
        condition_point: HookPoint::ResidPost(1),
        vector: vector(&model, HookPoint::ResidPost(0), &dir),
        ..cond
    };
    assert!(late.install(&mut Hooks::new(), model.num_layers()).is_err());
    Ok(())
}

// ---------------------------------------------------------------- transfer

fn exact_affine(d_src: i64, d_tgt: i64) -> (AnyMap, Tensor) {
    tch::manual_seed(7);
    let w = Tensor::randn([d_tgt, d_src], (Kind::Float, Device::Cpu));
    let b = Tensor::randn([d_tgt], (Kind::Float, Device::Cpu));
    (
        Affine::from_parts(MapKind::Affine, w.copy(), b)
            .unwrap()
            .into(),
        w,
    )
}

fn ident(id: &str, d: i64) -> ModelIdentity {
    ModelIdentity {
        id: id.into(),
        tokenizer_hash: "h".into(),
        d_model: d,
        num_layers: 4,
    }
}

#[test]
fn every_recipe_gives_a_v_through_an_exact_affine_map() -> Result<()> {
    let (d_src, d_tgt) = (12, 9);
    let (map, w) = exact_affine(d_src, d_tgt);
    let pos = Tensor::randn([30, d_src], (Kind::Float, Device::Cpu)) + 1.0;
    let neg = Tensor::randn([25, d_src], (Kind::Float, Device::Cpu));
    let v = mean_difference(&pos, &neg)?;
    let src_point = HookPoint::ResidPost(2);
    let source = SteeringVector::new(
        ident("small", d_src),
        Method::DiffOfMeans,
        Provenance::default(),
        vec![VectorEntry::new(src_point, &v, 3.0)?],
    )?;
    let t = Transfer {
        map: &map,
        source_point: Some(src_point),
        target: ident("large", d_tgt),
        target_point: HookPoint::ResidPost(3),
        map_sha256: String::new(),
    };
    let av = w.matmul(&v);
    let reference = Tensor::randn([40, d_src], (Kind::Float, Device::Cpu));
    let results = [
        t.mapped_contrast(&source, &pos, &neg)?,
        t.offset(&source, &reference)?,
        t.linear(&source)?,
    ];
    for r in &results {
        let e = r.single()?;
        assert_eq!(e.point, HookPoint::ResidPost(3));
        assert!(
            max_abs(&e.direction, &av) < 1e-4,
            "{}",
            method_name(&r.method)
        );
        assert_eq!(r.model.id, "large");
        assert!(matches!(&r.method, Method::Transferred { source, .. } if source.id == "small"));
    }
    // Random baseline: the transferred norm, reproducible from its seed, different across seeds.
    let r1 = t.random(&results[0], 11)?;
    let r2 = t.random(&results[0], 11)?;
    let r3 = t.random(&results[0], 12)?;
    let n = results[0].single()?.norm();
    assert!((r1.single()?.norm() - n).abs() < 1e-4 * n);
    assert!(bit_equal(&r1.single()?.direction, &r2.single()?.direction));
    assert!(max_abs(&r1.single()?.direction, &r3.single()?.direction) > 1e-3);
    assert!(matches!(
        r1.method,
        Method::Transferred {
            recipe: Recipe::Random,
            seed: Some(11),
            ..
        }
    ));
    // Fidelity against a native vector equal to A v: cosine 1, ratio 1; random is far.
    let native = SteeringVector::new(
        ident("large", d_tgt),
        Method::DiffOfMeans,
        Provenance::default(),
        vec![VectorEntry::new(HookPoint::ResidPost(3), &av, 1.0)?],
    )?;
    let mut f = Fidelity::new(&results[0], Some(&native), Some(&r1))?;
    assert!((f.cosine_to_native.unwrap() - 1.0).abs() < 1e-5);
    assert!((f.norm_ratio.unwrap() - 1.0).abs() < 1e-4);
    assert!(f.random_cosine_to_native.unwrap().abs() < 0.9);
    f.measure_effects(
        "norm",
        &[("native", Some(&native)), ("none", None)],
        &mut |v| Ok(v.map_or(0.0, |v| v.single().unwrap().norm())),
    )?;
    assert_eq!(f.effects.len(), 2);
    assert!(f.to_markdown().contains("| mapped contrast |"));
    // `carry`: the vector, its random baseline and the report in one call, the report kept in the vector.
    let out = t.carry(
        &source,
        Recipe::MappedContrast,
        TransferData::Contrast {
            positive: &pos,
            negative: &neg,
        },
        Some(&native),
        11,
    )?;
    assert!(max_abs(&out.vector.single()?.direction, &av) < 1e-4);
    assert!(bit_equal(
        &out.random.single()?.direction,
        &r1.single()?.direction
    ));
    assert!((out.fidelity.cosine_to_native.unwrap() - 1.0).abs() < 1e-5);
    assert!(
        out.vector.extra["fidelity"]["cosine_to_native"]
            .as_f64()
            .unwrap()
            > 0.99999
    );
    assert!(t
        .carry(&source, Recipe::Offset, TransferData::None, None, 1)
        .is_err());
    let lin = t.carry(&source, Recipe::Linear, TransferData::None, None, 1)?;
    assert_eq!(lin.fidelity.cosine_to_native, None);
    // Per-position vectors go through row by row.
    let rows = Tensor::randn([3, d_src], (Kind::Float, Device::Cpu));
    let pp = SteeringVector::new(
        ident("small", d_src),
        Method::Other {
            description: "k rows".into(),
        },
        Provenance::default(),
        vec![VectorEntry::new(src_point, &rows, 1.0)?],
    )?;
    let want = rows.matmul(&w.tr());
    assert!(max_abs(&t.linear(&pp)?.single()?.direction, &want) < 1e-4);
    assert!(max_abs(&t.offset(&pp, &reference)?.single()?.direction, &want) < 1e-4);
    let ppos = Tensor::randn([10, 3, d_src], (Kind::Float, Device::Cpu));
    let pneg = Tensor::randn([10, 3, d_src], (Kind::Float, Device::Cpu));
    let mc = t.mapped_contrast(&pp, &ppos, &pneg)?;
    let want = (ppos.mean_dim([0i64].as_slice(), false, Kind::Float)
        - pneg.mean_dim([0i64].as_slice(), false, Kind::Float))
    .matmul(&w.tr());
    assert!(max_abs(&mc.single()?.direction, &want) < 1e-4);
    // Wrong point or width is refused; an autoencoder has no linear part.
    let other = SteeringVector::new(
        ident("small", d_src),
        Method::DiffOfMeans,
        Provenance::default(),
        vec![VectorEntry::new(HookPoint::ResidPost(1), &v, 1.0)?],
    )?;
    assert!(t.linear(&other).is_err());
    let ae: AnyMap = rosetta_mapping::Autoencoder::new(
        d_src,
        d_tgt,
        None,
        rosetta_mapping::AutoencoderInit::Default,
        Device::Cpu,
    )?
    .into();
    let t2 = Transfer { map: &ae, ..t };
    assert!(t2.linear(&source).is_err());
    assert!(t2.offset(&source, &reference).is_ok());
    let _ = ae.forward(&reference)?;
    Ok(())
}

// ---------------------------------------------------------------- vector files

#[test]
fn vectors_round_trip_and_refuse_the_wrong_model() -> Result<()> {
    let dir = tempdir("roundtrip");
    let d = 6;
    let v = SteeringVector::new(
        ident("small", d),
        Method::RefusalDirection { layer: 2 },
        Provenance {
            positive_prompts: 3,
            negative_prompts: 4,
            rows: 7,
            positions: Some(PositionRule::PostInstruction),
            data: Some("refusal.jsonl".into()),
        },
        vec![
            VectorEntry::new(
                HookPoint::ResidPre(2),
                &Tensor::arange(d, (Kind::Float, Device::Cpu)),
                5.5,
            )?,
            VectorEntry::new(
                HookPoint::ResidPost(3),
                &Tensor::ones([2, d], (Kind::Float, Device::Cpu)),
                1.0,
            )?,
        ],
    )?;
    let info = v.save(&dir)?;
    assert_eq!(info.entries.len(), 2);
    let back = SteeringVector::load_for(&dir, &ident("small", d))?;
    assert_eq!(back.model, v.model);
    assert_eq!(back.method, v.method);
    assert_eq!(back.provenance, v.provenance);
    for (a, b) in back.entries.iter().zip(&v.entries) {
        assert_eq!(a.point, b.point);
        assert_eq!(a.scale, b.scale);
        assert!(bit_equal(&a.direction, &b.direction));
    }
    // Every differing field is named.
    let mut other = ident("large", d + 1);
    other.tokenizer_hash = "other".into();
    other.num_layers = 9;
    let err = SteeringVector::load_for(&dir, &other)
        .unwrap_err()
        .to_string();
    for needle in ["\"small\"", "tokenizer hash", "width is 6", "4 layers"] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }
    // A replaced tensors file is caught by its checksum; a missing sidecar says what the directory lacks.
    let tensors = dir.join("vector.safetensors");
    let mut bytes = std::fs::read(&tensors)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&tensors, &bytes)?;
    assert!(SteeringVector::load(&dir)
        .unwrap_err()
        .to_string()
        .contains("checksum"));
    std::fs::remove_file(dir.join("vector.json"))?;
    assert!(SteeringVector::load(&dir)
        .unwrap_err()
        .to_string()
        .contains("no vector.json"));
    // Construction checks widths, layers and duplicates.
    let e =
        |p, n| VectorEntry::new(p, &Tensor::ones([n], (Kind::Float, Device::Cpu)), 1.0).unwrap();
    assert!(SteeringVector::new(
        ident("m", d),
        Method::DiffOfMeans,
        Provenance::default(),
        vec![e(HookPoint::ResidPost(0), d + 1)]
    )
    .is_err());
    assert!(SteeringVector::new(
        ident("m", d),
        Method::DiffOfMeans,
        Provenance::default(),
        vec![e(HookPoint::ResidPost(4), d)]
    )
    .is_err());
    assert!(SteeringVector::new(
        ident("m", d),
        Method::DiffOfMeans,
        Provenance::default(),
        vec![e(HookPoint::ResidPost(0), d), e(HookPoint::ResidPost(0), d)]
    )
    .is_err());
    assert!(SteeringVector::new(
        ident("m", d),
        Method::DiffOfMeans,
        Provenance::default(),
        vec![]
    )
    .is_err());
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rosetta-steering-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

// ---------------------------------------------------------------- mapped completions

#[test]
fn mapped_completions_with_an_identity_map_reproduce_the_model() -> Result<()> {
    let model = load("llama");
    let d = model.d_model();
    let map: AnyMap = Affine::identity(d, Device::Cpu)?.into();
    let point = HookPoint::ResidPost(1);
    let pair = MappedPair::new(&model, &model, &map, point, point)?;
    let opts = GenerateOptions::greedy(8);
    let plain = model.generate(&prompts(), 0, &Hooks::new(), &opts)?;
    let mapped = pair.generate(&prompts(), 0, &opts, None)?;
    assert_eq!(mapped.tokens, plain.tokens);
    let batch = Batch::from_sequences(&prompts(), 0, PaddingSide::Left, Device::Cpu)?;
    let out = pair.forward(&batch, None)?;
    assert!(max_abs(out.logits().unwrap(), &model.logits(&batch)?) < 1e-5);
    Ok(())
}

#[test]
fn mapped_generation_side_by_side_equals_a_full_recomputation() -> Result<()> {
    // A map that really changes the target: under the KV cache, each new token must go through the source
    // and the map before the target reads it, exactly as a full forward pass over the whole text does.
    let source = load("llama");
    let target = load("llama");
    let d = source.d_model();
    tch::manual_seed(8);
    let w = Tensor::eye(d, (Kind::Float, Device::Cpu)) * 0.5
        + Tensor::randn([d, d], (Kind::Float, Device::Cpu)) * 0.2;
    let map: AnyMap = Affine::from_parts(
        MapKind::Affine,
        w,
        Tensor::zeros([d], (Kind::Float, Device::Cpu)),
    )?
    .into();
    let pair = MappedPair::new(
        &source,
        &target,
        &map,
        HookPoint::ResidPost(0),
        HookPoint::ResidPost(1),
    )?;
    let opts = GenerateOptions::greedy(6);
    let gen = pair.generate(&prompts(), 0, &opts, None)?;
    let plain = target.generate(&prompts(), 0, &Hooks::new(), &opts)?;
    assert_ne!(
        gen.tokens, plain.tokens,
        "the map should change the completions"
    );
    for (p, toks) in prompts().iter().zip(&gen.tokens) {
        let mut full = p.clone();
        full.extend_from_slice(&toks[..toks.len() - 1]);
        let batch = Batch::from_sequences(&[full.clone()], 0, PaddingSide::Left, Device::Cpu)?;
        let logits = pair.forward(&batch, None)?.logits().unwrap().get(0);
        let argmax: Vec<i64> = Vec::try_from(
            logits
                .narrow(0, p.len() as i64 - 1, toks.len() as i64)
                .argmax(-1, false),
        )?;
        assert_eq!(&argmax, toks);
    }
    // Width and tokenizer checks.
    let wide: AnyMap = Affine::identity(d + 2, Device::Cpu)?.into();
    assert!(MappedPair::new(
        &source,
        &target,
        &wide,
        HookPoint::ResidPost(0),
        HookPoint::ResidPost(1)
    )
    .is_err());
    assert!(MappedPair::new(
        &source,
        &target,
        &map,
        HookPoint::ResidPost(99),
        HookPoint::ResidPost(1)
    )
    .is_err());
    Ok(())
}

#[test]
fn steering_vectors_convert_to_and_from_control_vectors() -> Result<()> {
    let d = 5;
    let e = |p, s: f64| {
        VectorEntry::new(p, &(Tensor::arange(d, (Kind::Float, Device::Cpu)) * s), 1.0).unwrap()
    };
    let v = SteeringVector::new(
        ident("m", d),
        Method::DiffOfMeans,
        Provenance::default(),
        vec![
            e(HookPoint::ResidPost(2), 1.0),
            e(HookPoint::ResidPre(2), 2.0),
        ],
    )?;
    let cv = v.to_control_vector(0.5, "qwen2")?;
    assert_eq!(
        cv.directions.keys().copied().collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(cv.directions[&1], vec![0.0, 1.0, 2.0, 3.0, 4.0]);
    assert_eq!(cv.directions[&2], vec![0.0, 0.5, 1.0, 1.5, 2.0]);
    let back = SteeringVector::from_control_vector(
        &ControlVector::from_bytes(&cv.to_bytes()?, "mem")?,
        ident("m", d),
    )?;
    assert_eq!(back.entries.len(), 2);
    assert_eq!(back.entries[0].point, HookPoint::ResidPost(1));
    assert!(matches!(&back.method, Method::Imported { model_hint } if model_hint == "qwen2"));
    for bad in [
        HookPoint::ResidPost(0),
        HookPoint::ResidPre(1),
        HookPoint::Embed,
        HookPoint::AttnOut(2),
    ] {
        let v = SteeringVector::new(
            ident("m", d),
            Method::DiffOfMeans,
            Provenance::default(),
            vec![e(bad, 1.0)],
        )?;
        let err = v.to_control_vector(1.0, "qwen2").unwrap_err().to_string();
        assert!(err.contains(&bad.to_string()), "{err}");
    }
    // Two entries on one block output (resid_post(1) and resid_pre(2)) are refused.
    let dup = SteeringVector::new(
        ident("m", d),
        Method::DiffOfMeans,
        Provenance::default(),
        vec![
            e(HookPoint::ResidPost(1), 1.0),
            e(HookPoint::ResidPre(2), 1.0),
        ],
    )?;
    assert!(dup.to_control_vector(1.0, "x").is_err());
    assert!(SteeringVector::from_control_vector(&cv, ident("m", d + 1)).is_err());
    Ok(())
}
