// On-device sampling, CPU reference: one token id per logits row, by the definition in
// ffi/denollm.h (sort, prefix cuts, integer weights), which the CUDA build computes without a sort.
#include <algorithm>
#include <cmath>
#include <vector>

#include "common.h"
#include "dl_sample.h"

// --- Kernel

static int32_t sample_row(const float* row, int32_t vocab, float temperature, int32_t top_k, float top_p,
                          float min_p, uint64_t seed, uint64_t counter) {
  std::vector<uint64_t> keys;  // finite candidates, largest key first
  keys.reserve((size_t)vocab);
  uint64_t best = 0;
  for (int32_t i = 0; i < vocab; i++) {
    const uint64_t key = dl_sample_key(row[i], i);
    best = std::max(best, key);
    if (std::isfinite(row[i])) keys.push_back(key);
  }
  const auto id_of = [](uint64_t key) { return (int32_t)(0xFFFFFFFFu - (uint32_t)key); };
  if (temperature == 0.0f || top_k == 1 || keys.empty()) return best == 0 ? 0 : id_of(best);

  std::sort(keys.begin(), keys.end(), [](uint64_t a, uint64_t b) { return a > b; });
  if (top_k > 0 && (size_t)top_k < keys.size()) keys.resize((size_t)top_k);
  const float max_logit = dl_sample_key_logit(keys[0]);
  const float inv_t = 1.0f / temperature;
  std::vector<uint64_t> weights(keys.size());
  uint64_t total = 0;
  for (size_t j = 0; j < keys.size(); j++) {
    weights[j] = dl_sample_weight(dl_sample_key_logit(keys[j]), max_logit, inv_t);
    total += weights[j];
  }
  size_t keep = keys.size();
  if (top_p < 1.0f) {
    const uint64_t threshold = (uint64_t)std::ceil((double)top_p * (double)total);
    uint64_t sum = 0;
    for (size_t j = 0; j < keys.size(); j++) {
      sum += weights[j];
      if (sum >= threshold) {
        keep = j + 1;
        break;
      }
    }
  }
  // The kept (id, weight) pairs in id order, the order of the draw.
  const double min_weight = (double)min_p * (double)DL_SAMPLE_ONE;
  std::vector<std::pair<int32_t, uint64_t>> kept;
  for (size_t j = 0; j < keep; j++) {
    if (min_p > 0.0f && (double)weights[j] < min_weight) continue;
    kept.emplace_back(id_of(keys[j]), weights[j]);
  }
  std::sort(kept.begin(), kept.end());
  uint64_t kept_total = 0;
  for (const auto& k : kept) kept_total += k.second;
  const uint64_t target = dl_sample_scale(dl_sample_random(seed, counter), kept_total);
  uint64_t sum = 0;
  for (const auto& k : kept) {
    sum += k.second;
    if (target < sum) return k.first;
  }
  return kept.back().first;  // unreachable: target < kept_total
}

// --- Launcher

extern "C" DL_API int32_t dl_sample(dl_context* ctx, int32_t* out_ids, const float* logits, const float* temperature,
                                    const int32_t* top_k, const float* top_p, const float* min_p,
                                    const uint64_t* seeds, const uint64_t* counters, int32_t num_rows,
                                    int32_t vocab_size) {
  const char* fn = "dl_sample";
  DL_TRY(dl_validate_sample(fn, ctx, out_ids, logits, temperature, top_k, top_p, min_p, seeds, counters, num_rows,
                            vocab_size));
  for (int32_t r = 0; r < num_rows; r++) {
    if (!dl_sample_params_ok(temperature[r], top_p[r], min_p[r])) {
      return dl_fail(DL_ERR_INVALID_ARGUMENT,
                     "%s: expected temperature >= 0, top_p in (0, 1] and min_p in [0, 1] for row %d, found %g, %g, %g",
                     fn, r, temperature[r], top_p[r], min_p[r]);
    }
  }
#pragma omp parallel for num_threads(dl_threads_for(ctx, (int64_t)num_rows * vocab_size)) schedule(static)
  for (int32_t r = 0; r < num_rows; r++) {
    out_ids[r] = sample_row(logits + (int64_t)r * vocab_size, vocab_size, temperature[r], top_k[r], top_p[r],
                            min_p[r], seeds[r], counters[r]);
  }
  return DL_OK;
}
