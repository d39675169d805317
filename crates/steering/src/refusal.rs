//! The refusal direction of Arditi et al. (2024), "Refusal in language models is mediated by a single
//! direction":
//!
//! 1. **Candidates** ([`refusal_candidates`]): for every layer `l`, `mean(harmful) - mean(harmless)` of
//!    `resid_pre(l)` over the chat's post-instruction positions (the template tokens after the user's
//!    message), each (prompt, position) row weighted alike.
//! 2. **Selection** ([`select_refusal_direction`]) on held-out prompts, for each candidate outside the last
//!    20% of layers:
//!    - *bypass*: ablate it at every layer and position (block inputs, attention and MLP outputs) and
//!      measure the refusal score on harmful prompts — lower is better;
//!    - *induce*: add it ([`RefusalConfig::induce_alpha`], Arditi: 1) at `resid_pre(l)` at every position
//!      of harmless prompts — the refusal score must pass [`RefusalConfig::induce`];
//!    - *KL*: ablating it must move harmless prompts' next-token distributions by mean KL <=
//!      [`RefusalConfig::max_kl`].
//!
//!    The chosen layer has the lowest bypass score among candidates passing both filters.
//!
//! The refusal score of a prompt is `log p - log(1 - p)`, `p` the next-token probability mass of the
//! refusal tokens (first tokens of refusal phrases: "I", "As", ...), averaged over prompts.

use rosetta_model_hooks::{Batch, HookPoint, Hooks, Model, PaddingSide, Tokenizer};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Result, SteeringError};
use crate::intervene::{ablate_direction, AblationScope};
use crate::methods::{contrast_acts, mean_difference_entries, Contrast};
use crate::positions::{encode_all, PositionRule, Prompt};
use crate::vector::{Method, ModelIdentity, Provenance, SteeringVector};

/// The first tokens of `phrases` as an answer would start with them (no leading space), deduplicated.
pub fn first_token_ids(tokenizer: &Tokenizer, phrases: &[&str]) -> Result<Vec<i64>> {
    let mut ids = Vec::new();
    for p in phrases {
        let enc = tokenizer.encode(p, false)?;
        let first = *enc
            .ids
            .first()
            .ok_or_else(|| SteeringError::invalid(format!("phrase {p:?} encodes to no token")))?;
        if !ids.contains(&first) {
            ids.push(first);
        }
    }
    Ok(ids)
}

/// Phrases whose first tokens count as refusing when the default refusal tokens are used ("I'm sorry",
/// "I cannot", "As an AI", ...: their first tokens are "I" and "As").
pub const REFUSAL_STARTS: [&str; 4] = ["I", "As", "Sorry", "I'm"];

/// Settings of [`select_refusal_direction`].
#[derive(Debug, Clone)]
pub struct RefusalConfig {
    /// Token ids whose next-token probability is the refusal mass ([`first_token_ids`]).
    pub refusal_tokens: Vec<i64>,
    /// Candidates in the last `skip_last_fraction` of layers are not considered (Arditi: 0.2).
    pub skip_last_fraction: f64,
    /// Largest mean KL the ablation may cause on harmless prompts (Arditi: 0.1).
    pub max_kl: f64,
    /// What adding a candidate must achieve on harmless prompts (Arditi: score above 0).
    pub induce: InduceThreshold,
    /// Coefficient of the candidate when it is added for the induce test (Arditi: 1, the raw difference
    /// of means).
    pub induce_alpha: f64,
    /// Only evaluate these layers (all allowed layers when `None`), e.g. to keep a test short.
    pub layers: Option<Vec<usize>>,
    /// Prompts per forward pass.
    pub batch_size: usize,
}

impl RefusalConfig {
    /// Arditi's settings with refusal tokens from [`REFUSAL_STARTS`].
    pub fn new(tokenizer: &Tokenizer) -> Result<Self> {
        Ok(Self {
            refusal_tokens: first_token_ids(tokenizer, &REFUSAL_STARTS)?,
            skip_last_fraction: 0.2,
            max_kl: 0.1,
            induce: InduceThreshold::Score(0.0),
            induce_alpha: 1.0,
            layers: None,
            batch_size: 16,
        })
    }
}

/// The induce filter of [`select_refusal_direction`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InduceThreshold {
    /// The induced mean refusal score must exceed this value (Arditi: 0, refusal tokens more likely than
    /// not).
    Score(f64),
    /// The induced score must exceed the harmless prompts' own score by this much. For small models
    /// whose harmful prompts themselves score below 0 (Qwen2.5-Coder-0.5B: about -0.5), an absolute
    /// threshold of 0 rejects every layer.
    RiseOverHarmless(f64),
}

impl InduceThreshold {
    fn passes(self, induced: f64, harmless_baseline: f64) -> bool {
        match self {
            InduceThreshold::Score(t) => induced > t,
            InduceThreshold::RiseOverHarmless(r) => induced - harmless_baseline > r,
        }
    }
}

