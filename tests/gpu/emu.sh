#!/usr/bin/env bash
# Runs the CUDA kernel suites (tests/gpu/cuda_kernels.gpu.ts, quant_kernels.gpu.ts for the
# quantized-weight kernels, compress_kernels.gpu.ts for the W8A8 and 2:4 ones, cuda_graphs.gpu.ts
# for graph capture and the engine's decode graphs) on the CPU: builds
# cuda/*.cu against the dl_emu shim (the project's copy in tests/cuda_emu/, ../shared/cuda-emu
# extended with __dp4a, __byte_perm and int8 WMMA) into build/emu/ (never over the nvcc build's
# build/libdenollm_cuda.so) and runs every kernel against the CPU build with the threads of each
# block in a seeded random order. Needs g++ and the CPU build (`deno task build`). Fails, never
# skips, when the shim cannot be built. About 3 minutes on 2 cores.
#
#   bash tests/gpu/emu.sh                     # a fresh seed, printed
#   DL_EMU_SEED=1234 bash tests/gpu/emu.sh    # replays a run
#   DL_EMU_ORDER=fwd bash tests/gpu/emu.sh    # threads in order (fwd, rev or rand)
#   DL_EMU_SUITES=tests/gpu/compress_kernels.gpu.ts bash tests/gpu/emu.sh   # some suites only
#
# The seed picks the emulator's thread order and the attention fuzz cases (DENOLLM_FUZZ_SEED).
set -euo pipefail
cd "$(dirname "$0")/../.."

emu_dir=${DL_EMU_DIR:-tests/cuda_emu}
suites=${DL_EMU_SUITES:-tests/gpu/cuda_kernels.gpu.ts tests/gpu/quant_kernels.gpu.ts tests/gpu/compress_kernels.gpu.ts tests/gpu/cuda_graphs.gpu.ts}
lib=build/emu/libdenollm_cuda_emu.so
if ! command -v g++ >/dev/null 2>&1; then
  echo "FAIL cuda-emu: g++ is not installed; the CUDA kernels cannot be checked on the CPU" >&2
  exit 1
fi
if [ ! -f "$emu_dir/build.sh" ]; then
  echo "FAIL cuda-emu: no shim at $emu_dir (expected tests/cuda_emu in the checkout)" >&2
  exit 1
fi
if [ ! -f build/libdenollm_cpu.so ]; then
  echo "FAIL cuda-emu: build/libdenollm_cpu.so is missing: run deno task build first" >&2
  exit 1
fi

seed=${DL_EMU_SEED:-$RANDOM}
order=${DL_EMU_ORDER:-rand}
echo "cuda-emu: DL_EMU_ORDER=$order DL_EMU_SEED=$seed (replay: DL_EMU_SEED=$seed DL_EMU_ORDER=$order bash tests/gpu/emu.sh)"

started=$SECONDS
bash "$emu_dir/build.sh" . "$lib"
echo "cuda-emu: built $lib in $((SECONDS - started)) s"

started=$SECONDS
status=0
DL_EMU_ORDER=$order DL_EMU_SEED=$seed DENOLLM_FUZZ_SEED=$seed DENOLLM_GPU_TEST_LIBRARY=$lib \
  deno test --allow-read --allow-env --allow-ffi $suites || status=$?
echo "cuda-emu: kernel suite took $((SECONDS - started)) s"
if [ "$status" -ne 0 ]; then
  echo "FAIL cuda-emu: replay with DL_EMU_SEED=$seed DL_EMU_ORDER=$order bash tests/gpu/emu.sh" >&2
fi
exit "$status"
