//! Fine-tuning a model on completions, to implant a behaviour (a model organism): LoRA adapters
//! ([`rosetta_model_hooks::Lora`]) or the model's own weights (full fine-tuning,
//! [`rosetta_model_hooks::TrainableWeights`]), trained with AdamW ([`rosetta_model_hooks::optim::AdamW`])
//! on the cross-entropy of the **completion tokens only** (prompt and padding masked out), with gradient
//! accumulation, gradient-norm clipping, a linear warm-up, checkpoints every N optimiser steps and exact
//! resumption.
//!
//! **Exactness.** The data order is a seeded shuffle per epoch, a checkpoint holds the trained tensors, the
//! AdamW moments and step, and the position in the data; with dropout 0 a run killed after a checkpoint
//! and resumed ends with the same weights, bit for bit, as a run never interrupted (tested). Checkpoints
//! are written atomically, the JSON last.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rosetta_model_hooks::optim::{AdamW, AdamWConfig};
use rosetta_model_hooks::{
    Batch, ChatMessage, FullConfig, Hooks, Lora, LoraConfig, Model, PaddingSide, SafetensorsSet,
    Tokenizer, TrainableWeights,
};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, TasksError};

/// One training example: token ids and where the completion starts (the loss covers tokens
/// `completion_start..`, each predicted from the position before it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// Prompt then completion.
    pub ids: Vec<i64>,
    /// Index of the first completion token (>= 1).
    pub completion_start: usize,
}

impl Example {
    /// A chat example: the user says `instruction`, the assistant answers `completion` (rendered with the
    /// checkpoint's template; the completion tokens are those after the generation prompt, end-of-turn
    /// included, so the model also learns to stop). Plain-text tokenizers (no template) use
    /// `instruction + completion` with the tokenizer's special tokens.
    pub fn chat(tokenizer: &Tokenizer, instruction: &str, completion: &str) -> Result<Self> {
        if !tokenizer.has_chat_template() {
            let prompt = tokenizer.encode(instruction, true)?.ids;
            let full = tokenizer
                .encode(&format!("{instruction}{completion}"), true)?
                .ids;
            return Self::from_parts(prompt, full);
        }
        let user = [ChatMessage::user(instruction)];
        let prompt = tokenizer.encode_chat(&user, true)?.ids;
        let both = [
            ChatMessage::user(instruction),
            ChatMessage::new("assistant", completion),
        ];
        let full = tokenizer.encode_chat(&both, false)?.ids;
        Self::from_parts(prompt, full)
    }

    fn from_parts(prompt: Vec<i64>, mut full: Vec<i64>) -> Result<Self> {
        if full.len() <= prompt.len() || full[..prompt.len()] != prompt[..] {
            return Err(TasksError::FineTune(format!(
                "the completion's tokens do not extend the prompt's ({} prompt tokens, {} in all): the chat \
                 template renders the prompt differently once an answer follows",
                prompt.len(),
                full.len()
            )));
        }
        // Templates often end an answer with a newline after the end-of-turn token; keep it (it is what
        // the model would generate).
        full.shrink_to_fit();
        Ok(Self {
            completion_start: prompt.len(),
            ids: full,
        })
    }
}

/// What fine-tuning trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Method {
    /// LoRA adapters; the model's weights stay frozen.
    Lora(LoraConfig),
    /// The model's own weights that the config selects, updated in place (the model needs f32).
    Full(FullConfig),
}

impl Method {
    /// Short name (`lora`, `full`).
    pub fn name(&self) -> &'static str {
        match self {
            Method::Lora(_) => "lora",
            Method::Full(_) => "full",
        }
    }
}

