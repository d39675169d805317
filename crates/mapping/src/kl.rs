//! KL fidelity: how much of the target model's behaviour survives when its activations at the mapped hook
//! point are replaced by the map's predictions, and fine-tuning a map on that objective.
//!
//! For a document with target tokens `t_0..t_{n-1}` and mapped positions `P`, the target runs three times:
//! clean; with the activation at every `p ∈ P` replaced by `map(x_p)` (the source model's activation at the
//! aligned token); and with them replaced by the mean target activation (mean ablation, the baseline a map
//! must beat). At each `p ∈ P` we measure `KL(p_target(· | clean) || p_target(· | patched))` over the
//! next-token distribution. All positions of a document are patched together, so errors compound through
//! attention exactly as they would when the map is used.
//!
//! This is the only place the mapping crate runs a model, through `rosetta-model-hooks`' hook closures.

use std::sync::Mutex;

use rosetta_activation_store::{Document, Split, StoreReader};
use rosetta_model_hooks::{Batch, HookPoint, Hooks, Model, PaddingSide};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{MappingError, Result};
use crate::map::{AnyMap, Mapping};
use crate::train::{AdamW, AdamWConfig};

/// One document for KL evaluation: the target's full token sequence and the positions to patch with
/// their source activations.
#[derive(Debug)]
pub struct KlDoc {
    /// Document id (for error messages).
    pub doc_id: i64,
    /// The target model's token ids for the whole document.
    pub token_ids: Vec<i64>,
    /// Positions (indices into `token_ids`) to patch and measure, strictly increasing.
    pub positions: Vec<i64>,
    /// Source activations for those positions, `[positions.len(), d_src]`.
    pub source: Tensor,
}

impl KlDoc {
    /// From a store document. The store must hold every target position of the document (collected
    /// with all positions and identity alignment, or any collection where the target side kept each
    /// token), because the target re-reads the whole sequence; otherwise this is an error naming the
    /// document.
    pub fn from_document(doc: Document) -> Result<Self> {
        let n = doc.y_positions.len();
        let contiguous = doc
            .y_positions
            .iter()
            .enumerate()
            .all(|(i, &p)| p == i as i64);
        if n == 0 || !contiguous || doc.y_token_ids.len() != n {
            return Err(MappingError::Config(format!(
                "document {}: the store does not hold every target token (positions {:?}..); KL fidelity \
                 needs a store collected with --filter all and identical tokenizers, or KlDoc built from the text",
                doc.doc_id,
                &doc.y_positions[..n.min(4)]
            )));
        }
        Ok(Self {
            doc_id: doc.doc_id,
            token_ids: doc.y_token_ids,
            positions: doc.y_positions,
            source: doc.x,
        })
    }

    /// The documents of `split` of a store, as [`KlDoc`]s.
    pub fn from_store(
        reader: &StoreReader,
        split: Split,
    ) -> impl Iterator<Item = Result<KlDoc>> + '_ {
        reader
            .documents(split)
            .map(|d| d.map_err(MappingError::from).and_then(KlDoc::from_document))
    }
}

/// Options of [`kl_fidelity`] and [`fine_tune_kl`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KlOptions {
    /// Documents per forward pass.
    pub docs_per_batch: usize,
    /// Stop after this many documents (`None`: all).
    pub max_docs: Option<usize>,
}

impl Default for KlOptions {
    fn default() -> Self {
        Self {
            docs_per_batch: 4,
            max_docs: None,
        }
    }
}

/// Summary of a per-token KL distribution (nats).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KlSummary {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub median: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

