// On-device sampling: one block per logits row picks a token by ffi/denollm.h's definition without
// sorting: the top-k and top-p cut-offs are keys found bit by bit (a binary search over the 64-bit
// sort key, each step one block-wide count or weight sum), and the draw is a block-wide scan in id
// order. Integer weights (native/dl_sample.h) make every sum exact, so the CPU build agrees.
#include "common.cuh"
#include "dl_sample.h"

namespace {

constexpr int SAMPLE_THREADS = 256;

// Sum over the block; every thread gets it. red holds SAMPLE_THREADS values.
__device__ __forceinline__ uint64_t block_sum(uint64_t v, uint64_t* red) {
  red[threadIdx.x] = v;
  __syncthreads();
  for (int s = SAMPLE_THREADS / 2; s > 0; s /= 2) {
    if ((int)threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  const uint64_t total = red[0];
  __syncthreads();
  return total;
}

__device__ __forceinline__ uint64_t block_max(uint64_t v, uint64_t* red) {
  red[threadIdx.x] = v;
  __syncthreads();
  for (int s = SAMPLE_THREADS / 2; s > 0; s /= 2) {
    if ((int)threadIdx.x < s) red[threadIdx.x] = red[threadIdx.x] > red[threadIdx.x + s] ? red[threadIdx.x] : red[threadIdx.x + s];
    __syncthreads();
  }
  const uint64_t m = red[0];
  __syncthreads();
  return m;
}

__device__ __forceinline__ bool is_finite(float v) { return v - v == 0.0f; }  // false for Inf, NaN

// The key of a finite logit, else 0 (not a candidate).
__device__ __forceinline__ uint64_t finite_key(float logit, int32_t id) {
  return is_finite(logit) ? dl_sample_key(logit, id) : 0;
}

__device__ __forceinline__ uint64_t max_u64(uint64_t a, uint64_t b) { return a > b ? a : b; }

__device__ __forceinline__ int32_t id_of(uint64_t key) {
  return (int32_t)(0xFFFFFFFFu - (uint32_t)key);
}

}  // namespace

// --- Kernel

__global__ __launch_bounds__(SAMPLE_THREADS) void sample_kernel(
    int32_t* __restrict__ out_ids, const float* __restrict__ logits,  // [R, V]
    const float* __restrict__ temperature, const int32_t* __restrict__ top_k,
    const float* __restrict__ top_p, const float* __restrict__ min_p,
    const uint64_t* __restrict__ seeds, const uint64_t* __restrict__ counters, int32_t vocab,
    unsigned long long* bad) {
  __shared__ uint64_t red[SAMPLE_THREADS];
  const int64_t r = blockIdx.x;
  const float* row = logits + r * vocab;
  const int tid = threadIdx.x;
  const float t = temperature[r], p = top_p[r], mp = min_p[r];
  const int32_t k = top_k[r];
  if (!dl_sample_params_ok(t, p, mp)) {
    if (tid == 0) {
      dl_bad_report(bad, DL_BAD_SAMPLING, r, 0);
      out_ids[r] = 0;
    }
    return;
  }
  // Greedy: the largest non-NaN key. Also the largest finite key and the number of finite logits.
  uint64_t best = 0, best_finite = 0, num_finite = 0;
  for (int32_t i = tid; i < vocab; i += SAMPLE_THREADS) {
    best = max_u64(best, dl_sample_key(row[i], i));
    best_finite = max_u64(best_finite, finite_key(row[i], i));
    num_finite += is_finite(row[i]) ? 1 : 0;
  }
  best = block_max(best, red);
  best_finite = block_max(best_finite, red);
  num_finite = block_sum(num_finite, red);
  if (t == 0.0f || k == 1 || num_finite == 0) {
    if (tid == 0) out_ids[r] = best == 0 ? 0 : id_of(best);
    return;
  }
  // top-k: the k-th largest key (keys are distinct), or 1 (every finite key) when disabled.
  uint64_t key_k = 1;
  if (k > 0 && (uint64_t)k < num_finite) {
    uint64_t found = 0;
    for (int bit = 63; bit >= 0; bit--) {
      const uint64_t cand = found | (1ull << bit);
      uint64_t count = 0;
      for (int32_t i = tid; i < vocab; i += SAMPLE_THREADS) count += finite_key(row[i], i) >= cand ? 1 : 0;
      if (block_sum(count, red) >= (uint64_t)k) found = cand;
    }
    key_k = found;
  }
  const float max_logit = dl_sample_key_logit(best_finite);
  const float inv_t = 1.0f / t;
  // The weight of id i within the keys >= floor_key, else 0.
  auto weight = [&](int32_t i, uint64_t floor_key) -> uint64_t {
    const uint64_t key = finite_key(row[i], i);
    return key != 0 && key >= floor_key ? dl_sample_weight(row[i], max_logit, inv_t) : 0;
  };
  uint64_t total = 0;
  for (int32_t i = tid; i < vocab; i += SAMPLE_THREADS) total += weight(i, key_k);
  total = block_sum(total, red);
  // top-p: the largest key whose prefix (keys >= it) still weighs ceil(top_p * total).
  uint64_t key_p = key_k;
  if (p < 1.0f) {
    const uint64_t threshold = (uint64_t)ceil((double)p * (double)total);
    uint64_t found = 0;
    for (int bit = 63; bit >= 0; bit--) {
      const uint64_t cand = found | (1ull << bit);
      const uint64_t floor_key = cand > key_k ? cand : key_k;
      uint64_t sum = 0;
      for (int32_t i = tid; i < vocab; i += SAMPLE_THREADS) sum += weight(i, floor_key);
      if (block_sum(sum, red) >= threshold) found = cand;
    }
    key_p = found > key_k ? found : key_k;
  }
  // The draw: each thread owns a contiguous id range; an exclusive scan finds the owner of t.
  const double min_weight = (double)mp * (double)DL_SAMPLE_ONE;
  auto kept = [&](int32_t i) -> uint64_t {
    const uint64_t w = weight(i, key_p);
    return (mp > 0.0f && (double)w < min_weight) ? 0 : w;
  };
  const int32_t chunk = (vocab + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
  const int32_t begin = min(vocab, tid * chunk), end = min(vocab, begin + chunk);
  uint64_t mine = 0;
  for (int32_t i = begin; i < end; i++) mine += kept(i);
  red[tid] = mine;
  __syncthreads();
  __shared__ uint64_t s_total;
  if (tid == 0) {
    uint64_t run = 0;
    for (int j = 0; j < SAMPLE_THREADS; j++) {
      const uint64_t v = red[j];
      red[j] = run;
      run += v;
    }
    s_total = run;
  }
  __syncthreads();
  const uint64_t target = dl_sample_scale(dl_sample_random(seeds[r], counters[r]), s_total);
  const uint64_t before = red[tid];
  if (mine > 0 && target >= before && target < before + mine) {
    uint64_t sum = before;
    for (int32_t i = begin; i < end; i++) {
      sum += kept(i);
      if (target < sum) {
        out_ids[r] = i;
        break;
      }
    }
  }
}

// --- Launcher

extern "C" int32_t dl_sample(dl_context* ctx, int32_t* out_ids, const float* logits, const float* temperature,
                             const int32_t* top_k, const float* top_p, const float* min_p, const uint64_t* seeds,
                             const uint64_t* counters, int32_t num_rows, int32_t vocab_size) {
  const char* fn = "dl_sample";
  DL_TRY(dl_validate_sample(fn, ctx, out_ids, logits, temperature, top_k, top_p, min_p, seeds, counters, num_rows,
                            vocab_size));
  if (num_rows == 0) return DL_OK;
  sample_kernel<<<num_rows, SAMPLE_THREADS, 0, ctx->stream>>>(out_ids, logits, temperature, top_k, top_p, min_p,
                                                              seeds, counters, vocab_size, ctx->bad_metadata);
  DL_CUDA_CHECK(cudaGetLastError());
  return DL_OK;
}