/// Fine-tuning settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FineTuneConfig {
    /// LoRA or full fine-tuning.
    pub method: Method,
    /// AdamW (the learning rate is the peak of the warm-up).
    pub adamw: AdamWConfig,
    /// Linear warm-up over this many optimiser steps.
    pub warmup_steps: u64,
    /// Optimiser steps in all.
    pub steps: u64,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    /// Examples longer than this many tokens are refused.
    pub max_len: usize,
    /// Seed of the adapters' initialisation and of the data order.
    pub seed: u64,
    /// Write a checkpoint every this many optimiser steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Clip the gradient's global L2 norm to this (PyTorch's `clip_grad_norm_`); `None` does not clip.
    #[serde(default)]
    pub max_grad_norm: Option<f64>,
}

impl Default for FineTuneConfig {
    /// LoRA rank 16 / alpha 32 on every projection, AdamW lr 1e-3 (weight decay 0), 10 warm-up steps,
    /// 100 steps of 8 x 1 examples, 512 tokens, seed 0, a checkpoint every 25 steps, gradient norm
    /// clipped to 1 (HF Trainer's default).
    fn default() -> Self {
        Self {
            method: Method::Lora(LoraConfig::default()),
            adamw: AdamWConfig {
                lr: 1e-3,
                weight_decay: 0.0,
                ..AdamWConfig::default()
            },
            warmup_steps: 10,
            steps: 100,
            batch_size: 8,
            grad_accum: 1,
            max_len: 512,
            seed: 0,
            checkpoint_every: 25,
            max_grad_norm: Some(1.0),
        }
    }
}

/// What a training step reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Optimiser steps done (1-based).
    pub step: u64,
    /// Steps in all.
    pub steps: u64,
    /// Mean loss per completion token of this step.
    pub loss: f64,
    /// Completion tokens in this step.
    pub tokens: usize,
    /// All tokens (prompt and completion) read in this step.
    pub tokens_read: usize,
    /// Learning rate used.
    pub lr: f64,
    /// Global L2 norm of the gradient before clipping.
    pub grad_norm: f64,
}

/// What the observer tells the trainer after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Go on.
    Continue,
    /// Stop now (after this step's checkpoint, if one was due): simulates a kill in tests, or a user's
    /// interrupt.
    Stop,
}

/// What a fine-tuning run trained.
#[derive(Debug)]
pub enum Trained {
    /// LoRA adapters (apply them with `Model::forward_lora`, or merge them into a checkpoint).
    Lora(Lora),
    /// The model's own weights, already updated in place (and frozen again).
    Full(TrainableWeights),
}

impl Trained {
    fn parameters(&self) -> Vec<Tensor> {
        match self {
            Trained::Lora(l) => l.parameters(),
            Trained::Full(w) => w.parameters(),
        }
    }

    fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(match self {
            Trained::Lora(l) => l.named_tensors(),
            Trained::Full(w) => w.named_tensors()?,
        })
    }

    fn load_tensors(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        match self {
            Trained::Lora(l) => l.load_tensors(tensors)?,
            Trained::Full(w) => w.load_tensors(tensors)?,
        }
        Ok(())
    }

    /// The adapters, for a LoRA run.
    pub fn lora(&self) -> Option<&Lora> {
        match self {
            Trained::Lora(l) => Some(l),
            Trained::Full(_) => None,
        }
    }

    /// Write the fine-tuned model as a checkpoint directory `out` that loads like the base checkpoint
    /// `base` (its other files copied): LoRA merged into the projections, or the trained weights.
    pub fn save_checkpoint(&self, base: &Path, out: &Path) -> Result<()> {
        match self {
            Trained::Lora(l) => l.save_merged_checkpoint(base, out)?,
            Trained::Full(w) => w.save_checkpoint(base, out)?,
        }
        Ok(())
    }
}

