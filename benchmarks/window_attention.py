"""Windowed self-attention (`model.attn_window = W`) against full causal attention (issue #29).

Four measurements (and 1b), each full vs windowed on the same weights and inputs, interleaved, median:
1. the self-attention sublayer alone (`CausalSelfAttention`, dims of --attn-shape), forward +
   backward, at --length with meta-tokens at random positions at each rate of --rates (default one
   per 128 tokens and k = 0.1). Columns: full causal SDPA, the blocked windowed path, and the dense
   (B, T, T) mask of the definition (the naive way to get the same numbers); the windowed layout
   (where the window and the meta keys are) is built inside the timed call, as a forward does once;
1b. the attention operation alone (q, k, v given, no projections; the sublayer's projections cost the
   same either way and cap its ratio), full causal SDPA against the windowed layout and attention;
1c. --kernel: why the windowed path falls short of its arithmetic. One unmasked SDPA call, forward +
   backward, over the same T queries and the same K keys per query (K = the blocked path's width, read
   from its layout at the first rate of --rates), with the queries cut into T / C groups of C that each read their own K keys. C = 64
   is the windowed path's chunk; C = T is one long call. The arithmetic is the same in every row;
   the time shows what the kernel charges per call shape;
2. --scaling: the same sublayer over --lengths, the rows of the figure (--plot PATH draws it);
3. the whole model (--model-shape, RoPE, meta-attention), one training step's forward + backward:
   time, autograd's saved bytes and the peak resident memory of one step (each case in a fresh
   subprocess; see meta_attention_scaling.py for how both are measured);
4. generation with the KV cache at each context of --contexts: a prompt of that many tokens (meta
   rate 1/128), then --new-tokens greedy steps under the every:128 policy; prefill seconds, decode
   tokens/s and the cache's bytes (KVCache.nbytes: capacity included), full cache vs bounded cache.

    python benchmarks/window_attention.py                      # the issue's sizes (slow on a CPU)
    python benchmarks/window_attention.py --quick              # tiny sizes: proves the script runs
    python benchmarks/window_attention.py --scaling --plot window_scaling.png
    python benchmarks/window_attention.py --kernel --skip sublayer,model,generation   # section 1c alone
    python benchmarks/window_attention.py --skip sublayer,model --plot-generation window_generation.png --json gen.json
    python benchmarks/window_attention.py --replot gen.json --plot-generation window_generation.png   # redraw only
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
    clock,
    compare,
    median,
    median_ratio,
    print_machine,
    setup,
    step_memory,
    table,
)

from metatokens.model.cache import KVCache
from metatokens.model.config import model_shape
from metatokens.model.gpt import GPT, CausalSelfAttention, PosInfo
from metatokens.model.window import WindowLayout
from metatokens.plotting import pyplot, save_figure

IMPLS = ("full", "blocked", "dense")  # full causal attention; the windowed path; the windowed dense mask


def meta_positions(B: int, T: int, rate: float, seed: int = 0) -> torch.Tensor:
    """(B, T) bool with round(rate * T) meta-tokens at uniformly random positions per row, as in pre-training."""
    g = torch.Generator().manual_seed(seed)
    is_meta = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        is_meta[b, torch.randperm(T, generator=g)[: round(rate * T)]] = True
    return is_meta


def sublayer_case(shape: str, T: int, W: int, rate: float, impl: str, device):
    """One forward + backward of a self-attention sublayer on random inputs."""
    torch.manual_seed(0)
    cfg = model_shape(shape, pos_encoding="none", meta_token_id=1)
    attn = CausalSelfAttention(cfg).to(device).train()
    x = torch.randn(1, T, cfg.n_embd, device=device, requires_grad=True)
    is_meta = meta_positions(1, T, rate).to(device)

    def run():
        pos = PosInfo(torch.arange(T, device=device), None, True, 1 / math.sqrt(cfg.head_dim))
        if impl != "full":
            pos.window = WindowLayout.of(is_meta, W, dense=impl == "dense")
        attn(x, pos).square().sum().backward()
    return run


def core_case(shape: str, T: int, W: int, rate: float, impl: str, device):
    """The attention operation alone, forward + backward: q, k, v given (no projections, which the sublayer
    spends the same time on either way). Full: causal SDPA; blocked: the windowed layout and its attention."""
    cfg = model_shape(shape)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, cfg.n_head, T, cfg.head_dim, generator=g).to(device).requires_grad_() for _ in range(3))
    is_meta = meta_positions(1, T, rate).to(device)
    scale = 1 / math.sqrt(cfg.head_dim)

    def run():
        if impl == "full":
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        else:
            y = WindowLayout.of(is_meta, W).attend(q, k, v, None, 0.0, scale)
        y.square().sum().backward()
    return run


def core_rows(args, device, T: int, rates) -> list[list]:
    rows = []
    for rate in rates:
        t = time_cases(lambda impl, rate=rate: core_case(args.attn_shape, T, args.window, rate, impl, device),
                       ("full", "blocked"), args, device, args.repeats)
        rows.append([T, args.window, round(rate * T), f"{median(t['full']) * 1e3:.1f}",
                     f"{median(t['blocked']) * 1e3:.1f}", f"**{median_ratio(t['full'], t['blocked']):.1f}x**"])
        print(f"# attention alone T={T} rate={rate:g} done", flush=True)
    return rows


def model_case(shape: str, T: int, W: int, rate: float, impl: str, device):
    """One training step's forward + backward of the whole model (RoPE, meta-attention)."""
    model = build(shape, True, device, pos_encoding="rope", attn_window=None if impl == "full" else W).train()
    if impl == "dense":
        model.window_impl = "dense"
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(2, model.config.vocab_size, (1, T), generator=g)
    idx[meta_positions(1, T, rate)] = model.config.meta_token_id
    idx, targets = idx.to(device), torch.roll(idx, -1, 1).to(device)

    def run():
        model(idx, targets, logits=False)[1].backward()
    return run


