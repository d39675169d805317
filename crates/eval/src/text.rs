//! Text similarity: ROUGE-1, ROUGE-2 and ROUGE-L as Google's `rouge-score` computes them, and BLEU as
//! sacreBLEU computes it, both reproduced exactly (same tokenisation, same counts, same floating-point
//! formulas in the same order).
//!
//! Reference implementations, checked on the pairs in `tests/fixtures/text_metrics.json` (written by
//! `scripts/eval_reference.py`):
//!
//! - [`rouge`] = `rouge_scorer.RougeScorer(['rouge1', 'rouge2', 'rougeL'], use_stemmer=stemming)
//!   .score(reference, candidate)` of `rouge-score` 0.1.2. ROUGE-L is the sentence-level LCS score
//!   (`rougeL`), not the newline-split summary-level `rougeLsum`.
//! - [`corpus_bleu`] = `sacrebleu.corpus_bleu(hypotheses, [references])` and [`sentence_bleu`] =
//!   `sacrebleu.sentence_bleu(hypothesis, [reference])` of sacreBLEU 2.6.0 with its defaults (signature
//!   `nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp` for the corpus; `eff:yes` for sentences). One reference
//!   per hypothesis.

use std::collections::HashMap;

use crate::error::{EvalError, Result};
use crate::porter;

/// Precision, recall and F-measure of one ROUGE variant.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Prf {
    /// Matches / candidate units (n-grams, or tokens for ROUGE-L).
    pub precision: f64,
    /// Matches / reference units.
    pub recall: f64,
    /// `2 p r / (p + r)`, 0 when `p + r = 0`.
    pub fmeasure: f64,
}

impl Prf {
    /// From precision and recall, with `rouge-score`'s F-measure (`scoring.fmeasure`).
    pub fn new(precision: f64, recall: f64) -> Self {
        let fmeasure = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        Self {
            precision,
            recall,
            fmeasure,
        }
    }
}

/// ROUGE-1, ROUGE-2 and ROUGE-L of one candidate against one reference.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RougeScores {
    /// Unigram overlap (`rouge1`).
    pub rouge1: Prf,
    /// Bigram overlap (`rouge2`).
    pub rouge2: Prf,
    /// Longest common subsequence (`rougeL`).
    pub rouge_l: Prf,
}

