"""Our plain GPT-2 vs transformers.GPT2LMHeadModel with an identical config and the same weights.

Weights are copied with metatokens.hf (HF Conv1D -> our Linear). Forward (eval, no_grad) and
forward + backward (train mode, loss on shifted ids), interleaved, medians. The first column
checks the two give the same logits.

    python benchmarks/hf_compare.py                       # gpt2-small dims, batch 1 x 256
    python benchmarks/hf_compare.py --shape tiny --batch 8 --seq 128
    python benchmarks/hf_compare.py --device cuda --dtype bf16 --compile --batch 8 --seq 1024
"""

from __future__ import annotations

import argparse

import torch

from bench_utils import add_common_args, autocast, compare, maybe_compile, median, median_ratio, print_machine, setup, table

from metatokens.model.config import MODEL_SHAPES
from metatokens.hf.gpt2 import config_from_hf_gpt2, state_dict_from_hf_gpt2
from metatokens.model import GPT


def hf_gpt2(shape: str, device):
    import transformers

    s = MODEL_SHAPES[shape]
    cfg = transformers.GPT2Config(
        vocab_size=s["vocab_size"], n_positions=s["block_size"], n_embd=s["n_embd"], n_layer=s["n_layer"],
        n_head=s["n_head"], activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=0,
    )
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(cfg).to(device)  # transformers picks SDPA attention by default
    ours = GPT(config_from_hf_gpt2(hf.config)).to(device)
    ours.load_state_dict(state_dict_from_hf_gpt2(hf.state_dict()), strict=True)
    return hf, ours


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="gpt2-small")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=256)
    add_common_args(p, repeats=7)
    args = p.parse_args()
    device = setup(args)
    print_machine(device, args)
    hf, ours = hf_gpt2(args.shape, device)
    print(f"# transformers attention implementation: {hf.config._attn_implementation}")
    idx = torch.randint(0, ours.config.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        diff = (hf.eval()(idx).logits - ours.eval()(idx)[0]).abs().max().item()
    hf_run, ours_run = maybe_compile(hf, args), maybe_compile(ours, args)
    targets = torch.roll(idx, -1, 1)

    def fwd(model, is_hf):
        def go():
            with torch.no_grad(), autocast(args, device):
                return model(idx).logits if is_hf else model(idx)[0]
        return go

    def fwd_bwd(model, is_hf):
        def go():
            with autocast(args, device):
                # Both losses are cross-entropy over the same (position, next id) pairs.
                logits = model(idx).logits if is_hf else model(idx)[0]
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
            loss.backward()
        return go

    hf.eval(), ours.eval()
    t_f = compare({"ours": fwd(ours_run, False), "hf": fwd(hf_run, True)}, device, args.repeats, args.warmup)
    hf.train(), ours.train()
    t_b = compare({"ours": fwd_bwd(ours_run, False), "hf": fwd_bwd(hf_run, True)}, device, args.repeats, args.warmup)
    tokens = args.batch * args.seq
    rows = []
    for name, t in (("forward", t_f), ("forward+backward", t_b)):
        rows.append([name, f"{args.batch}x{args.seq}", f"{median(t['ours']) * 1e3:.1f}", f"{median(t['hf']) * 1e3:.1f}",
                     f"{tokens / median(t['ours']):.0f}", f"{tokens / median(t['hf']):.0f}",
                     f"**{median_ratio(t['ours'], t['hf']):.3f}**"])
    print(f"# max |logits ours - logits HF| = {diff:.2e}")
    print()
    print(table(rows, ["pass", "B x T", "ours ms", "HF ms", "ours tok/s", "HF tok/s", "time ours/HF"]))


if __name__ == "__main__":
    main()
