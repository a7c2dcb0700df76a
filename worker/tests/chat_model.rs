//! SmolLM2's forward pass against llama.cpp on the same file: logits and
//! greedy continuations computed once by llama-cpp-python
//! (tests/fixtures/make_smollm2_greedy.py). Both decoders are checked:
//! thaw's own on the mapped GGUF, and the tensor decoder a GPU runs (here
//! on candle's CPU backend). Needs the GGUF: `scripts/fetch-models.sh` (the
//! test command runs it).
//!
//! Tolerances (logits reach ~28): for thaw's decoder, each of llama.cpp's
//! ten highest logits after the prompt within 0.5 of ours (both quantize
//! activations to 8 bits in blocks of 32, in different orders); teacher-
//! forced on llama.cpp's greedy tokens, each of them is our top token or
//! within 0.5 of it (two tokens can tie). The tensor decoder runs the same
//! products through candle's kernels, whose rounding of activations meets
//! llama.cpp's less closely: one 8-bit rounding flipped by a different
//! summation order early on moves the logits by up to ~1.2 (measured:
//! a prompt run whole against token by token). Its tolerance is 1.5, both
//! with the quantized products a GPU runs and with the weights dequantized
//! to f32 (exact arithmetic, which llama.cpp's rounding itself is up to
//! ~1 away from); with f32 products, batching must not change the logits
//! beyond 1e-3.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::Device;
use serde::Deserialize;
use thaw_worker::models::chat::device::Products;
use thaw_worker::models::chat::llama::{Llama, Logits, Step};
use thaw_worker::models::chat::{
    Cache, ChatModel, Decoder, Engine, Event, Finish, Fork, Generation, Sampling,
};

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

fn gguf() -> PathBuf {
    let path = thaw_tests::registry_model("smollm2").join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-models.sh (the test command does)",
        path.display()
    );
    path
}

/// thaw's own decoder.
fn model() -> Decoder {
    Decoder::Cpu(Llama::load(&gguf()).expect("the GGUF loads").0)
}

/// The tensor decoder, on candle's CPU backend.
fn tensor_model(products: Products) -> Decoder {
    ChatModel::load_on_device(&gguf(), &Device::Cpu, products)
        .expect("the GGUF loads")
        .decoder
}

/// A decoder under test and how close it must come.
struct Under {
    name: &'static str,
    decoder: Decoder,
    /// To llama.cpp's logits.
    tolerance: f32,
    /// Between a sequence run alone and in a batch.
    batching: f32,
}

fn decoders() -> [Under; 3] {
    [
        Under {
            name: "thaw",
            decoder: model(),
            // llama.cpp keeps its cache in f16, and 8-bit activations turn
            // rounding into steps: the order of attention's sums alone
            // (fused or separate multiply-adds, both exact to f32) moves the
            // worst of these logits between 0.47 and 0.57, against
            // logits up to 28.
            tolerance: 0.75,
            batching: 0.0,
        },
        Under {
            name: "tensor, quantized products",
            decoder: tensor_model(Products::Quantized),
            tolerance: 1.5,
            batching: 1.5,
        },
        Under {
            name: "tensor, f32 products",
            decoder: tensor_model(Products::Dequantized),
            tolerance: 1.5,
            batching: 1e-3,
        },
    ]
}

fn fixture() -> Fixture {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_greedy.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("fixture parses")
}

