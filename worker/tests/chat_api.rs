//! The chat API end to end: the real `thaw-worker` serving SmolLM2 (fetched
//! by `scripts/fetch-models.sh`), OpenAI's request and response shapes on
//! the streaming and whole paths, determinism, hang-ups, bad input.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thaw_tests::{registry_model, Client, Proc};

const START: Duration = Duration::from_secs(60);

struct Worker {
    _proc: Proc,
    client: Client,
}

/// A worker that generates `sequences` at once.
fn smollm2(sequences: usize) -> Worker {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_thaw-worker"));
    cmd.arg("--model")
        .arg(registry_model("smollm2"))
        .args(["--name", "smollm2", "--listen", "127.0.0.1:0"])
        .args(["--max-batch-size", &sequences.to_string()]);
    let mut proc = Proc::spawn(cmd).expect("thaw-worker starts");
    let ready = proc.wait_event("ready", START);
    assert_eq!(ready["kind"], "chat");
    let client = Client::new(ready["address"].as_str().expect("address"));
    Worker {
        _proc: proc,
        client,
    }
}

fn chat(extra: Value) -> Value {
    let mut body = json!({
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Name three colors."}],
        "temperature": 0,
        "max_tokens": 12,
    });
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    body
}

/// The `data:` payloads of an event stream, `[DONE]` included.
fn events(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8(body.to_vec()).expect("UTF-8 stream");
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "stream does not end with [DONE]: {text}"
    );
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {e:?}"))
                .to_string()
        })
        .collect()
}

fn usage_adds_up(usage: &Value) {
    let (p, c, t) = (
        &usage["prompt_tokens"],
        &usage["completion_tokens"],
        &usage["total_tokens"],
    );
    assert!(p.as_u64().is_some_and(|n| n > 0), "{usage}");
    assert_eq!(
        p.as_u64().zip(c.as_u64()).map(|(p, c)| p + c),
        t.as_u64(),
        "{usage}"
    );
}

#[test]
fn chat_completions_whole_and_streamed_agree_at_temperature_zero() {
    let w = smollm2(4);
    let r = w.client.post_json("/v1/chat/completions", &chat(json!({})));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let whole = r.json();
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["model"], "smollm2");
    assert!(whole["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("chatcmpl-")));
    assert!(whole["created"].as_u64().is_some());
    let choice = &whole["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    let content = choice["message"]["content"]
        .as_str()
        .expect("content")
        .to_string();
    assert!(!content.is_empty());
    assert_eq!(
        choice["finish_reason"], "length",
        "12 tokens cannot finish the answer"
    );
    assert_eq!(whole["usage"]["completion_tokens"], 12);
    usage_adds_up(&whole["usage"]);

    // Again: the same text (temperature 0 is deterministic).
    let again = w
        .client
        .post_json("/v1/chat/completions", &chat(json!({})))
        .json();
    assert_eq!(again["choices"][0]["message"]["content"], content.as_str());

    // Streamed, with usage: the same text in deltas.
    let r = w.client.post_json(
        "/v1/chat/completions",
        &chat(json!({"stream": true, "stream_options": {"include_usage": true}})),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events = events(&r.body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk is JSON"))
        .collect();
    let id = &chunks[0]["id"];
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(&c["id"], id, "one id per stream");
        assert_eq!(c["model"], "smollm2");
    }
    // With the usage asked for, the chunks before its own carry it null.
    for c in &chunks[..chunks.len() - 1] {
        assert_eq!(c.get("usage"), Some(&Value::Null), "{c}");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let (usage, rest) = chunks.split_last().expect("chunks");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 12);
    usage_adds_up(&usage["usage"]);
    let (last, deltas) = rest.split_last().expect("a final chunk");
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["choices"][0]["delta"], json!({}));
    let streamed: String = deltas
        .iter()
        .map(|c| {
            assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
            c["choices"][0]["delta"]["content"]
                .as_str()
                .expect("delta content")
        })
        .collect();
    assert_eq!(streamed, content);

    // Without include_usage there is no usage chunk.
    let r = w
        .client
        .post_json("/v1/chat/completions", &chat(json!({"stream": true})));
    assert!(!String::from_utf8_lossy(&r.body).contains("\"usage\""));
}

#[test]
fn completions_stop_sequences_seeds_and_the_end_of_a_turn() {
    let w = smollm2(4);
    let completion = |extra: Value| {
        let mut body = json!({"model": "smollm2", "prompt": "The quick brown fox", "temperature": 0, "max_tokens": 16});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        let r = w.client.post_json("/v1/completions", &body);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    };
    let plain = completion(json!({}));
    assert_eq!(plain["object"], "text_completion");
    let text = plain["choices"][0]["text"]
        .as_str()
        .expect("text")
        .to_string();
    assert!(text.len() > 8, "{text:?}");
    usage_adds_up(&plain["usage"]);
    // Without max_tokens, OpenAI's default for completions: 16 tokens, as
    // asked for above (not the rest of the context).
    let default = completion(json!({"max_tokens": null}));
    assert_eq!(default["choices"][0], plain["choices"][0]);
    assert_eq!(default["usage"], plain["usage"]);
    assert_eq!(plain["usage"]["completion_tokens"], 16, "{plain}");
    // A prompt given as token ids (computed by the independent tokenizer
    // of tests/fixtures/make_smollm2_tokens.py) is that prompt.
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/smollm2_tokens.json"
        ))
        .expect("fixture"),
    )
    .expect("JSON");
    let case = &fixture["cases"][0];
    let by_text = completion(json!({"prompt": case["text"]}));
    let by_ids = completion(json!({"prompt": case["ids"]}));
    assert_eq!(by_ids["choices"][0]["text"], by_text["choices"][0]["text"]);
    assert_eq!(by_ids["usage"], by_text["usage"]);
    assert_eq!(
        completion(json!({"prompt": [case["ids"]]}))["choices"][0]["text"],
        by_text["choices"][0]["text"]
    );

    // A stop sequence from the middle of that text: cut before it, "stop".
    let stop = &text[4..8];
    let cut = completion(json!({"stop": [stop, "zzz"]}));
    assert_eq!(cut["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        cut["choices"][0]["text"],
        &text[..text.find(stop).expect("stop in text")]
    );
    // The same, streamed.
    let r = w.client.post_json(
        "/v1/completions",
        &json!({"model": "smollm2", "prompt": "The quick brown fox", "temperature": 0, "max_tokens": 16, "stop": stop, "stream": true}),
    );
    let events = events(&r.body);
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("JSON"))
        .collect();
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, cut["choices"][0]["text"].as_str().expect("text"));
    assert_eq!(
        chunks.last().expect("chunk")["choices"][0]["finish_reason"],
        "stop"
    );

    // Sampling with a seed is repeatable; another seed differs somewhere.
    let seeded = |seed: u64| {
        completion(json!({"temperature": 1.0, "top_p": 0.95, "seed": seed, "max_tokens": 24}))
            ["choices"][0]["text"]
            .clone()
    };
    assert_eq!(seeded(11), seeded(11));
    assert!(
        (12..20).any(|s| seeded(s) != seeded(11)),
        "eight other seeds all gave the same text"
    );

    // A chat the model answers briefly ends its turn: "stop", under the cap.
    // (llama.cpp's greedy answer on the same file ends after 12 tokens, its
    // top token ahead by at least 0.42 at every step: an answer that does
    // not hang on rounding.)
    let r = w.client.post_json(
        "/v1/chat/completions",
        &json!({"model": "smollm2", "messages": [{"role": "user", "content": "What is 2+2?"}], "temperature": 0, "max_tokens": 64}),
    );
    let body = r.json();
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
    assert!(body["usage"]["completion_tokens"]
        .as_u64()
        .is_some_and(|n| n < 64));
}