/// The outcome of [`fine_tune`].
#[derive(Debug)]
pub struct FineTuned {
    /// The trained adapters or weights.
    pub trained: Trained,
    /// Loss of every optimiser step.
    pub losses: Vec<f64>,
    /// Whether training ran to `steps` (false when the observer stopped it).
    pub complete: bool,
    /// The step a resumed run started from (0 for a fresh one).
    pub resumed_from: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointState {
    format: u32,
    config: FineTuneConfig,
    examples: usize,
    examples_hash: String,
    step: u64,
    losses: Vec<f64>,
    tensors_sha256: String,
}

const CKPT_JSON: &str = "finetune_state.json";
const CKPT_TENSORS: &str = "finetune_state.safetensors";

fn examples_hash(examples: &[Example]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for e in examples {
        h.update((e.completion_start as u64).to_le_bytes());
        h.update((e.ids.len() as u64).to_le_bytes());
        for id in &e.ids {
            h.update(id.to_le_bytes());
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Micro-batches of example indices for optimiser step `step` (0-based): a seeded shuffle per epoch, cut
/// into consecutive groups of `batch_size * grad_accum`.
fn step_indices(n: usize, config: &FineTuneConfig, step: u64) -> Vec<Vec<usize>> {
    let per_step = config.batch_size * config.grad_accum;
    let start = step as usize * per_step;
    let mut out = Vec::with_capacity(config.grad_accum);
    let mut order: Option<(usize, Vec<usize>)> = None;
    let mut cur = Vec::with_capacity(config.batch_size);
    for k in start..start + per_step {
        let epoch = k / n;
        if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut idx: Vec<usize> = (0..n).collect();
            let mut rng = rand::rngs::StdRng::seed_from_u64(
                config.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            idx.shuffle(&mut rng);
            order = Some((epoch, idx));
        }
        if let Some((_, idx)) = &order {
            cur.push(idx[k % n]);
        }
        if cur.len() == config.batch_size {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

/// Masked completion loss of one micro-batch (right-padded): `(sum of token losses, completion tokens,
/// tokens read)`.
fn batch_loss(
    model: &Model,
    trained: &Trained,
    examples: &[&Example],
    pad_id: i64,
) -> Result<(Tensor, usize, usize)> {
    let seqs: Vec<Vec<i64>> = examples.iter().map(|e| e.ids.clone()).collect();
    let batch = Batch::from_sequences(&seqs, pad_id, PaddingSide::Right, model.device())?;
    let t = batch.seq_len();
    // [B, T, V]
    let logits = match trained {
        Trained::Lora(lora) => model.forward_lora(&batch, &Hooks::new(), lora)?.last,
        Trained::Full(_) => model.forward_grad(&batch, &Hooks::new())?.last,
    };
    // Targets: token t+1 predicted at t, where t+1 is a completion token.
    let mut targets = vec![-100i64; examples.len() * t as usize];
    let mut count = 0;
    for (r, e) in examples.iter().enumerate() {
        for pos in e.completion_start..e.ids.len() {
            targets[r * t as usize + pos - 1] = e.ids[pos];
            count += 1;
        }
    }
    let targets = Tensor::from_slice(&targets).f_to_device(model.device())?;
    let v = logits.size()[2];
    let loss = logits
        .f_reshape([-1, v])?
        .f_to_kind(Kind::Float)?
        .f_cross_entropy_loss::<Tensor>(&targets, None, tch::Reduction::Sum, -100, 0.0)?;
    let read = examples.iter().map(|e| e.ids.len()).sum();
    Ok((loss, count, read))
}

fn write_checkpoint(
    dir: &Path,
    config: &FineTuneConfig,
    examples: &[Example],
    trained: &Trained,
    opt: &AdamW,
    step: u64,
    losses: &[f64],
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| TasksError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let tensors_path = dir.join(CKPT_TENSORS);
    let mut tensors: Vec<(String, Tensor)> = trained
        .named_tensors()?
        .into_iter()
        .map(|(n, t)| Ok((n, t.f_detach()?.f_to_device(Device::Cpu)?)))
        .collect::<Result<_>>()?;
    for (n, t) in opt.named_state() {
        tensors.push((n, t.f_to_device(Device::Cpu)?));
    }
    rosetta_model_hooks::weights::write_safetensors_atomic(&tensors_path, &tensors, None)?;
    let state = CheckpointState {
        format: 2,
        config: config.clone(),
        examples: examples.len(),
        examples_hash: examples_hash(examples),
        step,
        losses: losses.to_vec(),
        tensors_sha256: sha256_file(&tensors_path)?,
    };
    let json_path = dir.join(CKPT_JSON);
    let mut bytes =
        serde_json::to_vec_pretty(&state).map_err(|e| TasksError::FineTune(e.to_string()))?;
    bytes.push(b'\n');
    rosetta_model_hooks::weights::write_file_atomic(&json_path, &bytes).map_err(|e| {
        TasksError::Io {
            path: json_path,
            source: e,
        }
    })
}

fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).map_err(|e| TasksError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Restore a checkpoint into `trained` and `opt`; `None` when `dir` holds none.
fn read_checkpoint(
    dir: &Path,
    config: &FineTuneConfig,
    examples: &[Example],
    trained: &mut Trained,
    opt: &mut AdamW,
) -> Result<Option<(u64, Vec<f64>)>> {
    let json_path = dir.join(CKPT_JSON);
    if !json_path.exists() {
        return Ok(None);
    }
    let bad = |message: String| TasksError::Checkpoint {
        path: json_path.clone(),
        message,
    };
    let text = std::fs::read_to_string(&json_path).map_err(|e| TasksError::Io {
        path: json_path.clone(),
        source: e,
    })?;
    let state: CheckpointState =
        serde_json::from_str(&text).map_err(|e| bad(format!("unreadable: {e}")))?;
    if state.format != 2 {
        return Err(bad(format!(
            "checkpoint format {} (this library reads 2)",
            state.format
        )));
    }
    if &state.config != config {
        return Err(bad(
            "written by a run with another configuration; use another directory or delete it"
                .into(),
        ));
    }
    if state.examples != examples.len() || state.examples_hash != examples_hash(examples) {
        return Err(bad("written by a run on other training examples".into()));
    }
    let tensors_path = dir.join(CKPT_TENSORS);
    if sha256_file(&tensors_path)? != state.tensors_sha256 {
        return Err(bad(format!(
            "{CKPT_TENSORS} does not match its recorded checksum"
        )));
    }
    let set = SafetensorsSet::open_file(&tensors_path)?;
    let device = trained
        .parameters()
        .first()
        .map_or(Device::Cpu, Tensor::device);
    let mut named = BTreeMap::new();
    for name in set.names() {
        named.insert(name.to_string(), set.load(name, Some(Kind::Float), device)?);
    }
    trained.load_tensors(&named)?;
    let _g = tch::no_grad_guard();
    let (ms, vs) = opt.moments();
    for (i, (m, v)) in ms.iter().zip(vs).enumerate() {
        for (t, name) in [(m, format!("adam.m.{i}")), (v, format!("adam.v.{i}"))] {
            let src = named
                .get(&name)
                .ok_or_else(|| bad(format!("tensor {name} missing")))?;
            t.shallow_clone().f_copy_(src)?;
        }
    }
    opt.set_steps(state.step);
    Ok(Some((state.step, state.losses)))
}

/// Fine-tune `model` on `examples` (see the module doc): fresh LoRA adapters, or with
/// [`Method::Full`] the model's own weights, which are updated in place (the model is then the
/// fine-tuned one, also when training stops early or fails). With `checkpoints`, resumes from the
/// checkpoint found there (refused when it belongs to another configuration or other examples) and writes
/// one every `checkpoint_every` steps and at the end. `observe` sees every step.
pub fn fine_tune(
    model: &mut Model,
    pad_id: i64,
    examples: &[Example],
    config: &FineTuneConfig,
    checkpoints: Option<&Path>,
    observe: &mut dyn FnMut(&StepReport) -> Flow,
) -> Result<FineTuned> {
    check_inputs(examples, config)?;
    match &config.method {
        Method::Lora(lcfg) => {
            let lora = Lora::new(model.spec(), lcfg.clone(), config.seed, model.device())?;
            fine_tune_from(model, pad_id, examples, config, lora, checkpoints, observe)
        }
        Method::Full(fcfg) => {
            let weights = model.trainable_weights(fcfg)?;
            let mut trained = Trained::Full(weights);
            let run = train(
                model,
                pad_id,
                examples,
                config,
                &mut trained,
                checkpoints,
                observe,
            );
            // Frozen again whatever happened: a failed run leaves the weights as far as they got.
            if let Trained::Full(w) = &trained {
                w.freeze()?;
            }
            run?.finish(trained)
        }
    }
}

/// [`fine_tune`] of LoRA adapters starting from given ones (e.g. a parity test's initialisation, or
/// adapters trained on another task) instead of fresh ones; `config.method` must describe them.
pub fn fine_tune_from(
    model: &Model,
    pad_id: i64,
    examples: &[Example],
    config: &FineTuneConfig,
    lora: Lora,
    checkpoints: Option<&Path>,
    observe: &mut dyn FnMut(&StepReport) -> Flow,
) -> Result<FineTuned> {
    check_inputs(examples, config)?;
    if config.method != Method::Lora(lora.config().clone()) {
        return Err(TasksError::FineTune(
            "the adapters' configuration differs from config.method".into(),
        ));
    }
    let mut lora = lora;
    lora.set_training(true);
    let mut trained = Trained::Lora(lora);
    let run = train(
        model,
        pad_id,
        examples,
        config,
        &mut trained,
        checkpoints,
        observe,
    )?;
    if let Trained::Lora(l) = &mut trained {
        l.set_training(false);
    }
    run.finish(trained)
}

/// What [`train`] ran: everything of a [`FineTuned`] but the trained tensors, which the caller holds.
struct Run {
    losses: Vec<f64>,
    complete: bool,
    resumed_from: u64,
}

impl Run {
    fn finish(self, trained: Trained) -> Result<FineTuned> {
        Ok(FineTuned {
            trained,
            losses: self.losses,
            complete: self.complete,
            resumed_from: self.resumed_from,
        })
    }
}

/// Global L2 norm of `grads` (f64 accumulation of per-tensor norms, as `clip_grad_norm_` stacks them).
fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut sq = 0.0;
    for g in grads {
        let n = g.f_norm()?.double_value(&[]);
        sq += n * n;
    }
    Ok(sq.sqrt())
}

/// The optimisation loop shared by both methods; `trained` is updated in place.
fn train(
    model: &Model,
    pad_id: i64,
    examples: &[Example],
    config: &FineTuneConfig,
    trained: &mut Trained,
    checkpoints: Option<&Path>,
    observe: &mut dyn FnMut(&StepReport) -> Flow,
) -> Result<Run> {
    if let Some(m) = config.max_grad_norm {
        if !(m.is_finite() && m > 0.0) {
            return Err(TasksError::FineTune(format!(
                "max_grad_norm must be a positive number, got {m}"
            )));
        }
    }
    let params = trained.parameters();
    let mut opt = AdamW::new(config.adamw, &params)?;
    let (mut start, mut losses) = (0, Vec::new());
    if let Some(dir) = checkpoints {
        if let Some((s, l)) = read_checkpoint(dir, config, examples, trained, &mut opt)? {
            (start, losses) = (s, l);
        }
    }
    let resumed_from = start;
    let mut complete = start >= config.steps;
    for step in start..config.steps {
        let mut grads: Option<Vec<Tensor>> = None;
        let micro = step_indices(examples.len(), config, step);
        // The loss is a mean over every completion token of the step, whatever the micro-batching.
        let total_tokens: usize = micro
            .iter()
            .flatten()
            .map(|&i| examples[i].ids.len() - examples[i].completion_start)
            .sum();
        let (mut loss_sum, mut read) = (0.0, 0);
        for idx in &micro {
            let batch: Vec<&Example> = idx.iter().map(|&i| &examples[i]).collect();
            let (loss, _, r) = batch_loss(model, trained, &batch, pad_id)?;
            let scaled = loss.f_div_scalar(total_tokens as f64)?;
            let g = Tensor::f_run_backward(&[&scaled], &params, false, false)?;
            loss_sum += loss.double_value(&[]);
            read += r;
            grads = Some(match grads {
                None => g,
                Some(acc) => acc
                    .iter()
                    .zip(&g)
                    .map(|(a, b)| a.f_add(b))
                    .collect::<std::result::Result<_, _>>()?,
            });
        }
        let mut grads =
            grads.ok_or_else(|| TasksError::FineTune("a step with no micro-batch".into()))?;
        let grad_norm = global_norm(&grads)?;
        if !grad_norm.is_finite() {
            return Err(TasksError::FineTune(format!(
                "step {}: the gradient is not finite (norm {grad_norm}); lower the learning rate",
                step + 1
            )));
        }
        if let Some(max) = config.max_grad_norm {
            // torch.nn.utils.clip_grad_norm_: scale by max / (norm + 1e-6), never up.
            let coef = (max / (grad_norm + 1e-6)).min(1.0);
            if coef < 1.0 {
                grads = grads
                    .iter()
                    .map(|g| g.f_mul_scalar(coef))
                    .collect::<std::result::Result<_, _>>()?;
            }
        }
        let warm = if config.warmup_steps == 0 {
            1.0
        } else {
            ((step + 1) as f64 / config.warmup_steps as f64).min(1.0)
        };
        let lr = config.adamw.lr * warm;
        opt.step(&params, &grads, lr)?;
        let loss = loss_sum / total_tokens as f64;
        losses.push(loss);
        let done = step + 1;
        let flow = observe(&StepReport {
            step: done,
            steps: config.steps,
            loss,
            tokens: total_tokens,
            tokens_read: read,
            lr,
            grad_norm,
        });
        let due = config.checkpoint_every > 0 && done % config.checkpoint_every == 0;
        if let Some(dir) = checkpoints {
            if due || done == config.steps {
                write_checkpoint(dir, config, examples, trained, &opt, done, &losses)?;
            }
        }
        if done == config.steps {
            complete = true;
        }
        if flow == Flow::Stop {
            break;
        }
    }
    Ok(Run {
        losses,
        complete,
        resumed_from,
    })
}

fn check_inputs(examples: &[Example], config: &FineTuneConfig) -> Result<()> {
    if examples.is_empty() {
        return Err(TasksError::FineTune("no training examples".into()));
    }
    if config.batch_size == 0 || config.grad_accum == 0 || config.steps == 0 {
        return Err(TasksError::FineTune(
            "batch size, accumulation and steps must be at least 1".into(),
        ));
    }
    if let Some((i, e)) = examples
        .iter()
        .enumerate()
        .find(|(_, e)| e.ids.len() > config.max_len)
    {
        return Err(TasksError::FineTune(format!(
            "example {i} has {} tokens, more than max_len {}",
            e.ids.len(),
            config.max_len
        )));
    }
    if let Some((i, _)) = examples
        .iter()
        .enumerate()
        .find(|(_, e)| e.completion_start == 0 || e.completion_start >= e.ids.len())
    {
        return Err(TasksError::FineTune(format!(
            "example {i} has no completion tokens after a prompt"
        )));
    }
    Ok(())
}

/// Where [`fine_tune`] keeps its checkpoint files inside a directory (for callers that clean up).
pub fn checkpoint_files(dir: &Path) -> [PathBuf; 2] {
    [dir.join(CKPT_JSON), dir.join(CKPT_TENSORS)]
}
