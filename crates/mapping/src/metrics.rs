//! Fidelity of a map on held-out rows: MSE, mean cosine similarity, FVU and R², accumulated in f64 over
//! streamed batches.
//!
//! Definitions (`n` rows, `d` target dims, prediction `ŷ`, truth `y`, `ȳ` the mean of `y` over the rows):
//! - `mse = Σ (ŷ - y)² / (n d)` (PyTorch `MSELoss`, the paper's training loss);
//! - `cosine = mean over rows of cos(ŷ_i, y_i)`;
//! - `fvu = Σ ||ŷ_i - y_i||² / Σ ||y_i - ȳ||²` (the paper's fraction of variance unexplained; the mean
//!   predictor scores 1);
//! - `r2 = mean over dims j with nonzero variance of 1 - Σ_i (ŷ_ij - y_ij)² / Σ_i (y_ij - ȳ_j)²`
//!   (scikit-learn's `r2_score`, uniform average). `1 - fvu` is the variance-weighted R².
//! - `cosine_std = mean over rows of cos(z(ŷ_i), z(y_i))` with `z(v)_j = (v_j - μ_j) / σ_j` and `μ`, `σ`
//!   given per dimension (the training split's statistics, [`MetricsAccumulator::with_standardization`]):
//!   the cosine in the space where every dimension counts alike. Residual streams have a few outlier
//!   dimensions of huge magnitude that dominate the raw cosine and FVU; a map can score well on those
//!   and still miss the small dimensions a steering direction lives in. `None` without statistics.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{MappingError, Result};

/// Fidelity metrics over a set of rows; see the [module docs](self) for the formulas.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Rows evaluated.
    pub rows: u64,
    /// Mean squared error per element.
    pub mse: f64,
    /// Mean cosine similarity per row.
    pub cosine: f64,
    /// Fraction of variance unexplained.
    pub fvu: f64,
    /// Coefficient of determination, uniform average over dimensions.
    pub r2: f64,
    /// Mean cosine similarity per row after per-dimension standardisation (see the module docs); `None`
    /// when no statistics were given.
    #[serde(default)]
    pub cosine_std: Option<f64>,
}

/// Streaming accumulator for [`Metrics`].
#[derive(Debug)]
pub struct MetricsAccumulator {
    d: i64,
    rows: u64,
    cos_sum: f64,
    /// Per-dim mean and 1/std of the standardisation (f64, `[d]`) and Σ of standardised cosines.
    standardize: Option<(Tensor, Tensor)>,
    cos_std_sum: f64,
    /// Per-dim Σ (ŷ - y)², Σ y, Σ y² (f64, on the device of the first batch).
    sse: Option<Tensor>,
    sum_y: Option<Tensor>,
    sum_y2: Option<Tensor>,
}

impl MetricsAccumulator {
    /// For target width `d_tgt`.
    pub fn new(d_tgt: i64) -> Self {
        Self {
            d: d_tgt,
            rows: 0,
            cos_sum: 0.0,
            standardize: None,
            cos_std_sum: 0.0,
            sse: None,
            sum_y: None,
            sum_y2: None,
        }
    }

    /// Also measure [`Metrics::cosine_std`] with per-dimension `mean` and `std` (`[d_tgt]`; dimensions
    /// whose `std` is 0 or not finite are left unscaled).
    pub fn with_standardization(mut self, mean: &Tensor, std: &Tensor) -> Result<Self> {
        let want = [self.d];
        if mean.size() != want || std.size() != want {
            return Err(MappingError::Shape(format!(
                "standardisation: mean {:?} and std {:?} for a target of width {}",
                mean.size(),
                std.size(),
                self.d
            )));
        }
        let mean = mean.f_to_kind(Kind::Double)?;
        let std = std.f_to_kind(Kind::Double)?;
        let ok = std.f_gt(0.0)?.f_logical_and(&std.f_isfinite()?)?;
        let inv = std.f_reciprocal()?.f_where_self(&ok, &std.f_ones_like()?)?;
        self.standardize = Some((mean, inv));
        Ok(self)
    }

