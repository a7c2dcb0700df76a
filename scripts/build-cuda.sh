#!/usr/bin/env bash
# Builds the CUDA variant of thaw-worker (`--features cuda`) on a machine
# without a GPU and without a system CUDA toolkit:
#
#   scripts/build-cuda.sh            # → ~/.cache/thaw-cuda/target/release/thaw-worker
#   scripts/build-cuda.sh --check    # cargo check only (what scripts/test runs)
#   scripts/build-cuda.sh --pack DIR [--with-gguf]
#                                    # and what a device session carries in DIR
#                                    # (bench/gpu/device-check.sh runs it there)
#
# The toolkit comes from NVIDIA's PyPI wheels (CUDA 13.0: nvcc, cicc, the
# CRT and CCCL headers, cudart, nvrtc, cuBLAS, cuRAND), each checked
# against its sha256 and unpacked into ~/.cache/thaw-cuda (THAW_CUDA_CACHE
# overrides), once. candle links the CUDA libraries at build time; the
# driver's libcuda, which only a machine with a GPU has, is replaced at link
# time by a stub generated from cuda.h's declarations (the real one is found
# at run time). Kernels are compiled for compute capability 9.0
# (CUDA_COMPUTE_CAP overrides), as PTX of CUDA 13.0, which a driver >= 580
# accepts. The default build stays free of CUDA.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${THAW_CUDA_CACHE:-$HOME/.cache/thaw-cuda}"
cuda="$cache/root/nvidia/cu13"
wheels=(
    "nvidia-cuda-nvcc==13.0.88 56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03"
    "nvidia-nvvm==13.0.88 c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0"
    "nvidia-cuda-crt==13.0.88 2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4"
    "nvidia-cuda-runtime==13.0.96 7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548"
    "nvidia-cuda-cccl==13.0.85 e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649"
    "nvidia-cuda-nvrtc==13.0.88 ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575"
    "nvidia-cublas==13.0.2.14 0cf238ffdbe46c00cb9aa98e7bca745c223a5ca5a53e686ac8b3e5a08fe80d6c"
    "nvidia-curand==10.4.0.35 1aee33a5da6e1db083fe2b90082def8915f30f3248d5896bcec36a579d941bfc"
)

source "$root/scripts/lib.sh"

install_toolkit() {
    command -v g++ >/dev/null || apt_install g++
    command -v unzip >/dev/null || apt_install unzip
    command -v pip3 >/dev/null || command -v pip >/dev/null || apt_install python3-pip
    local pip
    pip="$(command -v pip3 || command -v pip)"
    mkdir -p "$cache/wheels"
    for entry in "${wheels[@]}"; do
        local spec="${entry% *}" sum="${entry#* }" name file
        name="${spec%%==*}"
        file="$(ls "$cache/wheels/${name//-/_}-${spec#*==}-"*.whl 2>/dev/null | head -1 || true)"
        if [[ -z "$file" ]]; then
            echo "== downloading $spec" >&2
            "$pip" download --quiet --no-deps --dest "$cache/wheels" "$spec" >&2
            file="$(ls "$cache/wheels/${name//-/_}-${spec#*==}-"*.whl | head -1)"
        fi
        echo "$sum  $file" | sha256sum --check --quiet || {
            echo "$file: sha256 mismatch; delete it and rerun" >&2
            exit 1
        }
    done
    rm -rf "$cache/root.new"
    mkdir -p "$cache/root.new"
    for w in "$cache"/wheels/*.whl; do
        unzip -q -o "$w" 'nvidia/*' -d "$cache/root.new"
    done
    local lib="$cache/root.new/nvidia/cu13/lib"
    # Unversioned names for the linker.
    for so in cudart cublas cublasLt nvrtc curand; do
        ln -sf "lib$so.so.13" "$lib/lib$so.so" 2>/dev/null || true
        [[ -e "$lib/lib$so.so.13" ]] || ln -sf "$(cd "$lib" && ls "lib$so.so."* | head -1)" "$lib/lib$so.so"
    done
    # libcuda: a stub exporting every driver function cuda.h declares,
    # including the versioned names its macros map to.
    mkdir -p "$lib/stubs"
    local header="$cache/root.new/nvidia/cu13/include/cuda.h"
    {
        grep -oE '\bcu[A-Z][A-Za-z0-9_]*\s*\(' "$header" | sed -E 's/\s*\($//'
        grep -oE '#define\s+cu[A-Z][A-Za-z0-9_]*\s+cu[A-Z][A-Za-z0-9_]*' "$header" | awk '{print $3}'
    } | sort -u | awk '{print "void " $1 "(void) {}"}' >"$lib/stubs/libcuda.c"
    gcc -shared -fPIC -o "$lib/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 "$lib/stubs/libcuda.c"
    rm -rf "$cache/root"
    mv "$cache/root.new" "$cache/root"
}

if [[ ! -x "$cuda/bin/nvcc" || ! -e "$cuda/lib/stubs/libcuda.so" ]]; then
    install_toolkit
fi

export CUDA_ROOT="$cuda" CUDA_PATH="$cuda" CUDA_HOME="$cuda"
export PATH="$cuda/bin:$PATH"
export LIBRARY_PATH="$cuda/lib:$cuda/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
nvcc --version | tail -2 >&2

cd "$root"
# In the cache, so that CI's runs reuse the compiled kernels; --check uses
# the release profile too, to share candle-kernels' build-script output.
target="${CUDA_TARGET_DIR:-$cache/target}"
if [[ "${1:-}" == "--check" ]]; then
    cargo check --locked --release -p thaw-worker --features cuda --target-dir "$target"
    exit 0
fi
cargo build --locked --release -p thaw-worker --features cuda --target-dir "$target"
# Without line tables (58 MB instead of 109): what gets copied to a GPU
# machine.
strip -o "$target/release/thaw-worker.stripped" "$target/release/thaw-worker"
echo "built: $target/release/thaw-worker (stripped copy: thaw-worker.stripped)" >&2
if [[ "${1:-}" == "--pack" ]]; then
    # What a device session carries (bench/gpu/device-check.sh runs it
    # there): the worker, the GPU test binary and the gateway, stripped and
    # compressed,
    # and SmolLM2's GGUF header; with --with-gguf the real GGUF too, in
    # pieces for more than one call.
    pack="${2:?usage: scripts/build-cuda.sh --pack DIR [--with-gguf]}"
    mkdir -p "$pack"
    tests="$(cargo test --locked --release -p thaw-worker --features cuda --target-dir "$target" \
        --test gpu --no-run --message-format=json \
        | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gpu":
        print(m["executable"])' | tail -1)"
    strip -o "$target/release/gpu-tests.stripped" "$tests"
    # The gateway needs no CUDA: the default build, for the suite's
    # hibernation tier end to end.
    cargo build --locked --release -p thaw-gateway --bin thaw
    strip -o "$target/release/thaw.stripped" "$root/target/release/thaw"
    for bin in thaw-worker gpu-tests thaw; do
        xz -T0 -6 -c "$target/release/$bin.stripped" >"$pack/$bin.xz"
    done
    gguf="$THAW_MODELS/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    python3 "$root/bench/gpu/synthetic_gguf.py" header "$gguf" "$pack/smollm2.header" >/dev/null
    if [[ "${3:-}" == "--with-gguf" ]]; then
        split -b 44M "$gguf" "$pack/smollm2.gguf.part-"
        # The first piece goes with the binaries, the rest in a second call.
        mkdir -p "$pack-gguf"
        mv "$pack"/smollm2.gguf.part-a[b-z] "$pack-gguf/"
    fi
    ls -l "$pack" >&2
fi
