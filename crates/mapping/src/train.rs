//! The trainer: AdamW over shuffled batches streamed from an activation store, with gradient
//! accumulation, a learning-rate schedule, validation metrics every epoch, early stopping, a checkpoint
//! every epoch and exact resumption.
//!
//! **Determinism.** The data order of epoch `e` depends only on `seed + e` and the store; the document
//! split only on `split_seed`; initial weights on the libtorch seed set before the map was built. A run
//! interrupted at any point and resumed from its last checkpoint (the end of the last complete epoch)
//! therefore ends with the same weights as an uninterrupted run (bit for bit on the same machine and
//! thread count).
//!
//! **Optimiser.** AdamW exactly as `torch.optim.AdamW` (decoupled weight decay on every parameter, bias
//! correction), implemented here so its moments can be checkpointed; gradients come from
//! `torch.autograd.grad`-style backward calls (no `.grad` buffers to zero).

use std::path::{Path, PathBuf};
use std::time::Instant;

use rosetta_activation_store::{DocSplit, RunningStats, Split, StoreReader};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

pub use rosetta_model_hooks::optim::{AdamW, AdamWConfig};

use crate::error::{MappingError, Result};
use crate::map::{AnyMap, Mapping, Standardization};
use crate::metrics::{Metrics, MetricsAccumulator};
use crate::save::{read_json, read_tensors, write_json_atomic};

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Schedule {
    /// The peak rate throughout.
    Constant,
    /// Linear warm-up over `warmup_steps` optimiser steps, then cosine decay to `min_lr_ratio * lr` at the
    /// last step of the last epoch.
    Cosine {
        /// Warm-up steps.
        warmup_steps: u64,
        /// Final rate as a share of the peak.
        min_lr_ratio: f64,
    },
    /// Multiply the rate by `factor` when the validation loss has not improved (by a relative 1e-4) for
    /// more than `patience` epochs, as `torch.optim.lr_scheduler.ReduceLROnPlateau`; never below `min_lr`.
    ReduceOnPlateau {
        /// Multiplier, in (0, 1).
        factor: f64,
        /// Epochs without improvement tolerated.
        patience: usize,
        /// Floor.
        min_lr: f64,
    },
}

impl Schedule {
    /// The rate for optimiser step `step` of `total`: from the cosine curve, or the current rate `current`
    /// (constant, or as lowered by reduce-on-plateau).
    pub fn lr(&self, peak: f64, current: f64, step: u64, total: u64) -> f64 {
        match *self {
            Schedule::Cosine {
                warmup_steps,
                min_lr_ratio,
            } => cosine_lr(peak, step, warmup_steps, total, min_lr_ratio),
            _ => current,
        }
    }
}

/// Training configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Epochs, when [`TrainConfig::steps`] is `None` (the paper's 3 in [`TrainConfig::paper`]).
    pub epochs: usize,
    /// Optimiser-step budget: when set, the run lasts `ceil(steps / steps_per_epoch)` epochs whatever
    /// `epochs` says, so a store of 1,500 rows trains as many steps as one of 150,000 (rounded up to whole
    /// epochs; early stopping may end it sooner). Default [`DEFAULT_STEPS`].
    #[serde(default)]
    pub steps: Option<u64>,
    /// Rows per micro-batch (default 256).
    pub batch_size: usize,
    /// Micro-batches per optimiser step (default 1).
    pub grad_accum: usize,
    /// Optimiser.
    pub optimizer: AdamWConfig,
    /// Learning-rate schedule (default constant, the paper's).
    pub schedule: Schedule,
    /// Share of documents held out for validation (default 0.1).
    pub validation_fraction: f64,
    /// Seed of the document split.
    pub split_seed: u64,
    /// Seed of the data order (epoch `e` shuffles with `seed + e`).
    pub seed: u64,
    /// Stop after this many epochs without validation improvement and keep the best weights (default 20).
    pub early_stopping_patience: Option<usize>,
    /// Weight of a `1 - cos(ŷ, y)` term added to the MSE loss (default 0: plain MSE, the paper's).
    pub cosine_weight: f64,
    /// Train on standardised `x` and `y` (store statistics of the training split); the standardisation is
    /// folded into the returned map.
    pub standardize: bool,
    /// Byte budget of the reader's shuffle buffer (default 512 MiB).
    pub buffer_bytes: u64,
}

/// The optimiser-step budget of [`TrainConfig::default`].
pub const DEFAULT_STEPS: u64 = 5000;

