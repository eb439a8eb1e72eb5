// llama.cpp as the peer of bench/quant_quality.ts, through the libllama node-llama-cpp bundles:
// its own quantizer (llama_model_quantize, any llama_ftype) and its full logits over windows of
// tokens, teacher-forced. Built and run by tools/quantize/llama_peer.ts; nothing of llama.cpp is
// kept in the repository.
//   llama_peer quantize BACKEND_DIR IN.gguf OUT.gguf FTYPE
//   llama_peer logits BACKEND_DIR MODEL.gguf TOKENS.i32 WINDOW OUT.f32 THREADS
// TOKENS.i32 holds windows of WINDOW int32 token ids back to back; each window is decoded from an
// empty cache, and OUT.f32 gets WINDOW rows of n_vocab f32 logits per window.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-backend.h"
#include "llama.h"

static int quantize(const char* in, const char* out, int ftype) {
  struct llama_model_quantize_params params = llama_model_quantize_default_params();
  params.ftype = (enum llama_ftype)ftype;
  params.nthread = 1;  // the output does not depend on it
  const uint32_t status = llama_model_quantize(in, out, &params);
  if (status != 0) fprintf(stderr, "llama_model_quantize(%s, ftype %d) failed: %u\n", in, ftype, status);
  return status == 0 ? 0 : 1;
}

static int logits(const char* model_path, const char* tokens_path, int window, const char* out_path,
                  int threads) {
  FILE* f = fopen(tokens_path, "rb");
  if (f == NULL) {
    fprintf(stderr, "cannot open %s\n", tokens_path);
    return 1;
  }
  fseek(f, 0, SEEK_END);
  const long num_tokens = ftell(f) / 4;
  fseek(f, 0, SEEK_SET);
  int32_t* tokens = malloc(num_tokens * 4);
  if (fread(tokens, 4, num_tokens, f) != (size_t)num_tokens || num_tokens % window != 0) {
    fprintf(stderr, "%s: expected whole windows of %d tokens\n", tokens_path, window);
    return 1;
  }
  fclose(f);
  struct llama_model_params mparams = llama_model_default_params();
  struct llama_model* model = llama_model_load_from_file(model_path, mparams);
  if (model == NULL) {
    fprintf(stderr, "cannot load %s\n", model_path);
    return 1;
  }
  struct llama_context_params cparams = llama_context_default_params();
  cparams.n_ctx = window;
  cparams.n_batch = window;
  cparams.n_ubatch = window;
  cparams.n_threads = threads;
  cparams.n_threads_batch = threads;
  struct llama_context* ctx = llama_init_from_model(model, cparams);
  if (ctx == NULL) {
    fprintf(stderr, "cannot create a context of %d tokens\n", window);
    return 1;
  }
  const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
  FILE* out = fopen(out_path, "wb");
  struct llama_batch batch = llama_batch_init(window, 0, 1);
  for (long w = 0; w < num_tokens / window; w++) {
    llama_memory_clear(llama_get_memory(ctx), true);
    batch.n_tokens = window;
    for (int i = 0; i < window; i++) {
      batch.token[i] = tokens[w * window + i];
      batch.pos[i] = i;
      batch.n_seq_id[i] = 1;
      batch.seq_id[i][0] = 0;
      batch.logits[i] = 1;
    }
    if (llama_decode(ctx, batch) != 0) {
      fprintf(stderr, "llama_decode failed on window %ld\n", w);
      return 1;
    }
    for (int i = 0; i < window; i++) fwrite(llama_get_logits_ith(ctx, i), 4, n_vocab, out);
  }
  fclose(out);
  llama_batch_free(batch);
  llama_free(ctx);
  llama_model_free(model);
  free(tokens);
  return 0;
}

int main(int argc, char** argv) {
  const int is_quantize = argc == 6 && strcmp(argv[1], "quantize") == 0;
  const int is_logits = argc == 8 && strcmp(argv[1], "logits") == 0;
  if (!is_quantize && !is_logits) {
    fprintf(stderr,
            "usage: %s quantize BACKEND_DIR IN.gguf OUT.gguf FTYPE\n"
            "       %s logits BACKEND_DIR MODEL.gguf TOKENS.i32 WINDOW OUT.f32 THREADS\n",
            argv[0], argv[0]);
    return 2;
  }
  // node-llama-cpp's build loads its CPU backends as plugins.
  ggml_backend_load_all_from_path(argv[2]);
  llama_backend_init();
  const int status = is_quantize ? quantize(argv[3], argv[4], atoi(argv[5]))
                                 : logits(argv[3], argv[4], atoi(argv[5]), argv[6], atoi(argv[7]));
  llama_backend_free();
  return status;
}
