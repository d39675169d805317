//! Hook points and the operations hooks perform on the residual stream.
//!
//! A [`Hooks`] value lists operations per [`HookPoint`]; the forward pass applies them in insertion order
//! when it reaches each point, and stops after the last point any operation names (the LM head runs only
//! when [`HookPoint::Logits`] is named). Points nobody names cost one map lookup.
//!
//! Positions are *absolute token positions* (a row's position ids: 0 for its first real token), so the same
//! hook acts the same way under left or right padding and during KV-cache decoding. Padding positions are
//! never modified.

use crate::error::{HookError, Result};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// A place in the forward pass where activations can be read or edited. TransformerLens-style names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookPoint {
    /// Token embeddings as the first block receives them (after Gemma's `sqrt(d)` scaling). `[B, T, d]`
    Embed,
    /// Input of block `l` (= `resid_post(l - 1)`, or `embed` for block 0). `[B, T, d]`
    ResidPre(usize),
    /// What the attention branch of block `l` adds to the residual stream (after the post-attention norm
    /// in Gemma 2/3). `[B, T, d]`
    AttnOut(usize),
    /// Residual stream between the attention and MLP branches of block `l`. `[B, T, d]`
    ResidMid(usize),
    /// What the MLP branch of block `l` adds (after the post-feedforward norm in Gemma 2/3). `[B, T, d]`
    MlpOut(usize),
    /// Output of block `l` (raw, before any final norm). `[B, T, d]`
    ResidPost(usize),
    /// Output of the final norm (HF's last `hidden_states` entry). `[B, T, d]`
    FinalNorm,
    /// Next-token logits (after the final softcap where a family has one). `[B, T, vocab]`
    Logits,
}

impl HookPoint {
    /// Position of this point in the forward pass (0 = `Embed`); later points have larger keys.
    pub fn order(self, num_layers: usize) -> usize {
        match self {
            HookPoint::Embed => 0,
            HookPoint::ResidPre(l) => 1 + 5 * l,
            HookPoint::AttnOut(l) => 2 + 5 * l,
            HookPoint::ResidMid(l) => 3 + 5 * l,
            HookPoint::MlpOut(l) => 4 + 5 * l,
            HookPoint::ResidPost(l) => 5 + 5 * l,
            HookPoint::FinalNorm => 1 + 5 * num_layers,
            HookPoint::Logits => 2 + 5 * num_layers,
        }
    }

    /// The block a point belongs to, if any.
    pub fn layer(self) -> Option<usize> {
        match self {
            HookPoint::ResidPre(l)
            | HookPoint::AttnOut(l)
            | HookPoint::ResidMid(l)
            | HookPoint::MlpOut(l)
            | HookPoint::ResidPost(l) => Some(l),
            _ => None,
        }
    }
}

impl fmt::Display for HookPoint {
    /// `embed`, `resid_post.12`, `logits`: the names tensors get in capture files.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookPoint::Embed => write!(f, "embed"),
            HookPoint::ResidPre(l) => write!(f, "resid_pre.{l}"),
            HookPoint::AttnOut(l) => write!(f, "attn_out.{l}"),
            HookPoint::ResidMid(l) => write!(f, "resid_mid.{l}"),
            HookPoint::MlpOut(l) => write!(f, "mlp_out.{l}"),
            HookPoint::ResidPost(l) => write!(f, "resid_post.{l}"),
            HookPoint::FinalNorm => write!(f, "final_norm"),
            HookPoint::Logits => write!(f, "logits"),
        }
    }
}

impl FromStr for HookPoint {
    type Err = HookError;

