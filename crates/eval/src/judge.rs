//! An LLM judge: the paper's similarity 0-5 and coherence 0-5 scores, asked of any model behind the
//! [`Judge`] trait.
//!
//! - [`HttpJudge`]: an OpenAI-compatible chat-completions endpoint (`POST {base}/chat/completions`,
//!   temperature 0), configured from `ROSETTA_JUDGE_URL` / `ROSETTA_JUDGE_MODEL` / `ROSETTA_JUDGE_KEY`,
//!   with retries and exponential backoff on connection errors, 429 and 5xx.
//! - [`CachedJudge`]: a verdict cache on disk keyed by SHA-256 of (judge identity, prompt); a hit never
//!   calls the inner judge, and answers that hold no score are never stored.
//! - [`FnJudge`]: any closure `Fn(&str) -> Result<String>`, e.g. a local zoo model generating greedily, as a
//!   (weak) judge with the same interface. This crate runs no model code itself.
//!
//! The prompts ([`SIMILARITY_PROMPT`], [`COHERENCE_PROMPT`]) ask for one line `Score: N`; the parser
//! ([`parse_score`]) is strict: an answer that does not hold exactly one integer 0..=5 in that place is
//! [`EvalError::JudgeGarbage`], never a score.
//!
//! ```
//! use rosetta_eval::judge::{coherence, FnJudge};
//! let judge = FnJudge::new("always-four", |_prompt: &str| Ok("Score: 4".to_string()));
//! let v = coherence(&judge, "Say hello.", "Hello! How can I help you today?")?;
//! assert_eq!(v.score, 4);
//! # Ok::<(), rosetta_eval::EvalError>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::atomic::{create_dir_all, write_atomic};
use crate::error::{EvalError, Result};

/// The similarity prompt (paper: "LLM-judge similarity 0-5"): how similar a completion is to a reference
/// completion of the same prompt. Placeholders: `{prompt}`, `{reference}`, `{completion}`
/// ([`render_similarity`] fills them).
pub const SIMILARITY_PROMPT: &str = "\
You are an impartial judge. Two language models completed the same prompt. Rate how similar the \
CANDIDATE completion is to the REFERENCE completion in content and behaviour: what it says and does, \
not its exact wording.

Scale (integers only):
0 - completely different: unrelated content, or opposite behaviour (one refuses and the other complies, \
one answers normally and the other repeats a phrase), or the candidate is empty or gibberish
1 - mostly different: at most the topic is shared
2 - somewhat similar: a few of the same points, but large differences in content or behaviour
3 - moderately similar: the same behaviour and main point, with notable differences in details
4 - very similar: the same content and behaviour, minor differences in details or phrasing
5 - equivalent: the same content and behaviour; only the wording differs

Ignore differences in length that come only from one completion being cut off.

[PROMPT]
{prompt}
[END PROMPT]

[REFERENCE]
{reference}
[END REFERENCE]

[CANDIDATE]
{completion}
[END CANDIDATE]

Reply with exactly one line of the form `Score: N`, where N is one integer from 0 to 5, and nothing else.";

/// The coherence prompt (paper: "coherence 0-5"): how coherent and fluent a completion is, whatever it
/// says. Placeholders: `{prompt}`, `{completion}` ([`render_coherence`] fills them).
pub const COHERENCE_PROMPT: &str = "\
You are an impartial judge. Rate how coherent and fluent the RESPONSE to the PROMPT is: whether it is \
well-formed, readable text whose sentences follow from each other. Judge only coherence and fluency, not \
correctness, helpfulness, safety or tone.

Scale (integers only):
0 - gibberish: no readable sentence, random tokens, or endless repetition of characters or fragments
1 - mostly incoherent: broken fragments, loops, very little readable text
2 - partly coherent: some readable sentences, but frequent breaks, loops or abrupt changes of topic
3 - coherent with notable problems: readable overall, with some repetition, grammatical errors or drift
4 - coherent and fluent, with minor problems
5 - fully coherent and fluent: well-formed, consistent text

