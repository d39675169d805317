//! Real checkpoints from the model zoo against HF transformers: tokenization, chat templates, every
//! `resid_post`, `final_norm` and the logits within 1e-4 (relative to the tensor's scale), and 32-token
//! greedy generations identical to HF's (a divergence is accepted only at a near-tie, top-2 logit gap
//! < 1e-4, and is reported).
//!
//! The references come from `scripts/hf_reference.py` (run by `make test`, cached under
//! `$ROSETTA_HOME/reference/`). Missing zoo models or references fail the test with the command that
//! makes them, unless `ROSETTA_SKIP_ZOO_TESTS=1`.

use anyhow::{bail, Context, Result};
use rosetta_model_hooks::{
    zoo, Batch, ChatMessage, GenerateOptions, HookPoint, Hooks, LoadOptions, Model, PaddingSide,
    SafetensorsSet, Tokenizer,
};
use tch::{Device, Kind, Tensor};

const REL_TOL: f64 = 1e-4;
const TIE_GAP: f64 = 1e-4;

fn reference(name: &str) -> Result<Option<(zoo::ZooEntry, SafetensorsSet)>> {
    let skip = std::env::var("ROSETTA_SKIP_ZOO_TESTS").is_ok_and(|v| v == "1");
    let path = zoo::rosetta_home()
        .join("reference")
        .join(format!("{name}.safetensors"));
    let entry = match zoo::find(name) {
        Ok(e) if path.exists() => e,
        Ok(_) | Err(_) if skip => {
            eprintln!("skipping {name}: zoo model or reference missing (ROSETTA_SKIP_ZOO_TESTS=1)");
            return Ok(None);
        }
        Err(e) => bail!("{e}"),
        Ok(_) => bail!("{} missing: run `make references`", path.display()),
    };
    Ok(Some((entry, SafetensorsSet::open_file(&path)?)))
}

/// Hooks capturing every point the reference holds (`resid_post` of every layer, `final_norm`, `logits`),
/// and those points with the reference's names for them.
fn reference_points(layers: usize) -> (Hooks, Vec<(HookPoint, String)>) {
    let mut names: Vec<(HookPoint, String)> = (0..layers)
        .map(|l| (HookPoint::ResidPost(l), format!("resid_post.{l}")))
        .collect();
    names.push((HookPoint::FinalNorm, "final_norm".into()));
    names.push((HookPoint::Logits, "logits".into()));
    let mut hooks = Hooks::new();
    for (point, _) in &names {
        hooks.capture(*point);
    }
    (hooks, names)
}

