//! # rosetta-eval
//!
//! Will own: behaviour metrics (trigger rate, refusal rate, steering success), text similarity (ROUGE,
//! BLEU), distribution metrics (KL, perplexity), win rates against baselines, an optional LLM judge over an
//! OpenAI-compatible endpoint, and reports (JSON, Markdown, plots). It runs no model code of its own: it
//! scores what it is handed.
//!
//! Not yet implemented: see the project's eval issue.

#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
