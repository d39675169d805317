//! Collect (paired) activations over a corpus into an activation store, or describe a store.
//!
//! ```text
//! cargo run --release --example collect -- --source DIR --source-layer L [--target DIR --target-layer L] \
//!     --input corpus.jsonl|corpus.txt --out store/ [--dtype f16] [--shard i/n] [--filter all|last|match:TEXT]
//! cargo run --release --example collect -- --stats --out store/
//! cargo run --release --example collect -- --merge store-0/ store-1/ --out store/
//! cargo run --release --example collect -- --compare other-store/ --out store/
//! ```
//! JSONL rows are `{"text": ...}` or `{"messages": [{"role", "content"}, ...]}`; a `.txt` corpus has one
//! document per non-empty line. A document's id is its row number, so `--shard i/n` (documents with
//! `id % n == i`) partitions a corpus deterministically for `n` independent workers. Re-running the same
//! command resumes an interrupted collection. `--merge` then checks that the workers' stores agree
//! (models, tokenizers, hook points, dims, dtype, alignment; all complete; no document twice) and writes
//! one manifest over all their shards into `--out`, without copying data: the merged store refers to the
//! worker shards by relative paths and is read-only. `--compare` checks that two stores hold the same rows
//! document by document (bit for bit), e.g. merged workers against one worker over the whole corpus; it
//! exits non-zero when they differ.
//!
//! Chat rows: each model renders the conversation with its own chat template (with the generation prompt
//! unless the last message is the assistant's), so the two models read different strings. Rows are
//! aligned on the message *contents*: a pair is kept when both tokens lie inside the same message's
//! content and end at the same content character. Template tokens (role headers, turn markers, default
//! system prompts, the generation prompt) and special tokens are never paired; the summary line reports
//! how many there were (`template/special`). With identical tokenizers (`Identity` alignment) every
//! position is kept, which needs both templates to render the chat identically. A model without a chat
//! template (e.g. the zoo's Gemma 3 270M base) refuses chat rows. `--filter match:TEXT` matches inside
//! message contents.

mod common;

use anyhow::{bail, Context, Result};
use clap::Parser;
use rosetta::hooks::{HookPoint, LoadOptions, Model, Tokenizer};
use rosetta::store::{
    collect, compare_stores, merge_stores, tokenizer_hash, Alignment, CollectOptions, CorpusDoc,
    ModelEntry, ModelSide, PositionFilter, Split, StoreDtype, StoreReader, StoreSpec, StoreWriter,
    WriterOptions,
};
use std::path::{Path, PathBuf};
use tch::Kind;

#[derive(Parser, Debug)]
#[command(
    about = "Collect (paired) activations into an activation store, or describe one (--stats)"
)]
struct Args {
    /// Source model directory.
    #[arg(long)]
    source: Option<PathBuf>,
    /// Source layer (its `resid_post` is stored).
    #[arg(long)]
    source_layer: Option<usize>,
    /// Target model directory (paired store).
    #[arg(long)]
    target: Option<PathBuf>,
    /// Target layer.
    #[arg(long)]
    target_layer: Option<usize>,
    /// Corpus: JSONL with {"text"} or {"messages"} rows, or a .txt file with one document per line.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Store directory.
    #[arg(long)]
    out: PathBuf,
    /// Stored dtype: f32, f16, bf16.
    #[arg(long, default_value = "f16")]
    dtype: String,
    /// This worker's part of the corpus, `i/n`.
    #[arg(long)]
    shard: Option<String>,
    /// Positions stored: all, last, or match:TEXT (tokens overlapping TEXT).
    #[arg(long, default_value = "all")]
    filter: String,
    /// Documents per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Truncate documents to this many tokens.
    #[arg(long, default_value_t = 1024)]
    max_tokens: usize,
    /// Shard size budget in MB.
    #[arg(long, default_value_t = 256)]
    shard_mb: u64,
    /// Print what a store holds instead of collecting.
    #[arg(long)]
    stats: bool,
    /// Merge the stores of `--shard i/n` workers into --out (no data is copied) instead of collecting.
    #[arg(long, num_args = 1.., value_name = "STORE")]
    merge: Vec<PathBuf>,
    /// Compare the rows of this store with --out's, document by document (exit 1 when they differ).
    #[arg(long, value_name = "STORE")]
    compare: Option<PathBuf>,
    /// Position pairing: auto (identity for identical tokenizers, else char-end), char-end, or naive (the
    /// paper's position-by-position pairing across tokenizers, for comparisons).
    #[arg(long, default_value = "auto")]
    alignment: String,
    /// Device: auto, cpu, cuda, cuda:N (default: $ROSETTA_DEVICE or auto).
    #[arg(long)]
    device: Option<String>,
}

