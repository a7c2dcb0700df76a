# Shared by the benchmark scripts (sourced; expects $root): a scratch
# directory, the processes to clean up on exit, and the release build.

work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Prints the first `"event":"ready"` line a process (pid $2) writes to $1;
# fails if it exits first or nothing comes within 60 s.
wait_ready() {
    local file="$1" pid="$2" i
    for ((i = 0; i < 1200; i++)); do
        if grep -m1 '"event":"ready"' "$file" 2>/dev/null; then return 0; fi
        kill -0 "$pid" 2>/dev/null || { echo "process $pid exited:" >&2; cat "$file" >&2; return 1; }
        sleep 0.05
    done
    echo "no ready line in $file after 60 s" >&2
    return 1
}

echo "== building (cargo build --release --bins)" >&2
(cd "$root" && cargo build --release --bins) >&2
bin="${CARGO_TARGET_DIR:-$root/target}/release"
