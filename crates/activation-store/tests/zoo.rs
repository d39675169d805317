//! Alignment with the real zoo tokenizers, and a paired store of real activations captured through
//! model-hooks. These tests need the zoo (`make models`); they fail with a clear message when it is
//! missing, unless `ROSETTA_SKIP_ZOO_TESTS=1`.

use rosetta_activation_store::*;
use rosetta_model_hooks::{
    Batch, ChatMessage, Encoded, HookPoint, Hooks, LoadOptions, Model, PaddingSide, Tokenizer,
};
use std::path::PathBuf;

const SMOL: &str = "smollm2-135m-instruct";
const GEMMA: &str = "gemma3-270m";
const QWEN: &str = "qwen2.5-coder-0.5b-instruct";
const QWEN_L: &str = "qwen2.5-coder-1.5b-instruct";

/// The zoo model's directory, `None` (skip) when missing and `ROSETTA_SKIP_ZOO_TESTS=1`.
fn zoo(name: &str) -> Option<PathBuf> {
    match rosetta_model_hooks::zoo::find(name) {
        Ok(e) => Some(e.dir),
        Err(e) => {
            if std::env::var("ROSETTA_SKIP_ZOO_TESTS").is_ok_and(|v| v == "1") {
                eprintln!("skipping: {e} (ROSETTA_SKIP_ZOO_TESTS=1)");
                None
            } else {
                panic!(
                    "{e}\nthis test needs the model zoo; set ROSETTA_SKIP_ZOO_TESTS=1 to skip it"
                );
            }
        }
    }
}

const ENGLISH: &[&str] = &[
    "The quick brown fox jumps over the lazy dog.",
    "Rosetta collects activations once and trains many maps from disk, which saves a lot of compute.",
    "In 1969, Apollo 11 landed on the Moon; Neil Armstrong's first words were broadcast worldwide.",
    "Please summarise the following paragraph in two sentences, keeping the key numbers intact.",
];
const OTHER: &[&str] = &[
    "fn main() {\n    let x: Vec<i64> = (0..10).map(|i| i * i).collect();\n    println!(\"{x:?}\");\n}",
    "Zürich, São Paulo and Kraków — naïve café résumé. 東京は大きい都市です。 🦀🚀",
    "   leading spaces,\ttabs\n\nand   multiple    gaps   ",
];

fn check_pairs(a: &Encoded, b: &Encoded, al: &Aligned) {
    let mut last = None;
    for &(i, j) in &al.pairs {
        assert_eq!(
            a.offsets[i].1, b.offsets[j].1,
            "pair ({i}, {j}) ends at different characters in {:?}",
            a.text
        );
        assert!(!a.special[i] && !b.special[j], "special token paired");
        assert!(a.offsets[i].0 < a.offsets[i].1 && b.offsets[j].0 < b.offsets[j].1);
        if let Some((pi, pj)) = last {
            assert!(i > pi && j > pj, "pairs not increasing");
        }
        last = Some((i, j));
    }
}

fn pair_rates(name_a: &str, name_b: &str) {
    let (Some(da), Some(db)) = (zoo(name_a), zoo(name_b)) else {
        return;
    };
    let ta = Tokenizer::from_dir(&da).unwrap();
    let tb = Tokenizer::from_dir(&db).unwrap();
    let strategy =
        Alignment::for_hashes(&tokenizer_hash(&da).unwrap(), &tokenizer_hash(&db).unwrap());
    assert_eq!(
        strategy,
        Alignment::CharEnd,
        "{name_a} and {name_b} tokenizers differ"
    );
    let mut english = KeepReport::default();
    for (k, text) in ENGLISH.iter().chain(OTHER).enumerate() {
        for special in [false, true] {
            let a = ta.encode(text, special).unwrap();
            let b = tb.encode(text, special).unwrap();
            let al = align(strategy, &a, &b).unwrap();
            check_pairs(&a, &b, &al);
            if k < ENGLISH.len() && !special {
                english.merge(&al.report);
            }
            if !special {
                println!(
                    "{name_a} / {name_b} text {k}: {} / {} tokens, kept {} ({:.1}% / {:.1}%)",
                    a.ids.len(),
                    b.ids.len(),
                    al.report.kept,
                    100.0 * al.report.share_a(),
                    100.0 * al.report.share_b()
                );
            }
        }
    }
    println!(
        "{name_a} / {name_b} English keep rate: {:.1}% / {:.1}%",
        100.0 * english.share_a(),
        100.0 * english.share_b()
    );
    assert!(
        english.share_a() > 0.5 && english.share_b() > 0.5,
        "{english:?}"
    );
}

