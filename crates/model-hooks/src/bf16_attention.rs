//! Attention over bf16 queries, keys and values on CPUs with AVX512-BF16, for unpadded batches (causal or
//! fully visible), with grouped-query heads.
//!
//! libtorch's CPU flash attention multiplies bf16 through MKL's mixed-precision GEMM, which on CPUs without
//! AMX converts to f32 and runs sgemm on small blocks: on this project's machine attention took as long in
//! bf16 as in f32, a tenth of a bf16 capture (docs/PERFORMANCE.md). This kernel computes the scores with
//! `vdpbf16ps` (16 dot products of bf16 pairs into f32 per instruction, products exact, sums in f32), the
//! softmax in f32, and `P · V` in f32 with the probabilities kept in f32; the output is rounded to bf16
//! once. Its results differ from libtorch's by summation order (and libtorch rounds the probabilities to
//! bf16 before `P · V`; this kernel does not).
//!
//! Work is split over libtorch's OpenMP pool ([`crate::omp`]) in units of (batch row, key/value head,
//! block of queries): each unit packs the keys it needs into the pair-interleaved layout `vdpbf16ps` reads
//! and converts the values to f32 once, then serves every query head of the group.

use crate::error::Result;
use tch::{Device, Kind, Tensor};

/// Queries per work unit.
const Q_BLOCK: usize = 32;

/// True when this CPU and process can run the kernel: the instructions and thread pool of
/// [`crate::fused`].
pub(crate) fn available() -> bool {
    crate::fused::available()
}

/// Whether [`attention`] takes heads of this size.
pub(crate) fn supports_head_dim(d: i64) -> bool {
    matches!(d, 64 | 128 | 256)
}

/// `softmax(q kᵀ · scale) v` per head, or `None` where the kernel does not apply.
///
/// * `q`: `[B, H, T, D]` bf16, contiguous.
/// * `k`, `v`: `[B, Hkv, S, D]` bf16 with contiguous rows (any other strides: views of a projection or of
///   a KV cache); `H` a multiple of `Hkv`, query head `h` reading key/value head `h / (H / Hkv)`.
/// * `causal`: query `i` sees keys `0..=S - T + i` (the queries are the last `T` positions); otherwise every
///   key.
///
/// Returns `[B, T, H, D]` bf16, contiguous (so `[B, T, H * D]` is a free view).
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal: bool,
    scale: f64,
) -> Option<Result<Tensor>> {
    let (qs, ks) = (q.size(), k.size());
    let [b, h, t, d] = qs[..] else { return None };
    let [kb, hkv, s, kd] = ks[..] else {
        return None;
    };
    let plain = |x: &Tensor| {
        x.device() == Device::Cpu
            && x.kind() == Kind::BFloat16
            && !x.requires_grad()
            && x.stride()[3] == 1
            && x.stride().iter().all(|&st| st >= 0)
    };
    if !available()
        || !supports_head_dim(d)
        || !plain(q)
        || !plain(k)
        || !plain(v)
        || !q.is_contiguous()
        || v.size() != ks
        || kb != b
        || kd != d
        || hkv == 0
        || h % hkv != 0
        || t == 0
        || s < t
    {
        return None;
    }
    let out = match Tensor::f_empty([b, t, h, d], (Kind::BFloat16, Device::Cpu)) {
        Ok(o) => o,
        Err(e) => return Some(Err(e.into())),
    };
    let (kst, vst) = (k.stride(), v.stride());
    let job = Job {
        q: q.data_ptr() as usize,
        k: k.data_ptr() as usize,
        v: v.data_ptr() as usize,
        out: out.data_ptr() as usize,
        b: b as usize,
        h: h as usize,
        hkv: hkv as usize,
        t: t as usize,
        s: s as usize,
        k_strides: [kst[0] as usize, kst[1] as usize, kst[2] as usize],
        v_strides: [vst[0] as usize, vst[1] as usize, vst[2] as usize],
        causal,
        scale: scale as f32,
    };
    #[cfg(target_arch = "x86_64")]
    match d {
        64 => job.run::<64>(),
        128 => job.run::<128>(),
        _ => job.run::<256>(),
    }
    Some(Ok(out))
}