impl std::fmt::Display for InduceThreshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InduceThreshold::Score(t) => write!(f, "induced score > {t}"),
            InduceThreshold::RiseOverHarmless(r) => write!(f, "induced score > harmless + {r}"),
        }
    }
}

/// One layer's candidate, measured on held-out prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefusalCandidate {
    /// The layer (`resid_pre(layer)`).
    pub layer: usize,
    /// Norm of the candidate direction.
    pub norm: f64,
    /// Mean activation norm at its positions (the vector's scale).
    pub scale: f64,
    /// Mean refusal score on held-out harmful prompts with the direction ablated everywhere.
    pub bypass_score: f64,
    /// Mean refusal score on held-out harmless prompts with the direction added at its layer.
    pub induce_score: f64,
    /// Mean KL(plain || ablated) of harmless next-token distributions.
    pub kl: f64,
    /// Whether it passed both filters.
    pub passes: bool,
}

/// The outcome of [`select_refusal_direction`].
#[derive(Debug, Clone)]
pub struct RefusalSelection {
    /// The chosen direction, one entry at `resid_pre(layer)`, [`Method::RefusalDirection`].
    pub vector: SteeringVector,
    /// The chosen layer.
    pub layer: usize,
    /// Mean refusal score of held-out harmful prompts without intervention.
    pub baseline_harmful: f64,
    /// Mean refusal score of held-out harmless prompts without intervention.
    pub baseline_harmless: f64,
    /// Every evaluated candidate, by layer.
    pub table: Vec<RefusalCandidate>,
}

impl RefusalSelection {
    /// The per-layer table in Markdown (the chosen layer marked).
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "baseline refusal score: harmful {:.3}, harmless {:.3}\n\n| layer | norm | activation norm | bypass (harmful, ablated) | induce (harmless, added) | KL (harmless, ablated) | passes |\n|---|---|---|---|---|---|---|\n",
            self.baseline_harmful, self.baseline_harmless
        );
        for c in &self.table {
            s.push_str(&format!(
                "| {}{} | {:.2} | {:.1} | {:.3} | {:.3} | {:.4} | {} |\n",
                c.layer,
                if c.layer == self.layer { " ◀" } else { "" },
                c.norm,
                c.scale,
                c.bypass_score,
                c.induce_score,
                c.kl,
                if c.passes { "yes" } else { "no" }
            ));
        }
        s
    }
}

/// Step 1: one candidate per layer, entries at `resid_pre(l)` for every layer (post-instruction
/// positions; `contrast.positive` are the harmful prompts, chats).
pub fn refusal_candidates(
    model: &Model,
    tokenizer: &Tokenizer,
    contrast: &Contrast,
    batch_size: usize,
) -> Result<SteeringVector> {
    let points: Vec<HookPoint> = (0..model.num_layers()).map(HookPoint::ResidPre).collect();
    let rule = PositionRule::PostInstruction;
    let (pos, neg) = contrast_acts(model, tokenizer, contrast, &rule, &points, batch_size)?;
    let entries = mean_difference_entries(&pos, &neg)?;
    SteeringVector::new(
        ModelIdentity::of(model)?,
        Method::DiffOfMeans,
        Provenance {
            positive_prompts: contrast.positive.len(),
            negative_prompts: contrast.negative.len(),
            rows: pos[0].prompt_of.len() + neg[0].prompt_of.len(),
            positions: Some(rule),
            data: contrast.data.clone(),
        },
        entries,
    )
}

/// Next-token log-probabilities `[n, vocab]` (f64) of `prompts` under `hooks`.
pub fn next_token_logprobs(
    model: &Model,
    tokenizer: &Tokenizer,
    prompts: &[Prompt],
    hooks: &Hooks,
    batch_size: usize,
) -> Result<Tensor> {
    let enc = encode_all(tokenizer, prompts)?;
    let mut parts = Vec::new();
    for chunk in enc.chunks(batch_size.max(1)) {
        let seqs: Vec<Vec<i64>> = chunk.iter().map(|e| e.ids.clone()).collect();
        let batch = Batch::from_sequences(
            &seqs,
            tokenizer.pad_token_id(),
            PaddingSide::Left,
            model.device(),
        )?;
        let out = model.forward_last(&batch, hooks)?;
        let logits = out.last.f_select(1, 0)?.f_to_kind(Kind::Double)?;
        parts.push(
            logits
                .f_log_softmax(-1, Kind::Double)?
                .f_to_device(tch::Device::Cpu)?,
        );
    }
    Ok(Tensor::f_cat(&parts, 0)?)
}

