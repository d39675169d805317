//! # rosetta-activation-store
//!
//! Will own: running one model, or a source/target pair, over a corpus to collect residual-stream
//! activations at chosen hook points; aligning token positions across different tokenizers by character
//! offsets; a sharded on-disk format (`manifest.json` + bounded safetensors shards, atomic writes, resumable
//! collection, checksums); a streaming shuffled reader with a document-level train/validation split and
//! running statistics; and merging stores written by independent workers (`--shard i/n`).
//!
//! Not yet implemented: see the project's activation-store issue.

#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