fn read_corpus(path: &Path) -> Result<Vec<CorpusDoc>> {
    if path.extension().is_some_and(|e| e == "txt") {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        return Ok(text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| CorpusDoc::new(i as i64, l))
            .collect());
    }
    common::read_jsonl_numbered(path)?
        .into_iter()
        .map(|(i, row)| match row {
            common::Row::Text { text } => Ok(CorpusDoc::new(i as i64, text)),
            common::Row::Chat { messages } => Ok(CorpusDoc::chat(i as i64, messages)),
            common::Row::Ids { .. } => bail!(
                "{}:{}: collection takes {{\"text\"}} or {{\"messages\"}} rows (token ids cannot be \
                 aligned across tokenizers)",
                path.display(),
                i + 1
            ),
        })
        .collect()
}

fn stats(dir: &Path) -> Result<()> {
    let reader = StoreReader::open(dir)?;
    let m = reader.manifest();
    let spec = &m.spec;
    println!(
        "store       {} ({} shards, {} rows, {:?}, alignment {:?})",
        dir.display(),
        m.shards.len(),
        m.rows(),
        spec.dtype,
        spec.alignment
    );
    let mut norms = [0.0f64; 2];
    let mut n = 0u64;
    for batch in reader.batches(4096, None, Split::All)? {
        let b = batch?;
        norms[0] +=
            b.x.to_kind(Kind::Float)
                .norm_scalaropt_dim(2.0, [1i64].as_slice(), false)
                .sum(Kind::Double)
                .double_value(&[]);
        if let Some(y) = &b.y {
            norms[1] += y
                .to_kind(Kind::Float)
                .norm_scalaropt_dim(2.0, [1i64].as_slice(), false)
                .sum(Kind::Double)
                .double_value(&[]);
        }
        n += b.x.size()[0] as u64;
    }
    let keep = m.keep_report();
    let rows = n.max(1) as f64;
    println!(
        "source      {} {} d={} mean |x| = {:.3}, rows/tokens = {:.1}%",
        spec.source.id,
        spec.source.hook_point,
        spec.source.dim,
        norms[0] / rows,
        100.0 * keep.share_a()
    );
    if let Some(t) = &spec.target {
        println!(
            "target      {} {} d={} mean |y| = {:.3}, rows/tokens = {:.1}%",
            t.id,
            t.hook_point,
            t.dim,
            norms[1] / rows,
            100.0 * keep.share_b()
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.stats {
        return stats(&args.out);
    }
    if let Some(other) = &args.compare {
        let c = compare_stores(&StoreReader::open(other)?, &StoreReader::open(&args.out)?)?;
        println!("{} vs {}: {c}", other.display(), args.out.display());
        if !c.identical() {
            bail!("the stores hold different rows");
        }
        return Ok(());
    }
    if !args.merge.is_empty() {
        let m = merge_stores(&args.out, &args.merge)?;
        println!(
            "merged {} stores into {}: {} rows in {} shards (no data copied; the worker stores must stay \
             where they are)",
            args.merge.len(),
            args.out.display(),
            m.rows(),
            m.shards.len()
        );
        return Ok(());
    }
    let (Some(src_dir), Some(src_layer), Some(input)) =
        (&args.source, args.source_layer, &args.input)
    else {
        bail!("collection needs --source, --source-layer and --input (or --stats)");
    };
    let device = common::device(args.device.as_deref())?;
    let dtype = match args.dtype.as_str() {
        "f32" => StoreDtype::F32,
        "f16" => StoreDtype::F16,
        "bf16" => StoreDtype::Bf16,
        other => bail!("--dtype {other:?}: expected f32, f16 or bf16"),
    };
    let filter = match args.filter.as_str() {
        "all" => PositionFilter::All,
        "last" => PositionFilter::Last,
        f => match f.strip_prefix("match:") {
            Some(p) if !p.is_empty() => PositionFilter::Matching(p.to_string()),
            _ => bail!("--filter {f:?}: expected all, last or match:TEXT"),
        },
    };
    let (part, parts) = match &args.shard {
        None => (0, 1),
        Some(s) => {
            let (i, n) = s.split_once('/').context("--shard must be i/n")?;
            let (i, n): (i64, i64) = (i.parse()?, n.parse()?);
            if n < 1 || i < 0 || i >= n {
                bail!("--shard {s}: need 0 <= i < n");
            }
            (i, n)
        }
    };
    let load = |dir: &Path, layer: usize| -> Result<(Model, Tokenizer, HookPoint)> {
        let model = Model::load(dir, LoadOptions::default().with_device(device))?;
        if layer >= model.num_layers() {
            bail!(
                "{}: layer {layer} out of range ({} layers)",
                dir.display(),
                model.num_layers()
            );
        }
        Ok((
            model,
            Tokenizer::from_dir(dir)?,
            HookPoint::ResidPost(layer),
        ))
    };
    let entry = |dir: &Path, point: HookPoint, dim: i64| -> Result<ModelEntry> {
        Ok(ModelEntry {
            id: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            dir: dir.display().to_string(),
            tokenizer_hash: tokenizer_hash(dir)?,
            hook_point: point.to_string(),
            dim,
        })
    };
    let (sm, st, sp) = load(src_dir, src_layer)?;
    let target = match (&args.target, args.target_layer) {
        (Some(d), Some(l)) => Some((d.clone(), load(d, l)?)),
        (None, None) => None,
        _ => bail!("--target and --target-layer go together"),
    };
    let source_entry = entry(src_dir, sp, sm.d_model())?;
    let target_entry = match &target {
        Some((d, (m, _, p))) => Some(entry(d, *p, m.d_model())?),
        None => None,
    };
    let alignment = match (&target_entry, args.alignment.as_str()) {
        (None, _) => Alignment::Identity,
        (Some(t), "auto") => Alignment::for_hashes(&source_entry.tokenizer_hash, &t.tokenizer_hash),
        (Some(_), "char-end") => Alignment::CharEnd,
        (Some(_), "naive") => Alignment::Naive,
        (_, other) => bail!("--alignment must be auto, char-end or naive, not {other:?}"),
    };
    let spec = StoreSpec {
        source: source_entry,
        target: target_entry,
        dtype,
        alignment,
        seed: 0,
    };
    let options = WriterOptions {
        shard_bytes: args.shard_mb << 20,
    };
    let (mut writer, resume) = StoreWriter::open_or_resume(&args.out, spec, options)?;
    if resume.shards > 0 {
        eprintln!(
            "resuming: {} documents in {} shards already stored",
            resume.stored_docs.len(),
            resume.shards
        );
    }
    let docs: Vec<CorpusDoc> = read_corpus(input)?
        .into_iter()
        .filter(|d| d.id % parts == part)
        .collect();
    let pb = common::progress(docs.len() as u64, "docs");
    let opts = CollectOptions {
        batch_size: args.batch_size,
        window: 32 * args.batch_size,
        filter,
        max_tokens: args.max_tokens,
    };
    let report = collect(
        ModelSide {
            model: &sm,
            tokenizer: &st,
            point: sp,
        },
        target.as_ref().map(|(_, (m, t, p))| ModelSide {
            model: m,
            tokenizer: t,
            point: *p,
        }),
        docs,
        &mut writer,
        &opts,
        |p| {
            pb.set_position(p.docs as u64);
            pb.set_message(format!("{} rows", p.rows));
        },
    )?;
    pb.finish_and_clear();
    let manifest = writer.finish()?;
    println!(
        "{} documents ({} already stored, {} empty), {} rows in {} shards, {:.1} source tokens/s, alignment {:?} keeps {:.1}% / {:.1}% (template/special tokens: {} / {})",
        report.docs,
        report.skipped,
        report.empty,
        manifest.rows(),
        manifest.shards.len(),
        report.tokens_per_second(),
        manifest.spec.alignment,
        100.0 * report.keep.share_a(),
        100.0 * report.keep.share_b(),
        report.source_outside,
        report.target_outside
    );
    Ok(())
}