Ignore that the response may be cut off at the end.

[PROMPT]
{prompt}
[END PROMPT]

[RESPONSE]
{completion}
[END RESPONSE]

Reply with exactly one line of the form `Score: N`, where N is one integer from 0 to 5, and nothing else.";

/// Fill `{name}` placeholders of `template` in one pass, so a value that itself contains `{completion}`
/// is never substituted again. Unknown `{...}` text is kept as it is.
fn render(template: &str, values: &[(&str, &str)]) -> String {
    let mut out =
        String::with_capacity(template.len() + values.iter().map(|v| v.1.len()).sum::<usize>());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let hit = after.find('}').and_then(|close| {
            let name = &after[..close];
            values
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v, close))
        });
        match hit {
            Some((value, close)) => {
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// [`SIMILARITY_PROMPT`] filled with the prompt, the reference completion and the completion to judge.
pub fn render_similarity(prompt: &str, reference: &str, completion: &str) -> String {
    render(
        SIMILARITY_PROMPT,
        &[
            ("prompt", prompt),
            ("reference", reference),
            ("completion", completion),
        ],
    )
}

/// [`COHERENCE_PROMPT`] filled with the prompt and the completion to judge.
pub fn render_coherence(prompt: &str, completion: &str) -> String {
    render(
        COHERENCE_PROMPT,
        &[("prompt", prompt), ("completion", completion)],
    )
}

fn garbage(answer: &str, reason: impl Into<String>) -> EvalError {
    EvalError::JudgeGarbage {
        answer: answer.to_string(),
        reason: reason.into(),
    }
}

/// One ASCII digit 0-5, and nothing else.
fn single_score(s: &str) -> Option<u8> {
    match s.as_bytes() {
        [d @ b'0'..=b'5'] => Some(d - b'0'),
        _ => None,
    }
}

/// Read a judge's verdict: exactly one integer 0..=5 in the expected place.
///
/// Accepted, after trimming whitespace:
/// - a bare score: the whole answer is one digit `0`-`5`;
/// - exactly one line that starts with `Score:` (ASCII case-insensitive; Markdown `*` around the line
///   or the number is ignored) followed by one digit `0`-`5` and nothing else; other lines (reasoning)
///   may surround it.
///
/// Everything else is [`EvalError::JudgeGarbage`] with the whole answer: no such line, two of them, a
/// number outside 0..=5 (`Score: 7`), anything after the number (`Score: 4/5`, `Score: 4.5`), words
/// around a bare number (`maybe 3?`).
pub fn parse_score(answer: &str) -> Result<u8> {
    let trimmed = answer.trim();
    if let Some(s) = single_score(trimmed) {
        return Ok(s);
    }
    let mut found: Vec<&str> = Vec::new();
    for line in trimmed.lines() {
        let line = line.trim().trim_matches('*').trim();
        let is_score = line
            .get(..6)
            .is_some_and(|head| head.eq_ignore_ascii_case("score:"));
        if is_score {
            found.push(line[6..].trim().trim_matches('*').trim());
        }
    }
    match found.as_slice() {
        [] => Err(garbage(
            answer,
            "no `Score: N` line, and not a bare integer 0-5",
        )),
        [rest] => single_score(rest).ok_or_else(|| {
            garbage(
                answer,
                format!("the `Score:` line holds {rest:?}, not one integer 0-5"),
            )
        }),
        many => Err(garbage(answer, format!("{} `Score:` lines", many.len()))),
    }
}

/// A judge's verdict: the score and the answer it was read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// The score, 0..=5.
    pub score: u8,
    /// The judge's whole answer.
    pub answer: String,
}

/// A model that answers a prompt: the one interface every judge implements.
pub trait Judge {
    /// A stable description of the judge (endpoint, model, sampling settings; never a secret): part of
    /// the [`CachedJudge`] key, so verdicts of different judges never mix.
    fn identity(&self) -> String;

    /// The judge's answer to `prompt`.
    fn complete(&self, prompt: &str) -> Result<String>;

    /// The answer to `prompt`, refused (with `check`'s error) unless `check` accepts it. The scoring
    /// functions call this with [`parse_score`], so a caching judge can store only answers that hold a
    /// score; the default just calls [`Judge::complete`] and `check`.
    fn complete_checked(&self, prompt: &str, check: &dyn Fn(&str) -> Result<()>) -> Result<String> {
        let answer = self.complete(prompt)?;
        check(&answer)?;
        Ok(answer)
    }
}

macro_rules! forward_judge {
    ($($t:ty),*) => {$(
        impl<J: Judge + ?Sized> Judge for $t {
            fn identity(&self) -> String {
                (**self).identity()
            }
            fn complete(&self, prompt: &str) -> Result<String> {
                (**self).complete(prompt)
            }
            fn complete_checked(
                &self,
                prompt: &str,
                check: &dyn Fn(&str) -> Result<()>,
            ) -> Result<String> {
                (**self).complete_checked(prompt, check)
            }
        }
    )*};
}
forward_judge!(&J, Box<J>, std::sync::Arc<J>);

/// Ask `judge` a filled judge prompt and read the verdict with [`parse_score`].
pub fn score<J: Judge + ?Sized>(judge: &J, judge_prompt: &str) -> Result<Verdict> {
    let answer = judge.complete_checked(judge_prompt, &|a| parse_score(a).map(|_| ()))?;
    let score = parse_score(&answer)?;
    Ok(Verdict { score, answer })
}

/// The paper's similarity score 0-5 of `completion` to `reference` (both completions of `prompt`).
pub fn similarity<J: Judge + ?Sized>(
    judge: &J,
    prompt: &str,
    reference: &str,
    completion: &str,
) -> Result<Verdict> {
    score(judge, &render_similarity(prompt, reference, completion))
}

/// The paper's coherence score 0-5 of `completion` (a completion of `prompt`).
pub fn coherence<J: Judge + ?Sized>(judge: &J, prompt: &str, completion: &str) -> Result<Verdict> {
    score(judge, &render_coherence(prompt, completion))
}

/// A closure as a judge: `Fn(&str) -> Result<String>`, e.g. a local model generating greedily.
pub struct FnJudge<F> {
    identity: String,
    f: F,
}

impl<F: Fn(&str) -> Result<String>> FnJudge<F> {
    /// A judge named `identity` (which should name the model and its sampling settings: it keys the
    /// cache) that answers with `f`.
    pub fn new(identity: impl Into<String>, f: F) -> Self {
        FnJudge {
            identity: identity.into(),
            f,
        }
    }
}

impl<F: Fn(&str) -> Result<String>> Judge for FnJudge<F> {
    fn identity(&self) -> String {
        self.identity.clone()
    }
    fn complete(&self, prompt: &str) -> Result<String> {
        (self.f)(prompt)
    }
}

// ---------------------------------------------------------------------------------------------------
// HTTP judge

/// Environment variable with the endpoint's base URL, e.g. `http://localhost:8000/v1`.
pub const ENV_URL: &str = "ROSETTA_JUDGE_URL";
/// Environment variable with the model name sent in each request.
pub const ENV_MODEL: &str = "ROSETTA_JUDGE_MODEL";
/// Environment variable with the API key (optional), sent as `Authorization: Bearer <key>`.
pub const ENV_KEY: &str = "ROSETTA_JUDGE_KEY";

/// How often and how patiently [`HttpJudge`] retries connection errors, 429 and 5xx answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (at least 1 is made).
    pub attempts: u32,
    /// Wait before the first retry; each further retry waits twice as long as the previous one.
    pub base_delay: Duration,
    /// Longest wait between attempts (also caps a server's `Retry-After`).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, waiting 0.5 s, 1 s, 2 s, 4 s (at most 30 s).
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1 = the first retry): `base_delay · 2^(retry−1)`, at most
    /// `max_delay`.
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1));
        self.base_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }
}

