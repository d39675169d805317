//! The LLM judge: the strict score parser, prompt rendering, `FnJudge`, `HttpJudge` against a small
//! HTTP/1.1 server the test runs on 127.0.0.1 (good answers, retries on 500/429, garbage, non-JSON
//! bodies, refused connections), the on-disk cache and configuration from (a lookup of) the environment.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rosetta_eval::judge::{
    cache_key, coherence, parse_score, render_coherence, render_similarity, similarity, CacheStats,
    CachedJudge, FnJudge, HttpJudge, HttpJudgeConfig, Judge, RetryPolicy, ENV_KEY, ENV_MODEL,
    ENV_URL,
};
use rosetta_eval::EvalError;

// ------------------------------------------------------------------------------------------------
// A minimal scripted HTTP/1.1 server.

/// One scripted response.
#[derive(Clone)]
struct Reply {
    status: u16,
    body: String,
}

fn reply(status: u16, body: impl Into<String>) -> Reply {
    Reply {
        status,
        body: body.into(),
    }
}

/// A chat-completions response whose message content is `content`.
fn chat(content: &str) -> Reply {
    reply(
        200,
        serde_json::json!({
            "id": "cmpl-1",
            "object": "chat.completion",
            "model": "judge-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}],
        })
        .to_string(),
    )
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    request_line: String,
    headers: HashMap<String, String>,
    body: String,
}

struct Server {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn read_request(stream: &mut TcpStream) -> Option<Seen> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[header_end + 4..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Seen {
        request_line,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Serve `script` in order (the last reply repeats), one connection per request, at most 32
/// connections, each with a read timeout: the server stops by itself.
fn serve(script: Vec<Reply>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (h, s) = (hits.clone(), seen.clone());
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().take(32).enumerate() {
            let Ok(mut stream) = stream else { continue };
            let Some(req) = read_request(&mut stream) else {
                continue;
            };
            s.lock().unwrap().push(req);
            h.fetch_add(1, Ordering::SeqCst);
            let r = &script[i.min(script.len() - 1)];
            let reason = match r.status {
                200 => "OK",
                400 => "Bad Request",
                429 => "Too Many Requests",
                500 => "Internal Server Error",
                503 => "Service Unavailable",
                _ => "Status",
            };
            let msg = format!(
                "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{}",
                r.status,
                r.body.len(),
                r.body
            );
            let _ = stream.write_all(msg.as_bytes());
            let _ = stream.flush();
        }
    });
    Server { addr, hits, seen }
}

/// Tiny delays so retry tests are fast.
fn fast_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        base_delay: Duration::from_millis(2),
        max_delay: Duration::from_millis(20),
    }
}

