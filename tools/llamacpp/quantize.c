// Quantizes a GGUF with llama.cpp's own quantizer (llama_model_quantize from the libllama that
// node-llama-cpp bundles), for fixtures and benchmarks. Built and run by tools/llamacpp/quantize.sh.
#include <stdio.h>
#include <string.h>

#include "ggml-backend.h"
#include "llama.h"

// --- the presets fixtures and benchmarks use, by llama-quantize's names

static const struct {
  const char* name;
  enum llama_ftype ftype;
} PRESETS[] = {
    {"Q8_0", LLAMA_FTYPE_MOSTLY_Q8_0},     {"Q4_0", LLAMA_FTYPE_MOSTLY_Q4_0},
    {"Q4_1", LLAMA_FTYPE_MOSTLY_Q4_1},     {"Q5_0", LLAMA_FTYPE_MOSTLY_Q5_0},
    {"Q5_1", LLAMA_FTYPE_MOSTLY_Q5_1},     {"Q2_K", LLAMA_FTYPE_MOSTLY_Q2_K},
    {"Q3_K_M", LLAMA_FTYPE_MOSTLY_Q3_K_M}, {"Q4_K_M", LLAMA_FTYPE_MOSTLY_Q4_K_M},
    {"Q5_K_M", LLAMA_FTYPE_MOSTLY_Q5_K_M}, {"Q6_K", LLAMA_FTYPE_MOSTLY_Q6_K},
};

int main(int argc, char** argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s BACKEND_DIR IN.gguf OUT.gguf PRESET\n", argv[0]);
    return 2;
  }
  const int num_presets = (int)(sizeof(PRESETS) / sizeof(PRESETS[0]));
  int found = -1;
  for (int i = 0; i < num_presets; i++) {
    if (strcmp(PRESETS[i].name, argv[4]) == 0) found = i;
  }
  if (found < 0) {
    fprintf(stderr, "unknown preset %s; expected one of:", argv[4]);
    for (int i = 0; i < num_presets; i++) fprintf(stderr, " %s", PRESETS[i].name);
    fprintf(stderr, "\n");
    return 2;
  }
  // node-llama-cpp's build loads its CPU backends as plugins; the quantizer's loader needs one.
  ggml_backend_load_all_from_path(argv[1]);
  llama_backend_init();
  struct llama_model_quantize_params params = llama_model_quantize_default_params();
  params.ftype = PRESETS[found].ftype;
  params.nthread = 1;  // the output does not depend on it; one thread keeps the machine free
  const uint32_t status = llama_model_quantize(argv[2], argv[3], &params);
  llama_backend_free();
  if (status != 0) {
    fprintf(stderr, "llama_model_quantize(%s -> %s, %s) failed with %u\n", argv[2], argv[3],
            argv[4], status);
    return 1;
  }
  return 0;
}
