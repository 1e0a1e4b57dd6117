"""What a training run sets up around the model: processes and devices (`Dist`), the AdamW optimiser
and its warm-up + cosine schedule, mixed precision, and DDP / FSDP / torch.compile applied from
outside the model (`parallelize`); FLOPs for MFU; a memory check before anything is written.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from .. import devices
from ..devices import resolve_device
from ..errors import TrainingError
from ..model.gpt import GPT
from .config import TrainConfig

KNOWN_PEAK_TFLOPS = {"A100": 312.0, "H100": 989.0, "H200": 989.0, "L4": 121.0, "A10": 125.0}  # dense bf16


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, *values: float) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_distributed(device_spec: str = "auto") -> Dist:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, NCCL on GPU).

    The device is checked first (cpu, cuda, cuda:N, mps, auto), so a bad one fails before any work."""
    device_spec = resolve_device(device_spec, "train.device")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(device=torch.device(device_spec))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_spec.startswith("cuda"):
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device(device_spec), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Dist(rank, world, local_rank, device)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.min_lr at cfg.max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (dim >= 2) only: no decay on biases, LayerNorms."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = device.type in ("cuda", "cpu")  # one kernel for all parameters: 3-4x faster on CPU (BENCHMARKS.md)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


@dataclass(frozen=True)
class Precision:
    """The arithmetic a run trains in: "bf16" (a bf16 autocast around forward and loss; weights,
    gradients and AdamW stay fp32) or "fp32", and why. Chosen once per run, printed at its start and
    kept in run.json, so that a resume on another machine goes on in the same precision."""

    dtype: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"dtype": self.dtype, "reason": self.reason}

    def autocast(self, device: torch.device):
        """A context factory: a bf16 autocast on `device`, or nothing."""
        if self.dtype == "bf16":
            return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """What `train.dtype` (auto, fp32 or bf16) means on `device`.

    ``auto`` is bf16 where bf16 matmuls are fast: a CUDA device with native bf16, and a CPU with AMX
    tiles (detected from what PyTorch reports, not from the CPU's name); fp32 everywhere else. On CPUs
    with AVX512-BF16 but no AMX a bf16 step ran at 0.6x fp32's speed on one machine and 1.1-1.8x on
    another (BENCHMARKS.md sections 7 and 10), so there the reason suggests trying bf16 rather than
    choosing it. An explicit ``bf16`` is honoured wherever bf16 arithmetic exists, and
    falls back to fp32 (with the reason) on a CPU without any bf16 units.
    """
    if requested == "fp32":
        return Precision("fp32", "train.dtype=fp32")
    if requested == "bf16":
        if device.type == "cpu" and not devices.cpu_has_bf16():
            return Precision("fp32", "train.dtype=bf16 asked for, but this CPU has no bf16 units (AVX512-BF16/AMX)")
        return Precision("bf16", "train.dtype=bf16")
    if device.type == "cuda":
        if devices.cuda_has_bf16():
            return Precision("bf16", "train.dtype=auto: this CUDA device has native bf16")
        return Precision("fp32", "train.dtype=auto: this CUDA device has no native bf16")
    if device.type == "cpu":
        if devices.cpu_has_amx():
            return Precision("bf16", "train.dtype=auto: this CPU has AMX tiles (bf16 matmuls about 2x fp32's speed)")
        if devices.cpu_has_bf16():  # AVX512-BF16 without AMX: measured from 0.6x to 1.8x fp32's speed
            return Precision("fp32", "train.dtype=auto: this CPU has no AMX tiles; it has AVX512-BF16, where a bf16 "
                             "step ran 0.6x-1.8x as fast as fp32 on the CPUs measured (BENCHMARKS.md 10): "
                             "try train.dtype=bf16")
        return Precision("fp32", "train.dtype=auto: this CPU has no bf16 units")
    return Precision("fp32", f"train.dtype=auto: fp32 on {device.type}")