#[test]
fn concurrent_streams_each_get_the_whole_generation() {
    let w = smollm2(4);
    let request = json!({"model": "smollm2", "prompt": "Once upon a time", "temperature": 0, "max_tokens": 48, "stream": true});
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let client = w.client.clone();
            let request = request.clone();
            std::thread::spawn(move || client.post_json("/v1/completions", &request))
        })
        .collect();
    let texts: Vec<String> = handles
        .into_iter()
        .map(|h| {
            let events = events(&h.join().expect("thread").body);
            events[..events.len() - 1]
                .iter()
                .map(|e| serde_json::from_str::<Value>(e).expect("JSON"))
                .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
                .collect()
        })
        .collect();
    // Decoded side by side, each got the same whole generation as alone.
    let alone = w.client.post_json("/v1/completions", &json!({"model": "smollm2", "prompt": "Once upon a time", "temperature": 0, "max_tokens": 48}));
    let alone = alone.json()["choices"][0]["text"]
        .as_str()
        .expect("text")
        .to_string();
    for t in &texts {
        assert_eq!(t, &alone);
    }
}

#[test]
fn a_client_that_hangs_up_frees_its_slot() {
    // One sequence at a time: a generation that kept running after its
    // client left would hold the only slot for thousands of tokens.
    let w = smollm2(1);
    let long = json!({"model": "smollm2", "prompt": "Count from one to ten thousand:", "temperature": 0,
        "max_tokens": 8000, "stream": true});
    let first = w
        .client
        .post_and_hang_up("/v1/completions", &long, b"\"text\"")
        .expect("stream starts");
    assert!(String::from_utf8_lossy(&first).contains("text/event-stream"));
    let started = Instant::now();
    let r = w.client.post_json(
        "/v1/completions",
        &json!({"model": "smollm2", "prompt": "Hi", "max_tokens": 4, "temperature": 0}),
    );
    assert_eq!(r.status, 200);
    // 8000 tokens take minutes here; a freed slot serves this at once.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the hung-up generation kept its slot"
    );
}

