"""llama.cpp on the same GGUF, the baseline of bench/chat.sh: prompt
processing tokens/s (the same 128-token prompt thaw's decode_speed runs,
PROMPT_TOKENS to change it) and greedy decode tokens/s of one sequence
(after the 14-token prompt, or DECODE_CONTEXT tokens), on THREADS threads.
Prints one JSON object.

    python bench/baselines/llama_cpp_speed.py GGUF [THREADS]
"""
import json
import os
import sys
import time

from llama_cpp import Llama

PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 28, 2, 198, 1, 4093, 198]
DECODE = 64

path = sys.argv[1]
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
prompt_tokens = int(os.environ.get("PROMPT_TOKENS", "128"))
context_tokens = int(os.environ.get("DECODE_CONTEXT", str(len(PROMPT))))
# Every position's logits are kept, so that a long context's last ones can
# be read the way a short one's are.
model = Llama(model_path=path, n_ctx=max(1024, prompt_tokens, context_tokens + DECODE),
              n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False,
              logits_all=context_tokens > 512)
long = (PROMPT * (prompt_tokens // len(PROMPT) + 1))[:prompt_tokens]
context = (PROMPT * (context_tokens // len(PROMPT) + 1))[:context_tokens]

prefill = None
for _ in range(2):  # the first run warms up
    model.reset()
    start = time.perf_counter()
    model.eval(long)
    prefill = time.perf_counter() - start

decode = None
for _ in range(2):
    model.reset()
    model.eval(context)
    # Greedy: the argmax of the last logits, then one eval per token, as
    # thaw's benchmark does (no sampler chain in the loop).
    start = time.perf_counter()
    for _ in range(DECODE):
        logits = model.scores[model.n_tokens - 1]
        model.eval([int(logits.argmax())])
    decode = time.perf_counter() - start

print(json.dumps({
    "engine": "llama.cpp",
    "version": getattr(sys.modules["llama_cpp"], "__version__", "?"),
    "threads": threads,
    "streams": 1,
    "prompt_tokens": prompt_tokens,
    "decode_context": context_tokens,
    "prompt_tokens_per_s": round(prompt_tokens / prefill, 1),
    "decode_tokens_per_s": round(DECODE / decode, 1),
}))
