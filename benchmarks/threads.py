"""Threads and cores: one tiny pre-training with 1 and with N threads, and N one-thread runs at once.

    python benchmarks/threads.py                # tiny preset, 40 steps, N = all usable CPUs
    python benchmarks/threads.py --steps 60 --config toy

Each configuration runs the real `metatokens pretrain` in subprocesses (after one warm-up run that
builds the tokenizer and token cache), and reads the steady-state step time from the runs'
metrics.jsonl (median `step_s` of the logged steps after the first `--skip`). Prints one markdown
table: step time, tokens/s per run, and total tokens/s of the machine. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def pretrain(out: Path, threads: int, args, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "metatokens", "pretrain", "--config", args.config, "--out", str(out), "--no-progress",
           "--max-steps", str(args.steps), "--set", "train.log_interval=5", "--set", "train.eval_interval=0",
           "--set", "train.ckpt_interval=0", "--set", f"data.cache_dir={cache}"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def step_time(run: Path, skip: int) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    times = [r["step_s"] for r in rows if "step_s" in r and r["step"] > skip]
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--skip", type=int, default=10, help="steps left out of the median (warm-up)")
    p.add_argument("--cpus", type=int, default=len(os.sched_getaffinity(0)))
    args = p.parse_args()
    from metatokens.training.config import load_run_config

    cfg = load_run_config(args.config)
    tokens_per_step = cfg.train.batch_size * cfg.model.block_size
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp), Path(tmp) / "cache"
        warm = pretrain(root / "warm", 1, argparse.Namespace(**{**vars(args), "steps": 2}), cache)
        if warm.wait() != 0:
            sys.exit(warm.stderr.read())
        rows = []
        for label, threads, parallel in [("1 run, 1 thread", 1, 1), (f"1 run, {args.cpus} threads", args.cpus, 1),
                                         (f"{args.cpus} runs at once, 1 thread each", 1, args.cpus)]:
            start = time.perf_counter()
            procs = [(root / f"{threads}-{parallel}-{i}", None) for i in range(parallel)]
            procs = [(out, pretrain(out, threads, args, cache)) for out, _ in procs]
            for out, proc in procs:
                if proc.wait() != 0:
                    sys.exit(proc.stderr.read())
            wall = time.perf_counter() - start
            step = statistics.mean(step_time(out, args.skip) for out, _ in procs)
            rows.append((label, step, tokens_per_step / step, parallel * tokens_per_step / step, wall))
    base = rows[0][3]
    print(f"`{args.config}` pre-training ({cfg.train.batch_size} x {cfg.model.block_size} tokens a step), "
          f"{args.steps} steps, median step time after step {args.skip}:\n")
    print("| configuration | step time (s) | tokens/s per run | machine tokens/s | vs 1 thread | wall (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, step, per_run, total, wall in rows:
        print(f"| {label} | {step:.3f} | {per_run:,.0f} | {total:,.0f} | {total / base:.2f}x | {wall:.1f} |")


if __name__ == "__main__":
    main()
