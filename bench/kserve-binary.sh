#!/usr/bin/env bash
# KServe v2 infer with JSON tensors against the binary tensor data
# extension, through tritonclient (NVIDIA's own KServe v2 HTTP client, whose
# default is binary), on one credit-score worker and one MiniLM worker:
# latency per request for a batch of 1 and 2048 feature rows, and of 32
# short sentences, the two encodings alternating in blocks so that the
# machine's noise hits both alike. Prints one line per case with the
# medians and the ratio JSON / binary.
#
#   bench/kserve-binary.sh        # needs python3 with tritonclient[http], numpy
#
# Env: ROUNDS (5 blocks per encoding), PER_BLOCK (40 requests), CARGO_TARGET_DIR.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
"$python" -c 'import tritonclient.http, numpy' 2>/dev/null || {
    echo "needs python3 with tritonclient[http] and numpy (pip install 'tritonclient[http]' numpy)" >&2
    exit 1
}
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
models="${THAW_MODELS:-$HOME/.cache/thaw/models}"

start_worker() { # name dir: sets $address to where it listens
    "$bin/thaw-worker" --model "$2" --name "$1" --listen 127.0.0.1:0 >"$work/$1.out" 2>"$work/$1.err" &
    pids+=($!)
    address="$(wait_ready "$work/$1.out" $! | sed -n 's/.*"address":"\([^"]*\)".*/\1/p')"
}
start_worker credit-score "$root/configs/models/credit-score"
credit="$address"
start_worker minilm "$models/all-MiniLM-L6-v2"
minilm="$address"

ROUNDS="${ROUNDS:-5}" PER_BLOCK="${PER_BLOCK:-40}" "$python" - "$root" "$credit" "$minilm" <<'EOF'
import os, statistics, sys, time
import numpy as np
import tritonclient.http as http

root, credit, minilm = sys.argv[1:4]
rounds, per_block = int(os.environ["ROUNDS"]), int(os.environ["PER_BLOCK"])
with open(os.path.join(root, "bench/baselines/short_sentences.txt"), encoding="utf-8") as f:
    sentences = [l.strip() for l in f if l.strip()][:32]

def case(url, model, name, datatype, array, output):
    client = http.InferenceServerClient(url)
    def call(binary):
        i = http.InferInput(name, list(array.shape), datatype)
        i.set_data_from_numpy(array, binary_data=binary)
        o = http.InferRequestedOutput(output, binary_data=binary)
        return client.infer(model, [i], outputs=[o]).as_numpy(output)
    assert np.array_equal(call(True), call(False)), "binary and JSON answers differ"
    times = {True: [], False: []}
    for _ in range(rounds):
        for binary in (False, True):
            for _ in range(per_block):
                t = time.perf_counter()
                call(binary)
                times[binary].append(time.perf_counter() - t)
    j, b = (statistics.median(times[x]) * 1e3 for x in (False, True))
    return j, b

rng = np.random.default_rng(0)
for rows in (1, 2048):
    x = rng.uniform(0, 100, (rows, 10)).astype(np.float32)
    j, b = case(credit, "credit-score", "features", "FP32", x, "probability")
    print(f"credit-score rows={rows}: json {j:.3f} ms, binary {b:.3f} ms, json/binary {j/b:.2f}x")
t = np.array([s.encode() for s in sentences], dtype=np.object_)
j, b = case(minilm, "minilm", "text", "BYTES", t, "embedding")
print(f"minilm texts=32: json {j:.3f} ms, binary {b:.3f} ms, json/binary {j/b:.2f}x")
EOF
