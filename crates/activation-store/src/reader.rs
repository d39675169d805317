//! Reading a store: verification on open, streaming shuffled batches, whole documents, statistics.

use crate::error::{Result, StoreError};
use crate::format::{sha256_file, shard_path, Manifest};
use crate::stats::RunningStats;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rosetta_model_hooks::SafetensorsSet;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// A document-level train/validation split: a document is in exactly one part, decided by a hash of its id
/// and the seed alone (independent of shard layout, batch size and shuffling).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DocSplit {
    /// Expected share of documents in the validation part, in `[0, 1]`.
    pub validation_fraction: f64,
    /// Seed of the split.
    pub seed: u64,
}

impl DocSplit {
    /// Whether `doc_id` belongs to the validation part.
    pub fn is_validation(&self, doc_id: i64) -> bool {
        let h = splitmix64(self.seed ^ splitmix64(doc_id as u64));
        ((h >> 11) as f64 / (1u64 << 53) as f64) < self.validation_fraction
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

/// Options of [`StoreReader::batches`] beyond the common ones.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Shards loaded into the shuffle buffer at once (memory bound: this many shards' rows plus one
    /// batch). Default 4.
    pub buffer_shards: usize,
    /// Drop a final batch smaller than the batch size. Default false (every row is yielded).
    pub drop_last: bool,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            buffer_shards: 4,
            drop_last: false,
        }
    }
}

/// A store opened for reading; every shard was checked against the manifest (size, header, shapes).
pub struct StoreReader {
    dir: PathBuf,
    manifest: Manifest,
}

