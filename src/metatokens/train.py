"""One training loop for pre-training and fine-tuning.

Parallelism (DDP / FSDP), mixed precision and torch.compile are applied here, from outside the
model. The loop is driven by a batch source with `next_batch() -> (x, y)`, `state_dict()` and
`load_state_dict()`, so pre-training and fine-tuning share everything else: the AdamW set-up,
the warm-up + cosine schedule, gradient accumulation and clipping, evaluation, progress, metric
logs, atomic checkpoints with exact resume, and clean stops on SIGINT/SIGTERM.

The model is a `GPT`, or any module with the same `forward(idx, targets) -> (logits, loss)` that
also has `save_folder(folder, tokenizer, *, extra, write_extra)` and `load_folder_state(folder)`
for its checkpoints (`metatokens.hf.HFCausalLM`, the Hugging Face baseline adapter). A model
whose class sets ``loss_only_forward = True`` is called as ``forward(x, y, logits=False)``: it
may then run its LM head at the scored positions only and return no logits.

Losses are normalised by the number of target tokens in the whole optimiser step (all
micro-batches, all processes), so accumulation and data parallelism give the same gradient as
one big batch, even when micro-batches hold different numbers of meta (unscored) targets.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from .errors import CheckpointError
from .checkpoint import load_pretrained, save_pretrained, sha256_file
from . import devices
from .devices import resolve_device
from .fileio import atomic_write_text
from .model.gpt import GPT
from .model.family import build_model
from .runconfig import TrainConfig
from .model.config import IGNORE_INDEX
from .errors import RunDirError
from .errors import RunStopped
from .errors import TrainingError
from .errors import one_line

try:
    import fcntl
except ImportError:  # Windows: run folders are not locked
    fcntl = None

STEP_NAME = re.compile(r"step-[0-9]{8,}")  # checkpoint folders: step-NNNNNNNN
KNOWN_PEAK_TFLOPS = {"A100": 312.0, "H100": 989.0, "H200": 989.0, "L4": 121.0, "A10": 125.0}  # dense bf16


class BatchSource(Protocol):
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


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
        from torch.distributed.fsdp import fully_shard

        for block in model.h:
            fully_shard(block)
        fully_shard(model)
    elif d.world > 1:
        from torch.nn.parallel import DistributedDataParallel

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


# ----------------------------------------------------------------------------- checkpoints


def _rng_state(d: Dist) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if d.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(d.device)
    gathered: list[Any] = [state]
    if d.world > 1:
        gathered = [None] * d.world
        dist.all_gather_object(gathered, state)
    return {f"rank{r}.{k}": v.cpu() for r, s in enumerate(gathered) for k, v in s.items()}


def _full_state(model: GPT, optimizer, d: Dist, fsdp: bool):
    """Full (unsharded) model and optimizer state dicts, on CPU; only rank 0's copy is used."""
    if not fsdp or d.world == 1:
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(model, optimizer, options=opts)


def weights_finite(model: torch.nn.Module, d: Dist) -> bool:
    """Whether every parameter (of every process's shard) is finite: one max-|x| reduction, NaN/inf propagate."""
    local = [p.detach().to_local() if hasattr(p, "to_local") else p.detach() for p in model.parameters()]
    local = [t for t in local if t.numel()]
    bad = 0.0
    if local:
        bad = float(not bool(torch.stack(torch._foreach_norm(local, math.inf)).isfinite().all()))
    (bad,) = d.all_sum(bad)
    return bad == 0


