"""Training speed of the four CPU/GPU paths side by side: eager fp32, compiled, bf16, compiled + bf16.

One training step = forward + backward + fused AdamW on random tokens with round(k*T) meta-tokens
at random positions in every row (k = 0.1). Each variant gets its own copy of the same initial
weights and cycles through the same 4 batches (different meta positions each, as in training), so
a compiled model that recompiled for every new batch would show it. Every repeat runs each
variant once in a rotating order; a ratio is the median of per-repeat ratios (see bench_utils).

Columns: tokens/s of each variant, its speed-up over eager fp32, and meta / plain (time of the
meta model over the same dims without meta-attention) for each variant. With --curve N, every
variant also trains N steps from the same weights on the same batches and the table reports
the largest |loss - eager fp32 loss| over those steps (what "same loss curve" means here).

    python benchmarks/fast_path.py --shapes tiny:8x128,tiny:32x128 --threads 1 --clock cpu --curve 20
    python benchmarks/fast_path.py --shapes gpt2-small:1x256,gpt2-small:4x256 --threads 1 --clock cpu --repeats 3
    python benchmarks/fast_path.py --device cuda --shapes gpt2-small:8x1024 --variants fp32,bf16,compiled+bf16
    python benchmarks/fast_path.py --finetune --threads 1 --clock cpu --curve 20
    python benchmarks/fast_path.py --head scored --variants fp32 --threads 1 --clock cpu --repeats 31

--head scored calls the model as the training loop does (``logits=False``: the LM head only where a
target is scored; a meta-token's target is not, so the meta model's head covers about 1 - k of the
positions); the default runs the head over every position for both models.

--finetune times the tiny study's fine-tuning step instead: real rows of the task mixture that
`metatokens reproduce --scale tiny` fine-tunes on (its tasks, shares, L and batch, read from
`metatokens.study.design.SCALES["tiny"]`; the built-in BPE of 2,048 ids), where only the answer
tokens are scored, and compares the LM head over every position (``logits=True``) with the head
at the scored positions only (``logits=False``, what the training loop calls), eager and compiled
(and compiled with dynamic shapes from the first step: a batch's width is its longest row, so it
changes from batch to batch, and the default compile specialises on the first width and then
recompiles).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import time

import torch

from bench_utils import (
    DTYPES, add_common_args, build, compare, median, median_ratio, print_machine, random_meta_batch, setup, table,
)

from metatokens.training.setup import KNOWN_PEAK_TFLOPS, flops_per_token

VARIANTS = {"fp32": (False, "fp32"), "compiled": (True, "fp32"), "bf16": (False, "bf16"), "compiled+bf16": (True, "bf16")}
DEFAULT_REPEATS = {"toy": 15, "tiny": 15, "gpt2-small": 3}


def device_peak(args, device) -> float | None:
    """Peak dense bf16 FLOP/s for the MFU column: --peak-tflops, else a known GPU's, else None."""
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v * 1e12 for k, v in KNOWN_PEAK_TFLOPS.items() if k in name), None)


def make_step(model, compiled: bool | str, dtype: str, batches, device, optimiser=None, **forward_kw):
    """A closure that runs one optimiser step on the next batch; returns (step, losses list).
    compiled="dynamic": torch.compile(dynamic=True), symbolic shapes from the first call. `optimiser`:
    default a fused AdamW over every parameter (vs_nanogpt.py passes nanoGPT's own)."""
    run = torch.compile(model, dynamic=True if compiled == "dynamic" else None) if compiled else model
    opt = optimiser or torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=True)
    ctx = (lambda: torch.autocast(device.type, dtype=DTYPES[dtype])) if dtype != "fp32" else contextlib.nullcontext
    state = {"i": 0}
    losses: list[float] = []

    def step(record: bool = False):
        x, y = batches[state["i"] % len(batches)]
        state["i"] += 1
        with ctx():
            _, loss = run(x.to(device), y.to(device), **forward_kw)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)  # as the training loop does (until 2026-12-08: False)
        if record:
            losses.append(loss.item())

    return step, losses


