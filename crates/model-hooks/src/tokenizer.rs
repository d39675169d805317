//! Tokenizers (`tokenizer.json` through the `tokenizers` crate) and chat templates (the checkpoint's Jinja
//! template rendered with minijinja the way HF's `apply_chat_template` renders it).
//!
//! Text is encoded as HF's tokenizer does by default (its post-processor adds special tokens such as
//! Gemma's BOS); chat conversations are rendered by the template, which writes its own special tokens, and
//! then encoded without adding any. Offsets are character offsets into the encoded string, kept for
//! cross-tokenizer alignment.

use crate::error::{HookError, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
}

/// Token ids with their character spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids.
    pub ids: Vec<i64>,
    /// `(start, end)` character offsets of each token in the encoded string (`(0, 0)` for added special
    /// tokens).
    pub offsets: Vec<(usize, usize)>,
    /// Whether each token is a special token.
    pub special: Vec<bool>,
    /// The string that was encoded (the rendered template for chats).
    pub text: String,
}

/// A tokenizer with the checkpoint's chat template and special tokens.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    eos_ids: Vec<i64>,
    pad_id: i64,
    dir: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("dir", &self.dir)
            .field("vocab_size", &self.inner.get_vocab_size(true))
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

/// A special token in `tokenizer_config.json`: a string or `{"content": ...}`.
fn token_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| HookError::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| HookError::Json {
            path: path.to_path_buf(),
            source,
        })
}

fn ids_of(v: Option<&Value>) -> Vec<i64> {
    match v {
        Some(Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
        _ => vec![],
    }
}

impl Tokenizer {
    /// Load `tokenizer.json`, `tokenizer_config.json`, the chat template (`chat_template.jinja` or the
    /// config's `chat_template`) and EOS ids (`generation_config.json`, `config.json`) from a checkpoint.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let tok_path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| HookError::Tokenizer(format!("{}: {e}", tok_path.display())))?;
        let cfg = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
        let template_file = dir.join("chat_template.jinja");
        let chat_template = if template_file.exists() {
            Some(
                std::fs::read_to_string(&template_file)
                    .map_err(|e| HookError::io(&template_file, e))?,
            )
        } else {
            match cfg.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .or_else(|| list.first())
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                    .map(String::from),
                _ => None,
            }
        };
        let bos_token = token_str(cfg.get("bos_token"));
        let eos_token = token_str(cfg.get("eos_token"));
        let pad_token = token_str(cfg.get("pad_token"));
        let id_of = |t: &Option<String>| {
            t.as_deref()
                .and_then(|s| inner.token_to_id(s))
                .map(i64::from)
        };
        let mut eos_ids = ids_of(
            read_json(&dir.join("generation_config.json"))?
                .as_ref()
                .and_then(|g| g.get("eos_token_id")),
        );
        let model_cfg = read_json(&dir.join("config.json"))?.unwrap_or(Value::Null);
        eos_ids.extend(ids_of(model_cfg.get("eos_token_id")));
        eos_ids.extend(id_of(&eos_token));
        eos_ids.sort_unstable();
        eos_ids.dedup();
        let pad_id = id_of(&pad_token)
            .or_else(|| model_cfg.get("pad_token_id").and_then(Value::as_i64))
            .or_else(|| eos_ids.first().copied())
            .unwrap_or(0);
        Ok(Self {
            inner,
            chat_template,
            bos_token,
            eos_token,
            eos_ids,
            pad_id,
            dir: dir.to_path_buf(),
        })
    }

    /// Encode text. `add_special_tokens` runs the tokenizer's post-processor (HF's default: true).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Encoded> {
        let enc = self
            .inner
            .encode_char_offsets(text, add_special_tokens)
            .map_err(|e| HookError::Tokenizer(e.to_string()))?;
        Ok(Encoded {
            ids: enc.get_ids().iter().map(|&i| i64::from(i)).collect(),
            offsets: enc.get_offsets().to_vec(),
            special: enc
                .get_special_tokens_mask()
                .iter()
                .map(|&m| m == 1)
                .collect(),
            text: text.to_string(),
        })
    }

    /// Render the chat template (HF `apply_chat_template(..., tokenize=False)`).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            HookError::ChatTemplate(format!("{} has no chat template", self.dir.display()))
        })?;
        if messages.is_empty() {
            return Err(HookError::invalid("chat with no messages"));
        }
        let mut env = minijinja::Environment::new();
        // HF renders with trim_blocks and lstrip_blocks, and Python string methods (`.strip()`, ...).
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        minijinja_contrib::add_to_environment(&mut env);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_function("strftime_now", |fmt: String| -> String {
            // Templates use it for "today's date" in system prompts; a fixed date keeps outputs reproducible.
            let _ = fmt;
            "26 Jul 2024".to_string()
        });
        env.add_template("chat", template)
            .map_err(|e| HookError::ChatTemplate(format!("{}: {e}", self.dir.display())))?;
        let tmpl = env
            .get_template("chat")
            .map_err(|e| HookError::ChatTemplate(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        })
        .map_err(|e| HookError::ChatTemplate(format!("{e:#}")))
    }

    /// Render and encode a conversation (special tokens come from the template only).
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Encoded> {
        let text = self.apply_chat_template(messages, add_generation_prompt)?;
        self.encode(&text, false)
    }

    /// Decode ids to text.
    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.inner
            .decode(&ids, skip_special_tokens)
            .map_err(|e| HookError::Tokenizer(e.to_string()))
    }

    /// Ids that end generation (from `generation_config.json`, `config.json` and the EOS token).
    pub fn eos_token_ids(&self) -> &[i64] {
        &self.eos_ids
    }

    /// Id used for padding.
    pub fn pad_token_id(&self) -> i64 {
        self.pad_id
    }

    /// Whether the checkpoint has a chat template.
    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
