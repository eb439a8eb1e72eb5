#!/usr/bin/env bash
# GPU session check for the CUDA build: build, every kernel against the CPU build, greedy
# generation on stories260K, the quantized-weight kernels and their speed, and a benchmark on a
# random-weight Llama-3.2-1B. Prints PASS, WARN,
# SKIP or FAIL per section and always ends with a summary to paste into the issue; exits 1 when a
# section failed. Exits 0 without a GPU (no nvidia-smi).
#
#   bash tests/gpu/run.sh            # from anywhere; about 4-6 minutes on an H100
#   SKIP_HF=1 bash tests/gpu/run.sh  # without the transformers comparison
#
# On the lent GPU machine (no network, no Deno, no ../shared): run `bash tests/gpu/pack.sh` here
# first, then the device tool with command "bash tests/gpu/run.sh", carry [".gpu-carry"],
# timeout_s 540. .gpu-carry/ holds Deno and its cache, stories260K, and prebuilt libraries used when
# nvcc (or g++) is missing there. With $OUT set, the whole log goes to $OUT/gpu-run.log and the
# summary to $OUT/gpu-summary.txt, since only the tail of the output comes back.
set -uo pipefail

cd "$(dirname "$0")/../.."
if [ -n "${OUT:-}" ] && [ -z "${DENOLLM_GPU_RUN_LOGGED:-}" ]; then
  mkdir -p "$OUT"
  DENOLLM_GPU_RUN_LOGGED=1 bash tests/gpu/run.sh "$@" 2>&1 | tee "$OUT/gpu-run.log"
  exit "${PIPESTATUS[0]}"
fi
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "no GPU: skipping"
  exit 0
fi

export NO_COLOR=1  # plain text in the log and the summary
carry=.gpu-carry
started=$SECONDS
failed=0
summary=()
section() { echo; echo "=== $1 ($((SECONDS - started)) s)"; }
record() {  # record STATUS TEXT
  summary+=("$1 $2")
  echo "$1 $2"
  if [ "$1" = FAIL ]; then failed=1; fi
}
finish() {
  echo; echo "=== summary ($((SECONDS - started)) s in all)"
  nvidia-smi --query-gpu=name --format=csv,noheader 2>&1 | head -3
  printf '%s\n' "${summary[@]}"
  if [ -n "${OUT:-}" ]; then printf '%s\n' "${summary[@]}" > "$OUT/gpu-summary.txt"; fi
  if [ -n "${quant_log:-}" ] && [ -f "$quant_log" ]; then
    grep -E '^\||copy' "$quant_log" || true
    rm -f "$quant_log"
  fi
  if [ -n "${bench_log:-}" ] && [ -f "$bench_log" ]; then
    grep -E '^\||bandwidth|batch-1 decode|^HF' "$bench_log" || true
    rm -f "$bench_log"
  fi
  exit "$failed"
}
# A line of what a tool says about its version (LINE: head or tail), or that it is missing.
tool_version() {  # tool_version LINE CMD ARGS...
  local line=$1
  shift
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "$1: not found"
  else
    "$@" 2>&1 | grep -v '^$' | "$line" -1 || true
  fi
}

# --- Tools: the GPU machine has no network; use the Deno binary and cache packed by pack.sh.

if ! command -v deno >/dev/null 2>&1 && [ -f "$carry/deno.xz" ]; then
  unpack() {
    xz -dc "$1" 2>/dev/null ||
      python3 -c 'import lzma,sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())' "$1"
  }
  mkdir -p /tmp/denollm-gpu/bin /tmp/denollm-gpu/deno_dir
  if unpack "$carry/deno.xz" > /tmp/denollm-gpu/bin/deno &&
    unpack "$carry/deno_dir.tar.xz" | tar -C /tmp/denollm-gpu/deno_dir -xf -; then
    chmod +x /tmp/denollm-gpu/bin/deno
    export PATH="/tmp/denollm-gpu/bin:$PATH" DENO_DIR=/tmp/denollm-gpu/deno_dir
    export DENO_NO_UPDATE_CHECK=1
  else
    echo "could not unpack $carry/deno.xz (needs xz or python3)"
  fi
fi
# stories260K: ../shared beside the checkout, else the copy packed by pack.sh.
if [ -z "${DENOLLM_STORIES260K:-}" ]; then
  if [ -f ../shared/models/stories260K/hf/config.json ]; then
    export DENOLLM_STORIES260K=$(cd ../shared/models/stories260K && pwd)
  elif [ -f "$carry/stories260K/hf/config.json" ]; then
    export DENOLLM_STORIES260K=$(cd "$carry/stories260K" && pwd)
  fi
fi

section "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv,noheader 2>&1
tool_version tail "${NVCC:-nvcc}" --version
tool_version head deno --version
echo "stories260K: ${DENOLLM_STORIES260K:-not found (neither ../shared nor $carry)}"
if ! command -v deno >/dev/null 2>&1; then
  record FAIL "tools: deno is not installed here and $carry/ is missing or unusable: run tests/gpu/pack.sh first"
  finish
