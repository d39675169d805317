//! Fused element-wise kernels for the CPU: RMSNorm, rotary embeddings and the gated activation, each one
//! pass over memory instead of libtorch's chain of operators, with HF's rounding order kept.
//!
//! In bf16, HF's RMSNorm is seven operators (up-cast, square, mean, add, rsqrt, multiply, down-cast) plus
//! the weight multiply; its RoPE is six (two narrows, negate, concatenate, two multiplies, an add) and rounds
//! to bf16 after each multiply and after the add; its gated MLP rounds the activation to bf16 before
//! multiplying by `up`. Each operator is a pass over the activations and a fork/join of the thread pool.
//! The kernels here do each job in one pass, compute in f32 and round to the storage type exactly where
//! HF's operators do. Results equal libtorch's bit for bit where no reduction or transcendental function is
//! involved (RoPE: tested); the RMSNorm mean sums in another order and `exp` is a Cephes polynomial (within
//! 2 ulp of libtorch's Sleef), a few f32 ulps before the final rounding.
//!
//! RoPE and the gated activation take f32 and bf16 tensors, RMSNorm bf16 (in f32, aten's fused kernel is
//! bit-identical to HF's chain and is kept). The kernels run 16 f32 lanes with AVX-512 and convert bf16
//! with the AVX512-BF16 instructions (round to nearest even like `c10::BFloat16`; subnormal inputs of the
//! conversion count as zero). Rows are split over libtorch's OpenMP pool ([`crate::omp`]). Every entry
//! point returns `None` for anything else (a CPU without those instructions, another device or dtype,
//! autograd, odd strides), and the caller runs libtorch's operators.

use crate::config::Activation;
use crate::error::Result;
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

/// True when this CPU and process can run the kernels.
pub(crate) fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            x86::supported() && crate::omp::available()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// A storage type of the kernels: f32 or bf16.
trait Elem: Copy + Send + Sync + 'static {
    /// bf16 storage (else f32).
    const BF16: bool;
}

impl Elem for f32 {
    const BF16: bool = false;
}

/// bf16 bits.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct Bf16(#[allow(dead_code)] u16);

impl Elem for Bf16 {
    const BF16: bool = true;
}

/// A raw pointer shared by the threads of one parallel loop, each writing its own rows.
#[derive(Clone, Copy)]
struct Shared<T>(*mut T);
// SAFETY: used only inside `omp::parallel_for` regions where threads touch disjoint rows.
unsafe impl<T> Sync for Shared<T> {}
// SAFETY: as above.
unsafe impl<T> Send for Shared<T> {}

/// Element offsets of the rows (last dimension) of a tensor, in row-major order of the leading
/// dimensions, or `None` unless the last dimension is contiguous and no stride is negative.
fn row_offsets(t: &Tensor) -> Option<Vec<usize>> {
    let (size, stride) = (t.size(), t.stride());
    let last = size.len().checked_sub(1)?;
    if (stride[last] != 1 && size[last] > 1) || stride.iter().any(|&s| s < 0) {
        return None;
    }
    let count: usize = size[..last].iter().map(|&n| n as usize).product();
    Some(
        (0..count)
            .map(|r| {
                let (mut rem, mut off) = (r, 0usize);
                for d in (0..last).rev() {
                    let n = size[d] as usize;
                    off += (rem % n) * stride[d] as usize;
                    rem /= n;
                }
                off
            })
            .collect(),
    )
}

/// Whether a tensor is a plain CPU input the kernels accept.
fn plain(t: &Tensor, kind: Kind) -> bool {
    t.device() == Device::Cpu && t.kind() == kind && !t.requires_grad()
}

/// Rows per parallel chunk for rows of `d` elements (about 16 KiB of work each).
fn grain(d: usize) -> usize {
    (4096 / d.max(1)).max(1)
}

