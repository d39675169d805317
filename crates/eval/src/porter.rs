//! The Porter stemmer exactly as NLTK's `nltk.stem.porter.PorterStemmer()` computes it in its default mode,
//! `NLTK_EXTENSIONS` — the instance `rouge-score`'s default tokenizer builds for `use_stemmer=True`.
//!
//! Porter, M. "An algorithm for suffix stripping." *Program* 14.3 (1980): 130-137, plus the deviations NLTK
//! applies in that mode (each marked `NLTK:` below, in the order NLTK's `porter.py` applies them):
//!
//! - a table of irregular forms looked up first (`skies -> sky`, `dying -> die`, `news -> news`, ...);
//! - words of one or two characters are returned unchanged;
//! - step 1a: `ies -> ie` for four-letter words (`dies -> die`, but `flies -> fli`);
//! - step 1b: `ied -> ie` for four-letter words, else `ied -> i`, before every other rule;
//! - condition `*o` also holds for a two-letter stem vowel + consonant;
//! - step 1c: `y -> i` only after a consonant that is not the stem's first letter (`happy -> happi`,
//!   `enjoy -> enjoy`), instead of the paper's `(*v*)`;
//! - step 2: `alli -> al` is tried first and the result goes through step 2 again; `bli -> ble` replaces
//!   the paper's `abli -> able`; `fulli -> ful` and `logi -> log` (the latter's measure taken on the stem with
//!   its `l`) are added.
//!
//! Checked against NLTK 3.10.4 on the word list in `tests/fixtures/text_metrics.json`
//! (`scripts/eval_reference.py`). The stemmer works on Unicode scalar values as Python indexes a `str`;
//! only ASCII letters are vowels, so any other character counts as a consonant, as in NLTK.

/// NLTK's irregular forms (`PorterStemmer.pool` in `NLTK_EXTENSIONS` mode): word -> stem.
const IRREGULAR: &[(&str, &str)] = &[
    ("sky", "sky"),
    ("skies", "sky"),
    ("dying", "die"),
    ("lying", "lie"),
    ("tying", "tie"),
    ("news", "news"),
    ("innings", "inning"),
    ("inning", "inning"),
    ("outings", "outing"),
    ("outing", "outing"),
    ("cannings", "canning"),
    ("canning", "canning"),
    ("howe", "howe"),
    ("proceed", "proceed"),
    ("exceed", "exceed"),
    ("succeed", "succeed"),
];

/// Stem one word as NLTK's `PorterStemmer().stem(word)` does (lowercasing it first).
///
/// ```
/// use rosetta_eval::porter::stem;
/// assert_eq!(stem("running"), "run");
/// assert_eq!(stem("generously"), "gener");
/// assert_eq!(stem("connected"), stem("connection"));
/// ```
pub fn stem(word: &str) -> String {
    let lower = word.to_lowercase();
    if let Some((_, s)) = IRREGULAR.iter().find(|(w, _)| *w == lower) {
        return (*s).to_string();
    }
    // NLTK: tests the length of the word as given, before lowercasing (the same for ASCII).
    if word.chars().count() <= 2 {
        return lower;
    }
    let mut w: Vec<char> = lower.chars().collect();
    w = step1a(w);
    w = step1b(w);
    w = step1c(w);
    w = step2(w);
    w = step3(w);
    w = step4(w);
    w = step5a(w);
    w = step5b(w);
    w.into_iter().collect()
}

fn is_vowel(c: char) -> bool {
    matches!(c, 'a' | 'e' | 'i' | 'o' | 'u')
}

/// Consonant flags of every letter: `y` is a consonant at the start or after a vowel, a vowel after a
/// consonant.
fn consonant_flags(w: &[char]) -> Vec<bool> {
    let mut flags: Vec<bool> = Vec::with_capacity(w.len());
    for (i, &c) in w.iter().enumerate() {
        let f = if is_vowel(c) {
            false
        } else if c == 'y' {
            i == 0 || !flags[i - 1]
        } else {
            true
        };
        flags.push(f);
    }
    flags
}

fn is_consonant(w: &[char], i: usize) -> bool {
    consonant_flags(&w[..=i])[i]
}

/// The measure `m` of `[C](VC){m}[V]`: the number of vowel -> consonant transitions.
fn measure(w: &[char]) -> usize {
    consonant_flags(w)
        .windows(2)
        .filter(|p| !p[0] && p[1])
        .count()
}

fn contains_vowel(w: &[char]) -> bool {
    consonant_flags(w).iter().any(|c| !c)
}