def memory_child(args) -> None:
    """Child process: print {"saved": bytes, "peak": bytes} of one whole-model step as JSON."""
    device = setup(args)
    run = model_case(args.model_shape, args.length, args.window, args.rate, args.impl, device)
    print(json.dumps(step_memory(run, args, device)))


def memory_in_child(args, T: int, rate: float, impl: str) -> dict:
    return child_json([sys.executable, __file__, "--child", "--impl", impl, "--length", str(T), "--rate", str(rate),
                       "--window", str(args.window), "--model-shape", args.model_shape, "--device", args.device,
                       "--dtype", args.dtype, "--threads", str(torch.get_num_threads())])


def kernel_case(shape: str, T: int, C: int, K: int, device):
    """One SDPA call over T / C groups (batch) x heads, C queries and K keys each, forward + backward."""
    cfg = model_shape(shape)
    g = torch.Generator().manual_seed(0)
    n = T // C
    q = torch.randn(n, cfg.n_head, C, cfg.head_dim, generator=g).to(device).requires_grad_()
    k, v = (torch.randn(n, cfg.n_head, K, cfg.head_dim, generator=g).to(device).requires_grad_() for _ in range(2))

    def run():
        torch.nn.functional.scaled_dot_product_attention(q, k, v).square().sum().backward()
    return run


def kernel_rows(args, device, T: int, rate: float) -> list[list]:
    """Section 1c: the same arithmetic cut into calls of C queries; time relative to one call of T."""
    layout = WindowLayout.of(meta_positions(1, T, rate).to(device), args.window)
    K = T if layout.mask is None else layout.mask.size(-1)  # the keys each blocked query reads: band + gathered meta
    sizes = sorted({C for C in (layout.chunk, 4 * layout.chunk, 16 * layout.chunk, T) if C <= T and T % C == 0})
    t = time_cases(lambda C: kernel_case(args.attn_shape, T, int(C), K, device), [str(C) for C in sizes], args,
                   device, args.repeats)
    gflop = 4 * T * K * model_shape(args.attn_shape).n_embd * 3.5 / 1e9  # QK^T and PV, backward about 2.5x forward
    return [[T, C, K, f"{median(t[str(C)]) * 1e3:.1f}", f"{gflop / median(t[str(C)]):.1f}",
             f"{median_ratio(t[str(C)], t[str(T)]):.2f}x"] for C in sizes]