fi

# --- Build: nvcc here, else the library pack.sh prebuilt.

section "build"
build_started=$SECONDS
has_nvcc=0
if command -v "${NVCC:-nvcc}" >/dev/null 2>&1; then has_nvcc=1; fi
build_ok=0
if deno task build; then build_ok=1; fi
# Puts the library pack.sh prebuilt in place of build/libdenollm_$1.so; false when there is none.
use_prebuilt() {
  [ -f "$carry/libdenollm_$1.so" ] || return 1
  mkdir -p build && cp "$carry/libdenollm_$1.so" "build/libdenollm_$1.so" || return 1
  record WARN "build: using the prebuilt $carry/libdenollm_$1.so ($(cat "$carry/built.txt" 2>/dev/null || echo "origin unknown"))"
}
if [ "$has_nvcc" = 1 ]; then
  if [ "$build_ok" = 1 ] && [ -f build/libdenollm_cuda.so ]; then
    record PASS "build: deno task build compiled build/libdenollm_cuda.so with nvcc in $((SECONDS - build_started)) s"
  else
    record FAIL "build: deno task build failed with nvcc present (output above)"
    finish
  fi
else
  record WARN "build: nvcc not found here: the CUDA library was not compiled on this machine"
  if ! use_prebuilt cuda; then
    record FAIL "build: no CUDA library: nvcc is missing and $carry/libdenollm_cuda.so too (run pack.sh where nvcc is)"
    finish
  fi
fi
if [ "$build_ok" = 0 ] && ! use_prebuilt cpu; then
  record FAIL "build: deno task build failed (output above) and $carry/ has no prebuilt CPU library"
  finish
fi

# --- The CUDA library must find a device before anything else can run on it.

section "device check: the CUDA library opens a context"
probe='import { NativeBackend } from "./ffi/native.ts";
const b = NativeBackend.open({ backend: "cuda" });
b.close();
console.log("opened a CUDA context");'
if probe_out=$(deno eval --quiet "$probe" 2>&1); then
  echo "$probe_out"
  record PASS "device: build/libdenollm_cuda.so opened a CUDA context"
else
  echo "$probe_out"
  record FAIL "device: build/libdenollm_cuda.so cannot use the GPU: $(echo "$probe_out" | grep -m1 -oE '[A-Za-z]*Error: .*' | cut -c1-300)"
  record SKIP "kernels and benchmark: no usable CUDA device"
  finish
fi

section "kernels and generation: CUDA against the CPU build"
if [ -z "${DENOLLM_STORIES260K:-}" ]; then
  record WARN "kernels: stories260K not found: its generation tests will fail"
fi
if deno test -A tests/gpu/cuda_kernels.gpu.ts; then
  record PASS "kernels: every kernel matches the CPU build; stories260K greedy tokens equal"
else
  record FAIL "kernels: see the failures above"
fi

section "quantized kernels: CUDA against the reference and the CPU build"
if deno test -A tests/gpu/quant_kernels.gpu.ts; then
  record PASS "quant kernels: dequantize, embedding and matmul of every quantized format match"
else
  record FAIL "quant kernels: see the failures above"
fi

section "W8A8 and 2:4 kernels: CUDA against the CPU build"
if deno test -A tests/gpu/compress_kernels.gpu.ts; then
  record PASS "compress kernels: W8A8, W8A8_MIXED and the 2:4 formats match; stories260K w8a8 + 2:4 greedy equal"
else
  record FAIL "compress kernels: see the failures above"
fi

section "CUDA graphs: capture and replay, decode graphs against --enforce-eager"
if deno test -A tests/gpu/cuda_graphs.gpu.ts; then
  record PASS "graphs: replays equal eager calls; decode graphs give the eager greedy tokens, one capture per bucket"
else
  record FAIL "graphs: see the failures above"
fi

section "quantized matmul speed: gemv GB/s and tiled TFLOP/s"
quant_log=$(mktemp)
if timeout 120 deno run -A tests/gpu/quant_bench.ts | tee "$quant_log"; then
  record PASS "quant speed: measured (table below)"
else
  record FAIL "quant speed: failed or timed out"
fi

section "benchmark: random-weight Llama-3.2-1B (bf16)"
model_dir=${BENCH_MODEL_DIR:-/tmp/l1b}
if [ ! -f "$model_dir/config.json" ]; then
  deno run -A tools/make_random_model.ts --preset llama-3.2-1b --out "$model_dir" --dtype bf16 \
    --formats hf || record FAIL "benchmark: could not make the random model"
fi
hf_flag=--hf
if [ "${SKIP_HF:-0}" = 1 ]; then hf_flag=; fi
bench_log=$(mktemp)
if timeout 300 deno run -A tests/gpu/bench.ts --model "$model_dir" $hf_flag | tee "$bench_log"; then
  record PASS "benchmark: completed"
else
  record FAIL "benchmark: failed or timed out"
fi

finish