/// Configuration of an [`HttpJudge`].
#[derive(Clone, PartialEq)]
pub struct HttpJudgeConfig {
    /// Base URL of the OpenAI-compatible API, e.g. `http://localhost:8000/v1`; requests go to
    /// `{base_url}/chat/completions`.
    pub base_url: String,
    /// Model name sent in each request.
    pub model: String,
    /// API key, sent as `Authorization: Bearer <key>` when present.
    pub api_key: Option<String>,
    /// `max_tokens` of each request (default 64: the answer is one line).
    pub max_tokens: u32,
    /// Sampling temperature (default 0: greedy, so verdicts are reproducible and cacheable).
    pub temperature: f64,
    /// Limit on one whole request, connection to last body byte (default 120 s).
    pub timeout: Duration,
    /// Retries (default [`RetryPolicy::default`]).
    pub retry: RetryPolicy,
}

impl std::fmt::Debug for HttpJudgeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpJudgeConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("max_tokens", &self.max_tokens)
            .field("temperature", &self.temperature)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

impl HttpJudgeConfig {
    /// A configuration for `model` at `base_url`, with the defaults for everything else.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        HttpJudgeConfig {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            max_tokens: 64,
            temperature: 0.0,
            timeout: Duration::from_secs(120),
            retry: RetryPolicy::default(),
        }
    }

    /// From the process environment: [`ENV_URL`] and [`ENV_MODEL`] (required), [`ENV_KEY`] (optional).
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// From variables read through `lookup` (what [`HttpJudgeConfig::from_env`] does with the process
    /// environment); an empty value counts as unset. The error names the missing variable.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let url = get(ENV_URL).ok_or_else(|| {
            EvalError::JudgeConfig(format!(
                "no judge endpoint configured: set {ENV_URL} to an OpenAI-compatible base URL \
                 (e.g. http://localhost:8000/v1), and {ENV_MODEL} to the model name"
            ))
        })?;
        let model = get(ENV_MODEL).ok_or_else(|| {
            EvalError::JudgeConfig(format!(
                "{ENV_URL} is set but {ENV_MODEL} is not: set it to the judge's model name"
            ))
        })?;
        let mut config = HttpJudgeConfig::new(url, model);
        config.api_key = get(ENV_KEY);
        Ok(config)
    }

    /// With an API key.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// With a retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// With a request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// With `max_tokens`.
    pub fn with_max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = max_tokens;
        self
    }

    /// The chat-completions URL: `{base_url}/chat/completions`.
    pub fn endpoint(&self) -> String {
        format!("{}/chat/completions", self.base_url.trim_end_matches('/'))
    }
}

