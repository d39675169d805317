//! Closed-form maps: ridge regression and orthogonal Procrustes, fitted from one streamed pass over the
//! data.
//!
//! Both solve from the same sufficient statistics, [`CrossMoments`]: row count, sums of `x` and `y`, `XᵀX`
//! and `XᵀY`, accumulated in f64. Each batch is shifted by a reference row mean (the first batch's) before
//! its products are taken, so the centred moments do not suffer cancellation when activations have a large
//! mean (residual streams do). The per-batch products run in f32 by default (the 896 -> 1536 fit over 1M rows
//! then takes seconds, not minutes; each batch's product is exact to f32 rounding, the sum over batches is
//! f64) or in f64 ([`Precision::F64`], about twice slower on CPU).

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{MappingError, Result};
use crate::map::{Affine, MapKind};

/// Precision of each batch's `XᵀX`, `XᵀY` products (the running sums are f64 either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 products, f64 sums (default).
    #[default]
    F32,
    /// f64 products and sums.
    F64,
}

impl Precision {
    fn kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::F64 => Kind::Double,
        }
    }
}

/// Sufficient statistics of paired rows for least-squares fits.
#[derive(Debug)]
pub struct CrossMoments {
    d_src: i64,
    d_tgt: i64,
    precision: Precision,
    device: Device,
    n: u64,
    /// Reference shift (f64) subtracted from every row before the products.
    shift_x: Option<Tensor>,
    shift_y: Option<Tensor>,
    sum_x: Tensor,
    sum_y: Tensor,
    xtx: Tensor,
    xty: Tensor,
    /// Σ ||y - shift_y||² (for Procrustes' residual report).
    yty_trace: f64,
}

impl CrossMoments {
    /// Empty statistics for `d_src -> d_tgt` rows; products are computed on `device`.
    pub fn new(d_src: i64, d_tgt: i64, precision: Precision, device: Device) -> Result<Self> {
        if d_src <= 0 || d_tgt <= 0 {
            return Err(MappingError::Config(format!(
                "fit dims must be > 0, got {d_src} -> {d_tgt}"
            )));
        }
        let o = (Kind::Double, device);
        Ok(Self {
            d_src,
            d_tgt,
            precision,
            device,
            n: 0,
            shift_x: None,
            shift_y: None,
            sum_x: Tensor::f_zeros([d_src], o)?,
            sum_y: Tensor::f_zeros([d_tgt], o)?,
            xtx: Tensor::f_zeros([d_src, d_src], o)?,
            xty: Tensor::f_zeros([d_src, d_tgt], o)?,
            yty_trace: 0.0,
        })
    }

    /// Rows accumulated.
    pub fn rows(&self) -> u64 {
        self.n
    }

    /// Add paired rows `x` `[n, d_src]`, `y` `[n, d_tgt]` (any float dtype, any device).
    pub fn update(&mut self, x: &Tensor, y: &Tensor) -> Result<()> {
        let _g = tch::no_grad_guard();
        let (xs, ys) = (x.size(), y.size());
        if xs.len() != 2
            || ys.len() != 2
            || xs[0] != ys[0]
            || xs[1] != self.d_src
            || ys[1] != self.d_tgt
        {
            return Err(MappingError::Shape(format!(
                "fit: x {xs:?} and y {ys:?} (expected [n, {}] and [n, {}])",
                self.d_src, self.d_tgt
            )));
        }
        if xs[0] == 0 {
            return Ok(());
        }
        let k = self.precision.kind();
        let x = x.f_to_device(self.device)?;
        let y = y.f_to_device(self.device)?;
        if self.shift_x.is_none() {
            let dim = [0i64];
            self.shift_x = Some(x.f_to_kind(Kind::Double)?.f_mean_dim(
                dim.as_slice(),
                false,
                None,
            )?);
            self.shift_y = Some(y.f_to_kind(Kind::Double)?.f_mean_dim(
                dim.as_slice(),
                false,
                None,
            )?);
        }
        let (Some(shx), Some(shy)) = (&self.shift_x, &self.shift_y) else {
            return Err(MappingError::Fit("internal: shift not set".into()));
        };
        // Shift in f64, then products in the chosen precision.
        let xc = x.f_to_kind(Kind::Double)?.f_sub(shx)?.f_to_kind(k)?;
        let yc = y.f_to_kind(Kind::Double)?.f_sub(shy)?.f_to_kind(k)?;
        let xt = xc.f_transpose(0, 1)?;
        let _ = self
            .xtx
            .f_add_(&xt.f_matmul(&xc)?.f_to_kind(Kind::Double)?)?;
        let _ = self
            .xty
            .f_add_(&xt.f_matmul(&yc)?.f_to_kind(Kind::Double)?)?;
        let dim = [0i64];
        let _ = self
            .sum_x
            .f_add_(&xc.f_to_kind(Kind::Double)?.f_sum_dim_intlist(
                dim.as_slice(),
                false,
                None,
            )?)?;
        let yc64 = yc.f_to_kind(Kind::Double)?;
        let _ = self
            .sum_y
            .f_add_(&yc64.f_sum_dim_intlist(dim.as_slice(), false, None)?)?;
        self.yty_trace += yc64.f_square()?.f_sum(None)?.f_double_value(&[])?;
        self.n += xs[0] as u64;
        Ok(())
    }