impl Default for TrainConfig {
    /// The measured recipe (docs/MAPPING.md): [`DEFAULT_STEPS`] optimiser steps of 256 rows at a constant
    /// lr 1e-3 on raw activations, validated every epoch, stopped early after 20 epochs without
    /// improvement (best weights kept).
    fn default() -> Self {
        Self {
            epochs: 3,
            steps: Some(DEFAULT_STEPS),
            batch_size: 256,
            grad_accum: 1,
            optimizer: AdamWConfig {
                lr: 1e-3,
                ..AdamWConfig::default()
            },
            schedule: Schedule::Constant,
            validation_fraction: 0.1,
            split_seed: 0,
            seed: 0,
            early_stopping_patience: Some(20),
            cosine_weight: 0.0,
            standardize: false,
            buffer_bytes: rosetta_activation_store::BatchOptions::default().buffer_bytes,
        }
    }
}

impl TrainConfig {
    /// The paper's settings: 3 epochs at a constant lr 1e-4 (AdamW), batches of 1024 rows (the paper's 16
    /// sequences x 4 accumulation steps, for sequences of ~16 tokens), no early stopping, raw activations.
    /// On a small store this is a handful of optimiser steps: [`quality_warnings`] flags it.
    pub fn paper() -> Self {
        Self {
            epochs: 3,
            steps: None,
            batch_size: 1024,
            optimizer: AdamWConfig::default(),
            early_stopping_patience: None,
            ..Self::default()
        }
    }

    /// Epochs the run lasts with `steps_per_epoch` optimiser steps per epoch: enough for
    /// [`TrainConfig::steps`] when set, else [`TrainConfig::epochs`].
    pub fn epochs_for(&self, steps_per_epoch: u64) -> usize {
        match self.steps {
            Some(s) => s.div_ceil(steps_per_epoch.max(1)).max(1) as usize,
            None => self.epochs,
        }
    }

    /// Check ranges; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(MappingError::Config(m));
        if self.epochs == 0 || self.steps == Some(0) {
            return bad("epochs and steps must be >= 1".into());
        }
        if self.batch_size == 0 || self.grad_accum == 0 || self.buffer_bytes == 0 {
            return bad("batch_size, grad_accum and buffer_bytes must be >= 1".into());
        }
        let o = &self.optimizer;
        if !(o.lr > 0.0 && o.lr.is_finite()) {
            return bad(format!("lr must be > 0, got {}", o.lr));
        }
        if !(0.0..1.0).contains(&o.beta1) || !(0.0..1.0).contains(&o.beta2) || o.eps <= 0.0 {
            return bad("betas must be in [0, 1) and eps > 0".into());
        }
        if o.weight_decay < 0.0 {
            return bad(format!("weight_decay must be >= 0, got {}", o.weight_decay));
        }
        if !(0.0..1.0).contains(&self.validation_fraction) {
            return bad(format!(
                "validation_fraction must be in [0, 1), got {}",
                self.validation_fraction
            ));
        }
        if self.validation_fraction == 0.0
            && (self.early_stopping_patience.is_some()
                || matches!(self.schedule, Schedule::ReduceOnPlateau { .. }))
        {
            return bad("early stopping and reduce-on-plateau need a validation split".into());
        }
        if let Schedule::ReduceOnPlateau { factor, .. } = self.schedule {
            if !(factor > 0.0 && factor < 1.0) {
                return bad(format!("plateau factor must be in (0, 1), got {factor}"));
            }
        }
        if self.cosine_weight < 0.0 {
            return bad("cosine_weight must be >= 0".into());
        }
        Ok(())
    }
}

/// What the trainer reports to its observer.
#[derive(Debug)]
pub enum TrainEvent<'a> {
    /// Training is about to start (or resume at `start_epoch`).
    Start {
        /// First epoch to run (0-based; > 0 after a resume).
        start_epoch: usize,
        /// Epochs in total.
        epochs: usize,
        /// Micro-batches per epoch.
        batches_per_epoch: u64,
        /// Training rows per epoch.
        train_rows: u64,
        /// Validation rows.
        validation_rows: u64,
    },
    /// A micro-batch was processed.
    Batch {
        /// Epoch (0-based).
        epoch: usize,
        /// Micro-batch within the epoch (1-based).
        batch: u64,
        /// Rows in it.
        rows: u64,
        /// Current learning rate.
        lr: f64,
    },
    /// An epoch finished and was validated (and checkpointed, when a directory was given).
    Epoch(&'a EpochRecord),
}

/// The observer's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Go on.
    Continue,
    /// Stop now (the last checkpoint stays; a later run resumes from it).
    Stop,
}

/// One epoch's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Mean training loss over the epoch's micro-batches.
    pub train_loss: f64,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Validation metrics in the raw (unstandardised) space; `None` without a validation split.
    pub validation: Option<Metrics>,
    /// Validation loss (MSE, plus the cosine term when configured) used for early stopping.
    pub validation_loss: Option<f64>,
    /// Training rows per second (this epoch, training steps only).
    pub rows_per_s: f64,
    /// Wall seconds of the epoch, validation included.
    pub seconds: f64,
}

/// Why training ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// All epochs ran.
    Completed,
    /// Validation stopped improving.
    EarlyStopped,
    /// The observer asked to stop; resume from the checkpoint.
    Interrupted,
}

