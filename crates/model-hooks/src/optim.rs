//! AdamW over plain tensors, with exactly `torch.optim.AdamW`'s arithmetic: the optimiser every Rosetta
//! trainer uses (maps in `rosetta-mapping`, LoRA and full fine-tuning in `rosetta-tasks`).

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{HookError, Result};

/// AdamW hyper-parameters (defaults: the paper's lr 1e-4, PyTorch's betas, eps and weight decay 0.01).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// Learning rate (peak, for schedules).
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// AdamW state: first and second moments per parameter and the step count.
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// One reusable buffer per parameter (`g²`, then the denominator): a step allocates nothing.
    scratch: Vec<Tensor>,
    step: u64,
}

impl AdamW {
    /// Fresh state for `params`.
    pub fn new(config: AdamWConfig, params: &[Tensor]) -> Result<Self> {
        let z = |p: &Tensor| p.f_zeros_like();
        Ok(Self {
            config,
            m: params
                .iter()
                .map(z)
                .collect::<std::result::Result<_, _>>()?,
            v: params
                .iter()
                .map(z)
                .collect::<std::result::Result<_, _>>()?,
            scratch: params
                .iter()
                .map(|p| p.f_empty_like())
                .collect::<std::result::Result<_, _>>()?,
            step: 0,
        })
    }

    /// Optimiser steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update of `params` (in place) with gradients `grads` at learning rate `lr`: the arithmetic of
    /// `torch.optim.AdamW`, `p ← p (1 - lr wd) - lr/bc1 · m / (sqrt(v)/sqrt(bc2) + eps)` with
    /// `m ← β1 m + (1-β1) g`, `v ← β2 v + (1-β2) g²`.
    ///
    /// Seven elementwise passes per parameter and no allocation (PyTorch's single-tensor path makes seven
    /// passes and allocates two parameter-sized temporaries): `g²` and the denominator reuse one buffer,
    /// and the denominator's affine map `sqrt(v)·a + b` is one `lerp` towards a 0-dim tensor.
    pub fn step(&mut self, params: &[Tensor], grads: &[Tensor], lr: f64) -> Result<()> {
        let _g = tch::no_grad_guard();
        if params.len() != self.m.len() || grads.len() != params.len() {
            return Err(HookError::invalid(format!(
                "optimiser holds {} parameters, got {} parameters and {} gradients",
                self.m.len(),
                params.len(),
                grads.len()
            )));
        }
        self.step += 1;
        let c = &self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2_sqrt = (1.0 - c.beta2.powi(self.step as i32)).sqrt();
        let step_size = lr / bc1;
        // denom = a·sqrt(v) + b = -(sqrt(v)/bc2_sqrt + eps) / step_size, so that p += m / denom is
        // p -= step_size · m / (sqrt(v)/bc2_sqrt + eps). As a lerp: s + w (e - s) = (1-w) s + w e with
        // w = 1 - a and e = b / w.
        let a = -1.0 / (bc2_sqrt * step_size);
        let b = -c.eps / step_size;
        let w = 1.0 - a;
        for (((p, g), (m, v)), buf) in params
            .iter()
            .zip(grads)
            .zip(self.m.iter_mut().zip(self.v.iter_mut()))
            .zip(self.scratch.iter_mut())
        {
            if g.size() != p.size() {
                return Err(HookError::invalid(format!(
                    "gradient {:?} for parameter {:?}",
                    g.size(),
                    p.size()
                )));
            }
            let mut p = p.shallow_clone();
            if c.weight_decay != 0.0 {
                let _ = p.f_mul_scalar_(1.0 - lr * c.weight_decay)?;
            }
            let _ = m.f_lerp_(g, 1.0 - c.beta1)?;
            let _ = g.f_mul_out(buf, g)?;
            let _ = v.f_lerp_(buf, 1.0 - c.beta2)?;
            let _ = v.f_sqrt_out(buf)?;
            let end = Tensor::from((b / w) as f32)
                .f_to_kind(buf.kind())?
                .f_to_device(buf.device())?;
            let _ = buf.f_lerp_(&end, w)?;
            let _ = p.f_addcdiv_(m, buf)?;
        }
        Ok(())
    }

    /// The moments by name (`adam.m.{i}`, `adam.v.{i}`), for checkpoints.
    pub fn named_state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, (m, v)) in self.m.iter().zip(&self.v).enumerate() {
            out.push((format!("adam.m.{i}"), m.shallow_clone()));
            out.push((format!("adam.v.{i}"), v.shallow_clone()));
        }
        out
    }

    /// First and second moments, one per parameter (to restore a checkpoint into).
    pub fn moments(&self) -> (&[Tensor], &[Tensor]) {
        (&self.m, &self.v)
    }

    /// Set the step count (bias corrections) when restoring a checkpoint.
    pub fn set_steps(&mut self, steps: u64) {
        self.step = steps;
    }
}
