//! Cross-tokenizer alignment of token positions.
//!
//! Two models read the same text but cut it into different tokens. A residual-stream row at token `i`
//! summarises the text up to the END of that token's span (causal attention), so two rows are comparable
//! when their tokens end at the same character of the shared text. [`Alignment::CharEnd`] keeps exactly
//! those pairs; [`Alignment::Identity`] pairs `i` with `i` and is only valid for identical tokenizers
//! (same [`tokenizer_hash`]). [`Alignment::Naive`] pairs `i` with `i` whatever the tokens (the paper's
//! cross-tokenizer baseline): a control that measures what real alignment buys, never chosen by default.
//!
//! [`align`] gives the training pairs. Using a map patches positions of the target, and a patched run
//! across tokenizers also needs a source row for target tokens whose end no source token shares:
//! [`target_sources`] gives, for every target token, the source row that stands in for it.
//!
//! # Special and template tokens
//!
//! Under [`Alignment::CharEnd`], tokens with an empty character span (`start == end`: BOS/EOS and other
//! added special tokens inserted by the post-processor) and tokens flagged in [`Encoded::special`] are
//! never paired: they carry no text to agree on. The tokenizer's own mask only flags tokens the
//! post-processor inserted; special tokens written *in the text* (a rendered template's `<|im_start|>`)
//! have real spans, so call [`mark_special_tokens`] first to flag them too. Chat templates differ per model, so rendered chats are not
//! the same text; align the *user text* (encode it on its own, or restrict both encodings to the user
//! text's character spans before calling [`align`]). [`align`] refuses encodings of different texts.
//!
//! When several tokens of one encoding end at the same character (byte-fallback pieces of one multi-byte
//! character share a span), the LAST of them is used: it is the first row that has read the whole prefix.

use crate::error::{Result, StoreError};
use rosetta_model_hooks::{Encoded, Tokenizer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::Path;

/// How positions of the source and target encodings are paired; recorded in the store manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Alignment {
    /// Position `i` pairs with position `i` (identical tokenizers only).
    Identity,
    /// Positions whose token spans end at the same character offset of the shared text.
    CharEnd,
    /// Position `i` pairs with position `i` up to the shorter encoding, whatever the tokens and texts (the
    /// paper's cross-tokenizer pairing, which only resized masks). A baseline for comparisons only.
    Naive,
}

impl Alignment {
    /// The strategy for two tokenizers with the given [`tokenizer_hash`]es: `Identity` when equal.
    pub fn for_hashes(a: &str, b: &str) -> Self {
        if a == b {
            Self::Identity
        } else {
            Self::CharEnd
        }
    }
}

/// Share of each encoding's tokens that an alignment kept.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct KeepReport {
    /// Tokens in the source encoding.
    pub total_a: usize,
    /// Tokens in the target encoding.
    pub total_b: usize,
    /// Pairs kept (each pair keeps one token of each encoding).
    pub kept: usize,
}

impl KeepReport {
    /// Kept share of the source tokens (1.0 for an empty encoding).
    pub fn share_a(&self) -> f64 {
        share(self.kept, self.total_a)
    }

    /// Kept share of the target tokens (1.0 for an empty encoding).
    pub fn share_b(&self) -> f64 {
        share(self.kept, self.total_b)
    }

    /// Accumulate another report (e.g. over a corpus).
    pub fn merge(&mut self, other: &KeepReport) {
        self.total_a += other.total_a;
        self.total_b += other.total_b;
        self.kept += other.kept;
    }
}

fn share(kept: usize, total: usize) -> f64 {
    if total == 0 {
        1.0
    } else {
        kept as f64 / total as f64
    }
}

/// Aligned index pairs with their keep report.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Aligned {
    /// `(i, j)`: token `i` of the source encoding pairs with token `j` of the target, increasing in both.
    pub pairs: Vec<(usize, usize)>,
    /// Kept shares per model.
    pub report: KeepReport,
}

