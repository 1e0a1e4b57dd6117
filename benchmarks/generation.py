"""Generation speed with the KV cache: meta vs plain model, and ours vs transformers' generate.

1. Meta model vs the same dims without meta-attention, greedy, same prompt (10% meta ids at
   random positions; the plain model reads them as ordinary ids). Rows for the inference
   policies: `none` (meta-tokens only in the prompt) and `every:N` (a meta-token fed after every
   N generated tokens; tokens/s counts sampled tokens, so inserted ones are pure overhead).
2. Our plain GPT-2 vs transformers.GPT2LMHeadModel.generate with identical config and weights
   (greedy, no EOS stop, same prompt); the outputs are checked to be identical.
Tokens/s is end to end (prefill of the prompt + new tokens), as a user sees it.

    python benchmarks/generation.py                    # tiny and gpt2-small
    python benchmarks/generation.py --shapes gpt2-small --new-tokens 256 --prompt 128
    python benchmarks/generation.py --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import json

import torch

from bench_utils import add_common_args, autocast, build, compare, median, median_ratio, print_machine, random_meta_batch, setup, table
from hf_compare import hf_gpt2

from metatokens.generation import generate
from metatokens.generation.decode import decoding_precision, generate_ids

DEFAULTS = {"toy": (16, 40), "tiny": (32, 64), "small": (64, 128), "gpt2-small": (64, 128)}  # (prompt, new tokens)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="tiny,gpt2-small")
    p.add_argument("--prompt", type=int, default=None, help="prompt tokens (default per shape)")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens to generate (default per shape)")
    p.add_argument("--every", type=int, default=16, help="N of the every:N policy row")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--json", help="also write both tables' rows to this JSON file (for gpu_check.sh)")
    add_common_args(p, repeats=5)
    args = p.parse_args()
    device = setup(args)
    print_machine(device, args)
    if args.compile:
        print("# --compile: generation runs eagerly (the cache and meta gathers change shape every step)")
    meta_rows, hf_rows = [], []
    for shape in args.shapes.split(","):
        P, N = DEFAULTS.get(shape, (64, 128))
        P, N = args.prompt or P, args.new_tokens or N
        meta, plain = build(shape, True, device).eval(), build(shape, False, device).eval()
        if args.dtype == "bf16":  # weights in bf16 (half the bytes per token), as `generate --dtype bf16`
            decoding_precision(meta, "bf16", device), decoding_precision(plain, "bf16", device)
        prompt, _ = random_meta_batch(1, P, meta.config.vocab_size, 0.1, device=device)

        def ours(model, policy="none"):
            def go():
                with autocast(args, device):
                    return generate_ids(model, prompt, N, policy=policy, temperature=0)
            return go

        every = f"every:{args.every}"
        t = compare({"plain": ours(plain), "meta": ours(meta), "meta " + every: ours(meta, every)}, device, args.repeats, args.warmup)
        for name in ("meta", "meta " + every):
            meta_rows.append([shape, f"{P} + {N}", name.replace("meta", "policy").replace("policy", "", 1).strip() or "none",
                              f"{N / median(t['plain']):.1f}", f"{N / median(t[name]):.1f}",
                              f"**{median_ratio(t[name], t['plain']):.3f}**"])
        del meta, plain
        if args.skip_hf:
            continue
        hf, ours_gpt2 = hf_gpt2(shape, device)
        hf.eval(), ours_gpt2.eval()
        if args.dtype == "bf16":
            hf.to(torch.bfloat16)
            decoding_precision(ours_gpt2, "bf16", device)
        hf.generation_config.eos_token_id = None  # never stop early: both produce exactly N tokens
        hf.generation_config.pad_token_id = 0
        text_prompt = prompt.masked_fill(prompt == 1, 2)  # a plain GPT-2 has no meta-token

        def run_hf():
            with torch.no_grad(), autocast(args, device):
                return hf.generate(text_prompt, max_new_tokens=N, do_sample=False, use_cache=True)

        def run_ours():
            with autocast(args, device):
                return generate(ours_gpt2, text_prompt, N, temperature=0)

        same = torch.equal(run_hf(), run_ours())
        t = compare({"ours": run_ours, "hf": run_hf}, device, args.repeats, args.warmup)
        hf_rows.append([shape, f"{P} + {N}", str(same), f"{N / median(t['ours']):.1f}", f"{N / median(t['hf']):.1f}",
                        f"**{median_ratio(t['ours'], t['hf']):.3f}**"])
    meta_header = ["shape", "prompt + new", "policy", "plain tok/s", "meta tok/s", "time meta/plain"]
    hf_header = ["shape", "prompt + new", "same tokens", "ours tok/s", "HF generate tok/s", "time ours/HF"]
    print()
    print(table(meta_rows, meta_header))
    if hf_rows:
        print()
        print(table(hf_rows, hf_header))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"meta": [dict(zip(meta_header, r)) for r in meta_rows],
                       "hf": [dict(zip(hf_header, r)) for r in hf_rows]}, f, indent=1)


if __name__ == "__main__":
    main()
