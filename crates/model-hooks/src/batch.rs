//! Batches of ragged token sequences: padding, attention masks and per-row position ids.

use crate::error::{HookError, Result};
use tch::{Device, Kind, Tensor};

/// Which side padding goes on. Left padding is what batched generation needs (every row's last token is
/// at the same index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PaddingSide {
    /// Pad before the tokens.
    #[default]
    Left,
    /// Pad after the tokens.
    Right,
}

/// A padded batch ready for the model.
#[derive(Debug)]
pub struct Batch {
    /// Token ids `[B, T]` i64 (padding holds the pad id).
    pub input_ids: Tensor,
    /// `[B, T]` bool, true on real tokens.
    pub valid: Tensor,
    /// Absolute position of each token `[B, T]` i64: `cumsum(valid) - 1`, clamped at 0 on padding.
    pub position_ids: Tensor,
    /// Number of real tokens of each row.
    pub lengths: Vec<usize>,
    /// Padding side used.
    pub padding: PaddingSide,
    /// Length of each row's prompt, for hooks at [`Positions::Prompt`](crate::Positions::Prompt) /
    /// [`Positions::Generated`](crate::Positions::Generated); defaults to the row length.
    pub prompt_lengths: Vec<usize>,
}

impl Batch {
    /// Pad `sequences` to a common length. Errors on an empty batch or an empty row.
    pub fn from_sequences(
        sequences: &[Vec<i64>],
        pad_id: i64,
        padding: PaddingSide,
        device: Device,
    ) -> Result<Self> {
        if sequences.is_empty() {
            return Err(HookError::invalid("empty batch: no sequences given"));
        }
        if let Some(i) = sequences.iter().position(|s| s.is_empty()) {
            return Err(HookError::invalid(format!(
                "row {i} has no tokens (empty prompt)"
            )));
        }
        let t = sequences.iter().map(Vec::len).max().unwrap_or(0);
        let b = sequences.len();
        let mut ids = vec![pad_id; b * t];
        let mut mask = vec![false; b * t];
        for (r, s) in sequences.iter().enumerate() {
            let start = match padding {
                PaddingSide::Left => t - s.len(),
                PaddingSide::Right => 0,
            };
            ids[r * t + start..r * t + start + s.len()].copy_from_slice(s);
            mask[r * t + start..r * t + start + s.len()]
                .iter_mut()
                .for_each(|m| *m = true);
        }
        let input_ids = Tensor::from_slice(&ids)
            .view([b as i64, t as i64])
            .to_device(device);
        let valid = Tensor::from_slice(&mask)
            .view([b as i64, t as i64])
            .to_device(device);
        let mut batch = Self::from_tensors(input_ids, valid)?;
        batch.padding = padding;
        Ok(batch)
    }

