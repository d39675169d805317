//! Layer sweeps: a metric of steered completions for every (layer, alpha) cell — the paper's Table 3 /
//! Figure 4 shape (steering success by layer), and the way to pick the layer a vector works at.
//!
//! The vector holds one candidate entry per hook point (e.g. [`crate::diff_of_means`] at every
//! `resid_post`); each cell adds one entry with one strength to every prompt and scores the completions
//! with a caller's metric (`&[String] -> f64`, e.g. the eval crate's refusal rate or steering success).
//!
//! **One prefill per prompt** when steering only generated tokens ([`SweepPositions::Generated`]): the
//! prompt's pass does not depend on the cell, so it runs once per batch and every cell decodes from a fork
//! of its KV cache ([`rosetta_model_hooks::Decoder::fork`]). Steering every position changes the prompt's
//! pass too, so each cell then runs its own generation; so does steering at a trigger's tokens
//! ([`SweepPositions::Trigger`], the paper's prompt steering of backdoors).

use std::path::Path;

use rosetta_model_hooks::{Decoder, GenerateOptions, Hooks, Model, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::error::{Result, SteeringError};
use crate::intervene::{add_vector, trigger_spans, Strength, Where};
use crate::positions::{encode_all, Prompt};
use crate::vector::{method_name, SteeringVector};

/// Which tokens a sweep steers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepPositions {
    /// Generated tokens only (one prefill per prompt serves every cell).
    Generated,
    /// Every token, prompt included.
    All,
    /// The tokens of [`SweepConfig::trigger`] in each prompt (its first occurrence); per-position
    /// vectors (`[k, d]`, [`crate::trigger_contrast`]) add row `j` at the `j`-th trigger token.
    Trigger,
}

/// What a sweep runs.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// Strengths to try at every point.
    pub alphas: Vec<f64>,
    /// Alphas are [`Strength::Relative`] (units of each entry's scale) rather than raw multipliers.
    pub relative: bool,
    /// Where to steer.
    pub positions: SweepPositions,
    /// Greedy decoding budget per completion (stops at the tokenizer's end-of-sequence tokens).
    pub max_new_tokens: usize,
    /// Prompts per batch.
    pub batch_size: usize,
    /// The trigger text steered at under [`SweepPositions::Trigger`] (`None` otherwise).
    pub trigger: Option<String>,
}

/// One cell of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepCell {
    /// The steered point.
    pub point: String,
    /// Its layer.
    pub layer: Option<usize>,
    /// The strength.
    pub alpha: f64,
    /// The metric on this cell's completions.
    pub value: f64,
}

/// A finished sweep (saved as `sweep.json` + `sweep.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepResult {
    /// The model.
    pub model: String,
    /// The vector's method.
    pub method: String,
    /// The metric's name.
    pub metric: String,
    /// Where it steered.
    pub positions: SweepPositions,
    /// Whether the strengths were relative.
    pub relative: bool,
    /// Prompts scored per cell.
    pub prompts: usize,
    /// The metric without any intervention.
    pub baseline: f64,
    /// Every cell, points in vector order, alphas in the given order.
    pub cells: Vec<SweepCell>,
    /// Prompt passes run (one per batch when the prefill was shared, else one per batch and cell).
    pub prefills: usize,
}

impl SweepResult {
    /// The cell with the highest value (ties: the earliest).
    pub fn best(&self) -> Option<&SweepCell> {
        self.cells
            .iter()
            .fold(None, |best: Option<&SweepCell>, c| match best {
                Some(b) if b.value >= c.value => Some(b),
                _ => Some(c),
            })
    }

    /// The alphas, in order of first appearance.
    pub fn alphas(&self) -> Vec<f64> {
        let mut out: Vec<f64> = Vec::new();
        for c in &self.cells {
            if !out.contains(&c.alpha) {
                out.push(c.alpha);
            }
        }
        out
    }