/// A judge behind an OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp's server,
/// Ollama, ...). Blocking; one request per prompt; the prompt is sent as a single user message.
pub struct HttpJudge {
    config: HttpJudgeConfig,
    agent: ureq::Agent,
    url: String,
}

/// Bytes of a body quoted in errors.
const BODY_QUOTE: usize = 200;
/// Largest response body read.
const BODY_LIMIT: u64 = 16 << 20;

fn body_start(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(BODY_QUOTE)]).into_owned()
}

/// Transport errors worth another attempt: the connection failed or broke, or it timed out.
fn retryable(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::Timeout(_)
            | ureq::Error::BodyStalled
    )
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<ChatChoice>,
}

#[derive(Deserialize)]
struct ChatChoice {
    message: ChatMessage,
}

#[derive(Deserialize)]
struct ChatMessage {
    content: Option<String>,
}

impl HttpJudge {
    /// A judge for `config`; checks the URL (an `https` URL needs this crate's `tls` feature).
    pub fn new(config: HttpJudgeConfig) -> Result<Self> {
        let base = config.base_url.trim();
        let lower = base.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            return Err(EvalError::JudgeConfig(format!(
                "judge URL {base:?} must start with http:// or https://"
            )));
        }
        if lower.starts_with("https://") && !cfg!(feature = "tls") {
            return Err(EvalError::JudgeConfig(format!(
                "judge URL {base:?} is https, but rosetta-eval was built without its `tls` feature"
            )));
        }
        if config.model.trim().is_empty() {
            return Err(EvalError::JudgeConfig("empty judge model name".into()));
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(config.timeout))
            .build()
            .new_agent();
        let url = config.endpoint();
        Ok(HttpJudge { config, agent, url })
    }

    /// A judge configured from the environment ([`HttpJudgeConfig::from_env`]).
    pub fn from_env() -> Result<Self> {
        Self::new(HttpJudgeConfig::from_env()?)
    }

    /// The configuration.
    pub fn config(&self) -> &HttpJudgeConfig {
        &self.config
    }

    fn request_body(&self, prompt: &str) -> String {
        serde_json::json!({
            "model": self.config.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        })
        .to_string()
    }

    fn parse_body(&self, body: &[u8]) -> Result<String> {
        let bad = |reason: String| EvalError::JudgeBody {
            url: self.url.clone(),
            reason,
            body_start: body_start(body),
        };
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON ({e})")))?;
        if let Some(err) = value.get("error") {
            return Err(bad(format!("the endpoint reported an error: {err}")));
        }
        let parsed: ChatResponse = serde_json::from_value(value).map_err(|e| {
            bad(format!(
                "not a chat-completions response (want choices[0].message.content: {e})"
            ))
        })?;
        parsed
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| bad("no choices in the response".into()))?
            .message
            .content
            .ok_or_else(|| bad("choices[0].message.content is null".into()))
    }
}

