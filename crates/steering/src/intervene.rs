//! Interventions in a model, all expressed as [`Hooks`] so they work alike in `Model::forward` and
//! `Model::generate` (hooks see absolute positions, also under the KV cache):
//!
//! - [`add_vector`]: `x += alpha * v` at all / prompt / generated positions, or at trigger spans
//!   ([`Where::Trigger`], per-position `[k, d]` vectors applied token by token);
//! - [`ablate_direction`]: directional ablation `x -= (x · v̂) v̂` at one point or, as Arditi et al., at every
//!   block's input and its attention and MLP outputs ([`AblationScope::EveryLayer`]);
//! - [`capture_by_position`] + [`patch_from`]: activation patching from a contrast run;
//! - [`mean_activation`] + `Hooks::set`: the mean-ablation baseline;
//! - [`SafetySwitch`]: a map plugged into one layer, switched on and off at run time;
//! - [`Conditional`]: IBM's CAST idea — steer only the rows whose prompt projects onto a condition
//!   direction above a threshold, row by row in a batch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rosetta_mapping::{AnyMap, Mapping};
use rosetta_model_hooks::{
    Batch, CaptureOptions, HookContext, HookError, HookPoint, Hooks, Model, Positions, Tokenizer,
};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, SteeringError};
use crate::methods::activations_at;
use crate::positions::{EncodedPrompt, PositionRule, Prompt};
use crate::vector::{SteeringVector, VectorEntry};

/// How strongly to add a vector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Strength {
    /// `alpha * direction`, the stored vector as it is.
    Raw(f64),
    /// `alpha * scale * unit(direction)`: alpha in units of the mean activation norm where the vector was
    /// computed ([`VectorEntry::scale`]), which means the same push in any model.
    Relative(f64),
}

impl Strength {
    /// The multiplier for `entry.direction`.
    pub fn factor(self, entry: &VectorEntry) -> Result<f64> {
        match self {
            Strength::Raw(a) => Ok(a),
            Strength::Relative(a) => {
                let n = entry.norm();
                if n == 0.0 || !n.is_finite() {
                    return Err(SteeringError::invalid(format!(
                        "the direction at {} has zero or non-finite norm",
                        entry.point
                    )));
                }
                Ok(a * entry.scale / n)
            }
        }
    }
}

/// Where an added vector applies.
#[derive(Debug, Clone, PartialEq)]
pub enum Where {
    /// Every real token.
    All,
    /// The prompt's tokens.
    Prompt,
    /// Generated tokens only.
    Generated,
    /// For each row of the batch, the absolute positions of its trigger tokens (see [`trigger_spans`]).
    /// A `[d]` vector is added at each; a `[k, d]` vector's row `j` at the row's `j`-th trigger token.
    Trigger(Vec<Vec<i64>>),
}

/// The absolute positions of the first occurrence of `trigger` in each prompt.
pub fn trigger_spans(prompts: &[EncodedPrompt], trigger: &str) -> Result<Vec<Vec<i64>>> {
    prompts
        .iter()
        .map(|p| {
            Ok(p.matching(trigger)?
                .remove(0)
                .into_iter()
                .map(|i| i as i64)
                .collect())
        })
        .collect()
}

fn hook_err(point: HookPoint, e: impl std::fmt::Display) -> HookError {
    HookError::Hook {
        point: point.to_string(),
        message: e.to_string(),
    }
}

