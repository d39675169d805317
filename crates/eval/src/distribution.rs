//! Distribution metrics on next-token logits (`tch::Tensor`s, any device and floating kind): per-row
//! KL divergence between two runs, per-token negative log-likelihood and perplexity — and the paper's win
//! rates over per-sample scores (MvA: mapped vs mean-ablated; TvS: closer to the target than to the source).
//!
//! All tensor arithmetic is done in f64 (inputs are cast first), so results do not depend on the dtype the
//! model ran in beyond the logits themselves.

use tch::{Device, Kind, Tensor};

use crate::error::{EvalError, Result};

fn check_logits(t: &Tensor, what: &str) -> Result<(i64, i64)> {
    let size = t.size();
    if size.len() != 2 {
        return Err(EvalError::Shape(format!(
            "{what}: expected logits [rows, vocab], got {size:?}"
        )));
    }
    if !t.f_is_floating_point()? {
        return Err(EvalError::Shape(format!(
            "{what}: expected floating-point logits, got {:?}",
            t.kind()
        )));
    }
    if size[1] == 0 {
        return Err(EvalError::Shape(format!("{what}: empty vocabulary")));
    }
    Ok((size[0], size[1]))
}

/// Log-softmax over the last dimension in f64, refusing rows it cannot normalise: a row with no finite
/// logit (all `-inf`), a `+inf` or a NaN yields NaN log-probabilities.
fn log_probs(logits: &Tensor, what: &str) -> Result<Tensor> {
    let logp = logits
        .f_to_kind(Kind::Double)?
        .f_log_softmax(-1, Kind::Double)?;
    let bad = logp.f_isnan()?.f_any_dim(-1, false)?;
    if bad.f_any()?.f_int64_value(&[])? != 0 {
        let row = bad
            .f_to_kind(Kind::Int64)?
            .f_argmax(0, false)?
            .f_int64_value(&[])?;
        return Err(EvalError::Invalid(format!(
            "{what}: row {row} has no finite logit, or a +inf or NaN one"
        )));
    }
    Ok(logp)
}

fn to_vec(t: &Tensor) -> Result<Vec<f64>> {
    let t = t
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Double)?
        .f_contiguous()?;
    Ok(Vec::<f64>::try_from(&t)?)
}

/// `KL(P || Q)` per row, in nats, between the next-token distributions `P = softmax(p_logits)` and
/// `Q = softmax(q_logits)`: `KL_i = Σ_v P_iv (log P_iv − log Q_iv)`.
///
/// Computed from log-softmax in f64. Tokens with `P_iv = 0` (e.g. a `-inf` logit, as a vocabulary mask
/// leaves) contribute 0 whatever `Q_iv` is; a token with `P_iv > 0` and `Q_iv = 0` makes the row `+inf`.
/// Rows are clamped at 0 against rounding (KL is non-negative).
///
/// # Shapes
/// `p_logits`, `q_logits`: `[N, V]` (same shape, same device); returns `N` values.
///
/// # Errors
/// [`EvalError::Shape`] for other ranks, different shapes, non-float tensors or `V = 0`;
/// [`EvalError::Invalid`] for a row that cannot be normalised (all `-inf`, or a `+inf`/NaN logit).
pub fn kl_per_row(p_logits: &Tensor, q_logits: &Tensor) -> Result<Vec<f64>> {
    let p_shape = check_logits(p_logits, "kl_per_row P")?;
    let q_shape = check_logits(q_logits, "kl_per_row Q")?;
    if p_shape != q_shape {
        return Err(EvalError::Shape(format!(
            "kl_per_row: P logits {:?} vs Q logits {:?}",
            p_logits.size(),
            q_logits.size()
        )));
    }
    if p_shape.0 == 0 {
        return Ok(Vec::new());
    }
    let logp = log_probs(p_logits, "kl_per_row P")?;
    let logq = log_probs(q_logits, "kl_per_row Q")?;
    let p = logp.f_exp()?;
    // Where P = 0, log P - log Q may be NaN (-inf - -inf) or -inf: the term is 0 by definition.
    let terms = p
        .f_mul(&logp.f_sub(&logq)?)?
        .f_where_scalarother(&p.f_gt(0.0)?, 0.0)?;
    let kl = terms
        .f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Double)?
        .f_clamp_min(0.0)?;
    to_vec(&kl)
}