#[test]
fn smollm2_qwen_alignment() {
    pair_rates(SMOL, QWEN);
}

#[test]
fn gemma3_qwen_alignment() {
    pair_rates(GEMMA, QWEN);
}

#[test]
fn identical_tokenizers_keep_everything() {
    let (Some(d05), Some(d15), Some(dsmol)) = (zoo(QWEN), zoo(QWEN_L), zoo(SMOL)) else {
        return;
    };
    let h05 = tokenizer_hash(&d05).unwrap();
    assert_eq!(h05, tokenizer_hash(&d15).unwrap());
    assert_ne!(h05, tokenizer_hash(&dsmol).unwrap());
    assert_eq!(Alignment::for_hashes(&h05, &h05), Alignment::Identity);
    let (t05, t15) = (
        Tokenizer::from_dir(&d05).unwrap(),
        Tokenizer::from_dir(&d15).unwrap(),
    );
    for text in ENGLISH.iter().chain(OTHER) {
        let (a, b) = (
            t05.encode(text, true).unwrap(),
            t15.encode(text, true).unwrap(),
        );
        let al = align(Alignment::Identity, &a, &b).unwrap();
        assert_eq!(al.report.kept, a.ids.len());
        assert_eq!(al.report.share_a(), 1.0);
        assert_eq!(al.report.share_b(), 1.0);
        // Character-end alignment of identical tokenizations also keeps every token with a span.
        let ce = align(Alignment::CharEnd, &a, &b).unwrap();
        check_pairs(&a, &b, &ce);
    }
}

#[test]
fn target_sources_across_real_tokenizers() {
    let (Some(ds), Some(dg), Some(dq)) = (zoo(SMOL), zoo(GEMMA), zoo(QWEN)) else {
        return;
    };
    let tq = Tokenizer::from_dir(&dq).unwrap();
    for src in [ds, dg] {
        let ts = Tokenizer::from_dir(&src).unwrap();
        for text in ENGLISH.iter().chain(OTHER) {
            let (a, b) = (
                ts.encode(text, true).unwrap(),
                tq.encode(text, true).unwrap(),
            );
            let fill = target_sources(Alignment::CharEnd, &a, &b).unwrap();
            assert_eq!(fill.len(), b.ids.len());
            // Exact pairs are kept; every other row has read no further than the target token.
            for (i, j) in align(Alignment::CharEnd, &a, &b).unwrap().pairs {
                assert_eq!(fill[j], Some(i), "{text:?}");
            }
            let mut last = 0;
            for (j, f) in fill.iter().enumerate() {
                if let Some(i) = *f {
                    assert!(
                        a.offsets[i].1 <= b.offsets[j].1,
                        "{text:?}: {i} reads past {j}"
                    );
                    assert!(i >= last, "fill not monotone in {text:?}");
                    last = i;
                }
            }
            let filled = fill.iter().filter(|f| f.is_some()).count();
            assert!(
                filled * 10 >= b.ids.len() * 9,
                "{filled} of {} filled in {text:?}",
                b.ids.len()
            );
            // Naive pairing needs no shared text and pairs index with index.
            let naive = align(Alignment::Naive, &a, &b).unwrap();
            assert_eq!(naive.report.kept, a.ids.len().min(b.ids.len()));
        }
    }
}

