//! Measures candle's quantized-llama decode speed on the SmolLM2 GGUF, to
//! choose the CPU code generation (see README, "CPU requirements"):
//!
//!     cargo run --release -p thaw-worker --example decode_speed -- \
//!         ~/.cache/thaw/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf 64
//!
//! Decodes greedily from a fixed prompt of token ids and prints tokens/s.

use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: decode_speed GGUF [TOKENS]"))?;
    let tokens: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(64);
    let device = Device::Cpu;
    let mut file = std::fs::File::open(&path)?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut file)?;
    let mut model = ModelWeights::from_gguf(content, &mut file, &device)?;

    let prompt: Vec<u32> = vec![
        1, 9690, 198, 2683, 359, 253, 5356, 5646, 28, 2, 198, 1, 4093, 198,
    ];
    let input = Tensor::new(prompt.as_slice(), &device)?.unsqueeze(0)?;
    let start = Instant::now();
    let logits = model.forward(&input, 0)?;
    let prefill = start.elapsed();
    let mut next = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
    let start = Instant::now();
    for i in 0..tokens {
        let input = Tensor::new(&[next], &device)?.unsqueeze(0)?;
        let logits = model.forward(&input, prompt.len() + i)?;
        next = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
    }
    let decode = start.elapsed();
    println!(
        "prefill {} tokens: {:.1} ms; decode {tokens} tokens: {:.1} tokens/s",
        prompt.len(),
        prefill.as_secs_f64() * 1e3,
        tokens as f64 / decode.as_secs_f64()
    );
    Ok(())
}