/// Align two encodings of the same text.
///
/// `Identity` requires equal token ids (it is meant for identical tokenizers) and keeps every position;
/// `CharEnd` keeps the tokens whose spans end at the same character (see the module docs for special
/// tokens); `Naive` pairs `i` with `i` for `i` below the shorter length (it accepts different texts, as
/// the paper's pairing of two rendered chats did). Errors when the texts differ (except for `Naive`) or
/// when `Identity` is asked of different token sequences.
pub fn align(strategy: Alignment, a: &Encoded, b: &Encoded) -> Result<Aligned> {
    if strategy != Alignment::Naive && a.text != b.text {
        return Err(StoreError::Alignment(format!(
            "the encodings are of different texts ({} and {} characters); align the shared user text",
            a.text.chars().count(),
            b.text.chars().count()
        )));
    }
    for (name, e) in [("source", a), ("target", b)] {
        if e.offsets.len() != e.ids.len() {
            return Err(StoreError::Alignment(format!(
                "{name} encoding has {} ids but {} offsets",
                e.ids.len(),
                e.offsets.len()
            )));
        }
    }
    let pairs = match strategy {
        Alignment::Identity => {
            if a.ids != b.ids {
                return Err(StoreError::Alignment(format!(
                    "identity alignment needs identical token sequences, got {} and {} tokens{}",
                    a.ids.len(),
                    b.ids.len(),
                    if a.ids.len() == b.ids.len() {
                        " with different ids"
                    } else {
                        ""
                    }
                )));
            }
            (0..a.ids.len()).map(|i| (i, i)).collect()
        }
        Alignment::CharEnd => char_end_pairs(a, b),
        Alignment::Naive => (0..a.ids.len().min(b.ids.len())).map(|i| (i, i)).collect(),
    };
    Ok(Aligned {
        report: KeepReport {
            total_a: a.ids.len(),
            total_b: b.ids.len(),
            kept: pairs.len(),
        },
        pairs,
    })
}

/// `(end offset, index)` of the last token ending at each offset, in increasing end order.
fn ends(e: &Encoded) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(e.ids.len());
    for (i, &(start, end)) in e.offsets.iter().enumerate() {
        if start >= end || e.special.get(i).copied().unwrap_or(false) {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.0 == end => last.1 = i,
            Some(last) if last.0 > end => {
                // Offsets out of order (should not happen for left-to-right tokenizers): keep the
                // monotone prefix only, so pairs stay increasing in both encodings.
                continue;
            }
            _ => out.push((end, i)),
        }
    }
    out
}

fn char_end_pairs(a: &Encoded, b: &Encoded) -> Vec<(usize, usize)> {
    let (ea, eb) = (ends(a), ends(b));
    let mut pairs = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < ea.len() && j < eb.len() {
        match ea[i].0.cmp(&eb[j].0) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                pairs.push((ea[i].1, eb[j].1));
                i += 1;
                j += 1;
            }
        }
    }
    pairs
}

/// For every token of the target encoding `b`, the source token of `a` whose row stands in for it when
/// every target position is patched with mapped source rows (`None`: the strategy has no row for it).
///
/// - `Identity`: token `j` itself (identical token sequences required, as in [`align`]).
/// - `CharEnd`: the last source token whose span ends at or before the end of target token `j`: the row
///   that has read the most of the text without reading past `j` (exactly `j`'s pair when [`align`] pairs
///   it). `None` for target tokens with no text (empty span or flagged special) and for those that end
///   before any source token does.
/// - `Naive`: token `j` for `j` below the source length, else `None`.
///
/// The result has `b.ids.len()` entries and is non-decreasing where defined.
pub fn target_sources(strategy: Alignment, a: &Encoded, b: &Encoded) -> Result<Vec<Option<usize>>> {
    let n = b.ids.len();
    Ok(match strategy {
        Alignment::Identity | Alignment::Naive => {
            if strategy == Alignment::Identity {
                align(strategy, a, b)?;
            }
            (0..n).map(|j| (j < a.ids.len()).then_some(j)).collect()
        }
        Alignment::CharEnd => {
            if a.text != b.text {
                return Err(StoreError::Alignment(format!(
                    "the encodings are of different texts ({} and {} characters); align the shared user text",
                    a.text.chars().count(),
                    b.text.chars().count()
                )));
            }
            let ea = ends(a);
            let mut k = 0; // ea[..k] end at or before the current target end
            let mut out = Vec::with_capacity(n);
            for (j, &(start, end)) in b.offsets.iter().enumerate() {
                if start >= end || b.special.get(j).copied().unwrap_or(false) {
                    out.push(None);
                    continue;
                }
                while k < ea.len() && ea[k].0 <= end {
                    k += 1;
                }
                out.push(k.checked_sub(1).map(|i| ea[i].1));
            }
            out
        }
    })
}

/// Ids of the tokenizer's added tokens marked special (`<|im_start|>`, `<bos>`, `<end_of_turn>`, ...).
pub fn special_token_ids(tokenizer: &Tokenizer) -> BTreeSet<i64> {
    tokenizer
        .inner()
        .get_added_tokens_decoder()
        .iter()
        .filter(|(_, t)| t.special)
        .map(|(&id, _)| i64::from(id))
        .collect()
}

/// Flag every token whose id is in `special_ids` (see [`special_token_ids`]) as special, so that
/// [`Alignment::CharEnd`] never pairs it.
pub fn mark_special_tokens(encoded: &mut Encoded, special_ids: &BTreeSet<i64>) {
    encoded.special.resize(encoded.ids.len(), false);
    for (flag, id) in encoded.special.iter_mut().zip(&encoded.ids) {
        *flag |= special_ids.contains(id);
    }
}