#[test]
fn special_tokens_in_text_are_never_paired() {
    let (Some(ds), Some(dq)) = (zoo(SMOL), zoo(QWEN)) else {
        return;
    };
    let text = "<|im_start|>user\nHello there, how are you?<|im_end|>\n";
    let (ts, tq) = (
        Tokenizer::from_dir(&ds).unwrap(),
        Tokenizer::from_dir(&dq).unwrap(),
    );
    let mut a = ts.encode(text, true).unwrap();
    let mut b = tq.encode(text, true).unwrap();
    let im_start = tq.inner().token_to_id("<|im_start|>").unwrap() as i64;
    assert!(b.ids.contains(&im_start));
    // The tokenizer's mask does not flag special tokens written in the text...
    let unmarked = align(Alignment::CharEnd, &a, &b).unwrap();
    let pos = b.ids.iter().position(|&i| i == im_start).unwrap();
    assert!(unmarked.pairs.iter().any(|p| p.1 == pos));
    // ...mark_special_tokens does, and they are then never paired.
    mark_special_tokens(&mut a, &special_token_ids(&ts));
    mark_special_tokens(&mut b, &special_token_ids(&tq));
    assert!(b.special[pos]);
    let al = align(Alignment::CharEnd, &a, &b).unwrap();
    check_pairs(&a, &b, &al);
    assert!(!al.pairs.iter().any(|p| p.1 == pos));
    assert!(al.report.kept > 5, "{:?}", al.report);
}

fn chats() -> Vec<Vec<ChatMessage>> {
    vec![
        vec![ChatMessage::user("Tell me a joke about cats.")],
        vec![
            ChatMessage::new("system", "You are a terse assistant. You are helpful."),
            ChatMessage::user("What is the capital of France?"),
        ],
        vec![
            ChatMessage::user("  Translate 'naïve café' into German, please.  "),
            ChatMessage::new("assistant", "Naives Café."),
            ChatMessage::user("And into Japanese? 東京 🦀"),
        ],
        vec![
            ChatMessage::user("fn main() {\n    println!(\"hi\");\n}\nExplain this."),
            ChatMessage::new("assistant", "It prints hi."),
        ],
    ]
}

/// Every kept pair of two chat encodings ends at the same content character, and every paired token's
/// text is the content text at its shared span.
fn check_chat_pairs(a: &DocEncoding, b: &DocEncoding, al: &Aligned) {
    let rendered_a: Vec<char> = a.encoded.text.chars().collect();
    let rendered_b: Vec<char> = b.encoded.text.chars().collect();
    let shared: Vec<char> = a.shared_text.chars().collect();
    let mut last = None;
    for &(i, j) in &al.pairs {
        let (sa, sb) = (a.shared[i].unwrap(), b.shared[j].unwrap());
        assert_eq!(
            sa.1, sb.1,
            "pair ({i}, {j}) ends at different content characters"
        );
        assert!(!a.encoded.special[i] && !b.encoded.special[j]);
        for (s, enc, rendered) in [(sa, a, &rendered_a), (sb, b, &rendered_b)] {
            let (rs, re) = enc.encoded.offsets[if std::ptr::eq(enc, a) { i } else { j }];
            assert_eq!(
                rendered[rs..re],
                shared[s.0..s.1],
                "token text differs from the content at its shared span"
            );
        }
        if let Some((pi, pj)) = last {
            assert!(i > pi && j > pj, "pairs not increasing");
        }
        last = Some((i, j));
    }
}