    /// Parse `embed`, `final_norm`, `logits`, or `resid_pre|attn_out|resid_mid|mlp_out|resid_post` followed
    /// by `.L` or `:L`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            HookError::Hook {
            point: s.to_string(),
            message: "expected embed, final_norm, logits, or resid_pre|attn_out|resid_mid|mlp_out|resid_post \
                      with a layer (e.g. resid_post.12)"
                .into(),
        }
        };
        match s {
            "embed" => return Ok(HookPoint::Embed),
            "final_norm" => return Ok(HookPoint::FinalNorm),
            "logits" => return Ok(HookPoint::Logits),
            _ => {}
        }
        let (name, layer) = s.split_once(['.', ':']).ok_or_else(bad)?;
        let l: usize = layer.parse().map_err(|_| bad())?;
        Ok(match name {
            "resid_pre" => HookPoint::ResidPre(l),
            "attn_out" => HookPoint::AttnOut(l),
            "resid_mid" => HookPoint::ResidMid(l),
            "mlp_out" => HookPoint::MlpOut(l),
            "resid_post" => HookPoint::ResidPost(l),
            _ => return Err(bad()),
        })
    }
}

/// Which token positions an operation touches. Padding is always excluded.
#[derive(Debug, Clone, PartialEq)]
pub enum Positions {
    /// Every real token.
    All,
    /// Tokens of the prompt (positions before the row's prompt length).
    Prompt,
    /// Tokens produced by generation (positions at or after the row's prompt length).
    Generated,
    /// These absolute positions, in every row.
    At(Vec<i64>),
    /// `(row, absolute position)` pairs.
    RowsAt(Vec<(usize, i64)>),
}

/// What the forward pass knows about the tokens at a hook point.
pub struct HookContext<'a> {
    /// The hook point being run.
    pub point: HookPoint,
    /// Absolute position of each token, `[B, T]` i64.
    pub position_ids: &'a Tensor,
    /// False on padding, `[B, T]` bool.
    pub valid: &'a Tensor,
    /// Prompt length of each row, `[B]` i64 (equal to the row length outside generation).
    pub prompt_lengths: &'a Tensor,
    /// `None` for a forward pass or a generation's prefill, `Some(k)` for the k-th decoding step.
    pub decode_step: Option<usize>,
}

impl HookContext<'_> {
    /// Boolean mask `[B, T]` of the positions selected by `positions` (never padding).
    pub fn select(&self, positions: &Positions) -> Result<Tensor> {
        let pos = self.position_ids;
        let prompt = self.prompt_lengths.f_unsqueeze(1)?;
        let sel = match positions {
            Positions::All => return Ok(self.valid.shallow_clone()),
            Positions::Prompt => pos.f_lt_tensor(&prompt)?,
            Positions::Generated => pos.f_ge_tensor(&prompt)?,
            Positions::At(list) => {
                let wanted = Tensor::from_slice(list).f_to_device(pos.device())?;
                Tensor::f_isin(pos, &wanted, false, false)?
            }
            Positions::RowsAt(pairs) => {
                let b = pos.size()[0];
                let sel = pos.f_zeros_like()?.f_to_kind(Kind::Bool)?;
                for &(row, p) in pairs {
                    if row as i64 >= b {
                        return Err(HookError::Hook {
                            point: self.point.to_string(),
                            message: format!(
                                "position ({row}, {p}) names row {row} of a batch of {b}"
                            ),
                        });
                    }
                    let row_sel = pos.f_get(row as i64)?.f_eq(p)?;
                    sel.f_get(row as i64)?
                        .f_copy_(&sel.f_get(row as i64)?.f_logical_or(&row_sel)?)?;
                }
                sel
            }
        };
        Ok(sel.f_logical_and(self.valid)?)
    }
}

