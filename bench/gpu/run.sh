#!/usr/bin/env bash
# thaw's GPU suite, for a machine with an NVIDIA GPU, no network and no Rust
# toolchain: the worker is built here (scripts/build-cuda.sh; carry
# ~/.cache/thaw-cuda/target/release/thaw-worker.stripped, 58 MB) and this
# directory goes with it. Writes OUT/gpu.json: nvidia-smi's view, thaw's
# GPU inventory, CUDA context creation, the host-to-device copy ceiling
# (PyTorch, pinned and pageable), and thaw's upload bandwidth from the page
# cache for synthetic snapshots of SIZES GB (random bytes) with its ratio to
# the ceiling; standby activation to first output for synthetic BERT
# models of MiniLM's, BERT-large's and a 1.3 B shape (synthetic_bert.py),
# with and without the weights registered ahead (--preregister), against a
# plain worker process started on the same model (on the CPU when there is
# no GPU); hibernation (thaw-worker --hibernate / --resume
# on a worker serving the BERT-large-shaped model: timings, GPU memory
# released, same output after) where the driver supports it; SmolLM2 served
# on the GPU and on the CPU (the baseline, thaw's own decoder): load, time to
# first token, decode tokens/s for one stream and four, when THAW_GPU_CHAT
# names its GGUF or the GGUF's header (`synthetic_gguf.py header`: 1.8 MB,
# weights synthesized there; the real file is over one call's 64 MiB);
# the gateway's hibernation tier end to end (`thaw serve` scaling a GPU
# model to zero and back: hibernated, resumed, same worker and output)
# when THAW_GPU_GATEWAY names the thaw binary and the driver supports it.
# Under 8 minutes on an H200 with SIZES="1 16".
#
#   [THAW_GPU_CHAT=GGUF|HEADER] [THAW_GPU_GATEWAY=THAW] bench/gpu/run.sh WORKER [OUT] [SIZES]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
worker="${1:?usage: bench/gpu/run.sh WORKER [OUT] [SIZES]}"
out="${2:-$PWD/gpu-report}"
sizes="${3:-1 16}"
# Python with PyTorch when the machine has one (its CUDA libraries serve the
# worker too); any python3 otherwise.
python="${THAW_GPU_PYTHON:-python3}"
extra=()
if [ -n "${THAW_GPU_CHAT:-}" ]; then
  extra=(--chat "$THAW_GPU_CHAT")
fi
if [ -n "${THAW_GPU_GATEWAY:-}" ]; then
  extra+=(--gateway "$THAW_GPU_GATEWAY")
fi
# shellcheck disable=SC2086
exec timeout "${THAW_GPU_SUITE_TIMEOUT:-480}" "$python" "$here/suite.py" --worker "$worker" --out "$out" --sizes-gb $sizes "${extra[@]}"