    /// Add a batch: `pred` and `y` `[n, d_tgt]` (any float dtype; `y` is moved to `pred`'s device).
    pub fn update(&mut self, pred: &Tensor, y: &Tensor) -> Result<()> {
        let _g = tch::no_grad_guard();
        let (ps, ys) = (pred.size(), y.size());
        if ps.len() != 2 || ps != ys || ps[1] != self.d {
            return Err(MappingError::Shape(format!(
                "metrics: prediction {ps:?} and target {ys:?} (expected equal [n, {}])",
                self.d
            )));
        }
        if ps[0] == 0 {
            return Ok(());
        }
        let p = pred.f_to_kind(Kind::Double)?;
        let t = y.f_to_device(pred.device())?.f_to_kind(Kind::Double)?;
        let err = p.f_sub(&t)?;
        let sse = err
            .f_square()?
            .f_sum_dim_intlist([0i64].as_slice(), false, None)?;
        let sy = t.f_sum_dim_intlist([0i64].as_slice(), false, None)?;
        let sy2 = t
            .f_square()?
            .f_sum_dim_intlist([0i64].as_slice(), false, None)?;
        let cos = Tensor::f_cosine_similarity(&p, &t, 1, 1e-12)?.f_sum(None)?;
        self.cos_sum += cos.f_double_value(&[])?;
        if let Some((mean, inv)) = &self.standardize {
            let (mean, inv) = (mean.f_to_device(p.device())?, inv.f_to_device(p.device())?);
            let zp = p.f_sub(&mean)?.f_mul(&inv)?;
            let zt = t.f_sub(&mean)?.f_mul(&inv)?;
            let c = Tensor::f_cosine_similarity(&zp, &zt, 1, 1e-12)?.f_sum(None)?;
            self.cos_std_sum += c.f_double_value(&[])?;
        }
        self.rows += ps[0] as u64;
        let acc = |slot: &mut Option<Tensor>, v: Tensor| -> Result<()> {
            match slot {
                Some(s) => {
                    let _ = s.f_add_(&v)?;
                }
                None => *slot = Some(v),
            }
            Ok(())
        };
        acc(&mut self.sse, sse)?;
        acc(&mut self.sum_y, sy)?;
        acc(&mut self.sum_y2, sy2)?;
        Ok(())
    }

    /// Rows seen so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The metrics over everything added (an error when no rows were added).
    pub fn finish(&self) -> Result<Metrics> {
        let (Some(sse), Some(sy), Some(sy2)) = (&self.sse, &self.sum_y, &self.sum_y2) else {
            return Err(MappingError::Config(
                "metrics over zero rows (is the validation split empty?)".into(),
            ));
        };
        let n = self.rows as f64;
        let sse: Vec<f64> = Vec::try_from(&sse.f_to_device(tch::Device::Cpu)?)?;
        let sy: Vec<f64> = Vec::try_from(&sy.f_to_device(tch::Device::Cpu)?)?;
        let sy2: Vec<f64> = Vec::try_from(&sy2.f_to_device(tch::Device::Cpu)?)?;
        let sst: Vec<f64> = sy
            .iter()
            .zip(&sy2)
            .map(|(s, s2)| (s2 - s * s / n).max(0.0))
            .collect();
        let sse_total: f64 = sse.iter().sum();
        let sst_total: f64 = sst.iter().sum();
        let max_sst = sst.iter().cloned().fold(0.0, f64::max);
        let (mut r2_sum, mut r2_n) = (0.0, 0usize);
        for (e, v) in sse.iter().zip(&sst) {
            // Dims whose variance is at rounding level carry no signal (sklearn skips exact zeros).
            if *v > max_sst * 1e-12 && *v > 0.0 {
                r2_sum += 1.0 - e / v;
                r2_n += 1;
            }
        }
        Ok(Metrics {
            rows: self.rows,
            mse: sse_total / (n * self.d as f64),
            cosine: self.cos_sum / n,
            fvu: if sst_total > 0.0 {
                sse_total / sst_total
            } else {
                f64::NAN
            },
            r2: if r2_n > 0 {
                r2_sum / r2_n as f64
            } else {
                f64::NAN
            },
            cosine_std: self.standardize.as_ref().map(|_| self.cos_std_sum / n),
        })
    }
}

/// Metrics of `pred` against `y` (`[n, d]`) in one call.
pub fn metrics(pred: &Tensor, y: &Tensor) -> Result<Metrics> {
    let d = *pred
        .size()
        .last()
        .ok_or_else(|| MappingError::Shape("metrics of a scalar".into()))?;
    let mut acc = MetricsAccumulator::new(d);
    acc.update(pred, y)?;
    acc.finish()
}
