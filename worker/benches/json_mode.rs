//! JSON mode's and structured outputs' cost per token
//! (`models/chat/json.rs`, `schema.rs`): finding every token of SmolLM2's
//! vocabulary that can continue the answer, from five places (just after
//! `{`, where few can; at the start of a value; inside a string, where
//! nearly all can; a schema's next key; a schema's enum), against what it
//! adds to: one decode step
//! of the same model for one sequence (the forward pass after a 14-token
//! prompt, on the machine's threads). Needs the SmolLM2 GGUF
//! (`scripts/fetch-models.sh smollm2`); no GPU.
//!
//!     cargo bench -p thaw-worker --bench json_mode

use std::path::PathBuf;

use candle_core::Device;
use criterion::{criterion_main, BatchSize, Criterion};
use thaw_worker::models::chat::json::{AnyObject, JsonState};
use thaw_worker::models::chat::llama::{Logits, Step};
use thaw_worker::models::chat::ChatModel;
use thaw_worker::models::chat::Schema;

/// SmolLM2's template around "Hello" (as `examples/decode_speed.rs`).
const PROMPT: [u32; 14] = [
    1, 9690, 198, 2683, 359, 253, 5356, 5646, 28, 2, 198, 1, 4093, 198,
];

fn json_mode(c: &mut Criterion) {
    let dir = std::env::var_os("THAW_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/thaw/models")
        })
        .join("smollm2");
    let model = ChatModel::load(&dir, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/fetch-models.sh smollm2)", dir.display()));
    let tokens = model.tokenizer.json_tokens();
    let vocabulary = model.tokenizer.vocab_size();

    let mut group = c.benchmark_group("json_mode");
    let threads = candle_core::utils::get_num_threads();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a pool");
    let mut prompted = model.decoder.new_cache();
    pool.install(|| {
        model.decoder.forward(
            &mut [Step {
                cache: &mut prompted,
                tokens: &PROMPT,
                logits: Logits::Last,
            }],
            threads > 1,
        )
    })
    .expect("the prompt runs");
    group.bench_function("decode_step", |b| {
        b.iter_batched(
            || prompted.clone(),
            |mut cache| {
                pool.install(|| {
                    model.decoder.forward(
                        &mut [Step {
                            cache: &mut cache,
                            tokens: &[28],
                            logits: Logits::Last,
                        }],
                        threads > 1,
                    )
                })
                .expect("a step")
            },
            BatchSize::SmallInput,
        )
    });
    // JSON mode as the engine runs it (the schema of any object), its
    // recognizer alone (`raw_`), and a schema's key and enum.
    let any = Schema::any_object();
    let person = Schema::compile(&serde_json::json!({
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                       "color": {"enum": ["red", "green", "blue"]}},
        "required": ["name", "age", "color"]
    }))
    .expect("a schema");
    let count = |name: &str, allowed: usize| {
        eprintln!("{name}: {allowed} of {vocabulary} tokens allowed");
    };
    for (name, schema, prefix) in [
        ("after_brace", &any, "{"),
        ("value", &any, "{\"name\": "),
        ("in_string", &any, "{\"name\": \"To"),
        ("schema_key", &person, "{\"name\": \"Tom\", "),
        (
            "schema_enum",
            &person,
            "{\"name\": \"Tom\", \"age\": 3, \"color\": ",
        ),
    ] {
        let state = schema
            .feed(&schema.start(), prefix.as_bytes())
            .expect("valid");
        let mut allowed = 0;
        tokens.allowed(schema, state, |_| allowed += 1);
        count(name, allowed);
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut mask = vec![false; vocabulary];
                tokens.allowed(schema, state, |id| mask[id as usize] = true);
                mask
            })
        });
    }
    for (name, prefix) in [
        ("raw_after_brace", "{"),
        ("raw_in_string", "{\"name\": \"To"),
    ] {
        let state = JsonState::new().feed(prefix.as_bytes()).expect("valid");
        let mut allowed = 0;
        tokens.allowed(&AnyObject, state, |_| allowed += 1);
        count(name, allowed);
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut mask = vec![false; vocabulary];
                tokens.allowed(&AnyObject, state, |id| mask[id as usize] = true);
                mask
            })
        });
    }
    group.finish();
}

fn benches() {
    let mut c = Criterion::default().configure_from_args();
    json_mode(&mut c);
}

criterion_main!(benches);