/// HF's RMSNorm of the rows of `x` (bf16), or `None` where the kernel does not apply. (f32 has aten's
/// fused kernel, bit-identical to HF's operator chain; see `numerics::RmsNorm`.)
///
/// * Llama-style (`gemma = false`): `weight * (x32 * rsqrt(mean(x32²) + eps)).to(dtype)`, `weight` in
///   `x`'s dtype.
/// * Gemma-style: `(x32 * rsqrt(mean(x32²) + eps) * weight).to(dtype)`, `weight` = `1 + w` in f32.
///
/// Shapes: `x` `[.., d]` (last dimension contiguous, any other strides), `weight` `[d]` contiguous;
/// returns a new contiguous `[.., d]` tensor in `x`'s dtype.
pub(crate) fn rms_norm(
    x: &Tensor,
    weight: &Tensor,
    gemma: bool,
    eps: f64,
) -> Option<Result<Tensor>> {
    let kind = x.kind();
    let wkind = if gemma { Kind::Float } else { kind };
    let d = *x.size().last()? as usize;
    if !available()
        || kind != Kind::BFloat16
        || !plain(x, kind)
        || !plain(weight, wkind)
        || !weight.is_contiguous()
        || weight.numel() != d
        || d == 0
    {
        return None;
    }
    let rows = row_offsets(x)?;
    let out = match Tensor::f_empty(x.size(), (kind, Device::Cpu)) {
        Ok(t) => t,
        Err(e) => return Some(Err(e.into())),
    };
    let job = Norm {
        x: Shared(x.data_ptr()),
        w: Shared(weight.data_ptr()),
        y: Shared(out.data_ptr()),
        rows: &rows,
        d,
        eps: eps as f32,
    };
    if gemma {
        job.run::<Bf16, f32, true>()
    } else {
        job.run::<Bf16, Bf16, false>()
    }
    Some(Ok(out))
}

/// One RMSNorm call: input rows at `rows` offsets, output contiguous.
struct Norm<'a> {
    x: Shared<std::ffi::c_void>,
    w: Shared<std::ffi::c_void>,
    y: Shared<std::ffi::c_void>,
    rows: &'a [usize],
    d: usize,
    eps: f32,
}

impl Norm<'_> {
    fn run<E: Elem, W: Elem, const GEMMA: bool>(&self) {
        crate::omp::parallel_for(self.rows.len(), grain(self.d), &|range| {
            for r in range {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `rms_norm` checked dtypes, the weight's length and the input's row layout, and
                // `available()` the CPU; each thread writes its own output rows.
                unsafe {
                    x86::norm_row::<E, W, GEMMA>(
                        (self.x.0 as *const E).add(self.rows[r]),
                        self.w.0 as *const W,
                        (self.y.0 as *mut E).add(r * self.d),
                        self.d,
                        self.eps,
                    )
                };
                #[cfg(not(target_arch = "x86_64"))]
                let _ = r;
            }
        });
    }
}

/// HF's rotary embedding `x * cos + rotate_half(x) * sin`, rounded to `x`'s dtype after each multiply and
/// after the add, written head-major as `out_kind` (`x`'s dtype, or f32 to feed f32 attention without a
/// separate cast).
///
/// Shapes: `x` `[B, T, H, D]` (last dimension contiguous: a view of a projection's output), `cos`/`sin`
/// `[B, 1, T, D]` contiguous in `x`'s dtype; returns a contiguous `[B, H, T, D]` tensor.
pub(crate) fn rope(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    out_kind: Kind,
) -> Option<Result<Tensor>> {
    let kind = x.kind();
    let size = x.size();
    let [b, t, h, d] = size[..] else { return None };
    if !available()
        || !matches!(kind, Kind::Float | Kind::BFloat16)
        || !matches!(out_kind, Kind::Float | Kind::BFloat16)
        || (kind == Kind::Float && out_kind != Kind::Float)
        || !plain(x, kind)
        || !plain(cos, kind)
        || !plain(sin, kind)
        || !cos.is_contiguous()
        || !sin.is_contiguous()
        || cos.size() != [b, 1, t, d]
        || sin.size() != [b, 1, t, d]
        || d % 2 != 0
        || d == 0
        || x.stride()[3] != 1
        || x.stride().iter().any(|&s| s < 0)
    {
        return None;
    }
    let out = match Tensor::f_empty([b, h, t, d], (out_kind, Device::Cpu)) {
        Ok(t) => t,
        Err(e) => return Some(Err(e.into())),
    };
    let s = x.stride();
    let job = Rope {
        x: Shared(x.data_ptr()),
        cos: Shared(cos.data_ptr()),
        sin: Shared(sin.data_ptr()),
        y: Shared(out.data_ptr()),
        dims: [b as usize, h as usize, t as usize, d as usize],
        strides: [s[0] as usize, s[1] as usize, s[2] as usize],
    };
    match (kind, out_kind) {
        (Kind::Float, _) => job.run::<f32, f32>(),
        (_, Kind::Float) => job.run::<Bf16, f32>(),
        _ => job.run::<Bf16, Bf16>(),
    }
    Some(Ok(out))
}

