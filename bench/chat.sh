#!/usr/bin/env bash
# SmolLM2 generation speed against llama.cpp on the same GGUF, in one run:
#  - thaw's model without HTTP (worker/examples/decode_speed.rs): prompt
#    processing tokens/s (128 tokens), decode tokens/s of 1 and 4 sequences
#    generated together;
#  - llama.cpp (llama-cpp-python, built from source by pip with cmake into
#    a cached venv): prompt processing and decode of one sequence, same
#    prompt, same thread count;
#  - both again with a long prompt (LONG_PROMPT tokens, 2048 by default),
#    where attention's cost grows with the square of the length, and decode
#    after it (each new token attends to the whole prompt);
#  - time to first token of a streamed completion, straight to a worker and
#    through the gateway (thaw-bench ttft), one request at a time.
# Goals: decode >= 0.8x llama.cpp; 4 streams >= 2x one stream's aggregate
# tokens/s; first token through the gateway ~ direct. Run on a quiet machine.
#
#   bench/chat.sh
#
# Env: REPS (20), THREADS (nproc), LONG_PROMPT (2048), THAW_LLAMA_CPP_PYTHON (a Python with
# llama-cpp-python; default: ~/.cache/thaw-llamacpp-venv, created if
# missing, which takes ~10 minutes of compiling on 2 cores), THAW_MODELS.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
models="${THAW_MODELS:-$HOME/.cache/thaw/models}"
gguf="$models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
[[ -f "$gguf" ]] || "$root/scripts/fetch-models.sh" smollm2
threads="${THREADS:-$(nproc)}"
reps="${REPS:-20}"
for tool in jq curl; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install $tool)"; exit 1; }
done

python="${THAW_LLAMA_CPP_PYTHON:-}"
if [[ -z "$python" ]]; then
    venv="$HOME/.cache/thaw-llamacpp-venv"
    if ! "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
        echo "== building llama-cpp-python into $venv (cmake, several minutes)" >&2
        python3 -m venv "$venv"
        CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF" "$venv/bin/pip" install -q llama-cpp-python >&2
    fi
    python="$venv/bin/python"
fi

source "$root/bench/lib.sh"
(cd "$root" && cargo build --release -p thaw-worker --example decode_speed) >&2

echo "== thaw, no HTTP" >&2
RAYON_NUM_THREADS="$threads" "$bin/examples/decode_speed" "$gguf" 1 4 >"$work/thaw.jsonl"
echo "== llama.cpp" >&2
"$python" "$root/bench/baselines/llama_cpp_speed.py" "$gguf" "$threads" >"$work/llama.json"
long="${LONG_PROMPT:-2048}"
echo "== a $long-token prompt: thaw, then llama.cpp" >&2
PROMPT_TOKENS="$long" DECODE_CONTEXT="$long" RAYON_NUM_THREADS="$threads" \
    "$bin/examples/decode_speed" "$gguf" 1 >"$work/thaw-long.json"
PROMPT_TOKENS="$long" DECODE_CONTEXT="$long" \
    "$python" "$root/bench/baselines/llama_cpp_speed.py" "$gguf" "$threads" >"$work/llama-long.json"

echo "== time to first token: direct, then through the gateway" >&2
printf '{"model":"smollm2","prompt":"The three primary colors are","max_tokens":32,"temperature":0,"stream":true}' >"$work/body.json"
"$bin/thaw-worker" --model "$models/smollm2" --name smollm2 --listen 127.0.0.1:0 \
    >"$work/worker.out" 2>"$work/worker.err" &
pids+=($!)
direct="$(wait_ready "$work/worker.out" "${pids[-1]}" | jq -r .address)"
"$bin/thaw-bench" ttft --address "$direct" --body-file "$work/body.json" --reps "$reps" >"$work/direct.json"
kill "${pids[-1]}"

cat >"$work/thaw.toml" <<CONFIG
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
state_dir = "$work/state"

[[models]]
name = "smollm2"
source = "$models/smollm2"
kind = "chat"
[models.scaling]
min_instances = 1
max_instances = 1
target_concurrency = 4
max_concurrency = 8
CONFIG
RUST_LOG=warn "$bin/thaw" serve --config "$work/thaw.toml" --worker-bin "$bin/thaw-worker" \
    >"$work/thaw.out" 2>"$work/thaw.err" &
pids+=($!)
ready="$(wait_ready "$work/thaw.out" "${pids[-1]}")"
gateway="$(jq -r .address <<<"$ready")"
admin="$(jq -r .admin <<<"$ready")"
for ((i = 0; i < 1200; i++)); do
    n="$(curl -fsS "http://$admin/admin/status" | jq '[.models[0].instances[]] | length')"
    [[ "$n" -ge 1 ]] && break
    sleep 0.05
done
"$bin/thaw-bench" ttft --address "$gateway" --body-file "$work/body.json" --reps "$reps" >"$work/gateway.json"

jq -n --slurpfile thaw "$work/thaw.jsonl" --slurpfile llama "$work/llama.json" \
    --slurpfile direct "$work/direct.json" --slurpfile gateway "$work/gateway.json" \
    --slurpfile thaw_long "$work/thaw-long.json" --slurpfile llama_long "$work/llama-long.json" \
    --arg threads "$threads" '
  ($thaw[] | select(.streams == 1)) as $one | ($thaw[] | select(.streams == 4)) as $four |
  {
    threads: ($threads | tonumber),
    thaw_one_stream: $one, thaw_four_streams: $four, llama_cpp: $llama[0],
    decode_vs_llama_cpp: ($one.decode_tokens_per_s / $llama[0].decode_tokens_per_s),
    prompt_vs_llama_cpp: ($one.prompt_tokens_per_s / $llama[0].prompt_tokens_per_s),
    long_prompt: {
      tokens: $thaw_long[0].prompt_tokens,
      thaw_tokens_per_s: $thaw_long[0].prompt_tokens_per_s,
      llama_cpp_tokens_per_s: $llama_long[0].prompt_tokens_per_s,
      ratio: ($thaw_long[0].prompt_tokens_per_s / $llama_long[0].prompt_tokens_per_s),
      decode_after_it: {
        thaw_tokens_per_s: $thaw_long[0].decode_tokens_per_s,
        llama_cpp_tokens_per_s: $llama_long[0].decode_tokens_per_s,
        ratio: ($thaw_long[0].decode_tokens_per_s / $llama_long[0].decode_tokens_per_s)
      }
    },
    four_streams_vs_one: ($four.decode_tokens_per_s / $one.decode_tokens_per_s),
    ttft_direct: $direct[0], ttft_gateway: $gateway[0],
    ttft_added_p50_ms: ($gateway[0].first_token.p50_ms - $direct[0].first_token.p50_ms)
  }'