impl StoreReader {
    /// Open a store and verify, for every listed shard, that the file exists, has the manifest's byte
    /// size, parses as safetensors and holds the expected tensors with the manifest's row count, dims and
    /// dtype. A missing, truncated or malformed shard is refused with an error naming it.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = Manifest::read(&dir)?;
        let reader = Self { dir, manifest };
        for i in 0..reader.manifest.shards.len() {
            reader.check_shard(i)?;
        }
        Ok(reader)
    }

    fn check_shard(&self, i: usize) -> Result<()> {
        let entry = &self.manifest.shards[i];
        let path = shard_path(&self.dir, entry);
        let size = std::fs::metadata(&path)
            .map_err(|e| StoreError::shard(&path, format!("cannot stat: {e}")))?
            .len();
        if size != entry.bytes {
            return Err(StoreError::shard(
                &path,
                format!(
                    "{size} bytes on disk but the manifest lists {} (truncated or overwritten)",
                    entry.bytes
                ),
            ));
        }
        let set = SafetensorsSet::open_file(&path)
            .map_err(|e| StoreError::shard(&path, format!("unreadable header: {e}")))?;
        let spec = &self.manifest.spec;
        let rows = entry.rows as i64;
        let dt = spec.dtype.safetensors_name();
        let mut expect: Vec<(&str, Vec<i64>, &str)> = vec![
            ("x", vec![rows, spec.source.dim], dt),
            ("x_token_ids", vec![rows], "I64"),
            ("x_positions", vec![rows], "I64"),
            ("doc_ids", vec![rows], "I64"),
        ];
        if let Some(t) = &spec.target {
            expect.push(("y", vec![rows, t.dim], dt));
            expect.push(("y_token_ids", vec![rows], "I64"));
            expect.push(("y_positions", vec![rows], "I64"));
        }
        for (name, shape, dtype) in expect {
            let meta = set
                .meta(name)
                .ok_or_else(|| StoreError::shard(&path, format!("no tensor {name:?}")))?;
            if meta.shape != shape || meta.dtype != dtype {
                return Err(StoreError::shard(
                    &path,
                    format!(
                        "tensor {name:?} is {} {:?}, the manifest implies {dtype} {shape:?}",
                        meta.dtype, meta.shape
                    ),
                ));
            }
        }
        Ok(())
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

    fn open_shard(&self, i: usize) -> Result<(PathBuf, SafetensorsSet)> {
        let entry = self.manifest.shards.get(i).ok_or_else(|| {
            StoreError::InvalidArgument(format!(
                "shard {i} out of range ({} shards)",
                self.manifest.shards.len()
            ))
        })?;
        let path = shard_path(&self.dir, entry);
        let set = SafetensorsSet::open_file(&path)
            .map_err(|e| StoreError::shard(&path, format!("unreadable: {e}")))?;
        Ok((path, set))
    }

    fn load(set: &SafetensorsSet, path: &Path, name: &str) -> Result<Tensor> {
        set.load(name, None, Device::Cpu)
            .map_err(|e| StoreError::shard(path, format!("loading {name:?}: {e}")))
    }

    /// Document id of every row of shard `i`.
    pub fn shard_doc_ids(&self, i: usize) -> Result<Vec<i64>> {
        let (path, set) = self.open_shard(i)?;
        Ok(Vec::<i64>::try_from(&Self::load(&set, &path, "doc_ids")?)?)
    }

    /// Load shard `i`'s rows that belong to `split` as one batch.
    pub fn load_shard(&self, i: usize, split: Split) -> Result<StoreBatch> {
        let (path, set) = self.open_shard(i)?;
        let doc_ids = Self::load(&set, &path, "doc_ids")?;
        let x = Self::load(&set, &path, "x")?;
        let y = match self.manifest.spec.target {
            Some(_) => Some(Self::load(&set, &path, "y")?),
            None => None,
        };
        if split == Split::All {
            return Ok(StoreBatch { x, y, doc_ids });
        }
        let ids = Vec::<i64>::try_from(&doc_ids)?;
        let keep: Vec<i64> = ids
            .iter()
            .enumerate()
            .filter(|(_, &d)| split.contains(d))
            .map(|(r, _)| r as i64)
            .collect();
        let idx = Tensor::from_slice(&keep);
        Ok(StoreBatch {
            x: x.f_index_select(0, &idx)?,
            y: y.map(|y| y.f_index_select(0, &idx)).transpose()?,
            doc_ids: doc_ids.f_index_select(0, &idx)?,
        })
    }

    /// Stream batches of `batch_size` rows of `split` for one epoch.
    ///
    /// With `shuffle_seed = Some(s)` the shard order is shuffled and rows are shuffled within a buffer of
    /// [`BatchOptions::buffer_shards`] shards (plus the rows left over from the previous buffer); pass a
    /// different seed per epoch (e.g. `seed + epoch`). With `None`, rows come in store order. Every row of
    /// the split is yielded exactly once per epoch. Memory is bounded by the buffer, not the store size.
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
        if batch_size == 0 || options.buffer_shards == 0 {
            return Err(StoreError::InvalidArgument(
                "batch_size and buffer_shards must be > 0".into(),
            ));
        }
        let mut order: Vec<usize> = (0..self.manifest.shards.len()).collect();
        let mut rng = shuffle_seed.map(StdRng::seed_from_u64);
        if let Some(rng) = rng.as_mut() {
            order.shuffle(rng);
        }
        Ok(Batches {
            reader: self,
            order,
            next: 0,
            batch_size: batch_size as i64,
            split,
            options,
            rng,
            buf: None,
            cursor: 0,
            failed: false,
            peak: 0,
        })
    }

    /// Iterate whole documents of `split` in store order, one shard in memory at a time.
    pub fn documents(&self, split: Split) -> Documents<'_> {
        Documents {
            reader: self,
            split,
            shard: 0,
            pending: Vec::new(),
            failed: false,
        }
    }

    /// Running statistics of `x` and (paired stores) `y` over the rows of `split`.
    pub fn stats(&self, split: Split) -> Result<(RunningStats, Option<RunningStats>)> {
        let spec = &self.manifest.spec;
        let mut sx = RunningStats::new(spec.source.dim as usize);
        let mut sy = spec
            .target
            .as_ref()
            .map(|t| RunningStats::new(t.dim as usize));
        for i in 0..self.manifest.shards.len() {
            let b = self.load_shard(i, split)?;
            sx.update(&b.x)?;
            if let (Some(s), Some(y)) = (sy.as_mut(), b.y.as_ref()) {
                s.update(y)?;
            }
        }
        Ok((sx, sy))
    }
}

/// Iterator over shuffled batches; see [`StoreReader::batches`].
pub struct Batches<'a> {
    reader: &'a StoreReader,
    order: Vec<usize>,
    next: usize,
    batch_size: i64,
    split: Split,
    options: BatchOptions,
    rng: Option<StdRng>,
    buf: Option<StoreBatch>,
    cursor: i64,
    failed: bool,
    peak: i64,
}