    /// Centred statistics: (mean_x, mean_y, Sxx = Σ (x - x̄)(x - x̄)ᵀ, Sxy = Σ (x - x̄)(y - ȳ)ᵀ), f64.
    fn centred(&self) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        if self.n < 2 {
            return Err(MappingError::Fit(format!(
                "need at least 2 rows, got {}",
                self.n
            )));
        }
        let (Some(shx), Some(shy)) = (&self.shift_x, &self.shift_y) else {
            return Err(MappingError::Fit("no rows".into()));
        };
        let n = self.n as f64;
        let mx = self.sum_x.f_div_scalar(n)?; // mean of shifted x
        let my = self.sum_y.f_div_scalar(n)?;
        let sxx = self.xtx.f_sub(&mx.f_outer(&mx)?.f_mul_scalar(n)?)?;
        let sxy = self.xty.f_sub(&mx.f_outer(&my)?.f_mul_scalar(n)?)?;
        Ok((mx.f_add(shx)?, my.f_add(shy)?, sxx, sxy))
    }
}

/// Options of [`fit_ridge`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RidgeOptions {
    /// Penalty `λ` on `||W||²_F` (the bias is not penalised). With `relative = true` the penalty is
    /// `alpha * trace(Sxx) / d_src`, i.e. relative to the mean variance times the row count, so the same
    /// value suits any activation scale and store size.
    pub alpha: f64,
    /// Interpret `alpha` relative to the data's scale (default) or as an absolute `λ` (scikit-learn's
    /// `Ridge(alpha)` with an intercept).
    pub relative: bool,
}

impl Default for RidgeOptions {
    fn default() -> Self {
        Self {
            alpha: 1e-4,
            relative: true,
        }
    }
}

/// Ridge regression: the affine `y = W x + b` minimising `Σ ||y - W x - b||² + λ ||W||²_F`, solved by
/// Cholesky from the centred normal equations `(Sxx + λ I) Wᵀ = Sxy`, `b = ȳ - W x̄` (f64), returned as an
/// f32 [`Affine`] of kind [`MapKind::Ridge`] on `device`.
pub fn fit_ridge(m: &CrossMoments, options: &RidgeOptions, device: Device) -> Result<Affine> {
    let _g = tch::no_grad_guard();
    if !(options.alpha >= 0.0 && options.alpha.is_finite()) {
        return Err(MappingError::Config(format!(
            "ridge alpha must be finite and >= 0, got {}",
            options.alpha
        )));
    }
    let (mx, my, sxx, sxy) = m.centred()?;
    let lambda = if options.relative {
        options.alpha * sxx.f_trace()?.f_double_value(&[])? / m.d_src as f64
    } else {
        options.alpha
    };
    let eye = Tensor::f_eye(m.d_src, (Kind::Double, sxx.device()))?;
    let a = sxx.f_add(&eye.f_mul_scalar(lambda)?)?;
    let (l, info) = a.f_linalg_cholesky_ex(false, false)?;
    let info = info.f_int64_value(&[])?;
    if info != 0 {
        return Err(MappingError::Fit(format!(
            "the regularised covariance of x is not positive definite (leading minor {info} of {} fails; \
             rows = {}, λ = {lambda:e}); increase the ridge alpha or add rows",
            m.d_src, m.n
        )));
    }
    let wt = sxy.f_cholesky_solve(&l, false)?; // [d_src, d_tgt]
    let w = wt.f_transpose(0, 1)?.f_contiguous()?; // [d_tgt, d_src]
    let b = my.f_sub(&w.f_matmul(&mx)?)?;
    if w.f_isfinite()?.f_all()?.f_int64_value(&[])? == 0 {
        return Err(MappingError::Fit("ridge solution is not finite".into()));
    }
    Affine::from_parts(
        MapKind::Ridge,
        w.f_to_device(device)?,
        b.f_to_device(device)?,
    )
}

/// Options of [`fit_procrustes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProcrustesOptions {
    /// Also fit a global scale `s` (`y ≈ s R x + b`); otherwise `s = 1`.
    pub scaling: bool,
}

/// Orthogonal Procrustes (`d_src == d_tgt`): the rotation `R` (and optional scale `s`) minimising
/// `Σ ||(y - ȳ) - s R (x - x̄)||²`, from the SVD of `Sxy`: `Sxy = U Σ Vᵀ`, `R = V Uᵀ`,
/// `s = trace(Σ) / trace(Sxx)`; `b = ȳ - s R x̄`. Returned as an [`Affine`] of kind
/// [`MapKind::Procrustes`].
pub fn fit_procrustes(
    m: &CrossMoments,
    options: &ProcrustesOptions,
    device: Device,
) -> Result<Affine> {
    let _g = tch::no_grad_guard();
    if m.d_src != m.d_tgt {
        return Err(MappingError::Config(format!(
            "Procrustes needs equal widths, got {} -> {} (use ridge or an autoencoder)",
            m.d_src, m.d_tgt
        )));
    }
    let (mx, my, sxx, sxy) = m.centred()?;
    // `torch.svd` returns V (not Vᵀ); tch's `linalg_svd` cannot pass "no driver" on CPU.
    let (u, s, v) = sxy.f_svd(true, true)?;
    let r = v.f_matmul(&u.f_transpose(0, 1)?)?; // V Uᵀ: y = R x
    let scale = if options.scaling {
        let tr = sxx.f_trace()?.f_double_value(&[])?;
        if tr <= 0.0 {
            return Err(MappingError::Fit("x has zero variance".into()));
        }
        s.f_sum(None)?.f_double_value(&[])? / tr
    } else {
        1.0
    };
    let w = r.f_mul_scalar(scale)?;
    let b = my.f_sub(&w.f_matmul(&mx)?)?;
    Affine::from_parts(
        MapKind::Procrustes,
        w.f_to_device(device)?,
        b.f_to_device(device)?,
    )
}