def save_checkpoint(run_dir: Path, step: int, model: GPT, optimizer, tokenizer, state: dict, d: Dist, cfg: TrainConfig) -> Path:
    """checkpoints/step-NNNNNNNN: a loadable model folder plus optimizer, RNG and trainer state.

    Non-finite weights are never saved: the run stops, and LATEST keeps naming the last good checkpoint.
    """
    if not weights_finite(model, d):
        last = latest_checkpoint(run_dir)
        raise TrainingError(
            f"weights became non-finite (NaN or inf) in the optimizer step of step {step}; stopped without saving "
            f"(last good checkpoint: {last if last else 'none'}); try a lower train.lr"
        )
    model_state, optim_state = _full_state(model, optimizer, d, cfg.fsdp)
    rng = _rng_state(d)
    folder = run_dir / "checkpoints" / f"step-{step:08d}"
    if d.main:
        snapshot = model
        if cfg.fsdp and d.world > 1:
            snapshot = build_model(model.config)  # GPT, or an imported family's model
            snapshot.load_state_dict(model_state)

        def write_extra(tmp: Path) -> None:
            torch.save(optim_state, tmp / "optimizer.pt")
            save_file(rng, str(tmp / "rng.safetensors"))
            files = {name: sha256_file(tmp / name) for name in ("optimizer.pt", "rng.safetensors")}
            atomic_write_text(tmp / "trainer_state.json", json.dumps({**state, "step": step, "sha256": files}, indent=1))

        try:
            if hasattr(snapshot, "save_folder"):  # models that are not GPT bring their own folder format
                snapshot.save_folder(folder, tokenizer, extra={"step": step}, write_extra=write_extra)
            else:
                save_pretrained(folder, snapshot, tokenizer, extra={"step": step}, write_extra=write_extra)
        except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError
            if not _disk_full(err, run_dir):
                raise
            last = latest_checkpoint(run_dir)
            raise TrainingError(f"no space left on device while saving step {step} in {run_dir / 'checkpoints'} "
                                f"({shutil.disk_usage(run_dir).free / 2**20:,.0f} MiB free); nothing of it was kept "
                                f"(last good checkpoint: {last if last else 'none'}); free space, then --resume") from None
        atomic_write_text(run_dir / "checkpoints" / "LATEST", folder.name + "\n")
        _prune(run_dir / "checkpoints", cfg.keep_last)
    d.barrier()
    return folder


def _disk_full(err: BaseException, where: Path) -> bool:
    """Whether a failed write ran out of space: ENOSPC, or (torch.save's RuntimeError says only
    "file write failed") a file system with almost nothing left."""
    import errno

    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(where).free < 64 * 2**20
    except OSError:
        return False


