//! Reading a store: verification on open, streaming shuffled batches, whole documents, statistics.
//!
//! # Memory and shuffling
//!
//! [`StoreReader::batches`] keeps one shuffle buffer of at most [`BatchOptions::buffer_bytes`] of rows
//! (default [`DEFAULT_BUFFER_BYTES`], 512 MiB) plus the batch being handed out: memory does not depend on
//! the store or shard size. Each shard is cut into chunks of about 1/64 of the buffer (8 MiB by default);
//! an epoch visits the chunks of the whole store in a seeded random order, reads as many as fit into the
//! buffer (positioned reads from the page cache straight into the buffer, only the rows of the requested
//! split), and hands out batches copied row by row through a random permutation of the buffered rows.
//! A buffer therefore mixes rows from 64 random places of the store rather than whole shards in
//! sequence, and no whole-buffer copy is ever made: shuffling costs one copy of each row into its batch.
//! Rows a refill leaves over (fewer than a batch) move to the front of the next buffer.
//!
//! Shards are read, not memory-mapped: mapped pages count towards the resident set, so a mapping would put
//! the page cache into the reader's RSS. The buffer of a finished epoch is kept for the next one (a fresh
//! 512 MiB buffer costs 131 072 page faults); [`StoreReader::release_buffer`] frees it. Peak resident
//! memory is therefore the buffer, the batches the caller holds, and libtorch itself (about 110 MB): about
//! 0.65-0.75 GB with the default buffer, for any store size (`tests/scale.rs`, `benches/store_bench.rs`).

use crate::error::{Result, StoreError};
use crate::format::{sha256_file, shard_path, Manifest};
use crate::shard::{gather_rows, move_rows_to_front, ShardLayout};
use crate::stats::RunningStats;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

/// A document-level train/validation split: a document is in exactly one part, decided by a hash of its id
/// and the seed alone (independent of shard layout, batch size and shuffling).
///
/// On a store of few documents the hash can leave a part empty (10% of 8 documents is often none): build
/// the split with [`StoreReader::doc_split`], which then moves one document across so both parts hold at
/// least one ([`DocSplit::moved`]), or refuses a store too small to split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DocSplit {
    /// Expected share of documents in the validation part, in `[0, 1]`.
    pub validation_fraction: f64,
    /// Seed of the split.
    pub seed: u64,
    /// A document whose part is the opposite of what its hash says (set by [`StoreReader::doc_split`]
    /// when the hash alone leaves a part empty).
    pub moved: Option<i64>,
}

impl DocSplit {
    /// The hash split of `validation_fraction` of the documents with `seed`, nothing moved.
    pub fn new(validation_fraction: f64, seed: u64) -> Self {
        Self {
            validation_fraction,
            seed,
            moved: None,
        }
    }

