"""The one GPU check (benchmarks/gpu_check.sh): tests marked `cuda`, training and generation speed.

At most about 8 minutes on one CUDA GPU, no network. Prints one markdown table: every `cuda`
test with its outcome, then tokens/s and MFU of gpt2-small-meta vs gpt2-small (8 x 1024, eager
fp32, bf16, compiled + bf16), against nanoGPT's GPT where NANOGPT_DIR names a checkout, then greedy generation of ours vs transformers' generate on the same
GPT-2 weights (bf16). Each part runs in its own process under a time limit; a part that fails or
runs out of time is a row that says so, and the exit code is 1 when anything failed.

    bash benchmarks/gpu_check.sh                # from the repository root, in an env with CUDA torch
    bash benchmarks/gpu_check.sh --quick        # fewer repeats (about 4 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], limit: int) -> tuple[int | str, str, float]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        return done.returncode, done.stdout + done.stderr, time.perf_counter() - t0
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return "timeout", out, time.perf_counter() - t0


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines[-1].split())[:160].replace("|", "/") if lines else ""


def test_rows(tmp: Path, limit: int) -> tuple[list[list[str]], bool]:
    junit = tmp / "junit.xml"
    code, out, secs = run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                           f"--junitxml={junit}", "tests/test_cuda.py"], limit)
    if not junit.is_file():
        return [["tests (cuda)", f"**{code}**", last_line(out)]], False
    rows, ok = [], code == 0
    for case in ET.parse(junit).iter("testcase"):
        name = case.get("name", "?")
        if case.find("failure") is not None or case.find("error") is not None:
            node = case.find("failure") if case.find("failure") is not None else case.find("error")
            rows.append([f"test {name}", "**FAILED**", " ".join((node.get("message") or "").split())[:160].replace("|", "/")])
            ok = False
        elif case.find("skipped") is not None:
            rows.append([f"test {name}", "skipped", (case.find("skipped").get("message") or "")[:120]])
        else:
            rows.append([f"test {name}", "passed", f"{float(case.get('time', 0)):.1f} s"])
    if code == "timeout":
        rows.append(["tests (cuda)", "**timeout**", f"after {secs:.0f} s"])
    return rows, ok


DEVICE, TRAIN_SHAPE, GEN_SHAPE = "cuda", "gpt2-small:8x1024", "gpt2-small"


def train_rows(tmp: Path, limit: int, repeats: int) -> tuple[list[list[str]], bool]:
    out_json = tmp / "train.json"
    code, out, secs = run([sys.executable, "benchmarks/fast_path.py", "--device", DEVICE, "--shapes", TRAIN_SHAPE,
                           "--variants", "fp32,bf16,compiled+bf16", "--repeats", str(repeats), "--json", str(out_json)], limit)
    if code != 0 or not out_json.is_file():
        return [[f"training {TRAIN_SHAPE}", f"**{code}**", last_line(out)]], False
    rows = []
    for r in json.loads(out_json.read_text()):
        rows.append([f"training {r['shape']} {r['B x T']}, {r['variant']}", f"{r['meta tok/s']} tok/s (meta)",
                     f"plain {r['plain tok/s']} tok/s; meta/plain time {r['meta / plain']}; "
                     f"MFU meta / plain {r.get('MFU meta / plain', 'n/a (unknown GPU: --peak-tflops)')}; "
                     f"vs eager fp32 {r['meta speed-up vs eager fp32'].strip('*')}"])
    return rows, True


def nanogpt_rows(tmp: Path, limit: int, repeats: int) -> tuple[list[list[str]], bool]:
    """Ours against nanoGPT's GPT (benchmarks/vs_nanogpt.py) where NANOGPT_DIR names a checkout; a row
    that says so otherwise (the GPU machine has no network to fetch it)."""
    folder = os.environ.get("NANOGPT_DIR")
    if not folder:
        return [["training vs nanoGPT", "skipped", "NANOGPT_DIR names no nanoGPT checkout"]], True
    out_json = tmp / "nanogpt.json"
    code, out, secs = run([sys.executable, "benchmarks/vs_nanogpt.py", "--nanogpt", folder, "--device", DEVICE,
                           "--shapes", TRAIN_SHAPE, "--variants", "fp32,bf16", "--optimiser", "same",
                           "--repeats", str(repeats), "--json", str(out_json)], limit)
    if code != 0 or not out_json.is_file():
        return [["training vs nanoGPT", f"**{code}**", last_line(out)]], False
    return [[f"training {r['shape']} {r['B x T']}, {r['dtype']}, vs nanoGPT", f"{r['ours meta tok/s']} tok/s (meta)",
             f"nanoGPT {r['nanoGPT tok/s']} tok/s; time meta/nanoGPT {r['meta / nanoGPT'].strip('*')}, "
             f"plain/nanoGPT {r['plain / nanoGPT']}"] for r in json.loads(out_json.read_text())], True


def generation_rows(tmp: Path, limit: int, repeats: int) -> tuple[list[list[str]], bool]:
    out_json = tmp / "gen.json"
    code, out, secs = run([sys.executable, "benchmarks/generation.py", "--device", DEVICE, "--dtype", "bf16",
                           "--shapes", GEN_SHAPE, "--repeats", str(repeats), "--json", str(out_json)], limit)
    if code != 0 or not out_json.is_file():
        return [[f"generation {GEN_SHAPE} (bf16)", f"**{code}**", last_line(out)]], False
    data = json.loads(out_json.read_text())
    rows = [[f"generation {r['shape']}, policy {r['policy']}", f"{r['meta tok/s']} tok/s (meta)",
             f"plain {r['plain tok/s']} tok/s; time meta/plain {r['time meta/plain'].strip('*')}"] for r in data["meta"]]
    ok = True
    for r in data["hf"]:
        same = r["same tokens"] == "True"
        ok &= same
        rows.append([f"generation {r['shape']}, ours vs transformers", f"{r['ours tok/s']} vs {r['HF generate tok/s']} tok/s",
                     f"time ours/HF {r['time ours/HF'].strip('*')}; same greedy tokens: {'yes' if same else '**NO**'}"])
    return rows, ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer timing repeats")
    p.add_argument("--cpu-dry-run", action="store_true",
                   help="check this script itself on a CPU: every part with toy shapes (the cuda tests skip)")
    args = p.parse_args()
    import torch

    global DEVICE, TRAIN_SHAPE, GEN_SHAPE
    if args.cpu_dry_run:
        DEVICE, TRAIN_SHAPE, GEN_SHAPE = "cpu", "toy:4x64", "toy"
    elif not torch.cuda.is_available():
        print("| check | result | detail |\n|---|---|---|\n| GPU | skipped | torch.cuda.is_available() is False: nothing to check |")
        return 0
    start = time.perf_counter()
    name = "CPU dry run" if args.cpu_dry_run else torch.cuda.get_device_name(0)
    header = (f"GPU check: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
              f"python {sys.version.split()[0]}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    rows, ok = [], True
    with tempfile.TemporaryDirectory() as tmp:
        for part, limit in ((lambda: test_rows(Path(tmp), 240), 240),
                            (lambda: train_rows(Path(tmp), 200, 5 if args.quick else 10), 200),
                            (lambda: nanogpt_rows(Path(tmp), 120, 3 if args.quick else 5), 120),
                            (lambda: generation_rows(Path(tmp), 90, 3 if args.quick else 5), 90)):
            got, fine = part()
            rows += got
            ok &= fine
    rows.append(["total", "ok" if ok else "**FAILED**", f"{time.perf_counter() - start:.0f} s"])
    print(header)
    print()
    print("| check | result | detail |")
    print("|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