impl Batches<'_> {
    /// Most rows the shuffle buffer has held so far: at most `buffer_shards` shards' rows plus fewer than
    /// `batch_size` rows carried over, whatever the store size.
    pub fn peak_buffer_rows(&self) -> i64 {
        self.peak
    }

    fn buffered(&self) -> i64 {
        self.buf.as_ref().map_or(0, |b| b.x.size()[0]) - self.cursor
    }

    fn slice(&self, len: i64) -> Result<Option<StoreBatch>> {
        let Some(b) = self.buf.as_ref() else {
            return Ok(None);
        };
        Ok(Some(StoreBatch {
            x: b.x.f_narrow(0, self.cursor, len)?,
            y: b.y
                .as_ref()
                .map(|y| y.f_narrow(0, self.cursor, len))
                .transpose()?,
            doc_ids: b.doc_ids.f_narrow(0, self.cursor, len)?,
        }))
    }

    /// Load the next group of shards behind the leftover rows and shuffle the buffer.
    fn refill(&mut self) -> Result<()> {
        let mut parts: Vec<StoreBatch> = Vec::new();
        let left = self.buffered();
        if left > 0 {
            if let Some(rest) = self.slice(left)? {
                parts.push(rest);
            }
        }
        let end = (self.next + self.options.buffer_shards).min(self.order.len());
        for &i in &self.order[self.next..end] {
            parts.push(self.reader.load_shard(i, self.split)?);
        }
        self.next = end;
        let xs: Vec<&Tensor> = parts.iter().map(|p| &p.x).collect();
        let ds: Vec<&Tensor> = parts.iter().map(|p| &p.doc_ids).collect();
        let mut x = Tensor::f_cat(&xs, 0)?;
        let mut doc_ids = Tensor::f_cat(&ds, 0)?;
        let mut y = if self.reader.manifest.spec.target.is_some() {
            let ys: Vec<&Tensor> = parts.iter().filter_map(|p| p.y.as_ref()).collect();
            Some(Tensor::f_cat(&ys, 0)?)
        } else {
            None
        };
        if let Some(rng) = self.rng.as_mut() {
            let mut perm: Vec<i64> = (0..x.size()[0]).collect();
            perm.shuffle(rng);
            let idx = Tensor::from_slice(&perm);
            x = x.f_index_select(0, &idx)?;
            doc_ids = doc_ids.f_index_select(0, &idx)?;
            y = y.map(|y| y.f_index_select(0, &idx)).transpose()?;
        }
        self.peak = self.peak.max(x.size()[0]);
        self.buf = Some(StoreBatch { x, y, doc_ids });
        self.cursor = 0;
        Ok(())
    }

    fn step(&mut self) -> Result<Option<StoreBatch>> {
        while self.buffered() < self.batch_size && self.next < self.order.len() {
            self.refill()?;
        }
        let left = self.buffered();
        let take = left.min(self.batch_size);
        if take == 0 || (take < self.batch_size && self.options.drop_last) {
            self.buf = None;
            self.cursor = 0;
            return Ok(None);
        }
        let out = self.slice(take)?;
        self.cursor += take;
        Ok(out)
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

/// Iterator over whole documents; see [`StoreReader::documents`].
pub struct Documents<'a> {
    reader: &'a StoreReader,
    split: Split,
    shard: usize,
    pending: Vec<Document>,
    failed: bool,
}

impl Documents<'_> {
    fn load_docs(&self, i: usize) -> Result<Vec<Document>> {
        let (path, set) = self.reader.open_shard(i)?;
        let load = |n: &str| StoreReader::load(&set, &path, n);
        let vec = |n: &str| -> Result<Vec<i64>> { Ok(Vec::<i64>::try_from(&load(n)?)?) };
        let doc_ids = vec("doc_ids")?;
        let x = load("x")?;
        let x_tok = vec("x_token_ids")?;
        let x_pos = vec("x_positions")?;
        let paired = self.reader.manifest.spec.target.is_some();
        let (y, y_tok, y_pos) = if paired {
            (Some(load("y")?), vec("y_token_ids")?, vec("y_positions")?)
        } else {
            (None, Vec::new(), Vec::new())
        };
        let mut docs = Vec::new();
        let mut start = 0usize;
        while start < doc_ids.len() {
            let id = doc_ids[start];
            let mut end = start;
            while end < doc_ids.len() && doc_ids[end] == id {
                end += 1;
            }
            if self.split.contains(id) {
                let (s, n) = (start as i64, (end - start) as i64);
                docs.push(Document {
                    doc_id: id,
                    x: x.f_narrow(0, s, n)?.f_contiguous()?,
                    x_token_ids: x_tok[start..end].to_vec(),
                    x_positions: x_pos[start..end].to_vec(),
                    y: y.as_ref()
                        .map(|y| y.f_narrow(0, s, n).and_then(|t| t.f_contiguous()))
                        .transpose()?,
                    y_token_ids: if paired {
                        y_tok[start..end].to_vec()
                    } else {
                        Vec::new()
                    },
                    y_positions: if paired {
                        y_pos[start..end].to_vec()
                    } else {
                        Vec::new()
                    },
                });
            }
            start = end;
        }
        docs.reverse();
        Ok(docs)
    }
}

impl Iterator for Documents<'_> {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            if let Some(d) = self.pending.pop() {
                return Some(Ok(d));
            }
            if self.shard >= self.reader.manifest.shards.len() {
                return None;
            }
            let i = self.shard;
            self.shard += 1;
            match self.load_docs(i) {
                Ok(docs) => self.pending = docs,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
