//! Preallocated key/value cache for incremental decoding.
//!
//! One `[B, kv_heads, capacity, head_dim]` buffer pair per layer, written in place; keys are stored after
//! RoPE at their absolute position, so a cached prefix never needs re-rotation. Sliding-window layers keep
//! the full buffer and the window is enforced by the attention mask (exactly HF's key set); memory grows
//! with the generation length, not with the window.

use crate::error::{HookError, Result};
use tch::{Device, Kind, Tensor};

/// A copy of `t` in new storage.
pub(crate) fn deep_copy(t: &Tensor) -> Result<Tensor> {
    let mut out = t.f_empty_like()?;
    out.f_copy_(t)?;
    Ok(out)
}

/// Keys and values of every layer for a batch being decoded.
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    /// `[B, capacity]` bool: which cached slots hold real (non-padding) tokens.
    key_valid: Tensor,
    len: i64,
    capacity: i64,
}

impl KvCache {
    /// Allocate a cache for `batch` rows and up to `capacity` tokens.
    pub fn new(
        num_layers: usize,
        batch: i64,
        kv_heads: i64,
        head_dim: i64,
        capacity: i64,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        let shape = [batch, kv_heads, capacity, head_dim];
        let mut keys = Vec::with_capacity(num_layers);
        let mut values = Vec::with_capacity(num_layers);
        for _ in 0..num_layers {
            keys.push(Tensor::f_zeros(shape, (kind, device))?);
            values.push(Tensor::f_zeros(shape, (kind, device))?);
        }
        Ok(Self {
            keys,
            values,
            key_valid: Tensor::f_zeros([batch, capacity], (Kind::Bool, device))?,
            len: 0,
            capacity,
        })
    }

    /// A deep copy (new buffers with the same contents).
    pub fn try_clone(&self) -> Result<Self> {
        let copy = |ts: &[Tensor]| -> Result<Vec<Tensor>> { ts.iter().map(deep_copy).collect() };
        Ok(Self {
            keys: copy(&self.keys)?,
            values: copy(&self.values)?,
            key_valid: deep_copy(&self.key_valid)?,
            len: self.len,
            capacity: self.capacity,
        })
    }

    /// Tokens cached so far.
    pub fn len(&self) -> i64 {
        self.len
    }

    /// True before the first write.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum number of tokens.
    pub fn capacity(&self) -> i64 {
        self.capacity
    }

    /// Register `valid` (`[B, T]` bool) for the next `T` slots and return the key mask `[B, len + T]` the
    /// attention of this step uses. Call once per step, before the layers write.
    pub(crate) fn extend_mask(&mut self, valid: &Tensor) -> Result<Tensor> {
        let t = valid.size()[1];
        if self.len + t > self.capacity {
            return Err(HookError::invalid(format!(
                "KV cache full: {} cached + {t} new tokens exceed its capacity of {}",
                self.len, self.capacity
            )));
        }
        self.key_valid.f_narrow(1, self.len, t)?.f_copy_(valid)?;
        Ok(self.key_valid.f_narrow(1, 0, self.len + t)?)
    }

    /// Write this step's keys/values (`[B, kv_heads, T, D]`) of `layer` at slots `len..len+T` and return
    /// views of all cached keys/values `[B, kv_heads, len + T, D]`.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let t = k.size()[2];
        self.keys[layer].f_narrow(2, self.len, t)?.f_copy_(k)?;
        self.values[layer].f_narrow(2, self.len, t)?.f_copy_(v)?;
        Ok((
            self.keys[layer].f_narrow(2, 0, self.len + t)?,
            self.values[layer].f_narrow(2, 0, self.len + t)?,
        ))
    }

    /// Advance past `t` tokens once every layer has written them.
    pub(crate) fn advance(&mut self, t: i64) {
        self.len += t;
    }
}