/// Negative log-likelihood, in nats, of each next token: `nll_t = −log softmax(logits[t])[ids[t + 1]]` for
/// `t = 0 .. T−2`.
///
/// Convention: `logits[t]` is the model's output at position `t` of the input `ids` (what a causal LM returns
/// for `ids`), so it predicts `ids[t + 1]`; the first token is never scored and the last position's logits
/// are not used. Returns `T − 1` values.
///
/// # Shapes
/// `logits`: `[T, V]`; `ids`: `[T]`, integer, same device.
///
/// # Errors
/// [`EvalError::Shape`] for other shapes or kinds, [`EvalError::Empty`] for `T < 2`,
/// [`EvalError::Invalid`] for an id outside `0..V` or logits that cannot be normalised.
pub fn nll_per_token(logits: &Tensor, ids: &Tensor) -> Result<Vec<f64>> {
    let (t, v) = check_logits(logits, "perplexity logits")?;
    let id_size = ids.size();
    if id_size != [t] {
        return Err(EvalError::Shape(format!(
            "perplexity: ids {id_size:?} do not match logits {:?} (expected [{t}])",
            logits.size()
        )));
    }
    if ids.f_is_floating_point()? || ids.kind() == Kind::Bool {
        return Err(EvalError::Shape(format!(
            "perplexity: ids must be integers, got {:?}",
            ids.kind()
        )));
    }
    if t < 2 {
        return Err(EvalError::Empty(
            "perplexity (needs at least two tokens: the first is never predicted)",
        ));
    }
    let targets = ids.f_to_kind(Kind::Int64)?.f_narrow(0, 1, t - 1)?;
    let (lo, hi) = (
        targets.f_min()?.f_int64_value(&[])?,
        targets.f_max()?.f_int64_value(&[])?,
    );
    if lo < 0 || hi >= v {
        return Err(EvalError::Invalid(format!(
            "perplexity: token ids span {lo}..={hi}, outside the vocabulary 0..{v}"
        )));
    }
    let logp = log_probs(&logits.f_narrow(0, 0, t - 1)?, "perplexity logits")?;
    let nll = logp
        .f_gather(1, &targets.f_unsqueeze(1)?, false)?
        .f_squeeze_dim(1)?
        .f_neg()?;
    to_vec(&nll)
}

/// Perplexity `exp(mean_t nll_t)` of `ids` under `logits`, with [`nll_per_token`]'s convention (position `t`
/// predicts token `t + 1`; `T − 1` predictions). A uniform distribution over `V` tokens has perplexity `V`.
///
/// # Shapes
/// `logits`: `[T, V]`; `ids`: `[T]`.
///
/// # Errors
/// As [`nll_per_token`].
pub fn perplexity(logits: &Tensor, ids: &Tensor) -> Result<f64> {
    let nll = nll_per_token(logits, ids)?;
    let mean = nll.iter().sum::<f64>() / nll.len() as f64;
    Ok(mean.exp())
}

/// Outcome counts of pairwise comparisons, per sample: the first score beats, ties or loses to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WinRate {
    /// Samples where the first score is strictly greater.
    pub wins: usize,
    /// Samples where the scores are equal.
    pub ties: usize,
    /// Samples where the first score is strictly smaller.
    pub losses: usize,
}

impl WinRate {
    /// Number of samples compared.
    pub fn total(&self) -> usize {
        self.wins + self.ties + self.losses
    }

    /// `(wins + ties / 2) / total`: ties count half a win. 0 for no samples (the crate's functions never
    /// return an empty `WinRate`).
    pub fn rate(&self) -> f64 {
        let n = self.total();
        if n == 0 {
            return 0.0;
        }
        (self.wins as f64 + 0.5 * self.ties as f64) / n as f64
    }
}

/// Compare `first[i]` with `second[i]` for every sample.
///
/// # Errors
/// [`EvalError::LengthMismatch`], [`EvalError::Empty`], or [`EvalError::Invalid`] for a NaN score.
pub fn win_rate(first: &[f64], second: &[f64]) -> Result<WinRate> {
    if first.len() != second.len() {
        return Err(EvalError::LengthMismatch {
            what: "win_rate scores",
            left: first.len(),
            right: second.len(),
        });
    }
    if first.is_empty() {
        return Err(EvalError::Empty("win_rate"));
    }
    let mut out = WinRate::default();
    for (i, (&a, &b)) in first.iter().zip(second).enumerate() {
        match a.partial_cmp(&b) {
            Some(std::cmp::Ordering::Greater) => out.wins += 1,
            Some(std::cmp::Ordering::Equal) => out.ties += 1,
            Some(std::cmp::Ordering::Less) => out.losses += 1,
            None => {
                return Err(EvalError::Invalid(format!(
                    "win_rate: sample {i} has a NaN score ({a} vs {b})"
                )))
            }
        }
    }
    Ok(out)
}

/// The paper's MvA win rate: per sample, does the completion generated with the **mapped** intervention
/// score higher (e.g. an LLM judge's score of the steered behaviour) than the completion with the target's
/// activations **mean-ablated** at the same point? `rate()` is the share of wins, ties counting half.
///
/// # Errors
/// As [`win_rate`].
pub fn mva_win_rate(mapped_scores: &[f64], ablated_scores: &[f64]) -> Result<WinRate> {
    win_rate(mapped_scores, ablated_scores)
}

/// The paper's TvS win rate: per sample, is the mapped completion **closer to the target model's** own
/// steered completion than to the **source model's**? Takes similarities (higher = closer, e.g. ROUGE-L F
/// from [`crate::text::rouge`]) of the mapped completion to each; `rate()` is the share of samples closer to
/// the target, equal similarities counting half.
///
/// # Errors
/// As [`win_rate`].
pub fn tvs_win_rate(similarity_to_target: &[f64], similarity_to_source: &[f64]) -> Result<WinRate> {
    win_rate(similarity_to_target, similarity_to_source)
}