#[test]
fn bad_requests_get_400_in_openai_shape() {
    let w = smollm2(2);
    let long_prompt = "a ".repeat(9000);
    let cases = [
        (
            "/v1/chat/completions",
            json!({"model": "smollm2"}),
            "messages",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "smollm2", "messages": []}),
            "at least one",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "smollm2", "messages": "hi"}),
            "array",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "smollm2", "messages": [{"role": "robot", "content": "x"}]}),
            "role",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "smollm2", "messages": [{"role": "user", "content": 5}]}),
            "content",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"max_tokens": 0})),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"max_tokens": -3})),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"max_tokens": 1.5})),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"max_tokens": 9000})),
            "context",
        ),
        // The message names the field that was sent.
        (
            "/v1/chat/completions",
            chat(json!({"max_completion_tokens": 9000})),
            "max_completion_tokens is 9000",
        ),
        // A long refused value is not echoed whole.
        (
            "/v1/chat/completions",
            chat(
                json!({"tools": [{"type": "function", "function": {"name": "f",
                "description": "x".repeat(5000)}}]}),
            ),
            "this server does not support it",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"temperature": "hot"})),
            "temperature",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"temperature": 3})),
            "temperature",
        ),
        ("/v1/chat/completions", chat(json!({"top_p": 1.5})), "top_p"),
        (
            "/v1/chat/completions",
            chat(json!({"top_logprobs": 3})),
            "needs 'logprobs' to be true",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"logprobs": true, "top_logprobs": 50})),
            "'top_logprobs' is 50",
        ),
        (
            "/v1/completions",
            json!({"model": "smollm2", "prompt": "x", "logprobs": true}),
            "'logprobs' must be an integer",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"logit_bias": {"99999": 5}})),
            "'logit_bias' key \"99999\"",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"logit_bias": {"5": 500}})),
            "from -100 to 100",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"presence_penalty": 2.5})),
            "presence_penalty",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"frequency_penalty": "high"})),
            "frequency_penalty",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"n": 129})),
            "from 1 to 128",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"seed": 1u64 << 63})),
            "seed",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"stream": "yes"})),
            "stream",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"stream_options": {"include_usage": true}})),
            "stream_options",
        ),
        ("/v1/chat/completions", chat(json!({"n": 0})), "'n' is 0"),
        (
            "/v1/chat/completions",
            chat(json!({"top_k": -2})),
            "'top_k' is -2",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"top_k": 1.5})),
            "'top_k' is 1.5",
        ),
        ("/v1/chat/completions", chat(json!({"min_p": 2})), "min_p"),
        (
            "/v1/chat/completions",
            chat(json!({"repetition_penalty": 0})),
            "repetition_penalty",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"min_tokens": 13})),
            "'min_tokens' is 13, more than the 12 tokens",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"stop": ["a", "b", "c", "d", "e"]})),
            "stop",
        ),
        ("/v1/chat/completions", chat(json!({"seed": "x"})), "seed"),
        ("/v1/completions", json!({"model": "smollm2"}), "prompt"),
        (
            "/v1/completions",
            json!({"model": "smollm2", "prompt": [1, 99999]}),
            "vocabulary",
        ),
        (
            "/v1/completions",
            json!({"model": "smollm2", "prompt": ["a", [1]]}),
            "'prompt[1]' must be a string like 'prompt[0]'",
        ),
        (
            "/v1/completions",
            json!({"model": "smollm2", "prompt": [[1], [2, 99999]]}),
            "'prompt[1]' item 1 must be a token id",
        ),
        (
            "/v1/completions",
            json!({"model": "smollm2", "prompt": vec!["a"; 65], "n": 2}),
            "at most 128 choices",
        ),
        (
            "/v1/completions",
            json!({"model": "smollm2", "prompt": 7}),
            "prompt",
        ),
        (
            "/v1/completions",
            json!({"model": "smollm2", "prompt": long_prompt}),
            "context",
        ),
    ];
    for (path, body, needle) in cases {
        let r = w.client.post_json(path, &body);
        assert_eq!(
            r.status,
            400,
            "{body}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let error = &r.json()["error"];
        assert_eq!(error["type"], "invalid_request_error");
        if needle == "context" {
            assert_eq!(error["code"], "context_length_exceeded", "{body}");
        }
        let message = error["message"].as_str().expect("message");
        assert!(
            message.contains(needle),
            "{body}: {message:?} does not mention {needle:?}"
        );
        assert!(message.len() < 500, "{message}");
        // The field, as OpenAI names it, where the message names one.
        if let Some(param) = error["param"].as_str() {
            assert!(message.contains(&format!("'{param}'")), "{error}");
        }
    }
    let r = w
        .client
        .post_json("/v1/chat/completions", &chat(json!({"temperature": 3})));
    assert_eq!(r.json()["error"]["param"], "temperature");
    let r = w.client.post_json(
        "/v1/chat/completions",
        &json!({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(r.status, 404);
    let r = w
        .client
        .post_json("/v1/embeddings", &json!({"model": "smollm2", "input": "x"}));
    // OpenAI's (and vLLM's) 404 for a model that does not serve the route.
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "unsupported_model_kind");
    // Generated through the OpenAI routes only: KServe's metadata lists
    // no tensors, and its infer says where to go.
    let meta = w.client.get("/v2/models/smollm2").json();
    assert_eq!(
        (&meta["inputs"], &meta["outputs"]),
        (&json!([]), &json!([]))
    );
    let r = w.client.post_json(
        "/v2/models/smollm2/infer",
        &json!({"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]}),
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]
        .as_str()
        .is_some_and(|e| e.contains("/v1/chat/completions")));
    // An assistant turn without text (OpenAI's, after a tool call) is an
    // empty turn, not a missing field.
    let after_tools = json!({"model": "smollm2", "max_tokens": 2, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": null},
        {"role": "user", "content": "again"},
    ]});
    let r = w.client.post_json("/v1/chat/completions", &after_tools);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // Still serving after all that.
    assert_eq!(
        w.client
            .post_json("/v1/chat/completions", &chat(json!({"max_tokens": 2})))
            .status,
        200
    );
}

/// The `data:` chunks of a stream, parsed, `[DONE]` left out.
fn chunks(body: &[u8]) -> Vec<Value> {
    let events = events(body);
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk is JSON"))
        .collect()
}

#[test]
fn log_probabilities_come_with_their_tokens_whole_and_streamed() {
    let w = smollm2(4);
    // Chat: `logprobs: true` with `top_logprobs`.
    let ask = chat(json!({"logprobs": true, "top_logprobs": 3, "max_tokens": 10}));
    let whole = w.client.post_json("/v1/chat/completions", &ask).json();
    let choice = &whole["choices"][0];
    let content = choice["message"]["content"].as_str().expect("content");
    let entries = choice["logprobs"]["content"].as_array().expect("entries");
    assert_eq!(
        entries.len() as u64,
        whole["usage"]["completion_tokens"]
            .as_u64()
            .expect("tokens"),
        "one entry a token: {whole}"
    );
    let mut joined = Vec::new();
    for e in entries {
        let bytes: Vec<u8> = serde_json::from_value(e["bytes"].clone()).expect("bytes");
        assert_eq!(e["token"], String::from_utf8_lossy(&bytes).as_ref());
        joined.extend(bytes);
        let logprob = e["logprob"].as_f64().expect("logprob");
        let top = e["top_logprobs"].as_array().expect("top");
        assert_eq!(top.len(), 3);
        // Greedy: the generated token is the likeliest, and the likeliest
        // come first, with probabilities that add up to at most 1.
        assert_eq!(top[0]["token"], e["token"]);
        assert_eq!(top[0]["logprob"].as_f64(), Some(logprob));
        let lps: Vec<f64> = top
            .iter()
            .map(|t| t["logprob"].as_f64().expect("lp"))
            .collect();
        assert!(lps.windows(2).all(|p| p[0] >= p[1]), "{lps:?}");
        assert!(lps.iter().map(|l| l.exp()).sum::<f64>() <= 1.0 + 1e-6);
        assert!(logprob <= 0.0);
    }
    assert_eq!(String::from_utf8(joined).expect("UTF-8"), content);
    // Without them, `logprobs` is null.
    let plain = w
        .client
        .post_json("/v1/chat/completions", &chat(json!({"max_tokens": 10})))
        .json();
    assert_eq!(plain["choices"][0]["logprobs"], Value::Null);
    assert_eq!(plain["choices"][0]["message"]["content"], content);

    // Streamed: the chunks' entries, put together, are the whole's.
    let mut streaming = ask.clone();
    streaming["stream"] = json!(true);
    let r = w.client.post_json("/v1/chat/completions", &streaming);
    let mut streamed = Vec::new();
    for c in chunks(&r.body) {
        let lp = &c["choices"][0]["logprobs"];
        if c["choices"][0]["delta"]
            .get("content")
            .is_some_and(|t| t != "")
        {
            streamed.extend(lp["content"].as_array().expect("entries").iter().cloned());
        }
    }
    assert_eq!(&streamed, entries);

    // Completions: `logprobs: N`, the legacy arrays, offsets in characters.
    let prompt = json!({"model": "smollm2", "prompt": "The quick brown fox", "temperature": 0,
        "max_tokens": 12, "logprobs": 2});
    let whole = w.client.post_json("/v1/completions", &prompt).json();
    let choice = &whole["choices"][0];
    let text = choice["text"].as_str().expect("text");
    let lp = &choice["logprobs"];
    let tokens: Vec<String> = serde_json::from_value(lp["tokens"].clone()).expect("tokens");
    let offsets: Vec<usize> = serde_json::from_value(lp["text_offset"].clone()).expect("offsets");
    assert_eq!(tokens.concat(), text);
    let mut at = 0;
    for (i, t) in tokens.iter().enumerate() {
        assert_eq!(offsets[i], at, "{lp}");
        at += t.chars().count();
        let top = lp["top_logprobs"][i].as_object().expect("top");
        assert!(top.len() <= 2 && !top.is_empty(), "{lp}");
        assert_eq!(top.get(t), Some(&lp["token_logprobs"][i]), "greedy: {lp}");
    }
    let mut streaming = prompt.clone();
    streaming["stream"] = json!(true);
    let r = w.client.post_json("/v1/completions", &streaming);
    let (mut tokens_streamed, mut offsets_streamed) = (Vec::new(), Vec::new());
    for c in chunks(&r.body) {
        let lp = &c["choices"][0]["logprobs"];
        if !lp.is_null() {
            tokens_streamed.extend(lp["tokens"].as_array().expect("tokens").iter().cloned());
            offsets_streamed.extend(
                lp["text_offset"]
                    .as_array()
                    .expect("offsets")
                    .iter()
                    .cloned(),
            );
        }
    }
    assert_eq!(Value::from(tokens_streamed), lp["tokens"]);
    assert_eq!(Value::from(offsets_streamed), lp["text_offset"]);

    // A token that is part of a character (here a lone byte 0xB5, forced)
    // is named by its bytes, as OpenAI names one; the legacy object adds
    // the generated token to the likeliest, likeliest first.
    let forced = w
        .client
        .post_json(
            "/v1/completions",
            &json!({"model": "smollm2", "prompt": "Hi", "temperature": 0, "max_tokens": 1,
                "logprobs": 1, "logit_bias": {"130": 100}}),
        )
        .json();
    let lp = &forced["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"], json!(["bytes:\\xb5"]), "{forced}");
    let top = lp["top_logprobs"][0].as_object().expect("top");
    let order: Vec<f64> = top.values().map(|v| v.as_f64().expect("lp")).collect();
    assert_eq!(order.len(), 2, "{top:?}");
    assert!(order[0] > order[1], "{top:?}");
    assert_eq!(top.get("bytes:\\xb5"), Some(&lp["token_logprobs"][0]));
    let chat_forced = w
        .client
        .post_json(
            "/v1/chat/completions",
            &chat(json!({"max_tokens": 1, "logprobs": true, "logit_bias": {"130": 100}})),
        )
        .json();
    let entry = &chat_forced["choices"][0]["logprobs"]["content"][0];
    assert_eq!(
        (&entry["token"], &entry["bytes"]),
        (&json!("bytes:\\xb5"), &json!([0xb5])),
        "{chat_forced}"
    );

    // Cut by a stop sequence: only the tokens that begin in the text.
    let stop = &text[6..9];
    let mut stopped = prompt.clone();
    stopped["stop"] = json!(stop);
    let cut = w.client.post_json("/v1/completions", &stopped).json();
    let kept = &cut["choices"][0]["text"];
    assert_eq!(kept, &text[..text.find(stop).expect("stop in text")]);
    let offsets: Vec<usize> =
        serde_json::from_value(cut["choices"][0]["logprobs"]["text_offset"].clone())
            .expect("offsets");
    let chars = kept.as_str().expect("text").chars().count();
    assert!(
        !offsets.is_empty() && offsets.iter().all(|&o| o < chars),
        "{cut}"
    );
    let tokens: Vec<String> =
        serde_json::from_value(cut["choices"][0]["logprobs"]["tokens"].clone()).expect("tokens");
    assert!(tokens.concat().starts_with(kept.as_str().expect("text")));
}

#[test]
fn choices_biases_penalties_and_vllm_sampling_extras() {
    let w = smollm2(4);
    let completion = |extra: Value| {
        let mut body =
            json!({"model": "smollm2", "prompt": "The quick brown fox", "max_tokens": 12});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        let r = w.client.post_json("/v1/completions", &body);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    };
    // n choices, each the one its own seed gives (the seed, then the next).
    let three = completion(json!({"n": 6, "seed": 40, "temperature": 1.0}));
    let choices = three["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 6, "more than the worker's 4 at once");
    let mut tokens = 0;
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        let alone = completion(json!({"seed": 40 + i, "temperature": 1.0}));
        assert_eq!(c["text"], alone["choices"][0]["text"], "choice {i}");
        tokens += alone["usage"]["completion_tokens"]
            .as_u64()
            .expect("tokens");
    }
    assert_eq!(three["usage"]["completion_tokens"], tokens);
    assert!(
        choices.iter().any(|c| c["text"] != choices[0]["text"]),
        "three seeds, one text: {three}"
    );
    // Streamed, on the chat API: each choice's chunks make its text, each
    // ends once, and the usage and [DONE] come after the last.
    let ask = chat(
        json!({"n": 2, "seed": 5, "temperature": 1.0, "stream": true,
        "stream_options": {"include_usage": true}}),
    );
    let whole = {
        let mut b = ask.clone();
        b["stream"] = json!(false);
        b.as_object_mut().expect("object").remove("stream_options");
        w.client.post_json("/v1/chat/completions", &b).json()
    };
    let chunks = chunks(&w.client.post_json("/v1/chat/completions", &ask).body);
    let (usage, chunks) = chunks.split_last().expect("usage chunk");
    assert_eq!(usage["usage"], whole["usage"]);
    for i in 0..2 {
        let mine: Vec<&Value> = chunks
            .iter()
            .map(|c| &c["choices"][0])
            .filter(|c| c["index"] == i)
            .collect();
        assert_eq!(mine[0]["delta"]["role"], "assistant");
        let text: String = mine
            .iter()
            .filter_map(|c| c["delta"]["content"].as_str())
            .collect();
        assert_eq!(
            text,
            whole["choices"][i]["message"]["content"]
                .as_str()
                .expect("content")
        );
        let ends: Vec<&&Value> = mine
            .iter()
            .filter(|c| !c["finish_reason"].is_null())
            .collect();
        assert_eq!(ends.len(), 1, "choice {i}");
        assert_eq!(
            ends[0]["finish_reason"],
            whole["choices"][i]["finish_reason"]
        );
    }

    // logit_bias: -100 bans the likeliest first token, +100 forces one.
    let greedy = completion(json!({"temperature": 0, "max_tokens": 1, "logprobs": 1}));
    let first = greedy["choices"][0]["text"]
        .as_str()
        .expect("text")
        .to_string();
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/smollm2_greedy.json"
        ))
        .expect("fixture"),
    )
    .expect("JSON");
    let case = &fixture["cases"][2];
    assert_eq!(case["prompt"], "The quick brown fox");
    let likeliest = case["greedy"][0].to_string();
    let banned = completion(json!({"temperature": 0, "max_tokens": 1,
        "logit_bias": {likeliest.clone(): -100}}));
    assert_ne!(banned["choices"][0]["text"], first.as_str(), "{banned}");
    // The forced token: the fixture prompt's own first id, "<|im_start|>"'s
    // successor in the chat cases ("user"), whatever the text before.
    let user = fixture["cases"][0]["ids"][1].to_string();
    let forced = completion(json!({"temperature": 1.0, "seed": 3, "max_tokens": 3,
        "logit_bias": {user: 100}}));
    let forced_text = forced["choices"][0]["text"].as_str().expect("text");
    assert!(forced_text.starts_with("user"), "{forced}");

    // Penalties: greedy text that repeats itself repeats less.
    let repeats = |extra: Value| {
        let mut body =
            json!({"prompt": "apple, apple, apple, apple,", "temperature": 0, "max_tokens": 24});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        let text = completion(body)["choices"][0]["text"]
            .as_str()
            .expect("text")
            .to_string();
        text.matches("apple").count()
    };
    let (free, presence, frequency) = (
        repeats(json!({})),
        repeats(json!({"presence_penalty": 2})),
        repeats(json!({"frequency_penalty": 2})),
    );
    assert!(free >= 4, "the unpenalized text repeats: {free}");
    assert!(
        presence < free && frequency < free,
        "{free} {presence} {frequency}"
    );
    // vLLM's repetition penalty counts the prompt's words too.
    let repetition = repeats(json!({"repetition_penalty": 1.5}));
    assert!(repetition < free, "{free} {repetition}");

    // top_k = 1 and min_p = 1 keep only the likeliest token: greedy
    // whatever the temperature and seed.
    let greedy = completion(json!({"temperature": 0}))["choices"][0]["text"].clone();
    for seed in 1..4 {
        for narrow in [json!({"top_k": 1}), json!({"min_p": 1.0})] {
            let mut body = json!({"temperature": 1.5, "seed": seed});
            body.as_object_mut()
                .expect("object")
                .extend(narrow.as_object().expect("object").clone());
            assert_eq!(completion(body)["choices"][0]["text"], greedy, "{narrow}");
        }
    }
    // Sampled at that temperature without them, some seed differs.
    assert!((1..6).any(
        |seed| completion(json!({"temperature": 1.5, "seed": seed}))["choices"][0]["text"]
            != greedy
    ));

    // min_tokens: an answer that ends its turn early goes on to the minimum.
    let brief = |extra: Value| {
        let mut body = json!({"model": "smollm2",
            "messages": [{"role": "user", "content": "What is 2+2?"}],
            "temperature": 0, "max_tokens": 40});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        let r = w.client.post_json("/v1/chat/completions", &body);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let r = r.json();
        let tokens = r["usage"]["completion_tokens"].as_u64().expect("tokens");
        (tokens, r["choices"][0]["finish_reason"].clone())
    };
    let (natural, _) = brief(json!({}));
    assert!(natural < 30, "{natural}");
    assert!(brief(json!({"min_tokens": 30})).0 >= 30);
    // ignore_eos (vLLM's, for benchmarks' fixed lengths): only the length
    // ends it.
    assert_eq!(brief(json!({"ignore_eos": true})), (40, json!("length")));
    // Stop sequences too count only from the minimum on (vLLM's rule): the
    // greedy text cut at its first space goes on past it.
    let first_space = greedy.as_str().expect("text").find(' ').expect("a space");
    let cut = |min: u64| {
        completion(json!({"temperature": 0, "stop": " ", "min_tokens": min}))["choices"][0]["text"]
            .as_str()
            .expect("text")
            .len()
    };
    assert!(cut(0) <= first_space);
    assert!(cut(6) > first_space);
}