/// Result of [`Trainer::train`].
#[derive(Debug)]
pub struct TrainOutcome {
    /// The trained map in the raw activation spaces (standardisation folded in), best validation epoch's
    /// weights when early stopping is on, otherwise the last epoch's.
    pub map: AnyMap,
    /// Per-epoch figures, resumed epochs included.
    pub history: Vec<EpochRecord>,
    /// Why it ended.
    pub stop: StopReason,
    /// Validation metrics of the returned map.
    pub validation: Option<Metrics>,
    /// Optimiser steps taken in all (resumed ones included).
    pub steps: u64,
    /// What a user should know before trusting the map ([`quality_warnings`]); empty when nothing is off.
    pub warnings: Vec<String>,
}

/// Fewer optimiser steps than this leave a map under-trained on any store ([`quality_warnings`]).
pub const MIN_TRUSTED_STEPS: u64 = 200;

/// Warnings about a map a user should not trust as it is: trained for fewer than [`MIN_TRUSTED_STEPS`]
/// optimiser steps (`steps`; `None` for closed-form fits), or validated worse than the mean predictor
/// (FVU >= 1: predicting the target's mean everywhere does as well, so the map carries no direction).
pub fn quality_warnings(steps: Option<u64>, validation: Option<&Metrics>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(n) = steps {
        if n < MIN_TRUSTED_STEPS {
            out.push(format!(
                "only {n} optimiser steps (fewer than {MIN_TRUSTED_STEPS}): the map is likely under-trained; \
                 give it a step budget (`steps`), more epochs or smaller batches"
            ));
        }
    }
    if let Some(m) = validation {
        if m.fvu >= 1.0 || m.fvu.is_nan() {
            out.push(format!(
                "validation FVU {:.3} >= 1: the map predicts the target worse than its mean does and will \
                 not carry directions; train longer or with a higher learning rate, or fit a ridge map",
                m.fvu
            ));
        }
    }
    out
}

/// Checkpoint sidecar (`checkpoint.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    /// [`CHECKPOINT_FORMAT`] of the writer (absent, i.e. 0, before format 2).
    #[serde(default)]
    format: u32,
    config: TrainConfig,
    /// Identifies the store (rows, shards, spec) so a checkpoint is not resumed on other data.
    store_fingerprint: String,
    kind: crate::MapKind,
    d_src: i64,
    d_tgt: i64,
    hidden: Option<i64>,
    epochs_done: usize,
    adam_steps: u64,
    lr: f64,
    plateau_bad_epochs: usize,
    best_loss: Option<f64>,
    best_epoch: Option<usize>,
    history: Vec<EpochRecord>,
    tensors_file: String,
}

const CHECKPOINT_FILE: &str = "checkpoint.json";
/// Checkpoint layout: parameters by name in their saved (PyTorch) layout, optimiser moments in the layout
/// of [`Mapping::parameters`]. Format 2: the autoencoder's second weight is trained transposed.
const CHECKPOINT_FORMAT: u32 = 2;

/// Trains a map on an activation store.
pub struct Trainer<'a> {
    reader: &'a StoreReader,
    config: TrainConfig,
    device: Device,
    split: DocSplit,
    /// The target's statistics on the training split (for [`Metrics::cosine_std`]), read once.
    target_stats: std::cell::OnceCell<RunningStats>,
    checkpoint_dir: Option<PathBuf>,
}

impl<'a> Trainer<'a> {
    /// A trainer over a paired store (`x` -> `y`). Batches are moved to `device` (the map's device).
    /// The document split is resolved here ([`StoreReader::doc_split`]): a store of one document with a
    /// validation fraction above 0 is refused before any work.
    pub fn new(reader: &'a StoreReader, config: TrainConfig, device: Device) -> Result<Self> {
        config.validate()?;
        if reader.manifest().spec.target.is_none() {
            return Err(MappingError::Config(format!(
                "store {} holds one model's activations; training a map needs a paired store",
                reader.dir().display()
            )));
        }
        let split = reader.doc_split(config.validation_fraction, config.split_seed)?;
        Ok(Self {
            reader,
            config,
            device,
            split,
            target_stats: std::cell::OnceCell::new(),
            checkpoint_dir: None,
        })
    }

