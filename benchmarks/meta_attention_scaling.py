"""Dense (the paper's B x T x T mask) vs sparse (gather m meta positions) meta-attention as T grows.

m = round(0.1 * T) meta-tokens at random positions, batch 1. Measures forward + backward of the
meta-attention sublayer alone (`MetaAttention`), or of the whole model with --whole-model.

Time: interleaved repeats in this process, median. Memory, two measures (CPU has no
torch.cuda.max_memory_allocated):
  * saved MB: bytes of the tensors autograd keeps for backward (saved_tensors_hooks, each storage
    counted once). Exact and deterministic: the activation memory a training step holds.
  * peak MB: rise of the process's peak resident memory during one forward + backward: the peak
    (VmHWM in /proc/self/status) is reset to the current RSS first (`echo 5 > /proc/self/clear_refs`,
    Linux >= 4.0), and each case runs in a fresh subprocess so memory the allocator kept from an
    earlier case cannot hide a rise. Real (allocator and temporaries included), accurate to ~1 MB.
On CUDA both columns are replaced by torch.cuda.max_memory_allocated deltas.

Dense cost grows like T^2, sparse like m^2 = (kT)^2 plus O(T) gathers, so the gap grows with T
(the ratio tends to 1/k^2 = 100 for the attention part alone).

    python benchmarks/meta_attention_scaling.py
    python benchmarks/meta_attention_scaling.py --whole-model --lengths 256,1024,4096
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch
from bench_utils import (
    add_common_args,
    autocast,
    build,
    child_json,
    compare,
    median,
    median_ratio,
    print_machine,
    setup,
    step_memory,
    table,
)

from metatokens.model.gpt import PosInfo


def make_case(shape: str, impl: str, T: int, k: float, whole: bool, device):
    """A closure running one forward + backward, and the inputs it uses."""
    model = build(shape, True, device, meta_impl=impl, block_size=max(T, 64)).train()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(2, model.config.vocab_size, (1, T), generator=g)
    idx[0, torch.randperm(T, generator=g)[: round(k * T)]] = model.config.meta_token_id
    idx = idx.to(device)
    if whole:
        targets = torch.roll(idx, -1, 1)

        def run():
            _, loss = model(idx, targets)
            loss.backward()
        return run, model
    layer = model.h[0].meta_attn
    x = torch.randn(1, T, model.config.n_embd, device=device, requires_grad=True)
    is_meta = idx == model.config.meta_token_id
    pos = PosInfo(torch.arange(T, device=device), None, True, 1 / math.sqrt(model.config.head_dim))

    def run():
        layer(x, is_meta, pos).square().sum().backward()
    return run, model


def measure_memory(args) -> None:
    """Child process: print {"saved": bytes, "peak": bytes} for one case as JSON."""
    device = setup(args)
    run, _ = make_case(args.shape, args.impl, args.length, args.k, args.whole_model, device)
    print(json.dumps(step_memory(run, args, device)))


def memory_in_child(args, impl: str, T: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--impl", impl, "--length", str(T), "--shape", args.shape,
           "--k", str(args.k), "--device", args.device, "--dtype", args.dtype, "--threads", str(torch.get_num_threads())]
    if args.whole_model:
        cmd.append("--whole-model")
    return child_json(cmd)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="tiny", help="model dims (default tiny: 4 heads, d=128)")
    p.add_argument("--lengths", default="256,512,1024,2048,4096,8192")
    p.add_argument("--k", type=float, default=0.1, help="meta-tokens per token")
    p.add_argument("--whole-model", action="store_true", help="whole model forward + backward instead of the sublayer")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", default="sparse", help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, default=256, help=argparse.SUPPRESS)
    add_common_args(p, repeats=5)
    args = p.parse_args()
    if args.child:
        measure_memory(args)
        return
    device = setup(args)
    print_machine(device, args)
    what = "whole model" if args.whole_model else "meta-attention sublayer"
    print(f"# {what} forward + backward, batch 1, m = round({args.k} T), dims of {args.shape}")
    rows = []
    for T in (int(t) for t in args.lengths.split(",")):
        cases = {impl: make_case(args.shape, impl, T, args.k, args.whole_model, device)[0] for impl in ("dense", "sparse")}
        repeats = args.repeats if T <= 2048 else max(3, args.repeats // 2)

        def wrap(fn):
            def go():
                with autocast(args, device):
                    fn()
            return go

        t = compare({k: wrap(v) for k, v in cases.items()}, device, repeats, args.warmup)
        del cases
        mem = {} if args.no_memory else {impl: memory_in_child(args, impl, T) for impl in ("dense", "sparse")}
        m = round(args.k * T)
        row = [T, m, f"{median(t['dense']) * 1e3:.1f}", f"{median(t['sparse']) * 1e3:.2f}",
               f"**{median_ratio(t['dense'], t['sparse']):.1f}x**", f"{(T / m) ** 2:.0f}"]
        if mem:
            row += [f"{mem['dense']['saved'] / 2**20:.1f}", f"{mem['sparse']['saved'] / 2**20:.2f}",
                    f"{mem['dense']['peak'] / 2**20:.0f}", f"{mem['sparse']['peak'] / 2**20:.0f}"]
        rows.append(row)
        print(f"# T={T} done", flush=True)
    header = ["T", "m", "dense ms", "sparse ms", "time dense/sparse", "T^2/m^2"]
    if not args.no_memory:
        header += ["dense saved MB", "sparse saved MB", "dense peak MB", "sparse peak MB"]
    print()
    print(table(rows, header))


if __name__ == "__main__":
    main()