#[test]
fn json_mode_answers_with_one_object_and_nothing_else() {
    let w = smollm2(4);
    let ann = "Give me a JSON object with the keys name and age for a person called Ann who is 30.";
    let ask = |content: &str, extra: Value| {
        let mut body = chat(json!({"max_tokens": 100}));
        body["messages"][0]["content"] = json!(content);
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        body
    };
    let json_mode = json!({"response_format": {"type": "json_object"}});
    let object = |text: &str| serde_json::from_str::<Value>(text).is_ok_and(|v| v.is_object());
    let content = |r: &Value, i: usize| {
        r["choices"][i]["message"]["content"]
            .as_str()
            .expect("content")
            .to_string()
    };

    // Left alone, the model wraps its object in prose; held to JSON, the
    // answer is the object, parsed by serde_json.
    let free = w
        .client
        .post_json("/v1/chat/completions", &ask(ann, json!({})))
        .json();
    assert!(!object(&content(&free, 0)), "{free}");
    let held = w
        .client
        .post_json("/v1/chat/completions", &ask(ann, json_mode.clone()));
    assert_eq!(held.status, 200, "{}", String::from_utf8_lossy(&held.body));
    let held = held.json();
    assert!(object(&content(&held, 0)), "{held}");
    assert_eq!(held["choices"][0]["finish_reason"], "stop");
    // Streamed: the same text.
    let mut streamed = ask(ann, json_mode.clone());
    streamed["stream"] = json!(true);
    let text: String = chunks(&w.client.post_json("/v1/chat/completions", &streamed).body)
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(text, content(&held, 0));
    // The object's end ends the turn, even before `min_tokens`.
    let mut early = ask(ann, json_mode.clone());
    early["min_tokens"] = json!(60);
    let early = w.client.post_json("/v1/chat/completions", &early).json();
    assert_eq!(content(&early, 0), content(&held, 0), "{early}");

    // A request the model would rather answer in verse: still an object
    // from the first byte, cut off here by max_tokens.
    let mut poem = ask("Write a poem about the sea.", json_mode.clone());
    poem["max_tokens"] = json!(20);
    let poem = w.client.post_json("/v1/chat/completions", &poem).json();
    assert!(content(&poem, 0).starts_with('{'), "{poem}");
    assert_eq!(poem["choices"][0]["finish_reason"], "length");

    // Sampled choices: each begins the object, each that ends is one.
    let mut sampled = ask(
        "Describe a cat named Tom, with his age and colors, in JSON.",
        json_mode.clone(),
    );
    sampled["n"] = json!(6);
    sampled["temperature"] = json!(1.0);
    sampled["seed"] = json!(1);
    sampled["max_tokens"] = json!(150);
    let sampled = w.client.post_json("/v1/chat/completions", &sampled).json();
    let mut ended = 0;
    for i in 0..6 {
        let text = content(&sampled, i);
        assert!(text.starts_with('{'), "{text:?}");
        if sampled["choices"][i]["finish_reason"] == "stop" {
            assert!(object(&text), "{text:?}");
            ended += 1;
        }
    }
    assert!(ended >= 2, "{sampled}");

    // The legacy completions take it too.
    let r = w
        .client
        .post_json(
            "/v1/completions",
            &json!({"model": "smollm2", "prompt": "A person record for Ann, aged 30:",
                    "temperature": 0, "max_tokens": 60,
                    "response_format": {"type": "json_object"}}),
        )
        .json();
    let text = r["choices"][0]["text"].as_str().expect("text");
    assert!(object(text), "{r}");

    // Bad formats, and vLLM's guides (not taken for what they are not).
    for (extra, param) in [
        (
            json!({"response_format": {"type": "xml"}}),
            "response_format.type",
        ),
        (json!({"response_format": "json"}), "response_format"),
        (json!({"guided_json": {"type": "object"}}), "guided_json"),
    ] {
        let r = w
            .client
            .post_json("/v1/chat/completions", &ask(ann, extra.clone()));
        assert_eq!(r.status, 400, "{extra}");
        let e = r.json();
        assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
        assert_eq!(e["error"]["param"], param, "{e}");
    }
}

