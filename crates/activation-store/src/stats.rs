//! Running mean and variance per dimension (Welford / Chan's parallel update, in f64).

use crate::error::Result;
use tch::{Device, Kind, Tensor};

/// Per-dimension running mean and variance over rows, accumulated in f64.
///
/// Batches are merged with Chan et al.'s parallel form of Welford's update, which is exact in exact
/// arithmetic and numerically stable (no sum-of-squares cancellation).
#[derive(Debug, Clone, PartialEq)]
pub struct RunningStats {
    count: u64,
    mean: Vec<f64>,
    m2: Vec<f64>,
}

impl RunningStats {
    /// Empty statistics over `dim` dimensions.
    pub fn new(dim: usize) -> Self {
        Self {
            count: 0,
            mean: vec![0.0; dim],
            m2: vec![0.0; dim],
        }
    }

    /// Fold in a batch of rows `[n, dim]` (any dtype and device).
    pub fn update(&mut self, rows: &Tensor) -> Result<()> {
        let size = rows.size();
        if size.len() != 2 || size[1] as usize != self.mean.len() {
            return Err(crate::StoreError::InvalidArgument(format!(
                "statistics over {} dims got rows of shape {size:?}",
                self.mean.len()
            )));
        }
        let n = size[0] as u64;
        if n == 0 {
            return Ok(());
        }
        let x = rows.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?;
        let bmean_t = x.f_mean_dim(0, false, Kind::Double)?;
        let bm2_t = (&x - &bmean_t)
            .f_square()?
            .f_sum_dim_intlist(0, false, Kind::Double)?;
        let bmean = Vec::<f64>::try_from(&bmean_t)?;
        let bm2 = Vec::<f64>::try_from(&bm2_t)?;
        let (na, nb) = (self.count as f64, n as f64);
        let total = na + nb;
        for k in 0..self.mean.len() {
            let delta = bmean[k] - self.mean[k];
            self.mean[k] += delta * nb / total;
            self.m2[k] += bm2[k] + delta * delta * na * nb / total;
        }
        self.count += n;
        Ok(())
    }

    /// Merge statistics gathered elsewhere (another worker, another shard).
    pub fn merge(&mut self, other: &RunningStats) -> Result<()> {
        if other.mean.len() != self.mean.len() {
            return Err(crate::StoreError::InvalidArgument(format!(
                "cannot merge statistics over {} and {} dims",
                self.mean.len(),
                other.mean.len()
            )));
        }
        if other.count == 0 {
            return Ok(());
        }
        let (na, nb) = (self.count as f64, other.count as f64);
        let total = na + nb;
        for k in 0..self.mean.len() {
            let delta = other.mean[k] - self.mean[k];
            self.mean[k] += delta * nb / total;
            self.m2[k] += other.m2[k] + delta * delta * na * nb / total;
        }
        self.count += other.count;
        Ok(())
    }

    /// Rows seen.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Per-dimension mean.
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    /// Per-dimension population variance (divides by `n`; zeros when empty).
    pub fn variance(&self) -> Vec<f64> {
        let n = self.count.max(1) as f64;
        self.m2.iter().map(|m| m / n).collect()
    }

    /// Per-dimension sample variance (divides by `n - 1`; zeros when fewer than two rows).
    pub fn sample_variance(&self) -> Vec<f64> {
        if self.count < 2 {
            return vec![0.0; self.m2.len()];
        }
        let n = (self.count - 1) as f64;
        self.m2.iter().map(|m| m / n).collect()
    }

    /// Per-dimension population standard deviation.
    pub fn std(&self) -> Vec<f64> {
        self.variance().into_iter().map(f64::sqrt).collect()
    }
}
