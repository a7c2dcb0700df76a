//! thaw's chat model speed on the SmolLM2 GGUF, without HTTP: prompt
//! processing tokens/s, and decode tokens/s for 1 and N sequences decoded
//! together (bench/chat.sh runs it next to llama.cpp):
//!
//!     cargo run --release -p thaw-worker --example decode_speed -- \
//!         ~/.cache/thaw/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf 1 4
//!
//! Prints one JSON object per stream count. `PROMPT_TOKENS` sets the timed
//! prompt's length, `DECODE_CONTEXT` the context decode starts from, and
//! `DECODE_TOKENS` how many tokens each stream decodes (64; more makes a
//! profile of decode outweigh the prefill of a long context).

use std::time::Instant;

use anyhow::Context;
use thaw_worker::models::chat::llama::{KvCache, Llama, Logits, Step};

/// A chat prompt of 14 tokens (SmolLM2's template around "Hello").
const PROMPT: [u32; 14] = [
    1, 9690, 198, 2683, 359, 253, 5356, 5646, 28, 2, 198, 1, 4093, 198,
];
/// Tokens decoded per stream (DECODE_TOKENS to change it).
const DECODE: usize = 64;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .context("usage: decode_speed GGUF [STREAMS...]")?;
    let mut streams: Vec<usize> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    if streams.is_empty() {
        streams = vec![1, 4];
    }
    let (model, _) = Llama::load(std::path::Path::new(&path))?;
    let threads = candle_core::utils::get_num_threads();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let argmax = |l: &[f32]| {
        l.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i as u32)
    };
    // Prompt processing: a 128-token prompt (PROMPT_TOKENS to change it),
    // once to warm up, then timed.
    let prompt_tokens: usize = match std::env::var("PROMPT_TOKENS") {
        Ok(n) => n.parse().context("PROMPT_TOKENS")?,
        Err(_) => 128,
    };
    let long: Vec<u32> = PROMPT.iter().cycle().take(prompt_tokens).copied().collect();
    let mut prefill_ms = 0.0;
    for _ in 0..2 {
        let mut cache = KvCache::new(&model);
        let start = Instant::now();
        let mut steps = [Step {
            cache: &mut cache,
            tokens: &long,
            logits: Logits::Last,
        }];
        pool.install(|| model.forward(&mut steps, threads > 1))?;
        prefill_ms = start.elapsed().as_secs_f64() * 1e3;
    }
    // Decode after the 14-token prompt, or after DECODE_CONTEXT tokens (each
    // new token then attends to that many more).
    let context: Vec<u32> = match std::env::var("DECODE_CONTEXT") {
        Ok(n) => {
            let n: usize = n.parse().context("DECODE_CONTEXT")?;
            PROMPT.iter().cycle().take(n).copied().collect()
        }
        Err(_) => PROMPT.to_vec(),
    };
    let decode: usize = match std::env::var("DECODE_TOKENS") {
        Ok(n) => n.parse().context("DECODE_TOKENS")?,
        Err(_) => DECODE,
    };
    for n in streams {
        let mut caches: Vec<KvCache> = (0..n).map(|_| KvCache::new(&model)).collect();
        let mut steps: Vec<Step> = caches
            .iter_mut()
            .map(|cache| Step {
                cache,
                tokens: &context,
                logits: Logits::Last,
            })
            .collect();
        let logits = pool.install(|| model.forward(&mut steps, threads > 1))?;
        let mut next: Vec<[u32; 1]> = logits.iter().map(|l| [argmax(l)]).collect();
        let start = Instant::now();
        for _ in 0..decode {
            let mut steps: Vec<Step> = caches
                .iter_mut()
                .zip(&next)
                .map(|(cache, t)| Step {
                    cache,
                    tokens: t,
                    logits: Logits::Last,
                })
                .collect();
            let logits = pool.install(|| model.forward(&mut steps, threads > 1))?;
            next = logits.iter().map(|l| [argmax(l)]).collect();
        }
        let seconds = start.elapsed().as_secs_f64();
        println!(
            "{{\"engine\":\"thaw\",\"threads\":{threads},\"streams\":{n},\"prompt_tokens\":{prompt_tokens},\"decode_context\":{},\"prompt_tokens_per_s\":{:.1},\"decode_tokens_per_s\":{:.1},\"per_stream_tokens_per_s\":{:.1}}}",
            context.len(),
            prompt_tokens as f64 / prefill_ms * 1e3,
            (n * decode) as f64 / seconds,
            decode as f64 / seconds
        );
    }
    Ok(())
}