#[test]
fn chats_align_on_message_contents() {
    let (Some(ds), Some(dq), Some(dg)) = (zoo(SMOL), zoo(QWEN), zoo(GEMMA)) else {
        return;
    };
    let (ts, tq, tg) = (
        Tokenizer::from_dir(&ds).unwrap(),
        Tokenizer::from_dir(&dq).unwrap(),
        Tokenizer::from_dir(&dg).unwrap(),
    );
    let (ss, sq) = (special_token_ids(&ts), special_token_ids(&tq));
    let mut total = KeepReport::default();
    let (mut content_a, mut outside_a) = (0, 0);
    for (k, chat) in chats().iter().enumerate() {
        let gen = k % 2 == 0;
        let a = DocEncoding::chat(&ts, chat, gen, &ss).unwrap();
        let b = DocEncoding::chat(&tq, chat, gen, &sq).unwrap();
        // Without a system message the renderings differ (default system prompts); the shared text
        // never does.
        if chat[0].role != "system" {
            assert_ne!(a.encoded.text, b.encoded.text);
        }
        assert_eq!(a.shared_text, chat_content_text(chat));
        let al = align(Alignment::CharEnd, &a.shared_view(), &b.shared_view()).unwrap();
        check_chat_pairs(&a, &b, &al);
        // Template text is never paired: SmolLM2's default system prompt is not content.
        if chat[0].role != "system" {
            let sys = a.encoded.text.find("SmolLM").unwrap();
            let sys = a.encoded.text[..sys].chars().count();
            let content_start = a
                .shared
                .iter()
                .zip(&a.encoded.offsets)
                .find_map(|(s, o)| s.map(|_| o.0))
                .unwrap();
            assert!(
                content_start > sys,
                "a default system prompt token got a content span"
            );
        }
        outside_a += a.outside();
        content_a += a.encoded.ids.len() - a.outside();
        total.merge(&al.report);
        println!(
            "chat {k}: {} / {} tokens ({} / {} template or special), kept {}",
            a.encoded.ids.len(),
            b.encoded.ids.len(),
            a.outside(),
            b.outside(),
            al.report.kept
        );
    }
    // Most content tokens are kept; every template token is dropped.
    assert!(
        total.kept as f64 > 0.6 * content_a as f64,
        "kept {} of {content_a} content tokens",
        total.kept
    );
    assert!(outside_a > 20, "{outside_a} template tokens");

    // A checkpoint without a chat template cannot read chats: the error says so.
    let err = DocEncoding::chat(&tg, &chats()[0], true, &special_token_ids(&tg))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no chat template"), "{err}");

    // Contents are located exactly, surrounding whitespace included (SmolLM2 writes them verbatim)...
    let (rendered, spans) = render_chat(&ts, &chats()[2], false).unwrap();
    let span_text = |rendered: &str, (s, e): (usize, usize)| -> String {
        rendered.chars().skip(s).take(e - s).collect()
    };
    assert_eq!(
        span_text(&rendered, spans[0].rendered),
        chats()[2][0].content
    );
    // ...and also through a template that trims them (as Gemma's does), in content coordinates of the
    // untrimmed text.
    let dir = std::env::temp_dir().join(format!("rosetta-trim-template-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(ds.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    std::fs::write(
        dir.join("chat_template.jinja"),
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}",
    )
    .unwrap();
    let tt = Tokenizer::from_dir(&dir).unwrap();
    let chat = &chats()[2];
    let (rendered, spans) = render_chat(&tt, chat, false).unwrap();
    assert_eq!(spans[0].skipped, 2);
    assert_eq!(
        span_text(&rendered, spans[0].rendered),
        chat[0].content.trim()
    );
    let a = DocEncoding::chat(&tt, chat, false, &ss).unwrap();
    let b = DocEncoding::chat(&tq, chat, false, &sq).unwrap();
    let al = align(Alignment::CharEnd, &a.shared_view(), &b.shared_view()).unwrap();
    check_chat_pairs(&a, &b, &al);
    assert!(al.report.kept > 10, "{:?}", al.report);
    // A template that rewrites contents cannot be aligned on them.
    for (template, what) in [
        (
            "{{ m['content'] | replace('é', 'e') }}",
            "changes message contents",
        ),
        ("{{ m['content'] | upper }}", "cannot be located"),
    ] {
        std::fs::write(
            dir.join("chat_template.jinja"),
            format!("{{% for m in messages %}}{template}\n{{% endfor %}}"),
        )
        .unwrap();
        let err = render_chat(&Tokenizer::from_dir(&dir).unwrap(), chat, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains(what), "{template}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Capture `resid_post(layer)` of one document (batch of one, the pass stops after the layer).
fn capture(model: &Model, enc: &Encoded, layer: usize) -> tch::Tensor {
    let batch = Batch::from_sequences(
        std::slice::from_ref(&enc.ids),
        0,
        PaddingSide::Left,
        tch::Device::Cpu,
    )
    .unwrap();
    let mut hooks = Hooks::new();
    hooks.capture(HookPoint::ResidPost(layer));
    let out = model.forward(&batch, &hooks).unwrap();
    batch
        .unpad(out.captured(HookPoint::ResidPost(layer)).unwrap())
        .unwrap()
}

#[test]
fn paired_store_of_real_activations_round_trips() {
    let (Some(ds), Some(dg)) = (zoo(SMOL), zoo(GEMMA)) else {
        return;
    };
    let (ts, tg) = (
        Tokenizer::from_dir(&ds).unwrap(),
        Tokenizer::from_dir(&dg).unwrap(),
    );
    let (ms, mg) = (
        Model::load(&ds, LoadOptions::default()).unwrap(),
        Model::load(&dg, LoadOptions::default()).unwrap(),
    );
    let (ls, lg) = (2usize, 3usize);
    let entry = |id: &str, dir: &PathBuf, layer: usize, dim| ModelEntry {
        id: id.into(),
        dir: dir.display().to_string(),
        tokenizer_hash: tokenizer_hash(dir).unwrap(),
        hook_point: HookPoint::ResidPost(layer).to_string(),
        dim,
    };
    let spec = StoreSpec {
        source: entry(SMOL, &ds, ls, ms.d_model()),
        target: Some(entry(GEMMA, &dg, lg, mg.d_model())),
        dtype: StoreDtype::F32,
        alignment: Alignment::CharEnd,
        seed: 0,
    };
    let dir = std::env::temp_dir().join(format!("rosetta-store-zoo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut w = StoreWriter::create(
        &dir,
        spec,
        WriterOptions {
            shard_bytes: 20_000,
        },
    )
    .unwrap();
    let mut expected = Vec::new();
    for (doc, text) in ENGLISH.iter().enumerate() {
        let (ea, eb) = (
            ts.encode(text, true).unwrap(),
            tg.encode(text, true).unwrap(),
        );
        let al = align(Alignment::CharEnd, &ea, &eb).unwrap();
        let ia: Vec<i64> = al.pairs.iter().map(|p| p.0 as i64).collect();
        let ib: Vec<i64> = al.pairs.iter().map(|p| p.1 as i64).collect();
        let xa = capture(&ms, &ea, ls).index_select(0, &tch::Tensor::from_slice(&ia));
        let xb = capture(&mg, &eb, lg).index_select(0, &tch::Tensor::from_slice(&ib));
        expected.push((xa.shallow_clone(), xb.shallow_clone()));
        w.add(DocRows {
            doc_id: doc as i64,
            x: SideRows {
                acts: xa,
                token_ids: ia.iter().map(|&i| ea.ids[i as usize]).collect(),
                positions: ia.clone(),
                encoded_tokens: ea.ids.len() as u64,
            },
            y: Some(SideRows {
                acts: xb,
                token_ids: ib.iter().map(|&i| eb.ids[i as usize]).collect(),
                positions: ib.clone(),
                encoded_tokens: eb.ids.len() as u64,
            }),
        })
        .unwrap();
    }
    let m = w.finish().unwrap();
    assert!(m.shards.len() > 1);
    let keep = m.keep_report();
    println!(
        "store keep rate {SMOL} {:.1}%, {GEMMA} {:.1}%",
        100.0 * keep.share_a(),
        100.0 * keep.share_b()
    );
    assert!(keep.share_a() > 0.5 && keep.share_b() > 0.5 && keep.share_a() <= 1.0);
    let r = StoreReader::open(&dir).unwrap();
    r.verify_full().unwrap();
    for (d, (xa, xb)) in r.documents(Split::All).zip(&expected) {
        let d = d.unwrap();
        assert!(d.x.equal(xa) && d.y.unwrap().equal(xb), "doc {}", d.doc_id);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
