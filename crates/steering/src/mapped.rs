//! Mapped completions (the paper's test of a map): the target model runs with its activation at one point
//! replaced by the map applied to the source model's activation at the same token, for the prompt and for
//! every generated token — source and target decode side by side, each new token going through both
//! ([`rosetta_model_hooks::Decoder`]).
//!
//! Both models read the same token ids, so they must share a tokenizer (checked by tokenizer hash when
//! both checkpoints have a `tokenizer.json`, else by vocabulary size). Compare with the mean-ablation
//! baseline (`Hooks::set` of [`crate::mean_activation`] at the target point) to judge a map.

use std::sync::Mutex;

use rosetta_activation_store::tokenizer_hash;
use rosetta_mapping::{AnyMap, Mapping};
use rosetta_model_hooks::{
    concat_captures, Batch, CaptureOptions, GenerateOptions, Generation, HookContext, HookPoint,
    Hooks, Model, TokenChooser, TokenLog,
};
use tch::Tensor;

use crate::error::{Result, SteeringError};
use crate::intervene::map_rows;

/// A source model, a target model and a map between a point of each.
pub struct MappedPair<'a> {
    source: &'a Model,
    target: &'a Model,
    map: &'a AnyMap,
    source_point: HookPoint,
    target_point: HookPoint,
}

impl std::fmt::Debug for MappedPair<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MappedPair({} {} -> {} {})",
            self.source.dir().display(),
            self.source_point,
            self.target.dir().display(),
            self.target_point
        )
    }
}

/// Extra target hooks added at every pass of a mapped run (captures, steering), after the replacement.
pub type ExtraHooks<'e> = &'e dyn Fn(&mut Hooks) -> Result<()>;

impl<'a> MappedPair<'a> {
    /// Check widths, the shared tokenizer and the map's device.
    pub fn new(
        source: &'a Model,
        target: &'a Model,
        map: &'a AnyMap,
        source_point: HookPoint,
        target_point: HookPoint,
    ) -> Result<Self> {
        if map.d_src() != source.d_model() || map.d_tgt() != target.d_model() {
            return Err(SteeringError::invalid(format!(
                "the map is {} -> {}, the models are {} -> {}",
                map.d_src(),
                map.d_tgt(),
                source.d_model(),
                target.d_model()
            )));
        }
        for (m, p) in [(source, source_point), (target, target_point)] {
            if p.layer().is_some_and(|l| l >= m.num_layers()) || p == HookPoint::Logits {
                return Err(SteeringError::invalid(format!(
                    "{p} is not a residual point of {} ({} layers)",
                    m.dir().display(),
                    m.num_layers()
                )));
            }
        }
        let (sd, td) = (source.dir(), target.dir());
        if sd.join("tokenizer.json").exists() && td.join("tokenizer.json").exists() {
            let (a, b) = (tokenizer_hash(sd)?, tokenizer_hash(td)?);
            if a != b {
                return Err(SteeringError::invalid(format!(
                    "mapped completions feed both models the same token ids, but {} and {} have different \
                     tokenizers ({a} vs {b})",
                    sd.display(),
                    td.display()
                )));
            }
        } else if source.spec().vocab_size != target.spec().vocab_size {
            return Err(SteeringError::invalid(format!(
                "vocabularies differ ({} vs {})",
                source.spec().vocab_size,
                target.spec().vocab_size
            )));
        }
        if map.device() != target.device() {
            return Err(SteeringError::invalid(format!(
                "the map is on {:?}, the target model on {:?}",
                map.device(),
                target.device()
            )));
        }
        Ok(Self {
            source,
            target,
            map,
            source_point,
            target_point,
        })
    }

    fn source_hooks() -> impl Fn(HookPoint) -> Hooks {
        |p| {
            let mut h = Hooks::new();
            h.capture_with(p, CaptureOptions::default());
            h
        }
    }

    /// Target hooks replacing the activation at real tokens by `mapped` (`[B, T, d_tgt]`), plus `extra`.
    fn target_hooks(&self, mapped: Tensor, extra: Option<ExtraHooks<'_>>) -> Result<Hooks> {
        let mut h = Hooks::new();
        let mapped = Mutex::new(mapped);
        let point = self.target_point;
        h.func(point, move |ctx: &HookContext<'_>, x: Tensor| {
            let m = mapped
                .lock()
                .map_err(|e| rosetta_model_hooks::HookError::Hook {
                    point: point.to_string(),
                    message: e.to_string(),
                })?;
            Ok(m.f_to_kind(x.kind())?
                .f_where_self(&ctx.valid.f_unsqueeze(-1)?, &x)?)
        });
        if let Some(f) = extra {
            f(&mut h)?;
        }
        Ok(h)
    }

    fn mapped_from(&self, captures: &[(HookPoint, Tensor)]) -> Result<Tensor> {
        let x = captures
            .iter()
            .find(|(p, _)| *p == self.source_point)
            .map(|(_, t)| t)
            .ok_or_else(|| SteeringError::invalid("the source pass captured nothing"))?;
        let x = x.f_to_device(self.map.device())?;
        let _guard = tch::no_grad_guard();
        map_rows(self.map, &x)
    }

    /// One forward pass of both models over `batch`: the target's output (captures per `extra`, logits
    /// `[B, T, vocab]` in `last`) with the mapped replacement.
    pub fn forward(
        &self,
        batch: &Batch,
        extra: Option<ExtraHooks<'_>>,
    ) -> Result<rosetta_model_hooks::ForwardOutput> {
        let src = self
            .source
            .forward(batch, &Self::source_hooks()(self.source_point))?;
        let mapped = self.mapped_from(&src.captures)?;
        let mut hooks = self.target_hooks(mapped, extra)?;
        hooks.capture_with(HookPoint::Logits, CaptureOptions::default());
        Ok(self.target.forward(batch, &hooks)?)
    }

    /// Generate from `prompts` with the target reading mapped source activations at every token.
    /// `extra` adds target hooks (e.g. captures) to every pass; captures are concatenated as in
    /// [`Model::generate`].
    pub fn generate(
        &self,
        prompts: &[Vec<i64>],
        pad_id: i64,
        opts: &GenerateOptions,
        extra: Option<ExtraHooks<'_>>,
    ) -> Result<Generation> {
        let mut chooser = TokenChooser::new(opts)?;
        let src_hooks = Self::source_hooks()(self.source_point);
        let (mut src, caps) =
            self.source
                .prefill(prompts, pad_id, &src_hooks, opts.max_new_tokens)?;
        let hooks = self.target_hooks(self.mapped_from(&caps)?, extra)?;
        let (mut tgt, tcaps) = self
            .target
            .prefill(prompts, pad_id, &hooks, opts.max_new_tokens)?;
        let mut log = TokenLog::new(prompts.len(), opts, pad_id);
        let mut steps = vec![tcaps];
        for k in 0..opts.max_new_tokens {
            let ids = log.record(&chooser.choose(tgt.logits())?);
            if log.all_done() || k + 1 == opts.max_new_tokens {
                break;
            }
            let caps = src.step(&ids, &src_hooks)?;
            let hooks = self.target_hooks(self.mapped_from(&caps)?, extra)?;
            steps.push(tgt.step(&ids, &hooks)?);
        }
        Ok(log.into_generation(concat_captures(steps)?))
    }
}