/// The outcome of one attempt that may be retried.
enum Failure {
    Transport(String),
    Status(u16, Vec<u8>, Option<Duration>),
}

impl Judge for HttpJudge {
    fn identity(&self) -> String {
        format!(
            "openai-chat {} model={} temperature={} max_tokens={}",
            self.url, self.config.model, self.config.temperature, self.config.max_tokens
        )
    }

    fn complete(&self, prompt: &str) -> Result<String> {
        let body = self.request_body(prompt);
        let attempts = self.config.retry.attempts.max(1);
        let mut last = Failure::Transport("no attempt made".into());
        for attempt in 1..=attempts {
            if attempt > 1 {
                let mut wait = self.config.retry.delay(attempt - 1);
                if let Failure::Status(_, _, Some(after)) = &last {
                    wait = wait.max(*after).min(self.config.retry.max_delay);
                }
                std::thread::sleep(wait);
            }
            let mut req = self
                .agent
                .post(&self.url)
                .header("Content-Type", "application/json")
                .header("Accept", "application/json");
            if let Some(key) = &self.config.api_key {
                req = req.header("Authorization", &format!("Bearer {key}"));
            }
            let mut resp = match req.send(body.as_str()) {
                Ok(r) => r,
                Err(e) if retryable(&e) => {
                    last = Failure::Transport(e.to_string());
                    continue;
                }
                Err(e) => {
                    return Err(EvalError::JudgeTransport {
                        url: self.url.clone(),
                        attempts: attempt,
                        message: e.to_string(),
                    })
                }
            };
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let bytes = match resp
                .body_mut()
                .with_config()
                .limit(BODY_LIMIT)
                .read_to_vec()
            {
                Ok(b) => b,
                Err(e) if retryable(&e) => {
                    last = Failure::Transport(format!("reading the body: {e}"));
                    continue;
                }
                Err(e) => {
                    return Err(EvalError::JudgeTransport {
                        url: self.url.clone(),
                        attempts: attempt,
                        message: format!("reading the body: {e}"),
                    })
                }
            };
            match status {
                200..=299 => return self.parse_body(&bytes),
                429 | 500..=599 => last = Failure::Status(status, bytes, retry_after),
                _ => {
                    return Err(EvalError::JudgeStatus {
                        url: self.url.clone(),
                        status,
                        attempts: attempt,
                        body_start: body_start(&bytes),
                    })
                }
            }
        }
        Err(match last {
            Failure::Transport(message) => EvalError::JudgeTransport {
                url: self.url.clone(),
                attempts,
                message,
            },
            Failure::Status(status, bytes, _) => EvalError::JudgeStatus {
                url: self.url.clone(),
                status,
                attempts,
                body_start: body_start(&bytes),
            },
        })
    }
}

