//! Numerics shared by every family, written to reproduce HF transformers' operation order so results
//! agree to float rounding: RMSNorm (both conventions), RoPE tables and rotation, softcapping, activations
//! and attention masks.

use crate::config::{Activation, RopeScaling, RopeSpec};
use crate::error::Result;
use tch::{Device, Kind, Tensor};

/// An RMSNorm layer.
///
/// * Llama/Qwen: `w * (x32 * rsqrt(mean(x32²) + eps)).to(dtype)`
/// * Gemma: `(x32 * rsqrt(mean(x32²) + eps) * (1 + w32)).to(dtype)`
#[derive(Debug)]
pub struct RmsNorm {
    /// Llama-style: the weight; Gemma-style: `1 + w` precomputed in f32.
    pub(crate) weight: Tensor,
    gemma: bool,
    eps: f64,
    /// Use the fused CPU kernel where it applies ([`crate::LoadOptions::fast_kernels`]).
    fast: bool,
}

impl RmsNorm {
    /// Build from the stored weight. `gemma` selects the `(1 + w)` convention; `fast` allows the fused CPU
    /// kernel (bf16), which rounds where HF's operators do but sums the mean in another order.
    pub fn new(weight: Tensor, gemma: bool, eps: f64, fast: bool) -> Result<Self> {
        let weight = if gemma {
            weight.f_to_kind(Kind::Float)?.f_add_scalar(1.0)?
        } else {
            weight
        };
        Ok(Self {
            weight,
            gemma,
            eps,
            fast,
        })
    }

    /// Normalise over the last dimension. Shapes: `[.., d] -> [.., d]`, dtype preserved.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let kind = x.kind();
        // The fused kernels are for inference: a trainable weight (full fine-tuning) takes the operators.
        let frozen = !self.weight.requires_grad();
        if kind == Kind::Float && frozen && !x.requires_grad() {
            // aten's fused kernel: one pass instead of five, and in f32 the same operations in the same
            // order as below (bit-identical results; the numerics tests hold it to the formula).
            let d = x.size().last().copied().unwrap_or(0);
            return Ok(x
                .f_internal_fused_rms_norm([d].as_slice(), Some(&self.weight), self.eps)?
                .0);
        }
        if kind == Kind::BFloat16 && self.fast && frozen {
            // One pass instead of eight operators, same rounding points (crate::fused).
            if let Some(y) = crate::fused::rms_norm(x, &self.weight, self.gemma, self.eps) {
                return y;
            }
        }
        let x32 = x.f_to_kind(Kind::Float)?;
        let var = x32.f_square()?.f_mean_dim(-1, true, Kind::Float)?;
        let normed = x32.f_mul(&var.f_add_scalar(self.eps)?.f_rsqrt()?)?;
        Ok(if self.gemma {
            normed.f_mul(&self.weight)?.f_to_kind(kind)?
        } else {
            self.weight.f_mul(&normed.f_to_kind(kind)?)?
        })
    }
}

/// Inverse frequencies of one RoPE table, `[head_dim / 2]` f32, computed as HF does.
pub fn rope_inv_freq(spec: &RopeSpec, head_dim: i64, device: Device) -> Result<Tensor> {
    // HF: 1 / base ** (arange(0, dim, 2).float() / dim)
    let exponent = Tensor::f_arange_start_step(0, head_dim, 2, (Kind::Int64, device))?
        .f_to_kind(Kind::Float)?
        .f_div_scalar(head_dim as f64)?;
    let inv_freq = Tensor::f_pow_scalar(spec.theta, &exponent)?.f_reciprocal()?;
    Ok(match spec.scaling {
        RopeScaling::None => inv_freq,
        RopeScaling::Linear { factor } => inv_freq.f_div_scalar(factor)?,
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old_len,
        } => {
            let low_freq_wavelen = old_len / low_freq_factor;
            let high_freq_wavelen = old_len / high_freq_factor;
            let wavelen = inv_freq
                .f_reciprocal()?
                .f_mul_scalar(2.0 * std::f64::consts::PI)?;
            let scaled = inv_freq.f_div_scalar(factor)?;
            let llama = scaled.f_where_self(&wavelen.f_gt(low_freq_wavelen)?, &inv_freq)?;
            let smooth = wavelen
                .f_reciprocal()?
                .f_mul_scalar(old_len)?
                .f_sub_scalar(low_freq_factor)?
                .f_div_scalar(high_freq_factor - low_freq_factor)?;
            // (1 - smooth) * llama / factor + smooth * llama
            let smoothed = smooth
                .f_neg()?
                .f_add_scalar(1.0)?
                .f_mul(&llama)?
                .f_div_scalar(factor)?
                .f_add(&smooth.f_mul(&llama)?)?;
            let medium = wavelen
                .f_lt(high_freq_wavelen)?
                .f_logical_not()?
                .f_logical_and(&wavelen.f_gt(low_freq_wavelen)?.f_logical_not()?)?;
            smoothed.f_where_self(&medium, &llama)?
        }
    })
}