    /// A Markdown table: one row per point, one column per alpha.
    pub fn to_markdown(&self) -> String {
        let alphas = self.alphas();
        let mut s = format!(
            "{} on {} prompts, {} ({} positions{}); no intervention: {:.3}\n\n| point |",
            self.metric,
            self.prompts,
            self.method,
            match self.positions {
                SweepPositions::Generated => "generated",
                SweepPositions::All => "all",
                SweepPositions::Trigger => "trigger",
            },
            if self.relative {
                ", relative alpha"
            } else {
                ""
            },
            self.baseline
        );
        for a in &alphas {
            s.push_str(&format!(" alpha {a} |"));
        }
        s.push_str("\n|---|");
        s.push_str(&"---|".repeat(alphas.len()));
        s.push('\n');
        let mut points: Vec<&str> = Vec::new();
        for c in &self.cells {
            if !points.contains(&c.point.as_str()) {
                points.push(&c.point);
            }
        }
        let best = self.best().cloned();
        for p in points {
            s.push_str(&format!("| {p} |"));
            for a in &alphas {
                match self.cells.iter().find(|c| c.point == p && c.alpha == *a) {
                    Some(c) => {
                        let mark = best
                            .as_ref()
                            .is_some_and(|b| b.point == c.point && b.alpha == c.alpha);
                        s.push_str(&format!(
                            " {:.3}{} |",
                            c.value,
                            if mark { " **best**" } else { "" }
                        ));
                    }
                    None => s.push_str(" — |"),
                }
            }
            s.push('\n');
        }
        s
    }

    /// Plot the metric against the layer, one line per alpha and a dashed-level line for no intervention,
    /// to `stem.png` and `stem.svg` (the paper's Figure 4 shape).
    pub fn plot(&self, stem: impl AsRef<Path>) -> Result<rosetta_eval::plot::PlotFiles> {
        let mut chart = rosetta_eval::plot::LineChart::new(
            format!(
                "{} by layer — {} ({})",
                self.metric, self.method, self.model
            ),
            "layer",
            self.metric.clone(),
        );
        let layers: Vec<f64> = self
            .cells
            .iter()
            .filter_map(|c| c.layer.map(|l| l as f64))
            .collect();
        for a in self.alphas() {
            let pts: Vec<(f64, f64)> = self
                .cells
                .iter()
                .filter(|c| c.alpha == a)
                .filter_map(|c| c.layer.map(|l| (l as f64, c.value)))
                .collect();
            chart = chart.with_series(format!("alpha {a}"), pts);
        }
        if let (Some(lo), Some(hi)) = (
            layers.iter().copied().reduce(f64::min),
            layers.iter().copied().reduce(f64::max),
        ) {
            chart = chart.with_series(
                "no intervention",
                [(lo, self.baseline), (hi, self.baseline)],
            );
        }
        Ok(rosetta_eval::plot::line_chart(stem.as_ref(), &chart)?)
    }

    /// Write `sweep.json`, `sweep.md` and the plot `sweep.png` / `sweep.svg` into `dir` (atomically).
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| SteeringError::io(dir, e))?;
        let json = dir.join("sweep.json");
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|source| SteeringError::Json {
            path: json.clone(),
            source,
        })?;
        bytes.push(b'\n');
        rosetta_model_hooks::weights::write_file_atomic(&json, &bytes)
            .map_err(|e| SteeringError::io(&json, e))?;
        let md = dir.join("sweep.md");
        rosetta_model_hooks::weights::write_file_atomic(&md, self.to_markdown().as_bytes())
            .map_err(|e| SteeringError::io(&md, e))?;
        if self.cells.iter().any(|c| c.layer.is_some()) {
            self.plot(dir.join("sweep"))?;
        }
        Ok(())
    }
}

