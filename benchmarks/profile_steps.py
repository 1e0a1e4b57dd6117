"""torch.profiler of one training step and one decode step; prints the ops that take the time.

    python benchmarks/profile_steps.py --shape tiny
    python benchmarks/profile_steps.py --shape gpt2-small --batch 1 --seq 256 --context 256
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from bench_utils import add_common_args, autocast, build, print_machine, random_meta_batch, setup

from metatokens.generation import stream
from metatokens.model import KVCache


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128, help="training sequence length")
    p.add_argument("--context", type=int, default=96, help="tokens already in the cache at the profiled decode step")
    p.add_argument("--rows", type=int, default=18, help="profiler table rows")
    p.add_argument("--no-meta", action="store_true", help="profile the model without meta-attention")
    p.add_argument("--what", default="train,decode,generate")
    add_common_args(p, repeats=1)
    args = p.parse_args()
    device = setup(args)
    print_machine(device, args)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    model = build(args.shape, not args.no_meta, device)
    vocab = model.config.vocab_size

    if "train" in args.what:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x, y = random_meta_batch(args.batch, args.seq, vocab, 0.1, device=device)

        def train_step():
            with autocast(args, device):
                _, loss = model(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        model.train()
        train_step()  # warm-up (optimizer state allocation)
        with profile(activities=activities) as prof:
            train_step()
        print(f"\n## training step {args.shape}, batch {args.batch} x {args.seq}, k=0.1")
        print(prof.key_averages().table(sort_by=sort, row_limit=args.rows))

    model.eval()
    if "decode" in args.what:
        prompt, _ = random_meta_batch(1, args.context, vocab, 0.1, device=device)
        with torch.no_grad(), autocast(args, device):
            cache = KVCache.empty(model.config.n_layer)
            model.hidden_states(prompt, cache=cache)
            tok = torch.full((1, 1), 5, device=device)
            for _ in range(3):  # warm-up steps
                model.lm_head(model.hidden_states(tok, cache=cache)[:, -1])
            with profile(activities=activities) as prof:
                for _ in range(10):
                    model.lm_head(model.hidden_states(tok, cache=cache)[:, -1])
        print(f"\n## 10 decode steps (text token) {args.shape}, cache length {args.context}")
        print(prof.key_averages().table(sort_by=sort, row_limit=args.rows))

    if "generate" in args.what:
        prompt, _ = random_meta_batch(1, args.context, vocab, 0.1, device=device)
        with autocast(args, device):
            list(stream(model, prompt, 3, temperature=0))
            with profile(activities=activities) as prof:
                list(stream(model, prompt, 16, temperature=0))
        print(f"\n## generate.stream: prefill {args.context} + 16 greedy tokens, {args.shape}")
        print(prof.key_averages().table(sort_by=sort, row_limit=args.rows))


if __name__ == "__main__":
    main()
