//! Text metrics against the Python references (`tests/fixtures/text_metrics.json`, written by
//! `scripts/eval_reference.py` with rouge-score, NLTK and sacreBLEU), plus hand-computed examples.
//!
//! Tolerance: none, except where libm is involved. Tokens, counts and lengths must be equal, and so must
//! every value that is a chain of IEEE-correctly-rounded operations (ROUGE precision / recall / F, BLEU
//! n-gram precisions): the Rust code evaluates the same f64 expressions in the same order as the Python
//! packages. BLEU's brevity penalty and score go through `exp` / `ln`, which are not correctly rounded and
//! may differ by an ulp between C libraries, so they are held to 4 ulps (about 1e-15 relative). The fixture
//! stores floats as repr strings, parsed exactly here (serde_json's default float parser can be an ulp off).

use rosetta_eval::porter::stem;
use rosetta_eval::text::{
    corpus_bleu, rouge, rouge_l_tokens, rouge_n_tokens, rouge_tokenize, sentence_bleu,
    tokenize_13a, Bleu, Prf,
};
use serde::Deserialize;

/// Allowed distance, in units in the last place, for values computed through `exp` / `ln`.
const LIBM_ULPS: u64 = 4;

#[derive(Deserialize)]
struct Fixture {
    versions: std::collections::BTreeMap<String, String>,
    porter_mode: String,
    pairs: Vec<Pair>,
    corpus_bleu: RefBleu,
    stems: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Pair {
    reference: String,
    candidate: String,
    rouge: RefRouge,
    rouge_stemmed: RefRouge,
    bleu_reference_tokens: String,
    bleu_candidate_tokens: String,
    sentence_bleu: RefBleu,
}

#[derive(Deserialize)]
struct RefRouge {
    /// Space-joined.
    reference_tokens: String,
    /// Space-joined.
    candidate_tokens: String,
    rouge1: RefPrf,
    rouge2: RefPrf,
    #[serde(rename = "rougeL")]
    rouge_l: RefPrf,
}

#[derive(Deserialize)]
struct RefPrf {
    #[serde(deserialize_with = "exact")]
    precision: f64,
    #[serde(deserialize_with = "exact")]
    recall: f64,
    #[serde(deserialize_with = "exact")]
    fmeasure: f64,
}

#[derive(Deserialize)]
struct RefBleu {
    #[serde(deserialize_with = "exact")]
    score: f64,
    counts: Vec<usize>,
    totals: Vec<usize>,
    #[serde(deserialize_with = "exact_vec")]
    precisions: Vec<f64>,
    #[serde(deserialize_with = "exact")]
    bp: f64,
    sys_len: usize,
    ref_len: usize,
}

/// The fixture writes floats as strings holding Python's `repr`; Rust's `str::parse` rounds them exactly.
fn exact<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

fn exact_vec<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    v.iter()
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .collect()
}

fn split(s: &str) -> Vec<String> {
    s.split(' ')
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect()
}

fn fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/text_metrics.json"
    );
    let text = std::fs::read_to_string(path).expect("read fixture");
    serde_json::from_str(&text).expect("parse fixture")
}

/// Distance in ulps between two finite f64 of the same sign (`u64::MAX` otherwise).
fn ulps(a: f64, b: f64) -> u64 {
    if a == b {
        return 0;
    }
    if !a.is_finite() || !b.is_finite() || a.is_sign_negative() != b.is_sign_negative() {
        return u64::MAX;
    }
    a.to_bits().abs_diff(b.to_bits())
}

fn check_prf(got: &Prf, want: &RefPrf, what: &str) {
    for (name, g, w) in [
        ("precision", got.precision, want.precision),
        ("recall", got.recall, want.recall),
        ("fmeasure", got.fmeasure, want.fmeasure),
    ] {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{what} {name}: got {g:e}, reference {w:e}"
        );
    }
}