def _step_folders(folder: Path) -> list[Path]:
    """checkpoints/step-N folders, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if STEP_NAME.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def _prune(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints. Each is renamed away first, so a kill mid-delete
    leaves a hidden temporary folder (removed by the next run), never a step-N folder without weights."""
    for old in _step_folders(folder)[:-keep]:
        doomed = old.with_name(f".{old.name}.prune-{os.getpid()}")
        os.replace(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint LATEST names, or the newest complete one when LATEST is missing or names an
    incomplete folder; None when the run has none. LATEST must be a plain step-N name."""
    folder = run_dir / "checkpoints"
    pointer = folder / "LATEST"
    named = None
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8", errors="replace").strip()
        if not STEP_NAME.fullmatch(name):
            raise CheckpointError(f"{pointer}: {name[:80]!r} is not a checkpoint name like step-00000010; refusing to follow it")
        named = folder / name
        if _is_complete(named):
            return named
    complete = [p for p in _step_folders(folder) if _is_complete(p)]
    if complete:
        return complete[-1]
    if named is not None:
        raise CheckpointError(f"{pointer}: names {named.name}, which is missing or incomplete, and no other checkpoint is complete")
    return None


# ----------------------------------------------------------------------------- run folders

LOCK_FILE = ".lock"
# What pre-training and fine-tuning write in a run folder; a folder holding anything else is not a run's.
RUN_FILES = frozenset({"run.json", "tokenizer.json", "metrics.jsonl", "checkpoints", "tensorboard",
                       "resolved-config.yaml", LOCK_FILE})
# Left in checkpoints/ by a killed save (atomic_folder, atomic_write_text) or prune.
_TEMP_NAME = re.compile(r"\.(?:step-[0-9]{8,}|LATEST)\.(?:tmp|old|prune)-(?P<pid>[0-9]+)")


@dataclass
class _Claim:
    fd: int  # the open lock file, flock'ed by this process
    new: bool = False  # a new run (not --resume)
    created: tuple[Path, ...] = ()  # the folder and parents this process made, deepest first
    before: frozenset[str] = frozenset()  # what the folder held when this process locked it


_CLAIMS: dict[Path, _Claim] = {}  # run folders this process holds, by resolved path


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _lock_run_dir(run_dir: Path, error: type[Exception]) -> _Claim:
    """An exclusive flock on run_dir/.lock, held by this process until release_run_dir (the kernel drops
    it when the process dies, so a killed run never leaves a stale lock). Another holder is refused."""
    key = run_dir.resolve()
    held = _CLAIMS.get(key)
    if held is not None and _same_file(held.fd, run_dir / LOCK_FILE):
        return held
    if held is not None:  # the folder was removed or replaced under a lock this process still held
        release_run_dir(run_dir)
    if fcntl is None:  # no flock on this platform: run unlocked
        fd = os.open(os.devnull, os.O_RDONLY)
    else:
        while True:
            fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 32).decode("ascii", "replace").strip()
                os.close(fd)
                who = f" (pid {owner})" if owner.isdigit() else ""
                raise error(f"{run_dir} is in use by another metatokens process{who}; wait for it to end or choose "
                            "another --out") from None
            except OSError:  # a file system without flock (some network mounts): run unlocked
                break
            if _same_file(fd, run_dir / LOCK_FILE):
                break
            os.close(fd)  # a holder removed the file between our open and lock: lock the current one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    claim = _CLAIMS[key] = _Claim(fd, before=frozenset(p.name for p in run_dir.iterdir()) - {LOCK_FILE})
    return claim


def release_run_dir(run_dir: Path) -> None:
    """Drop this process's lock on a run folder, and its lock file; a no-op when it holds none."""
    run_dir = Path(run_dir)
    claim = _CLAIMS.pop(run_dir.resolve(), None)
    if claim is None:
        return
    if fcntl is not None and _same_file(claim.fd, run_dir / LOCK_FILE):
        with contextlib.suppress(OSError):
            os.unlink(run_dir / LOCK_FILE)
    os.close(claim.fd)


def _abandoned_start(run_dir: Path, names: list[str]) -> bool:
    """A run killed before its first checkpoint: run.json and other run files, no checkpoint."""
    if "run.json" not in names or not set(names) <= RUN_FILES:
        return False
    ckpts = run_dir / "checkpoints"
    return not ckpts.is_dir() or all(p.name == "LATEST" or STEP_NAME.fullmatch(p.name) or _TEMP_NAME.fullmatch(p.name)
                                     for p in ckpts.iterdir())


def _validate_run_dir(run_dir: Path, resume: bool, error: type[Exception]) -> None:
    has_ckpt = latest_checkpoint(run_dir) is not None if run_dir.is_dir() else False
    if has_ckpt and not resume:
        raise error(f"{run_dir} already holds a run with checkpoints; pass --resume to continue it or choose another --out")
    if resume and not has_ckpt:
        raise error(f"{run_dir}: nothing to resume (no checkpoints); drop --resume to start a new run")
    if not resume and run_dir.is_dir():
        names = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)
        if names and not _abandoned_start(run_dir, names):
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise error(f"{run_dir} is not empty ({shown}) and is not a metatokens run folder; choose a new or "
                        "empty --out (nothing in it was changed)")


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