/// `rouge-score`'s default tokenizer (`rouge_score.tokenize.tokenize`): lowercase (Unicode, as Python's
/// `str.lower`), replace every run of characters other than ASCII `[a-z0-9]` by a space, split; with
/// `stemming`, replace every token longer than 3 characters by its Porter stem ([`porter::stem`]).
///
/// Everything outside ASCII letters and digits separates tokens, so `café` gives `caf` and `can't` gives
/// `can`, `t`.
pub fn rouge_tokenize(text: &str, stemming: bool) -> Vec<String> {
    let lower = text.to_lowercase();
    lower
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(|t| {
            // Tokens are ASCII here, so bytes = characters, as Python's `len` counts them.
            if stemming && t.len() > 3 {
                porter::stem(t)
            } else {
                t.to_string()
            }
        })
        // rouge-score's final `^[a-z0-9]+$` check; a stem of an ASCII token always passes it.
        .filter(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        .collect()
}

/// ROUGE-1, ROUGE-2 and ROUGE-L F-measure, precision and recall of `candidate` against `reference`, with or
/// without Porter stemming, exactly as `rouge-score` computes them.
///
/// For ROUGE-N, with `overlap = Σ_g min(count_ref(g), count_cand(g))` over the reference's n-grams,
/// `precision = overlap / max(#cand n-grams, 1)`, `recall = overlap / max(#ref n-grams, 1)`. For ROUGE-L,
/// `precision = LCS / #cand tokens`, `recall = LCS / #ref tokens`, all zero when either side has no token.
/// `F = 2 P R / (P + R)`, 0 when `P + R = 0`.
///
/// ```
/// use rosetta_eval::text::rouge;
/// let s = rouge("The cat sat on the mat.", "the cat sat", false);
/// assert_eq!(s.rouge1.precision, 1.0);
/// assert_eq!(s.rouge1.recall, 0.5);
/// assert_eq!(s.rouge_l.fmeasure, 2.0 / 3.0);
/// ```
pub fn rouge(reference: &str, candidate: &str, stemming: bool) -> RougeScores {
    let r = rouge_tokenize(reference, stemming);
    let c = rouge_tokenize(candidate, stemming);
    RougeScores {
        rouge1: rouge_n_counts(&r, &c, 1),
        rouge2: rouge_n_counts(&r, &c, 2),
        rouge_l: rouge_l_tokens(&r, &c),
    }
}

/// ROUGE-N over already tokenised texts (`rouge-score`'s `rougeN` for any `n >= 1`).
///
/// # Errors
/// [`EvalError::Invalid`] for `n = 0` (rouge-score raises `ValueError`).
pub fn rouge_n_tokens<S: AsRef<str>>(reference: &[S], candidate: &[S], n: usize) -> Result<Prf> {
    if n == 0 {
        return Err(EvalError::Invalid("ROUGE-N needs n >= 1".into()));
    }
    let r: Vec<&str> = reference.iter().map(AsRef::as_ref).collect();
    let c: Vec<&str> = candidate.iter().map(AsRef::as_ref).collect();
    Ok(rouge_n_counts(&r, &c, n))
}

fn rouge_n_counts<S: AsRef<str> + Eq + std::hash::Hash>(
    reference: &[S],
    candidate: &[S],
    n: usize,
) -> Prf {
    let r = ngram_counts(reference, n);
    let c = ngram_counts(candidate, n);
    let overlap: usize = r
        .iter()
        .map(|(g, &k)| k.min(c.get(g).copied().unwrap_or(0)))
        .sum();
    let r_total: usize = r.values().sum();
    let c_total: usize = c.values().sum();
    Prf::new(
        overlap as f64 / c_total.max(1) as f64,
        overlap as f64 / r_total.max(1) as f64,
    )
}

fn ngram_counts<T: Eq + std::hash::Hash>(tokens: &[T], n: usize) -> HashMap<&[T], usize> {
    let mut counts = HashMap::new();
    if n == 0 {
        return counts;
    }
    for g in tokens.windows(n) {
        *counts.entry(g).or_insert(0) += 1;
    }
    counts
}

/// ROUGE-L (sentence-level LCS, `rouge-score`'s `rougeL`) over already tokenised texts.
pub fn rouge_l_tokens<S: AsRef<str>>(reference: &[S], candidate: &[S]) -> Prf {
    if reference.is_empty() || candidate.is_empty() {
        return Prf::default();
    }
    let lcs = lcs_len(reference, candidate);
    Prf::new(
        lcs as f64 / candidate.len() as f64,
        lcs as f64 / reference.len() as f64,
    )
}

/// Length of the longest common subsequence, in O(|a| |b|) time and O(|b|) memory.
fn lcs_len<S: AsRef<str>>(a: &[S], b: &[S]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x.as_ref() == y.as_ref() {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// sacreBLEU's maximum n-gram order.
pub const BLEU_MAX_ORDER: usize = 4;

/// A BLEU score with its sufficient statistics, as sacreBLEU's `BLEUScore` reports them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bleu {
    /// BLEU on sacreBLEU's 0-100 scale: `bp · exp(Σ_n ln p_n / N)` over the orders used.
    pub score: f64,
    /// Clipped n-gram matches per order (1..=4).
    pub counts: [usize; BLEU_MAX_ORDER],
    /// Candidate n-grams per order.
    pub totals: [usize; BLEU_MAX_ORDER],
    /// Smoothed n-gram precisions per order, in percent (0 for an order with no candidate n-gram, or for all
    /// orders when nothing matched).
    pub precisions: [f64; BLEU_MAX_ORDER],
    /// Brevity penalty: 1 if `sys_len >= ref_len`, else `exp(1 - ref_len / sys_len)` (0 if `sys_len = 0`).
    pub bp: f64,
    /// Candidate tokens in total.
    pub sys_len: usize,
    /// Reference tokens in total.
    pub ref_len: usize,
}

/// Python's `str.isspace` (what `str.split()` and `str.rstrip()` use): Unicode `White_Space` plus the
/// information separators U+001C..U+001F, which Python counts as whitespace and Rust does not.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// sacreBLEU's `13a` tokenizer (mteval-v13a): drops `<skipped>`, joins `-\n` hyphenations, turns newlines
/// into spaces, unescapes `&quot; &amp; &lt; &gt;` (in that order), then splits off ASCII punctuation except
/// `'`, `-`, `.`, `,`; splits `.` and `,` unless between digits; splits `-` after a digit; collapses
/// whitespace (Python's definition). Returns the tokens joined by single spaces, as sacreBLEU does.
///
/// ```
/// use rosetta_eval::text::tokenize_13a;
/// assert_eq!(tokenize_13a("It costs $1,000.50, roughly."), "It costs $ 1,000.50 , roughly .");
/// ```
pub fn tokenize_13a(line: &str) -> String {
    let mut line = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let padded: Vec<char> = std::iter::once(' ')
        .chain(line.chars())
        .chain(std::iter::once(' '))
        .collect();
    // Each step is one `re.sub` of sacreBLEU's TokenizerRegexp: a left-to-right scan where a match consumes
    // its characters, so e.g. in `a..` only the first `.` is split off by the "not preceded by a digit"
    // rule.
    let mut s: Vec<char> = Vec::with_capacity(padded.len() * 2);
    for &c in &padded {
        if is_13a_punct(c) {
            s.extend([' ', c, ' ']);
        } else {
            s.push(c);
        }
    }
    let is_pc = |c: char| c == '.' || c == ',';
    let digit = |c: char| c.is_ascii_digit();
    // ([^0-9])([\.,]) -> "\1 \2 "
    s = sub_pairs(
        &s,
        |a, b| !digit(a) && is_pc(b),
        |a, b| vec![a, ' ', b, ' '],
    );
    // ([\.,])([^0-9]) -> " \1 \2"
    s = sub_pairs(
        &s,
        |a, b| is_pc(a) && !digit(b),
        |a, b| vec![' ', a, ' ', b],
    );
    // ([0-9])(-) -> "\1 \2 "
    s = sub_pairs(&s, |a, b| digit(a) && b == '-', |a, b| vec![a, ' ', b, ' ']);
    let s: String = s.into_iter().collect();
    s.split(is_py_space)
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first 13a class `[\{-\~\[-\` -\&\(-\+\:-\@\/]`: ASCII space and punctuation except `'`, `,`, `-`, `.`.
fn is_13a_punct(c: char) -> bool {
    matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/')
}

/// `re.sub` of a two-character pattern: scan left to right; where `matches(a, b)` holds, emit
/// `replace(a, b)` and continue after `b`, else emit `a` and continue at `b`.
fn sub_pairs(
    s: &[char],
    matches: impl Fn(char, char) -> bool,
    replace: impl Fn(char, char) -> Vec<char>,
) -> Vec<char> {
    let mut out = Vec::with_capacity(s.len() + s.len() / 2);
    let mut i = 0;
    while i < s.len() {
        if i + 1 < s.len() && matches(s[i], s[i + 1]) {
            out.extend(replace(s[i], s[i + 1]));
            i += 2;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// Per-segment BLEU statistics: `[sys_len, ref_len, counts.., totals..]` as sacreBLEU collects them.
#[derive(Debug, Clone, Copy, Default)]
struct BleuStats {
    sys_len: usize,
    ref_len: usize,
    counts: [usize; BLEU_MAX_ORDER],
    totals: [usize; BLEU_MAX_ORDER],
}

impl BleuStats {
    fn segment(hypothesis: &str, reference: &str) -> Self {
        // sacreBLEU's `_preprocess_segment`: right-strip, then tokenize (no lowercasing by default).
        let hyp = tokenize_13a(hypothesis.trim_end_matches(is_py_space));
        let reference = tokenize_13a(reference.trim_end_matches(is_py_space));
        let h: Vec<&str> = hyp.split(is_py_space).filter(|t| !t.is_empty()).collect();
        let r: Vec<&str> = reference
            .split(is_py_space)
            .filter(|t| !t.is_empty())
            .collect();
        let mut stats = Self {
            sys_len: h.len(),
            ref_len: r.len(),
            ..Self::default()
        };
        for n in 1..=BLEU_MAX_ORDER {
            let hc = ngram_counts(&h, n);
            let rc = ngram_counts(&r, n);
            for (g, &k) in &hc {
                stats.totals[n - 1] += k;
                stats.counts[n - 1] += k.min(rc.get(g).copied().unwrap_or(0));
            }
        }
        stats
    }

    fn add(&mut self, other: &Self) {
        self.sys_len += other.sys_len;
        self.ref_len += other.ref_len;
        for n in 0..BLEU_MAX_ORDER {
            self.counts[n] += other.counts[n];
            self.totals[n] += other.totals[n];
        }
    }

    /// sacreBLEU's `BLEU.compute_bleu` with `smooth_method='exp'`.
    fn score(&self, effective_order: bool) -> Bleu {
        let mut bleu = Bleu {
            score: 0.0,
            counts: self.counts,
            totals: self.totals,
            precisions: [0.0; BLEU_MAX_ORDER],
            bp: 1.0,
            sys_len: self.sys_len,
            ref_len: self.ref_len,
        };
        if self.sys_len < self.ref_len {
            bleu.bp = if self.sys_len > 0 {
                (1.0 - self.ref_len as f64 / self.sys_len as f64).exp()
            } else {
                0.0
            };
        }
        if self.counts.iter().all(|&c| c == 0) {
            return bleu;
        }
        let mut smooth = 1.0f64;
        let mut eff_order = BLEU_MAX_ORDER;
        for n in 0..BLEU_MAX_ORDER {
            if self.totals[n] == 0 {
                break;
            }
            if effective_order {
                eff_order = n + 1;
            }
            bleu.precisions[n] = if self.counts[n] == 0 {
                // NIST "exp" smoothing: 1 / 2^k for the k-th order without a match.
                smooth *= 2.0;
                100.0 / (smooth * self.totals[n] as f64)
            } else {
                100.0 * self.counts[n] as f64 / self.totals[n] as f64
            };
        }
        // sacreBLEU's `my_log` floors log(0) at -9999999999, so a skipped order zeroes the score.
        let log_sum = bleu.precisions[..eff_order].iter().fold(0.0f64, |acc, &p| {
            acc + if p == 0.0 { -9_999_999_999.0 } else { p.ln() }
        });
        bleu.score = bleu.bp * (log_sum / eff_order as f64).exp();
        bleu
    }
}

/// Corpus BLEU of `hypotheses` against one reference each, as `sacrebleu.corpus_bleu(hypotheses,
/// [references])` computes it: 13a tokenisation ([`tokenize_13a`]), case kept, n-grams up to 4 with matches
/// clipped by the reference's counts, statistics summed over the corpus, `exp` smoothing (the k-th order with
/// no match gets precision `100 / (2^k · total)`), no effective order (an order with no candidate n-gram
/// gives 0), brevity penalty on the summed lengths.
///
/// # Errors
/// [`EvalError::Empty`] for an empty corpus, [`EvalError::LengthMismatch`] if the two lists differ in length
/// (sacreBLEU would silently truncate to the shorter one).
pub fn corpus_bleu<H: AsRef<str>, R: AsRef<str>>(
    hypotheses: &[H],
    references: &[R],
) -> Result<Bleu> {
    if hypotheses.len() != references.len() {
        return Err(EvalError::LengthMismatch {
            what: "corpus_bleu hypotheses vs references",
            left: hypotheses.len(),
            right: references.len(),
        });
    }
    if hypotheses.is_empty() {
        return Err(EvalError::Empty("corpus_bleu"));
    }
    let mut total = BleuStats::default();
    for (h, r) in hypotheses.iter().zip(references) {
        total.add(&BleuStats::segment(h.as_ref(), r.as_ref()));
    }
    Ok(total.score(false))
}

/// Sentence BLEU as `sacrebleu.sentence_bleu(hypothesis, [reference])` computes it: [`corpus_bleu`] of one
/// segment but with effective order on (orders beyond the longest n-gram the hypothesis has are left out of
/// the geometric mean, so a two-word hypothesis can score above 0).
pub fn sentence_bleu(hypothesis: &str, reference: &str) -> Bleu {
    BleuStats::segment(hypothesis, reference).score(true)
}