/// One RoPE call: `x` strides for B, T, H; output rows in `[B, H, T]` order.
struct Rope {
    x: Shared<std::ffi::c_void>,
    cos: Shared<std::ffi::c_void>,
    sin: Shared<std::ffi::c_void>,
    y: Shared<std::ffi::c_void>,
    /// B, H, T, D.
    dims: [usize; 4],
    /// Element strides of `x` along B, T, H.
    strides: [usize; 3],
}

impl Rope {
    fn run<E: Elem, O: Elem>(&self) {
        let [b, h, t, d] = self.dims;
        crate::omp::parallel_for(b * h * t, grain(d), &|range| {
            for r in range {
                let (bi, hi, ti) = (r / (h * t), (r / t) % h, r % t);
                let xo = bi * self.strides[0] + ti * self.strides[1] + hi * self.strides[2];
                let co = (bi * t + ti) * d;
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `rope` checked shapes, dtypes and strides, and `available()` the CPU; output row
                // `r` is this thread's own.
                unsafe {
                    x86::rope_row::<E, O>(
                        (self.x.0 as *const E).add(xo),
                        (self.cos.0 as *const E).add(co),
                        (self.sin.0 as *const E).add(co),
                        (self.y.0 as *mut O).add(r * d),
                        d,
                    )
                };
                #[cfg(not(target_arch = "x86_64"))]
                let _ = (xo, co);
            }
        });
    }
}

/// HF's gated MLP activation `act(gate) * up` in place in `gate` (the activation rounded to the dtype
/// before the multiply, as HF's two operators do), or `None` where the kernel does not apply.
///
/// Shapes: `gate`, `up` `[.., n]` with contiguous last dimensions (views of one stacked projection output);
/// returns `gate`, overwritten.
pub(crate) fn gated(gate: &Tensor, up: &Tensor, act: Activation) -> Option<Result<Tensor>> {
    let kind = gate.kind();
    if !available()
        || !matches!(kind, Kind::Float | Kind::BFloat16)
        || !matches!(act, Activation::Silu | Activation::GeluTanh)
        || !plain(gate, kind)
        || !plain(up, kind)
        || gate.size() != up.size()
    {
        return None;
    }
    let n = *gate.size().last()? as usize;
    let (g_rows, u_rows) = (row_offsets(gate)?, row_offsets(up)?);
    let job = Gate {
        g: Shared(gate.data_ptr()),
        u: Shared(up.data_ptr()),
        g_rows: &g_rows,
        u_rows: &u_rows,
        n,
    };
    match (kind, act) {
        (Kind::Float, Activation::Silu) => job.run::<f32, false>(),
        (Kind::Float, _) => job.run::<f32, true>(),
        (_, Activation::Silu) => job.run::<Bf16, false>(),
        _ => job.run::<Bf16, true>(),
    }
    Some(Ok(gate.shallow_clone()))
}

/// One gated-activation call over rows of `gate` and `up`.
struct Gate<'a> {
    g: Shared<std::ffi::c_void>,
    u: Shared<std::ffi::c_void>,
    g_rows: &'a [usize],
    u_rows: &'a [usize],
    n: usize,
}