/// Add every entry of `vector` at its hook point.
pub fn add_vector(
    hooks: &mut Hooks,
    vector: &SteeringVector,
    strength: Strength,
    at: &Where,
) -> Result<()> {
    for e in &vector.entries {
        let alpha = strength.factor(e)?;
        match (at, e.per_position()) {
            (Where::All, false) => {
                hooks.add(e.point, &e.direction, alpha, Positions::All);
            }
            (Where::Prompt, false) => {
                hooks.add(e.point, &e.direction, alpha, Positions::Prompt);
            }
            (Where::Generated, false) => {
                hooks.add(e.point, &e.direction, alpha, Positions::Generated);
            }
            (Where::Trigger(spans), false) => {
                let pairs = spans
                    .iter()
                    .enumerate()
                    .flat_map(|(r, ps)| ps.iter().map(move |&p| (r, p)))
                    .collect();
                hooks.add(e.point, &e.direction, alpha, Positions::RowsAt(pairs));
            }
            (Where::Trigger(spans), true) => add_per_position(hooks, e, alpha, spans.clone())?,
            (_, true) => {
                return Err(SteeringError::invalid(format!(
                "the vector at {} has one row per trigger token ({:?}); apply it at trigger spans",
                e.point,
                e.direction.size()
            )))
            }
        }
    }
    Ok(())
}

fn add_per_position(
    hooks: &mut Hooks,
    e: &VectorEntry,
    alpha: f64,
    spans: Vec<Vec<i64>>,
) -> Result<()> {
    let k = e.direction.size()[0];
    if let Some((r, s)) = spans.iter().enumerate().find(|(_, s)| s.len() as i64 != k) {
        return Err(SteeringError::invalid(format!(
            "row {r}'s trigger covers {} tokens but the vector at {} has {k} rows",
            s.len(),
            e.point
        )));
    }
    let point = e.point;
    let dir = Mutex::new(e.direction.f_mul_scalar(alpha)?);
    hooks.func(point, move |ctx: &HookContext<'_>, x: Tensor| {
        let dir = dir.lock().map_err(|e| hook_err(point, e))?;
        let (b, t, d) = (x.size()[0], x.size()[1], x.size()[2]);
        if spans.len() as i64 != b {
            return Err(hook_err(
                point,
                format!("{} trigger spans for a batch of {b} rows", spans.len()),
            ));
        }
        // delta[b, t] = dir[j] where the token at (b, t) is the row's j-th trigger token.
        let pos: Vec<i64> = Vec::<i64>::try_from(ctx.position_ids.f_flatten(0, 1)?)
            .map_err(|e| hook_err(point, e))?;
        let valid: Vec<bool> =
            Vec::<bool>::try_from(ctx.valid.f_flatten(0, 1)?).map_err(|e| hook_err(point, e))?;
        let mut rows = Vec::new();
        let mut which = Vec::new();
        for (r, span) in spans.iter().enumerate() {
            for c in 0..t as usize {
                let i = r * t as usize + c;
                if !valid[i] {
                    continue;
                }
                if let Some(j) = span.iter().position(|&p| p == pos[i]) {
                    rows.push(i as i64);
                    which.push(j as i64);
                }
            }
        }
        if rows.is_empty() {
            return Ok(x);
        }
        let dev = x.device();
        let rows = Tensor::from_slice(&rows).f_to_device(dev)?;
        let add = dir
            .f_to_device(dev)?
            .f_index_select(0, &Tensor::from_slice(&which).f_to_device(dev)?)?
            .f_to_kind(x.kind())?;
        let flat = x.f_reshape([b * t, d])?.f_index_add(0, &rows, &add)?;
        Ok(flat.f_view([b, t, d])?)
    });
    Ok(())
}

/// Where a direction is ablated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AblationScope {
    /// At one hook point.
    At(HookPoint),
    /// At every block's input and its attention and MLP outputs (`resid_pre`, `attn_out`, `mlp_out` of
    /// every layer), so no block reads or writes the direction (Arditi et al.).
    EveryLayer {
        /// The model's number of blocks.
        num_layers: usize,
    },
}

/// Project `direction` (`[d]`) out at `scope`, at every real token (prompt and generated).
pub fn ablate_direction(hooks: &mut Hooks, direction: &Tensor, scope: AblationScope) -> Result<()> {
    if direction.dim() != 1 {
        return Err(SteeringError::invalid(format!(
            "an ablation direction must be [d], got {:?}",
            direction.size()
        )));
    }
    match scope {
        AblationScope::At(p) => {
            hooks.ablate(p, direction, Positions::All);
        }
        AblationScope::EveryLayer { num_layers } => {
            for l in 0..num_layers {
                for p in [
                    HookPoint::ResidPre(l),
                    HookPoint::AttnOut(l),
                    HookPoint::MlpOut(l),
                ] {
                    hooks.ablate(p, direction, Positions::All);
                }
            }
        }
    }
    Ok(())
}

