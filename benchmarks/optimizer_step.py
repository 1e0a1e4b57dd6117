"""AdamW step time for the meta and plain models: single-tensor, foreach and fused implementations.

On CPU with small batches the optimizer is a large share of a training step (it touches every
parameter four times regardless of the tokens per step), so its implementation matters.

    python benchmarks/optimizer_step.py --shapes tiny,gpt2-small
"""

from __future__ import annotations

import argparse

import torch

from bench_utils import add_common_args, build, compare, median, median_ratio, print_machine, setup, table

KINDS = {"single": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="tiny,gpt2-small")
    add_common_args(p, repeats=5)
    args = p.parse_args()
    device = setup(args)
    print_machine(device, args)
    rows = []
    for shape in args.shapes.split(","):
        fns, params = {}, {}
        for meta in (True, False):
            model = build(shape, meta, device)
            params[meta] = model.num_params()
            for p_ in model.parameters():
                p_.grad = torch.randn_like(p_) * 1e-3
            for kind, kw in KINDS.items():
                fns[(meta, kind)] = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, **kw).step
        t = compare(fns, device, args.repeats, args.warmup)
        for kind in KINDS:
            rows.append([shape, kind, f"{median(t[(True, kind)]) * 1e3:.1f}", f"{median(t[(False, kind)]) * 1e3:.1f}",
                         f"{median_ratio(t[(True, kind)], t[(False, kind)]):.3f}", f"{params[True] / params[False]:.3f}",
                         f"{median_ratio(t[(True, kind)], t[(True, 'single')]):.3f}"])
    print()
    print(table(rows, ["shape", "AdamW", "meta ms", "plain ms", "meta/plain", "params ratio", "vs single-tensor (meta)"]))


if __name__ == "__main__":
    main()