    /// Checkpoint into `dir` after every epoch and resume from it when it holds a checkpoint of the same
    /// configuration, store and map shape (a different one is an error, never silently overwritten).
    pub fn with_checkpoints(mut self, dir: impl AsRef<Path>) -> Self {
        self.checkpoint_dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The document split of the store ([`TrainConfig::validation_fraction`] and
    /// [`TrainConfig::split_seed`], with at least one document on each side).
    pub fn split(&self) -> DocSplit {
        self.split
    }

    fn fingerprint(&self) -> String {
        let m = self.reader.manifest();
        let shas: Vec<&str> = m.shards.iter().map(|s| s.sha256.as_str()).collect();
        format!(
            "{}|{}|{}|{}",
            m.spec.source.id,
            m.spec.target.as_ref().map_or("", |t| t.id.as_str()),
            m.rows(),
            shas.join(",")
        )
    }

    /// Rows of the training and validation parts (reads only the document-id column of each shard).
    pub fn split_rows(&self) -> Result<(u64, u64)> {
        let split = self.split;
        let (mut train, mut val) = (0u64, 0u64);
        for i in 0..self.reader.manifest().shards.len() {
            for d in self.reader.shard_doc_ids(i)? {
                if split.is_validation(d) {
                    val += 1;
                } else {
                    train += 1;
                }
            }
        }
        Ok((train, val))
    }

    /// Standardisation from the training split's statistics (what [`TrainConfig::standardize`] uses).
    pub fn standardization(&self) -> Result<Standardization> {
        let (sx, sy) = self.reader.stats(Split::Train(self.split))?;
        let sy = sy.ok_or_else(|| MappingError::Config("store has no target side".into()))?;
        let std = Standardization::from_stats(&sx, &sy)?;
        // The same pass gives the target statistics validation standardises its cosine with.
        let _ = self.target_stats.set(sy);
        Ok(std)
    }

    /// Validation metrics of `map` (raw space) on the validation split, with [`Metrics::cosine_std`]
    /// standardised by the training split's target statistics (read from the store once).
    pub fn evaluate(&self, map: &dyn Mapping) -> Result<Option<Metrics>> {
        if self.config.validation_fraction == 0.0 {
            return Ok(None);
        }
        let stats = match self.target_stats.get() {
            Some(st) => st,
            None => {
                let (_, sy) = self.reader.stats(Split::Train(self.split))?;
                let sy =
                    sy.ok_or_else(|| MappingError::Config("store has no target side".into()))?;
                self.target_stats.get_or_init(|| sy)
            }
        };
        evaluate(
            self.reader,
            map,
            Split::Validation(self.split),
            self.config.batch_size.max(4096),
            Some(stats),
        )
        .map(Some)
    }

    /// Train `map` (initial weights; ignored when resuming from a checkpoint, which must be of the same
    /// kind and shape). `observe` sees every event and can stop the run.
    pub fn train(
        &self,
        map: AnyMap,
        observe: &mut dyn FnMut(&TrainEvent<'_>) -> Control,
    ) -> Result<TrainOutcome> {
        let cfg = &self.config;
        if !map.kind().is_trained() {
            return Err(MappingError::Config(format!(
                "a {} map is fitted in closed form, not trained",
                map.kind()
            )));
        }
        let spec = &self.reader.manifest().spec;
        let tgt_dim = spec.target.as_ref().map_or(0, |t| t.dim);
        if map.d_src() != spec.source.dim || map.d_tgt() != tgt_dim {
            return Err(MappingError::Shape(format!(
                "map is {} -> {}, store {} is {} -> {}",
                map.d_src(),
                map.d_tgt(),
                self.reader.dir().display(),
                spec.source.dim,
                tgt_dim
            )));
        }
        let map = map.to_device(self.device)?;
        let std = if cfg.standardize {
            Some(self.standardization()?)
        } else {
            None
        };
        let std_dev = std.as_ref().map(|s| s.on(self.device)).transpose()?;
        let (train_rows, val_rows) = self.split_rows()?;
        if train_rows == 0 {
            return Err(MappingError::Config(format!(
                "the training split of {} is empty ({} rows in the store)",
                self.reader.dir().display(),
                self.reader.rows()
            )));
        }
        if cfg.validation_fraction > 0.0 && val_rows == 0 {
            return Err(MappingError::Config(format!(
                "the validation split of {} is empty: too few documents for validation_fraction {}",
                self.reader.dir().display(),
                cfg.validation_fraction
            )));
        }
        let batches_per_epoch = train_rows.div_ceil(cfg.batch_size as u64);
        let steps_per_epoch = batches_per_epoch.div_ceil(cfg.grad_accum as u64);
        let epochs = cfg.epochs_for(steps_per_epoch);
        let total_steps = steps_per_epoch * epochs as u64;

        let params = map.parameters();
        let mut opt = AdamW::new(cfg.optimizer, &params)?;
        let mut state = CheckpointState {
            format: CHECKPOINT_FORMAT,
            config: cfg.clone(),
            store_fingerprint: self.fingerprint(),
            kind: map.kind(),
            d_src: map.d_src(),
            d_tgt: map.d_tgt(),
            hidden: map.hidden(),
            epochs_done: 0,
            adam_steps: 0,
            lr: cfg.optimizer.lr,
            plateau_bad_epochs: 0,
            best_loss: None,
            best_epoch: None,
            history: Vec::new(),
            tensors_file: String::new(),
        };
        let mut best: Option<AnyMap> = None;
        if let Some(dir) = &self.checkpoint_dir {
            let named: Vec<Tensor> = map.named_tensors().into_iter().map(|(_, t)| t).collect();
            if let Some((s, b)) = self.load_checkpoint(dir, &state, &named, &mut opt)? {
                state = s;
                best = b;
            }
        }

        observe(&TrainEvent::Start {
            start_epoch: state.epochs_done,
            epochs,
            batches_per_epoch,
            train_rows,
            validation_rows: val_rows,
        });

        let mut stop = StopReason::Completed;
        let train_split = Split::Train(self.split);
        let options = rosetta_activation_store::BatchOptions {
            buffer_bytes: cfg.buffer_bytes,
            drop_last: false,
        };
        'epochs: for epoch in state.epochs_done..epochs {
            if let Some(p) = cfg.early_stopping_patience {
                if let (Some(b), true) = (state.best_epoch, epoch > 0) {
                    if epoch - 1 - b >= p {
                        stop = StopReason::EarlyStopped;
                        break;
                    }
                }
            }
            let t0 = Instant::now();
            let mut train_time = 0.0;
            let mut loss_sum = Tensor::f_zeros([], (Kind::Double, self.device))?;
            let mut n_batches = 0u64;
            let mut pending: Option<Vec<Tensor>> = None;
            let mut in_step = 0usize;
            let mut rows_seen = 0u64;
            let batches = self.reader.batches_with(
                cfg.batch_size,
                Some(cfg.seed.wrapping_add(epoch as u64)),
                train_split,
                options,
            )?;
            for batch in batches {
                let batch = batch?;
                let tb = Instant::now();
                let Some(y) = batch.y else {
                    return Err(MappingError::Config("store batch without y".into()));
                };
                let rows = batch.x.size()[0];
                let mut x = batch.x.f_to_device(self.device)?.f_to_kind(Kind::Float)?;
                let mut y = y.f_to_device(self.device)?.f_to_kind(Kind::Float)?;
                if let Some([mx, sx, my, sy]) = &std_dev {
                    x = x.f_sub(mx)?.f_div(sx)?;
                    y = y.f_sub(my)?.f_div(sy)?;
                }
                let lr = cfg
                    .schedule
                    .lr(cfg.optimizer.lr, state.lr, opt.steps(), total_steps);
                let (loss, grads) = loss_and_grads(
                    &map,
                    &params,
                    &x,
                    &y,
                    cfg.cosine_weight,
                    1.0 / cfg.grad_accum as f64,
                )?;
                let _ = loss_sum.f_add_(&loss.f_to_kind(Kind::Double)?)?;
                pending = Some(match pending.take() {
                    None => grads,
                    Some(acc) => acc
                        .into_iter()
                        .zip(grads)
                        .map(|(mut a, g)| a.f_add_(&g).map(|_| a))
                        .collect::<std::result::Result<_, _>>()?,
                });
                in_step += 1;
                n_batches += 1;
                rows_seen += rows as u64;
                if in_step == cfg.grad_accum || n_batches == batches_per_epoch {
                    if let Some(g) = pending.take() {
                        opt.step(&params, &g, lr)?;
                    }
                    in_step = 0;
                }
                train_time += tb.elapsed().as_secs_f64();
                if observe(&TrainEvent::Batch {
                    epoch,
                    batch: n_batches,
                    rows: rows as u64,
                    lr,
                }) == Control::Stop
                {
                    stop = StopReason::Interrupted;
                    break 'epochs;
                }
            }
            if let Some(g) = pending.take() {
                opt.step(&params, &g, state.lr)?;
            }
            let train_loss = loss_sum.f_double_value(&[])? / n_batches.max(1) as f64;
            if !train_loss.is_finite() {
                return Err(MappingError::Diverged {
                    epoch,
                    step: opt.steps(),
                    loss: train_loss,
                });
            }
            // Validate in raw space.
            let raw = match &std {
                Some(s) => map.fold_standardization(s)?,
                None => map.detached_copy()?,
            };
            let validation = self.evaluate(&raw)?;
            let validation_loss = validation.map(|m| m.mse + cfg.cosine_weight * (1.0 - m.cosine));
            if let Some(vl) = validation_loss {
                let improved = state.best_loss.is_none_or(|b| vl < b * (1.0 - 1e-4));
                if improved {
                    state.best_loss = Some(vl);
                    state.best_epoch = Some(epoch);
                    state.plateau_bad_epochs = 0;
                    if cfg.early_stopping_patience.is_some() {
                        best = Some(raw.detached_copy()?);
                    }
                } else {
                    state.plateau_bad_epochs += 1;
                    if let Schedule::ReduceOnPlateau {
                        factor,
                        patience,
                        min_lr,
                    } = cfg.schedule
                    {
                        if state.plateau_bad_epochs > patience {
                            state.lr = (state.lr * factor).max(min_lr);
                            state.plateau_bad_epochs = 0;
                        }
                    }
                }
            }
            let lr_now = cfg
                .schedule
                .lr(cfg.optimizer.lr, state.lr, opt.steps(), total_steps);
            let record = EpochRecord {
                epoch,
                train_loss,
                lr: lr_now,
                validation,
                validation_loss,
                rows_per_s: rows_seen as f64 / train_time.max(1e-9),
                seconds: t0.elapsed().as_secs_f64(),
            };
            state.history.push(record.clone());
            state.epochs_done = epoch + 1;
            state.adam_steps = opt.steps();
            if let Some(dir) = &self.checkpoint_dir {
                self.save_checkpoint(dir, &mut state, &map, &opt, best.as_ref())?;
            }
            if observe(&TrainEvent::Epoch(&record)) == Control::Stop {
                stop = StopReason::Interrupted;
                break;
            }
        }
        if stop == StopReason::Completed {
            if let (Some(p), Some(b)) = (cfg.early_stopping_patience, state.best_epoch) {
                if state.epochs_done < epochs || state.epochs_done - 1 - b >= p {
                    // The loop ended by the patience check at its top only when epochs remained.
                    if state.epochs_done < epochs {
                        stop = StopReason::EarlyStopped;
                    }
                }
            }
        }
        let final_map = match (&best, cfg.early_stopping_patience) {
            (Some(b), Some(_)) => b.detached_copy()?,
            _ => match &std {
                Some(s) => map.fold_standardization(s)?,
                None => map.detached_copy()?,
            },
        };
        let validation = if stop == StopReason::Interrupted {
            None
        } else {
            self.evaluate(&final_map)?
        };
        let steps = opt.steps();
        let warnings = if stop == StopReason::Interrupted {
            Vec::new()
        } else {
            quality_warnings(Some(steps), validation.as_ref())
        };
        Ok(TrainOutcome {
            map: final_map,
            history: state.history,
            stop,
            validation,
            steps,
            warnings,
        })
    }

    fn save_checkpoint(
        &self,
        dir: &Path,
        state: &mut CheckpointState,
        map: &AnyMap,
        opt: &AdamW,
        best: Option<&AnyMap>,
    ) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| MappingError::io(dir, e))?;
        let file = format!("checkpoint-epoch-{:04}.safetensors", state.epochs_done);
        let mut tensors: Vec<(String, Tensor)> = map
            .named_tensors()
            .into_iter()
            .map(|(n, t)| (format!("param.{n}"), t))
            .collect();
        tensors.extend(opt.named_state());
        if let Some(b) = best {
            tensors.extend(
                b.named_tensors()
                    .into_iter()
                    .map(|(n, t)| (format!("best.{n}"), t)),
            );
        }
        let tensors = tensors
            .into_iter()
            .map(|(n, t)| Ok((n, t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?)))
            .collect::<Result<Vec<_>>>()?;
        rosetta_model_hooks::weights::write_safetensors_atomic(&dir.join(&file), &tensors, None)?;
        let old = std::mem::replace(&mut state.tensors_file, file);
        write_json_atomic(&dir.join(CHECKPOINT_FILE), &*state)?;
        if !old.is_empty() && old != state.tensors_file {
            let _ = std::fs::remove_file(dir.join(old));
        }
        Ok(())
    }

