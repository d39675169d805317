//! Carrying a steering vector from model A to model B through a [`Mapping`], and saying how well it went.
//!
//! Recipes ([`Recipe`], recorded in the transferred vector's [`Method::Transferred`]):
//!
//! | recipe | transferred vector | needs |
//! |---|---|---|
//! | mapped contrast | `mean(M(h+)) - mean(M(h-))` | the source's contrast activations |
//! | offset | `mean(M(a + v) - M(a))` | reference activations `a` in the source |
//! | linear part | `W v` | an affine map `y = W x + b` |
//! | random | a Gaussian direction with the transferred norm, seeded | — (the floor) |
//!
//! Per-position vectors (`[k, d]`, trigger contrasts) go through row by row (mapped contrast then needs
//! `[n, k, d]` contrast activations). When the target's tokenizer cuts the trigger into other tokens,
//! [`trigger_alignment`] pairs each target trigger token with the source token covering its last character
//! (the store's `CharEnd` rule) and [`reindex_rows`] lays the source rows out in target order first. With an
//! exact affine map every recipe gives `W v`.
//!
//! A map that reconstructs activations well (low FVU) can still fail to carry a direction, so every
//! transfer comes with a [`Fidelity`] report: cosine to the target's native vector computed from the same
//! contrast data, norm ratio, the random baseline's cosine, and held-out effects when the caller measures
//! them ([`Fidelity::measure_effects`]).

use rand::{Rng, SeedableRng};
use rosetta_mapping::{AnyMap, Mapping, SavedMap};
use rosetta_model_hooks::HookPoint;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, SteeringError};
use crate::vector::{Method, ModelIdentity, Recipe, SteeringVector, VectorEntry};

/// A map from a source model's hook point to a target model's, ready to carry vectors.
pub struct Transfer<'a> {
    /// The map.
    pub map: &'a AnyMap,
    /// The source model's hook point the map reads (`None`: not recorded; any single-entry vector goes).
    pub source_point: Option<HookPoint>,
    /// The target model.
    pub target: ModelIdentity,
    /// Where in the target the transferred vector applies.
    pub target_point: HookPoint,
    /// SHA-256 of the saved map's tensors (empty when the map was never saved).
    pub map_sha256: String,
}

impl std::fmt::Debug for Transfer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Transfer({} map {:?} -> {} {})",
            self.map.kind(),
            self.source_point,
            self.target.id,
            self.target_point
        )
    }
}

fn parse_point(s: &str, which: &str) -> Result<HookPoint> {
    s.parse()
        .map_err(|e| SteeringError::invalid(format!("the map's {which} hook point {s:?}: {e}")))
}

impl<'a> Transfer<'a> {
    /// From a saved map: its source and target hook points come from `map.json` (the target must be
    /// recorded), and `target` must match the recorded target model.
    pub fn from_saved(saved: &'a SavedMap, target: ModelIdentity) -> Result<Self> {
        let t = saved.info.target.as_ref().ok_or_else(|| {
            SteeringError::invalid("the map does not record its target model and hook point")
        })?;
        let mut diffs = Vec::new();
        if t.id != target.id {
            diffs.push(format!("map target is {:?}, not {:?}", t.id, target.id));
        }
        if t.tokenizer_hash != target.tokenizer_hash {
            diffs.push(format!(
                "map target tokenizer hash is {}, not {}",
                t.tokenizer_hash, target.tokenizer_hash
            ));
        }
        if t.dim != target.d_model {
            diffs.push(format!(
                "map target width is {}, the model's is {}",
                t.dim, target.d_model
            ));
        }
        if !diffs.is_empty() {
            return Err(SteeringError::WrongModel {
                what: format!("{} map", saved.info.kind),
                message: diffs.join("; "),
            });
        }
        Ok(Self {
            map: &saved.map,
            source_point: match &saved.info.source {
                Some(s) => Some(parse_point(&s.hook_point, "source")?),
                None => None,
            },
            target_point: parse_point(&t.hook_point, "target")?,
            target,
            map_sha256: saved.info.tensors_sha256.clone(),
        })
    }