/// Run `model` on `batch` and return its activations at `points`, each `[B, T_max, d]` indexed by
/// **absolute** position (row `b`, position `p`), whatever the batch's padding side — the layout
/// [`rosetta_model_hooks::HookOp::Patch`] expects. Positions past a row's length hold zeros.
pub fn capture_by_position(
    model: &Model,
    batch: &Batch,
    points: &[HookPoint],
) -> Result<Vec<(HookPoint, Tensor)>> {
    let mut hooks = Hooks::new();
    for &p in points {
        hooks.capture_with(p, CaptureOptions::default());
    }
    let out = model.forward(batch, &hooks)?;
    let (b, t) = (batch.size(), batch.seq_len());
    let max_len = batch.lengths.iter().copied().max().unwrap_or(0) as i64;
    points
        .iter()
        .map(|&p| {
            let x = out
                .captured(p)
                .ok_or_else(|| SteeringError::invalid(format!("nothing captured at {p}")))?;
            let d = x.size()[2];
            // Scatter every real token (b, column) to (b, position).
            let idx = batch
                .position_ids
                .f_to_device(x.device())?
                .f_where_scalarother(&batch.valid.f_to_device(x.device())?, max_len)?;
            let wide = Tensor::f_zeros([b, max_len + 1, d], (x.kind(), x.device()))?;
            let wide = wide.f_scatter(1, &idx.f_unsqueeze(-1)?.f_expand([b, t, d], false)?, x)?;
            Ok((p, wide.f_narrow(1, 0, max_len)?))
        })
        .collect()
}

/// Patch every captured point into `hooks` at `positions` (activations from [`capture_by_position`]).
pub fn patch_from(hooks: &mut Hooks, captured: &[(HookPoint, Tensor)], positions: Positions) {
    for (p, src) in captured {
        hooks.patch(*p, src, positions.clone());
    }
}

/// Mean activation `[d]` at `point` over every selected position of `prompts` (the mean-ablation value).
pub fn mean_activation(
    model: &Model,
    tokenizer: &Tokenizer,
    prompts: &[Prompt],
    rule: &PositionRule,
    point: HookPoint,
    batch_size: usize,
) -> Result<Tensor> {
    let acts = activations_at(model, tokenizer, prompts, rule, &[point], batch_size)?;
    acts[0].mean()
}

/// A map plugged into one layer of a model (e.g. fine-tuned -> base activations of the same
/// architecture), on or off at run time without reloading anything. Off, the hook returns its input
/// untouched (outputs are bit-equal to the plain model's).
#[derive(Clone)]
pub struct SafetySwitch {
    point: HookPoint,
    map: Arc<Mutex<AnyMap>>,
    on: Arc<AtomicBool>,
}

impl std::fmt::Debug for SafetySwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SafetySwitch({}, on={})", self.point, self.is_on())
    }
}