/// Mean refusal score `log p - log(1 - p)` from next-token log-probabilities `[n, vocab]`.
pub fn refusal_score(logprobs: &Tensor, refusal_tokens: &[i64]) -> Result<f64> {
    if refusal_tokens.is_empty() {
        return Err(SteeringError::invalid("no refusal tokens given"));
    }
    let idx = Tensor::from_slice(refusal_tokens);
    let p = logprobs
        .f_index_select(1, &idx)?
        .f_exp()?
        .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Double)?
        .f_clamp(1e-12, 1.0 - 1e-12)?;
    let score = p.f_log()?.f_sub(&p.f_neg()?.f_add_scalar(1.0)?.f_log()?)?;
    Ok(score.f_mean(Kind::Double)?.double_value(&[]))
}

/// Mean `KL(P || Q)` over rows of two log-probability tensors `[n, vocab]`.
pub fn mean_kl(p_log: &Tensor, q_log: &Tensor) -> Result<f64> {
    let kl = p_log
        .f_exp()?
        .f_mul(&p_log.f_sub(q_log)?)?
        .f_nan_to_num(0.0, None, None)?
        .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Double)?;
    Ok(kl.f_mean(Kind::Double)?.double_value(&[]))
}

/// Step 2: measure every allowed candidate on held-out prompts and choose a layer (see the module doc).
/// Errors when no candidate passes both filters, with the table in the message.
pub fn select_refusal_direction(
    model: &Model,
    tokenizer: &Tokenizer,
    candidates: &SteeringVector,
    held_out: &Contrast,
    config: &RefusalConfig,
) -> Result<RefusalSelection> {
    candidates.expect_model(&ModelIdentity::of(model)?)?;
    if held_out.positive.is_empty() || held_out.negative.is_empty() {
        return Err(SteeringError::invalid(
            "choosing the refusal layer needs held-out harmful and harmless prompts",
        ));
    }
    let n = model.num_layers();
    let limit = ((1.0 - config.skip_last_fraction) * n as f64).floor() as usize;
    let allowed: Vec<usize> = match &config.layers {
        Some(ls) => ls.iter().copied().filter(|&l| l < limit).collect(),
        None => (0..limit).collect(),
    };
    if allowed.is_empty() {
        return Err(SteeringError::invalid(format!(
            "no candidate layer left to evaluate (layers below {limit} of {n})"
        )));
    }
    let bs = config.batch_size;
    let plain = Hooks::new();
    let harmful_plain = next_token_logprobs(model, tokenizer, &held_out.positive, &plain, bs)?;
    let harmless_plain = next_token_logprobs(model, tokenizer, &held_out.negative, &plain, bs)?;
    let baseline_harmful = refusal_score(&harmful_plain, &config.refusal_tokens)?;
    let baseline_harmless = refusal_score(&harmless_plain, &config.refusal_tokens)?;
    let mut table = Vec::new();
    for l in allowed {
        let e = candidates.entry(HookPoint::ResidPre(l)).ok_or_else(|| {
            SteeringError::invalid(format!("the candidates have no entry at resid_pre.{l}"))
        })?;
        if e.norm() == 0.0 {
            continue;
        }
        let mut ablate = Hooks::new();
        ablate_direction(
            &mut ablate,
            &e.direction,
            AblationScope::EveryLayer { num_layers: n },
        )?;
        let bypass = next_token_logprobs(model, tokenizer, &held_out.positive, &ablate, bs)?;
        let harmless_ablated =
            next_token_logprobs(model, tokenizer, &held_out.negative, &ablate, bs)?;
        let mut add = Hooks::new();
        add.add(
            e.point,
            &e.direction,
            config.induce_alpha,
            rosetta_model_hooks::Positions::All,
        );
        let induced = next_token_logprobs(model, tokenizer, &held_out.negative, &add, bs)?;
        let bypass_score = refusal_score(&bypass, &config.refusal_tokens)?;
        let induce_score = refusal_score(&induced, &config.refusal_tokens)?;
        let kl = mean_kl(&harmless_plain, &harmless_ablated)?;
        table.push(RefusalCandidate {
            layer: l,
            norm: e.norm(),
            scale: e.scale,
            bypass_score,
            induce_score,
            kl,
            passes: config.induce.passes(induce_score, baseline_harmless) && kl <= config.max_kl,
        });
    }
    let best = table
        .iter()
        .filter(|c| c.passes)
        .min_by(|a, b| a.bypass_score.total_cmp(&b.bypass_score))
        .map(|c| c.layer);
    let mut selection = RefusalSelection {
        vector: candidates.clone(),
        layer: best.unwrap_or(usize::MAX),
        baseline_harmful,
        baseline_harmless,
        table,
    };
    let Some(layer) = best else {
        return Err(SteeringError::invalid(format!(
            "no refusal-direction candidate passes the filters ({}, KL <= {}):\n{}",
            config.induce,
            config.max_kl,
            selection.to_markdown()
        )));
    };
    let mut vector = candidates.at(HookPoint::ResidPre(layer))?;
    vector.method = Method::RefusalDirection { layer };
    vector.extra = serde_json::json!({ "refusal_selection": selection.table });
    selection.vector = vector;
    Ok(selection)
}
