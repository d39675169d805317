//! # rosetta-activation-store
//!
//! **Design decision: collect once, train many times, from disk.** The paper's trainer re-ran both LLMs
//! every epoch; Rosetta runs them once over a corpus, stores the (source, target) activation rows aligned
//! token for token, and streams them to map training as often as needed. Everything else follows from
//! that: rows must be *paired correctly* across different tokenizers and chat templates ([`align()`],
//! [`mod@chat`]), the store must survive an interrupted multi-hour collection ([`StoreWriter`]: bounded
//! shards written atomically, a manifest that only ever lists complete shards, resume by document), many
//! workers must be able to write one store ([`merge_stores`]), and reading must be cheap and bounded in
//! memory ([`StoreReader`]: a byte-budgeted shuffle buffer, document-level splits).
//!
//! ## Modules
//!
//! - [`mod@align`]: pair positions of two tokenizations of the same text by the character their tokens end
//!   at ([`Alignment::CharEnd`]), or `i` with `i` for identical tokenizers ([`Alignment::Identity`],
//!   decided by [`tokenizer_hash`]); [`KeepReport`] gives the kept share per model.
//! - [`mod@chat`]: chats are rendered by each model's own template and aligned in *content coordinates*
//!   (the message contents joined by newlines): a pair is kept only when both tokens lie inside the same
//!   message's content and end at the same content character; template tokens (role headers, turn
//!   markers, default system prompts, the generation prompt) and special tokens are never paired and are
//!   counted in the collection report. [`DocEncoding`] carries each token's span in the shared text.
//! - [`mod@format`]: `manifest.json` ([`Manifest`]) and the shard layout (`x` `[rows, d_src]`, `y`
//!   `[rows, d_tgt]`, per-model token ids and positions, document ids).
//! - [`mod@writer`]: [`StoreWriter`] buffers whole documents and flushes a shard at a byte budget (default
//!   256 MiB); [`StoreWriter::open_or_resume`] reports stored documents so a collector skips them.
//! - [`mod@merge`]: [`merge_stores`] validates the stores of `shard i/n` workers (same models, tokenizers,
//!   hook points, dims, dtype, alignment; complete; disjoint documents) and writes one manifest listing
//!   their shards by relative paths, copying no data; a merged store is read-only.
//! - [`mod@reader`]: [`StoreReader::open`] checks each shard's size and header against the manifest,
//!   [`StoreReader::verify_full`] its SHA-256; [`StoreReader::batches`] streams shuffled `(x, y)` batches of a
//!   [`Split`] through a shuffle buffer of [`BatchOptions::buffer_bytes`] (default 512 MiB, whatever the
//!   store or shard size), filled by positioned reads of random chunks of the store;
//!   [`StoreReader::documents`] yields whole documents; [`StoreReader::stats`] gives [`RunningStats`]
//!   (Welford, f64).
//! - [`mod@collect`]: [`collect()`] runs the source (and target) model over a corpus of texts and chats,
//!   length-sorted batches, early exit at the hook point, position filters, resumption by document.
//!
//! ## Example
//!
//! ```no_run
//! use rosetta_activation_store::*;
//! # fn main() -> Result<()> {
//! let spec = StoreSpec {
//!     source: ModelEntry { id: "a".into(), dir: "/m/a".into(), tokenizer_hash: "h".into(),
//!                          hook_point: "resid_post.3".into(), dim: 4 },
//!     target: None,
//!     dtype: StoreDtype::F32,
//!     alignment: Alignment::Identity,
//!     seed: 0,
//! };
//! // Two workers, each with its part of the documents (`shard i/2`).
//! for (worker, dir) in ["store-0", "store-1"].iter().enumerate() {
//!     let (mut w, resume) = StoreWriter::open_or_resume(dir, spec.clone(), WriterOptions::default())?;
//!     for doc_id in (0..10i64).filter(|d| d % 2 == worker as i64) {
//!         if resume.stored_docs.contains(&doc_id) { continue; }
//!         let acts = tch::Tensor::zeros([3, 4], (tch::Kind::Float, tch::Device::Cpu));
//!         w.add(DocRows { doc_id, x: SideRows { acts, token_ids: vec![1, 2, 3],
//!                                                positions: vec![0, 1, 2], encoded_tokens: 4 },
//!                         y: None })?;
//!     }
//!     w.finish()?;
//! }
//! merge_stores("store", &["store-0", "store-1"])?;
//! let r = StoreReader::open("store")?;
//! let split = DocSplit::new(0.1, 7);
//! for epoch in 0..3 {
//!     for batch in r.batches(256, Some(epoch), Split::Train(split))? {
//!         let batch = batch?;
//!         let _x = batch.x; // [<=256, 4]
//!     }
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod align;
pub mod chat;
pub mod collect;
pub mod compare;
pub mod error;
pub mod format;
pub mod merge;
pub mod reader;
mod shard;
pub mod stats;
pub mod writer;

pub use align::{
    align, mark_special_tokens, special_token_ids, target_sources, tokenizer_hash, Aligned,
    Alignment, KeepReport,
};
pub use chat::{chat_content_text, render_chat, ContentSpan, DocEncoding};
pub use collect::{
    collect, CollectOptions, CollectReport, CorpusDoc, ModelSide, PositionFilter, Progress,
};
pub use compare::{compare_stores, StoreComparison};
pub use error::{Result, StoreError};
pub use format::{
    shard_file_name, Manifest, ModelEntry, ShardEntry, StoreDtype, StoreSpec, DEFAULT_SHARD_BYTES,
    FORMAT_VERSION, MANIFEST_FILE, MERGED_FORMAT_VERSION,
};
pub use merge::merge_stores;
pub use reader::{
    BatchOptions, Batches, DocSplit, Document, Documents, Split, StoreBatch, StoreReader,
    DEFAULT_BUFFER_BYTES,
};
pub use stats::RunningStats;
pub use writer::{DocRows, ResumeInfo, SideRows, StoreWriter, WriterOptions};