/// `*d`: ends with a double consonant.
fn ends_double_consonant(w: &[char]) -> bool {
    let n = w.len();
    n >= 2 && w[n - 1] == w[n - 2] && is_consonant(w, n - 1)
}

/// `*o`: ends consonant-vowel-consonant, the last not `w`, `x` or `y`.
fn ends_cvc(w: &[char]) -> bool {
    let n = w.len();
    (n >= 3
        && is_consonant(w, n - 3)
        && !is_consonant(w, n - 2)
        && is_consonant(w, n - 1)
        && !matches!(w[n - 1], 'w' | 'x' | 'y'))
        // NLTK: a two-letter stem vowel + consonant counts too.
        || (n == 2 && !is_consonant(w, 0) && is_consonant(w, 1))
}

fn ends_with(w: &[char], suffix: &str) -> bool {
    let s: Vec<char> = suffix.chars().collect();
    w.len() >= s.len() && w[w.len() - s.len()..] == s[..]
}

fn strip(w: &[char], suffix: &str) -> Vec<char> {
    w[..w.len() - suffix.chars().count()].to_vec()
}

fn concat(stem: &[char], tail: &str) -> Vec<char> {
    let mut out = stem.to_vec();
    out.extend(tail.chars());
    out
}

/// A rule's condition on the stem left after removing the suffix.
type Condition<'a> = &'a dyn Fn(&[char]) -> bool;