def time_cases(make, impls, args, device, repeats: int) -> dict[str, list[float]]:
    cases = {impl: make(impl) for impl in impls}

    def wrap(fn):
        def go():
            with autocast(args, device):
                fn()
        return go
    return compare({k: wrap(v) for k, v in cases.items()}, device, repeats, args.warmup)


def mb(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x / 2**20:.3g}"


def sublayer_rows(args, device, T: int, rates) -> list[list]:
    rows = []
    impls = ("full", "blocked") if args.no_dense else IMPLS
    for rate in rates:
        t = time_cases(lambda impl, rate=rate: sublayer_case(args.attn_shape, T, args.window, rate, impl, device), impls,
                       args, device, args.repeats)
        row = [T, args.window, round(rate * T), f"{median(t['full']) * 1e3:.1f}", f"{median(t['blocked']) * 1e3:.1f}"]
        row.append(f"{median(t['dense']) * 1e3:.1f}" if "dense" in t else "not run")
        row.append(f"**{median_ratio(t['full'], t['blocked']):.1f}x**")
        rows.append(row)
        print(f"# sublayer T={T} rate={rate:g} done", flush=True)
    return rows


def model_rows(args, device, rates) -> list[list]:
    rows = []
    T = args.length
    for rate in rates:
        t = time_cases(lambda impl, rate=rate: model_case(args.model_shape, T, args.window, rate, impl, device),
                       ("full", "blocked"), args, device, args.repeats)
        mem = {impl: memory_in_child(args, T, rate, impl) for impl in ("full", "blocked")}
        rows.append([T, args.window, round(rate * T), f"{median(t['full']):.2f}", f"{median(t['blocked']):.2f}",
                     f"**{median_ratio(t['full'], t['blocked']):.2f}x**",
                     mb(mem["full"]["saved"]), mb(mem["blocked"]["saved"]), mb(mem["full"]["peak"]), mb(mem["blocked"]["peak"])])
        print(f"# whole model T={T} rate={rate:g} done", flush=True)
    return rows


@torch.no_grad()
def generation_case(model: GPT, prompt: torch.Tensor, new: int, every: int, record: list):
    """Prefill then `new` greedy steps, a meta-token fed after every `every` text tokens; records
    (prefill s, decode s, cache bytes) and returns the decode time (what compare() keeps)."""
    meta = model.config.meta_token_id

    def run() -> float:
        cache = KVCache.empty(model.config.n_layer)
        start = clock()
        logits = model(prompt, cache=cache)[0][:, -1]
        prefill = clock() - start
        start, since = clock(), 0
        for _ in range(new):
            nxt = logits.argmax(-1, keepdim=True)
            since += 1
            if since == every:
                nxt, since = torch.cat((nxt, torch.full_like(nxt, meta)), 1), 0
            logits = model(nxt, cache=cache)[0][:, -1]
        decode = clock() - start
        record.append((prefill, decode, cache.nbytes()))
        return decode
    return run