impl KlSummary {
    /// Summarise per-token values.
    pub fn of(values: &[f32]) -> Self {
        let mut v: Vec<f64> = values.iter().map(|&x| x as f64).collect();
        v.sort_by(f64::total_cmp);
        let q = |f: f64| -> f64 {
            if v.is_empty() {
                return f64::NAN;
            }
            v[((v.len() - 1) as f64 * f).round() as usize]
        };
        Self {
            mean: if v.is_empty() {
                f64::NAN
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            },
            median: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// Result of [`kl_fidelity`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KlReport {
    /// Documents evaluated.
    pub docs: usize,
    /// Tokens measured.
    pub tokens: usize,
    /// KL with mapped activations.
    pub mapped: KlSummary,
    /// KL with mean-ablated activations (the baseline).
    pub mean_ablated: KlSummary,
    /// Per-token KL with mapped activations, in document order (for plots).
    pub mapped_values: Vec<f32>,
    /// Per-token KL with mean-ablated activations.
    pub mean_ablated_values: Vec<f32>,
}

/// A padded batch of documents with the patch layout.
struct PatchBatch {
    batch: Batch,
    /// Flat indices `b * T + p` of the patched positions, `[N]` i64 on the model's device.
    flat: Tensor,
    /// `[B, T, 1]` bool mask of patched positions.
    mask: Tensor,
    /// Source activations of the patched positions in order, `[N, d_src]`.
    source: Tensor,
}

fn patch_batch(docs: &[KlDoc], pad: i64, device: Device) -> Result<PatchBatch> {
    let seqs: Vec<Vec<i64>> = docs.iter().map(|d| d.token_ids.clone()).collect();
    let batch = Batch::from_sequences(&seqs, pad, PaddingSide::Right, device)?;
    let t = batch.seq_len();
    let mut flat = Vec::new();
    for (b, d) in docs.iter().enumerate() {
        if d.source.size().first() != Some(&(d.positions.len() as i64)) {
            return Err(MappingError::Shape(format!(
                "document {}: {} positions but source activations {:?}",
                d.doc_id,
                d.positions.len(),
                d.source.size()
            )));
        }
        for &p in &d.positions {
            if p < 0 || p >= d.token_ids.len() as i64 {
                return Err(MappingError::Shape(format!(
                    "document {}: position {p} outside its {} tokens",
                    d.doc_id,
                    d.token_ids.len()
                )));
            }
            flat.push(b as i64 * t + p);
        }
    }
    let flat = Tensor::from_slice(&flat).f_to_device(device)?;
    let bsz = docs.len() as i64;
    let mask = Tensor::f_zeros([bsz * t], (Kind::Bool, device))?
        .f_index_fill(0, &flat, 1)?
        .f_view([bsz, t, 1])?;
    let sources: Vec<&Tensor> = docs.iter().map(|d| &d.source).collect();
    let source = Tensor::f_cat(&sources, 0)?;
    Ok(PatchBatch {
        batch,
        flat,
        mask,
        source,
    })
}

/// Run the target with the activations at `point` replaced, at the batch's patched positions, by
/// `rows` (`[N, d]`, in position order); returns log-probabilities at those positions `[N, vocab]`.
/// With `grad`, autograd flows from the output back into `rows`.
fn patched_logprobs(
    target: &Model,
    point: HookPoint,
    pb: &PatchBatch,
    rows: Option<&Tensor>,
    grad: bool,
) -> Result<Tensor> {
    let mut hooks = Hooks::new();
    if let Some(rows) = rows {
        let d = target.d_model();
        let (bsz, t) = (pb.batch.size(), pb.batch.seq_len());
        let full = Tensor::f_zeros([bsz * t, d], (Kind::Float, target.device()))?
            .f_index_put(
                &[Some(pb.flat.shallow_clone())],
                &rows.f_to_kind(Kind::Float)?,
                false,
            )?
            .f_view([bsz, t, d])?;
        let shared = Mutex::new((full, pb.mask.shallow_clone()));
        hooks.func(point, move |_ctx, x| {
            let guard = shared.lock().map_err(|_| {
                rosetta_model_hooks::HookError::InvalidInput("patch state poisoned".into())
            })?;
            let (full, mask) = &*guard;
            Ok(full.f_to_kind(x.kind())?.f_where_self(mask, &x)?)
        });
    }
    // A pass stops after its last hooked point: a no-op hook at the logits runs it to the end.
    hooks.func(HookPoint::Logits, |_ctx, x| Ok(x));
    let out = if grad {
        target.forward_grad(&pb.batch, &hooks)?
    } else {
        target.forward(&pb.batch, &hooks)?
    };
    let logits = out.last;
    let v = logits.size()[2];
    let flat_logits = logits.f_view([-1, v])?.f_index_select(0, &pb.flat)?;
    Ok(flat_logits
        .f_to_kind(Kind::Float)?
        .f_log_softmax(-1, Kind::Float)?)
}

/// `KL(p || q)` per row from log-probabilities `[N, V]`.
fn kl_rows(logp: &Tensor, logq: &Tensor) -> Result<Tensor> {
    Ok(logp.f_exp()?.f_mul(&logp.f_sub(logq)?)?.f_sum_dim_intlist(
        [-1i64].as_slice(),
        false,
        Kind::Float,
    )?)
}

fn for_batches(
    docs: impl IntoIterator<Item = Result<KlDoc>>,
    options: &KlOptions,
    mut f: impl FnMut(&[KlDoc]) -> Result<()>,
) -> Result<usize> {
    if options.docs_per_batch == 0 {
        return Err(MappingError::Config("docs_per_batch must be >= 1".into()));
    }
    let mut group = Vec::new();
    let mut n = 0usize;
    for d in docs {
        if options.max_docs.is_some_and(|m| n >= m) {
            break;
        }
        group.push(d?);
        n += 1;
        if group.len() == options.docs_per_batch {
            f(&group)?;
            group.clear();
        }
    }
    if !group.is_empty() {
        f(&group)?;
    }
    Ok(n)
}

/// Measure KL fidelity of `map` at the target's `point` on `docs` against mean ablation with `mean_y`
/// (`[d_tgt]`, e.g. the store's target mean). The map's output width must be the target's `d_model`.
pub fn kl_fidelity(
    target: &Model,
    point: HookPoint,
    map: &dyn Mapping,
    mean_y: &Tensor,
    docs: impl IntoIterator<Item = Result<KlDoc>>,
    options: &KlOptions,
) -> Result<KlReport> {
    let _g = tch::no_grad_guard();
    check_widths(target, map, mean_y)?;
    let pad = target_pad(target);
    let device = target.device();
    let mean = mean_y.f_to_device(device)?.f_to_kind(Kind::Float)?;
    let (mut mapped_v, mut mean_v) = (Vec::new(), Vec::new());
    let ndocs = for_batches(docs, options, |group| {
        let pb = patch_batch(group, pad, device)?;
        let clean = patched_logprobs(target, point, &pb, None, false)?;
        let mapped_rows = map.forward(&pb.source.f_to_device(device)?)?;
        let mapped = patched_logprobs(target, point, &pb, Some(&mapped_rows), false)?;
        let n = mapped_rows.size()[0];
        let mean_rows = mean.f_unsqueeze(0)?.f_expand([n, -1], false)?;
        let ablated = patched_logprobs(target, point, &pb, Some(&mean_rows), false)?;
        mapped_v.extend(Vec::<f32>::try_from(
            &kl_rows(&clean, &mapped)?.f_to_device(Device::Cpu)?,
        )?);
        mean_v.extend(Vec::<f32>::try_from(
            &kl_rows(&clean, &ablated)?.f_to_device(Device::Cpu)?,
        )?);
        Ok(())
    })?;
    if mapped_v.is_empty() {
        return Err(MappingError::Config(
            "KL fidelity over zero documents".into(),
        ));
    }
    Ok(KlReport {
        docs: ndocs,
        tokens: mapped_v.len(),
        mapped: KlSummary::of(&mapped_v),
        mean_ablated: KlSummary::of(&mean_v),
        mapped_values: mapped_v,
        mean_ablated_values: mean_v,
    })
}

fn check_widths(target: &Model, map: &dyn Mapping, mean_y: &Tensor) -> Result<()> {
    let d = target.d_model();
    if map.d_tgt() != d || mean_y.size() != [d] {
        return Err(MappingError::Shape(format!(
            "target model width {d}, map output {} and mean {:?}",
            map.d_tgt(),
            mean_y.size()
        )));
    }
    Ok(())
}

fn target_pad(target: &Model) -> i64 {
    // Padding is masked out; any valid id works.
    let _ = target;
    0
}

/// Options of [`fine_tune_kl`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KlTrainConfig {
    /// Passes over the documents.
    pub epochs: usize,
    /// Optimiser (a smaller rate than MSE training suits fine-tuning).
    pub optimizer: AdamWConfig,
    /// Batching.
    pub batches: KlOptions,
}

impl Default for KlTrainConfig {
    fn default() -> Self {
        Self {
            epochs: 1,
            optimizer: AdamWConfig {
                lr: 1e-5,
                ..AdamWConfig::default()
            },
            batches: KlOptions::default(),
        }
    }
}

/// Fine-tune `map` (in place) by minimising the mean per-token `KL(p_target(·|clean) ||
/// p_target(·|mapped))`, backpropagated through the target's frozen layers above `point`. Start from the
/// MSE solution. `docs` is called once per epoch and must yield the same documents each time. Returns
/// the mean training KL of each epoch.
pub fn fine_tune_kl<I>(
    target: &Model,
    point: HookPoint,
    map: &AnyMap,
    mut docs: impl FnMut() -> I,
    config: &KlTrainConfig,
    observe: &mut dyn FnMut(usize, usize, f64),
) -> Result<Vec<f64>>
where
    I: IntoIterator<Item = Result<KlDoc>>,
{
    if !map.kind().is_trained() {
        return Err(MappingError::Config(format!(
            "KL fine-tuning needs a trainable map; convert the {} map to affine first",
            map.kind()
        )));
    }
    if map.d_tgt() != target.d_model() {
        return Err(MappingError::Shape(format!(
            "target model width {}, map output {}",
            target.d_model(),
            map.d_tgt()
        )));
    }
    let device = target.device();
    let pad = target_pad(target);
    let params = map.parameters();
    let mut opt = AdamW::new(config.optimizer, &params)?;
    let mut history = Vec::new();
    for epoch in 0..config.epochs {
        let (mut sum, mut batches) = (0.0, 0usize);
        for_batches(docs(), &config.batches, |group| {
            let pb = patch_batch(group, pad, device)?;
            let clean = {
                let _g = tch::no_grad_guard();
                patched_logprobs(target, point, &pb, None, false)?
            };
            let rows = map.forward(&pb.source.f_to_device(device)?)?;
            let patched = patched_logprobs(target, point, &pb, Some(&rows), true)?;
            let loss = kl_rows(&clean, &patched)?.f_mean(Kind::Float)?;
            let grads = Tensor::f_run_backward(&[&loss], &params, false, false)?;
            opt.step(&params, &grads, config.optimizer.lr)?;
            let l = loss.f_double_value(&[])?;
            if !l.is_finite() {
                return Err(MappingError::Diverged {
                    epoch,
                    step: opt.steps(),
                    loss: l,
                });
            }
            sum += l;
            batches += 1;
            observe(epoch, batches, l);
            Ok(())
        })?;
        history.push(sum / batches.max(1) as f64);
    }
    Ok(history)
}