    /// The document's hash as a uniform number in `[0, 1)`: validation when below the fraction.
    fn draw(&self, doc_id: i64) -> f64 {
        let h = splitmix64(self.seed ^ splitmix64(doc_id as u64));
        (h >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Whether `doc_id` belongs to the validation part.
    pub fn is_validation(&self, doc_id: i64) -> bool {
        (self.draw(doc_id) < self.validation_fraction) != (self.moved == Some(doc_id))
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Which rows a reader yields.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Split {
    /// Every row.
    All,
    /// Rows of documents in the training part.
    Train(DocSplit),
    /// Rows of documents in the validation part.
    Validation(DocSplit),
}

impl Split {
    /// Whether rows of `doc_id` are yielded.
    pub fn contains(&self, doc_id: i64) -> bool {
        match self {
            Split::All => true,
            Split::Train(s) => !s.is_validation(doc_id),
            Split::Validation(s) => s.is_validation(doc_id),
        }
    }
}

/// One batch of rows: `x` `[b, d_src]`, `y` `[b, d_tgt]` (paired stores), in the store dtype on CPU.
#[derive(Debug)]
pub struct StoreBatch {
    /// Source activations `[b, d_src]`.
    pub x: Tensor,
    /// Target activations `[b, d_tgt]`, aligned row for row with `x`.
    pub y: Option<Tensor>,
    /// Document id of each row `[b]` (i64).
    pub doc_ids: Tensor,
}

/// All rows of one document, in token order.
#[derive(Debug)]
pub struct Document {
    /// Document id.
    pub doc_id: i64,
    /// Source activations `[n, d_src]`.
    pub x: Tensor,
    /// Source token ids.
    pub x_token_ids: Vec<i64>,
    /// Source token positions.
    pub x_positions: Vec<i64>,
    /// Target activations `[n, d_tgt]` (paired stores).
    pub y: Option<Tensor>,
    /// Target token ids (paired stores; empty otherwise).
    pub y_token_ids: Vec<i64>,
    /// Target token positions (paired stores; empty otherwise).
    pub y_positions: Vec<i64>,
}

/// Default shuffle buffer of [`StoreReader::batches`]: 512 MiB of rows (activations and document ids).
pub const DEFAULT_BUFFER_BYTES: u64 = 512 << 20;
/// A buffer is filled from chunks of about `1 / CHUNKS_PER_BUFFER` of its size.
const CHUNKS_PER_BUFFER: i64 = 64;
/// Rows per read of [`StoreReader::stats`]: about this many bytes.
const STATS_CHUNK_BYTES: u64 = 16 << 20;

/// Options of [`StoreReader::batches`] beyond the common ones.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Byte budget of the shuffle buffer (activation rows plus 8 bytes of document id per row). The
    /// buffer holds at least two batches whatever the budget, and never more rows than the store.
    /// Default [`DEFAULT_BUFFER_BYTES`] (512 MiB).
    pub buffer_bytes: u64,
    /// Drop a final batch smaller than the batch size. Default false (every row is yielded).
    pub drop_last: bool,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            drop_last: false,
        }
    }
}

/// A shuffle buffer: `x` `[rows, d_src]` and `y` `[rows, d_tgt]`.
type Buffer = (Tensor, Option<Tensor>);

/// A store opened for reading; every shard was checked against the manifest (size, header, shapes).
pub struct StoreReader {
    dir: PathBuf,
    manifest: Manifest,
    layouts: Vec<ShardLayout>,
    /// The shuffle buffer of the last finished epoch, kept for the next one: a fresh 512 MiB buffer
    /// costs 131 072 page faults (a third of an epoch's time on a 1 GB store).
    spare: Mutex<Option<Buffer>>,
}

/// Runs `[a, b)` of consecutive rows whose document is in `split` (documents are contiguous in a shard).
fn runs_in(doc_ids: &[i64], split: Split) -> Vec<(usize, usize)> {
    if split == Split::All {
        return if doc_ids.is_empty() {
            Vec::new()
        } else {
            vec![(0, doc_ids.len())]
        };
    }
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut r = 0;
    while r < doc_ids.len() {
        let d = doc_ids[r];
        let mut e = r + 1;
        while e < doc_ids.len() && doc_ids[e] == d {
            e += 1;
        }
        if split.contains(d) {
            match runs.last_mut() {
                Some(last) if last.1 == r => last.1 = e,
                _ => runs.push((r, e)),
            }
        }
        r = e;
    }
    runs
}

impl StoreReader {
    /// Open a store and verify, for every listed shard, that the file exists, has the manifest's byte
    /// size, and that its safetensors header holds the expected tensors with the manifest's row count,
    /// dims and dtype, at data ranges inside the file. A missing, truncated or malformed shard is refused
    /// with an error naming it. Shards of a merged store are found relative to `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = Manifest::read(&dir)?;
        let layouts = manifest
            .shards
            .iter()
            .map(|e| ShardLayout::parse(&shard_path(&dir, e), e, &manifest.spec))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            dir,
            manifest,
            layouts,
            spare: Mutex::new(None),
        })
    }

    /// Free the shuffle buffer kept from the last epoch of [`StoreReader::batches`] (it is otherwise
    /// reused by the next epoch, and freed with the reader).
    pub fn release_buffer(&self) {
        if let Ok(mut spare) = self.spare.lock() {
            *spare = None;
        }
    }

    /// A shuffle buffer of at least `rows` rows: the spare one when large enough, else a new one.
    fn take_buffer(&self, rows: i64) -> Result<Buffer> {
        let spare = self.spare.lock().ok().and_then(|mut s| s.take());
        if let Some((x, y)) = spare {
            if x.size()[0] >= rows {
                let y = y.map(|y| y.f_narrow(0, 0, rows)).transpose()?;
                return Ok((x.f_narrow(0, 0, rows)?, y));
            }
        }
        self.empty_xy(rows)
    }

    /// Keep a buffer for the next epoch (the larger one when there is one already).
    fn give_back_buffer(&self, buffer: Buffer) {
        if let Ok(mut spare) = self.spare.lock() {
            let keep = spare
                .as_ref()
                .is_none_or(|(x, _)| x.size()[0] < buffer.0.size()[0]);
            if keep {
                *spare = Some(buffer);
            }
        }
    }

    /// Check every shard's SHA-256 against the manifest (reads the whole store).
    pub fn verify_full(&self) -> Result<()> {
        for entry in &self.manifest.shards {
            let path = shard_path(&self.dir, entry);
            let actual = sha256_file(&path)?;
            if actual != entry.sha256 {
                return Err(StoreError::shard(
                    &path,
                    format!(
                        "SHA-256 {actual} differs from the manifest's {} (corrupted)",
                        entry.sha256
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Total rows.
    pub fn rows(&self) -> u64 {
        self.manifest.rows()
    }

    /// Bytes of activations in one row: `(d_src + d_tgt) * dtype size`.
    pub fn activation_bytes_per_row(&self) -> u64 {
        let spec = &self.manifest.spec;
        let d = spec.source.dim + spec.target.as_ref().map_or(0, |t| t.dim);
        d as u64 * spec.dtype.size()
    }

    /// Bytes one row takes in a shuffle buffer (activations and document id).
    fn buffer_row_bytes(&self) -> u64 {
        self.activation_bytes_per_row() + 8
    }

    fn layout(&self, i: usize) -> Result<&ShardLayout> {
        self.layouts.get(i).ok_or_else(|| {
            StoreError::InvalidArgument(format!(
                "shard {i} out of range ({} shards)",
                self.layouts.len()
            ))
        })
    }

    fn empty(&self, rows: i64, dim: i64) -> Result<Tensor> {
        let kind: Kind = self.manifest.spec.dtype.kind();
        Ok(Tensor::f_empty([rows, dim], (kind, Device::Cpu))?)
    }

    fn empty_xy(&self, rows: i64) -> Result<(Tensor, Option<Tensor>)> {
        let spec = &self.manifest.spec;
        let x = self.empty(rows, spec.source.dim)?;
        let y = match &spec.target {
            Some(t) => Some(self.empty(rows, t.dim)?),
            None => None,
        };
        Ok((x, y))
    }

    /// Read the rows of `runs` (relative to `start`) of an open shard into rows `at..` of `x` / `y`,
    /// appending their document ids; returns the rows read.
    #[allow(clippy::too_many_arguments)]
    fn read_runs(
        layout: &ShardLayout,
        file: &File,
        start: u64,
        ids: &[i64],
        runs: &[(usize, usize)],
        x: &Tensor,
        y: Option<&Tensor>,
        at: i64,
        doc_ids: &mut Vec<i64>,
    ) -> Result<i64> {
        let mut w = at;
        for &(a, b) in runs {
            let n = (b - a) as u64;
            layout.read_rows_into(file, layout.x, start + a as u64, n, x, w)?;
            if let (Some(range), Some(y)) = (layout.y, y) {
                layout.read_rows_into(file, range, start + a as u64, n, y, w)?;
            }
            doc_ids.extend_from_slice(&ids[a..b]);
            w += n as i64;
        }
        Ok(w - at)
    }

    /// The document ids of the store, sorted and deduplicated (reads the document-id column of every shard).
    pub fn doc_ids(&self) -> Result<Vec<i64>> {
        let mut ids = Vec::new();
        for i in 0..self.layouts.len() {
            ids.extend(self.shard_doc_ids(i)?);
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// The document split of `validation_fraction` with `seed` over this store's documents, such that
    /// neither part is empty: where the hash puts no document into validation (or every document), the
    /// document closest to the other side moves across ([`DocSplit::moved`]), so a store of two or more
    /// documents always validates on at least one. `validation_fraction` 0 keeps every document for
    /// training. A store of one document cannot be split: an error that says so, before any work.
    pub fn doc_split(&self, validation_fraction: f64, seed: u64) -> Result<DocSplit> {
        let mut split = DocSplit::new(validation_fraction, seed);
        if !(0.0..1.0).contains(&validation_fraction) {
            return Err(StoreError::InvalidArgument(format!(
                "validation fraction must be in [0, 1), got {validation_fraction}"
            )));
        }
        if validation_fraction == 0.0 {
            return Ok(split);
        }
        let ids = self.doc_ids()?;
        if ids.len() < 2 {
            return Err(StoreError::InvalidArgument(format!(
                "store {} holds {} document(s): a validation split needs at least two (or use a \
                 validation fraction of 0 to train on everything without validation)",
                self.dir.display(),
                ids.len()
            )));
        }
        let validation = ids.iter().filter(|&&d| split.is_validation(d)).count();
        let draw = |d: &&i64| split.draw(**d);
        let by_draw = |a: &&i64, b: &&i64| draw(a).total_cmp(&draw(b));
        split.moved = if validation == 0 {
            ids.iter().min_by(by_draw).copied()
        } else if validation == ids.len() {
            ids.iter().max_by(by_draw).copied()
        } else {
            None
        };
        Ok(split)
    }

    /// Document id of every row of shard `i`.
    pub fn shard_doc_ids(&self, i: usize) -> Result<Vec<i64>> {
        let l = self.layout(i)?;
        let f = l.open()?;
        l.read_i64(&f, l.doc_ids, 0, l.rows)
    }

    /// Rows `start..start + n` of shard `i` that belong to `split`, in store order, as one batch.
    pub fn read_rows(&self, i: usize, start: u64, n: u64, split: Split) -> Result<StoreBatch> {
        let l = self.layout(i)?;
        let f = l.open()?;
        let ids = l.read_i64(&f, l.doc_ids, start, n)?;
        let runs = runs_in(&ids, split);
        let total: i64 = runs.iter().map(|&(a, b)| (b - a) as i64).sum();
        let (x, y) = self.empty_xy(total)?;
        let mut doc_ids = Vec::with_capacity(total as usize);
        Self::read_runs(l, &f, start, &ids, &runs, &x, y.as_ref(), 0, &mut doc_ids)?;
        Ok(StoreBatch {
            x,
            y,
            doc_ids: Tensor::from_slice(&doc_ids),
        })
    }

    /// Load shard `i`'s rows that belong to `split` as one batch (memory: the whole shard).
    pub fn load_shard(&self, i: usize, split: Split) -> Result<StoreBatch> {
        let rows = self.layout(i)?.rows;
        self.read_rows(i, 0, rows, split)
    }

    /// Stream batches of `batch_size` rows of `split` for one epoch, with the default [`BatchOptions`].
    ///
    /// With `shuffle_seed = Some(s)` the store's chunks are visited in a random order and rows are
    /// shuffled within the buffer (see the module docs); pass a different seed per epoch (e.g.
    /// `seed + epoch`). With `None`, rows come in store order. Every row of the split is yielded exactly
    /// once per epoch. Memory is bounded by the buffer, not the store size.
    pub fn batches(
        &self,
        batch_size: usize,
        shuffle_seed: Option<u64>,
        split: Split,
    ) -> Result<Batches<'_>> {
        self.batches_with(batch_size, shuffle_seed, split, BatchOptions::default())
    }

    /// [`StoreReader::batches`] with explicit [`BatchOptions`].
    pub fn batches_with(
        &self,
        batch_size: usize,
        shuffle_seed: Option<u64>,
        split: Split,
        options: BatchOptions,
    ) -> Result<Batches<'_>> {
        if batch_size == 0 || options.buffer_bytes == 0 {
            return Err(StoreError::InvalidArgument(
                "batch_size and buffer_bytes must be > 0".into(),
            ));
        }
        let batch = batch_size as i64;
        let budget_rows = ((options.buffer_bytes / self.buffer_row_bytes()) as i64).max(2 * batch);
        let chunk_rows = (budget_rows / CHUNKS_PER_BUFFER).max(1) as u64;
        let capacity = budget_rows.min(self.rows() as i64);
        let mut chunks = Vec::new();
        for (i, l) in self.layouts.iter().enumerate() {
            let mut start = 0;
            while start < l.rows {
                let n = chunk_rows.min(l.rows - start);
                chunks.push((i, start, n));
                start += n;
            }
        }
        let mut rng = shuffle_seed.map(StdRng::seed_from_u64);
        if let Some(rng) = rng.as_mut() {
            chunks.shuffle(rng);
        }
        Ok(Batches {
            reader: self,
            chunks,
            next: 0,
            batch_size: batch,
            split,
            drop_last: options.drop_last,
            rng,
            capacity,
            x: None,
            y: None,
            doc_ids: Vec::new(),
            order: Vec::new(),
            cursor: 0,
            failed: false,
            peak: 0,
        })
    }

    /// Iterate whole documents of `split` in store order (memory: one document at a time, plus the
    /// current shard's token ids and positions).
    pub fn documents(&self, split: Split) -> Documents<'_> {
        Documents {
            reader: self,
            split,
            next_shard: 0,
            shard: None,
            pending: VecDeque::new(),
            failed: false,
        }
    }

    /// Running statistics of `x` and (paired stores) `y` over the rows of `split` (read in pieces of
    /// about 16 MiB).
    pub fn stats(&self, split: Split) -> Result<(RunningStats, Option<RunningStats>)> {
        let spec = &self.manifest.spec;
        let mut sx = RunningStats::new(spec.source.dim as usize);
        let mut sy = spec
            .target
            .as_ref()
            .map(|t| RunningStats::new(t.dim as usize));
        let step = (STATS_CHUNK_BYTES / self.buffer_row_bytes()).max(1);
        for (i, l) in self.layouts.iter().enumerate() {
            let mut start = 0;
            while start < l.rows {
                let n = step.min(l.rows - start);
                let b = self.read_rows(i, start, n, split)?;
                sx.update(&b.x)?;
                if let (Some(s), Some(y)) = (sy.as_mut(), b.y.as_ref()) {
                    s.update(y)?;
                }
                start += n;
            }
        }
        Ok((sx, sy))
    }
}

/// Iterator over shuffled batches; see [`StoreReader::batches`].
pub struct Batches<'a> {
    reader: &'a StoreReader,
    /// `(shard, first row, rows)` in visiting order.
    chunks: Vec<(usize, u64, u64)>,
    next: usize,
    batch_size: i64,
    split: Split,
    drop_last: bool,
    rng: Option<StdRng>,
    capacity: i64,
    x: Option<Tensor>,
    y: Option<Tensor>,
    /// Document id of each buffered row.
    doc_ids: Vec<i64>,
    /// Buffered rows in the order they are handed out.
    order: Vec<i64>,
    cursor: usize,
    failed: bool,
    peak: i64,
}

impl Batches<'_> {
    /// Most rows the shuffle buffer has held so far: at most [`Batches::capacity_rows`], whatever the
    /// store size.
    pub fn peak_buffer_rows(&self) -> i64 {
        self.peak
    }

    /// Rows the shuffle buffer can hold: [`BatchOptions::buffer_bytes`] over the bytes of a row, at least
    /// two batches, at most the store's rows.
    pub fn capacity_rows(&self) -> i64 {
        self.capacity
    }

    fn buffered(&self) -> usize {
        self.order.len() - self.cursor
    }

    fn release(&mut self) {
        if let Some(x) = self.x.take() {
            self.reader.give_back_buffer((x, self.y.take()));
        }
    }

    /// Move the rows left over to the front of the buffer, then fill it with the next chunks and draw a
    /// new order.
    fn refill(&mut self) -> Result<()> {
        if self.x.is_none() {
            let (x, y) = self.reader.take_buffer(self.capacity)?;
            self.x = Some(x);
            self.y = y;
        }
        let left: Vec<i64> = self.order[self.cursor..].to_vec();
        let n_left = left.len() as i64;
        let mut doc_ids: Vec<i64> = left.iter().map(|&r| self.doc_ids[r as usize]).collect();
        if n_left > 0 {
            for buf in [self.x.as_ref(), self.y.as_ref()].into_iter().flatten() {
                move_rows_to_front(buf, &left)?;
            }
        }
        let mut filled = n_left;
        let x = self.x.as_ref();
        while let Some(&(shard, start, rows)) = self.chunks.get(self.next) {
            if filled + rows as i64 > self.capacity {
                if filled > n_left {
                    break;
                }
                // Cannot happen: a chunk is at most 1/64 of the buffer and fewer than a batch is left.
                return Err(StoreError::InvalidArgument(format!(
                    "shuffle buffer of {} rows cannot take a chunk of {rows} rows",
                    self.capacity
                )));
            }
            let l = self.reader.layout(shard)?;
            let f = l.open()?;
            let ids = l.read_i64(&f, l.doc_ids, start, rows)?;
            let runs = runs_in(&ids, self.split);
            if let Some(x) = x {
                filled += StoreReader::read_runs(
                    l,
                    &f,
                    start,
                    &ids,
                    &runs,
                    x,
                    self.y.as_ref(),
                    filled,
                    &mut doc_ids,
                )?;
            }
            self.next += 1;
        }
        self.doc_ids = doc_ids;
        self.order = (0..filled).collect();
        if let Some(rng) = self.rng.as_mut() {
            self.order.shuffle(rng);
        }
        self.cursor = 0;
        self.peak = self.peak.max(filled);
        Ok(())
    }

    fn step(&mut self) -> Result<Option<StoreBatch>> {
        let batch = self.batch_size as usize;
        while self.buffered() < batch && self.next < self.chunks.len() {
            self.refill()?;
        }
        let take = self.buffered().min(batch);
        let (Some(x), true) = (
            self.x.as_ref(),
            take > 0 && (take == batch || !self.drop_last),
        ) else {
            // End of the epoch: hand the buffer back to the reader for the next one.
            self.release();
            self.order.clear();
            self.doc_ids.clear();
            self.cursor = 0;
            return Ok(None);
        };
        let rows = &self.order[self.cursor..self.cursor + take];
        let out = StoreBatch {
            x: gather_rows(x, rows)?,
            y: self.y.as_ref().map(|y| gather_rows(y, rows)).transpose()?,
            doc_ids: Tensor::from_slice(
                &rows
                    .iter()
                    .map(|&r| self.doc_ids[r as usize])
                    .collect::<Vec<i64>>(),
            ),
        };
        self.cursor += take;
        Ok(Some(out))
    }
}

impl Iterator for Batches<'_> {
    type Item = Result<StoreBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.step() {
            Ok(b) => b.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

impl Drop for Batches<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Iterator over whole documents; see [`StoreReader::documents`].
pub struct Documents<'a> {
    reader: &'a StoreReader,
    split: Split,
    next_shard: usize,
    /// The shard being read: its index, open file and id columns.
    shard: Option<(usize, File, ShardIds)>,
    /// `(doc id, first row, rows)` of the current shard's documents still to yield.
    pending: VecDeque<(i64, u64, u64)>,
    failed: bool,
}

/// A shard's token id and position columns (8 bytes per row and column: a small fraction of a shard).
struct ShardIds {
    x_token_ids: Vec<i64>,
    x_positions: Vec<i64>,
    y_token_ids: Vec<i64>,
    y_positions: Vec<i64>,
}

impl Documents<'_> {
    /// Open the next shard, read its id columns and list its documents of the split.
    fn advance(&mut self) -> Result<()> {
        let i = self.next_shard;
        self.next_shard += 1;
        let l = self.reader.layout(i)?;
        let f = l.open()?;
        let column = |r: Option<crate::shard::TensorRange>| -> Result<Vec<i64>> {
            r.map_or(Ok(Vec::new()), |r| l.read_i64(&f, r, 0, l.rows))
        };
        let ids = column(Some(l.doc_ids))?;
        let shard_ids = ShardIds {
            x_token_ids: column(Some(l.x_token_ids))?,
            x_positions: column(Some(l.x_positions))?,
            y_token_ids: column(l.y_token_ids)?,
            y_positions: column(l.y_positions)?,
        };
        let mut r = 0;
        while r < ids.len() {
            let d = ids[r];
            let mut e = r + 1;
            while e < ids.len() && ids[e] == d {
                e += 1;
            }
            if self.split.contains(d) {
                self.pending.push_back((d, r as u64, (e - r) as u64));
            }
            r = e;
        }
        self.shard = Some((i, f, shard_ids));
        Ok(())
    }

    fn read_doc(&self, doc_id: i64, start: u64, n: u64) -> Result<Document> {
        let Some((i, f, ids)) = self.shard.as_ref() else {
            return Err(StoreError::InvalidArgument("no shard open".into()));
        };
        let l = self.reader.layout(*i)?;
        let (x, y) = self.reader.empty_xy(n as i64)?;
        l.read_rows_into(f, l.x, start, n, &x, 0)?;
        if let (Some(range), Some(y)) = (l.y, y.as_ref()) {
            l.read_rows_into(f, range, start, n, y, 0)?;
        }
        let rows = start as usize..(start + n) as usize;
        let part = |v: &[i64]| v.get(rows.clone()).map(<[i64]>::to_vec).unwrap_or_default();
        Ok(Document {
            doc_id,
            x,
            x_token_ids: part(&ids.x_token_ids),
            x_positions: part(&ids.x_positions),
            y,
            y_token_ids: part(&ids.y_token_ids),
            y_positions: part(&ids.y_positions),
        })
    }
}

impl Iterator for Documents<'_> {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            if let Some((d, start, n)) = self.pending.pop_front() {
                let doc = self.read_doc(d, start, n);
                self.failed = doc.is_err();
                return Some(doc);
            }
            if self.next_shard >= self.reader.layouts.len() {
                self.shard = None;
                return None;
            }
            if let Err(e) = self.advance() {
                self.failed = true;
                return Some(Err(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_follow_documents() {
        let ids = [1, 1, 2, 2, 2, 3, 4, 4];
        assert_eq!(runs_in(&ids, Split::All), vec![(0, 8)]);
        assert!(runs_in(&[], Split::All).is_empty());
        let split = DocSplit::new(0.5, 11);
        let train = runs_in(&ids, Split::Train(split));
        let val = runs_in(&ids, Split::Validation(split));
        let mut rows: Vec<usize> = train.iter().chain(&val).flat_map(|&(a, b)| a..b).collect();
        rows.sort();
        assert_eq!(rows, (0..8).collect::<Vec<_>>());
        for &(a, b) in &train {
            assert!(ids[a..b].iter().all(|&d| !split.is_validation(d)));
        }
    }
}
