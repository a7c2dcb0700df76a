#!/usr/bin/env bash
# Gateway overhead: latency and throughput of a cheap request (credit-score
# KServe v2 infer) sent (a) straight to a worker, (b) through thaw, (c)
# through nginx, all in one run, then a table with the medians over the
# rounds and the differences. Goals: thaw adds at most 150 µs to p50 over
# direct; thaw's throughput is at least nginx's.
#
#   bench/gateway-overhead.sh
#
# The workers: thaw starts its own (min = max = 1 instance, max_concurrency
# 64) on a unix socket; nginx proxies to that same worker's socket (an
# upstream with keepalive), so (b) and (c) measure two proxies in front of
# one process. Direct is measured twice: direct-unix is that same worker
# over its socket, direct-tcp a second worker of the model on a TCP port.
#
# Two load tools, each closed loop with keep-alive: wrk (TCP only, so no
# direct-unix) and thaw-bench closed-loop. One connection (unloaded
# latency), then CONNS connections (throughput; wrk on WRK_THREADS
# threads), DURATION each, ROUNDS rounds; the targets alternate within a
# round so that the machine's noise hits all of them alike.
#
# The wrk runs also divide the CPU time (user + system, from /proc) that
# the gateway, nginx and the worker spent during the run by its requests:
# the proxies' cost per request, and what each one costs the worker.
#
# Env: DURATION (10s), CONNS (16), WRK_THREADS (2), ROUNDS (3), WARMUP (2s),
# CARGO_TARGET_DIR as for any cargo command. Needs wrk, nginx, jq, curl.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
duration="${DURATION:-10s}"
conns="${CONNS:-16}"
wrk_threads="${WRK_THREADS:-2}"
rounds="${ROUNDS:-3}"
warmup="${WARMUP:-2s}"
for tool in wrk nginx jq curl; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install $tool)"; exit 1; }
done

# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"

# Waits for the `{"event":"ready",...}` line a process prints on stdout
# (redirected to $1) and prints it; fails if the process ($2) exits first.
body='{"inputs":[{"name":"features","datatype":"FP32","shape":[1,10],"data":[60,0.3,10,8,0,0.3,20,48,6,1]}]}'
path="/v2/models/credit-score/infer"

# (b) thaw, with its own worker.
cat >"$work/thaw.toml" <<EOF
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
state_dir = "$work/state"

[defaults.scaling]
min_instances = 1
max_instances = 1
target_concurrency = 32
max_concurrency = 64

[[models]]
name = "credit-score"
source = "$root/configs/models/credit-score"
kind = "tabular"
EOF
RUST_LOG=warn "$bin/thaw" serve --config "$work/thaw.toml" --worker-bin "$bin/thaw-worker" \
    >"$work/thaw.out" 2>"$work/thaw.err" &
pids+=($!)
ready="$(wait_ready "$work/thaw.out" "${pids[-1]}")"
thaw_addr="$(jq -r .address <<<"$ready")"
admin_addr="$(jq -r .admin <<<"$ready")"
for ((i = 0; i < 1200; i++)); do
    n="$(curl -fsS "http://$admin_addr/admin/status" |
        jq '[.models[] | select(.name == "credit-score") | .instances[]] | length')"
    [[ "$n" -ge 1 ]] && break
    sleep 0.05
done
sock="$(ls "$work"/state/run-*/credit-score-*.sock | head -1)"
[[ -S "$sock" ]] || { echo "thaw's worker socket not found under $work/state"; exit 1; }

# (a) direct: a worker of the same model on a TCP port.
"$bin/thaw-worker" --model "$root/configs/models/credit-score" --listen 127.0.0.1:0 \
    --name credit-score >"$work/worker.out" 2>"$work/worker.err" &
pids+=($!)
direct_addr="$(wait_ready "$work/worker.out" "${pids[-1]}" | jq -r .address)"