    fn source_entry<'v>(&self, vector: &'v SteeringVector) -> Result<&'v VectorEntry> {
        let e = match self.source_point {
            Some(p) => vector.entry(p).ok_or_else(|| {
                SteeringError::invalid(format!(
                    "the map reads {p} but the vector has no entry there ({})",
                    vector
                        .entries
                        .iter()
                        .map(|e| e.point.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?,
            None => vector.single()?,
        };
        if e.width() != self.map.d_src() {
            return Err(SteeringError::invalid(format!(
                "the vector at {} has width {}, the map reads {}",
                e.point,
                e.width(),
                self.map.d_src()
            )));
        }
        Ok(e)
    }

    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.f_to_kind(Kind::Float)?.f_to_device(self.map.device())?;
        Ok(self
            .map
            .forward(&x)?
            .f_to_device(Device::Cpu)?
            .f_to_kind(Kind::Float)?)
    }

    fn finish(
        &self,
        vector: &SteeringVector,
        recipe: Recipe,
        direction: Tensor,
        scale: f64,
        seed: Option<u64>,
    ) -> Result<SteeringVector> {
        let _guard = tch::no_grad_guard();
        let entry = VectorEntry::new(self.target_point, &direction, scale)?;
        let mut v = SteeringVector::new(
            self.target.clone(),
            Method::Transferred {
                recipe,
                source: vector.model.clone(),
                source_method: Box::new(vector.method.clone()),
                map_kind: self.map.kind().to_string(),
                map_sha256: self.map_sha256.clone(),
                seed,
            },
            vector.provenance.clone(),
            vec![entry],
        )?;
        v.extra = vector.extra.clone();
        Ok(v)
    }

    /// `mean(M(h+)) - mean(M(h-))` from the source's contrast activations `[n, d_src]` (or `[n, k, d_src]`
    /// for a per-position vector). The scale is the mean norm of the mapped activations.
    pub fn mapped_contrast(
        &self,
        vector: &SteeringVector,
        positive: &Tensor,
        negative: &Tensor,
    ) -> Result<SteeringVector> {
        let _guard = tch::no_grad_guard();
        let e = self.source_entry(vector)?;
        let want = if e.per_position() { 3 } else { 2 };
        for (name, t) in [("positive", positive), ("negative", negative)] {
            if t.dim() != want || t.size()[want - 1] != self.map.d_src() {
                return Err(SteeringError::invalid(format!(
                    "{name} contrast activations must be [n, {}{}], got {:?}",
                    if e.per_position() { "k, " } else { "" },
                    self.map.d_src(),
                    t.size()
                )));
            }
        }
        let d = self.map.d_src();
        let mp = self.apply(&positive.f_reshape([-1, d])?)?;
        let mn = self.apply(&negative.f_reshape([-1, d])?)?;
        let (dir, scale) = if e.per_position() {
            let k = positive.size()[1];
            if negative.size()[1] != k || k != e.direction.size()[0] {
                return Err(SteeringError::invalid(format!(
                    "per-position contrast activations must have the vector's {} rows",
                    e.direction.size()[0]
                )));
            }
            let m = |t: &Tensor| {
                t.f_view([-1, k, self.map.d_tgt()])?.f_mean_dim(
                    [0i64].as_slice(),
                    false,
                    Kind::Float,
                )
            };
            (m(&mp)?.f_sub(&m(&mn)?)?, pooled_norm(&mp, &mn)?)
        } else {
            (
                crate::methods::mean_difference(&mp, &mn)?,
                pooled_norm(&mp, &mn)?,
            )
        };
        self.finish(vector, Recipe::MappedContrast, dir, scale, None)
    }

    /// `mean(M(a + v) - M(a))` over reference activations `a` `[n, d_src]`, row by row for a per-position
    /// vector. The scale is the mean norm of `M(a)`.
    pub fn offset(&self, vector: &SteeringVector, reference: &Tensor) -> Result<SteeringVector> {
        let _guard = tch::no_grad_guard();
        let e = self.source_entry(vector)?;
        if reference.dim() != 2
            || reference.size()[1] != self.map.d_src()
            || reference.size()[0] == 0
        {
            return Err(SteeringError::invalid(format!(
                "reference activations must be [n, {}] with n > 0, got {:?}",
                self.map.d_src(),
                reference.size()
            )));
        }
        let a = reference.f_to_kind(Kind::Float)?;
        let ma = self.apply(&a)?;
        let rows: Vec<Tensor> = if e.per_position() {
            (0..e.direction.size()[0])
                .map(|j| e.direction.f_get(j))
                .collect::<Result<_, _>>()?
        } else {
            vec![e.direction.shallow_clone()]
        };
        let mapped = rows
            .iter()
            .map(|v| {
                let mv = self.apply(&a.f_add(&v.f_unsqueeze(0)?)?)?;
                Ok(mv
                    .f_sub(&ma)?
                    .f_mean_dim([0i64].as_slice(), false, Kind::Float)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let dir = if e.per_position() {
            Tensor::f_stack(&mapped, 0)?
        } else {
            mapped[0].shallow_clone()
        };
        let scale = mean_norm(&ma)?;
        self.finish(vector, Recipe::Offset, dir, scale, None)
    }

    /// `W v` for an affine map `y = W x + b` (errors for an autoencoder, which has no linear part). The
    /// scale is the source's, times `|W v| / |v|`.
    pub fn linear(&self, vector: &SteeringVector) -> Result<SteeringVector> {
        let _guard = tch::no_grad_guard();
        let e = self.source_entry(vector)?;
        let AnyMap::Affine(affine) = self.map else {
            return Err(SteeringError::invalid(format!(
                "a {} map has no linear part; use the mapped-contrast or offset recipe",
                self.map.kind()
            )));
        };
        let w = affine
            .weight()
            .f_to_device(Device::Cpu)?
            .f_to_kind(Kind::Float)?; // [d_tgt, d_src]
        let dir = e.direction.f_matmul(&w.f_transpose(0, 1)?)?;
        let ratio = norm(&dir)? / e.norm().max(f64::MIN_POSITIVE);
        self.finish(vector, Recipe::Linear, dir, e.scale * ratio, None)
    }

    /// A Gaussian direction with `like`'s norm (same shape), from `seed`: the floor a transfer must beat.
    pub fn random(&self, like: &SteeringVector, seed: u64) -> Result<SteeringVector> {
        let e = like.entry(self.target_point).ok_or_else(|| {
            SteeringError::invalid(format!(
                "the random baseline copies a vector at {}, which this one lacks",
                self.target_point
            ))
        })?;
        let dir = random_like(&e.direction, seed)?;
        let mut v = self.finish(like, Recipe::Random, dir, e.scale, Some(seed))?;
        if let Method::Transferred {
            source_method,
            source,
            ..
        } = &like.method
        {
            if let Method::Transferred {
                source_method: sm,
                source: s,
                ..
            } = &mut v.method
            {
                *sm = source_method.clone();
                *s = source.clone();
            }
        }
        Ok(v)
    }
}

/// The activations a recipe reads.
#[derive(Debug, Clone, Copy)]
pub enum TransferData<'d> {
    /// Source contrast activations `[n, d_src]` (or `[n, k, d_src]`), for [`Recipe::MappedContrast`].
    Contrast {
        /// Positive side.
        positive: &'d Tensor,
        /// Negative side.
        negative: &'d Tensor,
    },
    /// Source reference activations `[n, d_src]`, for [`Recipe::Offset`].
    Reference(&'d Tensor),
    /// Nothing, for [`Recipe::Linear`].
    None,
}

/// A transferred vector, its random baseline and how well the transfer went.
#[derive(Debug, Clone)]
pub struct TransferOutcome {
    /// The transferred vector (its `extra["fidelity"]` holds the report).
    pub vector: SteeringVector,
    /// A random vector with its norm (seeded).
    pub random: SteeringVector,
    /// The report.
    pub fidelity: Fidelity,
}

impl Transfer<'_> {
    /// Carry `vector` with `recipe`, make the seeded random baseline, and report fidelity against the
    /// target's `native` vector (from the same contrast data) when given. The one entry point that always
    /// returns the report with the vector.
    pub fn carry(
        &self,
        vector: &SteeringVector,
        recipe: Recipe,
        data: TransferData<'_>,
        native: Option<&SteeringVector>,
        seed: u64,
    ) -> Result<TransferOutcome> {
        let mut moved = match (recipe, data) {
            (Recipe::MappedContrast, TransferData::Contrast { positive, negative }) => {
                self.mapped_contrast(vector, positive, negative)?
            }
            (Recipe::Offset, TransferData::Reference(a)) => self.offset(vector, a)?,
            (Recipe::Linear, _) => self.linear(vector)?,
            (Recipe::Random, _) => {
                return Err(SteeringError::invalid(
                    "the random baseline comes with every transfer; pick a real recipe",
                ))
            }
            (r, _) => {
                return Err(SteeringError::invalid(format!(
                    "the {r} recipe needs {}",
                    match r {
                        Recipe::MappedContrast => "contrast activations (TransferData::Contrast)",
                        _ => "reference activations (TransferData::Reference)",
                    }
                )))
            }
        };
        let random = self.random(&moved, seed)?;
        let fidelity = Fidelity::new(&moved, native, Some(&random))?;
        let report =
            serde_json::to_value(&fidelity).map_err(|e| SteeringError::invalid(e.to_string()))?;
        match &mut moved.extra {
            serde_json::Value::Object(m) => {
                m.insert("fidelity".into(), report);
            }
            other => *other = serde_json::json!({ "fidelity": report }),
        }
        Ok(TransferOutcome {
            vector: moved,
            random,
            fidelity,
        })
    }
}

/// A Gaussian tensor of `like`'s shape and norm, from `seed` (Box–Muller over a seeded `StdRng`, so the
/// same seed gives the same vector on every machine and device).
pub fn random_like(like: &Tensor, seed: u64) -> Result<Tensor> {
    let n = like.numel();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut vals = Vec::with_capacity(n);
    while vals.len() < n {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        vals.push(r * (std::f64::consts::TAU * u2).cos());
        vals.push(r * (std::f64::consts::TAU * u2).sin());
    }
    vals.truncate(n);
    let t = Tensor::from_slice(&vals).f_view(like.size().as_slice())?;
    let target = like.f_to_kind(Kind::Double)?.f_norm()?.double_value(&[]);
    let now = t.f_norm()?.double_value(&[]);
    Ok(t.f_mul_scalar(target / now)?.f_to_kind(Kind::Float)?)
}

fn norm(t: &Tensor) -> Result<f64> {
    Ok(t.f_to_kind(Kind::Double)?.f_norm()?.double_value(&[]))
}

fn mean_norm(t: &Tensor) -> Result<f64> {
    Ok(t.f_norm_scalaropt_dim(2, [1i64].as_slice(), false)?
        .f_mean(Kind::Double)?
        .double_value(&[]))
}

fn pooled_norm(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (na, nb) = (a.size()[0] as f64, b.size()[0] as f64);
    Ok((mean_norm(a)? * na + mean_norm(b)? * nb) / (na + nb))
}

/// Cosine between two vectors' entries at `point` (all rows together for per-position vectors).
pub fn cosine(a: &VectorEntry, b: &VectorEntry) -> Result<f64> {
    if a.direction.size() != b.direction.size() {
        return Err(SteeringError::invalid(format!(
            "cannot compare directions of shapes {:?} and {:?}",
            a.direction.size(),
            b.direction.size()
        )));
    }
    let x = a.direction.f_to_kind(Kind::Double)?.f_flatten(0, -1)?;
    let y = b.direction.f_to_kind(Kind::Double)?.f_flatten(0, -1)?;
    let d = norm(&x)? * norm(&y)?;
    if d == 0.0 {
        return Err(SteeringError::invalid("cosine with a zero vector"));
    }
    Ok(x.f_dot(&y)?.double_value(&[]) / d)
}

/// One measured effect of one vector on held-out prompts (e.g. induced refusal rate).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Effect {
    /// Which vector: `native`, `transferred`, `random`, `none`.
    pub vector: String,
    /// The metric's name.
    pub metric: String,
    /// Its value.
    pub value: f64,
}

/// How well a transfer carried a direction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fidelity {
    /// The recipe used.
    pub recipe: Recipe,
    /// Norm of the transferred direction.
    pub norm: f64,
    /// Cosine to the target's native vector from the same contrast data (when one was given).
    pub cosine_to_native: Option<f64>,
    /// `|transferred| / |native|`.
    pub norm_ratio: Option<f64>,
    /// Cosine of the random baseline to the native vector (the chance level).
    pub random_cosine_to_native: Option<f64>,
    /// Held-out effects, for none / native / transferred / random as measured.
    pub effects: Vec<Effect>,
}

impl Fidelity {
    /// Compare `transferred` with the target's `native` vector and a `random` baseline (any may be absent
    /// except the transferred one), at the transferred vector's hook point.
    pub fn new(
        transferred: &SteeringVector,
        native: Option<&SteeringVector>,
        random: Option<&SteeringVector>,
    ) -> Result<Self> {
        let t = transferred.single()?;
        let recipe = match &transferred.method {
            Method::Transferred { recipe, .. } => *recipe,
            other => {
                return Err(SteeringError::invalid(format!(
                    "a fidelity report is for a transferred vector, not a {}",
                    crate::vector::method_name(other)
                )))
            }
        };
        let native_entry = match native {
            Some(n) => {
                n.expect_model(&transferred.model)?;
                Some(n.entry(t.point).ok_or_else(|| {
                    SteeringError::invalid(format!("the native vector has no entry at {}", t.point))
                })?)
            }
            None => None,
        };
        let cosine_to_native = native_entry.map(|n| cosine(t, n)).transpose()?;
        let norm_ratio = native_entry.map(|n| t.norm() / n.norm());
        let random_cosine_to_native = match (random, native_entry) {
            (Some(r), Some(n)) => Some(cosine(r.single()?, n)?),
            _ => None,
        };
        Ok(Self {
            recipe,
            norm: t.norm(),
            cosine_to_native,
            norm_ratio,
            random_cosine_to_native,
            effects: Vec::new(),
        })
    }

    /// Measure `metric` with `measure` for each named vector (`None` = no intervention) and record it.
    pub fn measure_effects(
        &mut self,
        metric: &str,
        vectors: &[(&str, Option<&SteeringVector>)],
        measure: &mut dyn FnMut(Option<&SteeringVector>) -> Result<f64>,
    ) -> Result<()> {
        for (name, v) in vectors {
            let value = measure(*v)?;
            self.effects.push(Effect {
                vector: name.to_string(),
                metric: metric.to_string(),
                value,
            });
        }
        Ok(())
    }

    /// A Markdown table of the report.
    pub fn to_markdown(&self) -> String {
        let f = |x: Option<f64>| x.map_or("—".to_string(), |v| format!("{v:.3}"));
        let mut s = format!(
            "| recipe | norm | cosine to native | norm ratio | random's cosine |\n|---|---|---|---|---|\n| {} | {:.3} | {} | {} | {} |\n",
            self.recipe,
            self.norm,
            f(self.cosine_to_native),
            f(self.norm_ratio),
            f(self.random_cosine_to_native)
        );
        if !self.effects.is_empty() {
            s.push_str("\n| vector | metric | value |\n|---|---|---|\n");
            for e in &self.effects {
                s.push_str(&format!(
                    "| {} | {} | {:.3} |\n",
                    e.vector, e.metric, e.value
                ));
            }
        }
        s
    }
}

/// For a trigger read by two tokenizers, which source trigger token each target trigger token takes its
/// vector row from: the source token whose character span covers the target token's last character (the
/// pairing the store's `CharEnd` alignment makes at token ends). `prompt` gives the context the trigger
/// appears in (its first occurrence is used). Returns one source index (into the source's trigger tokens)
/// per target trigger token.
pub fn trigger_alignment(
    source: &rosetta_model_hooks::Tokenizer,
    target: &rosetta_model_hooks::Tokenizer,
    prompt: &crate::Prompt,
    trigger: &str,
) -> Result<Vec<usize>> {
    let s = crate::EncodedPrompt::new(source, prompt)?;
    let t = crate::EncodedPrompt::new(target, prompt)?;
    // Both encodings locate the trigger in their own rendered text; work relative to the trigger's start.
    let start_of = |e: &crate::EncodedPrompt| -> Result<usize> {
        let byte = e.text.find(trigger).ok_or_else(|| {
            SteeringError::invalid(format!("{trigger:?} does not occur in the prompt"))
        })?;
        Ok(e.text[..byte].chars().count())
    };
    let (s0, t0) = (start_of(&s)?, start_of(&t)?);
    let s_tokens = s.matching(trigger)?.remove(0);
    let t_tokens = t.matching(trigger)?.remove(0);
    let len = trigger.chars().count();
    t_tokens
        .iter()
        .map(|&ti| {
            let (_, te) = t.offsets[ti];
            // The target token's last character inside the trigger, relative to the trigger's start.
            let last = (te.saturating_sub(t0)).clamp(1, len) - 1;
            s_tokens
                .iter()
                .position(|&si| {
                    let (ss, se) = s.offsets[si];
                    let (ss, se) = (ss.saturating_sub(s0), se.saturating_sub(s0));
                    ss <= last && last < se
                })
                .ok_or_else(|| {
                    SteeringError::invalid(format!(
                        "no source token of {trigger:?} covers character {last}"
                    ))
                })
        })
        .collect()
}

/// A per-position vector (`[k, d]`) re-indexed row by row: row `j` of the result is row `rows[j]` of the
/// entry at `point` (e.g. with [`trigger_alignment`] before transferring into a model whose tokenizer cuts
/// the trigger differently).
pub fn reindex_rows(
    vector: &SteeringVector,
    point: HookPoint,
    rows: &[usize],
) -> Result<SteeringVector> {
    let e = vector
        .entry(point)
        .ok_or_else(|| SteeringError::invalid(format!("the vector has no entry at {point}")))?;
    if !e.per_position() {
        return Err(SteeringError::invalid(format!(
            "the entry at {point} is one [d] direction, not one row per token"
        )));
    }
    let k = e.direction.size()[0] as usize;
    if let Some(bad) = rows.iter().find(|&&r| r >= k) {
        return Err(SteeringError::invalid(format!(
            "row {bad} asked of a vector with {k} rows"
        )));
    }
    let idx = Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>());
    let mut out = vector.at(point)?;
    out.entries[0] = VectorEntry::new(point, &e.direction.f_index_select(0, &idx)?, e.scale)?;
    Ok(out)
}
