//! `y = x Wᵀ + b` for a few rows of `x` (decoding) in f32 on x86-64 CPUs with AVX2 and FMA.
//!
//! A decoding step multiplies 1-16 rows by every weight matrix of the model once, so its time is the time to
//! stream the weights from memory. MKL's and oneDNN's GEMMs are built for many rows and pull weights at only
//! 8-14 GB/s at 8 rows on this project's 2-core machine (a plain read runs at 34 GB/s); this kernel walks the
//! weight rows in order, three at a time against four input rows held in registers, and prefetches a few
//! blocks ahead, which reaches ~17 GB/s (docs/PERFORMANCE.md).
//!
//! Work is split over libtorch's own OpenMP thread pool ([`crate::omp`]), so no second pool competes with
//! libtorch's spinning worker for the cores. Where any of this is missing (another architecture, no
//! AVX2/FMA, no libgomp), [`available`] is false and callers use libtorch's matmul.

use std::sync::OnceLock;

/// Most rows this kernel takes; more rows are better served by a blocked GEMM.
pub(crate) const MAX_ROWS: i64 = 16;

/// Rows of `W` per block, and input rows per register tile.
const W_ROWS: usize = 3;
const X_ROWS: usize = 4;
/// Blocks of `W` prefetched ahead of the one being multiplied.
const PREFETCH_BLOCKS: usize = 4;

/// True when this CPU and process can run the kernel.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && crate::omp::available()
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One product: `y[m, n] = x[m, k] · w[n, k]ᵀ + b[n]`, all contiguous row-major f32.
struct Job {
    x: *const f32,
    w: *const f32,
    b: *const f32,
    y: *mut f32,
    m: usize,
    n: usize,
    k: usize,
}

// SAFETY: a `Job` is only read while `linear` runs; the threads it is shared with write disjoint columns of
// `y` and nothing else.
unsafe impl Sync for Job {}

/// `y = x wᵀ + b` with `x` `[m, k]`, `w` `[n, k]`, `b` `[n]` (or none), `y` `[m, n]`.
///
/// Requires [`available`], `1 <= m <= MAX_ROWS` and `k % 8 == 0`; callers check.
///
/// # Safety
/// `x`, `w`, `b` (when non-null) and `y` must point to contiguous buffers of the stated sizes, `y` not
/// overlapping the others.
pub(crate) unsafe fn linear(
    x: *const f32,
    w: *const f32,
    b: *const f32,
    y: *mut f32,
    m: usize,
    n: usize,
    k: usize,
) {
    let job = Job {
        x,
        w,
        b,
        y,
        m,
        n,
        k,
    };
    // Each thread takes a contiguous range of whole column blocks.
    crate::omp::parallel_for(n, W_ROWS, &|cols| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `available()` checked AVX2 and FMA (callers check it before calling `linear`); the range
        // is in bounds, and each thread writes its own columns of `y`.
        unsafe {
            x86::columns(&job, cols.start, cols.end)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (&job, cols);
    });
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Job, PREFETCH_BLOCKS, W_ROWS, X_ROWS};
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Columns `j0..j1` of `y` for all rows.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn columns(job: &Job, j0: usize, j1: usize) {
        let mut j = j0;
        while j < j1 {
            let c = (j1 - j).min(W_ROWS);
            let mut r = 0;
            while r < job.m {
                let rr = (job.m - r).min(X_ROWS);
                // SAFETY: rows r..r+rr of x and y, columns j..j+c of w and y, are in bounds.
                unsafe {
                    match (rr, c) {
                        (4, 3) => tile::<4, 3>(job, r, j),
                        (3, 3) => tile::<3, 3>(job, r, j),
                        (2, 3) => tile::<2, 3>(job, r, j),
                        (1, 3) => tile::<1, 3>(job, r, j),
                        (4, 2) => tile::<4, 2>(job, r, j),
                        (3, 2) => tile::<3, 2>(job, r, j),
                        (2, 2) => tile::<2, 2>(job, r, j),
                        (1, 2) => tile::<1, 2>(job, r, j),
                        (4, _) => tile::<4, 1>(job, r, j),
                        (3, _) => tile::<3, 1>(job, r, j),
                        (2, _) => tile::<2, 1>(job, r, j),
                        _ => tile::<1, 1>(job, r, j),
                    }
                }
                r += rr;
            }
            j += c;
        }
    }

    /// `R` input rows from `r` times `C` weight rows from `j`, accumulated over `k` in 8-lane registers.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize, const C: usize>(job: &Job, r: usize, j: usize) {
        let k = job.k;
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        // SAFETY (whole body): pointers stay inside x rows r..r+R, w rows j..j+C (prefetches may point past
        // the end, which is harmless), and y[r..r+R, j..j+C].
        unsafe {
            let x = job.x.add(r * k);
            let w = job.w.add(j * k);
            let ahead = PREFETCH_BLOCKS * W_ROWS * k;
            let mut kk = 0;
            while kk < k {
                if kk % 16 == 0 && r == 0 {
                    for c in 0..C {
                        let p = w.wrapping_add(c * k + kk + ahead);
                        _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
                    }
                }
                let mut wv = [_mm256_setzero_ps(); C];
                for (c, v) in wv.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(w.add(c * k + kk));
                }
                for (i, row) in acc.iter_mut().enumerate() {
                    let xv = _mm256_loadu_ps(x.add(i * k + kk));
                    for (a, v) in row.iter_mut().zip(&wv) {
                        *a = _mm256_fmadd_ps(xv, *v, *a);
                    }
                }
                kk += 8;
            }
            for (i, row) in acc.iter().enumerate() {
                for (c, a) in row.iter().enumerate() {
                    let bias = if job.b.is_null() {
                        0.0
                    } else {
                        *job.b.add(j + c)
                    };
                    *job.y.add((r + i) * job.n + j + c) = hsum(*a) + bias;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    /// Every tile shape (rows 1-16 against 1-3 weight rows per block, with and without bias) matches
    /// libtorch's `linear` to float rounding.
    #[test]
    fn matches_linear_for_every_tile_shape() {
        assert!(
            super::available() || !cfg!(target_arch = "x86_64"),
            "AVX2/FMA or libgomp missing on an x86-64 test machine"
        );
        if !super::available() {
            return;
        }
        tch::manual_seed(0);
        let o = (Kind::Float, Device::Cpu);
        for &(n, k) in &[
            (1i64, 8i64),
            (2, 16),
            (3, 64),
            (7, 64),
            (100, 576),
            (1001, 136),
        ] {
            let w = Tensor::randn([n, k], o);
            let b = Tensor::randn([n], o);
            for m in 1..=super::MAX_ROWS {
                let x = Tensor::randn([m, k], o);
                for bias in [None, Some(&b)] {
                    let want = x.linear(&w, bias);
                    let got = Tensor::empty([m, n], o);
                    // SAFETY: contiguous f32 buffers of the stated shapes.
                    unsafe {
                        super::linear(
                            x.data_ptr() as *const f32,
                            w.data_ptr() as *const f32,
                            bias.map_or(std::ptr::null(), |b| b.data_ptr() as *const f32),
                            got.data_ptr() as *mut f32,
                            m as usize,
                            n as usize,
                            k as usize,
                        )
                    };
                    let err = (&got - &want).abs().max().double_value(&[]);
                    assert!(
                        err < 1e-4,
                        "m={m} n={n} k={k} bias={}: {err}",
                        bias.is_some()
                    );
                }
            }
        }
    }
}
