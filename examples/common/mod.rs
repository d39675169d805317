//! Helpers shared by the example binaries: device / dtype flags, JSONL prompt files, progress bars.
#![allow(dead_code)] // each example uses a subset

pub mod pairs;
pub mod removal;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rosetta::hooks::{ChatMessage, Encoded, Tokenizer};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

/// A `--model` argument: a checkpoint directory (it has `config.json`) or a zoo model's name.
pub fn model_dir(arg: &str) -> Result<PathBuf> {
    let p = PathBuf::from(arg);
    if p.join("config.json").exists() {
        return Ok(p);
    }
    Ok(rosetta::hooks::zoo::find(arg)
        .with_context(|| format!("{arg} is neither a checkpoint directory nor a zoo model"))?
        .dir)
}

/// A data file of the tasks crate (`crates/tasks/data/NAME`), as a clean absolute path.
pub fn task_data(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tasks/data")
        .join(name);
    p.canonicalize().unwrap_or(p)
}

/// Parse `--device` (`auto`, `cpu`, `cuda`, `cuda:N`); `None` uses `$ROSETTA_DEVICE` or auto.
pub fn device(arg: Option<&str>) -> Result<Device> {
    Ok(match arg {
        Some(s) => rosetta::hooks::device::parse_device(s)?,
        None => rosetta::hooks::default_device()?,
    })
}

/// Parse `--dtype`.
pub fn dtype(arg: &str) -> Result<Kind> {
    Ok(match arg {
        "f32" | "float32" => Kind::Float,
        "bf16" | "bfloat16" => Kind::BFloat16,
        "f16" | "float16" => Kind::Half,
        other => bail!("unsupported --dtype {other:?} (f32, bf16, f16)"),
    })
}

/// Parse `--attention`: `sdpa` (libtorch's fused kernel) or `eager` (HF's op order).
pub fn attention(arg: &str) -> Result<rosetta::hooks::AttentionImpl> {
    Ok(match arg {
        "sdpa" => rosetta::hooks::AttentionImpl::Sdpa,
        "eager" => rosetta::hooks::AttentionImpl::Eager,
        other => bail!("unsupported --attention {other:?} (sdpa, eager)"),
    })
}

/// One input row: plain text or a chat conversation.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Row {
    /// `{"text": ...}`
    Text {
        /// The text.
        text: String,
    },
    /// `{"messages": [{"role", "content"}, ...]}`
    Chat {
        /// The conversation.
        messages: Vec<ChatMessage>,
    },
    /// `{"ids": [...]}`: already tokenized (used as is).
    Ids {
        /// Token ids.
        ids: Vec<i64>,
    },
}

/// Read a JSONL file of rows; errors name the line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Row>> {
    Ok(read_jsonl_numbered(path)?
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}

/// Read a JSONL file as JSON values with their 0-based line numbers (blank lines skipped); errors name
/// the line, and a file without rows is an error.
pub fn jsonl_values(path: &Path) -> Result<Vec<(usize, serde_json::Value)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
        rows.push((i, v));
    }
    if rows.is_empty() {
        bail!("{}: no rows", path.display());
    }
    Ok(rows)
}

/// Read a JSONL file of rows with their 0-based line numbers (blank lines skipped); errors name the line.
pub fn read_jsonl_numbered(path: &Path) -> Result<Vec<(usize, Row)>> {
    jsonl_values(path)?
        .into_iter()
        .map(|(i, v)| {
            let row: Row = serde_json::from_value(v).with_context(|| {
                format!(
                    "{}:{}: expected {{\"text\": ...}}, {{\"messages\": [...]}} or {{\"ids\": [...]}}",
                    path.display(),
                    i + 1
                )
            })?;
            Ok((i, row))
        })
        .collect()
}

/// Print where a run's report and plots were written, and how long it took.
pub fn print_written(
    md: &Path,
    json: &Path,
    plots: &[&rosetta::eval::PlotFiles],
    started: std::time::Instant,
) {
    println!(
        "\nreport: {} and {}; plots: {} ({:.0}s in all)",
        md.display(),
        json.display(),
        plots
            .iter()
            .map(|p| p.png.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        started.elapsed().as_secs_f64()
    );
}

/// Tokenize a row as HF does: text with the tokenizer's special tokens (or, with `chat`, as a single user
/// message through the chat template); conversations through the template with a generation prompt.
pub fn encode_row(tok: &Tokenizer, row: &Row, chat: bool) -> Result<Encoded> {
    Ok(match row {
        Row::Text { text } if chat => tok.encode_chat(&[ChatMessage::user(text.clone())], true)?,
        Row::Text { text } => tok.encode(text, true)?,
        Row::Chat { messages } => tok.encode_chat(messages, true)?,
        Row::Ids { ids } => Encoded {
            ids: ids.clone(),
            offsets: vec![(0, 0); ids.len()],
            special: vec![false; ids.len()],
            text: String::new(),
        },
    })
}

/// A progress bar with rate and ETA.
pub fn progress(len: u64, unit: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let template = format!("{{spinner}} [{{elapsed_precise}}] {{bar:40}} {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}})");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        pb.set_style(style);
    }
    pb
}

/// Bytes as a short human string.
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}

/// For side-by-side comparison scripts (`scripts/bench_hf.py`, `scripts/bench_mapping.py`): stay up and
/// answer each line `N` on stdin with `{unit}/s: X` for `N` timed calls of `run` (which returns how many
/// units — tokens, rows — it processed), until end of input. `sync` waits for the device.
pub fn serve(unit: &str, mut run: impl FnMut() -> Result<usize>, sync: impl Fn()) -> Result<()> {
    use std::io::{BufRead, Write};
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let n: usize = line.trim().parse().with_context(|| {
            format!("--serve: expected a number of runs per line, got {line:?}")
        })?;
        sync();
        let t = std::time::Instant::now();
        let mut done = 0;
        for _ in 0..n.max(1) {
            done += run()?;
        }
        sync();
        println!("{unit}/s: {:.2}", done as f64 / t.elapsed().as_secs_f64());
        std::io::stdout().flush()?;
    }
    Ok(())
}