def check_run_dir(run_dir: Path, resume: bool, error: type[Exception] = RunDirError, *, create: bool = False) -> None:
    """A new run needs a new or empty folder (or one left by a run killed before its first checkpoint);
    --resume needs a run folder with checkpoints.

    The folder is locked for this process (the main one under torchrun) as soon as it exists, until
    train_loop ends or release_run_dir; a second process on it is refused. create=True makes the folder
    (call it right before the run's first write) and checks again under the lock.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise error(f"{run_dir}: exists and is not a folder; choose another --out")
    if os.environ.get("RANK", "0") != "0":  # torchrun: the main process checks, locks and writes
        if create:
            run_dir.mkdir(parents=True, exist_ok=True)
        else:
            _validate_run_dir(run_dir, resume, error)
        return
    created: tuple[Path, ...] = ()
    if create:
        missing = tuple(p for p in (run_dir, *run_dir.parents) if not p.exists())
        try:
            run_dir.mkdir(parents=True)
            created = missing
        except FileExistsError:
            pass
    if not run_dir.is_dir():
        _validate_run_dir(run_dir, resume, error)
        return
    held = run_dir.resolve() in _CLAIMS
    claim = _lock_run_dir(run_dir, error)
    claim.new, claim.created = not resume, claim.created or created
    try:
        _validate_run_dir(run_dir, resume, error)
    except BaseException:
        if not held:
            release_run_dir(run_dir)
            _remove_empty(created)
        raise


def abandon_run_dir(run_dir: Path) -> None:
    """Undo a new run that failed before it trained: remove the run files this process wrote (only names of
    RUN_FILES that were not there when it locked the folder), and the folder (and parents) when this
    process made it. A resumed run, one with a checkpoint, or one that logged a training step (its
    metrics.jsonl is the record of what happened; a new run in the folder replaces it) is left as it is.
    Releases the lock."""
    run_dir = Path(run_dir)
    claim = _CLAIMS.get(run_dir.resolve())
    try:
        keep = claim is None or not claim.new or latest_checkpoint(run_dir) is not None or _logged_training(run_dir)
    except CheckpointError:
        keep = True
    if not keep:
        for name in sorted(RUN_FILES - claim.before - {LOCK_FILE}):
            path = run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            elif path.is_symlink() or path.exists():
                path.unlink(missing_ok=True)
    release_run_dir(run_dir)
    if not keep:
        _remove_empty(claim.created)


def _logged_training(run_dir: Path) -> bool:
    """Whether metrics.jsonl holds a training step's row (a run that failed mid-way, not at its start)."""
    try:
        with open(run_dir / "metrics.jsonl", encoding="utf-8", errors="replace") as fh:
            return any('"train_loss"' in line for line in fh)
    except OSError:
        return False


def _remove_empty(folders: tuple[Path, ...]) -> None:
    for folder in folders:
        try:
            folder.rmdir()  # only if empty
        except OSError:
            return


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temps(folder: Path) -> None:
    """Remove what killed saves and prunes left in a run's checkpoints/ folder (.step-N.tmp-PID, .old-PID,
    .prune-PID, .LATEST.tmp-PID) once the process that made it is gone (or is this one: it is not saving)."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        match = _TEMP_NAME.fullmatch(path.name)
        if match is None:
            continue
        pid = int(match["pid"])
        if pid != os.getpid() and pid > 0 and _pid_alive(pid):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def resolve_model_dir(path: str | Path) -> Path:
    """A model folder, or a run folder (its latest checkpoint)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    latest = latest_checkpoint(path) if path.is_dir() else None
    if latest is None:
        raise CheckpointError(f"{path}: neither a model folder nor a run folder with checkpoints")
    return latest


def read_run_json(run_dir: str | Path, *keys: str) -> dict[str, Any]:
    """A run folder's run.json as a dict holding `keys`; anything else is a RunDirError naming the file."""
    file = Path(run_dir) / "run.json"
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{file}: missing; is {run_dir} a metatokens run folder?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunDirError(f"{file}: unreadable, not valid JSON ({one_line(err, 200)}); the run's settings are damaged") from None
    if not isinstance(info, dict):
        raise RunDirError(f"{file}: not a JSON object; the run's settings are damaged")
    missing = [k for k in keys if not isinstance(info.get(k), (dict, str))]
    if missing:
        raise RunDirError(f"{file}: no {', '.join(missing)}; the run's settings are damaged")
    return info


def checkpoint_step(run_dir: str | Path) -> int | None:
    """The step of a run's latest checkpoint (from its trainer_state.json); None when it has none or
    the file cannot be read (resuming reports that)."""
    try:
        latest = latest_checkpoint(Path(run_dir))
        step = json.loads((latest / "trainer_state.json").read_text(encoding="utf-8"))["step"] if latest else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def check_resume_steps(run_dir: str | Path, max_steps: int, flag: str = "--max-steps", *, allow_equal: bool = False) -> None:
    """A resume that asks for `max_steps` must move the run forward: refuse (RunDirError, one line) when
    the latest checkpoint is already past it (or at it, unless allow_equal: a finished run resumed is a
    no-op), before any data or model is prepared."""
    step = checkpoint_step(run_dir)
    if step is not None and (max_steps < step or (max_steps == step and not allow_equal)):
        rule = "cannot be below it" if allow_equal else "must be above it"
        raise RunDirError(f"{run_dir}: the run is already at step {step}; {flag} {rule} (got {max_steps})")