/// `cos` and `sin` tables for the given positions, each `[B, 1, T, head_dim]` in `kind`.
///
/// `position_ids`: `[B, T]` i64. Computed in f32 like HF (`freqs = pos * inv_freq`, `emb = cat(freqs,
/// freqs)`), then cast.
pub fn rope_cos_sin(
    inv_freq: &Tensor,
    position_ids: &Tensor,
    kind: Kind,
) -> Result<(Tensor, Tensor)> {
    let pos = position_ids.f_to_kind(Kind::Float)?.f_unsqueeze(-1)?; // [B, T, 1]
    let freqs = pos.f_mul(&inv_freq.f_view([1, 1, -1])?)?; // [B, T, D/2]
    let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?.f_unsqueeze(1)?; // [B, 1, T, D]
    Ok((emb.f_cos()?.f_to_kind(kind)?, emb.f_sin()?.f_to_kind(kind)?))
}

/// Rotate the queries or keys of a projection and lay them out head-major: `[B, T, H, D]` (a view of the
/// projection's output) to a `[B, H, T, D]` tensor in `out_kind`, equal to [`apply_rope`] on the
/// transposed view followed by a cast. With `fast`, on CPU, it is one fused pass (`crate::fused`),
/// bit-identical.
pub fn rope_heads(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    out_kind: Kind,
    fast: bool,
) -> Result<Tensor> {
    if fast {
        if let Some(y) = crate::fused::rope(x, cos, sin, out_kind) {
            return y;
        }
    }
    Ok(apply_rope(&x.f_transpose(1, 2)?, cos, sin)?.f_to_kind(out_kind)?)
}

/// Rotate queries or keys: `x * cos + rotate_half(x) * sin`, HF's half-split layout.
///
/// Shapes: `x` `[B, H, T, D]`, `cos`/`sin` `[B, 1, T, D]`.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.size()[3] / 2;
    let x1 = x.f_narrow(3, 0, half)?;
    let x2 = x.f_narrow(3, half, half)?;
    let rotated = Tensor::f_cat(&[&x2.f_neg()?, &x1], 3)?;
    Ok(x.f_mul(cos)?.f_add(&rotated.f_mul(sin)?)?)
}

/// `tanh(x / cap) * cap`.
pub fn softcap(x: &Tensor, cap: f64) -> Result<Tensor> {
    Ok(x.f_div_scalar(cap)?.f_tanh()?.f_mul_scalar(cap)?)
}

/// The MLP activation.
pub fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
        Activation::Silu => x.f_silu()?,
        Activation::GeluTanh => x.f_gelu("tanh")?,
        Activation::Gelu => x.f_gelu("none")?,
    })
}

/// The gated MLP's `act(gate) * up`. Without autograd it works in place in `gate` (both are usually views
/// of one stacked projection output): no new `[.., intermediate]` buffers, which at prefill sizes are
/// fresh page-faulted allocations.
///
/// `fast` allows the fused CPU kernel (one pass; its `exp` is within 2 ulp of libtorch's).
pub fn gated(gate: &Tensor, up: &Tensor, act: Activation, fast: bool) -> Result<Tensor> {
    if fast {
        if let Some(y) = crate::fused::gated(gate, up, act) {
            return y;
        }
    }
    if gate.requires_grad() || up.requires_grad() {
        return Ok(activate(gate, act)?.f_mul(up)?);
    }
    let mut g = gate.shallow_clone();
    let _ = match act {
        Activation::Silu => g.f_silu_()?,
        Activation::GeluTanh => g.f_gelu_("tanh")?,
        Activation::Gelu => g.f_gelu_("none")?,
    };
    Ok(g.f_mul_(up)?)
}