def generation_rows(args, device) -> list[list]:
    rows = []
    for L in (int(x) for x in args.contexts.split(",")):
        full = build(args.model_shape, True, device, pos_encoding="rope").eval()
        bounded = build(args.model_shape, True, device, pos_encoding="rope", attn_window=args.window).eval()
        prompt = torch.randint(2, full.config.vocab_size, (1, L), generator=torch.Generator().manual_seed(0))
        prompt[meta_positions(1, L, 1 / 128)] = full.config.meta_token_id
        prompt = prompt.to(device)
        records: dict[str, list] = {"full": [], "bounded": []}
        cases = {name: generation_case(m, prompt, args.new_tokens, 128, records[name])
                 for name, m in (("full", full), ("bounded", bounded))}
        t = compare(cases, device, args.repeats, args.warmup)
        pre = {name: median([r[0] for r in rec]) for name, rec in records.items()}
        size = {name: rec[-1][2] for name, rec in records.items()}
        rows.append([L, args.window, f"{pre['full']:.2f}", f"{pre['bounded']:.2f}",
                     f"{args.new_tokens / median(t['full']):.1f}", f"{args.new_tokens / median(t['bounded']):.1f}",
                     f"**{median_ratio(t['full'], t['bounded']):.2f}x**", mb(size["full"]), mb(size["bounded"])])
        print(f"# generation L={L} done", flush=True)
    return rows