    /// Load a checkpoint into the map (through `params`, its [`Mapping::named_tensors`] views) and `opt` if
    /// `dir` holds one; `fresh` is the state a new run would start from (its config, fingerprint and shape
    /// must match the checkpoint's).
    fn load_checkpoint(
        &self,
        dir: &Path,
        fresh: &CheckpointState,
        params: &[Tensor],
        opt: &mut AdamW,
    ) -> Result<Option<(CheckpointState, Option<AnyMap>)>> {
        let path = dir.join(CHECKPOINT_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let state: CheckpointState = read_json(&path)?;
        let mismatch = |what: &str| {
            MappingError::Format {
            path: path.clone(),
            message: format!(
                "checkpoint was written with a different {what}; use another checkpoint directory or \
                 delete this one to start afresh"
            ),
        }
        };
        if state.format != CHECKPOINT_FORMAT {
            return Err(MappingError::Format {
                path: path.clone(),
                message: format!(
                    "checkpoint format {} (this Rosetta reads format {CHECKPOINT_FORMAT}); use another \
                     checkpoint directory or delete this one to start afresh",
                    state.format
                ),
            });
        }
        if state.config != fresh.config {
            return Err(mismatch("training configuration"));
        }
        if state.store_fingerprint != fresh.store_fingerprint {
            return Err(mismatch("store"));
        }
        if (state.kind, state.d_src, state.d_tgt, state.hidden)
            != (fresh.kind, fresh.d_src, fresh.d_tgt, fresh.hidden)
        {
            return Err(mismatch("map kind or shape"));
        }
        let tpath = dir.join(&state.tensors_file);
        let names: Vec<String> = fresh_param_names(params.len(), fresh.kind);
        let mut all: Vec<String> = names.iter().map(|n| format!("param.{n}")).collect();
        for i in 0..params.len() {
            all.push(format!("adam.m.{i}"));
            all.push(format!("adam.v.{i}"));
        }
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let loaded = read_tensors(&tpath, &refs, self.device)?;
        let _g = tch::no_grad_guard();
        // Copy a checkpoint tensor into its destination, refusing a shape mismatch by name.
        let copy_checked = |dst: &Tensor, src: &Tensor, what: String| -> Result<()> {
            if dst.size() != src.size() {
                return Err(MappingError::Format {
                    path: tpath.clone(),
                    message: format!(
                        "{what} has shape {:?}, checkpoint has {:?}",
                        dst.size(),
                        src.size()
                    ),
                });
            }
            dst.shallow_clone().f_copy_(src)?;
            Ok(())
        };
        for (i, (p, t)) in params.iter().zip(&loaded[..params.len()]).enumerate() {
            copy_checked(p, t, format!("parameter {}", names[i]))?;
        }
        let (ms, vs) = opt.moments();
        for (i, (m, v)) in ms.iter().zip(vs).enumerate() {
            copy_checked(
                m,
                &loaded[params.len() + 2 * i],
                format!("optimiser moment m.{i}"),
            )?;
            copy_checked(
                v,
                &loaded[params.len() + 2 * i + 1],
                format!("optimiser moment v.{i}"),
            )?;
        }
        opt.set_steps(state.adam_steps);
        let best = if self.config.early_stopping_patience.is_some() && state.best_epoch.is_some() {
            let bnames: Vec<String> = names.iter().map(|n| format!("best.{n}")).collect();
            let brefs: Vec<&str> = bnames.iter().map(String::as_str).collect();
            let b = read_tensors(&tpath, &brefs, self.device)?;
            Some(map_from_tensors(fresh.kind, b)?)
        } else {
            None
        };
        Ok(Some((state, best)))
    }
}

fn fresh_param_names(n: usize, kind: crate::MapKind) -> Vec<String> {
    let names: &[&str] = if kind == crate::MapKind::Autoencoder {
        &["w1", "b1", "w2", "b2"]
    } else {
        &["weight", "bias"]
    };
    names.iter().take(n).map(|s| s.to_string()).collect()
}

fn map_from_tensors(kind: crate::MapKind, t: Vec<Tensor>) -> Result<AnyMap> {
    let mut it = t.into_iter();
    let mut next = || {
        it.next()
            .ok_or_else(|| MappingError::Shape("checkpoint: missing tensor".into()))
    };
    Ok(if kind == crate::MapKind::Autoencoder {
        crate::Autoencoder::from_parts(next()?, next()?, next()?, next()?)?.into()
    } else {
        crate::Affine::from_parts(kind, next()?, next()?)?.into()
    })
}

/// The training loss of one micro-batch and its gradients with respect to `params` (scaled by `scale`,
/// e.g. `1 / grad_accum`): `MSE(map(x), y) + cosine_weight * (1 - mean cos(map(x), y))`. `x` and `y` are
/// f32 on the map's device, `[n, d_src]` and `[n, d_tgt]`. Returns the unscaled loss (detached, scalar) and
/// one gradient per parameter. Plain MSE on the crate's maps takes their analytic path
/// ([`Mapping::mse_loss_and_grads`]); anything else autograd. This is the trainer's step, public so
/// benchmarks time exactly it.
pub fn loss_and_grads(
    map: &dyn Mapping,
    params: &[Tensor],
    x: &Tensor,
    y: &Tensor,
    cosine_weight: f64,
    scale: f64,
) -> Result<(Tensor, Vec<Tensor>)> {
    if cosine_weight == 0.0 {
        if let Some(out) = map.mse_loss_and_grads(x, y, scale)? {
            return Ok(out);
        }
    }
    let pred = map.forward(x)?;
    let mut loss = pred.f_mse_loss(y, tch::Reduction::Mean)?;
    if cosine_weight > 0.0 {
        let cos = Tensor::f_cosine_similarity(&pred, y, 1, 1e-8)?.f_mean(None)?;
        loss = loss.f_add(
            &cos.f_neg()?
                .f_add_scalar(1.0)?
                .f_mul_scalar(cosine_weight)?,
        )?;
    }
    let scaled = if scale != 1.0 {
        loss.f_mul_scalar(scale)?
    } else {
        loss.shallow_clone()
    };
    let grads = Tensor::f_run_backward(&[&scaled], params, false, false)?;
    Ok((loss.f_detach()?, grads))
}

/// Cosine schedule with linear warm-up: the rate for optimiser step `step` (0-based) of `total`.
pub fn cosine_lr(peak: f64, step: u64, warmup: u64, total: u64, min_ratio: f64) -> f64 {
    if warmup > 0 && step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let t = ((step.saturating_sub(warmup)) as f64 / span).min(1.0);
    let min = peak * min_ratio;
    min + (peak - min) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

/// Metrics of `map` over the rows of `split`, in store order, `batch_size` rows at a time; with `y_stats`
/// (the target's statistics, usually of the training split) also [`Metrics::cosine_std`].
pub fn evaluate(
    reader: &StoreReader,
    map: &dyn Mapping,
    split: Split,
    batch_size: usize,
    y_stats: Option<&RunningStats>,
) -> Result<Metrics> {
    let _g = tch::no_grad_guard();
    let mut acc = MetricsAccumulator::new(map.d_tgt());
    if let Some(st) = y_stats {
        let mean = Tensor::from_slice(st.mean());
        let std = Tensor::from_slice(&st.std());
        acc = acc.with_standardization(&mean, &std)?;
    }
    for batch in reader.batches(batch_size, None, split)? {
        let batch = batch?;
        let y = batch
            .y
            .ok_or_else(|| MappingError::Config("store has no target side".into()))?;
        let pred = map.forward(&batch.x)?;
        acc.update(&pred, &y)?;
    }
    acc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The analytic MSE gradients equal autograd's.
    #[test]
    fn analytic_gradients_match_autograd() {
        use crate::map::{Affine, Autoencoder, AutoencoderInit};
        tch::manual_seed(1);
        let x = Tensor::randn([33, 12], (Kind::Float, Device::Cpu));
        let y = Tensor::randn([33, 7], (Kind::Float, Device::Cpu));
        let maps: Vec<AnyMap> = vec![
            Autoencoder::new(12, 7, Some(20), AutoencoderInit::Default, Device::Cpu)
                .unwrap()
                .into(),
            Affine::new(12, 7, Device::Cpu).unwrap().into(),
        ];
        for map in maps {
            let params = map.parameters();
            let (la, ga) = map.mse_loss_and_grads(&x, &y, 0.25).unwrap().unwrap();
            // Autograd: the cosine path with weight 0 is not taken, so build it directly.
            let loss = map.forward(&x).unwrap().mse_loss(&y, tch::Reduction::Mean);
            let gb = Tensor::run_backward(&[&(&loss * 0.25)], &params, false, false);
            assert!((la.double_value(&[]) - loss.double_value(&[])).abs() < 1e-6);
            for (a, b) in ga.iter().zip(&gb) {
                assert_eq!(a.size(), b.size(), "{}", map.kind());
                let err = (a - b).abs().max().double_value(&[]);
                let scale = b.abs().max().double_value(&[]);
                assert!(err <= 1e-5 * scale, "{}: {err} vs {scale}", map.kind());
            }
        }
    }

    /// AdamW against its textbook formula in f64 (as `torch.optim.AdamW` states it), over a few steps.
    #[test]
    fn adamw_matches_the_reference_formula() {
        tch::manual_seed(0);
        let cfg = AdamWConfig {
            lr: 1e-2,
            weight_decay: 0.1,
            ..AdamWConfig::default()
        };
        let p = Tensor::randn([7, 5], (Kind::Float, Device::Cpu));
        let mut p64 = p.to_kind(Kind::Double);
        let mut m64 = p64.zeros_like();
        let mut v64 = p64.zeros_like();
        let mut opt = AdamW::new(cfg, std::slice::from_ref(&p)).unwrap();
        for t in 1..=5 {
            // Some gradients tiny, some zero: the eps term matters.
            let g = Tensor::randn([7, 5], (Kind::Float, Device::Cpu)) * 10f64.powi(-(t % 4) * 3);
            let g = g.where_self(&g.abs().gt(1e-9), &g.zeros_like());
            opt.step(std::slice::from_ref(&p), std::slice::from_ref(&g), cfg.lr)
                .unwrap();
            let g64 = g.to_kind(Kind::Double);
            p64 = &p64 * (1.0 - cfg.lr * cfg.weight_decay);
            m64 = &m64 * cfg.beta1 + &g64 * (1.0 - cfg.beta1);
            v64 = &v64 * cfg.beta2 + g64.square() * (1.0 - cfg.beta2);
            let mhat = &m64 / (1.0 - cfg.beta1.powi(t));
            let vhat = &v64 / (1.0 - cfg.beta2.powi(t));
            p64 = &p64 - mhat / (vhat.sqrt() + cfg.eps) * cfg.lr;
            let err = (p.to_kind(Kind::Double) - &p64)
                .abs()
                .max()
                .double_value(&[]);
            assert!(err < 1e-6, "step {t}: max error {err}");
        }
        assert_eq!(opt.steps(), 5);
        assert!(opt
            .step(
                std::slice::from_ref(&p),
                &[Tensor::zeros([3], (Kind::Float, Device::Cpu))],
                0.1
            )
            .is_err());
    }
}
