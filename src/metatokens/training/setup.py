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


def autocast_for(cfg: TrainConfig, device: torch.device, *, announce: bool = True):
    """The mixed-precision context of a run: a bf16 autocast or nothing (fp32).

    ``auto`` is bf16 on CUDA and fp32 on CPU: measured on a CPU with AVX512-BF16 but no AMX, a bf16
    autocast made the tiny training step 0.6x as fast as fp32 (BENCHMARKS.md section 7). An
    explicit ``bf16`` on a CPU without bf16 units falls back to fp32 with one line.
    """
    use_bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and device.type == "cuda")
    if use_bf16 and device.type == "cpu" and not devices.cpu_has_bf16():
        if announce:
            print("note: train.dtype=bf16 asked for, but this CPU has no bf16 units (AVX512-BF16/AMX); "
                  "training in fp32", flush=True)
        use_bf16 = False
    if use_bf16:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


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
