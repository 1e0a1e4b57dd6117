"""Training checkpoints in a run folder's checkpoints/: the model folder (runs.model_folder) plus the
optimiser state, the RNG states and the data position, all checksummed in trainer_state.json.

A checkpoint is written under a temporary name and renamed into place, then LATEST is updated, so
a kill at any moment leaves the last complete checkpoint loadable; resuming restores every state
bit for bit. NaN weights are never saved; a full disk (or a file-size limit) is reported in one line.
"""
from __future__ import annotations

import json
import shutil
from contextlib import suppress
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from ..errors import CheckpointError, DiskFullError, TrainingError, one_line
from ..fileio import atomic_write_text, read_json_object
from ..model.family import build_model
from ..model.gpt import GPT
from ..runs.checkpoints import _prune, latest_checkpoint
from ..runs.model_folder import (
    finite_flags,
    load_pretrained,
    save_pretrained,
    sha256_file,
)
from .config import TrainConfig
from .setup import Dist


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

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(model, optimizer, options=opts)


def weights_finite(model: torch.nn.Module, d: Dist) -> bool:
    """Whether every parameter (of every process's shard) is finite, summed over the processes."""
    local = [p.detach().to_local() if hasattr(p, "to_local") else p.detach() for p in model.parameters()]
    local = [t for t in local if t.numel()]
    bad = 0.0 if not local or bool(finite_flags(local).all()) else 1.0
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
            try:
                atomic_write_text(run_dir / "checkpoints" / "LATEST", folder.name + "\n")
            except DiskFullError:
                if _named_by_latest(run_dir) != folder.name:  # a checkpoint LATEST does not name is not kept
                    shutil.rmtree(folder, ignore_errors=True)
                raise
        except DiskFullError as err:
            raise TrainingError(_not_saved(err, run_dir, step)) from None
        _prune(run_dir / "checkpoints", cfg.keep_last)
    d.barrier()
    return folder


def _named_by_latest(run_dir: Path) -> str | None:
    try:
        return (run_dir / "checkpoints" / "LATEST").read_text(encoding="utf-8").strip()
    except OSError:
        return None


def _not_saved(err: DiskFullError, run_dir: Path, step: int) -> str:
    """The one line of a checkpoint that ran out of room (atomic_folder removed what was written of it)."""
    free = ""
    if err.kind != "EFBIG":
        with suppress(OSError):
            free = f" ({shutil.disk_usage(run_dir).free / 2**20:,.0f} MiB free)"
    last = latest_checkpoint(run_dir)
    then = "then --resume" if last else "then start the run again (it has no checkpoint to resume from)"
    return (f"{err.reason} while saving step {step} in {run_dir / 'checkpoints'}{free}; nothing of it was kept "
            f"(last good checkpoint: {last if last else 'none'}); {err.remedy}, {then}")


CHECKPOINT_EXTRA = ("optimizer.pt", "rng.safetensors")  # written by save_checkpoint, checksummed in trainer_state.json


def read_trainer_state(folder: Path) -> dict:
    """trainer_state.json of a checkpoint, checked: a JSON object with the step, the data position and
    the SHA-256 of optimizer.pt and rng.safetensors, which must match those files."""
    state_file = folder / "trainer_state.json"
    state = read_json_object(state_file, CheckpointError, missing="the checkpoint is incomplete",
                             damaged="the checkpoint is incomplete or damaged")
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
