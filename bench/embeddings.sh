#!/usr/bin/env bash
# The embedding bench: thaw's forward pass (worker/benches/embeddings.rs, via
# cargo bench) and sentence-transformers' (bench/baselines/st_embeddings.py)
# on the same model and sentences, one after the other, then a table of both
# and the ratio thaw / sentence-transformers. Run on a quiet machine; the two
# halves are only comparable from the same run.
#
#   bench/embeddings.sh
#
# Env: THAW_MODELS (default ~/.cache/thaw/models), THAW_ST_PYTHON (a Python
# with sentence-transformers; default /root/.cache/thaw-st-venv/bin/python),
# CARGO_TARGET_DIR as for any cargo command.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model="${THAW_MODELS:-$HOME/.cache/thaw/models}/all-MiniLM-L6-v2"
python="${THAW_ST_PYTHON:-/root/.cache/thaw-st-venv/bin/python}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

if [[ ! -f "$model/model.safetensors" ]]; then
    echo "skipping: all-MiniLM-L6-v2 is not in $model (run scripts/fetch-models.sh minilm)"
    exit 0
fi

echo "== thaw (cargo bench -p thaw-worker --bench embeddings)"
(cd "$root" && cargo bench -p thaw-worker --bench embeddings -- encode) | tee "$out/thaw.txt"

echo "== sentence-transformers ($python)"
if ! "$python" -c "import sentence_transformers" 2>/dev/null; then
    echo "skipping the baseline: $python cannot import sentence_transformers (set THAW_ST_PYTHON)"
    st_ok=0
else
    HF_HUB_OFFLINE=1 "$python" "$root/bench/baselines/st_embeddings.py" "$model" 2>/dev/null \
        | tee "$out/st.txt"
    st_ok=1
fi

# Criterion prints `encode/batchN  time: [low median high]`; the middle value
# is its estimate. Convert it to milliseconds.
thaw_ms() {
    awk -v name="encode/batch$1" '
        $1 == name { found = 1 }
        found && /time:/ {
            sub(/.*\[/, ""); split($0, v, " ")
            unit = v[4]; ms = v[3]
            if (unit == "s") ms *= 1000; else if (unit == "µs" || unit == "us") ms /= 1000; else if (unit == "ns") ms /= 1e6
            printf "%.3f", ms; exit
        }' "$out/thaw.txt"
}
st_ms() {
    [[ $st_ok == 1 ]] || return 0
    awk -v name="batch$1" '$2 == name { sub("median_ms=", "", $3); printf "%.3f", $3 }' "$out/st.txt"
}

echo
printf '%-8s %12s %14s %12s %14s %16s\n' batch thaw_ms thaw_sent/s st_ms st_sent/s "thaw/st (sent/s)"
for n in 1 8 32; do
    t="$(thaw_ms "$n")"
    s="$(st_ms "$n")"
    awk -v n="$n" -v t="$t" -v s="$s" 'BEGIN {
        tr = (t > 0) ? n * 1000 / t : 0
        if (s > 0) printf "%-8s %12.3f %14.1f %12.3f %14.1f %16.2f\n", n, t, tr, s, n * 1000 / s, s / t
        else       printf "%-8s %12.3f %14.1f %12s %14s %16s\n", n, t, tr, "-", "-", "-"
    }'
done