/// One attention call; pointers as addresses (shared read-only, outputs written per unit).
struct Job {
    q: usize,
    k: usize,
    v: usize,
    out: usize,
    b: usize,
    h: usize,
    hkv: usize,
    t: usize,
    s: usize,
    /// Element strides of `k` and `v` along B, Hkv, S.
    k_strides: [usize; 3],
    v_strides: [usize; 3],
    causal: bool,
    scale: f32,
}

#[cfg(target_arch = "x86_64")]
impl Job {
    fn run<const D: usize>(&self) {
        let q_blocks = self.t.div_ceil(Q_BLOCK);
        let units = self.b * self.hkv * q_blocks;
        crate::omp::parallel_for(units, 1, &|range| {
            let mut scratch = x86::Scratch::default();
            for unit in range {
                let (bh, qb) = (unit / q_blocks, unit % q_blocks);
                let (bi, g) = (bh / self.hkv, bh % self.hkv);
                let i0 = qb * Q_BLOCK;
                let i1 = (i0 + Q_BLOCK).min(self.t);
                // SAFETY: `attention` checked dtypes, shapes and strides, and `available()` the CPU; each
                // unit writes only its own query rows of its own heads.
                unsafe { x86::unit::<D>(self, &mut scratch, bi, g, i0, i1) };
            }
        });
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Job;
    use crate::fused::lanes;
    use std::arch::x86_64::*;

    /// Per-thread buffers, reused across units.
    #[derive(Default)]
    pub(super) struct Scratch {
        /// Keys in `vdpbf16ps` layout: per block of 16 keys, per pair `p` of dimensions, 16 lanes of the
        /// two bf16 `(k[j][2p], k[j][2p+1])` as one u32.
        keys: Vec<u32>,
        /// Values in f32, `[keys, D]`.
        values: Vec<f32>,
        /// One query's scores, then probabilities.
        scores: Vec<f32>,
    }

    /// The keys a query at `i` (of `t`, over `s` keys) sees: `0..limit`.
    fn limit(job: &Job, i: usize) -> usize {
        if job.causal {
            job.s - job.t + i + 1
        } else {
            job.s
        }
    }

    /// Queries `i0..i1` of every query head of key/value head `g` in batch row `bi`.
    ///
    /// # Safety
    /// `job` describes valid tensors (see [`super::attention`]); the CPU has AVX-512 and AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")]
    pub(super) unsafe fn unit<const D: usize>(
        job: &Job,
        scratch: &mut Scratch,
        bi: usize,
        g: usize,
        i0: usize,
        i1: usize,
    ) {
        let n_keys = limit(job, i1 - 1);
        let blocks = n_keys.div_ceil(16);
        let pairs = D / 2;
        // SAFETY (whole body): reads stay inside the rows of `k`, `v`, `q` named by the job's shapes and
        // strides; writes inside this unit's rows of `out` and the scratch buffers sized here.
        unsafe {
            // Pack keys 0..n_keys (zero-padded to whole blocks) and convert values.
            scratch.keys.clear();
            scratch.keys.resize(blocks * pairs * 16, 0);
            scratch.values.clear();
            scratch.values.resize(n_keys * D, 0.0);
            scratch.scores.resize(blocks * 16, 0.0);
            let kbase = (job.k as *const u16).add(bi * job.k_strides[0] + g * job.k_strides[1]);
            let vbase = (job.v as *const u16).add(bi * job.v_strides[0] + g * job.v_strides[1]);
            for j in 0..n_keys {
                let krow = kbase.add(j * job.k_strides[2]) as *const u32;
                let (blk, lane) = (j / 16, j % 16);
                let dst = scratch.keys.as_mut_ptr().add(blk * pairs * 16 + lane);
                for p in 0..pairs {
                    *dst.add(p * 16) = krow.add(p).read_unaligned();
                }
                let vrow = vbase.add(j * job.v_strides[2]);
                let vdst = scratch.values.as_mut_ptr().add(j * D);
                let mut c = 0;
                while c < D {
                    let h = _mm256_loadu_si256(vrow.add(c) as *const __m256i);
                    let f = _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h));
                    _mm512_storeu_ps(vdst.add(c), _mm512_castsi512_ps(f));
                    c += 16;
                }
            }
            let group = job.h / job.hkv;
            for hh in g * group..(g + 1) * group {
                for i in i0..i1 {
                    let q = (job.q as *const u16).add(((bi * job.h + hh) * job.t + i) * D);
                    let out = (job.out as *mut u16).add(((bi * job.t + i) * job.h + hh) * D);
                    row::<D>(job, scratch, q, out, limit(job, i));
                }
            }
        }
    }

    /// One query row against keys `0..n`.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")]
    unsafe fn row<const D: usize>(
        job: &Job,
        scratch: &mut Scratch,
        q: *const u16,
        out: *mut u16,
        n: usize,
    ) {
        let pairs = D / 2;
        let blocks = n.div_ceil(16);
        let q32 = q as *const u32;
        let keys = scratch.keys.as_ptr();
        let scores = scratch.scores.as_mut_ptr();
        let scale = _mm512_set1_ps(job.scale);
        // SAFETY (whole body): `keys` holds at least `blocks` packed blocks, `scores` `blocks * 16` floats,
        // `values` `n` rows of `D`; `q` and `out` rows of `D`.
        unsafe {
            // Scores, four key blocks at a time (independent accumulators hide the instruction's latency).
            let mut blk = 0;
            while blk < blocks {
                let nb = (blocks - blk).min(4);
                let mut acc = [_mm512_setzero_ps(); 4];
                for p in 0..pairs {
                    let a = bh(_mm512_set1_epi32(q32.add(p).read_unaligned() as i32));
                    for (u, acc) in acc.iter_mut().enumerate().take(nb) {
                        let kv =
                            _mm512_loadu_si512(keys.add(((blk + u) * pairs + p) * 16) as *const _);
                        *acc = _mm512_dpbf16_ps(*acc, a, bh(kv));
                    }
                }
                for (u, acc) in acc.iter().enumerate().take(nb) {
                    _mm512_storeu_ps(scores.add((blk + u) * 16), _mm512_mul_ps(*acc, scale));
                }
                blk += nb;
            }
            // Softmax over 0..n in f32.
            let mut mx = _mm512_set1_ps(f32::NEG_INFINITY);
            let mut j = 0;
            while j < n {
                let m = lanes(j, n);
                mx = _mm512_mask_max_ps(mx, m, mx, _mm512_loadu_ps(scores.add(j)));
                j += 16;
            }
            let mx = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
            let mut sum = _mm512_setzero_ps();
            let mut j = 0;
            while j < n {
                let m = lanes(j, n);
                let e = crate::fused::exp16(_mm512_sub_ps(_mm512_loadu_ps(scores.add(j)), mx));
                let e = _mm512_maskz_mov_ps(m, e);
                _mm512_storeu_ps(scores.add(j), e);
                sum = _mm512_add_ps(sum, e);
                j += 16;
            }
            let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
            // P · V in f32: two sets of accumulators over alternate keys.
            const MAX_CHUNKS: usize = 16;
            let chunks = D / 16;
            let mut acc0 = [_mm512_setzero_ps(); MAX_CHUNKS];
            let mut acc1 = [_mm512_setzero_ps(); MAX_CHUNKS];
            let values = scratch.values.as_ptr();
            let mut j = 0;
            while j + 1 < n {
                let (p0, p1) = (
                    _mm512_set1_ps(*scores.add(j)),
                    _mm512_set1_ps(*scores.add(j + 1)),
                );
                let (v0, v1) = (values.add(j * D), values.add((j + 1) * D));
                for c in 0..chunks {
                    acc0[c] = _mm512_fmadd_ps(p0, _mm512_loadu_ps(v0.add(16 * c)), acc0[c]);
                    acc1[c] = _mm512_fmadd_ps(p1, _mm512_loadu_ps(v1.add(16 * c)), acc1[c]);
                }
                j += 2;
            }
            if j < n {
                let p0 = _mm512_set1_ps(*scores.add(j));
                let v0 = values.add(j * D);
                for (c, acc) in acc0.iter_mut().enumerate().take(chunks) {
                    *acc = _mm512_fmadd_ps(p0, _mm512_loadu_ps(v0.add(16 * c)), *acc);
                }
            }
            for c in 0..chunks {
                let o = _mm512_mul_ps(_mm512_add_ps(acc0[c], acc1[c]), inv);
                let b = std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(o));
                _mm256_storeu_si256(out.add(16 * c) as *mut __m256i, b);
            }
        }
    }

    /// The 512 bits of `x` as 32 bf16.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")]
    fn bh(x: __m512i) -> __m512bh {
        // SAFETY: same size, any bit pattern is a valid value of either.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(x) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against libtorch's SDPA on the same bf16 inputs (computed in f32): causal with and without earlier
    /// keys, fully visible, grouped and plain heads, every supported head size, lengths off the block sizes,
    /// keys and values as strided views.
    #[test]
    fn matches_sdpa() {
        if !available() {
            assert!(
                !cfg!(target_arch = "x86_64") || !is_x86_feature_detected!("avx512bf16"),
                "AVX512-BF16 present but the kernel is unavailable"
            );
            return;
        }
        tch::manual_seed(7);
        let o = (Kind::Float, Device::Cpu);
        for &(b, h, hkv, t, s, d, causal) in &[
            (2i64, 3i64, 1i64, 37i64, 37i64, 64i64, true),
            (1, 4, 4, 70, 70, 128, true),
            (2, 2, 1, 5, 21, 256, true),
            (1, 6, 2, 33, 33, 64, false),
            (3, 9, 3, 128, 128, 64, true),
        ] {
            let q = (Tensor::randn([b, h, t, d], o) * 2.0).to_kind(Kind::BFloat16);
            // Keys and values as views of one [B, S, 2 * Hkv, D] projection output.
            let kv = (Tensor::randn([b, s, 2 * hkv, d], o) * 2.0).to_kind(Kind::BFloat16);
            let k = kv.narrow(2, 0, hkv).transpose(1, 2);
            let v = kv.narrow(2, hkv, hkv).transpose(1, 2);
            let scale = 1.0 / (d as f64).sqrt();
            let got = attention(&q, &k, &v, causal, scale).unwrap().unwrap();
            assert_eq!(got.size(), [b, t, h, d]);
            let f = |x: &Tensor| x.to_kind(Kind::Float);
            let mask = causal.then(|| {
                let qi = Tensor::arange_start(s - t, s, (Kind::Int64, Device::Cpu)).view([t, 1]);
                let kj = Tensor::arange(s, (Kind::Int64, Device::Cpu)).view([1, s]);
                kj.le_tensor(&qi)
            });
            let want = Tensor::scaled_dot_product_attention(
                &f(&q),
                &f(&k),
                &f(&v),
                mask.as_ref(),
                0.0,
                false,
                Some(scale),
                h != hkv,
            )
            .transpose(1, 2);
            let err = (f(&got) - &want).abs();
            let tol = want.abs() / 128.0 + 2e-3;
            let bad = err.gt_tensor(&tol).sum(Kind::Int64).int64_value(&[]);
            assert_eq!(
                bad,
                0,
                "b={b} h={h} hkv={hkv} t={t} s={s} d={d} causal={causal}: max err {}",
                err.max().double_value(&[])
            );
        }
    }

    #[test]
    fn declines_what_it_cannot_run() {
        let o = (Kind::BFloat16, Device::Cpu);
        let q = Tensor::zeros([1, 2, 4, 48], o);
        let k = Tensor::zeros([1, 1, 4, 48], o);
        assert!(attention(&q, &k, &k, true, 1.0).is_none(), "head size 48");
        let q = Tensor::zeros([1, 3, 4, 64], o);
        let k = Tensor::zeros([1, 2, 4, 64], o);
        assert!(attention(&q, &k, &k, true, 1.0).is_none(), "3 heads over 2");
        let q = Tensor::zeros([1, 2, 4, 64], (Kind::Float, Device::Cpu));
        let k = Tensor::zeros([1, 2, 4, 64], (Kind::Float, Device::Cpu));
        assert!(attention(&q, &k, &k, true, 1.0).is_none(), "f32");
    }
}
