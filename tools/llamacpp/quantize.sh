#!/usr/bin/env bash
# Quantizes IN.gguf into OUT.gguf with llama.cpp's own quantizer (node-llama-cpp's libllama), by
# llama-quantize's preset names: Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K_M Q4_K_M Q5_K_M Q6_K.
# Usage: bash tools/llamacpp/install.sh && bash tools/llamacpp/quantize.sh IN.gguf OUT.gguf PRESET
# The headers come from the llama.cpp git bundle node-llama-cpp ships; nothing is kept in the repo
# (the compiled helper lives in the gitignored .bench/llamacpp).
set -euo pipefail
[ $# -eq 3 ] || { sed -n 2,4p "$0" >&2; exit 2; }
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PKG="$ROOT/.bench/llamacpp/node_modules"
BINS="$PKG/@node-llama-cpp/linux-x64/bins/linux-x64"
BUNDLE="$PKG/node-llama-cpp/llama/gitRelease.bundle"
BUILD="$ROOT/.bench/llamacpp/quantize"
[ -d "$BINS" ] && [ -f "$BUNDLE" ] || {
  echo "node-llama-cpp is not installed: run bash tools/llamacpp/install.sh first" >&2
  exit 1
}
LIB="$(ls "$BINS"/libllama.v*.so | head -1)"
GGML="$(ls "$BINS"/libggml.v*.so | head -1)"

# Build once per source change: the binary sits next to a copy of the source it came from.
if ! cmp -s "$ROOT/tools/llamacpp/quantize.c" "$BUILD/quantize.c" 2>/dev/null; then
  mkdir -p "$BUILD/include"
  repo="$(mktemp -d -t denollm-llama-src-XXXXXX)"
  trap 'rm -rf "$repo"' EXIT
  git init -q --bare "$repo"
  git -C "$repo" fetch -q "$BUNDLE" HEAD:refs/heads/main
  for h in include/llama.h ggml/include/ggml.h ggml/include/ggml-backend.h ggml/include/ggml-alloc.h \
    ggml/include/ggml-cpu.h ggml/include/ggml-opt.h ggml/include/gguf.h; do
    git -C "$repo" show "main:$h" >"$BUILD/include/$(basename "$h")"
  done
  gcc -O1 -o "$BUILD/quantize" "$ROOT/tools/llamacpp/quantize.c" -I"$BUILD/include" \
    "$LIB" "$GGML" "$BINS/libggml-base.so" -Wl,-rpath,"$BINS"
  cp "$ROOT/tools/llamacpp/quantize.c" "$BUILD/quantize.c"
fi
"$BUILD/quantize" "$BINS" "$1" "$2" "$3"
