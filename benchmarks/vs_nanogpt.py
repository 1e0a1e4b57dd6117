"""Our training step against nanoGPT's, at the same dims, in one interleaved run.

nanoGPT's GPT (github.com/karpathy/nanoGPT, `model.py`) is what a user who wants to train a GPT-2
on a laptop or a GPU would pick. This benchmark imports that file from a checkout the user made;
nothing of it is copied into this repository. Without a checkout it prints one line and exits 0:

    git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT
    python benchmarks/vs_nanogpt.py --nanogpt /tmp/nanoGPT --threads 1 --clock cpu
    python benchmarks/vs_nanogpt.py --nanogpt /tmp/nanoGPT --shapes gpt2-small:4x256 --variants fp32,bf16 --repeats 3
    NANOGPT_DIR=/tmp/nanoGPT python benchmarks/vs_nanogpt.py --device cuda --shapes gpt2-small:8x1024 --variants bf16

Three models per shape, each built from its own seed-0 init, all stepping through the same 4 batches
of random tokens with round(k T) meta-tokens per row (k = 0.1):

- ours, meta: the meta model (meta-attention in every block), as `train_loop` calls it
  (`logits=False`: the LM head only at scored positions; a meta-token's target is not scored);
- ours, plain: the same dims without meta-attention, called the same way;
- nanoGPT: `GPT(GPTConfig(...))` at the same dims (learned positions, bias, tied embeddings, as
  ours), called as nanoGPT's `train.py` does (`model(x, y)`: the full LM head, every target scored).

A step is forward + backward + AdamW on every parameter. "same optimiser" gives every model
`torch.optim.AdamW(fused=True)` (weight decay 0.1, so the comparison is of the models); "as shipped"
gives nanoGPT its own `configure_optimizers` (on a CPU it picks the unfused AdamW; ours always fuses).
Columns: tokens/s, and the median of per-repeat time ratios against nanoGPT (below 1: faster).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import torch

from fast_path import make_step
from bench_utils import add_common_args, build, compare, median, median_ratio, print_machine, random_meta_batch, setup, table


def load_nanogpt(folder: str | None):
    """nanoGPT's model module from `folder`/model.py, or None (with the reason) if there is none."""
    if not folder:
        return None, "no nanoGPT checkout named (--nanogpt DIR or NANOGPT_DIR)"
    path = Path(folder) / "model.py"
    if not path.is_file():
        return None, f"{path} does not exist"
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    with contextlib.redirect_stdout(sys.stderr):  # it prints its parameter count
        spec.loader.exec_module(module)
    return module, ""


def nanogpt_like(module, ours):
    """nanoGPT's GPT at the dims of our plain model `ours`, seeded like ours."""
    c = ours.config
    torch.manual_seed(0)
    with contextlib.redirect_stdout(sys.stderr):
        return module.GPT(module.GPTConfig(block_size=c.block_size, vocab_size=c.vocab_size, n_layer=c.n_layer,
                                           n_head=c.n_head, n_embd=c.n_embd, dropout=0.0, bias=c.bias))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nanogpt", default=os.environ.get("NANOGPT_DIR"), help="a nanoGPT checkout (default $NANOGPT_DIR)")
    p.add_argument("--shapes", default="tiny:8x128,tiny:32x128", help="comma-separated SHAPE:BxT")
    p.add_argument("--variants", default="fp32,bf16", help="fp32 and/or bf16 (autocast)")
    p.add_argument("--optimiser", default="same,shipped", help="same (fused AdamW for all) and/or shipped")
    p.add_argument("--k", type=float, default=0.1, help="meta-tokens per token")
    p.add_argument("--json", help="also write the rows to this JSON file (for gpu_check.sh)")
    add_common_args(p, repeats=0)
    args = p.parse_args()
    module, why = load_nanogpt(args.nanogpt)
    if module is None:
        print(f"skipped: {why}; git clone https://github.com/karpathy/nanoGPT DIR, then --nanogpt DIR")
        return
    device = setup(args)
    print_machine(device, args)
    variants = [v for v in args.variants.split(",") if v]
    if any(v not in ("fp32", "bf16") for v in variants):
        p.error(f"--variants takes fp32 and bf16, got {args.variants}")
    rows = []
    for spec in args.shapes.split(","):
        shape, _, bt = spec.partition(":")
        B, T = (int(v) for v in (bt or "8x128").split("x"))
        R = args.repeats or (3 if shape == "gpt2-small" else 15)
        meta, plain = build(shape, True, device).train(), build(shape, False, device).train()
        theirs = nanogpt_like(module, plain).to(device).train()
        batches = [tuple(t.contiguous().to(device) for t in random_meta_batch(B, T, plain.config.vocab_size, args.k, seed=s))
                   for s in range(4)]
        for opt_kind in args.optimiser.split(","):
            for v in variants:
                fns = {}
                for name, model, ours in (("meta", meta, True), ("plain", plain, True), ("nanoGPT", theirs, False)):
                    if opt_kind == "shipped" and not ours:
                        with contextlib.redirect_stdout(sys.stderr):
                            optimiser = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), device.type)
                    else:
                        optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=True)
                    # ours: the training loop's call (the LM head only at scored positions); nanoGPT: its
                    # train.py's, model(x, y) (every target scored, a meta-token's too: the same head FLOPs
                    # up to the 10% of meta targets)
                    fns[name], _ = make_step(model, False, v, batches, device, optimiser, **({"logits": False} if ours else {}))
                    for _ in range(len(batches)):  # warm up on every batch (allocations, optimiser state)
                        fns[name]()
                t = compare(fns, device, R, args.warmup)
                tok = B * T
                rows.append([shape, f"{B}x{T}", R, v, opt_kind,
                             *(f"{tok / median(t[n]):,.0f}" for n in ("meta", "plain", "nanoGPT")),
                             f"**{median_ratio(t['meta'], t['nanoGPT']):.3f}**",
                             f"{median_ratio(t['plain'], t['nanoGPT']):.3f}", f"{median_ratio(t['meta'], t['plain']):.3f}"])
                print(f"# {shape} {B}x{T} {v} {opt_kind}: " + ", ".join(f"{n} {median(x) * 1e3:.1f} ms" for n, x in t.items()),
                      flush=True)
    header = ["shape", "B x T", "repeats", "dtype", "optimiser", "ours meta tok/s", "ours plain tok/s", "nanoGPT tok/s",
              "meta / nanoGPT", "plain / nanoGPT", "meta / plain"]
    print()
    print(table(rows, header))
    if args.json:
        Path(args.json).write_text(json.dumps([dict(zip(header, map(str, r))) for r in rows], indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