impl SafetySwitch {
    /// A switch that replaces the activation at `point` by `map(activation)` while on (it starts off).
    /// The map must take and give the model's width.
    pub fn new(model: &Model, point: HookPoint, map: AnyMap) -> Result<Self> {
        let d = model.d_model();
        if map.d_src() != d || map.d_tgt() != d {
            return Err(SteeringError::invalid(format!(
                "a safety switch needs a {d} -> {d} map for this model, got {} -> {}",
                map.d_src(),
                map.d_tgt()
            )));
        }
        let map = map.to_device(model.device())?;
        Ok(Self {
            point,
            map: Arc::new(Mutex::new(map)),
            on: Arc::new(AtomicBool::new(false)),
        })
    }
    /// Turn the switch on or off (takes effect at the next forward pass or decoding step).
    pub fn set(&self, on: bool) {
        self.on.store(on, Ordering::SeqCst);
    }
    /// Whether it is on.
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::SeqCst)
    }
    /// Install the switch's hook (keep the `Hooks` and flip the switch between calls).
    pub fn install(&self, hooks: &mut Hooks) {
        let (point, map, on) = (self.point, self.map.clone(), self.on.clone());
        hooks.func(point, move |ctx: &HookContext<'_>, x: Tensor| {
            if !on.load(Ordering::SeqCst) {
                return Ok(x);
            }
            let map = map.lock().map_err(|e| hook_err(point, e))?;
            let y = map_rows(&map, &x).map_err(|e| hook_err(point, e))?;
            Ok(y.f_where_self(&ctx.valid.f_unsqueeze(-1)?, &x)?)
        });
    }
}

/// `map` applied to every row of `x` `[B, T, d]` (f32 inside), back in `x`'s dtype.
pub(crate) fn map_rows(map: &AnyMap, x: &Tensor) -> Result<Tensor> {
    let s = x.size();
    let flat = x.f_reshape([-1, s[2]])?.f_to_kind(Kind::Float)?;
    let y = map.forward(&flat)?;
    Ok(y.f_view([s[0], s[1], -1])?.f_to_kind(x.kind())?)
}

/// Conditional steering (IBM's CAST): add `alpha * v` only to rows whose prompt, read at a condition
/// point, points along a condition direction: `cos(mean over the row's prompt tokens of h, c) > threshold`.
/// Decided per row at the prefill and kept for that row's generated tokens.
#[derive(Debug)]
pub struct Conditional {
    /// Where the condition is read.
    pub condition_point: HookPoint,
    /// The condition direction `[d]`.
    pub condition: Tensor,
    /// Rows scoring above this are steered (choose it with [`choose_threshold`]).
    pub threshold: f64,
    /// What is added when the condition holds.
    pub vector: SteeringVector,
    /// How strongly.
    pub strength: Strength,
}

/// Which rows a [`Conditional`] steered in the last forward pass or generation.
#[derive(Debug, Clone, Default)]
pub struct ConditionFlags(Arc<Mutex<Option<Vec<bool>>>>);

impl ConditionFlags {
    /// Per row, whether it was steered (`None` before any run).
    pub fn get(&self) -> Option<Vec<bool>> {
        self.0.lock().ok().and_then(|g| g.clone())
    }
}

/// Per prompt, `cos(mean over the prompt's tokens of h at point, c)` — the score [`Conditional`] compares
/// with its threshold.
pub fn condition_scores(
    model: &Model,
    tokenizer: &Tokenizer,
    prompts: &[Prompt],
    point: HookPoint,
    condition: &Tensor,
    batch_size: usize,
) -> Result<Vec<f64>> {
    let acts = activations_at(
        model,
        tokenizer,
        prompts,
        &PositionRule::All,
        &[point],
        batch_size,
    )?;
    let means = acts[0].per_prompt_mean(prompts.len())?;
    let c = condition.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?;
    let cos = Tensor::f_cosine_similarity(&means, &c.f_unsqueeze(0)?, 1, 1e-12)?;
    Vec::<f64>::try_from(cos.f_to_kind(Kind::Double)?)
        .map_err(|e| SteeringError::invalid(e.to_string()))
}

