//! Batched generation with a KV cache: greedy or seeded sampling (temperature, top-k, top-p), stop tokens
//! and a token budget. Hooks run on the prefill and on every decoding step; they see absolute positions, so
//! [`Positions::Generated`](crate::Positions::Generated) selects exactly the new tokens under the cache.

use crate::batch::{Batch, PaddingSide};
use crate::cache::{deep_copy, KvCache};
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

/// Token choice outside [`Model::generate`] (e.g. a hand-written [`Decoder`] loop): the same greedy or
/// seeded sampling rule, with its own random state.
#[derive(Debug)]
pub struct TokenChooser {
    sampling: Sampling,
    rng: rand::rngs::StdRng,
}

impl TokenChooser {
    /// A chooser with `opts`' sampling mode and seed (checked as `generate` checks them).
    pub fn new(opts: &GenerateOptions) -> Result<Self> {
        validate(opts)?;
        Ok(Self {
            sampling: opts.sampling,
            rng: rand::rngs::StdRng::seed_from_u64(opts.seed),
        })
    }
    /// One token per row from `[B, vocab]` logits.
    pub fn choose(&mut self, logits: &Tensor) -> Result<Vec<i64>> {
        choose(logits, self.sampling, &mut self.rng)
    }
}

/// The bookkeeping of a decoding loop: the tokens each row has produced, which rows have stopped, and the
/// ids to feed next (the pad id for stopped rows). [`Decoder::finish`] and any hand-written loop over
/// [`Decoder::step`] (side-by-side decoding) share it.
#[derive(Debug, Clone)]
pub struct TokenLog {
    tokens: Vec<Vec<i64>>,
    finish: Vec<FinishReason>,
    done: Vec<bool>,
    stop_tokens: Vec<i64>,
    pad_id: i64,
}

impl TokenLog {
    /// A log for `rows` rows stopping at `opts.stop_tokens`.
    pub fn new(rows: usize, opts: &GenerateOptions, pad_id: i64) -> Self {
        Self {
            tokens: vec![Vec::new(); rows],
            finish: vec![FinishReason::Length; rows],
            done: vec![false; rows],
            stop_tokens: opts.stop_tokens.clone(),
            pad_id,
        }
    }

    /// Record one chosen token per row (ignored for rows already stopped) and return the ids to feed next.
    pub fn record(&mut self, next: &[i64]) -> Vec<i64> {
        for (r, &n) in next.iter().enumerate().take(self.tokens.len()) {
            if self.done[r] {
                continue;
            }
            self.tokens[r].push(n);
            if self.stop_tokens.contains(&n) {
                self.done[r] = true;
                self.finish[r] = FinishReason::Stop;
            }
        }
        next.iter()
            .zip(&self.done)
            .map(|(&n, &d)| if d { self.pad_id } else { n })
            .collect()
    }

    /// Whether every row has stopped.
    pub fn all_done(&self) -> bool {
        self.done.iter().all(|&d| d)
    }

    /// The finished generation with `captures`.
    pub fn into_generation(self, captures: Vec<(HookPoint, Tensor)>) -> Generation {
        Generation {
            tokens: self.tokens,
            finish: self.finish,
            captures,
        }
    }
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

/// Incremental decoding of a left-padded batch with a KV cache: [`Model::prefill`] runs the prompts, then
/// each [`Decoder::step`] feeds one token per row. Hooks may differ from step to step, which is what running
/// two models side by side needs (each new token goes through both, the second reading what the first
/// computed). [`Model::generate`] is this loop with token choice and stop tokens.
#[derive(Debug)]
pub struct Decoder<'m> {
    model: &'m Model,
    cache: KvCache,
    prompt_lengths: Tensor,
    /// Next absolute position of each row.
    positions: Vec<i64>,
    valid_step: Tensor,
    logits: Tensor,
    steps: usize,
    padded_prompt_len: i64,
}

