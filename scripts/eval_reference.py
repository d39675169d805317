#!/usr/bin/env python3
"""Export the reference values that `rosetta-eval`'s text metrics are tested against.

Regenerate with:

    ~/.cache/rosetta/venv/bin/python -m pip install -r scripts/requirements-eval-reference.txt
    ~/.cache/rosetta/venv/bin/python scripts/eval_reference.py

(output: crates/eval/tests/fixtures/text_metrics.json; `--check` recomputes and compares with the committed file
instead of writing it).

For a fixed list of (reference, candidate) sentence pairs written below, the fixture records:

- Google's `rouge-score` (`rouge_scorer.RougeScorer(['rouge1', 'rouge2', 'rougeL'], use_stemmer=...)`, scored as
  `scorer.score(reference, candidate)`), with stemming off and on: precision, recall and F-measure of each, and the
  tokens its default tokenizer produced;
- sacreBLEU's `sentence_bleu(candidate, [reference])` per pair (defaults: tokenizer 13a, exp smoothing, effective
  order on) and `corpus_bleu(candidates, [references])` over the whole list (effective order off), with the 13a
  tokenisation of every string;
- NLTK's `PorterStemmer()` (the instance rouge-score builds: mode NLTK_EXTENSIONS, the default) on a word list.

The installed package versions are recorded in the JSON. Floats are written as strings holding Python's
`repr` (shortest round-trip), so that the Rust tests parse them exactly and can compare bit for bit. Everything is deterministic: running the script twice
writes the same file.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path

import sacrebleu
from nltk.stem import porter
from rouge_score import rouge_scorer, tokenizers
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates" / "eval" / "tests" / "fixtures" / "text_metrics.json"
PACKAGES = ["rouge-score", "nltk", "sacrebleu", "absl-py"]

# (reference, candidate)
PAIRS: list[tuple[str, str]] = [
    ("The cat sat on the mat.", "The cat is sitting on the mat."),
    ("The cat sat on the mat.", "The cat sat on the mat."),
    ("running runs ran", "He runs while running, and he ran."),
    ("She gave generously to the connection fund.", "They were connected and gave generously."),
    ("I can't believe it's not butter!", "I cannot believe it is not butter."),
    ("café au lait, s'il vous plaît", "cafe au lait sil vous plait"),
    ("", "something"),
    ("something", ""),
    ("", ""),
    ("a", "a"),
    ("the the the the", "the the"),
    ("the the", "the the the the the"),
    ("In 1999, 3.14 was pi and 2,000 people came.", "In 1999 pi was 3.14; 2000 people came."),
    ("Hello, world!!!", "hello world"),
    ("e-mail is well-known; pages 10-20 and 3-4.", "email is well known; pages 10 - 20 and 3 to 4."),
    ("Tom &amp; Jerry &lt;3 &quot;cartoons&quot; &amp;lt;", 'Tom & Jerry <3 "cartoons" <'),
    ("line one\nline two", "line one line two"),
    ("hyphen-\nated words", "hyphenated words"),
    ("<skipped> text kept", "text kept"),
    ("naïve résumé über Ünïcödé", "naive resume uber unicode"),
    ("“Curly quotes” — an em dash… and ’apostrophes’", '"Curly quotes" - an em dash... and \'apostrophes\''),
    ("buffalo " * 8, "Buffalo buffalo Buffalo buffalo buffalo buffalo Buffalo buffalo"),
    ("...", "."),
    ("Mr. Smith paid $5.00 for 2 apples, i.e. 2.50 each.", "Mr Smith paid 5 dollars for two apples."),
    ("The flies are dying, lying under the skies.", "A fly died and lied under the sky."),
    ("relational conditional rational", "relate condition ration"),
    ("happiness and hopefulness", "happy and hopeful"),
    ("Caresses, ponies and ties.", "caress pony tie"),
    ("agreed plastered motoring", "agree plaster motor"),
    ("  spaced   out \t text  ", "spaced out text"),
    ("Ⅻ ½ ² ③ 42", "12 1/2 2 3 42"),
    ("İstanbul is 100 \u212aM away", "istanbul is 100 km away"),
    ("It costs 1,000.50 dollars, or 3.5, roughly.", "It costs 1000.50 dollars or 3.5 roughly."),
    ("The end .", "The end."),
    ("I don't think we won't; they shouldn't.", "I do not think we will not; they should not."),
    ("I’m here and you’re there", "I'm here and you're there"),
    ("我爱你", "我爱你"),
    ("non\u00a0breaking space and a\x1cseparator", "non breaking space and a separator"),
    ("yyyy syzygy toy enjoyment", "toys enjoy syzygies"),
    ("generously generous generosity", "generous"),
    ("connection connected connecting connections connective", "connect"),
    ("Trailing whitespace and newline  \n", "Trailing whitespace and newline"),
    (
        "The committee, after several hours of deliberation in the crowded hall, finally agreed that the new "
        "policy would be implemented gradually over the next three years, starting with the smaller offices.",
        "After hours of deliberation, the committee agreed to implement the new policy gradually over three "
        "years, beginning with the smaller offices in the region.",
    ),
    (
        "Activation steering adds a vector to the residual stream at a chosen layer so that the model's "
        "behaviour changes without any fine-tuning of its weights.",
        "Steering a model adds a direction to its residual stream at one layer, changing behaviour without "
        "fine-tuning the weights at all.",
    ),
    ("Completely different words here", "Nothing overlaps with that"),
]

STEM_WORDS: list[str] = """
caresses ponies ties caress cats feed agreed plastered bled motoring sing conflated troubled sized hopping
tanned falling hissing fizzed failing filing happy sky relational conditional rational valenci hesitanci
digitizer conformabli radicalli differentli vileli analogousli vietnamization predication operator feudalism
decisiveness hopefulness callousness formaliti sensitiviti sensibiliti triplicate formative formalize
electriciti electrical hopeful goodness revival allowance inference airliner gyroscopic adjustable defensible
irritant replacement adjustment dependent adoption homologou communism activate angulariti homologous effective
bowdlerize probate rate cease controll roll running runs ran generously connection connected connecting
connections connective dying lying tying news innings inning outings outing cannings canning howe proceed
exceed succeed skies dies flies died spied cried enjoy enjoyment spy fly try yyyy syzygy syzygies toy toys yes
say saying geology theology archaeology philology fully beautifully hopefully carefully helpfulli fulli
generalization nationalization organization organizing organized university universal argue argued arguing
arguments agreement happiness lies is as us a an it be ab by oed sses ies bus gas abyss this was has yearly
quickly national international probability responsibility abilities difficulty feeling meeting sleeping
computers computing computation computational compute simplify simplified simplification classes glasses
possess possession decision decisions vision station mention attention motion emotional education educational
cafe naive 1990s 3d x xyz aaa eeee oing ying eed ied bleed breed speed ee lied tied hoping hopped stopped
stopping quizzed buzzing filling killing telling smelled caring cared bored boring adopted adapt adaptation
hysterical hysteria logical logic biology zoology doubly early really actually eventually finally Running
GENEROUSLY Connected ate eat eating eaten sees seeing agreeing freed fed bed red need needed needing
indeed creed guaranteed exceedingly proceeding bye eye dye buy toyed played playing player plays
valley valleys monkey monkeys boys destroy destroyed ably able table tables cable marble mumble humbly
troubling sizing realize realization realizes realizing criticism critical criticize criticized
alliance ally allies rally rallies tally sally silly fallacy finalli radically gradually
""".split()
assert len(set(STEM_WORDS)) == len(STEM_WORDS), "duplicate stem words"


def num(x: float) -> str:
    """A float as Python's shortest round-trip repr, written as a JSON string so that readers parse it
    exactly (serde_json's default float parser may land one ulp off)."""
    return repr(float(x))


def rouge_entry(scorer, tokenizer, reference: str, candidate: str) -> dict:
    scores = scorer.score(reference, candidate)
    return {
        # Space-joined (tokens never contain spaces), to keep the fixture short.
        "reference_tokens": " ".join(tokenizer.tokenize(reference)),
        "candidate_tokens": " ".join(tokenizer.tokenize(candidate)),
        **{
            name: {
                "precision": num(scores[name].precision),
                "recall": num(scores[name].recall),
                "fmeasure": num(scores[name].fmeasure),
            }
            for name in ["rouge1", "rouge2", "rougeL"]
        },
    }


def bleu_entry(score) -> dict:
    return {
        "score": num(score.score),
        "counts": list(score.counts),
        "totals": list(score.totals),
        "precisions": [num(p) for p in score.precisions],
        "bp": num(score.bp),
        "sys_len": score.sys_len,
        "ref_len": score.ref_len,
    }


def build() -> dict:
    scorers = {
        stem: rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=stem)
        for stem in (False, True)
    }
    toks = {stem: tokenizers.DefaultTokenizer(use_stemmer=stem) for stem in (False, True)}
    # What `tokenizers.DefaultTokenizer(use_stemmer=True)` builds: check it is the default (NLTK) mode, so the
    # Rust port implements the right variant.
    stemmer = porter.PorterStemmer()
    assert toks[True]._stemmer.mode == stemmer.mode == porter.PorterStemmer.NLTK_EXTENSIONS
    tok13a = Tokenizer13a()

    pairs = []
    for reference, candidate in PAIRS:
        pairs.append(
            {
                "reference": reference,
                "candidate": candidate,
                "rouge": rouge_entry(scorers[False], toks[False], reference, candidate),
                "rouge_stemmed": rouge_entry(scorers[True], toks[True], reference, candidate),
                # What sacreBLEU's BLEU feeds its n-gram counter: 13a of the right-stripped segment.
                "bleu_reference_tokens": tok13a(reference.rstrip()),
                "bleu_candidate_tokens": tok13a(candidate.rstrip()),
                "sentence_bleu": bleu_entry(sacrebleu.sentence_bleu(candidate, [reference])),
            }
        )
    candidates = [c for _, c in PAIRS]
    references = [r for r, _ in PAIRS]
    corpus = sacrebleu.corpus_bleu(candidates, [references])
    metric = sacrebleu.BLEU()
    assert metric.corpus_score(candidates, [references]).score == corpus.score
    return {
        "generator": "scripts/eval_reference.py",
        "versions": {name: metadata.version(name) for name in PACKAGES}
        | {"python": sys.version.split()[0]},
        "float_format": "floats are strings holding Python's repr (shortest round-trip): parse them exactly",
        "rouge_types": ["rouge1", "rouge2", "rougeL"],
        "porter_mode": stemmer.mode,
        "pairs": pairs,
        "corpus_bleu": bleu_entry(corpus),
        "corpus_bleu_signature": str(metric.get_signature()),
        "stems": {w: stemmer.stem(w) for w in STEM_WORDS},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed fixture, write nothing")
    args = ap.parse_args()
    text = json.dumps(build(), indent=1, ensure_ascii=False) + "\n"
    if args.check:
        if OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} differs from a fresh export", file=sys.stderr)
            return 1
        print(f"{OUT} is current")
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({len(PAIRS)} pairs, {len(STEM_WORDS)} words)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