impl Gate<'_> {
    fn run<E: Elem, const GELU: bool>(&self) {
        crate::omp::parallel_for(self.g_rows.len(), grain(self.n), &|range| {
            for r in range {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `gated` checked dtypes, shapes and row layouts, and `available()` the CPU; each
                // thread writes its own rows of `gate` (distinct from `up`'s: views of one output).
                unsafe {
                    x86::gate_row::<E, GELU>(
                        (self.g.0 as *mut E).add(self.g_rows[r]),
                        (self.u.0 as *const E).add(self.u_rows[r]),
                        self.n,
                    )
                };
                #[cfg(not(target_arch = "x86_64"))]
                let _ = r;
            }
        });
    }
}

/// `e^x` on 16 f32 lanes, and the lane mask of a row chunk (shared with [`crate::bf16_attention`]).
#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{exp as exp16, lanes};

/// The row kernels: 16 f32 lanes (AVX-512F) with bf16 conversions by AVX512-BF16, masked row tails.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Elem;
    use std::arch::x86_64::*;

    /// Whether this CPU has the instructions the kernels use.
    pub(super) fn supported() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512bf16")
    }

    /// Lanes of the 16-wide chunk at `i` of a row of `n`.
    #[inline]
    pub(crate) fn lanes(i: usize, n: usize) -> __mmask16 {
        let left = n - i;
        if left >= 16 {
            0xFFFF
        } else {
            ((1u32 << left) - 1) as __mmask16
        }
    }

    /// The lanes of `m` from `p`, as f32 (zero elsewhere).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")]
    unsafe fn load<E: Elem>(p: *const E, m: __mmask16) -> __m512 {
        // SAFETY: the caller passes a pointer whose lanes in `m` are readable; masked-out lanes are not
        // accessed.
        unsafe {
            if E::BF16 {
                let h = _mm256_maskz_loadu_epi16(m, p as *const i16);
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
            } else {
                _mm512_maskz_loadu_ps(m, p as *const f32)
            }
        }
    }

    /// bf16 bits of 16 values, rounded to nearest even.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")]
    fn bf16(v: __m512) -> __m256i {
        // SAFETY: __m256bh and __m256i are the same 256 bits.
        unsafe { std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v)) }
    }

    /// `v` rounded to `E` and back: what one libtorch operator on that dtype produces.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")]
    pub(super) fn round<E: Elem>(v: __m512) -> __m512 {
        if E::BF16 {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bf16(v))))
        } else {
            v
        }
    }

    /// Store the lanes of `m` to `p` as `E`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")]
    unsafe fn store<E: Elem>(p: *mut E, m: __mmask16, v: __m512) {
        // SAFETY: the caller passes a pointer whose lanes in `m` are writable; masked-out lanes are not
        // accessed.
        unsafe {
            if E::BF16 {
                _mm256_mask_storeu_epi16(p as *mut i16, m, bf16(v));
            } else {
                _mm512_mask_storeu_ps(p as *mut f32, m, v);
            }
        }
    }

    /// `e^x` on 16 lanes: Cephes `expf` (range reduction by ln 2 in two parts, degree-5 polynomial;
    /// within 2 ulp of the correctly rounded result), scaled by `2^n` with `vscalefps`, so it overflows to
    /// infinity and underflows through subnormals to zero like libm.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")]
    pub(crate) fn exp(x: __m512) -> __m512 {
        const P: [f32; 6] = [
            1.987_569_1e-4,
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5, // Cephes: 5.0000001e-1, which is 0.5 in f32
        ];
        // Beyond these bounds the result is 0 or infinity anyway; the clamp keeps `n` finite. (x86's
        // min/max return their second operand when either is NaN, so NaN passes through.)
        let x = _mm512_min_ps(
            _mm512_set1_ps(89.0),
            _mm512_max_ps(_mm512_set1_ps(-104.0), x),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        // ln 2 = 0.693359375 - 2.12194440e-4, the first part exact in a few bits so `n * it` is exact.
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let z = _mm512_mul_ps(r, r);
        let mut p = _mm512_set1_ps(P[0]);
        for c in &P[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
        }
        let e = _mm512_add_ps(_mm512_fmadd_ps(p, z, r), _mm512_set1_ps(1.0));
        _mm512_scalef_ps(e, n)
    }

    /// One row of [`super::rms_norm`]: `x` and `y` rows of `d`, `w` of `d`.
    ///
    /// # Safety
    /// `x`, `w` readable and `y` writable for `d` elements; the CPU has the features of [`supported`].
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")]
    pub(super) unsafe fn norm_row<E: Elem, W: Elem, const GEMMA: bool>(
        x: *const E,
        w: *const W,
        y: *mut E,
        d: usize,
        eps: f32,
    ) {
        // SAFETY (whole body): every access is to lanes below `d`.
        unsafe {
            // Sum of squares in four independent accumulators (an FMA's latency is four of its issue
            // slots), the last partial chunk masked.
            let mut acc = [_mm512_setzero_ps(); 4];
            let mut i = 0;
            while i + 64 <= d {
                for (j, a) in acc.iter_mut().enumerate() {
                    let v = load(x.add(i + 16 * j), 0xFFFF);
                    *a = _mm512_fmadd_ps(v, v, *a);
                }
                i += 64;
            }
            while i < d {
                let v = load(x.add(i), lanes(i, d));
                acc[0] = _mm512_fmadd_ps(v, v, acc[0]);
                i += 16;
            }
            let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
            let sum = _mm512_reduce_add_ps(sum);
            let r = _mm512_set1_ps(1.0 / (sum / d as f32 + eps).sqrt());
            let mut i = 0;
            while i < d {
                let m = lanes(i, d);
                let n = _mm512_mul_ps(load(x.add(i), m), r);
                let out = if GEMMA {
                    _mm512_mul_ps(n, load(w.add(i), m))
                } else {
                    _mm512_mul_ps(load(w.add(i), m), round::<E>(n))
                };
                store(y.add(i), m, out);
                i += 16;
            }
        }
    }

    /// One row of [`super::rope`]: `x`, `cos`, `sin` and `y` rows of `d` (even).
    ///
    /// # Safety
    /// `x`, `cos`, `sin` readable and `y` writable for `d` elements; the CPU has the features of
    /// [`supported`].
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")]
    pub(super) unsafe fn rope_row<E: Elem, O: Elem>(
        x: *const E,
        cos: *const E,
        sin: *const E,
        y: *mut O,
        d: usize,
    ) {
        let half = d / 2;
        let sign = _mm512_set1_ps(-0.0);
        // SAFETY (whole body): lanes below `half` in each half of rows of `d = 2 * half`.
        unsafe {
            let mut i = 0;
            while i < half {
                let m = lanes(i, half);
                let (lo, hi) = (i, half + i);
                let a = load(x.add(lo), m);
                let b = load(x.add(hi), m);
                // rotate_half(x) = [-x2, x1]
                let ac = round::<E>(_mm512_mul_ps(a, load(cos.add(lo), m)));
                let bs = round::<E>(_mm512_mul_ps(_mm512_xor_ps(b, sign), load(sin.add(lo), m)));
                let bc = round::<E>(_mm512_mul_ps(b, load(cos.add(hi), m)));
                let as_ = round::<E>(_mm512_mul_ps(a, load(sin.add(hi), m)));
                store(y.add(lo), m, round::<E>(_mm512_add_ps(ac, bs)));
                store(y.add(hi), m, round::<E>(_mm512_add_ps(bc, as_)));
                i += 16;
            }
        }
    }

    /// One row of [`super::gated`]: `g` (overwritten) and `u` rows of `n`.
    ///
    /// # Safety
    /// `g` writable and `u` readable for `n` elements, not overlapping; the CPU has the features of
    /// [`supported`].
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")]
    pub(super) unsafe fn gate_row<E: Elem, const GELU: bool>(g: *mut E, u: *const E, n: usize) {
        let one = _mm512_set1_ps(1.0);
        // SAFETY (whole body): lanes below `n`.
        unsafe {
            let mut i = 0;
            while i < n {
                let m = lanes(i, n);
                let x = load(g.add(i), m);
                // silu: x / (1 + e^-x); gelu (tanh form) as x * sigmoid(2z) = x / (1 + e^-2z),
                // z = sqrt(2/pi) (x + 0.044715 x³), which does not cancel for very negative x.
                let t = if GELU {
                    let x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
                    let inner = _mm512_fmadd_ps(_mm512_set1_ps(0.044_715), x3, x);
                    _mm512_mul_ps(_mm512_set1_ps(-2.0 * 0.797_884_6), inner)
                } else {
                    _mm512_xor_ps(x, _mm512_set1_ps(-0.0))
                };
                let a = _mm512_div_ps(x, _mm512_add_ps(one, exp(t)));
                store(g.add(i), m, _mm512_mul_ps(round::<E>(a), load(u.add(i), m)));
                i += 16;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numerics;

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a.to_kind(Kind::Float) - b.to_kind(Kind::Float))
            .abs()
            .max()
            .double_value(&[])
    }

    /// Units in the last place of bf16 between two tensors, at most.
    fn bf16_ulps(a: &Tensor, b: &Tensor) -> i64 {
        // Sign-magnitude bits mapped onto a line where neighbouring bf16 values differ by one (±0 meet).
        let key = |t: &Tensor| {
            let bits = t.view_dtype(Kind::Int16).to_kind(Kind::Int64);
            let magnitude = bits.bitwise_and(0x7FFF);
            magnitude.where_self(&bits.ge(0), &-&magnitude)
        };
        (key(a) - key(b)).abs().max().int64_value(&[])
    }

    /// 16 lanes through `f`, on this CPU's AVX-512.
    #[cfg(target_arch = "x86_64")]
    fn lanes16(
        xs: &[f32],
        f: fn(std::arch::x86_64::__m512) -> std::arch::x86_64::__m512,
    ) -> Vec<f32> {
        use std::arch::x86_64::*;
        let mut out = Vec::with_capacity(xs.len());
        for chunk in xs.chunks(16) {
            let mut buf = [0f32; 16];
            buf[..chunk.len()].copy_from_slice(chunk);
            // SAFETY: `available()` was checked by the callers; 16-element buffers.
            unsafe {
                let v = f(_mm512_loadu_ps(buf.as_ptr()));
                _mm512_storeu_ps(buf.as_mut_ptr(), v);
            }
            out.extend_from_slice(&buf[..chunk.len()]);
        }
        out
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn exp_is_within_two_ulp_of_libm() {
        if !available() {
            return;
        }
        let xs: Vec<f32> = (0..12_700).map(|i| -87.0 + i as f32 * 0.0137).collect();
        // SAFETY: AVX-512 checked by `available()`.
        let got = lanes16(&xs, |v| unsafe { super::x86::exp(v) });
        let worst = xs
            .iter()
            .zip(&got)
            .map(|(x, g)| ((g - x.exp()) / x.exp()).abs() / f32::EPSILON)
            .fold(0f32, f32::max);
        assert!(worst <= 2.0, "worst {worst} ulp");
        let edge = [
            -200.0,
            -104.0,
            -88.0,
            88.7,
            88.8,
            200.0,
            f32::NAN,
            f32::INFINITY,
        ];
        // SAFETY: as above.
        let got = lanes16(&edge, |v| unsafe { super::x86::exp(v) });
        assert_eq!(&got[..2], &[0.0, 0.0]);
        assert!(
            got[2] > 0.0 && got[2] < 1e-38,
            "e^-88 is subnormal: {}",
            got[2]
        );
        assert!(got[3].is_finite());
        assert_eq!(&got[4..6], &[f32::INFINITY, f32::INFINITY]);
        assert!(got[6].is_nan());
        assert_eq!(got[7], f32::INFINITY);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn bf16_rounding_matches_libtorch() {
        if !available() {
            return;
        }
        let x = Tensor::randn([4096], (Kind::Float, Device::Cpu)) * 100.0;
        let mut xs = Vec::<f32>::try_from(&x).unwrap();
        // Ties to even, both ways, and the largest values before overflow.
        xs.extend([
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            -1.0 - 1.0 / 256.0,
            3.39e38,
            f32::NAN,
        ]);
        let want = Vec::<f32>::try_from(
            Tensor::from_slice(&xs)
                .to_kind(Kind::BFloat16)
                .to_kind(Kind::Float),
        )
        .unwrap();
        // SAFETY: AVX-512 checked by `available()`.
        let got = lanes16(&xs, |v| unsafe { super::x86::round::<Bf16>(v) });
        for ((x, g), w) in xs.iter().zip(&got).zip(&want) {
            assert!(g == w || (g.is_nan() && w.is_nan()), "{x}: {g} vs {w}");
        }
    }

    /// The fused RMSNorm equals HF's operator chain within one bf16 ulp (the mean's summation order),
    /// strided inputs (q/k-norm views) included; f32 is left to aten's kernel.
    #[test]
    fn rms_norm_matches_operator_chain() {
        if !available() {
            return;
        }
        tch::manual_seed(1);
        let kind = Kind::BFloat16;
        {
            for gemma in [false, true] {
                // Contiguous [2, 5, 96] and [2, 5, 100] inputs (100: a masked row tail) and
                // a strided [2, 5, 3, 32] view of a wider tensor.
                let wide = Tensor::randn([2, 5, 160], (Kind::Float, Device::Cpu)).to_kind(kind);
                let cases = [
                    (wide.narrow(2, 0, 96).contiguous(), 96),
                    (wide.narrow(2, 0, 100).contiguous(), 100),
                    (wide.narrow(2, 32, 96).view([2, 5, 3, 32]), 32),
                ];
                for (x, d) in cases {
                    let w = (Tensor::randn([d], (Kind::Float, Device::Cpu)) + 1.0).to_kind(kind);
                    let w = if gemma {
                        w.to_kind(Kind::Float) + 1.0
                    } else {
                        w
                    };
                    let got = rms_norm(&x, &w, gemma, 1e-6).unwrap().unwrap();
                    assert!(got.is_contiguous());
                    // The operator chain of `numerics::RmsNorm` (HF's order).
                    let x32 = x.to_kind(Kind::Float);
                    let var = x32.square().mean_dim(-1, true, Kind::Float);
                    let normed = &x32 * (var + 1e-6).rsqrt();
                    let want = if gemma {
                        (normed * &w).to_kind(kind)
                    } else {
                        &w * normed.to_kind(kind)
                    };
                    let ulps = bf16_ulps(&got, &want);
                    assert!(ulps <= 1, "bf16 gemma={gemma} d={d}: {ulps} ulp");
                }
            }
        }
    }

    /// The fused RoPE equals `numerics::apply_rope` on the transposed view exactly, in f32, in bf16, and
    /// in bf16 written as f32.
    #[test]
    fn rope_matches_apply_rope_bit_for_bit() {
        if !available() {
            return;
        }
        tch::manual_seed(2);
        let spec = crate::config::RopeSpec {
            theta: 10_000.0,
            scaling: crate::config::RopeScaling::None,
        };
        let pos = Tensor::arange(2 * 7, (Kind::Int64, Device::Cpu)).view([2, 7]) + 3;
        // Head size 64, and 20 (half 10: an 8-lane body and a scalar tail).
        for hd in [64i64, 20] {
            let inv = numerics::rope_inv_freq(&spec, hd, Device::Cpu).unwrap();
            for (kind, out_kind) in [
                (Kind::Float, Kind::Float),
                (Kind::BFloat16, Kind::BFloat16),
                (Kind::BFloat16, Kind::Float),
            ] {
                let (cos, sin) = numerics::rope_cos_sin(&inv, &pos, kind).unwrap();
                // A [2, 7, 3, hd] view of a [2, 7, 5 * hd] projection output.
                let proj =
                    (Tensor::randn([2, 7, 5 * hd], (Kind::Float, Device::Cpu)) * 3.0).to_kind(kind);
                let x = proj.narrow(2, hd, 3 * hd).view([2, 7, 3, hd]);
                let got = rope(&x, &cos, &sin, out_kind).unwrap().unwrap();
                assert_eq!(got.size(), [2, 3, 7, hd]);
                assert_eq!(got.kind(), out_kind);
                let want = numerics::apply_rope(&x.transpose(1, 2), &cos, &sin)
                    .unwrap()
                    .to_kind(out_kind);
                assert_eq!(
                    max_diff(&got, &want),
                    0.0,
                    "{kind:?} -> {out_kind:?} hd={hd}"
                );
            }
        }
    }

    /// The fused gated activation equals libtorch's `act(gate) * up` on strided views of one stacked
    /// output: to f32 rounding in f32, within one bf16 ulp in bf16 (the activation's `exp`), in place.
    #[test]
    fn gated_matches_operators() {
        if !available() {
            return;
        }
        tch::manual_seed(3);
        for kind in [Kind::Float, Kind::BFloat16] {
            for act in [Activation::Silu, Activation::GeluTanh] {
                // 203 columns: an 8-lane body and a scalar tail.
                let stacked = (Tensor::randn([3, 4, 2 * 203], (Kind::Float, Device::Cpu)) * 4.0)
                    .to_kind(kind);
                let (g, u) = (stacked.narrow(2, 0, 203), stacked.narrow(2, 203, 203));
                let want = numerics::activate(&g, act).unwrap() * &u;
                // In place in the gate half of a copy of the stacked output.
                let copy = stacked.copy();
                let got = gated(&copy.narrow(2, 0, 203), &copy.narrow(2, 203, 203), act)
                    .unwrap()
                    .unwrap();
                assert_eq!(got.data_ptr(), copy.data_ptr());
                if kind == Kind::Float {
                    let rel = max_diff(&got, &want) / want.abs().max().double_value(&[]);
                    assert!(rel < 1e-6, "{act:?}: {rel}");
                } else {
                    // One bf16 ulp, or 1e-6 absolute times |up| where libtorch's tanh form of GELU
                    // cancels (`1 + tanh(z)` for z < -8 is 0 or 6e-8 in f32; the sigmoid form keeps the
                    // tail: gelu(-5.06) = -1.5e-7 here, 0 there).
                    let (got, want) = (got.to_kind(Kind::Float), want.to_kind(Kind::Float));
                    let tol = want.abs() * (1.0 / 128.0) + u.to_kind(Kind::Float).abs() * 1e-6;
                    let bad = (&got - &want).abs().gt_tensor(&tol).sum(Kind::Int64);
                    assert_eq!(bad.int64_value(&[]), 0, "{act:?}");
                }
            }
        }
    }

    #[test]
    fn declines_what_it_cannot_run() {
        #[cfg(target_arch = "x86_64")]
        assert!(
            available() || !super::x86::supported(),
            "the CPU has AVX-512 and AVX512-BF16 but the kernels are unavailable (libgomp?)"
        );
        let x = Tensor::randn([4, 8], (Kind::Double, Device::Cpu));
        let w = Tensor::ones([8], (Kind::Double, Device::Cpu));
        assert!(rms_norm(&x, &w, false, 1e-6).is_none());
        let x = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let w = Tensor::ones([8], (Kind::Float, Device::Cpu));
        assert!(
            rms_norm(&x, &w, false, 1e-6).is_none(),
            "f32 (aten's kernel)"
        );
        let (x, w) = (x.to_kind(Kind::BFloat16), w.to_kind(Kind::BFloat16));
        assert_eq!(rms_norm(&x, &w, false, 1e-6).is_some(), available(), "bf16");
        let w = Tensor::ones([7], (Kind::BFloat16, Device::Cpu));
        assert!(
            rms_norm(&x, &w, false, 1e-6).is_none(),
            "wrong weight length"
        );
        let g = Tensor::randn([4, 8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        assert!(
            gated(&g, &g.detach(), Activation::Silu).is_none(),
            "autograd"
        );
        assert!(gated(&x, &x, Activation::Gelu).is_none(), "exact gelu");
    }
}
