#!/usr/bin/env bash
# GPU session check for the CUDA build: build, every kernel against the CPU build, greedy
# generation on stories260K, and a benchmark on a random-weight Llama-3.2-1B. Prints PASS/FAIL per
# section and a summary to paste into the issue. Exits 0 without a GPU.
#
#   bash tests/gpu/run.sh            # from anywhere; about 4-6 minutes on an H100
#   SKIP_HF=1 bash tests/gpu/run.sh  # without the transformers comparison
#
# On the lent GPU machine (no network): run `bash tests/gpu/pack.sh` here first, then the device
# tool with command "bash tests/gpu/run.sh", carry [".gpu-carry"], timeout_s 540.
set -euo pipefail

cd "$(dirname "$0")/../.."
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "no GPU: skipping"
  exit 0
fi

# The GPU machine has no network: use the Deno binary and cache packed by tests/gpu/pack.sh.
if ! command -v deno >/dev/null 2>&1 && [ -f .gpu-carry/deno.xz ]; then
  unpack() { xz -dc "$1" 2>/dev/null || python3 -c 'import lzma,sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())' "$1"; }
  mkdir -p /tmp/denollm-gpu/bin /tmp/denollm-gpu/deno_dir
  unpack .gpu-carry/deno.xz > /tmp/denollm-gpu/bin/deno
  chmod +x /tmp/denollm-gpu/bin/deno
  unpack .gpu-carry/deno_dir.tar.xz | tar -C /tmp/denollm-gpu/deno_dir -xf -
  export PATH="/tmp/denollm-gpu/bin:$PATH" DENO_DIR=/tmp/denollm-gpu/deno_dir DENO_NO_UPDATE_CHECK=1
fi
if ! command -v deno >/dev/null 2>&1; then
  echo "FAIL deno is not installed here and .gpu-carry/ is missing: run tests/gpu/pack.sh first"
  exit 1
fi

started=$SECONDS
failed=0
summary=()
section() { echo; echo "=== $1 ($((SECONDS - started)) s)"; }
record() {  # record NAME STATUS
  summary+=("$2 $1")
  echo "$2 $1"
  if [ "$2" = FAIL ]; then failed=1; fi
}

section "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv,noheader
nvcc --version | tail -1
deno --version | head -1

section "build"
build_started=$SECONDS
if deno task build; then
  record "build: deno task build compiled build/libdenollm_cuda.so in $((SECONDS - build_started)) s" PASS
else
  record "build: deno task build" FAIL
  printf '%s\n' "${summary[@]}"
  exit 1
fi

section "kernels and generation: CUDA against the CPU build"
if deno test -A tests/gpu/cuda_kernels.gpu.ts; then
  record "kernels: every kernel matches the CPU build; stories260K greedy tokens equal" PASS
else
  record "kernels: see the failures above" FAIL
fi

section "benchmark: random-weight Llama-3.2-1B (bf16)"
model_dir=${BENCH_MODEL_DIR:-/tmp/l1b}
if [ ! -f "$model_dir/config.json" ]; then
  deno run -A tools/make_random_model.ts --preset llama-3.2-1b --out "$model_dir" --dtype bf16 \
    --formats hf
fi
hf_flag=--hf
if [ "${SKIP_HF:-0}" = 1 ]; then hf_flag=; fi
bench_log=$(mktemp)
if timeout 300 deno run -A tests/gpu/bench.ts --model "$model_dir" $hf_flag | tee "$bench_log"; then
  record "benchmark: completed" PASS
else
  record "benchmark: failed or timed out" FAIL
fi

section "summary ($((SECONDS - started)) s in all)"
nvidia-smi --query-gpu=name --format=csv,noheader
printf '%s\n' "${summary[@]}"
grep -E '^\||bandwidth|batch-1 decode|^HF' "$bench_log" || true
rm -f "$bench_log"
exit "$failed"
