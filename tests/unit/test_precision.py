"""Which precision a training run uses (`train.dtype`), why, and that the study's stages stay in fp32.

`resolve_precision` is checked against hand-made machines (AMX or not, native CUDA bf16 or not),
`cpu_has_amx` against the kernel's own CPU flags, and the study's stage keys against the keys the
committed confirmatory and memory seeds were run under.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metatokens import devices
from metatokens.errors import TrainingError
from metatokens.study.runner import Pipeline
from metatokens.training.setup import Precision, resolve_precision, run_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


@pytest.fixture
def machine(monkeypatch):
    """Set what the machine reports: machine(amx=..., cpu_bf16=..., cuda_bf16=...)."""
    def set_machine(*, amx=False, cpu_bf16=True, cuda_bf16=True):
        monkeypatch.setattr(devices, "cpu_has_amx", lambda: amx)
        monkeypatch.setattr(devices, "cpu_has_bf16", lambda: cpu_bf16)
        monkeypatch.setattr(devices, "cuda_has_bf16", lambda: cuda_bf16)
    return set_machine


@pytest.mark.parametrize("amx, cpu_bf16, cuda_bf16, device, want", [
    (True, True, True, CPU, "bf16"),  # AMX tiles: bf16 matmuls about twice fp32's speed
    (False, True, True, CPU, "fp32"),  # AVX512-BF16 alone: bf16 ran at 0.6x fp32
    (False, False, True, CPU, "fp32"),
    (False, False, True, CUDA, "bf16"),
    (True, True, False, CUDA, "fp32"),  # a GPU without native bf16 (before Ampere)
    (True, True, True, torch.device("mps"), "fp32"),
])
def test_auto_picks_bf16_only_where_bf16_matmuls_are_fast(machine, amx, cpu_bf16, cuda_bf16, device, want):
    machine(amx=amx, cpu_bf16=cpu_bf16, cuda_bf16=cuda_bf16)
    got = resolve_precision("auto", device)
    assert got.dtype == want
    assert got.reason.startswith("train.dtype=auto")
    if device == CPU:  # the reason names what decided it, and where bf16 might pay, says to try it
        assert ("has AMX" if amx else "no AMX" if cpu_bf16 else "no bf16 units") in got.reason
        assert ("try train.dtype=bf16" in got.reason) == (not amx and cpu_bf16)


def test_an_explicit_dtype_is_honoured_and_bf16_falls_back_only_without_bf16_units(machine):
    machine(amx=True)
    assert resolve_precision("fp32", CPU) == Precision("fp32", "train.dtype=fp32")
    machine(amx=False, cpu_bf16=True)
    assert resolve_precision("bf16", CPU).dtype == "bf16"  # slow without AMX, but asked for
    machine(amx=False, cpu_bf16=False)
    fallback = resolve_precision("bf16", CPU)
    assert fallback.dtype == "fp32" and "no bf16 units" in fallback.reason


def test_a_resumed_run_keeps_the_precision_it_started_in(machine):
    machine(amx=False)  # this machine alone would pick fp32
    kept = run_precision("auto", CPU, {"precision": {"dtype": "bf16", "reason": "train.dtype=auto: this CPU has AMX"}})
    assert kept.dtype == "bf16" and "as the run started" in kept.reason
    machine(amx=True)  # and this one bf16: a run from before the choice was recorded trained in fp32 on a CPU
    assert run_precision("auto", CPU, {"config": {}}).dtype == "fp32"
    assert run_precision("auto", CUDA, {"config": {}}).dtype == "bf16"
    assert run_precision("fp32", CPU, {"config": {}}).dtype == "fp32"
    assert run_precision("auto", CPU, None).dtype == "bf16"  # a new run: this machine decides
    machine(amx=False, cpu_bf16=False)  # a bf16 run resumed where bf16 cannot run at all
    assert run_precision("auto", CPU, {"precision": {"dtype": "bf16", "reason": "x"}}).dtype == "fp32"
    for damaged in ({"dtype": "fp16"}, "bf16", {"reason": "no dtype"}):
        with pytest.raises(TrainingError, match="recorded precision"):
            run_precision("auto", CPU, {"precision": damaged})


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="needs Linux's /proc/cpuinfo")
def test_amx_detection_agrees_with_the_kernels_cpu_flags():
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    assert devices.cpu_has_amx() == ("amx_tile" in flags and "amx_bf16" in flags)


def _stage_keys(folder: Path) -> dict[str, str]:
    return {p.parent.name: json.loads(p.read_text())["key"] for p in folder.glob("*/stage.json")}


@pytest.mark.parametrize("amx", [False, True])
def test_the_study_trains_in_fp32_on_any_cpu_under_the_keys_its_seeds_ran_with(machine, monkeypatch, amx):
    """On a CPU, AMX or not, every training stage asks for fp32 (bf16 is not yet measured against the
    study's numbers), and every stage key equals the one the committed seed 0 ran under."""
    machine(amx=amx)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for memory, folder in ((False, "reproduce_tiny"), (True, "memory")):
        pipe = Pipeline(Path("unused"), "tiny", seeds=5 if not memory else 3, device="auto", memory=memory)
        assert pipe._dtype() == "fp32"
        specs = pipe.plan(0)
        committed = _stage_keys(RESULTS / folder / "stages" / "seed0")
        assert len(committed) >= 10
        assert {s.name: s.key for s in specs if s.name in committed} == committed
        training = [s for s in specs if s.name.split("-")[0] in ("pretrain", "finetune", "yarn", "window")]
        assert training and all("train.dtype=fp32" in s.command for s in training), [s.command for s in training]