def finetune_batches(n: int, seed: int = 0):
    """n micro-batches of the tiny study's fine-tuning mixture, as train_loop receives them, and a
    line naming that mixture."""
    from metatokens.data import builtin_documents
    from metatokens.training.task_batches import TaskBatches, TaskSpec, plan_phases
    from metatokens.study.design import SCALES
    from metatokens.tokenizer import MetaTokenizer

    sc = SCALES["tiny"]
    tok = MetaTokenizer.train(list(builtin_documents()), 2048)
    spec = TaskSpec(task=",".join(sc.tasks), max_len=sc.ft_len)
    plans = [plan_phases(spec, tok, True, task) for task in sc.tasks]
    src = TaskBatches(list(sc.tasks), tok, plans, batch_size=sc.ft_batch, seed=seed, meta=True, total_batches=n,
                      weights=list(sc.ft_weights))
    mix = ":".join(map(str, sc.ft_weights)) + f" {', '.join(sc.tasks)} at L = {sc.ft_len}"
    return [src.next_batch() for _ in range(n)], tok, mix


def finetune_main(args, device) -> None:
    batches, tok, mix = finetune_batches(8)
    scored = sum(int((y != -100).sum()) for _, y in batches) / sum(y.numel() for _, y in batches)
    R = args.repeats or 9
    fns, first, curves = {}, {}, {}
    variants = {"eager, full head": (False, True), "eager, scored head": (False, False),
                "compiled, full head": (True, True), "compiled, scored head": (True, False),
                "compiled dynamic, scored head": ("dynamic", False)}
    for meta in (True, False):
        base = build("tiny", meta, device, vocab_size=len(tok), block_size=256, pos_encoding="rope").train()
        for name, (compiled, full) in variants.items():
            def make(model, compiled=compiled, full=full):
                return make_step(model, compiled, "fp32", batches, device, logits=full)

            step, _ = make(copy.deepcopy(base))
            t0 = time.perf_counter()
            for _ in range(len(batches)):
                step()
            first[(name, meta)] = time.perf_counter() - t0
            fns[f"{name} {'meta' if meta else 'plain'}"] = step
            if args.curve and meta:
                curve_step, losses = make(copy.deepcopy(base))
                for _ in range(args.curve):
                    curve_step(record=True)
                curves[name] = losses
    t = compare(fns, device, R, args.warmup)
    tok_step = sum(x.numel() for x, _ in batches) / len(batches)
    rows = []
    for name in variants:
        m, pl = t[f"{name} meta"], t[f"{name} plain"]
        gap = ""
        if args.curve:
            ref = curves["eager, full head"]
            gap = f"{max(abs(a - b) for a, b in zip(curves[name], ref)):.2e}"
        rows.append([name, f"{median(m) * 1e3:.0f}", f"{tok_step / median(m):,.0f}",
                     f"**{median_ratio(t['eager, full head meta'], m):.2f}x**", f"{median_ratio(m, pl):.3f}",
                     f"{first[(name, True)]:.0f} / {first[(name, False)]:.0f}", *([gap] if args.curve else [])])
    print(f"\n# fine-tuning rows ({mix}): {tok_step:.0f} tokens per micro-batch of {batches[0][0].size(0)}, "
          f"{100 * scored:.1f}% of the targets scored; repeats {R}")
    print(table(rows, ["variant", "meta ms/step", "meta tok/s", "speed-up vs eager full head", "meta / plain",
                       "first 8 steps s (meta / plain)", *([f"max loss gap over {args.curve} steps"] if args.curve else [])]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="tiny:8x128,tiny:32x128", help="comma-separated SHAPE:BxT")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    p.add_argument("--k", type=float, default=0.1, help="meta-tokens per token (paper: 0.1)")
    p.add_argument("--pos-encoding", default="ape", choices=["ape", "rope", "none"],
                   help="positions of the pre-training models (default ape, the shapes' own)")
    p.add_argument("--head", default="full", choices=["full", "scored"],
                   help="the LM head over every position (default; the rows of sections 5-10) or only where a target "
                        "is scored (logits=False, as the training loop calls it; a meta-token's target is not scored)")
    p.add_argument("--curve", type=int, default=0, help="also train N steps per variant and report the loss gap")
    p.add_argument("--finetune", action="store_true", help="time the tiny study's fine-tuning step (see above)")
    p.add_argument("--json", help="also write the rows to this JSON file (for gpu_check.sh)")
    p.add_argument("--peak-tflops", type=float, help="device peak for the MFU column (default: known GPUs)")
    add_common_args(p, repeats=0)
    args = p.parse_args()
    device = setup(args)
    print_machine(device, args)
    if args.finetune:
        return finetune_main(args, device)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or "fp32" not in variants:
        p.error(f"--variants must include fp32 and name only {', '.join(VARIANTS)} (got {args.variants})")
    rows, notes = [], []
    full_head = args.head == "full"
    print(f"# LM head: {'every position' if full_head else 'scored positions only (logits=False)'}")
    peak = device_peak(args, device)
    for spec in args.shapes.split(","):
        shape, _, bt = spec.partition(":")
        B, T = (int(v) for v in (bt or "8x128").split("x"))
        R = args.repeats or DEFAULT_REPEATS.get(shape, 5)
        batches = [random_meta_batch(B, T, build(shape, True, "meta").config.vocab_size, args.k, seed=s, device=device)
                   for s in range(4)]
        fns, compile_s, gap = {}, {}, {}
        for meta in (True, False):
            base = build(shape, meta, device, pos_encoding=args.pos_encoding).train()
            for v in variants:
                compiled, dtype = VARIANTS[v]
                step, _ = make_step(copy.deepcopy(base), compiled, dtype, batches, device, logits=full_head)
                t0 = time.perf_counter()
                for _ in range(len(batches)):  # compile (and warm up) on every batch before timing
                    step()
                compile_s[(v, meta)] = time.perf_counter() - t0
                fns[(v, meta)] = step
                if args.curve and meta:
                    curve_step, losses = make_step(copy.deepcopy(base), compiled, dtype, batches, device, logits=full_head)
                    for _ in range(args.curve):
                        curve_step(record=True)
                    gap[v] = losses
        t = compare({f"{v} {'meta' if m else 'plain'}": f for (v, m), f in fns.items()}, device, R, args.warmup)
        tok = B * T
        fpt = {m: flops_per_token(build(shape, m, "meta", pos_encoding=args.pos_encoding)) for m in (True, False)}
        for v in variants:
            meta_t, plain_t = t[f"{v} meta"], t[f"{v} plain"]
            speedup = median_ratio(t["fp32 meta"], meta_t)
            curve = ""
            if args.curve:
                ref = gap["fp32"]
                curve = f"{max(abs(a - b) for a, b in zip(gap[v], ref)):.4f}" + f" (last {gap[v][-1]:.3f} vs {ref[-1]:.3f})"
            mfu = ""
            if peak:
                mfu = " / ".join(f"{100 * tok / median(x) * fpt[m] / peak:.1f}%" for x, m in ((meta_t, True), (plain_t, False)))
            rows.append([
                shape, f"{B}x{T}", R, v, f"{tok / median(meta_t):,.0f}", f"{tok / median(plain_t):,.0f}",
                f"**{speedup:.2f}x**", f"{median_ratio(meta_t, plain_t):.3f}",
                f"{compile_s[(v, True)]:.0f} / {compile_s[(v, False)]:.0f}", *([mfu] if peak else []),
                *([curve] if args.curve else []),
            ])
        notes.append(f"{shape} {B}x{T}: " + ", ".join(f"{k} {median(x) * 1e3:.1f} ms" for k, x in t.items()))
    print()
    header = ["shape", "B x T", "repeats", "variant", "meta tok/s", "plain tok/s", "meta speed-up vs eager fp32",
              "meta / plain", "first 4 steps s (meta / plain)", *(["MFU meta / plain"] if peak else []),
              *([f"max loss gap over {args.curve} steps"] if args.curve else [])]
    print(table(rows, header))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([dict(zip(header, map(str, r))) for r in rows], f, indent=1)
    print()
    for line in notes:
        print(f"# {line}")


if __name__ == "__main__":
    main()