/// NLTK's `_apply_rule_list`: the first rule whose suffix matches decides — it applies if its condition
/// holds on the stem, else the word is returned unchanged and no later rule is tried.
fn apply_rules(w: Vec<char>, rules: &[(&str, &str, Option<Condition<'_>>)]) -> Vec<char> {
    for &(suffix, replacement, condition) in rules {
        if ends_with(&w, suffix) {
            let stem = strip(&w, suffix);
            return if condition.is_none_or(|c| c(&stem)) {
                concat(&stem, replacement)
            } else {
                w
            };
        }
    }
    w
}

fn positive_measure(w: &[char]) -> bool {
    measure(w) > 0
}

fn step1a(w: Vec<char>) -> Vec<char> {
    // NLTK: `dies -> die` (but `flies -> fli`).
    if ends_with(&w, "ies") && w.len() == 4 {
        return concat(&strip(&w, "ies"), "ie");
    }
    apply_rules(
        w,
        &[
            ("sses", "ss", None),
            ("ies", "i", None),
            ("ss", "ss", None),
            ("s", "", None),
        ],
    )
}

fn step1b(w: Vec<char>) -> Vec<char> {
    // NLTK: `died -> die`, `spied -> spi`, before every other rule.
    if ends_with(&w, "ied") {
        let tail = if w.len() == 4 { "ie" } else { "i" };
        return concat(&strip(&w, "ied"), tail);
    }
    // (m>0) EED -> EE; a word ending in `eed` never reaches the ED rule.
    if ends_with(&w, "eed") {
        let stem = strip(&w, "eed");
        return if measure(&stem) > 0 {
            concat(&stem, "ee")
        } else {
            w
        };
    }
    // (*v*) ED -> , (*v*) ING ->
    let Some(stem) = ["ed", "ing"]
        .iter()
        .filter(|s| ends_with(&w, s))
        .map(|s| strip(&w, s))
        .find(|stem| contains_vowel(stem))
    else {
        return w;
    };
    // AT -> ATE, BL -> BLE, IZ -> IZE, then (*d and not (*L or *S or *Z)) -> single letter, then
    // (m=1 and *o) -> E; as in NLTK, a stem ending in ll / ss / zz stops the list before the last rule.
    for (suffix, replacement) in [("at", "ate"), ("bl", "ble"), ("iz", "ize")] {
        if ends_with(&stem, suffix) {
            return concat(&strip(&stem, suffix), replacement);
        }
    }
    if ends_double_consonant(&stem) {
        let last = stem[stem.len() - 1];
        return if matches!(last, 'l' | 's' | 'z') {
            stem
        } else {
            stem[..stem.len() - 1].to_vec()
        };
    }
    if measure(&stem) == 1 && ends_cvc(&stem) {
        return concat(&stem, "e");
    }
    stem
}

fn step1c(w: Vec<char>) -> Vec<char> {
    // NLTK: (*c and not c) Y -> I, i.e. after a consonant that is not the whole stem.
    let cond = |stem: &[char]| stem.len() > 1 && is_consonant(stem, stem.len() - 1);
    apply_rules(w, &[("y", "i", Some(&cond))])
}

fn step2(w: Vec<char>) -> Vec<char> {
    // NLTK: ALLI -> AL first, and the result through step 2 again.
    if ends_with(&w, "alli") && positive_measure(&strip(&w, "alli")) {
        return step2(concat(&strip(&w, "alli"), "al"));
    }
    let m: Condition<'_> = &positive_measure;
    // NLTK: `logi -> log` with the measure of the stem that keeps the `l` (`geo`, `theo`, ...).
    let logi_stem: Vec<char> = w[..w.len().saturating_sub(3)].to_vec();
    let logi = move |_: &[char]| positive_measure(&logi_stem);
    apply_rules(
        w,
        &[
            ("ational", "ate", Some(m)),
            ("tional", "tion", Some(m)),
            ("enci", "ence", Some(m)),
            ("anci", "ance", Some(m)),
            ("izer", "ize", Some(m)),
            // NLTK (and Porter's later versions): BLI -> BLE instead of ABLI -> ABLE.
            ("bli", "ble", Some(m)),
            ("alli", "al", Some(m)),
            ("entli", "ent", Some(m)),
            ("eli", "e", Some(m)),
            ("ousli", "ous", Some(m)),
            ("ization", "ize", Some(m)),
            ("ation", "ate", Some(m)),
            ("ator", "ate", Some(m)),
            ("alism", "al", Some(m)),
            ("iveness", "ive", Some(m)),
            ("fulness", "ful", Some(m)),
            ("ousness", "ous", Some(m)),
            ("aliti", "al", Some(m)),
            ("iviti", "ive", Some(m)),
            ("biliti", "ble", Some(m)),
            // NLTK additions, tried last.
            ("fulli", "ful", Some(m)),
            ("logi", "log", Some(&logi)),
        ],
    )
}

fn step3(w: Vec<char>) -> Vec<char> {
    let m: Condition<'_> = &positive_measure;
    apply_rules(
        w,
        &[
            ("icate", "ic", Some(m)),
            ("ative", "", Some(m)),
            ("alize", "al", Some(m)),
            ("iciti", "ic", Some(m)),
            ("ical", "ic", Some(m)),
            ("ful", "", Some(m)),
            ("ness", "", Some(m)),
        ],
    )
}

fn step4(w: Vec<char>) -> Vec<char> {
    let m1 = |stem: &[char]| measure(stem) > 1;
    let m: Condition<'_> = &m1;
    let ion = |stem: &[char]| measure(stem) > 1 && matches!(stem.last(), Some('s' | 't'));
    apply_rules(
        w,
        &[
            ("al", "", Some(m)),
            ("ance", "", Some(m)),
            ("ence", "", Some(m)),
            ("er", "", Some(m)),
            ("ic", "", Some(m)),
            ("able", "", Some(m)),
            ("ible", "", Some(m)),
            ("ant", "", Some(m)),
            ("ement", "", Some(m)),
            ("ment", "", Some(m)),
            ("ent", "", Some(m)),
            ("ion", "", Some(&ion)),
            ("ou", "", Some(m)),
            ("ism", "", Some(m)),
            ("ate", "", Some(m)),
            ("iti", "", Some(m)),
            ("ous", "", Some(m)),
            ("ive", "", Some(m)),
            ("ize", "", Some(m)),
        ],
    )
}

fn step5a(w: Vec<char>) -> Vec<char> {
    // (m>1) E -> ; (m=1 and not *o) E -> — both conditions are tried (not a first-match rule list).
    if ends_with(&w, "e") {
        let stem = strip(&w, "e");
        let m = measure(&stem);
        if m > 1 || (m == 1 && !ends_cvc(&stem)) {
            return stem;
        }
    }
    w
}

fn step5b(w: Vec<char>) -> Vec<char> {
    // (m>1 and *d and *L) -> single letter; NLTK takes the measure of the word less its last letter.
    if ends_with(&w, "ll") && measure(&w[..w.len() - 1]) > 1 {
        return w[..w.len() - 1].to_vec();
    }
    w
}

#[cfg(test)]
mod tests {
    use super::stem;

    #[test]
    fn paper_examples() {
        for (w, s) in [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("cats", "cat"),
            ("feed", "feed"),
            ("agreed", "agre"),
            ("plastered", "plaster"),
            ("motoring", "motor"),
            ("hopping", "hop"),
            ("falling", "fall"),
            ("filing", "file"),
            ("happy", "happi"),
            ("relational", "relat"),
            ("controll", "control"),
            ("roll", "roll"),
        ] {
            assert_eq!(stem(w), s, "{w}");
        }
    }
}
