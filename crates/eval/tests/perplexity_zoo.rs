//! Perplexity of zoo models on fixed texts against HF's: the loss HF computes (`model(ids, labels=ids)`:
//! mean cross-entropy of predicting token t+1 from position t) on HF's own logits, from the reference files
//! `scripts/hf_reference.py` writes (`make references`), against [`rosetta_eval::perplexity`] on Rosetta's
//! logits for the same token ids. Needs the zoo and references unless `ROSETTA_SKIP_ZOO_TESTS=1`.

use anyhow::{bail, Result};
use rosetta_model_hooks::{zoo, Batch, LoadOptions, Model, PaddingSide, SafetensorsSet};
use tch::{Device, Kind, Reduction, Tensor};

fn reference(name: &str) -> Result<Option<(zoo::ZooEntry, SafetensorsSet)>> {
    let skip = std::env::var("ROSETTA_SKIP_ZOO_TESTS").is_ok_and(|v| v == "1");
    let path = zoo::rosetta_home()
        .join("reference")
        .join(format!("{name}.safetensors"));
    match zoo::find(name) {
        Ok(e) if path.exists() => Ok(Some((e, SafetensorsSet::open_file(&path)?))),
        _ if skip => {
            eprintln!("skipping {name}: zoo model or reference missing (ROSETTA_SKIP_ZOO_TESTS=1)");
            Ok(None)
        }
        Err(e) => bail!("{e}"),
        Ok(_) => bail!("{} missing: run `make references`", path.display()),
    }
}

#[test]
fn perplexity_of_zoo_models_matches_hf() -> Result<()> {
    for name in ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"] {
        let Some((entry, refs)) = reference(name)? else {
            continue;
        };
        let model = Model::load(&entry.dir, LoadOptions::default().with_device(Device::Cpu))?;
        // Prompts 1 and 2 of tests/fixtures/reference_prompts.json: plain texts of 20-50 tokens.
        for i in [1, 2] {
            let ids = refs.load(&format!("prompt{i}.input_ids"), None, Device::Cpu)?;
            let hf_logits =
                refs.load(&format!("prompt{i}.logits"), Some(Kind::Float), Device::Cpu)?;
            let t = ids.size()[0];
            // HF's loss: cross-entropy over positions 0..T-1 predicting tokens 1..T.
            let hf_loss = hf_logits
                .narrow(0, 0, t - 1)
                .to_kind(Kind::Double)
                .cross_entropy_loss::<Tensor>(
                    &ids.narrow(0, 1, t - 1),
                    None,
                    Reduction::Mean,
                    -100,
                    0.0,
                )
                .double_value(&[]);
            let hf_ppl = hf_loss.exp();
            // The eval crate's function on HF's logits: the same number.
            let ours_on_hf = rosetta_eval::perplexity(&hf_logits, &ids)?;
            assert!(
                (ours_on_hf - hf_ppl).abs() <= 1e-9 * hf_ppl,
                "{name} prompt {i}: {ours_on_hf} vs {hf_ppl}"
            );
            // Rosetta's model on the same ids.
            let row: Vec<i64> = Vec::try_from(&ids)?;
            let batch = Batch::from_sequences(&[row], 0, PaddingSide::Left, Device::Cpu)?;
            let logits = model.logits(&batch)?.get(0);
            let ppl = rosetta_eval::perplexity(&logits, &ids)?;
            let rel = (ppl - hf_ppl).abs() / hf_ppl;
            eprintln!("{name} prompt {i}: {t} tokens, perplexity {ppl:.4} (HF {hf_ppl:.4}, rel {rel:.1e})");
            assert!(
                rel < 1e-4,
                "{name} prompt {i}: perplexity {ppl} vs HF {hf_ppl}"
            );
        }
    }
    Ok(())
}