# (c) nginx in front of thaw's worker; as many worker processes as thaw
# has proxy threads (one per CPU); no buffering either way, as thaw streams.
nginx_port="$("$bin/thaw-bench" free-port)"
mkdir -p "$work/nginx"
user_line=""
[[ "$(id -u)" == 0 ]] && user_line="user root;" # the state dir is 0700
cat >"$work/nginx/nginx.conf" <<EOF
$user_line
worker_processes $(nproc);
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    upstream worker {
        server unix:$sock;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$nginx_port;
        keepalive_requests 1000000;
        location / {
            proxy_pass http://worker;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }
    }
}
EOF
nginx -e "$work/nginx/error.log" -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
pids+=($!)
nginx_addr="127.0.0.1:$nginx_port"

declare -A addr=([direct-tcp]="$direct_addr" [thaw]="$thaw_addr" [nginx]="$nginx_addr")
for t in direct-tcp thaw nginx; do
    for ((i = 0; i < 200; i++)); do
        code="$(curl -s -o "$work/check.json" -w '%{http_code}' -H 'content-type: application/json' \
            -d "$body" "http://${addr[$t]}$path" || true)"
        [[ "$code" == 200 ]] && break
        sleep 0.05
    done
    [[ "$code" == 200 ]] || { echo "$t answered $code: $(cat "$work/check.json")"; exit 1; }
    echo "$t (${addr[$t]}): $(head -c 200 "$work/check.json")" >&2
done

# wrk's script: the POST, and a JSON line with the summary at the end.
cat >"$work/post.lua" <<EOF
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'JSON {"requests":%d,"duration_us":%d,"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f,"non2xx":%d,"socket_errors":%d}\n',
        summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
        latency:percentile(99), latency.max, latency.mean, e.status,
        e.connect + e.read + e.write + e.timeout))
end
EOF

# CPU time (user + system, clock ticks) spent so far by the gateway, by
# nginx's processes and by thaw-worker processes (thaw's worker, its
# template, the direct one), as JSON: the wrk runs divide the difference
# over a run by its requests, so each proxy's cost per request shows beside
# the worker's.
cpu_ticks() {
    local thaw=0 nginx=0 worker=0 stat comm rest f
    for f in /proc/[0-9]*/stat; do
        stat="$(cat "$f" 2>/dev/null)" || continue
        comm="${stat#*(}" comm="${comm%%)*}" rest="${stat##*) }"
        # shellcheck disable=SC2086
        set -- $rest
        case "$comm" in
            thaw) thaw=$((thaw + ${12} + ${13})) ;;
            nginx) nginx=$((nginx + ${12} + ${13})) ;;
            thaw-worker) worker=$((worker + ${12} + ${13})) ;;
        esac
    done
    echo "{\"thaw\":$thaw,\"nginx\":$nginx,\"worker\":$worker}"
}

# wrk_run TARGET CONNS THREADS ROUND: one wrk run, appended to the results.
wrk_run() {
    local t="$1" c="$2" th="$3" r="$4" line before after
    before="$(cpu_ticks)"
    line="$(wrk -t"$th" -c"$c" -d"$duration" --latency -s "$work/post.lua" "http://${addr[$t]}$path" |
        sed -n 's/^JSON //p')"
    after="$(cpu_ticks)"
    jq -c --arg t "$t" --argjson c "$c" --argjson r "$r" \
        --argjson before "$before" --argjson after "$after" --argjson hz "$(getconf CLK_TCK)" '
        def per_request(k): ((($after[k] - $before[k]) / $hz * 1e6 / .requests) * 10 | round / 10);
        {tool: "wrk", target: $t, conns: $c, round: $r, p50, p90, p99,
          rps: (.requests / (.duration_us / 1e6)), bad: (.non2xx + .socket_errors),
          thaw_cpu: per_request("thaw"), nginx_cpu: per_request("nginx"),
          worker_cpu: per_request("worker")}' \
        <<<"$line" | tee -a "$work/results.jsonl" >&2
}