/// A user-supplied hook: receives the activation and returns the (possibly edited) activation of the same
/// shape. It must not modify its input in place (captures taken earlier at the same point share its
/// storage); return a new tensor instead.
pub type HookFn = dyn Fn(&HookContext<'_>, Tensor) -> Result<Tensor> + Send + Sync;

/// Options for captured tensors.
#[derive(Debug, Clone, Copy, Default)]
pub struct CaptureOptions {
    /// Move the copy to this device (e.g. CPU to free GPU memory); `None` keeps the model's device.
    pub device: Option<Device>,
    /// Convert the copy to this dtype (e.g. f16 for storage); `None` keeps the activation dtype.
    pub kind: Option<Kind>,
}

/// One operation at a hook point.
pub enum HookOp {
    /// Record the activation (as it is at this moment in the list of operations).
    Capture(CaptureOptions),
    /// `x += alpha * vector` at the selected positions; `vector` is `[d]`.
    Add {
        /// Direction `[d]`.
        vector: Tensor,
        /// Scale.
        alpha: f64,
        /// Where.
        positions: Positions,
    },
    /// `x = value` at the selected positions (e.g. mean ablation); `value` is `[d]`.
    Set {
        /// Replacement `[d]`.
        value: Tensor,
        /// Where.
        positions: Positions,
    },
    /// Activation patching: at each selected position `p` of row `b`, `x = source[b, p]`, with `source`
    /// `[B, T_src, d]` indexed by absolute position (e.g. captured from another run). Positions `>= T_src`
    /// are left alone.
    Patch {
        /// Source activations `[B, T_src, d]`.
        source: Tensor,
        /// Where.
        positions: Positions,
    },
    /// Directional ablation: `x -= (x · v̂) v̂` at the selected positions; `direction` is `[d]` (normalised
    /// internally).
    Ablate {
        /// Direction `[d]`.
        direction: Tensor,
        /// Where.
        positions: Positions,
    },
    /// Arbitrary edit.
    Func(Arc<HookFn>),
}

impl fmt::Debug for HookOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookOp::Capture(o) => write!(f, "Capture({o:?})"),
            HookOp::Add {
                alpha, positions, ..
            } => write!(f, "Add(alpha={alpha}, {positions:?})"),
            HookOp::Set { positions, .. } => write!(f, "Set({positions:?})"),
            HookOp::Patch { positions, .. } => write!(f, "Patch({positions:?})"),
            HookOp::Ablate { positions, .. } => write!(f, "Ablate({positions:?})"),
            HookOp::Func(_) => write!(f, "Func"),
        }
    }
}

/// The operations to run at each hook point.
#[derive(Debug, Default)]
pub struct Hooks {
    /// Keyed by forward order independent of the layer count: (block + 1, phase).
    ops: BTreeMap<(usize, usize), (HookPoint, Vec<HookOp>)>,
}

impl Hooks {
    /// No hooks: a plain forward pass.
    pub fn new() -> Self {
        Self::default()
    }

    fn key(p: HookPoint) -> (usize, usize) {
        match p {
            HookPoint::Embed => (0, 0),
            HookPoint::ResidPre(l) => (l + 1, 0),
            HookPoint::AttnOut(l) => (l + 1, 1),
            HookPoint::ResidMid(l) => (l + 1, 2),
            HookPoint::MlpOut(l) => (l + 1, 3),
            HookPoint::ResidPost(l) => (l + 1, 4),
            HookPoint::FinalNorm => (usize::MAX, 0),
            HookPoint::Logits => (usize::MAX, 1),
        }
    }

    /// Append an operation at a point.
    pub fn push(&mut self, point: HookPoint, op: HookOp) -> &mut Self {
        self.ops
            .entry(Self::key(point))
            .or_insert_with(|| (point, Vec::new()))
            .1
            .push(op);
        self
    }

    /// Capture the activation at `point` (as the model computes it, in its dtype and device).
    pub fn capture(&mut self, point: HookPoint) -> &mut Self {
        self.push(point, HookOp::Capture(CaptureOptions::default()))
    }

    /// Capture with a target device / dtype for the copy.
    pub fn capture_with(&mut self, point: HookPoint, options: CaptureOptions) -> &mut Self {
        self.push(point, HookOp::Capture(options))
    }

    /// Add `alpha * vector` (`[d]`) at `positions`.
    pub fn add(
        &mut self,
        point: HookPoint,
        vector: &Tensor,
        alpha: f64,
        positions: Positions,
    ) -> &mut Self {
        self.push(
            point,
            HookOp::Add {
                vector: vector.shallow_clone(),
                alpha,
                positions,
            },
        )
    }

    /// Replace the activation by `value` (`[d]`) at `positions`.
    pub fn set(&mut self, point: HookPoint, value: &Tensor, positions: Positions) -> &mut Self {
        self.push(
            point,
            HookOp::Set {
                value: value.shallow_clone(),
                positions,
            },
        )
    }