/// Additive attention mask `[B, 1, Tq, Tk]` in `kind`: 0 where a query may attend, the dtype's most negative
/// finite value elsewhere (HF's convention; a finite value keeps fully masked padding rows NaN-free).
///
/// * `key_valid`: `[B, Tk]` bool, false on padding keys.
/// * Query `i` sits at index `past + i` of the key axis; it sees key `j` when `j <= past + i` and, with a
///   sliding `window`, when `past + i - j < window`.
pub fn attention_mask(
    key_valid: &Tensor,
    q_len: i64,
    past: i64,
    window: Option<i64>,
    kind: Kind,
) -> Result<Tensor> {
    let device = key_valid.device();
    let k_len = key_valid.size()[1];
    let q_idx =
        Tensor::f_arange_start(past, past + q_len, (Kind::Int64, device))?.f_view([q_len, 1])?;
    let k_idx = Tensor::f_arange(k_len, (Kind::Int64, device))?.f_view([1, k_len])?;
    let mut allowed = k_idx.f_le_tensor(&q_idx)?; // [Tq, Tk]
    if let Some(w) = window {
        allowed = allowed.f_logical_and(&q_idx.f_sub(&k_idx)?.f_lt(w)?)?;
    }
    let allowed = allowed
        .f_unsqueeze(0)?
        .f_logical_and(&key_valid.f_unsqueeze(1)?)?
        .f_unsqueeze(1)?; // [B, 1, Tq, Tk]
    let min = match kind {
        Kind::Half => -65504.0,
        Kind::BFloat16 => -3.3895313892515355e38,
        Kind::Double => f64::MIN,
        _ => f32::MIN as f64,
    };
    let zeros = Tensor::f_zeros([1], (kind, device))?;
    Ok(zeros.f_masked_fill(&allowed.f_logical_not()?, min)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_matches_formula() {
        let x = Tensor::from_slice(&[1.0f32, -2.0, 3.0, 0.5]).view([1, 4]);
        let w = Tensor::from_slice(&[0.5f32, 1.0, 2.0, -1.0]);
        let llama = RmsNorm::new(w.shallow_clone(), false, 1e-6, true).unwrap();
        let gemma = RmsNorm::new(w.shallow_clone(), true, 1e-6, true).unwrap();
        let rms = ((1.0 + 4.0 + 9.0 + 0.25) / 4.0f64 + 1e-6).sqrt();
        let want: Vec<f64> = [1.0, -2.0, 3.0, 0.5].iter().map(|v| v / rms).collect();
        let got_l = Vec::<f32>::try_from(llama.forward(&x).unwrap().view([-1])).unwrap();
        let got_g = Vec::<f32>::try_from(gemma.forward(&x).unwrap().view([-1])).unwrap();
        for i in 0..4 {
            let wl = [0.5, 1.0, 2.0, -1.0][i];
            approx::assert_abs_diff_eq!(got_l[i] as f64, want[i] * wl, epsilon = 1e-6);
            approx::assert_abs_diff_eq!(got_g[i] as f64, want[i] * (1.0 + wl), epsilon = 1e-6);
        }
    }

    #[test]
    fn rope_rotation_preserves_norm_and_position_zero_is_identity() {
        let spec = RopeSpec {
            theta: 10_000.0,
            scaling: RopeScaling::None,
        };
        let inv = rope_inv_freq(&spec, 8, Device::Cpu).unwrap();
        let pos = Tensor::from_slice(&[0i64, 1, 7]).view([1, 3]);
        let (cos, sin) = rope_cos_sin(&inv, &pos, Kind::Float).unwrap();
        let x = Tensor::randn([1, 2, 3, 8], (Kind::Float, Device::Cpu));
        let y = apply_rope(&x, &cos, &sin).unwrap();
        let diff0 = (y.narrow(2, 0, 1) - x.narrow(2, 0, 1))
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff0 < 1e-7);
        let nx = x.norm_scalaropt_dim(2.0, [-1i64].as_slice(), false);
        let ny = y.norm_scalaropt_dim(2.0, [-1i64].as_slice(), false);
        assert!((nx - ny).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let spec = RopeSpec {
            theta: 500_000.0,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            },
        };
        let plain = RopeSpec {
            theta: 500_000.0,
            scaling: RopeScaling::None,
        };
        let a = Vec::<f32>::try_from(rope_inv_freq(&spec, 64, Device::Cpu).unwrap()).unwrap();
        let b = Vec::<f32>::try_from(rope_inv_freq(&plain, 64, Device::Cpu).unwrap()).unwrap();
        assert_eq!(a[0], b[0]); // highest frequency untouched
        approx::assert_relative_eq!(a[31], b[31] / 8.0, max_relative = 1e-6); // lowest divided by factor
    }

    #[test]
    fn sliding_mask_keeps_exactly_window_keys() {
        let valid = Tensor::ones([1, 6], (Kind::Bool, Device::Cpu));
        let m = attention_mask(&valid, 6, 0, Some(3), Kind::Float).unwrap();
        let visible = m
            .eq(0.0)
            .sum_dim_intlist([-1i64].as_slice(), false, Kind::Int64)
            .view([-1]);
        assert_eq!(
            Vec::<i64>::try_from(visible).unwrap(),
            vec![1, 2, 3, 3, 3, 3]
        );
    }
}
