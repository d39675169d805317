//! Comparing the rows of two stores document by document, whatever their shard layout.
//!
//! The check behind fanned-out collection: `n` workers (`--shard i/n`) merged with
//! [`crate::merge_stores`] must hold exactly the rows one worker would have written over the whole corpus.
//! Shard boundaries and document order differ between the two, so [`compare_stores`] keys every document
//! by its id and compares a SHA-256 digest of everything the store holds for it: source and target
//! activations (bit for bit, in the store dtype), token ids and token positions. Memory: one document at a
//! time plus 32 bytes per document.

use crate::error::Result;
use crate::reader::{Document, Split, StoreReader};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// How two stores' rows compare (see [`compare_stores`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreComparison {
    /// Documents of the first store.
    pub docs_a: usize,
    /// Documents of the second store.
    pub docs_b: usize,
    /// Rows of the first store.
    pub rows_a: u64,
    /// Rows of the second store.
    pub rows_b: u64,
    /// Document ids only the first store holds (ascending).
    pub only_in_a: Vec<i64>,
    /// Document ids only the second store holds (ascending).
    pub only_in_b: Vec<i64>,
    /// Document ids both hold with different rows (activations, token ids or positions; ascending).
    pub differing: Vec<i64>,
}

impl StoreComparison {
    /// Both stores hold the same documents with bit-identical rows.
    pub fn identical(&self) -> bool {
        self.only_in_a.is_empty() && self.only_in_b.is_empty() && self.differing.is_empty()
    }
}

impl std::fmt::Display for StoreComparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids = |v: &[i64]| {
            let head: Vec<String> = v.iter().take(8).map(|d| d.to_string()).collect();
            let more = if v.len() > 8 { ", ..." } else { "" };
            format!("{} [{}{more}]", v.len(), head.join(", "))
        };
        write!(
            f,
            "{} vs {} documents, {} vs {} rows",
            self.docs_a, self.docs_b, self.rows_a, self.rows_b
        )?;
        if self.identical() {
            write!(f, ": identical")
        } else {
            write!(
                f,
                ": only in the first {}, only in the second {}, differing {}",
                ids(&self.only_in_a),
                ids(&self.only_in_b),
                ids(&self.differing)
            )
        }
    }
}

fn digest(doc: &Document) -> Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut tensor = |t: &tch::Tensor| -> Result<()> {
        let t = t.contiguous();
        let n = t.numel() * t.kind().elt_size_in_bytes();
        let mut bytes = vec![0u8; n];
        t.f_copy_data_u8(&mut bytes, t.numel())?;
        h.update((t.size().len() as u64).to_le_bytes());
        for s in t.size() {
            h.update(s.to_le_bytes());
        }
        h.update(bytes);
        Ok(())
    };
    tensor(&doc.x)?;
    if let Some(y) = &doc.y {
        tensor(y)?;
    }
    for v in [
        &doc.x_token_ids,
        &doc.x_positions,
        &doc.y_token_ids,
        &doc.y_positions,
    ] {
        h.update((v.len() as u64).to_le_bytes());
        for x in v {
            h.update(x.to_le_bytes());
        }
    }
    Ok(h.finalize().into())
}

fn digests(r: &StoreReader) -> Result<BTreeMap<i64, [u8; 32]>> {
    let mut out = BTreeMap::new();
    for doc in r.documents(Split::All) {
        let doc = doc?;
        out.insert(doc.doc_id, digest(&doc)?);
    }
    Ok(out)
}

/// Compare the rows of two stores document by document (all splits). Stores of different specs (models,
/// hook points, dims, dtype) simply differ in every shared document; this compares data, not manifests.
pub fn compare_stores(a: &StoreReader, b: &StoreReader) -> Result<StoreComparison> {
    let (da, db) = (digests(a)?, digests(b)?);
    let mut c = StoreComparison {
        docs_a: da.len(),
        docs_b: db.len(),
        rows_a: a.rows(),
        rows_b: b.rows(),
        only_in_a: Vec::new(),
        only_in_b: Vec::new(),
        differing: Vec::new(),
    };
    for (id, ha) in &da {
        match db.get(id) {
            None => c.only_in_a.push(*id),
            Some(hb) if hb != ha => c.differing.push(*id),
            Some(_) => {}
        }
    }
    c.only_in_b = db
        .keys()
        .filter(|id| !da.contains_key(id))
        .copied()
        .collect();
    Ok(c)
}
