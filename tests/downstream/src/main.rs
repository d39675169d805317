//! Downstream use of Rosetta: load a zoo checkpoint, capture one residual-stream activation, and check the
//! model's next token, from a crate outside the workspace.
//!
//! ```text
//! rosetta-downstream-check [MODEL_DIR]   # default: the SmolLM2 zoo model under $ROSETTA_MODELS
//! ```

use anyhow::{ensure, Context, Result};
use rosetta::hooks::{zoo, Batch, HookPoint, Hooks, LoadOptions, Model, PaddingSide, Tokenizer};

fn main() -> Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| zoo::model_dir("smollm2-135m-instruct"));
    let model = Model::load(&dir, LoadOptions::default())
        .with_context(|| format!("loading {}", dir.display()))?;
    let tok = Tokenizer::from_dir(&dir)?;
    let ids = tok.encode("The capital of France is", true)?.ids;
    let batch = Batch::from_sequences(
        &[ids.clone()],
        tok.pad_token_id(),
        PaddingSide::Left,
        model.device(),
    )?;

    let layer = model.num_layers() / 2;
    let point = HookPoint::ResidPost(layer);
    let mut hooks = Hooks::new();
    hooks.capture(point).capture(HookPoint::Logits);
    let out = model.forward(&batch, &hooks)?;
    let act = out.captured(point).context("no capture at resid_post")?;
    let want = [1, ids.len() as i64, model.d_model()];
    ensure!(
        act.size() == want,
        "captured {:?}, expected {want:?}",
        act.size()
    );
    let norm = act.norm().double_value(&[]);
    ensure!(norm.is_finite() && norm > 0.0, "activation norm {norm}");

    let logits = out.logits().context("no logits")?;
    let next = logits.select(1, -1).argmax(-1, false).int64_value(&[0]);
    let word = tok.decode(&[next], true)?;
    println!(
        "rosetta from a downstream crate: {} ({} layers, d={}), {point} {:?} norm {norm:.2}, next token {word:?}",
        dir.display(),
        model.num_layers(),
        model.d_model(),
        act.size()
    );
    ensure!(
        word.trim() == "Paris",
        "next token after 'The capital of France is' was {word:?}, not Paris"
    );
    Ok(())
}