    /// Patch positions from `source` (`[B, T_src, d]`, indexed by absolute position).
    pub fn patch(&mut self, point: HookPoint, source: &Tensor, positions: Positions) -> &mut Self {
        self.push(
            point,
            HookOp::Patch {
                source: source.shallow_clone(),
                positions,
            },
        )
    }

    /// Project the direction (`[d]`) out of the activation at `positions`.
    pub fn ablate(
        &mut self,
        point: HookPoint,
        direction: &Tensor,
        positions: Positions,
    ) -> &mut Self {
        self.push(
            point,
            HookOp::Ablate {
                direction: direction.shallow_clone(),
                positions,
            },
        )
    }

    /// Run a closure at `point`.
    pub fn func<F>(&mut self, point: HookPoint, f: F) -> &mut Self
    where
        F: Fn(&HookContext<'_>, Tensor) -> Result<Tensor> + Send + Sync + 'static,
    {
        self.push(point, HookOp::Func(Arc::new(f)))
    }

    /// True when no point has an operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The points that have operations, in forward order.
    pub fn points(&self) -> impl Iterator<Item = HookPoint> + '_ {
        self.ops.values().map(|(p, _)| *p)
    }

    /// The latest point in forward order that has an operation.
    pub fn last_point(&self) -> Option<HookPoint> {
        self.ops.values().next_back().map(|(p, _)| *p)
    }

