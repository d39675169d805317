//! Batched generation with a KV cache: greedy or seeded sampling (temperature, top-k, top-p), stop tokens
//! and a token budget. Hooks run on the prefill and on every decoding step; they see absolute positions, so
//! [`Positions::Generated`](crate::Positions::Generated) selects exactly the new tokens under the cache.

use crate::batch::{Batch, PaddingSide};
use crate::error::{HookError, Result};
use crate::hooks::{HookPoint, Hooks};
use crate::model::{Model, StepInput};
use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Argmax (ties go to the lowest id, as in torch).
    Greedy,
    /// Sample from the softmax of `logits / temperature`, restricted to the `top_k` most likely tokens
    /// (0 = no limit) and then to the smallest set whose probability reaches `top_p` (1.0 = no limit) —
    /// the order HF applies its warpers in.
    Sample {
        /// Softmax temperature (> 0).
        temperature: f64,
        /// Keep the k most likely tokens (0 disables).
        top_k: usize,
        /// Nucleus mass (1.0 disables).
        top_p: f64,
    },
}

/// Generation settings.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Maximum number of new tokens per row.
    pub max_new_tokens: usize,
    /// Token choice.
    pub sampling: Sampling,
    /// A row stops after producing one of these (it is included in the output).
    pub stop_tokens: Vec<i64>,
    /// Seed of the sampler (ignored by greedy decoding).
    pub seed: u64,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 32,
            sampling: Sampling::Greedy,
            stop_tokens: Vec::new(),
            seed: 0,
        }
    }
}

impl GenerateOptions {
    /// Greedy decoding of up to `max_new_tokens`.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            ..Self::default()
        }
    }
    /// Set the stop tokens.
    pub fn with_stop_tokens(mut self, stop: impl Into<Vec<i64>>) -> Self {
        self.stop_tokens = stop.into();
        self
    }
    /// Set the sampling mode.
    pub fn with_sampling(mut self, sampling: Sampling) -> Self {
        self.sampling = sampling;
        self
    }
    /// Set the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// It produced a stop token.
    Stop,
    /// It used its token budget.
    Length,
}

/// Result of [`Model::generate`].
#[derive(Debug)]
pub struct Generation {
    /// New tokens of each row (a stop token, when hit, is the last one).
    pub tokens: Vec<Vec<i64>>,
    /// Why each row ended.
    pub finish: Vec<FinishReason>,
    /// Captures over the prefill and every decoding step, concatenated along the token axis:
    /// `[B, T_prompt_padded + steps, d]` (prefill columns first, left-padded).
    pub captures: Vec<(HookPoint, Tensor)>,
}

impl Generation {
    /// The capture at `point`.
    pub fn captured(&self, point: HookPoint) -> Option<&Tensor> {
        self.captures
            .iter()
            .find(|(p, _)| *p == point)
            .map(|(_, t)| t)
    }
}

fn validate(opts: &GenerateOptions) -> Result<()> {
    if let Sampling::Sample {
        temperature, top_p, ..
    } = opts.sampling
    {
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err(HookError::invalid(format!(
                "temperature must be > 0, got {temperature}"
            )));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(HookError::invalid(format!(
                "top_p must be in (0, 1], got {top_p}"
            )));
        }
    }
    Ok(())
}

/// Choose one token per row from `[B, vocab]` logits.
fn choose(logits: &Tensor, sampling: Sampling, rng: &mut rand::rngs::StdRng) -> Result<Vec<i64>> {
    match sampling {
        Sampling::Greedy => Ok(Vec::try_from(
            logits.f_argmax(-1, false)?.f_to_device(Device::Cpu)?,
        )?),
        Sampling::Sample {
            temperature,
            top_k,
            top_p,
        } => {
            let probs = logits
                .f_to_kind(Kind::Float)?
                .f_div_scalar(temperature)?
                .f_to_device(Device::Cpu)?;
            let rows = probs.size()[0];
            let mut out = Vec::with_capacity(rows as usize);
            for r in 0..rows {
                let row: Vec<f32> = Vec::try_from(probs.f_get(r)?)?;
                let mut order: Vec<usize> = (0..row.len()).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                if top_k > 0 {
                    order.truncate(top_k);
                }
                let max = row[order[0]];
                let weights: Vec<f64> = order
                    .iter()
                    .map(|&i| f64::from(row[i] - max).exp())
                    .collect();
                let total: f64 = weights.iter().sum();
                // Nucleus: keep the most likely tokens until their mass reaches top_p (at least one).
                let mut keep = weights.len();
                if top_p < 1.0 {
                    let mut acc = 0.0;
                    for (j, w) in weights.iter().enumerate() {
                        acc += w / total;
                        if acc >= top_p {
                            keep = j + 1;
                            break;
                        }
                    }
                }
                let kept_total: f64 = weights[..keep].iter().sum();
                let mut u = rng.random::<f64>() * kept_total;
                let mut pick = order[keep - 1];
                for (j, w) in weights[..keep].iter().enumerate() {
                    if u < *w {
                        pick = order[j];
                        break;
                    }
                    u -= w;
                }
                out.push(pick as i64);
            }
            Ok(out)
        }
    }
}