CHECKPOINT_EXTRA = ("optimizer.pt", "rng.safetensors")  # written by save_checkpoint, checksummed in trainer_state.json



def read_trainer_state(folder: Path) -> dict:
    """trainer_state.json of a checkpoint, checked: a JSON object with the step, the data position and
    the SHA-256 of optimizer.pt and rng.safetensors, which must match those files."""
    state_file = folder / "trainer_state.json"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{state_file}: unreadable ({one_line(err, 200)}); the checkpoint is incomplete or damaged") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{state_file}: not a JSON object; the file is damaged")
    step, sums = state.get("step"), state.get("sha256")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{state_file}: no valid step (got {step!r}); the file is damaged")
    if not isinstance(state.get("data"), dict):
        raise CheckpointError(f"{state_file}: no data position; the file is damaged")
    if not isinstance(sums, dict) or any(not isinstance(sums.get(name), str) for name in CHECKPOINT_EXTRA):
        raise CheckpointError(f"{state_file}: no SHA-256 of {' and '.join(CHECKPOINT_EXTRA)}, so they cannot be "
                              "verified; the file was edited or damaged")
    for name, digest in sums.items():
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            raise CheckpointError(f"{state_file}: names {name!r} in its checksums; the file is damaged")
        if not (folder / name).is_file() or sha256_file(folder / name) != digest:
            raise CheckpointError(f"{folder / name}: missing, truncated or corrupted (checksum differs)")
    return state