    /// Operations at a point (empty slice when none).
    pub fn at(&self, point: HookPoint) -> &[HookOp] {
        self.ops
            .get(&Self::key(point))
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[])
    }

    /// Whether any operation sits at `point`.
    pub fn has(&self, point: HookPoint) -> bool {
        self.ops.contains_key(&Self::key(point))
    }

    /// Whether any point is captured.
    pub fn captures(&self) -> impl Iterator<Item = HookPoint> + '_ {
        self.ops
            .values()
            .filter(|(_, ops)| ops.iter().any(|o| matches!(o, HookOp::Capture(_))))
            .map(|(p, _)| *p)
    }

    /// Check every operation against a model's shape: layers in range, vectors of width `d`.
    pub fn validate(&self, num_layers: usize, d_model: i64, vocab: i64) -> Result<()> {
        for (point, ops) in self.ops.values() {
            let err = |message: String| HookError::Hook {
                point: point.to_string(),
                message,
            };
            if let Some(l) = point.layer() {
                if l >= num_layers {
                    return Err(err(format!(
                        "layer {l} does not exist (the model has {num_layers})"
                    )));
                }
            }
            let width = if *point == HookPoint::Logits {
                vocab
            } else {
                d_model
            };
            for op in ops {
                let v = match op {
                    HookOp::Add { vector: v, .. }
                    | HookOp::Set { value: v, .. }
                    | HookOp::Ablate { direction: v, .. } => v,
                    HookOp::Patch { source, .. } => {
                        let s = source.size();
                        if s.len() != 3 || s[2] != width {
                            return Err(err(format!(
                                "patch source must be [B, T, {width}], got {s:?}"
                            )));
                        }
                        continue;
                    }
                    _ => continue,
                };
                if v.size() != [width] {
                    return Err(err(format!(
                        "vector must have shape [{width}], got {:?}",
                        v.size()
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Run the operations of one point on `x` (`[B, T, d]`), storing captures in `captured`.
pub(crate) fn run_point(
    ops: &[HookOp],
    ctx: &HookContext<'_>,
    mut x: Tensor,
    captured: &mut Vec<(HookPoint, Tensor)>,
) -> Result<Tensor> {
    for op in ops {
        x = match op {
            HookOp::Capture(o) => {
                let mut c = x.f_detach()?;
                if let Some(k) = o.kind {
                    c = c.f_to_kind(k)?;
                }
                if let Some(d) = o.device {
                    c = c.f_to_device(d)?;
                }
                captured.push((ctx.point, c));
                x
            }
            HookOp::Add {
                vector,
                alpha,
                positions,
            } => {
                let sel = ctx.select(positions)?.f_unsqueeze(-1)?;
                let v = vector.f_to_device(x.device())?.f_to_kind(x.kind())?;
                let added = x.f_add(&v.f_mul_scalar(*alpha)?)?;
                added.f_where_self(&sel, &x)?
            }
            HookOp::Set { value, positions } => {
                let sel = ctx.select(positions)?.f_unsqueeze(-1)?;
                let v = value.f_to_device(x.device())?.f_to_kind(x.kind())?;
                v.f_expand_as(&x)?.f_where_self(&sel, &x)?
            }
            HookOp::Patch { source, positions } => {
                let t_src = source.size()[1];
                let sel = ctx
                    .select(positions)?
                    .f_logical_and(&ctx.position_ids.f_lt(t_src)?)?
                    .f_unsqueeze(-1)?;
                let idx = ctx.position_ids.f_clamp(0, t_src - 1)?;
                let d = x.size()[2];
                let src = source.f_to_device(x.device())?.f_to_kind(x.kind())?;
                if src.size()[0] != x.size()[0] {
                    return Err(HookError::Hook {
                        point: ctx.point.to_string(),
                        message: format!(
                            "patch source has {} rows, batch has {}",
                            src.size()[0],
                            x.size()[0]
                        ),
                    });
                }
                let gathered = src.f_gather(
                    1,
                    &idx.f_unsqueeze(-1)?.f_expand([-1, -1, d], false)?,
                    false,
                )?;
                gathered.f_where_self(&sel, &x)?
            }
            HookOp::Ablate {
                direction,
                positions,
            } => {
                let sel = ctx.select(positions)?.f_unsqueeze(-1)?;
                let v = direction.f_to_device(x.device())?.f_to_kind(Kind::Float)?;
                let norm = v.f_norm()?.double_value(&[]);
                if norm == 0.0 || !norm.is_finite() {
                    return Err(HookError::Hook {
                        point: ctx.point.to_string(),
                        message: "ablation direction has zero or non-finite norm".into(),
                    });
                }
                let unit = v.f_div_scalar(norm)?;
                let x32 = x.f_to_kind(Kind::Float)?;
                let coef = x32.f_matmul(&unit)?.f_unsqueeze(-1)?; // [B, T, 1]
                let ablated = x32.f_sub(&coef.f_mul(&unit)?)?.f_to_kind(x.kind())?;
                ablated.f_where_self(&sel, &x)?
            }
            HookOp::Func(f) => {
                let shape = x.size();
                let y = f(ctx, x)?;
                if y.size() != shape {
                    return Err(HookError::Hook {
                        point: ctx.point.to_string(),
                        message: format!(
                            "closure returned shape {:?}, expected {shape:?}",
                            y.size()
                        ),
                    });
                }
                y
            }
        };
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_order() {
        for s in [
            "embed",
            "resid_pre.0",
            "attn_out.3",
            "resid_mid.1",
            "mlp_out.2",
            "resid_post.12",
            "final_norm",
            "logits",
        ] {
            assert_eq!(s.parse::<HookPoint>().unwrap().to_string(), s);
        }
        assert_eq!(
            "resid_post:4".parse::<HookPoint>().unwrap(),
            HookPoint::ResidPost(4)
        );
        assert!("resid_post".parse::<HookPoint>().is_err());
        assert!("resid_posts.1".parse::<HookPoint>().is_err());
        let mut h = Hooks::new();
        h.capture(HookPoint::ResidPost(1))
            .capture(HookPoint::ResidPre(2))
            .capture(HookPoint::Embed);
        h.capture(HookPoint::AttnOut(1));
        let pts: Vec<_> = h.points().collect();
        assert_eq!(
            pts,
            vec![
                HookPoint::Embed,
                HookPoint::AttnOut(1),
                HookPoint::ResidPost(1),
                HookPoint::ResidPre(2)
            ]
        );
        let orders: Vec<_> = pts.iter().map(|p| p.order(4)).collect();
        assert!(orders.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(h.last_point(), Some(HookPoint::ResidPre(2)));
    }
}