/// Run the sweep: for every entry of `vector` and every alpha, steer `prompts` and score the completions
/// with `metric` (named `metric_name`). `progress` is called after each cell with (done, total).
#[allow(clippy::too_many_arguments)]
pub fn layer_sweep(
    model: &Model,
    tokenizer: &Tokenizer,
    vector: &SteeringVector,
    prompts: &[Prompt],
    config: &SweepConfig,
    metric_name: &str,
    metric: &mut dyn FnMut(&[String]) -> Result<f64>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SweepResult> {
    if prompts.is_empty() || config.alphas.is_empty() {
        return Err(SteeringError::invalid(
            "a sweep needs prompts and at least one alpha",
        ));
    }
    vector.expect_model(&crate::vector::ModelIdentity::of(model)?)?;
    let enc = encode_all(tokenizer, prompts)?;
    let bs = config.batch_size.max(1);
    // Under `Trigger`, each batch's trigger spans (absolute positions per row).
    let spans: Vec<Vec<Vec<i64>>> = match (config.positions, &config.trigger) {
        (SweepPositions::Trigger, Some(t)) => enc
            .chunks(bs)
            .map(|c| trigger_spans(c, t))
            .collect::<Result<_>>()?,
        (SweepPositions::Trigger, None) => {
            return Err(SteeringError::invalid(
                "a trigger sweep needs SweepConfig::trigger",
            ))
        }
        _ => Vec::new(),
    };
    let ids: Vec<Vec<i64>> = enc.into_iter().map(|e| e.ids).collect();
    let pad = tokenizer.pad_token_id();
    let opts = GenerateOptions::greedy(config.max_new_tokens)
        .with_stop_tokens(tokenizer.eos_token_ids().to_vec());
    let batches: Vec<&[Vec<i64>]> = ids.chunks(bs).collect();
    let share = config.positions == SweepPositions::Generated;
    let mut prefills = 0;
    // Shared prefills (one per batch), kept for every cell.
    let mut shared: Vec<Decoder<'_>> = Vec::new();
    if share {
        for b in &batches {
            shared.push(
                model
                    .prefill(b, pad, &Hooks::new(), config.max_new_tokens)?
                    .0,
            );
            prefills += 1;
        }
    }
    let decode = |texts: &mut Vec<String>, tokens: Vec<Vec<i64>>| -> Result<()> {
        for t in tokens {
            texts.push(tokenizer.decode(&t, true)?);
        }
        Ok(())
    };
    // `hooks_for(i)`: the hooks of batch `i`.
    let run =
        |hooks_for: &dyn Fn(usize) -> Result<Hooks>, prefills: &mut usize| -> Result<Vec<String>> {
            let mut texts = Vec::with_capacity(prompts.len());
            for (i, b) in batches.iter().enumerate() {
                let hooks = hooks_for(i)?;
                let g = if share {
                    shared[i].fork()?.finish(pad, &hooks, &opts, Vec::new())?
                } else {
                    *prefills += 1;
                    model.generate(b, pad, &hooks, &opts)?
                };
                decode(&mut texts, g.tokens)?;
            }
            Ok(texts)
        };
    let baseline = metric(&run(&|_| Ok(Hooks::new()), &mut prefills)?)?;
    let at = |i: usize| match config.positions {
        SweepPositions::Generated => Where::Generated,
        SweepPositions::All => Where::All,
        SweepPositions::Trigger => Where::Trigger(spans[i].clone()),
    };
    let total = vector.entries.len() * config.alphas.len();
    let mut cells = Vec::with_capacity(total);
    for e in &vector.entries {
        let single = vector.at(e.point)?;
        for &alpha in &config.alphas {
            let strength = if config.relative {
                Strength::Relative(alpha)
            } else {
                Strength::Raw(alpha)
            };
            let hooks_for = |i: usize| -> Result<Hooks> {
                let mut hooks = Hooks::new();
                add_vector(&mut hooks, &single, strength, &at(i))?;
                Ok(hooks)
            };
            let value = metric(&run(&hooks_for, &mut prefills)?)?;
            cells.push(SweepCell {
                point: e.point.to_string(),
                layer: e.point.layer(),
                alpha,
                value,
            });
            progress(cells.len(), total);
        }
    }
    Ok(SweepResult {
        model: vector.model.id.clone(),
        method: method_name(&vector.method),
        metric: metric_name.to_string(),
        positions: config.positions,
        relative: config.relative,
        prompts: prompts.len(),
        baseline,
        cells,
        prefills,
    })
}
