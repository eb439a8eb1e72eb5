#!/usr/bin/env bash
# Packs what the GPU machine cannot fetch (it has no network): this Deno binary and a Deno cache
# holding the project's npm dependencies, into .gpu-carry/ (gitignored, about 33 MB). Pass
# ".gpu-carry" in the device tool's `carry`; tests/gpu/run.sh unpacks it when deno is missing.
#
#   bash tests/gpu/pack.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
out=.gpu-carry
mkdir -p "$out"
deno_bin=$(command -v deno)
echo "packing $(deno --version | head -1) from $deno_bin"
xz -6 -T0 -c "$deno_bin" > "$out/deno.xz"
cache=$(mktemp -d)
DENO_DIR="$cache" deno cache tests/gpu/cuda_kernels.gpu.ts tests/gpu/bench.ts \
  tools/make_random_model.ts main.ts >/dev/null
tar -C "$cache" -cf - . | xz -6 -T0 > "$out/deno_dir.tar.xz"
rm -rf "$cache"
du -sh "$out"/*
