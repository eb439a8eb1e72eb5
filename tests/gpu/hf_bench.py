# Hugging Face transformers baseline for tests/gpu/bench.ts: prefill and greedy decode tokens/s of
# `generate` on the same model directory, bf16 on the GPU. Prints one JSON line last.
#
#   python3 tests/gpu/hf_bench.py --model /tmp/l1b [--prefill-tokens 2048] [--context 512]
#       [--decode-steps 32] [--batches 1,16,64]
import argparse
import json
import statistics
import time

import torch
import transformers
from transformers import AutoModelForCausalLM


def timed(fn):
    torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--prefill-tokens", type=int, default=2048)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--batches", default="1,16,64")
    args = parser.parse_args()

    model = AutoModelForCausalLM.from_pretrained(
        args.model, torch_dtype=torch.bfloat16, attn_implementation="sdpa"
    ).to("cuda")
    model.eval()
    vocab = model.config.vocab_size
    gen = torch.Generator(device="cpu").manual_seed(0)

    with torch.inference_mode():
        ids = torch.randint(0, vocab, (1, args.prefill_tokens), generator=gen).to("cuda")
        model(ids, use_cache=False)  # warm-up
        prefill = statistics.median(timed(lambda: model(ids, use_cache=False)) for _ in range(3))

        decode = {}
        for batch in [int(b) for b in args.batches.split(",")]:
            prompt = torch.randint(0, vocab, (batch, args.context), generator=gen).to("cuda")
            mask = torch.ones_like(prompt)

            def run(new_tokens):
                model.generate(
                    prompt,
                    attention_mask=mask,
                    do_sample=False,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    pad_token_id=0,
                )

            run(2)  # warm-up
            # Decode time = generate(1 + steps) - generate(1): the prompt pass cancels out.
            first = statistics.median(timed(lambda: run(1)) for _ in range(2))
            full = statistics.median(timed(lambda: run(1 + args.decode_steps)) for _ in range(2))
            decode[str(batch)] = batch * args.decode_steps / max(full - first, 1e-9)

    print(
        json.dumps(
            {
                "prefillTokPerS": args.prefill_tokens / prefill,
                "decode": decode,
                "device": torch.cuda.get_device_name(0),
                "versions": f"torch {torch.__version__}, transformers {transformers.__version__}",
            }
        )
    )


if __name__ == "__main__":
    main()
