#!/usr/bin/env bash
# Cold starts of MiniLM from every warmth tier, in one run (thaw-bench
# cold-start; see bench/src/cold_start.rs): a plain exec of thaw-worker on the
# source directory and on the snapshot, a template's start from the snapshot,
# a fork from a warm template to its first response, FORKS workers forked at
# once, their memory (PSS) against one exec'd worker's, then through the
# gateway: warm latency and the first response after scale to zero from the
# template tier and from the snapshot tier, with the gateway's phase
# histograms; and the seed's approach, a fresh Python process with
# sentence-transformers, as the baseline. Goals: template tier <= warm +
# 10 ms; snapshot tier <= warm + 150 ms; 0 -> 8 ready workers <= 100 ms;
# 8 workers <= 1.5x one worker's memory. Run on a quiet machine.
#
#   bench/cold-start.sh
#
# Env: REPS (10), FORKS (8), THAW_ST_PYTHON (a Python with
# sentence-transformers; default /root/.cache/thaw-st-venv/bin/python; the
# baseline is reported as skipped without one), THAW_MODELS
# (~/.cache/thaw/models), CARGO_TARGET_DIR as for any cargo command.
# Prints a summary, then the whole JSON report.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model="${THAW_MODELS:-$HOME/.cache/thaw/models}/all-MiniLM-L6-v2"
if [[ ! -f "$model/model.safetensors" ]]; then
    echo "skipping: all-MiniLM-L6-v2 is not in $model (run scripts/fetch-models.sh minilm)"
    exit 0
fi
source "$root/bench/lib.sh"

python="${THAW_ST_PYTHON:-/root/.cache/thaw-st-venv/bin/python}"
args=()
[[ -x "$python" ]] && args+=(--python "$python")

"$bin/thaw-bench" cold-start --bin-dir "$bin" --source "$model" \
    --reps "${REPS:-10}" --forks "${FORKS:-8}" \
    --python-script "$root/bench/baselines/st_cold_start.py" \
    --work "$work/cold" "${args[@]}" > "$work/report.json"

python3 - "$work/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
m = lambda v: v["median_ms"] if isinstance(v, dict) and "median_ms" in v else float("nan")
g, t, py = r["gateway"], r["template"], r["python_sentence_transformers"]
warm = m(g["warm"])
rows = [
    ("gateway, warm request", m(g["warm"]), ""),
    ("gateway, cold from the template tier", m(g["template_tier"]), f"warm + {m(g['template_tier']) - warm:.1f} ms (goal <= +10)"),
    ("gateway, cold from the snapshot tier", m(g["snapshot_tier"]), f"warm + {m(g['snapshot_tier']) - warm:.1f} ms (goal <= +150)"),
    ("fork from a warm template to first response", m(t["fork_to_first_response"]), f"fork {m(t['fork']):.2f} ms, child init {m(t['child_init']):.2f} ms, ready to response {m(t['ready_to_first_response']):.2f} ms"),
    ("template start from the snapshot", m(t["template_start"]), f"open {m(t['template_snapshot_open']):.2f} ms, build + warm-up {m(t['template_model_build']):.1f} ms"),
    ("exec thaw-worker on the snapshot, to first response", m(r["exec_snapshot"]["start_to_first_response"]), ""),
    ("exec thaw-worker on the source, to first response", m(r["exec_source"]["start_to_first_response"]), ""),
    ("snapshot build (once)", r["snapshot_build_ms"], ""),
]
if "skipped" in py:
    rows.append(("python + sentence-transformers (seed)", float("nan"), "skipped: " + py["skipped"]))
else:
    peak = max(py["peak_rss_mib"])
    rows.append(("python + sentence-transformers (seed)", m(py["start_to_answer"]), f"peak {peak:.0f} MiB; {m(py['start_to_answer']) / m(g['template_tier']):.0f}x the template tier"))
print(f"{'what':55} {'median ms':>10}  notes")
for name, v, note in rows:
    print(f"{name:55} {v:10.1f}  {note}")
mem = t["memory"]
print(f"\n{t['fan_out']['workers']} workers forked at once, all ready: {t['fan_out']['all_ready_ms']:.1f} ms (goal <= 100)")
print(f"memory: {mem['workers']} forked workers PSS {mem['workers_pss_kib'] / 1024:.0f} MiB + template {mem['template_pss_kib'] / 1024:.0f} MiB"
      f" vs one exec'd worker {mem['one_exec_worker_pss_kib'] / 1024:.0f} MiB:"
      f" {mem['workers_and_template_over_one_worker']:.2f}x with the template, {mem['workers_over_one_worker']:.2f}x without (goal <= 1.5)")
print("\ngateway phases (mean ms):")
for k, v in sorted(g["phases"].items()):
    print(f"  {k:60} {v['mean_ms']:9.2f}  (n={v['count']:.0f})")
PY
echo
cat "$work/report.json"
