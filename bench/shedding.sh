#!/usr/bin/env bash
# Shedding under overload: thaw in front of one slow, capped model (minilm,
# 8 sentences a request, max_instances = 1, max_concurrency = 2, queue
# timeout 2 s). First its capacity is measured closed-loop at saturation
# (2 × max_concurrency clients, so the queue is never empty and nothing is
# shed), then an open-loop run (thaw-bench open-loop: sends on a schedule,
# whatever the answers) offers LOAD × that capacity. Goals: goodput stays at
# least 95 % of capacity; admitted requests meet their deadline; a shed
# (429) is answered at once.
#
# A request's deadline bounds its wait in thaw's queue (QUEUE_TIMEOUT, or
# DEADLINE_MS per request): one admitted to the queue that waits longer is
# answered 504, so "admitted requests meet their deadline" reads as "no
# 504s", and a 200's end-to-end latency is at most the deadline plus one
# service time. Latencies are from each request's scheduled send time
# (coordinated-omission free); the shed latency is also given from the
# actual send, as the scheduler's timer is only a millisecond fine.
#
#   bench/shedding.sh
#
# Env: LOAD (3), CAPACITY_DURATION (15s), DURATION (20s), QUEUE_TIMEOUT
# (2s: the deadline of a request that sends none), DEADLINE_MS (unset: if
# set, each overload request sends x-thaw-queue-timeout-ms), THAW_MODELS
# (~/.cache/thaw/models), CARGO_TARGET_DIR as for any cargo command.
# Needs jq and curl.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model="${THAW_MODELS:-$HOME/.cache/thaw/models}/all-MiniLM-L6-v2"
load="${LOAD:-3}"
capacity_duration="${CAPACITY_DURATION:-15s}"
duration="${DURATION:-20s}"
queue_timeout="${QUEUE_TIMEOUT:-2s}"
for tool in jq curl; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install $tool)"; exit 1; }
done
if [[ ! -f "$model/model.safetensors" ]]; then
    echo "skipping: all-MiniLM-L6-v2 is not in $model (run scripts/fetch-models.sh minilm)"
    exit 0
fi

# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"

cat >"$work/thaw.toml" <<EOF
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
state_dir = "$work/state"

[[models]]
name = "minilm"
source = "$model"
kind = "embedding"
[models.scaling]
min_instances = 1
max_instances = 1
target_concurrency = 2
max_concurrency = 2
[models.queue]
timeout = "$queue_timeout"
EOF
RUST_LOG=warn "$bin/thaw" serve --config "$work/thaw.toml" --worker-bin "$bin/thaw-worker" \
    >"$work/thaw.out" 2>"$work/thaw.err" &
pids+=($!)
for ((i = 0; i < 1200; i++)); do
    ready="$(grep -m1 '"event":"ready"' "$work/thaw.out" || true)"
    [[ -n "$ready" ]] && break
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/thaw.err"; exit 1; }
    sleep 0.05
done
[[ -n "$ready" ]] || { echo "thaw never printed its ready line"; exit 1; }
addr="$(jq -r .address <<<"$ready")"
admin="$(jq -r .admin <<<"$ready")"
for ((i = 0; i < 1200; i++)); do
    n="$(curl -fsS "http://$admin/admin/status" |
        jq '[.models[] | select(.name == "minilm") | .ready_instances] | add // 0')"
    [[ "$n" -ge 1 ]] && break
    sleep 0.05
done
[[ "$n" -ge 1 ]] || { echo "minilm never became ready"; exit 1; }

cat >"$work/body.json" <<'EOF'
{"model":"minilm","input":[
 "The quick brown fox jumps over the lazy dog.",
 "A serverless platform scales inference workers from zero.",
 "Embeddings map sentences to vectors in a shared space.",
 "The gateway sheds requests it cannot serve in time.",
 "Copy-on-write forks share the model's weights between workers.",
 "Credit scoring takes ten features and returns one probability.",
 "Latency percentiles say more than an average does.",
 "An open-loop load generator sends on a schedule."]}
EOF
url="http://$addr/v1/embeddings"
tb=("$bin/thaw-bench")

echo "== warm-up (closed loop, 2 clients, 3s)" >&2
"${tb[@]}" closed-loop --url "$url" --body-file "$work/body.json" --concurrency 2 --duration 3s \
    >"$work/warm.json"
