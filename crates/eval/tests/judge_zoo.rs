//! A local zoo model as a (weak) judge through the same interface as the HTTP judge: Qwen2.5-Coder-1.5B-
//! Instruct, greedy, behind a [`FnJudge`] and a [`CachedJudge`]. It must answer the coherence prompt in the
//! strict `Score: N` form for a fluent and for a garbled completion, rank the fluent one higher, and the
//! second ask must come from the cache. Needs the zoo unless `ROSETTA_SKIP_ZOO_TESTS=1`.

use anyhow::Result;
use rosetta_eval::judge::{coherence, CachedJudge, FnJudge};
use rosetta_model_hooks::{
    zoo, ChatMessage, GenerateOptions, Hooks, LoadOptions, Model, Tokenizer,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tch::Device;

#[test]
fn a_zoo_model_judges_coherence() -> Result<()> {
    let entry = match zoo::find("qwen2.5-coder-1.5b-instruct") {
        Ok(e) => e,
        Err(e) if std::env::var("ROSETTA_SKIP_ZOO_TESTS").is_ok_and(|v| v == "1") => {
            eprintln!("skipping: {e}");
            return Ok(());
        }
        Err(e) => {
            panic!("{e}\nthis test needs the model zoo; set ROSETTA_SKIP_ZOO_TESTS=1 to skip it")
        }
    };
    let model = Model::load(&entry.dir, LoadOptions::default().with_device(Device::Cpu))?;
    let tok = Tokenizer::from_dir(&entry.dir)?;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let local = FnJudge::new(
        "local:qwen2.5-coder-1.5b-instruct greedy",
        move |prompt: &str| {
            counter.fetch_add(1, Ordering::SeqCst);
            let ids = tok
                .encode_chat(&[ChatMessage::user(prompt)], true)
                .map_err(|e| rosetta_eval::EvalError::Invalid(e.to_string()))?
                .ids;
            let opts = GenerateOptions::greedy(8).with_stop_tokens(tok.eos_token_ids().to_vec());
            let g = model
                .generate(&[ids], tok.pad_token_id(), &Hooks::new(), &opts)
                .map_err(|e| rosetta_eval::EvalError::Invalid(e.to_string()))?;
            tok.decode(&g.tokens[0], true)
                .map_err(|e| rosetta_eval::EvalError::Invalid(e.to_string()))
        },
    );
    let cache = std::env::temp_dir().join(format!("rosetta-judge-zoo-{}", std::process::id()));
    let judge = CachedJudge::new(local, &cache)?;
    let prompt = "Describe a sunny day at the beach.";
    let fluent =
        "The sun was warm on the sand, and children built castles while their parents read under \
                  striped umbrellas. Later, the tide came in slowly and everyone went for a swim.";
    let garbled =
        "sand sand the the umbrella ,, swim swim swim swim xq zzv beach beach beach the the the";
    let good = coherence(&judge, prompt, fluent)?;
    let bad = coherence(&judge, prompt, garbled)?;
    eprintln!("coherence: fluent {good:?}, garbled {bad:?}");
    assert!(
        good.score > bad.score,
        "the judge ranks the garbled text as high as the fluent one"
    );
    let asked = calls.load(Ordering::SeqCst);
    assert_eq!(coherence(&judge, prompt, fluent)?.score, good.score);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        asked,
        "a cached verdict asked the model again"
    );
    std::fs::remove_dir_all(&cache)?;
    Ok(())
}
