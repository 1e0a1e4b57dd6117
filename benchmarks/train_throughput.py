"""Training cost per token of the meta model vs the same dims without meta-attention.

One training step = forward + backward + AdamW step on random tokens with round(k*T) meta-tokens
at random positions in every row (k = 0.1, the paper's rate). Both models see the same ids; for
the plain model the meta id is just another token. Timing is interleaved (meta, plain, meta,
plain, ...) and each ratio is the median of per-repeat ratios.

    python benchmarks/train_throughput.py                         # tiny and gpt2-small on CPU
    python benchmarks/train_throughput.py --shapes tiny,gpt2-small:1x256,gpt2-small:4x256 --threads 1 --clock cpu
    python benchmarks/train_throughput.py --device cuda --dtype bf16 --compile --batch 8 --seq 1024
"""

from __future__ import annotations

import argparse

import torch

from bench_utils import (
    add_common_args, autocast, build, compare, maybe_compile, median, median_ratio, print_machine,
    random_meta_batch, setup, table,
)

# CPU defaults that finish in minutes on 2 cores: (batch, seq, repeats)
DEFAULTS = {"toy": (8, 64, 15), "tiny": (8, 128, 15), "small": (4, 256, 7), "gpt2-small": (1, 256, 5)}
PAPER_TOKENS_PER_STEP = 12 * 40 * 1024  # micro-batch 12 x 40 accumulation x block 1024 (SPEC section 4)


def extra_flops_fraction(cfg, T: int, k: float, every_token: bool) -> float:
    """Multiply-adds the meta sublayer adds per token, over those of the plain model (forward).

    Plain, per token: L * (12 C^2 projections/MLP + T*C causal attention on average) + V*C head.
    Meta: 4 C^2 projections per layer on a fraction k of the tokens (sparse path) or on every
    token (a dense implementation), plus m x m attention among ~k*T meta keys.
    """
    C, L, V = cfg.n_embd, cfg.n_layer, cfg.vocab_size
    plain = L * (12 * C * C + T * C) + V * C
    share = 1.0 if every_token else k
    meta = L * (4 * C * C * share + k * k * T * C)
    return meta / plain


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="tiny,gpt2-small",
                   help="comma-separated model shapes, each optionally with :BxT (rows x tokens per step)")
    p.add_argument("--k", type=float, default=0.1, help="meta-tokens per token (paper: 0.1)")
    p.add_argument("--optimizer", default="fused", choices=["fused", "foreach", "single"],
                   help="AdamW implementation used for both models (default: fused)")
    add_common_args(p, repeats=0)  # 0: per-shape default, shown in the table
    args = p.parse_args()
    device = setup(args)
    print_machine(device, args)
    rows, detail = [], []
    for spec in args.shapes.split(","):
        shape, _, bt = spec.partition(":")
        B, T, R = DEFAULTS.get(shape, (4, 256, 5))
        if bt:
            B, T = (int(v) for v in bt.split("x"))
            R = max(3, R * 256 // (B * T)) if shape == "gpt2-small" else R
        R = args.repeats or R
        fns, n_params, opt_fns = {}, {}, {}
        for meta in (True, False):
            model = build(shape, meta, device).train()
            n_params[meta] = model.num_params()
            kind = {"fused": dict(fused=True), "foreach": dict(foreach=True), "single": dict(foreach=False)}[args.optimizer]
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, **kind)
            run = maybe_compile(model, args)
            x, y = random_meta_batch(B, T, model.config.vocab_size, args.k, device=device)
            tag = "meta" if meta else "plain"

            def fwd_bwd(run=run, model=model, x=x, y=y):
                with autocast(args, device):
                    _, loss = run(x, y)
                loss.backward()

            def step(fwd_bwd=fwd_bwd, opt=opt):
                fwd_bwd()
                opt.step()
                opt.zero_grad(set_to_none=False)  # keep gradient buffers: no page faults every step

            fns[f"{tag} step"] = step
            fns[f"{tag} fwd+bwd"] = lambda fwd_bwd=fwd_bwd, opt=opt: (fwd_bwd(), opt.zero_grad(set_to_none=False))
            opt_fns[tag] = opt.step
        cfg = build(shape, True, "meta").config
        t = compare({**fns, "meta adamw": opt_fns["meta"], "plain adamw": opt_fns["plain"]}, device, R, args.warmup)
        tok = B * T
        fb = median_ratio(t["meta fwd+bwd"], t["plain fwd+bwd"])
        st = median_ratio(t["meta step"], t["plain step"])
        # At the paper's 0.49M tokens per optimizer step the AdamW cost per token vanishes:
        fb_m, fb_p = median(t["meta fwd+bwd"]) / tok, median(t["plain fwd+bwd"]) / tok
        ad_m, ad_p = median(t["meta adamw"]), median(t["plain adamw"])
        paper = (fb * fb_p * PAPER_TOKENS_PER_STEP + ad_m) / (fb_p * PAPER_TOKENS_PER_STEP + ad_p)
        rows.append([
            shape, f"{B}x{T}", R, f"{n_params[True] / n_params[False]:.3f}",
            f"{1 + extra_flops_fraction(cfg, T, args.k, False):.3f}", f"{1 + extra_flops_fraction(cfg, T, args.k, True):.3f}",
            f"{fb_m * 1e6:.1f} / {fb_p * 1e6:.1f}", f"**{fb:.3f}**",
            f"{ad_m * 1e3:.0f} / {ad_p * 1e3:.0f}", f"{st:.3f}", f"{paper:.3f}",
        ])
        detail.append(f"{shape}: " + ", ".join(f"{k} {median(v) * 1e3:.1f} ms" for k, v in t.items()))
    print()
    print(table(rows, [
        "shape", "B x T", "repeats", "params ratio", "FLOPs ratio (sparse)", "FLOPs ratio (all tokens)",
        "fwd+bwd us/token meta / plain", "fwd+bwd ratio", "AdamW ms meta / plain", "step ratio (this batch)",
        "step ratio at 0.49M tok/step",
    ]))
    print()
    for line in detail:
        print(f"# {line}")


if __name__ == "__main__":
    main()