echo "== capacity (closed loop, 4 clients, $capacity_duration)" >&2
"${tb[@]}" closed-loop --url "$url" --body-file "$work/body.json" --concurrency 4 \
    --duration "$capacity_duration" | tee "$work/capacity.json" >&2
capacity="$(jq '.statuses["200"].rate_per_s // 0' "$work/capacity.json")"
awk -v c="$capacity" 'BEGIN { exit !(c > 0) }' || { echo "no successful request: capacity 0"; exit 1; }
rate="$(awk -v c="$capacity" -v l="$load" 'BEGIN { printf "%.2f", c * l }')"

headers=()
deadline_ms="$(awk -v t="$queue_timeout" 'BEGIN { v = t + 0; if (t ~ /ms$/) print v; else print v * 1000 }')"
if [[ -n "${DEADLINE_MS:-}" ]]; then
    headers=(--header "x-thaw-queue-timeout-ms: $DEADLINE_MS")
    deadline_ms="$DEADLINE_MS"
fi
echo "== overload (open loop, $rate req/s = $load × capacity, $duration)" >&2
"${tb[@]}" open-loop --url "$url" --body-file "$work/body.json" --rate "$rate" \
    --duration "$duration" --connections 2048 --drain 30s "${headers[@]}" \
    | tee "$work/overload.json" >&2
curl -fsS "http://$admin/metrics" | grep -E '^thaw_(shed|requests)[a-z_]*\{[^}]*minilm' \
    >"$work/metrics.txt" || true

echo
echo "shedding: minilm (8 sentences), 1 instance × max_concurrency 2, deadline ${deadline_ms} ms"
jq -rn --slurpfile cap "$work/capacity.json" --slurpfile o "$work/overload.json" \
    --argjson deadline_ms "$deadline_ms" '
  $cap[0] as $c | $o[0] as $o | ($c.statuses["200"].rate_per_s) as $capacity
  | ($o.statuses["200"] // {count: 0, latency_us: {}}) as $ok
  | ($o.statuses["429"] // {count: 0, latency_us: {}, latency_from_send_us: {}}) as $shed
  | ($o.statuses["504"].count // 0) as $late
  | def ms: if . == null then "-" else (. / 1000 * 100 | round / 100 | tostring) end;
  def pct(a; b): if b == 0 then "-" else "\((a / b) * 1000 | round / 10) %" end;
  ["capacity (closed loop, 4 clients)", "\($capacity * 100 | round / 100) req/s"],
  ["offered (open loop)", "\($o.rate_per_s) req/s for \($o.duration_s) s, \($o.sent) sent"],
  ["goodput (200s done in the window)", "\($o.goodput_per_s * 100 | round / 100) req/s"],
  ["goodput ÷ capacity (goal ≥ 0.95)", "\($o.goodput_per_s / $capacity * 1000 | round / 1000)"],
  ["outcomes", ($o.statuses | to_entries | map("\(.key): \(.value.count)") | join(", "))],
  ["each request one outcome", "\($o.each_request_one_outcome)"],
  ["429 share of sent", pct($shed.count; $o.sent)],
  ["admitted that missed the deadline (504 ÷ (200 + 504))", pct($late; $ok.count + $late)],
  ["200 latency p50 / p99 / max ms", "\($ok.latency_us.p50 | ms) / \($ok.latency_us.p99 | ms) / \($ok.latency_us.max | ms)"],
  ["deadline on the queue wait ms", "\($deadline_ms)"],
  ["200 p99 within the deadline, end to end", "\(($ok.latency_us.p99 // 0) <= $deadline_ms * 1000)"],
  ["429 latency from send p50 / p99 / max ms", "\($shed.latency_from_send_us.p50 | ms) / \($shed.latency_from_send_us.p99 | ms) / \($shed.latency_from_send_us.max | ms)"],
  ["429 latency from schedule p50 / p99 ms", "\($shed.latency_us.p50 | ms) / \($shed.latency_us.p99 | ms)"],
  ["send lag p50 / p99 / max ms (client health)", "\($o.send_lag_us.p50 | ms) / \($o.send_lag_us.p99 | ms) / \($o.send_lag_us.max | ms)"]
  | @tsv' | column -t -s $'\t'
echo
echo "gateway counters:"
cat "$work/metrics.txt"