fn rel_diff(got: &Tensor, want: &Tensor) -> f64 {
    let scale = want.abs().max().double_value(&[]).max(1e-6);
    (got.to_kind(Kind::Double) - want.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
        / scale
}

fn check_model(name: &str) -> Result<()> {
    let Some((entry, reference)) = reference(name)? else {
        return Ok(());
    };
    let meta = reference.header_metadata();
    let n: usize = meta.get("n_prompts").context("n_prompts")?.parse()?;
    let gen_tokens: usize = meta.get("gen_tokens").context("gen_tokens")?.parse()?;
    let model = Model::load(&entry.dir, LoadOptions::default())?;
    let tok = Tokenizer::from_dir(&entry.dir)?;
    let layers = model.num_layers();

    // Tokenization and chat templates.
    let mut prompts = Vec::new();
    let mut used = Vec::new(); // reference prompt index of each entry of `prompts`
    for i in 0..n {
        if let Some(why) = meta.get(&format!("prompt{i}.skipped")) {
            // HF skipped it (a base model without chat template): Rosetta must refuse it too.
            assert!(
                !tok.has_chat_template(),
                "{name} prompt{i} skipped by HF ({why}) but we have a template"
            );
            let messages: Vec<ChatMessage> =
                serde_json::from_str(&meta[&format!("prompt{i}.messages")])?;
            assert!(
                tok.encode_chat(&messages, true).is_err(),
                "{name}: chat without template must fail"
            );
            continue;
        }
        let want: Vec<i64> =
            Vec::try_from(reference.load(&format!("prompt{i}.input_ids"), None, Device::Cpu)?)?;
        let got = match meta[&format!("prompt{i}.kind")].as_str() {
            "chat" => {
                let messages: Vec<ChatMessage> =
                    serde_json::from_str(&meta[&format!("prompt{i}.messages")])?;
                let rendered = tok.apply_chat_template(&messages, true)?;
                assert_eq!(
                    rendered,
                    meta[&format!("prompt{i}.rendered")],
                    "{name} prompt{i}: chat template"
                );
                tok.encode_chat(&messages, true)?.ids
            }
            _ => tok.encode(&meta[&format!("prompt{i}.text")], true)?.ids,
        };
        assert_eq!(got, want, "{name} prompt{i}: token ids differ from HF");
        prompts.push(want);
        used.push(i);
    }

    // Activations, one prompt at a time (no padding, like the reference).
    let (hooks, names) = reference_points(layers);
    let mut worst = (0.0f64, String::new());
    for (&i, p) in used.iter().zip(&prompts) {
        let batch =
            Batch::from_sequences(std::slice::from_ref(p), 0, PaddingSide::Left, Device::Cpu)?;
        let out = model.forward(&batch, &hooks)?;
        for (point, key) in &names {
            let want = reference.load(&format!("prompt{i}.{key}"), None, Device::Cpu)?;
            let got = out.captured(*point).context("capture")?.get(0);
            let d = rel_diff(&got, &want);
            assert!(
                d <= REL_TOL,
                "{name} prompt{i} {key}: relative diff {d:.2e} > {REL_TOL:e}"
            );
            if d > worst.0 {
                worst = (d, format!("prompt{i} {key}"));
            }
        }
    }
    println!(
        "{name}: all resid_post / final_norm / logits within {REL_TOL:e}; worst {:.2e} at {}",
        worst.0, worst.1
    );

    // Greedy generation, all prompts in one left-padded batch.
    let gen = model.generate(
        &prompts,
        tok.pad_token_id(),
        &Hooks::new(),
        &GenerateOptions::greedy(gen_tokens),
    )?;
    for (&i, got) in used.iter().zip(&gen.tokens) {
        let want: Vec<i64> =
            Vec::try_from(reference.load(&format!("prompt{i}.greedy_ids"), None, Device::Cpu)?)?;
        let gaps: Vec<f32> = Vec::try_from(reference.load(
            &format!("prompt{i}.greedy_top2_gap"),
            None,
            Device::Cpu,
        )?)?;
        if let Some(k) = got.iter().zip(&want).position(|(a, b)| a != b) {
            assert!(
                f64::from(gaps[k]) < TIE_GAP,
                "{name} prompt{i}: greedy token {k} is {} but HF chose {} (top-2 gap {:.2e}, not a near-tie)",
                got[k],
                want[k],
                gaps[k]
            );
            println!(
                "{name} prompt{i}: diverges at token {k} at a near-tie (HF top-2 gap {:.2e})",
                gaps[k]
            );
        } else {
            assert_eq!(got.len(), want.len(), "{name} prompt{i}: length");
        }
    }
    println!(
        "{name}: {} greedy generations of {gen_tokens} tokens identical to HF",
        gen.tokens.len()
    );
    Ok(())
}

/// Relative Frobenius error `|got - want| / |want|`.
fn rel_fro(got: &Tensor, want: &Tensor) -> f64 {
    let want = want.to_kind(Kind::Double);
    (got.to_kind(Kind::Double) - &want).norm().double_value(&[])
        / want.norm().double_value(&[]).max(1e-12)
}

/// In bf16, Rosetta's CPU kernels (fused norms, RoPE and activation; its bf16 attention on unpadded
/// prompts) are as accurate as libtorch's operator chain (HF's bf16 computation), measured against HF's f32
/// reference over every `resid_post`, `final_norm` and the logits of each reference prompt: the summed
/// relative errors within 10% of libtorch's, and no single point beyond 2x its error (+1e-3). Two bf16
/// computations that round in different places land on different sides of the f32 result; on the zoo the
/// per-point ratio ranges 0.8-1.25 and the summed ratio 0.96-1.02 on AMD EPYC (2026-11-24); on an Intel
/// Xeon (2026-12-02) one point of SmolLM2 (prompt2 resid_post.10) reached 1.65x (2.77e-2 vs 1.68e-2), so
/// the per-point bound is 2x and the summed bound carries the accuracy claim.
fn check_bf16_kernels(name: &str) -> Result<()> {
    let Some((entry, reference)) = reference(name)? else {
        return Ok(());
    };
    let meta = reference.header_metadata();
    let n: usize = meta.get("n_prompts").context("n_prompts")?.parse()?;
    let load = |fast: bool| {
        Model::load(
            &entry.dir,
            LoadOptions::default()
                .with_kind(Kind::BFloat16)
                .with_fast_kernels(fast),
        )
    };
    let (fast, torch) = (load(true)?, load(false)?);
    let (hooks, names) = reference_points(fast.num_layers());
    let mut worst = (0.0f64, 0.0f64, String::new());
    let (mut sum_fast, mut sum_torch) = (0.0f64, 0.0f64);
    for i in 0..n {
        let Ok(ids) = reference.load(&format!("prompt{i}.input_ids"), None, Device::Cpu) else {
            continue; // skipped by HF (no chat template)
        };
        let ids: Vec<i64> = Vec::try_from(ids)?;
        let batch = Batch::from_sequences(&[ids], 0, PaddingSide::Left, Device::Cpu)?;
        let (a, b) = (
            fast.forward(&batch, &hooks)?,
            torch.forward(&batch, &hooks)?,
        );
        for (point, key) in &names {
            let want = reference.load(&format!("prompt{i}.{key}"), None, Device::Cpu)?;
            let ea = rel_fro(&a.captured(*point).context("capture")?.get(0), &want);
            let eb = rel_fro(&b.captured(*point).context("capture")?.get(0), &want);
            assert!(
                ea <= 2.0 * eb + 1e-3,
                "{name} prompt{i} {key}: bf16 with Rosetta's kernels {ea:.2e} from HF f32, \
                 with libtorch's operators {eb:.2e}"
            );
            (sum_fast, sum_torch) = (sum_fast + ea, sum_torch + eb);
            if ea / eb > worst.0 / worst.1.max(1e-30) {
                worst = (ea, eb, format!("prompt{i} {key}"));
            }
        }
    }
    let ratio = sum_fast / sum_torch;
    println!(
        "{name} bf16: relative error from HF f32, Rosetta's kernels / libtorch's operators: summed \
         {ratio:.3}, least favourable point {:.2e} / {:.2e} at {}",
        worst.0, worst.1, worst.2
    );
    assert!(
        ratio <= 1.1,
        "{name} bf16: Rosetta's kernels are {ratio:.3}x as far from HF f32 as libtorch's operators"
    );
    Ok(())
}

#[test]
fn bf16_kernels_are_as_accurate_as_torch_operators() -> Result<()> {
    // Head sizes 64 (SmolLM2, Qwen) and 256 (Gemma 3: sliding layers, GELU, q/k norms).
    for name in [
        "smollm2-135m-instruct",
        "gemma3-270m",
        "qwen2.5-coder-0.5b-instruct",
    ] {
        check_bf16_kernels(name)?;
    }
    Ok(())
}

#[test]
fn smollm2_matches_hf() -> Result<()> {
    check_model("smollm2-135m-instruct")
}

#[test]
fn gemma3_matches_hf() -> Result<()> {
    check_model("gemma3-270m")
}

#[test]
fn qwen_0_5b_matches_hf() -> Result<()> {
    check_model("qwen2.5-coder-0.5b-instruct")
}

#[test]
fn qwen_1_5b_matches_hf() -> Result<()> {
    check_model("qwen2.5-coder-1.5b-instruct")
}
