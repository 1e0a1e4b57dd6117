"""Shared helpers for the benchmark scripts (run by hand; never part of the test suite).

Timing: every measurement is repeated and the median reported, because the machine may be
shared. Comparisons are interleaved (A, B, A, B, ...) in one process so that load from other
users hits both sides alike, and each ratio is the median of per-repeat ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout without installing

from metatokens.devices import cpu_has_amx, cpu_has_bf16  # noqa: E402
from metatokens.model.config import model_shape  # noqa: E402
from metatokens.model import GPT  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_common_args(p: argparse.ArgumentParser, repeats: int = 5) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda is skipped when absent)")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="autocast dtype for the model")
    p.add_argument("--compile", action="store_true", help="torch.compile the models first")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--repeats", type=int, default=repeats, help="timed repeats; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall: elapsed time; cpu: CPU time of this process (time.process_time), which "
                        "ignores time spent waiting for a core on a shared machine; use with --threads 1")


def setup(args) -> torch.device:
    """Resolve the device; exit 0 with a note when CUDA was asked for but is not there."""
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"skipped: --device {args.device} requested but torch.cuda.is_available() is False")
        sys.exit(0)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    global CLOCK
    if args.clock == "cpu" and args.device.startswith("cuda"):
        print("note: --clock cpu ignored on CUDA (kernels run asynchronously); using wall time")
    CLOCK = time.process_time if args.clock == "cpu" and not args.device.startswith("cuda") else time.perf_counter
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.device(args.device)


def autocast(args, device: torch.device):
    """bf16/fp16 via autocast (weights stay fp32, as in mixed-precision training)."""
    if args.dtype == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[args.dtype])


def maybe_compile(model, args):
    return torch.compile(model) if args.compile else model


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def print_machine(device: torch.device, args) -> None:
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    try:
        import transformers

        hf = f", transformers {transformers.__version__}"
    except ImportError:
        hf = ""
    print(
        f"# torch {torch.__version__}{hf}, python {platform.python_version()}; CPU {cpu_model()} "
        f"({os.cpu_count()} logical cores, AMX {'yes' if cpu_has_amx() else 'no'}, "
        f"bf16 units {'yes' if cpu_has_bf16() else 'no'}), torch threads {torch.get_num_threads()}{gpu}; "
        f"device {device.type}, dtype {args.dtype}, compile {args.compile}, repeats {args.repeats or 'per shape'} (median), "
        f"clock {args.clock}; load average {os.getloadavg()[0]:.1f}"
    )
    print(f"# command: python {' '.join(sys.argv)}")


CLOCK = time.perf_counter  # set by setup(); time.process_time with --clock cpu


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds fn takes; a fn that returns a float reports its own time (to leave out its set-up)."""
    sync(device)
    t0 = CLOCK()
    out = fn()
    sync(device)
    return out if isinstance(out, float) else CLOCK() - t0


def clock() -> float:
    """The clock chosen by --clock, for functions that time themselves."""
    return CLOCK()


def compare(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Interleaved timing: each repeat runs every function once, in a rotating order."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            times[name].append(timed(fns[name], device))
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def median_ratio(num: list[float], den: list[float]) -> float:
    """Median of per-repeat ratios: robust to a load spike that hits one repeat."""
    return statistics.median(a / b for a, b in zip(num, den))


def build(shape: str, meta: bool, device: torch.device, **overrides) -> GPT:
    """A model of a named shape; meta=False is the same dims without the meta-attention sublayer."""
    torch.manual_seed(0)
    cfg = model_shape(shape, meta_attention=meta, meta_token_id=1, **overrides)
    return GPT(cfg).to(device)


def random_meta_batch(B: int, T: int, vocab: int, k: float, meta_id: int = 1, seed: int = 0, device="cpu"):
    """Random text ids with round(k*T) meta ids at uniformly random positions in each row."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(2, vocab, (B, T + 1), generator=g)
    m = round(k * T)
    for b in range(B):
        idx[b, torch.randperm(T, generator=g)[:m]] = meta_id
    return idx[:, :-1].to(device), idx[:, 1:].to(device)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).rjust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


# ----------------------------------------------------------------------------- memory of one step
# Two measures (CPU has no torch.cuda.max_memory_allocated):
#  * saved: bytes of the tensors autograd keeps for backward (saved_tensors_hooks, each storage counted
#    once). Exact and deterministic: the activation memory a training step holds.
#  * peak: rise of the process's peak resident memory during one call: the peak (VmHWM in
#    /proc/self/status) is reset to the current RSS first (`echo 5 > /proc/self/clear_refs`, Linux
#    >= 4.0). Run each case in a fresh subprocess (`child_json`) so that memory the allocator kept from
#    an earlier case cannot hide a rise. On CUDA both are torch.cuda.max_memory_allocated deltas.


def saved_bytes(run) -> int:
    storages: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(storages.values())


def status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        return int(next(line for line in fh if line.startswith(field + ":")).split()[1])


def step_memory(run: Callable[[], object], args, device: torch.device) -> dict[str, int]:
    """{"saved": bytes, "peak": bytes} of one call of `run` (after one untimed warm-up call)."""
    if device.type == "cuda":
        with autocast(args, device):
            run()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with autocast(args, device):
            run()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        return {"saved": peak, "peak": peak}
    with autocast(args, device):  # warm-up: library workspaces and gradient buffers are not the step's
        run()
    with open("/proc/self/clear_refs", "w") as fh:  # reset the peak to the current resident size
        fh.write("5")
    before = status_kib("VmRSS")
    with autocast(args, device):
        run()
    peak = (status_kib("VmHWM") - before) * 1024
    with autocast(args, device):
        saved = saved_bytes(run)
    return {"saved": saved, "peak": peak}


def child_json(cmd: list[str]) -> dict:
    """The last JSON line a child process printed; NaN memory when it failed (said on stdout)."""
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        print(f"# child failed: {' '.join(cmd[1:])}: {out.stderr.strip().splitlines()[-1:]}")
        return {"saved": float("nan"), "peak": float("nan")}
    return json.loads(lines[-1])