#[test]
fn structured_outputs_follow_the_schema() {
    let w = smollm2(4);
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "color": {"enum": ["black", "white", "orange", "grey"]},
            "toys": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
            "indoor": {"type": "boolean"}
        },
        "required": ["name", "age", "color", "toys", "indoor"],
        "additionalProperties": false
    });
    let ask = |extra: Value| {
        let mut body = chat(json!({"max_tokens": 120, "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "cat", "strict": true, "schema": schema}}}));
        body["messages"][0]["content"] = json!("Describe a cat named Tom.");
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        w.client.post_json("/v1/chat/completions", &body)
    };
    // Checked on the parsed answer, apart from the recognizer: every key
    // in the schema's order, each value of its type.
    let conforms = |text: &str| {
        let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let o = v.as_object().expect("an object");
        let keys: Vec<&str> = o.keys().map(String::as_str).collect();
        assert_eq!(keys, ["name", "age", "color", "toys", "indoor"], "{text}");
        assert!(o["name"].is_string(), "{text}");
        assert!(o["age"].is_i64() || o["age"].is_u64(), "{text}");
        assert!(
            ["black", "white", "orange", "grey"].contains(&o["color"].as_str().unwrap_or("")),
            "{text}"
        );
        let toys = o["toys"].as_array().expect("toys");
        assert!(
            toys.len() <= 3 && toys.iter().all(Value::is_string),
            "{text}"
        );
        assert!(o["indoor"].is_boolean(), "{text}");
    };
    let r = ask(json!({}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = r.json();
    assert_eq!(r["choices"][0]["finish_reason"], "stop", "{r}");
    conforms(
        r["choices"][0]["message"]["content"]
            .as_str()
            .expect("content"),
    );

    let sampled = ask(json!({"n": 4, "temperature": 1.0, "seed": 3, "max_tokens": 200})).json();
    let mut ended = 0;
    for c in sampled["choices"].as_array().expect("choices") {
        let text = c["message"]["content"].as_str().expect("content");
        assert!(text.starts_with('{'), "{text:?}");
        if c["finish_reason"] == "stop" {
            conforms(text);
            ended += 1;
        }
    }
    assert!(ended >= 2, "{sampled}");

    // What the answer could not be held to is a 400 that says so.
    let mut body = chat(
        json!({"response_format": {"type": "json_schema", "json_schema": {
        "name": "p", "schema": {"type": "object", "properties": {
            "when": {"type": "string", "format": "date-time"}}}}}}),
    );
    body["max_tokens"] = json!(5);
    let r = w.client.post_json("/v1/chat/completions", &body);
    assert_eq!(r.status, 400);
    let e = r.json();
    assert_eq!(
        e["error"]["param"], "response_format.json_schema.schema",
        "{e}"
    );
    let message = e["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("'format' at #/properties/when is not supported"),
        "{message}"
    );
}

#[test]
fn echo_returns_the_prompt_first_and_scores_it() {
    let w = smollm2(4);
    let prompt = "The quick brown fox jumps over the lazy dog";
    let complete = |extra: Value| {
        let mut body = json!({"model": "smollm2", "prompt": prompt, "temperature": 0});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        w.client.post_json("/v1/completions", &body)
    };
    // Scored only (lm-evaluation-harness's request): the prompt, each of
    // its tokens but the first with a log-probability and the likeliest.
    let r = complete(json!({"echo": true, "logprobs": 1, "max_tokens": 0}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = r.json();
    let choice = &r["choices"][0];
    assert_eq!(choice["text"], prompt);
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(r["usage"]["completion_tokens"], 0);
    let lp = &choice["logprobs"];
    let tokens: Vec<&str> = lp["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_str().expect("a token"))
        .collect();
    assert_eq!(tokens.concat(), prompt);
    assert_eq!(r["usage"]["prompt_tokens"], tokens.len());
    assert!(lp["token_logprobs"][0].is_null() && lp["top_logprobs"][0].is_null());
    let mut chars = 0;
    for (k, token) in tokens.iter().enumerate() {
        assert_eq!(lp["text_offset"][k], chars, "{lp}");
        chars += token.chars().count();
        if k > 0 {
            let logprob = lp["token_logprobs"][k].as_f64().expect("a log-probability");
            assert!(logprob <= 0.0);
            assert_eq!(lp["top_logprobs"][k][*token], logprob, "{lp}");
        }
    }

    // Generated after it: the same text as without the echo, its
    // offsets counted after the prompt.
    let plain = complete(json!({"max_tokens": 4, "logprobs": 0})).json();
    let echoed = complete(json!({"echo": true, "max_tokens": 4, "logprobs": 0})).json();
    let text = echoed["choices"][0]["text"].as_str().expect("text");
    assert_eq!(
        text.strip_prefix(prompt),
        plain["choices"][0]["text"].as_str()
    );
    let offsets = &echoed["choices"][0]["logprobs"]["text_offset"];
    assert_eq!(offsets.as_array().map(Vec::len), Some(tokens.len() + 4));
    assert_eq!(offsets[tokens.len()], chars);
    for k in 0..4 {
        assert_eq!(
            offsets[tokens.len() + k].as_u64().expect("offset") - chars as u64,
            plain["choices"][0]["logprobs"]["text_offset"][k]
                .as_u64()
                .expect("offset")
        );
    }
    // Streamed: the prompt first, then the rest; each choice echoes.
    let body = complete(json!({"echo": true, "max_tokens": 4, "stream": true, "n": 2})).body;
    for i in 0..2 {
        let texts: Vec<String> = chunks(&body)
            .iter()
            .filter(|c| c["choices"][0]["index"] == i)
            .filter_map(|c| c["choices"][0]["text"].as_str().map(String::from))
            .collect();
        assert_eq!(texts[0], prompt);
        assert_eq!(texts.concat(), text, "choice {i}");
    }

    // Not on the chat API; no max_tokens of 0 without it.
    let r = w
        .client
        .post_json("/v1/chat/completions", &chat(json!({"echo": true})));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "echo");
    let r = complete(json!({"max_tokens": 0}));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "max_tokens");
}

#[test]
fn several_prompts_get_their_choices_in_order() {
    let w = smollm2(4);
    let prompts = ["The quick brown fox", "Once upon a time"];
    let complete = |prompt: Value, extra: Value| {
        let mut body =
            json!({"model": "smollm2", "prompt": prompt, "temperature": 0, "max_tokens": 5});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        let r = w.client.post_json("/v1/completions", &body);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    };
    // Each prompt's n choices, prompt by prompt (OpenAI's order), each
    // what that prompt alone gets; the usage adds up over all of them.
    let extra = json!({"n": 2, "echo": true, "logprobs": 1});
    let both = complete(json!(prompts), extra.clone());
    let choices = both["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 4);
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    for (k, prompt) in prompts.iter().enumerate() {
        let alone = complete(json!(prompt), extra.clone());
        prompt_tokens += alone["usage"]["prompt_tokens"].as_u64().expect("tokens");
        completion_tokens += alone["usage"]["completion_tokens"]
            .as_u64()
            .expect("tokens");
        for j in 0..2 {
            let c = &choices[2 * k + j];
            assert_eq!(c["index"], 2 * k + j);
            assert!(c["text"].as_str().is_some_and(|t| t.starts_with(prompt)));
            assert_eq!(c["text"], alone["choices"][j]["text"]);
            assert_eq!(c["logprobs"], alone["choices"][j]["logprobs"]);
        }
    }
    assert_eq!(both["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(both["usage"]["completion_tokens"], completion_tokens);
    // Token ids, several; streamed, each choice's chunks make its text.
    let ids = json!([[504, 2365], [19842, 2365, 253]]);
    let whole = complete(ids.clone(), json!({}));
    let streamed = json!({"model": "smollm2", "prompt": ids, "temperature": 0,
                          "max_tokens": 5, "stream": true});
    let body = w.client.post_json("/v1/completions", &streamed).body;
    for i in 0..2 {
        let text: String = chunks(&body)
            .iter()
            .filter(|c| c["choices"][0]["index"] == i)
            .filter_map(|c| c["choices"][0]["text"].as_str().map(String::from))
            .collect();
        assert_eq!(text, whole["choices"][i]["text"].as_str().expect("text"));
    }
}