fn check_bleu(got: &Bleu, want: &RefBleu, what: &str) {
    assert_eq!(got.counts.as_slice(), want.counts, "{what} counts");
    assert_eq!(got.totals.as_slice(), want.totals, "{what} totals");
    assert_eq!(got.sys_len, want.sys_len, "{what} sys_len");
    assert_eq!(got.ref_len, want.ref_len, "{what} ref_len");
    for (n, (&g, &w)) in got.precisions.iter().zip(&want.precisions).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{what} precision {}: got {g:e}, reference {w:e}",
            n + 1
        );
    }
    assert!(
        ulps(got.bp, want.bp) <= LIBM_ULPS,
        "{what} bp: got {:e}, reference {:e}",
        got.bp,
        want.bp
    );
    assert!(
        ulps(got.score, want.score) <= LIBM_ULPS,
        "{what} score: got {:e}, reference {:e}",
        got.score,
        want.score
    );
}

#[test]
fn fixture_is_what_the_docs_say() {
    let f = fixture();
    assert_eq!(f.versions["rouge-score"], "0.1.2");
    assert_eq!(f.versions["sacrebleu"], "2.6.0");
    assert_eq!(f.versions["nltk"], "3.10.4");
    assert_eq!(f.porter_mode, "NLTK_EXTENSIONS");
    assert!(f.pairs.len() >= 40);
    assert!(f.stems.len() >= 200);
}

#[test]
fn rouge_tokens_match_reference() {
    for (i, p) in fixture().pairs.iter().enumerate() {
        for (stemming, r) in [(false, &p.rouge), (true, &p.rouge_stemmed)] {
            assert_eq!(
                rouge_tokenize(&p.reference, stemming),
                split(&r.reference_tokens),
                "pair {i} reference {:?} (stemming {stemming})",
                p.reference
            );
            assert_eq!(
                rouge_tokenize(&p.candidate, stemming),
                split(&r.candidate_tokens),
                "pair {i} candidate {:?} (stemming {stemming})",
                p.candidate
            );
        }
    }
}

#[test]
fn rouge_scores_match_reference() {
    for (i, p) in fixture().pairs.iter().enumerate() {
        for (stemming, r) in [(false, &p.rouge), (true, &p.rouge_stemmed)] {
            let got = rouge(&p.reference, &p.candidate, stemming);
            let what = format!("pair {i} (stemming {stemming})");
            check_prf(&got.rouge1, &r.rouge1, &format!("{what} rouge1"));
            check_prf(&got.rouge2, &r.rouge2, &format!("{what} rouge2"));
            check_prf(&got.rouge_l, &r.rouge_l, &format!("{what} rougeL"));
        }
    }
}

#[test]
fn tokenize_13a_matches_reference() {
    for (i, p) in fixture().pairs.iter().enumerate() {
        // The fixture holds 13a of the right-stripped segment, as sacreBLEU's BLEU tokenizes it.
        let strip = |s: &str| s.trim_end().to_string();
        assert_eq!(
            tokenize_13a(&strip(&p.reference)),
            p.bleu_reference_tokens,
            "pair {i} reference {:?}",
            p.reference
        );
        assert_eq!(
            tokenize_13a(&strip(&p.candidate)),
            p.bleu_candidate_tokens,
            "pair {i} candidate {:?}",
            p.candidate
        );
    }
}

#[test]
fn sentence_bleu_matches_reference() {
    for (i, p) in fixture().pairs.iter().enumerate() {
        let got = sentence_bleu(&p.candidate, &p.reference);
        check_bleu(&got, &p.sentence_bleu, &format!("pair {i} sentence BLEU"));
    }
}

#[test]
fn corpus_bleu_matches_reference() {
    let f = fixture();
    let hyps: Vec<&str> = f.pairs.iter().map(|p| p.candidate.as_str()).collect();
    let refs: Vec<&str> = f.pairs.iter().map(|p| p.reference.as_str()).collect();
    let got = corpus_bleu(&hyps, &refs).unwrap();
    check_bleu(&got, &f.corpus_bleu, "corpus BLEU");
}

#[test]
fn corpus_bleu_rejects_bad_input() {
    assert!(corpus_bleu::<&str, &str>(&[], &[]).is_err());
    assert!(corpus_bleu(&["a"], &["a", "b"]).is_err());
}

#[test]
fn porter_matches_nltk() {
    let f = fixture();
    let wrong: Vec<String> = f
        .stems
        .iter()
        .filter(|&(w, s)| stem(w) != *s)
        .map(|(w, s)| format!("{w}: got {}, NLTK {s}", stem(w)))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} stems differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

