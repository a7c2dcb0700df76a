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

echo "== building (cargo build --release --bins)" >&2
(cd "$root" && cargo build --release --bins) >&2
bin="${CARGO_TARGET_DIR:-$root/target}/release"