impl Model {
    /// Generate continuations of `prompts` (token ids, one row each) in one left-padded batch.
    ///
    /// Hooks apply to the prefill and to each decoding step; captures are concatenated along the token
    /// axis. Rows are independent: a row's tokens do not depend on the other rows.
    pub fn generate(
        &self,
        prompts: &[Vec<i64>],
        pad_id: i64,
        hooks: &Hooks,
        opts: &GenerateOptions,
    ) -> Result<Generation> {
        validate(opts)?;
        let _guard = tch::no_grad_guard();
        let device = self.device();
        let batch = Batch::from_sequences(prompts, pad_id, PaddingSide::Left, device)?;
        let (b, t) = (batch.size(), batch.seq_len());
        let total = t + opts.max_new_tokens as i64;
        if total > self.spec().max_position_embeddings {
            return Err(HookError::invalid(format!(
                "prompt ({t} tokens) + max_new_tokens ({}) exceed the model's context of {}",
                opts.max_new_tokens,
                self.spec().max_position_embeddings
            )));
        }
        let max_id = prompts.iter().flatten().copied().max().unwrap_or(0);
        let min_id = prompts.iter().flatten().copied().min().unwrap_or(0);
        if min_id < 0 || max_id >= self.spec().vocab_size {
            return Err(HookError::invalid(format!(
                "token id outside the vocabulary [0, {})",
                self.spec().vocab_size
            )));
        }
        let mut cache = self.new_cache(b, total.max(1))?;
        let lengths: Vec<i64> = batch.lengths.iter().map(|&l| l as i64).collect();
        let prompt_lengths = Tensor::from_slice(&lengths).f_to_device(device)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);

        let mut tokens: Vec<Vec<i64>> = vec![Vec::new(); b as usize];
        let mut finish = vec![FinishReason::Length; b as usize];
        let mut done = vec![false; b as usize];
        let mut step_captures: Vec<Vec<(HookPoint, Tensor)>> = Vec::new();
        // Prefill: the whole prompt at once, filling the cache.
        let mut out = self.run(
            &StepInput {
                input_ids: &batch.input_ids,
                position_ids: &batch.position_ids,
                valid: &batch.valid,
                prompt_lengths: &prompt_lengths,
                decode_step: None,
                last_logits_only: true,
            },
            hooks,
            Some(&mut cache),
        )?;
        if opts.max_new_tokens == 0 {
            return Ok(Generation {
                tokens,
                finish,
                captures: out.captures,
            });
        }
        let mut positions = lengths.clone(); // next absolute position per row
        let valid_step = Tensor::f_ones([b, 1], (Kind::Bool, device))?;
        for k in 0..opts.max_new_tokens {
            step_captures.push(std::mem::take(&mut out.captures));
            let logits = out.last.f_select(1, out.last.size()[1] - 1)?; // [B, vocab]
            let next = choose(&logits, opts.sampling, &mut rng)?;
            for r in 0..b as usize {
                if done[r] {
                    continue;
                }
                tokens[r].push(next[r]);
                if opts.stop_tokens.contains(&next[r]) {
                    done[r] = true;
                    finish[r] = FinishReason::Stop;
                }
            }
            if done.iter().all(|&d| d) || k + 1 == opts.max_new_tokens {
                break;
            }
            let ids: Vec<i64> = next
                .iter()
                .zip(&done)
                .map(|(&n, &d)| if d { pad_id } else { n })
                .collect();
            let ids = Tensor::from_slice(&ids)
                .f_view([b, 1])?
                .f_to_device(device)?;
            let pos = Tensor::from_slice(&positions)
                .f_view([b, 1])?
                .f_to_device(device)?;
            positions.iter_mut().for_each(|p| *p += 1);
            out = self.run(
                &StepInput {
                    input_ids: &ids,
                    position_ids: &pos,
                    valid: &valid_step,
                    prompt_lengths: &prompt_lengths,
                    decode_step: Some(k),
                    last_logits_only: true,
                },
                hooks,
                Some(&mut cache),
            )?;
        }
        Ok(Generation {
            tokens,
            finish,
            captures: concat_captures(step_captures)?,
        })
    }
}

/// Concatenate per-step captures along the token axis, matching them by point and occurrence.
fn concat_captures(steps: Vec<Vec<(HookPoint, Tensor)>>) -> Result<Vec<(HookPoint, Tensor)>> {
    let Some(first) = steps.first() else {
        return Ok(Vec::new());
    };
    let mut merged = Vec::with_capacity(first.len());
    for (i, (point, _)) in first.iter().enumerate() {
        let parts: Vec<&Tensor> = steps
            .iter()
            .filter_map(|s| s.get(i).map(|(_, t)| t))
            .collect();
        merged.push((*point, Tensor::f_cat(&parts, 1)?));
    }
    Ok(merged)
}