/// SHA-256 (hex) of the `model`, `pre_tokenizer` and `normalizer` sections of `dir/tokenizer.json`,
/// with object keys sorted: equal hashes mean the same vocabulary and the same way of cutting text.
/// Post-processor and added special tokens are deliberately left out (they only add template tokens).
pub fn tokenizer_hash(dir: impl AsRef<Path>) -> Result<String> {
    let path = dir.as_ref().join("tokenizer.json");
    let text = std::fs::read_to_string(&path).map_err(|e| StoreError::io(&path, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| StoreError::Json {
            path: path.clone(),
            source,
        })?;
    let mut hasher = Sha256::new();
    for section in ["model", "pre_tokenizer", "normalizer"] {
        hasher.update(section.as_bytes());
        hasher.update(b"=");
        let mut canon = String::new();
        canonical(
            json.get(section).unwrap_or(&serde_json::Value::Null),
            &mut canon,
        );
        hasher.update(canon.as_bytes());
        hasher.update(b"\n");
    }
    Ok(hex(&hasher.finalize()))
}

/// Serialise JSON with sorted object keys (independent of serde_json's `preserve_order`).
fn canonical(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (n, k) in keys.into_iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(x) = map.get(k) {
                    canonical(x, out);
                }
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (n, x) in items.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(text: &str, spans: &[(usize, usize)]) -> Encoded {
        Encoded {
            ids: (0..spans.len() as i64).collect(),
            offsets: spans.to_vec(),
            special: spans.iter().map(|&(s, e)| s == e).collect(),
            text: text.to_string(),
        }
    }

    #[test]
    fn char_end_pairs_common_ends_and_skips_specials() {
        let a = enc("hello world", &[(0, 0), (0, 5), (5, 11)]);
        let b = enc("hello world", &[(0, 3), (3, 5), (5, 8), (8, 11)]);
        let al = align(Alignment::CharEnd, &a, &b).unwrap();
        assert_eq!(al.pairs, vec![(1, 1), (2, 3)]);
        assert_eq!(al.report.kept, 2);
        assert!((al.report.share_a() - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn shared_span_uses_last_token() {
        let a = enc("é!", &[(0, 1), (0, 1), (1, 2)]);
        let b = enc("é!", &[(0, 2)]);
        let al = align(Alignment::CharEnd, &a, &b).unwrap();
        assert_eq!(al.pairs, vec![(2, 0)]);
        let b = enc("é!", &[(0, 1), (1, 2)]);
        assert_eq!(
            align(Alignment::CharEnd, &a, &b).unwrap().pairs,
            vec![(1, 0), (2, 1)]
        );
    }

    #[test]
    fn naive_pairs_positions_up_to_the_shorter() {
        let a = enc("hello world", &[(0, 0), (0, 5), (5, 11)]);
        let b = enc("hello there!", &[(0, 3), (3, 5), (5, 8), (8, 12)]);
        let al = align(Alignment::Naive, &a, &b).unwrap();
        assert_eq!(al.pairs, vec![(0, 0), (1, 1), (2, 2)]);
        assert_eq!(
            target_sources(Alignment::Naive, &a, &b).unwrap(),
            vec![Some(0), Some(1), Some(2), None]
        );
    }

    #[test]
    fn target_sources_fill_with_the_last_complete_source_row() {
        // Source "hello| world" (with a BOS), target "hel|lo| wo|rld" plus an end token.
        let a = enc("hello world", &[(0, 0), (0, 5), (5, 11)]);
        let b = enc("hello world", &[(0, 3), (3, 5), (5, 8), (8, 11), (11, 11)]);
        let s = target_sources(Alignment::CharEnd, &a, &b).unwrap();
        assert_eq!(s, vec![None, Some(1), Some(1), Some(2), None]);
        // Exact pairs agree with `align`.
        for (i, j) in align(Alignment::CharEnd, &a, &b).unwrap().pairs {
            assert_eq!(s[j], Some(i));
        }
        let c = enc("hello world", &[(0, 5), (5, 11)]);
        assert!(target_sources(Alignment::Identity, &a, &c).is_err());
        assert!(target_sources(Alignment::CharEnd, &a, &enc("hello", &[(0, 5)])).is_err());
    }

    #[test]
    fn refuses_different_texts_and_bad_identity() {
        let a = enc("abc", &[(0, 3)]);
        let b = enc("abd", &[(0, 3)]);
        assert!(align(Alignment::CharEnd, &a, &b).is_err());
        let b = enc("abc", &[(0, 1), (1, 3)]);
        assert!(align(Alignment::Identity, &a, &b).is_err());
    }
}