impl Model {
    /// Run `prompts` (token ids, one row each, left-padded into one batch) through the model with `hooks`,
    /// keeping a KV cache for up to `max_new_tokens` more tokens per row. Returns the decoder (its
    /// [`Decoder::logits`] are the next-token logits) and the prefill's captures (`[B, T_padded, d]`).
    pub fn prefill(
        &self,
        prompts: &[Vec<i64>],
        pad_id: i64,
        hooks: &Hooks,
        max_new_tokens: usize,
    ) -> Result<(Decoder<'_>, Vec<(HookPoint, Tensor)>)> {
        let _guard = tch::no_grad_guard();
        let device = self.device();
        let batch = Batch::from_sequences(prompts, pad_id, PaddingSide::Left, device)?;
        let (b, t) = (batch.size(), batch.seq_len());
        let total = t + max_new_tokens as i64;
        if total > self.spec().max_position_embeddings {
            return Err(HookError::invalid(format!(
                "prompt ({t} tokens) + max_new_tokens ({max_new_tokens}) exceed the model's context of {}",
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
        let out = self.run(
            &StepInput {
                input_ids: &batch.input_ids,
                position_ids: &batch.position_ids,
                valid: &batch.valid,
                prompt_lengths: &prompt_lengths,
                decode_step: None,
                last_logits_only: true,
                lora: None,
            },
            hooks,
            Some(&mut cache),
        )?;
        let logits = out.last.f_select(1, out.last.size()[1] - 1)?;
        Ok((
            Decoder {
                model: self,
                cache,
                prompt_lengths,
                positions: lengths,
                valid_step: Tensor::f_ones([b, 1], (Kind::Bool, device))?,
                logits,
                steps: 0,
                padded_prompt_len: t,
            },
            out.captures,
        ))
    }

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
        let (decoder, prefill) = self.prefill(prompts, pad_id, hooks, opts.max_new_tokens)?;
        decoder.finish(pad_id, hooks, opts, prefill)
    }
}

impl<'m> Decoder<'m> {
    /// An independent copy (its own KV cache), e.g. to decode several continuations of one prefill.
    pub fn fork(&self) -> Result<Decoder<'m>> {
        Ok(Decoder {
            model: self.model,
            cache: self.cache.try_clone()?,
            prompt_lengths: deep_copy(&self.prompt_lengths)?,
            positions: self.positions.clone(),
            valid_step: deep_copy(&self.valid_step)?,
            logits: deep_copy(&self.logits)?,
            steps: self.steps,
            padded_prompt_len: self.padded_prompt_len,
        })
    }

    /// Decode to the end as [`Model::generate`] does after its prefill: the first token is chosen from
    /// the current logits, then one step per token with `hooks`, until every row has hit a stop token or
    /// `opts.max_new_tokens` are out (counted from here). `earlier` are the captures so far (e.g. the
    /// prefill's), concatenated in front of the new ones.
    pub fn finish(
        mut self,
        pad_id: i64,
        hooks: &Hooks,
        opts: &GenerateOptions,
        earlier: Vec<(HookPoint, Tensor)>,
    ) -> Result<Generation> {
        let mut chooser = TokenChooser::new(opts)?;
        let mut log = TokenLog::new(self.batch_size(), opts, pad_id);
        if opts.max_new_tokens == 0 {
            return Ok(log.into_generation(earlier));
        }
        let mut step_captures: Vec<Vec<(HookPoint, Tensor)>> = vec![earlier];
        for k in 0..opts.max_new_tokens {
            let ids = log.record(&chooser.choose(self.logits())?);
            if log.all_done() || k + 1 == opts.max_new_tokens {
                break;
            }
            step_captures.push(self.step(&ids, hooks)?);
        }
        Ok(log.into_generation(concat_captures(step_captures)?))
    }

    /// Next-token logits `[B, vocab]` after the prefill or the last step.
    pub fn logits(&self) -> &Tensor {
        &self.logits
    }

    /// Rows in the batch.
    pub fn batch_size(&self) -> usize {
        self.positions.len()
    }

    /// Decoding steps taken so far.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Padded prompt length `T` of the prefill (captures of step `k` sit at column `T + k` of a
    /// [`Model::generate`] capture).
    pub fn padded_prompt_len(&self) -> i64 {
        self.padded_prompt_len
    }

    /// Absolute position each row's next token will take.
    pub fn next_positions(&self) -> &[i64] {
        &self.positions
    }

    /// Feed one token per row (`tokens.len()` = batch size) with `hooks` (they see
    /// `decode_step = Some(k)` and the rows' absolute positions) and return this step's captures
    /// (`[B, 1, d]`).
    pub fn step(&mut self, tokens: &[i64], hooks: &Hooks) -> Result<Vec<(HookPoint, Tensor)>> {
        let _guard = tch::no_grad_guard();
        let b = self.positions.len();
        if tokens.len() != b {
            return Err(HookError::invalid(format!(
                "a decoding step needs one token per row: {} tokens for {b} rows",
                tokens.len()
            )));
        }
        let vocab = self.model.spec().vocab_size;
        if let Some(bad) = tokens.iter().find(|&&t| t < 0 || t >= vocab) {
            return Err(HookError::invalid(format!(
                "token id {bad} outside the vocabulary [0, {vocab})"
            )));
        }
        let device = self.model.device();
        let ids = Tensor::from_slice(tokens)
            .f_view([b as i64, 1])?
            .f_to_device(device)?;
        let pos = Tensor::from_slice(&self.positions)
            .f_view([b as i64, 1])?
            .f_to_device(device)?;
        let out = self.model.run(
            &StepInput {
                input_ids: &ids,
                position_ids: &pos,
                valid: &self.valid_step,
                prompt_lengths: &self.prompt_lengths,
                decode_step: Some(self.steps),
                last_logits_only: true,
                lora: None,
            },
            hooks,
            Some(&mut self.cache),
        )?;
        self.positions.iter_mut().for_each(|p| *p += 1);
        self.steps += 1;
        self.logits = out.last.f_select(1, out.last.size()[1] - 1)?;
        Ok(out.captures)
    }
}

/// Concatenate per-step captures along the token axis, matching them by point and occurrence (how
/// [`Generation::captures`] is built from a prefill's and each step's captures).
pub fn concat_captures(steps: Vec<Vec<(HookPoint, Tensor)>>) -> Result<Vec<(HookPoint, Tensor)>> {
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