/// The threshold that best separates `positive` from `negative` scores (highest balanced accuracy; a
/// midpoint between neighbouring scores), with that accuracy.
pub fn choose_threshold(positive: &[f64], negative: &[f64]) -> Result<(f64, f64)> {
    if positive.is_empty() || negative.is_empty() {
        return Err(SteeringError::invalid(
            "choosing a threshold needs scores on both sides",
        ));
    }
    let mut all: Vec<f64> = positive.iter().chain(negative).copied().collect();
    if all.iter().any(|s| !s.is_finite()) {
        return Err(SteeringError::invalid("a condition score is not finite"));
    }
    all.sort_by(f64::total_cmp);
    let mut candidates = vec![all[0] - 1.0];
    candidates.extend(all.windows(2).map(|w| (w[0] + w[1]) / 2.0));
    let mut best = (candidates[0], -1.0);
    for t in candidates {
        let tp = positive.iter().filter(|&&s| s > t).count() as f64 / positive.len() as f64;
        let tn = negative.iter().filter(|&&s| s <= t).count() as f64 / negative.len() as f64;
        let acc = (tp + tn) / 2.0;
        if acc > best.1 {
            best = (t, acc);
        }
    }
    Ok(best)
}

impl Conditional {
    /// Install into `hooks`. The condition point must come no later than every steered point in the
    /// forward pass.
    pub fn install(&self, hooks: &mut Hooks, num_layers: usize) -> Result<ConditionFlags> {
        if self.condition.dim() != 1 {
            return Err(SteeringError::invalid("a condition direction must be [d]"));
        }
        let order = self.condition_point.order(num_layers);
        for e in &self.vector.entries {
            if e.point.order(num_layers) < order {
                return Err(SteeringError::invalid(format!(
                    "the vector at {} runs before the condition at {}",
                    e.point, self.condition_point
                )));
            }
            if e.per_position() {
                return Err(SteeringError::invalid(
                    "conditional steering adds [d] vectors, not per-position ones",
                ));
            }
        }
        let flags = ConditionFlags::default();
        let gate: Arc<Mutex<Option<Tensor>>> = Arc::new(Mutex::new(None));
        let (cp, threshold) = (self.condition_point, self.threshold);
        let c = Mutex::new(self.condition.f_to_kind(Kind::Float)?);
        let (g, f) = (gate.clone(), flags.clone());
        hooks.func(cp, move |ctx: &HookContext<'_>, x: Tensor| {
            if ctx.decode_step.is_some() {
                return Ok(x);
            }
            let c = c
                .lock()
                .map_err(|e| hook_err(cp, e))?
                .f_to_device(x.device())?;
            let prompt = ctx
                .position_ids
                .f_lt_tensor(&ctx.prompt_lengths.f_unsqueeze(1)?)?
                .f_logical_and(ctx.valid)?
                .f_unsqueeze(-1)?
                .f_to_kind(Kind::Float)?;
            let mean = x
                .f_to_kind(Kind::Float)?
                .f_mul(&prompt)?
                .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?
                .f_div(&prompt.f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?)?;
            let cos = Tensor::f_cosine_similarity(&mean, &c.f_unsqueeze(0)?, 1, 1e-12)?;
            let on = cos.f_gt(threshold)?;
            let list =
                Vec::<bool>::try_from(on.f_to_device(Device::Cpu)?).map_err(|e| hook_err(cp, e))?;
            *f.0.lock().map_err(|e| hook_err(cp, e))? = Some(list);
            *g.lock().map_err(|e| hook_err(cp, e))? = Some(on);
            Ok(x)
        });
        for e in &self.vector.entries {
            let point = e.point;
            let delta = Mutex::new(e.direction.f_mul_scalar(self.strength.factor(e)?)?);
            let g = gate.clone();
            hooks.func(point, move |ctx: &HookContext<'_>, x: Tensor| {
                let on = g.lock().map_err(|e| hook_err(point, e))?;
                let on = on
                    .as_ref()
                    .ok_or_else(|| hook_err(point, "the condition was not evaluated"))?;
                let delta = delta
                    .lock()
                    .map_err(|e| hook_err(point, e))?
                    .f_to_device(x.device())?
                    .f_to_kind(x.kind())?;
                let sel = ctx
                    .valid
                    .f_logical_and(&on.f_unsqueeze(1)?)?
                    .f_unsqueeze(-1)?;
                Ok(x.f_add(&delta)?.f_where_self(&sel, &x)?)
            });
        }
        Ok(flags)
    }
}
