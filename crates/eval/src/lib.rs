//! # rosetta-eval
//!
//! **Design decision: pure metric functions, each checked against a reference implementation.** The crate
//! runs no model code of its own: it scores what it is handed (strings, flags, logits, a judge's answers),
//! and every text metric reproduces the Python package that papers report with, not just its formula, so
//! numbers are comparable with published ones. Reports have one writer (JSON + Markdown + plots) that
//! every experiment shares.
//!
//! ## Modules
//!
//! - [`mod@text`]: ROUGE-1 / ROUGE-2 / ROUGE-L precision, recall and F-measure as Google's `rouge-score`
//!   computes them, with or without its Porter stemming ([`rouge`]); sacreBLEU's corpus BLEU
//!   ([`corpus_bleu`]: 13a tokenisation, exp smoothing) and sentence BLEU ([`sentence_bleu`]).
//! - [`mod@porter`]: the Porter stemmer in the variant `rouge-score` uses (NLTK's default,
//!   `NLTK_EXTENSIONS`).
//! - [`mod@behaviour`]: refusal detection by phrases ([`is_refusal`], [`REFUSAL_PHRASES`]) and refusal rate,
//!   trigger rate and steering success for backdoors ([`Rate`]), a detector's confusion table
//!   ([`Confusion`]: precision, recall, F1, accuracy, with the 0/0 cases defined).
//! - [`mod@distribution`]: on `tch` tensors, per-row KL between two runs' next-token logits
//!   ([`kl_per_row`]), per-token NLL and perplexity ([`perplexity`]); the paper's MvA and TvS win rates over
//!   per-sample scores ([`WinRate`]: ties count half).
//! - [`mod@judge`]: an LLM judge for the paper's similarity 0-5 and coherence 0-5 scores
//!   ([`similarity`], [`coherence`], prompts [`SIMILARITY_PROMPT`] / [`COHERENCE_PROMPT`], strict
//!   [`parse_score`]); the [`Judge`] trait with [`HttpJudge`] (OpenAI-compatible chat completions from
//!   `ROSETTA_JUDGE_URL` / `ROSETTA_JUDGE_MODEL` / `ROSETTA_JUDGE_KEY`, retries with exponential backoff),
//!   [`CachedJudge`] (verdicts on disk keyed by SHA-256 of judge identity and prompt) and [`FnJudge`] (a
//!   closure, e.g. a local zoo model, as a weak judge).
//! - [`mod@report`]: run reports ([`Report`]: title, config, models, sections of [`Table`]s, notes,
//!   plots) written atomically as `report.json` + `report.md`, read back identically.
//! - [`mod@plot`]: `plotters` charts written as PNG + SVG ([`line_chart`], [`histogram`],
//!   [`bar_chart`]), with a bundled font (DejaVu Sans), so no system font is needed.
//! - [`mod@error`]: [`EvalError`]; no function panics on its input.
//!
//! The reference values live in `tests/fixtures/text_metrics.json`, written by `scripts/eval_reference.py`
//! (rouge-score 0.1.2, NLTK 3.10.4, sacreBLEU 2.6.0); the tests compare every pair against it.
//!
//! The judge speaks plain HTTP by default (a local vLLM / llama.cpp / Ollama server); the `tls` feature
//! adds HTTPS (rustls). Not here: BERTScore and BLEURT (they need their own models).
//!
//! ```
//! use rosetta_eval::{corpus_bleu, is_refusal, rouge};
//! let s = rouge("The cats are running home.", "A cat runs home.", true);
//! assert!(s.rouge1.fmeasure > 0.5); // `cats`/`cat` and `running`/`runs` share stems
//! let bleu = corpus_bleu(&["The cat sat on the mat."], &["The cat sat on the mat."])?;
//! assert!((bleu.score - 100.0).abs() < 1e-9);
//! assert!(is_refusal("I'm sorry, I can't help with that."));
//! # Ok::<(), rosetta_eval::EvalError>(())
//! ```

#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod atomic;
pub mod behaviour;
pub mod distribution;
pub mod error;
pub mod judge;
pub mod plot;
pub mod porter;
pub mod report;
pub mod text;

pub use behaviour::{
    contains_any, is_refusal, rate, refusal_rate, steering_success, trigger_rate, Confusion, Rate,
    REFUSAL_PHRASES,
};
pub use distribution::{
    kl_per_row, mva_win_rate, nll_per_token, perplexity, tvs_win_rate, win_rate, WinRate,
};
pub use error::{EvalError, Result};
pub use judge::{
    coherence, parse_score, similarity, CachedJudge, FnJudge, HttpJudge, HttpJudgeConfig, Judge,
    RetryPolicy, Verdict, COHERENCE_PROMPT, SIMILARITY_PROMPT,
};
pub use plot::{
    bar_chart, histogram, line_chart, BarChart, Histogram, LineChart, PlotFiles, PlotSize,
};
pub use report::{Cell, Report, Section, Table};
pub use text::{
    corpus_bleu, rouge, rouge_l_tokens, rouge_n_tokens, rouge_tokenize, sentence_bleu,
    tokenize_13a, Bleu, Prf, RougeScores,
};
