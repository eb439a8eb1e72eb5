#!/usr/bin/env bash
# Packs what the GPU machine cannot fetch (it has no network and no ../shared): this Deno binary, a
# Deno cache holding the project's npm dependencies, stories260K (its Hugging Face directory) and the
# libraries `deno task build` makes here (build/libdenollm_cuda.so only where nvcc is),
# into .gpu-carry/ (gitignored, about 35 MB). Pass ".gpu-carry" in the device tool's `carry`;
# tests/gpu/run.sh unpacks Deno when deno is missing there, reads stories260K when ../shared is, and
# uses the prebuilt libraries only when nvcc (or the build) is missing there.
#
#   bash tests/gpu/pack.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
out=.gpu-carry
rm -rf "$out"
mkdir -p "$out"
deno_bin=$(command -v deno)
echo "packing $(deno --version | head -1) from $deno_bin"
xz -6 -T0 -c "$deno_bin" > "$out/deno.xz"
cache=$(mktemp -d)
DENO_DIR="$cache" deno cache tests/gpu/cuda_kernels.gpu.ts tests/gpu/cuda_graphs.gpu.ts tests/gpu/bench.ts \
  tools/make_random_model.ts main.ts >/dev/null
tar -C "$cache" -cf - . | xz -6 -T0 > "$out/deno_dir.tar.xz"
rm -rf "$cache"

stories=${DENOLLM_STORIES260K:-../shared/models/stories260K}
if [ ! -f "$stories/hf/config.json" ]; then
  echo "no stories260K at $stories (set DENOLLM_STORIES260K to its directory)" >&2
  exit 1
fi
mkdir -p "$out/stories260K"
cp -r "$stories/hf" "$out/stories260K/hf"
chmod -R u+w "$out/stories260K"

deno task build  # the prebuilt libraries must match the sources being carried
for lib in cpu cuda; do
  if [ -f "build/libdenollm_$lib.so" ]; then
    cp "build/libdenollm_$lib.so" "$out/"
  else
    echo "note: build/libdenollm_$lib.so is missing: nothing prebuilt to fall back on" >&2
  fi
done
nvcc_version=$( (nvcc --version 2>/dev/null || echo "nvcc unknown") | tail -1)
echo "built here from $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- cpu cuda native ffi ||
  echo "+changes") on $(date -u +%Y-%m-%d), $nvcc_version" > "$out/built.txt"
cat "$out/built.txt"
du -sh "$out"/*
du -sh "$out"