fn judge_for(server: &Server, attempts: u32) -> HttpJudge {
    HttpJudge::new(
        HttpJudgeConfig::new(server.base_url(), "judge-model")
            .with_retry(fast_retry(attempts))
            .with_timeout(Duration::from_secs(10)),
    )
    .unwrap()
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rosetta-judge-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

// ------------------------------------------------------------------------------------------------
// Parser and prompts.

#[test]
fn parse_score_accepts_only_one_score_in_place() {
    for (answer, want) in [
        ("Score: 4", 4),
        ("score: 0", 0),
        ("SCORE:5", 5),
        ("  Score:   3  \n", 3),
        ("3", 3),
        (" 5\n", 5),
        ("The candidate keeps the refusal.\nScore: 2", 2),
        ("**Score: 1**", 1),
        ("**Score:** 4", 4),
    ] {
        assert_eq!(parse_score(answer).unwrap(), want, "{answer:?}");
    }
    for answer in [
        "maybe 7?",
        "Score: 7",
        "Score: 10",
        "Score: -1",
        "Score: 4/5",
        "Score: 4.5",
        "Score: four",
        "Score:",
        "6",
        "3.",
        "I'd say 3",
        "Score: 3\nScore: 4",
        "",
        "   ",
        "The score is 3.",
    ] {
        match parse_score(answer) {
            Err(EvalError::JudgeGarbage { answer: a, reason }) => {
                assert_eq!(a, answer);
                assert!(!reason.is_empty());
            }
            other => panic!("{answer:?} gave {other:?}"),
        }
    }
}

#[test]
fn prompts_ask_for_a_score_line_and_hold_the_texts() {
    let p = render_similarity("Tell me a joke.", "REF TEXT", "CAND TEXT");
    assert!(p.contains("Tell me a joke.") && p.contains("REF TEXT") && p.contains("CAND TEXT"));
    assert!(p.contains("Score: N") && p.contains("0 to 5"));
    assert!(p.find("REF TEXT") < p.find("CAND TEXT"));
    let c = render_coherence("Tell me a joke.", "CAND TEXT");
    assert!(c.contains("CAND TEXT") && c.contains("Score: N") && c.contains("coheren"));
    for t in [&p, &c] {
        assert!(
            !t.contains("{prompt}") && !t.contains("{completion}") && !t.contains("{reference}")
        );
    }
    // Values are substituted once: placeholder text inside a completion stays literal.
    let tricky = render_similarity("P", "r {completion} r", "c {reference} {prompt} c");
    assert!(tricky.contains("r {completion} r"));
    assert!(tricky.contains("c {reference} {prompt} c"));
}

#[test]
fn fn_judge_wraps_a_closure() {
    let calls = AtomicUsize::new(0);
    let judge = FnJudge::new("local:zoo-model greedy", |prompt: &str| {
        calls.fetch_add(1, Ordering::SeqCst);
        assert!(prompt.contains("the completion under test"));
        Ok("Reasoning: fine.\nScore: 5".to_string())
    });
    assert_eq!(judge.identity(), "local:zoo-model greedy");
    let v = coherence(&judge, "Say something.", "the completion under test").unwrap();
    assert_eq!(v.score, 5);
    assert_eq!(v.answer, "Reasoning: fine.\nScore: 5");
    let v = similarity(&judge, "Say something.", "ref", "the completion under test").unwrap();
    assert_eq!(v.score, 5);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // A closure's error passes through; a garbage answer is an error.
    let failing = FnJudge::new("x", |_: &str| {
        Err(EvalError::Invalid("model failed".into()))
    });
    assert!(matches!(
        coherence(&failing, "p", "c"),
        Err(EvalError::Invalid(_))
    ));
    let garbage = FnJudge::new("x", |_: &str| Ok("maybe 7?".to_string()));
    assert!(matches!(
        coherence(&garbage, "p", "c"),
        Err(EvalError::JudgeGarbage { .. })
    ));
    // Through a Box<dyn Judge> too.
    let boxed: Box<dyn Judge> = Box::new(FnJudge::new("b", |_: &str| Ok("2".to_string())));
    assert_eq!(coherence(&boxed, "p", "c").unwrap().score, 2);
}

#[test]
fn retry_delays_double_up_to_the_cap() {
    let r = RetryPolicy {
        attempts: 6,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(500),
    };
    let d: Vec<u128> = (1..=5).map(|i| r.delay(i).as_millis()).collect();
    assert_eq!(d, vec![100, 200, 400, 500, 500]);
    assert_eq!(r.delay(1000), Duration::from_millis(500));
}

// ------------------------------------------------------------------------------------------------
// HTTP judge.

#[test]
fn http_judge_scores_a_good_answer() {
    let server = serve(vec![chat("Score: 4")]);
    let judge = HttpJudge::new(
        HttpJudgeConfig::new(format!("{}/", server.base_url()), "judge-model")
            .with_api_key("sk-test")
            .with_max_tokens(8)
            .with_retry(fast_retry(3)),
    )
    .unwrap();
    let v = similarity(&judge, "Greet me.", "Hello there!", "Hi there!").unwrap();
    assert_eq!(v.score, 4);
    assert_eq!(server.hits(), 1);
    let seen = &server.seen()[0];
    assert_eq!(seen.request_line, "POST /v1/chat/completions HTTP/1.1");
    assert_eq!(seen.headers["authorization"], "Bearer sk-test");
    assert!(seen.headers["content-type"].starts_with("application/json"));
    let body: serde_json::Value = serde_json::from_str(&seen.body).unwrap();
    assert_eq!(body["model"], "judge-model");
    assert_eq!(body["temperature"], 0.0);
    assert_eq!(body["max_tokens"], 8);
    assert_eq!(body["messages"][0]["role"], "user");
    let content = body["messages"][0]["content"].as_str().unwrap();
    assert_eq!(
        content,
        render_similarity("Greet me.", "Hello there!", "Hi there!")
    );
    // The key is never part of the identity (it keys the cache) or the debug output.
    assert!(!judge.identity().contains("sk-test"));
    assert!(!format!("{:?}", judge.config()).contains("sk-test"));
    assert!(judge.identity().contains("judge-model"));
}

#[test]
fn http_judge_without_key_sends_no_authorization() {
    let server = serve(vec![chat("3")]);
    let judge = judge_for(&server, 1);
    assert_eq!(coherence(&judge, "p", "c").unwrap().score, 3);
    assert!(!server.seen()[0].headers.contains_key("authorization"));
}

#[test]
fn http_judge_retries_a_500_then_succeeds() {
    let server = serve(vec![reply(500, "upstream exploded"), chat("Score: 2")]);
    let judge = judge_for(&server, 3);
    let v = coherence(&judge, "p", "c").unwrap();
    assert_eq!(v.score, 2);
    assert_eq!(server.hits(), 2);
}

#[test]
fn http_judge_gives_up_after_its_attempts() {
    let server = serve(vec![reply(429, "{\"error\": \"slow down\"}")]);
    let judge = judge_for(&server, 3);
    match judge.complete("p") {
        Err(EvalError::JudgeStatus {
            status,
            attempts,
            body_start,
            ..
        }) => {
            assert_eq!((status, attempts), (429, 3));
            assert!(body_start.contains("slow down"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.hits(), 3);
}

#[test]
fn http_judge_does_not_retry_a_client_error() {
    let server = serve(vec![reply(400, "bad model name")]);
    let judge = judge_for(&server, 4);
    match judge.complete("p") {
        Err(EvalError::JudgeStatus {
            status, attempts, ..
        }) => assert_eq!((status, attempts), (400, 1)),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.hits(), 1);
}

#[test]
fn http_judge_garbage_answer_is_an_error_not_a_score() {
    let server = serve(vec![chat("maybe 7?")]);
    let judge = judge_for(&server, 2);
    match similarity(&judge, "p", "r", "c") {
        Err(EvalError::JudgeGarbage { answer, .. }) => assert_eq!(answer, "maybe 7?"),
        other => panic!("{other:?}"),
    }
    // A garbage answer arrived fine: it is not retried.
    assert_eq!(server.hits(), 1);
}

#[test]
fn http_judge_non_json_body_is_a_clear_error() {
    let server = serve(vec![reply(
        200,
        "<html><body>502 Bad Gateway</body></html>",
    )]);
    let judge = judge_for(&server, 2);
    match coherence(&judge, "p", "c") {
        Err(e @ EvalError::JudgeBody { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("not JSON"), "{msg}");
            assert!(msg.contains("<html><body>502"), "{msg}");
            assert!(msg.contains("/v1/chat/completions"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn http_judge_json_without_a_message_is_a_clear_error() {
    for (body, want) in [
        ("{\"object\": \"list\", \"data\": []}", "chat-completions"),
        ("{\"choices\": []}", "no choices"),
        (
            "{\"choices\": [{\"message\": {\"role\": \"assistant\", \"content\": null}}]}",
            "null",
        ),
        (
            "{\"error\": {\"message\": \"model not loaded\"}}",
            "model not loaded",
        ),
    ] {
        let server = serve(vec![reply(200, body)]);
        let judge = judge_for(&server, 1);
        match judge.complete("p") {
            Err(e @ EvalError::JudgeBody { .. }) => {
                assert!(e.to_string().contains(want), "{body}: {e}")
            }
            other => panic!("{body}: {other:?}"),
        }
    }
}

#[test]
fn http_judge_refused_connection_is_retried_then_an_error() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }; // closed: connections are refused
    let judge = HttpJudge::new(
        HttpJudgeConfig::new(format!("http://{addr}/v1"), "m").with_retry(fast_retry(3)),
    )
    .unwrap();
    match judge.complete("p") {
        Err(EvalError::JudgeTransport { attempts, url, .. }) => {
            assert_eq!(attempts, 3);
            assert!(url.ends_with("/v1/chat/completions"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn http_judge_refuses_bad_urls() {
    for url in ["localhost:8000/v1", "ftp://x/v1", ""] {
        assert!(matches!(
            HttpJudge::new(HttpJudgeConfig::new(url, "m")),
            Err(EvalError::JudgeConfig(_))
        ));
    }
    assert!(matches!(
        HttpJudge::new(HttpJudgeConfig::new("http://127.0.0.1:1/v1", " ")),
        Err(EvalError::JudgeConfig(_))
    ));
    if !cfg!(feature = "tls") {
        match HttpJudge::new(HttpJudgeConfig::new("https://api.example.invalid/v1", "m")) {
            Err(EvalError::JudgeConfig(msg)) => assert!(msg.contains("tls"), "{msg}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("https accepted without the tls feature"),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Configuration from the environment (through a lookup closure: no process-environment mutation).

fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn config_from_env_names_the_missing_variable() {
    for vars in [vec![], vec![(ENV_URL, "  ")], vec![(ENV_MODEL, "m")]] {
        match HttpJudgeConfig::from_lookup(lookup(&vars)) {
            Err(EvalError::JudgeConfig(msg)) => assert!(msg.contains("ROSETTA_JUDGE_URL"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }
    match HttpJudgeConfig::from_lookup(lookup(&[(ENV_URL, "http://localhost:8000/v1")])) {
        Err(EvalError::JudgeConfig(msg)) => assert!(msg.contains("ROSETTA_JUDGE_MODEL"), "{msg}"),
        other => panic!("{other:?}"),
    }
    let c = HttpJudgeConfig::from_lookup(lookup(&[
        (ENV_URL, "http://localhost:8000/v1"),
        (ENV_MODEL, "Qwen/Qwen2.5-7B-Instruct"),
    ]))
    .unwrap();
    assert_eq!(c.endpoint(), "http://localhost:8000/v1/chat/completions");
    assert_eq!(c.model, "Qwen/Qwen2.5-7B-Instruct");
    assert_eq!(c.api_key, None);
    assert_eq!(c.temperature, 0.0);
    let c = HttpJudgeConfig::from_lookup(lookup(&[
        (ENV_URL, "http://localhost:8000/v1"),
        (ENV_MODEL, "m"),
        (ENV_KEY, "sk-1"),
    ]))
    .unwrap();
    assert_eq!(c.api_key.as_deref(), Some("sk-1"));
}

#[test]
fn from_env_reads_the_process_environment() {
    // Reads only; whether the variable is set depends on the machine.
    match std::env::var(ENV_URL) {
        Ok(v) if !v.trim().is_empty() => {}
        _ => match HttpJudge::from_env() {
            Err(EvalError::JudgeConfig(msg)) => assert!(msg.contains(ENV_URL)),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a judge without {ENV_URL}"),
        },
    }
}

// ------------------------------------------------------------------------------------------------
// Cache.

#[test]
fn cache_hits_skip_the_endpoint_and_survive_a_new_cache() {
    let dir = temp_dir("http-cache");
    let server = serve(vec![chat("Score: 3"), chat("Score: 1")]);
    let cached = CachedJudge::new(judge_for(&server, 1), &dir).unwrap();
    let a = similarity(&cached, "p", "r", "c").unwrap();
    let b = similarity(&cached, "p", "r", "c").unwrap();
    assert_eq!((a.score, b.score), (3, 3));
    assert_eq!(
        server.hits(),
        1,
        "the second identical call must not reach the server"
    );
    assert_eq!(cached.stats(), CacheStats { hits: 1, misses: 1 });
    // A new cache over the same directory answers from disk.
    let again = CachedJudge::new(judge_for(&server, 1), &dir).unwrap();
    assert_eq!(similarity(&again, "p", "r", "c").unwrap().score, 3);
    assert_eq!(server.hits(), 1);
    assert_eq!(again.stats(), CacheStats { hits: 1, misses: 0 });
    // Another prompt is asked.
    assert_eq!(similarity(&again, "p", "r", "other").unwrap().score, 1);
    assert_eq!(server.hits(), 2);
    // One file per prompt, named by the key, no temporary files left.
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    let key = cache_key(&again.identity(), &render_similarity("p", "r", "c"));
    assert!(names.contains(&format!("{key}.json")));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cache_is_keyed_by_judge_identity() {
    let dir = temp_dir("identity");
    let a = CachedJudge::new(FnJudge::new("judge-a", |_: &str| Ok("1".into())), &dir).unwrap();
    let b = CachedJudge::new(FnJudge::new("judge-b", |_: &str| Ok("5".into())), &dir).unwrap();
    assert_eq!(coherence(&a, "p", "c").unwrap().score, 1);
    assert_eq!(coherence(&b, "p", "c").unwrap().score, 5);
    assert_eq!(coherence(&a, "p", "c").unwrap().score, 1);
    assert_ne!(cache_key("judge-a", "x"), cache_key("judge-b", "x"));
    // The length prefix keeps (identity, prompt) pairs apart that concatenate alike.
    assert_ne!(cache_key("ab", "c"), cache_key("a", "bc"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cache_never_stores_garbage_and_reports_broken_entries() {
    let dir = temp_dir("garbage");
    let calls = AtomicUsize::new(0);
    let flaky = FnJudge::new("flaky", |_: &str| {
        Ok(if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            "maybe 7?".to_string()
        } else {
            "Score: 4".to_string()
        })
    });
    let cached = CachedJudge::new(flaky, &dir).unwrap();
    assert!(matches!(
        coherence(&cached, "p", "c"),
        Err(EvalError::JudgeGarbage { .. })
    ));
    assert!(!cached.entry_path(&render_coherence("p", "c")).exists());
    assert_eq!(coherence(&cached, "p", "c").unwrap().score, 4);
    assert_eq!(coherence(&cached, "p", "c").unwrap().score, 4);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // The entry is readable JSON naming identity, prompt and answer.
    let path = cached.entry_path(&render_coherence("p", "c"));
    let entry: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(entry["identity"], "flaky");
    assert_eq!(entry["answer"], "Score: 4");
    assert_eq!(entry["prompt"], render_coherence("p", "c"));
    // A corrupted entry is an error naming the file, not a silent miss.
    std::fs::write(&path, "{ not json").unwrap();
    match coherence(&cached, "p", "c") {
        Err(EvalError::Json { path: p, .. }) => assert_eq!(p, path),
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn plain_complete_through_the_cache_stores_any_answer() {
    let dir = temp_dir("plain");
    let calls = AtomicUsize::new(0);
    let j = FnJudge::new("echo", |p: &str| {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok(format!("echo {p}"))
    });
    let cached = CachedJudge::new(j, &dir).unwrap();
    assert_eq!(cached.complete("hi").unwrap(), "echo hi");
    assert_eq!(cached.complete("hi").unwrap(), "echo hi");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(cached.lookup("hi").unwrap().as_deref(), Some("echo hi"));
    assert_eq!(cached.lookup("other").unwrap(), None);
    std::fs::remove_dir_all(&dir).unwrap();
}
