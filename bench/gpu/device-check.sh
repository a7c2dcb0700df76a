#!/usr/bin/env bash
# Every GPU check of a device session in one run, for the device machine
# (no network, no Rust): the GPU tests (worker/tests/gpu.rs), then the GPU
# suite. PACK is what `scripts/build-cuda.sh --pack PACK` wrote here:
#
#   thaw-worker.xz, gpu-tests.xz,  the CUDA worker, the GPU test binary and
#   thaw.xz                        the gateway, stripped and xz-compressed
#                                  (about 25 MB together)
#   smollm2.header                 SmolLM2's GGUF header: the suite's chat
#                                  step synthesizes the weights under it
#   smollm2.gguf.part-aa           optional (--with-gguf), the first piece of
#                                  the real GGUF (94 MB: more than one call
#                                  carries); PACK-gguf/ holds the rest, for a
#                                  second call right after the first (carry
#                                  PACK in one, PACK-gguf in the other, run
#                                  this in the second); with it the chat GPU
#                                  test compares with llama.cpp's fixture
#
# Writes OUT/gpu-tests.txt and the suite's OUT/gpu.json, within 3 + 6
# minutes (the suite alone took 83 s on an H200 before its newer steps):
# one device call's 10 at most.
#
#   bench/gpu/device-check.sh PACK OUT
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pack="$(cd "${1:?usage: bench/gpu/device-check.sh PACK OUT}" && pwd)"
out="${2:?usage: bench/gpu/device-check.sh PACK OUT}"
mkdir -p "$out"
python="${THAW_GPU_PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for bin in thaw-worker gpu-tests thaw; do
    if [[ -f "$pack/$bin.xz" ]]; then
        "$python" -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)' "$pack/$bin.xz" "$work/$bin"
        chmod +x "$work/$bin"
    fi
done
[[ -x "$work/thaw-worker" ]] || { echo "no thaw-worker.xz in $pack" >&2; exit 2; }

chat_dir=""
if compgen -G "$pack-gguf/smollm2.gguf.part-*" >/dev/null \
    && compgen -G "$pack/smollm2.gguf.part-*" >/dev/null; then
    chat_dir="$work/smollm2"
    mkdir -p "$chat_dir"
    cat "$pack"/smollm2.gguf.part-* "$pack-gguf"/smollm2.gguf.part-* \
        >"$chat_dir/SmolLM2-135M-Instruct.Q4_1.gguf"
fi

# The CUDA libraries of the machine's PyTorch, which the binaries link
# against at run time.
libs="$(cd "$here" && "$python" -c 'import suite; print(":".join(suite.cuda_library_path()))')"
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

if [[ -x "$work/gpu-tests" ]]; then
    "$python" "$here/synthetic_bert.py" "$work/minilm" --shape minilm >/dev/null
    THAW_WORKER_BIN="$work/thaw-worker" THAW_GPU_TEST_MODEL="$work/minilm" \
        THAW_GPU_TEST_CHAT="${chat_dir:-$work/no-smollm2}" \
        timeout 180 "$work/gpu-tests" --test-threads 1 --nocapture >"$out/gpu-tests.txt" 2>&1
    echo "gpu tests: exit $? (OUT/gpu-tests.txt)" >&2
    tail -3 "$out/gpu-tests.txt" >&2
fi

chat="${chat_dir:+$chat_dir/SmolLM2-135M-Instruct.Q4_1.gguf}"
if [[ -z "$chat" && -f "$pack/smollm2.header" ]]; then
    chat="$pack/smollm2.header"
fi
gateway=""
[[ -x "$work/thaw" ]] && gateway="$work/thaw"
THAW_GPU_CHAT="$chat" THAW_GPU_GATEWAY="$gateway" THAW_GPU_SUITE_TIMEOUT=360 \
    "$here/run.sh" "$work/thaw-worker" "$out" "${THAW_GPU_SIZES:-1 16}"