# tb_run TARGET CONNS ROUND: one thaw-bench closed-loop run, appended to the
# results; TARGET direct-unix is thaw's own worker, over its socket.
tb_run() {
    local t="$1" c="$2" r="$3" where=()
    if [[ "$t" == direct-unix ]]; then
        where=(--url "http://localhost$path" --unix "$sock")
    else
        where=(--url "http://${addr[$t]}$path")
    fi
    "$bin/thaw-bench" closed-loop "${where[@]}" --body-file "$work/body.json" \
        --concurrency "$c" --duration "$duration" |
        jq -c --arg t "$t" --argjson c "$c" --argjson r "$r" '
          (.statuses["200"] // {count: 0, rate_per_s: 0, latency_us: {}}) as $ok
          | {tool: "thaw-bench", target: $t, conns: $c, round: $r,
             p50: $ok.latency_us.p50, p90: $ok.latency_us.p90, p99: $ok.latency_us.p99,
             rps: $ok.rate_per_s, bad: (.requests - $ok.count)}' |
        tee -a "$work/results.jsonl" >&2
}
printf '%s' "$body" >"$work/body.json"

echo "== warm-up ($warmup each)" >&2
for t in direct-tcp thaw nginx; do
    wrk -t"$wrk_threads" -c"$conns" -d"$warmup" -s "$work/post.lua" "http://${addr[$t]}$path" >/dev/null
done
for ((r = 1; r <= rounds; r++)); do
    echo "== round $r/$rounds: 1 connection, then $conns; $duration each" >&2
    for t in direct-tcp thaw nginx; do wrk_run "$t" 1 1 "$r"; done
    for t in direct-unix direct-tcp thaw nginx; do tb_run "$t" 1 "$r"; done
    for t in direct-tcp thaw nginx; do wrk_run "$t" "$conns" "$wrk_threads" "$r"; done
    for t in direct-unix direct-tcp thaw nginx; do tb_run "$t" "$conns" "$r"; done
done

echo
echo "gateway overhead: credit-score infer, median of $rounds rounds of $duration each (latency in µs)"
echo "direct-tcp: a second worker on TCP; direct-unix: thaw's worker over its unix socket (nginx's upstream too)"
jq -rs '
  def median: sort | if length % 2 == 1 then .[length / 2 | floor]
                     else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def med(f): map(f) | median;
  def order: {"direct-unix": 0, "direct-tcp": 1, thaw: 2, nginx: 3}[.];
  group_by([.tool, .conns, .target]) | map({tool: .[0].tool, conns: .[0].conns,
      target: .[0].target, p50: med(.p50), p90: med(.p90), p99: med(.p99),
      rps: med(.rps), bad: (map(.bad) | add),
      cpu: (if .[0].tool == "wrk" then
              {thaw: med(.thaw_cpu), nginx: med(.nginx_cpu), worker: med(.worker_cpu)}
            else null end)}) as $rows
  | ($rows | map({key: "\(.tool)/\(.conns)/\(.target)", value: .}) | from_entries) as $m
  | def vs(t): $m["\(.tool)/\(.conns)/\(t)"].p50 as $b | if $b == null then "-" else .p50 - $b end;
  (["tool", "conns", "target", "p50", "p90", "p99", "req/s", "failed",
    "p50−direct-tcp", "p50−direct-unix", "req/s÷nginx", "proxy-cpu-µs/req", "worker-cpu-µs/req"] | @tsv),
  ($rows | sort_by(.tool != "wrk", .conns, (.target | order))[]
    | [.tool, .conns, .target, .p50, .p90, .p99, (.rps | round), .bad,
       vs("direct-tcp"), vs("direct-unix"),
       ((.rps / $m["\(.tool)/\(.conns)/nginx"].rps) * 100 | round / 100),
       (if .cpu == null then "-" elif .target == "thaw" then .cpu.thaw
        elif .target == "nginx" then .cpu.nginx else 0 end),
       (if .cpu == null then "-" else .cpu.worker end)] | @tsv)
' "$work/results.jsonl" | column -t -s $'\t'