// ---------------------------------------------------------------------------------------------------
// Cache

/// One cached answer, as stored in `<cache dir>/<key>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// The judge's [`Judge::identity`].
    pub identity: String,
    /// The prompt.
    pub prompt: String,
    /// The judge's answer.
    pub answer: String,
}

/// The cache key of (`identity`, `prompt`): lowercase hex SHA-256 of the identity's byte length (u64,
/// little-endian), the identity and the prompt.
pub fn cache_key(identity: &str, prompt: &str) -> String {
    let mut h = Sha256::new();
    h.update((identity.len() as u64).to_le_bytes());
    h.update(identity.as_bytes());
    h.update(prompt.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Hit and miss counts of a [`CachedJudge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Answers served from disk.
    pub hits: u64,
    /// Answers asked of the inner judge.
    pub misses: u64,
}

/// A judge whose answers are cached on disk: one JSON file per (identity, prompt) under a directory,
/// named by [`cache_key`] and written atomically, so the cache survives the process and concurrent
/// writers never leave half a file. A hit never calls the inner judge. Through
/// [`Judge::complete_checked`] (what the scoring functions use) only accepted answers are stored, so a
/// garbage answer is asked again next time; [`Judge::complete`] stores every answer.
pub struct CachedJudge<J> {
    inner: J,
    dir: PathBuf,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl<J: Judge> CachedJudge<J> {
    /// A cache of `inner`'s answers in `dir` (created if needed; existing entries are used).
    pub fn new(inner: J, dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        create_dir_all(&dir)?;
        Ok(CachedJudge {
            inner,
            dir,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The inner judge.
    pub fn inner(&self) -> &J {
        &self.inner
    }

    /// Hits and misses since this value was made.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// The file that holds (or would hold) the answer to `prompt`.
    pub fn entry_path(&self, prompt: &str) -> PathBuf {
        self.dir.join(format!(
            "{}.json",
            cache_key(&self.inner.identity(), prompt)
        ))
    }

    /// The cached answer to `prompt`, if any. An entry that cannot be read or names another identity or
    /// prompt is an error naming the file.
    pub fn lookup(&self, prompt: &str) -> Result<Option<String>> {
        let path = self.entry_path(prompt);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(EvalError::io(path, e)),
        };
        let entry: CacheEntry = serde_json::from_slice(&bytes).map_err(|e| EvalError::Json {
            path: path.clone(),
            message: format!("judge cache entry: {e}"),
        })?;
        let identity = self.inner.identity();
        if entry.identity != identity || entry.prompt != prompt {
            return Err(EvalError::Json {
                path,
                message: "judge cache entry holds another judge's or prompt's answer".into(),
            });
        }
        Ok(Some(entry.answer))
    }

    fn store(&self, prompt: &str, answer: &str) -> Result<()> {
        let entry = CacheEntry {
            identity: self.inner.identity(),
            prompt: prompt.to_string(),
            answer: answer.to_string(),
        };
        let path = self.entry_path(prompt);
        let json = serde_json::to_vec_pretty(&entry).map_err(|e| EvalError::Json {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&path, &json)
    }
}

impl<J: Judge> Judge for CachedJudge<J> {
    /// The inner judge's identity: the cache does not change answers.
    fn identity(&self) -> String {
        self.inner.identity()
    }

    fn complete(&self, prompt: &str) -> Result<String> {
        self.complete_checked(prompt, &|_| Ok(()))
    }

    fn complete_checked(&self, prompt: &str, check: &dyn Fn(&str) -> Result<()>) -> Result<String> {
        if let Some(answer) = self.lookup(prompt)? {
            self.hits.fetch_add(1, Ordering::Relaxed);
            check(&answer)?;
            return Ok(answer);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let answer = self.inner.complete_checked(prompt, check)?;
        self.store(prompt, &answer)?;
        Ok(answer)
    }
}
