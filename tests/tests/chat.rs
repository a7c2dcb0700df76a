//! SmolLM2 through the gateway (fetched by `scripts/fetch-models.sh`):
//! event streams pass through as they are generated, a stream's permit is
//! held until it ends or its client leaves, a stream that cannot be admitted
//! gets a plain HTTP error, and a chat model cold-starts from its template.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thaw_tests::registry_model;
use thaw_tests::served::{self, Served};

/// A gateway serving SmolLM2 as `smollm2`, one instance generating one
/// sequence at a time (so that who holds the permit is visible).
fn gateway(dir: &tempfile::TempDir) -> Served {
    let model = format!(
        "[[models]]\nname = \"smollm2\"\nsource = \"{}\"\nkind = \"chat\"\n\
         [models.scaling]\ntarget_concurrency = 1\nmax_concurrency = 1\nmax_instances = 1\nscale_to_zero_after = \"1s\"\nstable_window = \"2s\"\n",
        registry_model("smollm2").display()
    );
    Served::start(dir.path(), &served::config(dir.path(), "", &model))
}

fn completion(max_tokens: u32, stream: bool) -> Value {
    json!({"model": "smollm2", "prompt": "Count from one to ten thousand:", "temperature": 0,
           "max_tokens": max_tokens, "stream": stream})
}

fn started_from(s: &Value) -> String {
    s["models"][0]["instances"][0]["started_from"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn streams_pass_through_as_generated_and_hold_their_permit_until_they_end() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut g = gateway(&dir);

    // Cold from the source: the snapshot is built, a template started, the
    // worker forked from it; the stream's first event arrives long before
    // its 8000th token would.
    let first = g
        .public
        .post_and_hang_up("/v1/completions", &completion(8000, true), b"\"text\"")
        .expect("the stream starts");
    let head = String::from_utf8_lossy(&first);
    assert!(head.contains("text/event-stream"), "{head}");
    assert!(head.contains("x-thaw-cold-start-ms"), "{head}");
    assert!(!head.contains("[DONE]"), "the stream was buffered: {head}");
    assert_eq!(started_from(&g.status()), "source");
    // The client's leaving is said on its request's line (a client's
    // network, not a fault of the gateway's to page anyone for), never
    // logged as an ERROR: once the request is counted, which comes after
    // pingora's error log, stderr (at WARN here) holds no ERROR.
    let counted = r#"thaw_requests_total{model="smollm2",status="200"} 1"#;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&g.admin.get("/metrics").body).contains(counted) {
        assert!(Instant::now() < deadline, "the stream was never counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    let errors: Vec<String> = g
        .proc
        .drain_stderr()
        .into_iter()
        .filter(|l| l.contains("ERROR"))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");

    // The client left: its permit (the only one) is free again, so this is
    // served, not queued behind 8000 tokens until its queue timeout.
    let r = g.public.post_json("/v1/completions", &completion(4, false));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["usage"]["completion_tokens"], 4);

    // While a stream holds the permit, a stream that cannot wait gets a
    // plain 504 in OpenAI's shape, not an empty event stream.
    let _busy = g
        .public
        .post_and_hang_up_later("/v1/completions", &completion(8000, true), b"\"text\"")
        .expect("the stream starts");
    let body = completion(8, true).to_string();
    let raw = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-type: application/json\r\n\
         x-thaw-queue-timeout-ms: 300\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = g.public.raw(raw.as_bytes()).expect("a response");
    assert_eq!(r.status, 504, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("content-type").is_some_and(|t| t.contains("json")));
    assert!(r.json()["error"]["message"].is_string());
}

#[test]
fn a_chat_model_cold_starts_from_its_template() {
    let dir = tempfile::tempdir().expect("temp dir");
    let g = gateway(&dir);
    let chat = json!({"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}],
                      "temperature": 0, "max_tokens": 6});
    let first = g.public.post_json("/v1/chat/completions", &chat);
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let text = first.json()["choices"][0]["message"]["content"].clone();
    let s = g.wait("scale to zero", |s| {
        s["models"][0]["instances"]
            .as_array()
            .is_some_and(Vec::is_empty)
            && s["models"][0]["starting_instances"] == 0
    });
    assert_eq!(s["models"][0]["tier"], "template", "{s}");
    let again = g.public.post_json("/v1/chat/completions", &chat);
    assert_eq!(again.status, 200);
    assert!(again.header("x-thaw-cold-start-ms").is_some());
    assert_eq!(started_from(&g.status()), "template");
    // The forked worker generates what the first one did.
    assert_eq!(again.json()["choices"][0]["message"]["content"], text);

    // An HTTP/1.0 client cannot read chunks: its stream comes
    // close-delimited, the events as they are.
    let body = json!({"model": "smollm2", "prompt": "Hi", "temperature": 0,
                      "max_tokens": 3, "stream": true})
    .to_string();
    let raw = format!(
        "POST /v1/completions HTTP/1.0\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = g.public.raw(raw.as_bytes()).expect("a response");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("transfer-encoding"), None);
    let events = String::from_utf8_lossy(&r.body);
    assert!(events.starts_with("data: {"), "{events}");
    assert!(events.trim_end().ends_with("data: [DONE]"), "{events}");
}