def plot(rows: list[dict], path: str) -> None:
    """Section 2's rows (as the JSON keeps them): sublayer time against T, full and windowed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    T = [int(r["T"]) for r in rows]
    for key, label in (("full ms", "full causal (SDPA)"), ("windowed ms", "windowed, blocked"),
                       ("dense mask ms", "windowed, dense mask")):
        ys = [float(r[key]) if r[key] != "not run" else None for r in rows]
        if any(y is not None for y in ys):
            ax.plot(T, ys, marker="o", label=label)
    rate = int(rows[0]["m"]) / int(rows[0]["T"])
    ax.set(xscale="log", yscale="log", xlabel="sequence length T (tokens)", ylabel="forward + backward (ms)",
           title=f"self-attention sublayer, W = {rows[0]['W']}, one meta-token per {1 / rate:.0f}")
    ax.set_xticks(T, [str(t) for t in T])
    ax.legend()
    fig.tight_layout()
    print(f"wrote {save_figure(fig, path)}")


def plot_generation(rows: list[dict], path: str) -> None:
    """Section 4's rows: the KV cache's size and the decode speed against the context, full cache
    against the bounded one (window + meta-tokens)."""
    plt = pyplot()
    L = [int(r["L"]) for r in rows]
    fig, (mem, speed) = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, keys, ylabel in ((mem, ("full cache MB", "bounded cache MB"), "KV cache (MB, all layers)"),
                             (speed, ("full decode tok/s", "bounded decode tok/s"), "decode tokens / s")):
        for key, label in zip(keys, ("full cache", f"bounded cache (W = {rows[0]['W']} + meta-tokens)")):
            ax.plot(L, [float(r[key]) for r in rows], marker="o", label=label)
        ax.set(xscale="log", xlabel="context L (tokens)", ylabel=ylabel)
        ax.set_xticks(L, [str(x) for x in L])
    mem.set_yscale("log")
    speed.set_ylim(bottom=0)
    fig.legend(*mem.get_legend_handles_labels(), loc="lower center", ncol=2, frameon=False)  # below both panels
    fig.suptitle("generation, tiny model (RoPE), one meta-token per 128 tokens, batch 1")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    print(f"wrote {save_figure(fig, path)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: a smoke run of every section")
    p.add_argument("--length", type=int, default=8192, help="T of sections 1 and 3 (default 8192)")
    p.add_argument("--window", type=int, default=64, help="W (default 64)")
    p.add_argument("--rates", default=f"{1 / 128},0.1", help="meta-tokens per token (default one per 128, and 0.1)")
    p.add_argument("--attn-shape", default="gpt2-small", help="dims of the sublayer (default gpt2-small: 12 x 64)")
    p.add_argument("--model-shape", default="tiny", help="whole model and generation (default tiny)")
    p.add_argument("--contexts", default="1024,4096,16384", help="generation contexts (default 1k, 4k, 16k)")
    p.add_argument("--new-tokens", type=int, default=64, help="generated tokens per context (default 64)")
    p.add_argument("--scaling", action="store_true", help="also time the sublayer over --lengths (the figure)")
    p.add_argument("--lengths", default="1024,2048,4096,8192,16384", help="T of --scaling")
    p.add_argument("--plot", help="with --scaling: draw the figure to this PNG")
    p.add_argument("--plot-generation", help="draw section 4's cache size and decode speed to this PNG")
    p.add_argument("--replot", metavar="JSON", help="time nothing: draw --plot / --plot-generation from a --json file")
    p.add_argument("--kernel", action="store_true", help="section 1c: one SDPA call's time against queries per call")
    p.add_argument("--no-dense", action="store_true", help="skip the dense-mask column (T^2 memory)")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: sublayer, model, generation")
    p.add_argument("--json", help="also write every table's rows to this JSON file")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", default="blocked", help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, default=0.1, help=argparse.SUPPRESS)
    add_common_args(p, repeats=3)
    args = p.parse_args()
    if args.child:
        memory_child(args)
        return
    if args.replot:
        with open(args.replot, encoding="utf-8") as f:
            saved = json.load(f)
        for key, path, draw in (("scaling", args.plot, plot), ("generation", args.plot_generation, plot_generation)):
            if path and key not in saved:
                p.error(f"{args.replot} has no {key} rows to draw")
            if path:
                draw(saved[key], path)
        return
    if args.quick:
        args.length, args.window, args.rates, args.repeats, args.warmup = 512, 16, "0.03125,0.1", 1, 0
        args.attn_shape, args.model_shape, args.contexts, args.new_tokens = "toy", "toy", "128,256", 8
        args.lengths = "256,512"
    device = setup(args)
    print_machine(device, args)
    rates = [float(r) for r in args.rates.split(",")]
    skip = set(args.skip.split(","))
    out: dict[str, list[dict]] = {}

    def show(name, rows, header):
        print()
        print(table(rows, header))
        out[name] = [dict(zip(header, map(str, r))) for r in rows]

    if "sublayer" not in skip:
        header = ["T", "W", "m", "full ms", "windowed ms", "dense mask ms", "full / windowed"]
        print(f"# 1. self-attention sublayer ({args.attn_shape} dims), forward + backward, batch 1")
        show("sublayer", sublayer_rows(args, device, args.length, rates), header)
        print("\n# 1b. the attention operation alone (q, k, v given; no projections), forward + backward, batch 1")
        show("attention", core_rows(args, device, args.length, rates), ["T", "W", "m", "full ms", "windowed ms",
                                                                        "full / windowed"])
        if args.scaling:
            print(f"\n# 2. the same sublayer as T grows, meta rate {rates[0]:g}")
            rows = [row for T in (int(x) for x in args.lengths.split(",")) for row in sublayer_rows(args, device, T, rates[:1])]
            show("scaling", rows, header)
            if args.plot:
                plot(out["scaling"], args.plot)
    if args.kernel:
        print("\n# 1c. SDPA alone, forward + backward: the same T queries x K keys, cut into calls of C queries")
        show("kernel", kernel_rows(args, device, args.length, rates[0]),
             ["T", "C", "K", "ms", "GFLOP/s", "time / one call"])
    if "model" not in skip:
        print(f"\n# 3. whole model ({args.model_shape}, RoPE, meta-attention), one step's forward + backward, batch 1")
        show("model", model_rows(args, device, rates), ["T", "W", "m", "full s", "windowed s", "full / windowed",
                                                         "full saved MB", "windowed saved MB", "full peak MB",
                                                         "windowed peak MB"])
    if "generation" not in skip:
        print(f"\n# 4. generation ({args.model_shape}, RoPE), prompt of L tokens then {args.new_tokens} greedy steps, "
              "every:128 meta-tokens, batch 1")
        show("generation", generation_rows(args, device), ["L", "W", "full prefill s", "bounded prefill s",
                                                           "full decode tok/s", "bounded decode tok/s",
                                                           "decode time full / bounded", "full cache MB",
                                                           "bounded cache MB"])
        if args.plot_generation:
            plot_generation(out["generation"], args.plot_generation)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