fn run(model: &Decoder, cache: &mut Cache, tokens: &[u32]) -> Vec<f32> {
    let mut steps = [Step {
        cache,
        tokens,
        logits: Logits::Last,
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

/// SmolLM2 on the CPU, and a generation engine running it.
fn engine() -> (Arc<ChatModel>, Engine) {
    let model = Arc::new(
        ChatModel::load(&thaw_tests::registry_model("smollm2"), &Device::Cpu)
            .expect("the model loads"),
    );
    let engine = Engine::spawn(model.clone(), 2, "test-generation").expect("the engine starts");
    (model, engine)
}

/// The log-probabilities the engine reports with a token (OpenAI's
/// `logprobs`): the log-softmax of the model's logits, computed here in f64
/// from the same forward pass, to 1e-4; the likeliest tokens in order; and
/// their gaps to the best within the logits' tolerance of llama.cpp's.
#[test]
fn reported_log_probabilities_are_the_model_own_and_rank_as_llama_cpp() {
    let (model, engine) = engine();
    let mut worst = 0.0f32;
    for case in fixture().cases {
        let (events, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        engine
            .submit(Generation {
                prompt: case.ids.clone(),
                max_tokens: 1,
                sampling: Sampling {
                    logprobs: Some(5),
                    ..Sampling::greedy()
                },
                events,
                forks: Vec::new(),
                echo: false,
            })
            .expect("submitted");
        let Some(Event::Token(id, Some(reported))) = receiver.blocking_recv() else {
            panic!("{:?}: no token with log-probabilities", case.prompt);
        };
        let logits = run(&model.decoder, &mut model.decoder.new_cache(), &case.ids);
        let max = f64::from(argmax(&logits).1);
        let total: f64 = logits.iter().map(|&l| (f64::from(l) - max).exp()).sum();
        let want = |t: u32| (f64::from(logits[t as usize]) - max - total.ln()) as f32;
        assert_eq!(id, argmax(&logits).0, "{:?}", case.prompt);
        assert!((reported.logprob - want(id)).abs() < 1e-4, "{reported:?}");
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        let top: Vec<u32> = reported.top.iter().map(|t| t.0).collect();
        assert_eq!(top, order[..5], "{:?}", case.prompt);
        for &(t, lp) in &reported.top {
            assert!((lp - want(t)).abs() < 1e-4, "{t}: {lp} against {}", want(t));
        }
        assert_eq!(top[0], case.top_logits[0].0, "llama.cpp's likeliest");
        let (best, gaps) = (reported.top[0].1, case.top_logits[0].1);
        for &(t, lp) in &reported.top {
            if let Some(&(_, theirs)) = case.top_logits.iter().find(|c| c.0 == t) {
                let off = ((lp - best) - (theirs - gaps)).abs();
                assert!(off <= 0.75, "{:?} token {t}: {off} off", case.prompt);
                worst = worst.max(off);
            }
        }
    }
    println!("reported log-probabilities: gaps to the best within {worst:.3} of llama.cpp's");
}

/// An echoed prompt's log-probabilities (the legacy completions' `echo`):
/// a prompt longer than the engine's chunk, scored in chunks, gets for each
/// token the log-softmax, in f64 here, of the logits that the model gives
/// the tokens before it decoded one at a time, to 1e-4; the choices
/// forked from it get the same; `max_tokens: 0` generates nothing.
#[test]
fn an_echoed_prompt_is_scored_as_its_tokens_decoded_one_at_a_time() {
    let (model, engine) = engine();
    let prompt: Vec<u32> = fixture()
        .cases
        .iter()
        .flat_map(|c| c.ids.clone())
        .cycle()
        .take(300)
        .collect();
    let (events, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let (fork_events, mut fork_receiver) = tokio::sync::mpsc::unbounded_channel();
    let sampling = Sampling {
        logprobs: Some(3),
        ..Sampling::greedy()
    };
    engine
        .submit(Generation {
            prompt: prompt.clone(),
            max_tokens: 0,
            sampling: sampling.clone(),
            events,
            forks: vec![Fork {
                sampling,
                events: fork_events,
            }],
            echo: true,
        })
        .expect("submitted");
    let Some(Event::Prompt(Some(scores))) = receiver.blocking_recv() else {
        panic!("no prompt scores first");
    };
    assert_eq!(receiver.blocking_recv(), Some(Event::Done(Finish::Length)));
    assert_eq!(
        fork_receiver.blocking_recv(),
        Some(Event::Prompt(Some(scores.clone())))
    );
    assert_eq!(
        fork_receiver.blocking_recv(),
        Some(Event::Done(Finish::Length))
    );
    assert_eq!(scores.len(), prompt.len() - 1, "none for the first token");
    let mut cache = model.decoder.new_cache();
    let mut worst = 0.0f32;
    for (k, score) in scores.iter().enumerate() {
        let logits = run(&model.decoder, &mut cache, &prompt[k..=k]);
        let max = f64::from(argmax(&logits).1);
        let total: f64 = logits.iter().map(|&l| (f64::from(l) - max).exp()).sum();
        let want = |t: u32| (f64::from(logits[t as usize]) - max - total.ln()) as f32;
        let off = (score.logprob - want(prompt[k + 1])).abs();
        worst = worst.max(off);
        assert!(off < 1e-4, "token {}: {score:?}", k + 1);
        assert_eq!(score.top.len(), 3);
        assert_eq!(score.top[0].0, argmax(&logits).0, "token {}", k + 1);
        for &(t, lp) in &score.top {
            assert!((lp - want(t)).abs() < 1e-4, "token {}: {t}", k + 1);
        }
    }
    println!("echoed prompt: log-probabilities within {worst:.2e} of one-at-a-time decoding");
}

#[test]
fn logits_and_greedy_tokens_match_llama_cpp() {
    for under in decoders() {
        matches_llama_cpp(&under);
    }
}

fn matches_llama_cpp(under: &Under) {
    let (name, model, tolerance) = (under.name, &under.decoder, under.tolerance);
    let mut worst = 0.0f32;
    for case in fixture().cases {
        let mut cache = model.new_cache();
        let mut logits = run(model, &mut cache, &case.ids);
        for &(id, want) in &case.top_logits {
            let got = logits[id as usize];
            worst = worst.max((got - want).abs());
            assert!(
                (got - want).abs() <= tolerance,
                "{name}: {:?}: logit of {id} is {got}, llama.cpp {want}",
                case.prompt
            );
        }
        for (i, &want) in case.greedy.iter().enumerate() {
            let (top, max) = argmax(&logits);
            let got = logits[want as usize];
            assert!(
                top == want || max - got <= tolerance,
                "{name}: {:?}: step {i}: llama.cpp's token {want} has {got}, our top {top} has {max}",
                case.prompt
            );
            logits = run(model, &mut cache, &[want]);
        }
    }
    println!("{name}: prompt logits within {worst:.3} of llama.cpp's");
}

#[test]
fn sequences_decoded_together_get_what_each_gets_alone() {
    for under in decoders() {
        together_as_alone(&under);
    }
}

fn together_as_alone(under: &Under) {
    let (name, model) = (under.name, &under.decoder);
    let cases = fixture().cases;
    // Alone: each prompt, then three forced tokens one by one.
    let alone: Vec<Vec<f32>> = cases
        .iter()
        .map(|case| {
            let mut cache = model.new_cache();
            run(model, &mut cache, &case.ids);
            for &t in &case.greedy[..2] {
                run(model, &mut cache, &[t]);
            }
            run(model, &mut cache, &case.greedy[2..3])
        })
        .collect();
    // Together: the prompts in one pass, then each step for all at once,
    // on a pool of two threads.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("pool");
    let mut caches: Vec<Cache> = cases.iter().map(|_| model.new_cache()).collect();
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
        let mut steps: Vec<Step<Cache>> = caches
            .iter_mut()
            .zip(&tokens)
            .map(|(cache, tokens)| Step {
                cache,
                tokens,
                logits: Logits::Last,
            })
            .collect();
        together = pool
            .install(|| model.forward(&mut steps, true))
            .expect("forward");
    }
    for (a, b) in alone.iter().zip(&together) {
        // thaw's decoder: each row's sums do not depend on the other rows,
        // equal bit for bit. candle's attention products are blocked by
        // their size, which rounds differently.
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        println!("{name}: batched within {diff} of alone");
        assert!(diff <= under.batching, "{name}: {diff}");
    }
    assert_eq!(caches[0].len(), cases[0].ids.len() + 3, "{name}");
}

#[test]
fn a_sequence_beyond_the_context_is_refused() {
    for under in decoders() {
        refuses_beyond_context(under.name, &under.decoder);
    }
}

fn refuses_beyond_context(name: &str, model: &Decoder) {
    let mut cache = model.new_cache();
    let too_long = vec![28u32; model.config().context + 1];
    let mut steps = [Step {
        cache: &mut cache,
        tokens: &too_long,
        logits: Logits::Last,
    }];
    assert!(model.forward(&mut steps, false).is_err(), "{name}");
    let mut steps = [Step {
        cache: &mut cache,
        tokens: &[60_000],
        logits: Logits::Last,
    }];
    assert!(
        model.forward(&mut steps, false).is_err(),
        "{name}: a token id beyond the vocabulary"
    );
    // A refused pass leaves the cache as it was: still usable.
    assert!(cache.is_empty(), "{name}");
    assert_eq!(
        run(model, &mut cache, &[28, 29]).len(),
        model.config().vocab
    );
    assert_eq!(cache.len(), 2, "{name}");
}

/// thaw's decoder does the same arithmetic for a row whether it comes whole
/// in a prompt, in a chunk of it, or alone: the engine's chunking (which
/// depends on the other requests waiting) never changes an answer.
#[test]
fn a_prompt_gets_the_same_logits_whole_or_in_chunks() {
    let model = model();
    for case in fixture().cases {
        let mut cache = model.new_cache();
        let whole = run(&model, &mut cache, &case.ids);
        for chunk in [1, 3, 9] {
            let mut cache = model.new_cache();
            let mut logits = Vec::new();
            for piece in case.ids.chunks(chunk) {
                logits = run(&model, &mut cache, piece);
            }
            assert!(logits == whole, "{:?} in chunks of {chunk}", case.prompt);
        }
    }
}