fn toks(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

#[test]
fn rouge_hand_computed() {
    // reference: the cat sat on the mat (6 tokens); candidate: the cat is on the mat (6 tokens).
    let s = rouge("The cat sat on the mat.", "the cat is on the mat", false);
    // Unigrams: the x2, cat, on, mat match = 5 of 6 on each side.
    assert_eq!(s.rouge1.precision, 5.0 / 6.0);
    assert_eq!(s.rouge1.recall, 5.0 / 6.0);
    assert!((s.rouge1.fmeasure - 5.0 / 6.0).abs() < 1e-15);
    // Bigrams: (the cat), (on the), (the mat) match = 3 of 5.
    assert_eq!(s.rouge2.precision, 3.0 / 5.0);
    assert_eq!(s.rouge2.recall, 3.0 / 5.0);
    // LCS: the cat on the mat = 5.
    assert_eq!(s.rouge_l.precision, 5.0 / 6.0);

    // Clipping: the reference has `the` twice, the candidate four times.
    let r = rouge_n_tokens(&toks("the the"), &toks("the the the the"), 1).unwrap();
    assert_eq!((r.precision, r.recall), (0.5, 1.0));
    assert!((r.fmeasure - 2.0 / 3.0).abs() < 1e-15);

    // LCS is a subsequence, not a substring: a b c d vs a x c y d -> a c d.
    let l = rouge_l_tokens(&toks("a b c d"), &toks("a x c y d"));
    assert_eq!((l.precision, l.recall), (3.0 / 5.0, 3.0 / 4.0));
    assert!((l.fmeasure - 2.0 * 0.6 * 0.75 / 1.35).abs() < 1e-15);

    // Nothing to compare: all zero, no NaN.
    let z = rouge("", "...", true);
    assert_eq!(z.rouge1, Prf::default());
    assert_eq!(z.rouge_l, Prf::default());

    // Stemming makes running / runs and connection / connected match.
    let plain = rouge("running connection", "runs connected", false);
    let stemmed = rouge("running connection", "runs connected", true);
    assert_eq!(plain.rouge1.fmeasure, 0.0);
    assert_eq!(stemmed.rouge1.fmeasure, 1.0);
    assert_eq!(stemmed.rouge2.fmeasure, 1.0);

    assert!(rouge_n_tokens(&toks("a"), &toks("a"), 0).is_err());
}

#[test]
fn bleu_hand_computed() {
    // Identical 6-token sentence: all precisions 100, no brevity penalty.
    let b = sentence_bleu("the cat sat on the mat", "the cat sat on the mat");
    assert_eq!(b.counts, [6, 5, 4, 3]);
    assert_eq!(b.totals, [6, 5, 4, 3]);
    assert_eq!(b.bp, 1.0);
    assert!((b.score - 100.0).abs() < 1e-9);

    // Hypothesis `the cat` against `the cat sat`: p1 = p2 = 100; with effective order the geometric mean is
    // over two orders only; bp = exp(1 - 3/2).
    let b = sentence_bleu("the cat", "the cat sat");
    assert_eq!(b.totals, [2, 1, 0, 0]);
    assert!((b.bp - (-0.5f64).exp()).abs() < 1e-15);
    assert!((b.score - 100.0 * (-0.5f64).exp()).abs() < 1e-9);
    // Without effective order (corpus BLEU) the missing orders zero the score.
    let c = corpus_bleu(&["the cat"], &["the cat sat"]).unwrap();
    assert_eq!(c.score, 0.0);

    // exp smoothing: `a b c d` vs `a b x d`: counts 3, 1, 0, 0 of totals 4, 3, 2, 1;
    // p3 = 100 / (2 * 2), p4 = 100 / (4 * 1).
    let b = sentence_bleu("a b c d", "a b x d");
    assert_eq!(b.counts, [3, 1, 0, 0]);
    let p = [75.0, 100.0 / 3.0, 25.0, 25.0];
    for (g, w) in b.precisions.iter().zip(p) {
        assert!((g - w).abs() < 1e-12);
    }
    let want = (p.iter().map(|x: &f64| x.ln()).sum::<f64>() / 4.0).exp();
    assert!((b.score - want).abs() < 1e-9);

    // Nothing matches: 0, not NaN.
    assert_eq!(sentence_bleu("x y", "a b").score, 0.0);
    assert_eq!(sentence_bleu("", "").score, 0.0);
}