    /// Build from an id tensor `[B, T]` and a mask `[B, T]` (bool or 0/1 integers). The padding side is
    /// inferred from the mask (left when any row starts with padding).
    pub fn from_tensors(input_ids: Tensor, mask: Tensor) -> Result<Self> {
        let size = input_ids.size();
        if size.len() != 2 || mask.size() != size {
            return Err(HookError::invalid(format!(
                "input_ids {:?} and attention mask {:?} must both be [B, T]",
                size,
                mask.size()
            )));
        }
        let valid = mask
            .f_to_kind(Kind::Bool)?
            .f_to_device(input_ids.device())?;
        let lengths: Vec<i64> = Vec::try_from(
            valid
                .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Int64)?
                .f_to_device(Device::Cpu)?,
        )?;
        if let Some(i) = lengths.iter().position(|&l| l == 0) {
            return Err(HookError::invalid(format!(
                "row {i} has no tokens (empty prompt)"
            )));
        }
        let position_ids = position_ids(&valid)?;
        let first_col_padded = valid
            .f_select(1, 0)?
            .f_logical_not()?
            .f_any()?
            .int64_value(&[])
            != 0;
        let lengths: Vec<usize> = lengths.iter().map(|&l| l as usize).collect();
        Ok(Self {
            input_ids: input_ids.f_to_kind(Kind::Int64)?,
            valid,
            position_ids,
            prompt_lengths: lengths.clone(),
            lengths,
            padding: if first_col_padded {
                PaddingSide::Left
            } else {
                PaddingSide::Right
            },
        })
    }

    /// Declare the first `prompt_lengths[r]` tokens of row `r` the prompt and the rest generated (e.g. to
    /// re-run a generated sequence without a cache and hooks at generated positions).
    pub fn with_prompt_lengths(mut self, prompt_lengths: Vec<usize>) -> Result<Self> {
        if prompt_lengths.len() != self.lengths.len() {
            return Err(HookError::invalid(format!(
                "{} prompt lengths for a batch of {}",
                prompt_lengths.len(),
                self.lengths.len()
            )));
        }
        self.prompt_lengths = prompt_lengths;
        Ok(self)
    }

    /// Batch size `B`.
    pub fn size(&self) -> i64 {
        self.input_ids.size()[0]
    }

    /// Padded length `T`.
    pub fn seq_len(&self) -> i64 {
        self.input_ids.size()[1]
    }

    /// Index `[B*T']` of the real tokens in row-major order, for gathering `[B, T, ..]` activations into
    /// `[total_tokens, ..]` with padding removed.
    pub fn real_token_index(&self) -> Result<Tensor> {
        Ok(self.valid.f_flatten(0, 1)?.f_nonzero()?.f_squeeze_dim(1)?)
    }

    /// Gather `[B, T, ..]` activations into `[total_tokens, ..]` (rows in order, padding removed).
    pub fn unpad(&self, x: &Tensor) -> Result<Tensor> {
        let idx = self.real_token_index()?.f_to_device(x.device())?;
        Ok(x.f_flatten(0, 1)?.f_index_select(0, &idx)?)
    }
}

/// `cumsum(valid) - 1`, clamped at 0: the absolute position of every token under any padding.
pub fn position_ids(valid: &Tensor) -> Result<Tensor> {
    Ok(valid
        .f_to_kind(Kind::Int64)?
        .f_cumsum(1, Kind::Int64)?
        .f_sub_scalar(1)?
        .f_clamp_min(0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_both_sides_with_positions() {
        let seqs = vec![vec![5, 6, 7], vec![8]];
        let l = Batch::from_sequences(&seqs, 0, PaddingSide::Left, Device::Cpu).unwrap();
        assert_eq!(
            Vec::<i64>::try_from(l.input_ids.view([-1])).unwrap(),
            vec![5, 6, 7, 0, 0, 8]
        );
        assert_eq!(
            Vec::<i64>::try_from(l.position_ids.view([-1])).unwrap(),
            vec![0, 1, 2, 0, 0, 0]
        );
        assert_eq!(l.padding, PaddingSide::Left);
        let r = Batch::from_sequences(&seqs, 0, PaddingSide::Right, Device::Cpu).unwrap();
        assert_eq!(
            Vec::<i64>::try_from(r.input_ids.view([-1])).unwrap(),
            vec![5, 6, 7, 8, 0, 0]
        );
        assert_eq!(r.padding, PaddingSide::Right);
        let x = Tensor::arange(6, (Kind::Float, Device::Cpu)).view([2, 3, 1]);
        assert_eq!(
            Vec::<f32>::try_from(l.unpad(&x).unwrap().view([-1])).unwrap(),
            vec![0.0, 1.0, 2.0, 5.0]
        );
    }

    #[test]
    fn rejects_empty_input() {
        assert!(Batch::from_sequences(&[], 0, PaddingSide::Left, Device::Cpu).is_err());
        let e = Batch::from_sequences(&[vec![1], vec![]], 0, PaddingSide::Left, Device::Cpu)
            .unwrap_err();
        assert!(e.to_string().contains("row 1"), "{e}");
    }
}