def run_precision(requested: str, device: torch.device, saved: dict | None = None) -> Precision:
    """A run's precision. A new run (`saved` None) takes `resolve_precision`. A resumed run keeps the
    one its run.json (`saved`) recorded, whatever this machine is. A run started before the choice
    was recorded trained under the rule of that time (auto: bf16 on CUDA, fp32 elsewhere) and goes on
    under it."""
    if saved is None:
        return resolve_precision(requested, device)
    recorded = saved.get("precision")
    if recorded is None:
        if requested == "auto":
            bf16 = device.type == "cuda"
            return Precision("bf16" if bf16 else "fp32", "train.dtype=auto in a run from before the choice was "
                             f"recorded: {'bf16 on CUDA' if bf16 else 'fp32 off CUDA'}, as it trained")
        return resolve_precision(requested, device)
    if not isinstance(recorded, dict) or recorded.get("dtype") not in ("fp32", "bf16"):
        raise TrainingError(f"run.json: the recorded precision {recorded!r} is damaged (want dtype fp32 or bf16)")
    if recorded["dtype"] == "bf16" and device.type == "cpu" and not devices.cpu_has_bf16():
        return Precision("fp32", "the run trained in bf16, but this CPU has no bf16 units (AVX512-BF16/AMX)")
    return Precision(recorded["dtype"], f"as the run started: {recorded.get('reason', 'recorded in run.json')}")


def autocast_for(cfg: TrainConfig, device: torch.device, *, announce: bool = True,
                 precision: Precision | None = None):
    """The mixed-precision context of a run (`precision`, else `resolve_precision` of cfg.dtype); with
    `announce`, one line says which and why."""
    precision = precision or resolve_precision(cfg.dtype, device)
    if announce:
        print(f"precision: {precision.dtype} ({precision.reason})", flush=True)
    return precision.autocast(device)


def parallelize(model: GPT, cfg: TrainConfig, d: Dist) -> torch.nn.Module:
    """Wrap for data parallelism (DDP or FSDP2) and compile; the model itself stays untouched."""
    model.to(d.device)
    wrapped: torch.nn.Module = model
    if d.world > 1 and cfg.fsdp:
        for block in model.h:
            fully_shard(block)
        fully_shard(model)
    elif d.world > 1:
        ids = [d.device.index] if d.device.type == "cuda" else None
        wrapped = DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    return wrapped


def peak_flops(cfg: TrainConfig, device: torch.device) -> float | None:
    if cfg.peak_tflops:
        return cfg.peak_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in KNOWN_PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12
    return None


def flops_per_token(model: GPT) -> float:
    """Training FLOPs per token: 6 N for the weights plus the attention scores (PaLM appendix B)."""
    if not isinstance(model, GPT):  # e.g. a wrapped Hugging Face baseline: count the weights only
        return 6.0 * sum(p.numel() for p in model.parameters())
    c = model.config
    n = model.num_params(exclude_positions=True)
    return 6 * n + 12 * c.n_layer * c.n_embd * c.block_size


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a training step on `device`: CUDA's free memory, else Linux's MemAvailable
    (None where neither can be read: no check then)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_step_memory(model_cfg, batch_size: int, seq_len: int, device: torch.device, *, what: str = "train.batch_size",
                      error: type[Exception] = None) -> None:
    """Refuse, before any run folder exists, a batch whose step cannot fit in memory (a typo such as
    batch_size=100000000 otherwise ends in the kernel's OOM killer, or a MemoryError deep in PyTorch).

    A rough lower bound of one fp32 step: per token, the logits with their softmax and gradient
    (3 x vocab floats) and about 24 floats per layer and channel of saved activations.
    """
    tokens = batch_size * seq_len
    need = tokens * 4 * (3 * model_cfg.vocab_size + 24 * model_cfg.n_layer * model_cfg.n_embd)
    free = available_memory(device)
    if free is not None and need > free:
        raise (error or TrainingError)(
            f"{what}={batch_size} ({tokens:,} tokens a step) needs about {need / 2**30:,.1f} GiB for one step; "
            f"{device} has {free / 2**30:,.1f} GiB free: use a smaller {what} (train.grad_accum keeps the tokens per update)")