def load_checkpoint(folder: Path, model: GPT, optimizer, d: Dist, fsdp: bool) -> dict:
    """Restore model, optimizer and this rank's RNG from a checkpoint folder; return trainer state.

    Every file is read before any state is restored; a damaged or unfitting one is named in a
    CheckpointError (one line)."""
    state = read_trainer_state(folder)
    if hasattr(model, "load_folder_state"):  # models that are not GPT read their own folder format
        model_state = model.load_folder_state(folder)
    else:
        saved, _, _ = load_pretrained(folder)  # verifies the weights' checksum and the config
        if saved.config != model.config:
            raise TrainingError(f"{folder}: the checkpoint's model settings differ from this run's; refusing to resume")
        model_state = saved.state_dict()
    optim_file, rng_file = (folder / name for name in CHECKPOINT_EXTRA)
    try:
        optim_state = torch.load(optim_file, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors of many kinds; weights_only never runs code
        raise CheckpointError(f"{optim_file}: cannot load the optimizer state ({one_line(err, 200)})") from None
    if not isinstance(optim_state, dict) or not {"state", "param_groups"} <= set(optim_state):
        raise CheckpointError(f"{optim_file}: not an optimizer state (no state / param_groups)")
    try:
        rng = load_file(str(rng_file))
    except Exception as err:  # SafetensorError, OSError, ...
        raise CheckpointError(f"{rng_file}: cannot load the RNG state ({one_line(err, 200)})") from None
    if fsdp and d.world > 1:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                       options=StateDictOptions(full_state_dict=True))
    else:
        model.load_state_dict(model_state)
        try:
            optimizer.load_state_dict(optim_state)
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise CheckpointError(f"{optim_file}: does not fit this run's optimizer ({one_line(err, 200)})") from None
    try:
        if f"rank{d.rank}.cpu" in rng:
            torch.set_rng_state(rng[f"rank{d.rank}.cpu"])
            if d.device.type == "cuda" and f"rank{d.rank}.cuda" in rng:
                torch.cuda.set_rng_state(rng[f"rank{d.rank}.cuda"], d.device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise CheckpointError(f"{rng_file}: not a valid RNG state ({one_line(err, 200)})") from None
    return state


# ----------------------------------------------------------------------------- the loop


class _StopFlag:
    """SIGINT/SIGTERM set a flag (and `signum`, the signal); the loop saves a checkpoint after the
    current step and raises RunStopped."""

    def __init__(self) -> None:
        self.stop = False
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not in the main thread
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.stop:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.stop, self.signum = True, signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class MetricLog:
    """metrics.jsonl in the run folder, plus TensorBoard / W&B when installed and wanted."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, run_info: dict, enabled: bool):
        self.enabled = enabled
        self.file = run_dir / "metrics.jsonl"
        self.tb = self.wandb = None
        if not enabled:
            return
        with contextlib.suppress(ImportError):
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        if cfg.wandb:
            try:
                import wandb
            except ImportError:
                raise ValueError("train.wandb is on but wandb is not installed (pip install wandb)") from None
            self.wandb = wandb.init(project=cfg.wandb_project, name=run_dir.name, config=run_info, resume="allow")

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.file, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        step = row["step"]
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                if self.tb is not None:
                    self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(row, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def truncate_metrics(file: Path, step: int) -> None:
    """Keep the rows of metrics.jsonl up to `step`, the step a run resumes from (the steps after it are
    logged again); a cut-off last line and unreadable rows are dropped. Rewritten atomically."""
    if not file.is_file():
        return
    text = file.read_text(encoding="utf-8", errors="replace")
    keep = []
    for line in text.split("\n")[:-1]:  # the last piece is "" or a line cut off before its newline
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            keep.append(line + "\n")
    if "".join(keep) != text:
        atomic_write_text(file, "".join(keep))


def _valid_targets(y: torch.Tensor) -> int:
    return int((y != IGNORE_INDEX).sum())


def train_loop(
    model: GPT,
    batches: BatchSource,
    cfg: TrainConfig,
    run_dir: Path,
    *,
    tokenizer=None,
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    resume: bool = False,
    d: Dist | None = None,
    progress: bool = True,
    run_info: dict | None = None,
) -> dict[str, Any]:
    """Train `model` for cfg.max_steps optimiser steps; returns a summary of the run.

    The run folder is locked for the run (see check_run_dir); a new run that fails before its first
    checkpoint removes what it wrote. Stale temporary folders of killed saves are removed first.
    SIGINT / SIGTERM save a checkpoint after the current step and raise RunStopped (a KeyboardInterrupt).
    A resume whose cfg.max_steps lies below the checkpoint's step is refused (RunDirError).
    """
    d = d or Dist()
    run_dir = Path(run_dir)
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        claim = _lock_run_dir(run_dir, RunDirError)
        claim.new = not resume
        remove_stale_temps(run_dir / "checkpoints")
    try:
        return _train(model, batches, cfg, run_dir, tokenizer=tokenizer, evaluate=evaluate, resume=resume, d=d,
                      progress=progress, run_info=run_info)
    except BaseException:
        if d.main:
            abandon_run_dir(run_dir)
        raise
    finally:
        if d.main:
            release_run_dir(run_dir)


def _train(model, batches, cfg, run_dir, *, tokenizer, evaluate, resume, d, progress, run_info) -> dict[str, Any]:
    torch.manual_seed(cfg.seed + d.rank)
    wrapped = parallelize(model, cfg, d)
    optimizer = build_optimizer(model, cfg, d.device)
    start = 0
    if resume and (folder := latest_checkpoint(run_dir)) is not None:
        state = load_checkpoint(folder, model, optimizer, d, cfg.fsdp)
        if state["step"] > cfg.max_steps:  # before anything in the run folder changes
            raise RunDirError(f"{run_dir}: the run is already at step {state['step']}; train.max_steps cannot be "
                              f"below it (got {cfg.max_steps})")
        try:
            batches.load_state_dict(state["data"])
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise CheckpointError(f"{folder / 'trainer_state.json'}: its data position does not fit this run "
                                  f"({' '.join(str(err).split())[:200]})") from None
        start = state["step"]
    if d.world > 1 and cfg.grad_accum % d.world:
        raise ValueError(f"train.grad_accum ({cfg.grad_accum}) must be divisible by the number of processes ({d.world})")
    accum = max(1, cfg.grad_accum // d.world)
    autocast = autocast_for(cfg, d.device, announce=d.main)
    if d.main:
        truncate_metrics(run_dir / "metrics.jsonl", start)
        if resume and start:
            print(f"{run_dir}: resuming from step {start} of {cfg.max_steps}", flush=True)
    log = MetricLog(run_dir, cfg, run_info or {}, enabled=d.main)
    peak = peak_flops(cfg, d.device)
    fpt = flops_per_token(model)
    summary: dict[str, Any] = {"start_step": start, "losses": {}}
    bar = None
    if progress and d.main:
        from .progress import progress_bar

        bar = progress_bar(total=cfg.max_steps, initial=start, desc=run_dir.name, unit="step")

    def checkpoint(step: int) -> None:
        state = {"data": batches.state_dict(), "train_loss": summary.get("train_loss")}
        save_checkpoint(run_dir, step, model, optimizer, tokenizer, state, d, cfg)

    def run_eval(step: int) -> None:
        if evaluate is None:
            return
        model.eval()
        with torch.no_grad(), autocast():
            metrics = evaluate(wrapped)
        model.train()
        summary.update(metrics)
        log.write({"step": step, **metrics})
        if bar is not None:
            bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    # The LM head at the scored positions only (same loss and gradients), where the model offers it.
    head = {"logits": False} if getattr(model, "loss_only_forward", False) else {}
    model.train()
    step, stopped_by = start, None
    with _StopFlag() as flag:
        while step < cfg.max_steps:
            t0 = time.perf_counter()
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            micro = [batches.next_batch() for _ in range(accum)]
            counts = [_valid_targets(y) for _, y in micro]
            (total,) = d.all_sum(sum(counts))
            loss_sum = torch.zeros((), device=d.device)
            for i, ((x, y), n) in enumerate(zip(micro, counts)):
                x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
                sync = i == accum - 1 or not hasattr(wrapped, "no_sync")
                with (contextlib.nullcontext() if sync else wrapped.no_sync()), autocast():
                    _, loss = wrapped(x, y, **head)
                    loss = torch.nan_to_num(loss, nan=0.0) if n == 0 else loss
                    # sum of token losses / tokens in the whole step; DDP averages over ranks
                    (loss * (n * d.world / max(total, 1))).backward()
                loss_sum += loss.detach().float() * n
            (step_loss,) = d.all_sum(loss_sum.item())
            step_loss /= max(total, 1)
            if not math.isfinite(step_loss):
                last = latest_checkpoint(run_dir)
                raise TrainingError(
                    f"loss became {step_loss} at step {step + 1}; stopped without saving "
                    f"(last good checkpoint: {last if last else 'none'}); try a lower train.lr"
                )
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if d.device.type == "cuda":
                torch.cuda.synchronize(d.device)
            step += 1
            dt = time.perf_counter() - t0
            tokens = sum(x.numel() for x, _ in micro) * d.world
            summary["losses"][step] = step_loss
            summary["train_loss"] = step_loss
            if step % cfg.log_interval == 0 or step == cfg.max_steps:
                row = {"step": step, "train_loss": step_loss, "lr": lr, "tokens_per_s": tokens / dt, "step_s": dt}
                if grad_norm is not None:
                    row["grad_norm"] = float(grad_norm)
                if peak:
                    row["mfu"] = fpt * tokens / dt / (peak * d.world)
                log.write(row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.1e}", tok_s=f"{tokens / dt:,.0f}")
            if cfg.eval_interval and step % cfg.eval_interval == 0 and step != cfg.max_steps:
                run_eval(step)
            (stop,) = d.all_sum(float(flag.stop))
            if stop or (cfg.ckpt_interval and step % cfg.ckpt_interval == 0) or step == cfg.max_steps:
                if step == cfg.max_steps:
                    run_eval(step)
                checkpoint(step)
            if stop:
                stopped_by = flag.signum or signal.SIGTERM  # under torchrun: a process the signal did not reach
                break
    if bar is not None:
        bar.close()
    log.close()
    if stopped_by is not None:  # saved, not finished: the caller must not take the run as done
        raise RunStopped(step, stopped_by, run_dir / "checkpoints" / f"step-{step:08d}")
    summary["step"] = step
    return summary
