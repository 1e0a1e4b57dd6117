"""A/B two versions of the metatokens package in one process: training and decoding, meta and plain.

Used to measure each performance change to the model (metatokens/model/gpt.py) before/after, side by side. Point --old at a
copy of an older package folder (e.g. `git worktree add /tmp/old HEAD~1`, then
--old /tmp/old/src/metatokens); the current checkout is "new".

    python benchmarks/ab_model.py --old /tmp/old/src/metatokens --what train --shape tiny
    python benchmarks/ab_model.py --old /tmp/old/src/metatokens --what train --shape tiny --pos-encoding rope
    python benchmarks/ab_model.py --old /tmp/old/src/metatokens --what decode --shape tiny --new-tokens 64
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

from bench_utils import add_common_args, clock, compare, sync, median, median_ratio, print_machine, random_meta_batch, setup, table

import metatokens


def load_package(folder: str, name: str):
    """Import the package in `folder` under another name, so two versions can live side by side."""
    init = Path(folder) / "__init__.py"
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    try:  # the layout since the model package (metatokens/model/), else the flat one before it
        return importlib.import_module(f"{name}.model.gpt"), importlib.import_module(f"{name}.model.config")
    except ModuleNotFoundError:
        return importlib.import_module(f"{name}.model"), importlib.import_module(f"{name}.config")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", required=True, help="folder of the old metatokens package")
    p.add_argument("--what", default="train", choices=["train", "decode"])
    p.add_argument("--shape", default="tiny")
    p.add_argument("--pos-encoding", default="ape", choices=["ape", "rope", "none"], help="the models' positions (default ape)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128, help="training length, or prompt length when decoding")
    p.add_argument("--new-tokens", type=int, default=64)
    add_common_args(p, repeats=9)
    args = p.parse_args()
    device = setup(args)
    print_machine(device, args)
    versions = {"old": load_package(args.old, "metatokens_old"),
                "new": (importlib.import_module("metatokens.model.gpt"), importlib.import_module("metatokens.model.config"))}
    print(f"# new: {Path(metatokens.__file__).parent}, old: {args.old}")
    fns = {}
    for tag, (model_mod, config_mod) in versions.items():
        for meta in (True, False):
            torch.manual_seed(0)
            cfg = config_mod.model_shape(args.shape, meta_attention=meta, meta_token_id=1, pos_encoding=args.pos_encoding)
            model = model_mod.GPT(cfg).to(device)
            B = args.batch if args.what == "train" else 1
            x, y = random_meta_batch(B, args.seq, cfg.vocab_size, 0.1, device=device)
            if args.what == "train":
                model.train()

                def go(model=model, x=x, y=y):
                    _, loss = model(x, y)
                    loss.backward()
            else:
                model.eval()

                @torch.no_grad()
                def go(model=model, x=x, mod=model_mod):  # times the decode steps only, not the prefill
                    cache = mod.KVCache.empty(model.config.n_layer)
                    model.hidden_states(x, cache=cache)
                    tok = torch.full((1, 1), 5, device=device)
                    sync(device)
                    t0 = clock()
                    for _ in range(args.new_tokens):
                        model.lm_head(model.hidden_states(tok, cache=cache)[:, -1])
                    sync(device)
                    return clock() - t0
            fns[f"{tag} {'meta' if meta else 'plain'}"] = go
    t = compare(fns, device, args.repeats, args.warmup)
    rows = [[name, f"{median(v) * 1e3:.1f}"] for name, v in t.items()]
    print()
    print(table(rows, ["version", f"{args.what} ms" + (f" ({args.new_tokens} steps after a {args.seq}-token prefill)" if args.what == "decode" else "")]))
    print()
    print(table([
        ["meta / plain", f"{median_ratio(t['old meta'], t['old plain']):.3f}", f"{median_ratio(t['new meta'], t['new plain']):.3f}"],
        ["new / old", f"meta {median_ratio(t['new meta'], t['old meta']):.3f}", f"plain {median_ratio(t['new plain'], t['old plain']):.3f}"],
    ], ["ratio", "old", "new"]))


if __name__ == "__main__":
    main()
