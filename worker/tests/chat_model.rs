//! SmolLM2's forward pass (thaw's llama on the mapped GGUF) against llama.cpp
//! on the same file: logits and greedy continuations computed once by
//! llama-cpp-python (tests/fixtures/make_smollm2_greedy.py). Needs the GGUF:
//! `scripts/fetch-models.sh` (the test command runs it).
//!
//! Tolerances: each of llama.cpp's ten highest logits after the prompt within
//! 0.5 of ours (logits reach ~28; both quantize activations to 8 bits, in
//! different orders); teacher-forced on llama.cpp's greedy tokens, each of
//! them is our top token or within 0.5 of it (two tokens can tie).

use std::path::PathBuf;

use serde::Deserialize;
use thaw_worker::models::chat::llama::{KvCache, Llama, Step};

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    prompt: String,
    ids: Vec<u32>,
    top_logits: Vec<(u32, f32)>,
    greedy: Vec<u32>,
}

fn model() -> Llama {
    let path = thaw_tests::registry_model("smollm2").join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-models.sh (the test command does)",
        path.display()
    );
    Llama::load(&path).expect("the GGUF loads").0
}

fn fixture() -> Fixture {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_greedy.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("fixture parses")
}

fn run(model: &Llama, cache: &mut KvCache, tokens: &[u32]) -> Vec<f32> {
    let mut steps = [Step {
        cache,
        tokens,
        logits: true,
    }];
    model.forward(&mut steps, false).expect("forward").remove(0)
}

fn argmax(logits: &[f32]) -> (u32, f32) {
    let (i, v) = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .expect("logits");
    (i as u32, *v)
}

#[test]
fn logits_and_greedy_tokens_match_llama_cpp() {
    let model = model();
    for case in fixture().cases {
        let mut cache = KvCache::new(&model);
        let mut logits = run(&model, &mut cache, &case.ids);
        for &(id, want) in &case.top_logits {
            let got = logits[id as usize];
            assert!(
                (got - want).abs() <= 0.5,
                "{:?}: logit of {id} is {got}, llama.cpp {want}",
                case.prompt
            );
        }
        for (i, &want) in case.greedy.iter().enumerate() {
            let (top, max) = argmax(&logits);
            let got = logits[want as usize];
            assert!(
                top == want || max - got <= 0.5,
                "{:?}: step {i}: llama.cpp's token {want} has {got}, our top {top} has {max}",
                case.prompt
            );
            logits = run(&model, &mut cache, &[want]);
        }
    }
}

#[test]
fn sequences_decoded_together_get_what_each_gets_alone() {
    let model = model();
    let cases = fixture().cases;
    // Alone: each prompt, then three forced tokens one by one.
    let alone: Vec<Vec<f32>> = cases
        .iter()
        .map(|case| {
            let mut cache = KvCache::new(&model);
            run(&model, &mut cache, &case.ids);
            for &t in &case.greedy[..2] {
                run(&model, &mut cache, &[t]);
            }
            run(&model, &mut cache, &case.greedy[2..3])
        })
        .collect();
    // Together: the prompts in one pass, then each step for all at once,
    // on a pool of two threads.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("pool");
    let mut caches: Vec<KvCache> = cases.iter().map(|_| KvCache::new(&model)).collect();
    let mut together = Vec::new();
    for step in 0..4 {
        let tokens: Vec<&[u32]> = cases
            .iter()
            .map(|c| {
                if step == 0 {
                    &c.ids[..]
                } else {
                    &c.greedy[step - 1..step]
                }
            })
            .collect();
        let mut steps: Vec<Step> = caches
            .iter_mut()
            .zip(&tokens)
            .map(|(cache, tokens)| Step {
                cache,
                tokens,
                logits: true,
            })
            .collect();
        together = pool
            .install(|| model.forward(&mut steps, true))
            .expect("forward");
    }
    for (a, b) in alone.iter().zip(&together) {
        // Each row's sums do not depend on the other rows: equal bit for bit.
        assert_eq!(a, b);
    }
    assert_eq!(caches[0].len(), cases[0].ids.len() + 3);
}

#[test]
fn a_sequence_beyond_the_context_is_refused() {
    let model = model();
    let mut cache = KvCache::new(&model);
    let too_long = vec![28u32; model.config().context + 1];
    let mut steps = [Step {
        cache: &mut cache,
        tokens: &too_long,
        logits: true,
    }];
    assert!(model.forward(&mut steps, false).is_err());
    let mut steps = [Step {
        cache: &mut cache,
        tokens: &[60_000],
        logits: true,
    }];
    assert!(
        model.forward(&mut steps, false).is_err(),
        "a token id beyond the vocabulary"
    );
}
