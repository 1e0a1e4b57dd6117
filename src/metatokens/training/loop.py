"""One training loop for pre-training and fine-tuning.

Parallelism (DDP / FSDP), mixed precision and torch.compile are applied here, from outside the
model. The loop is driven by a batch source with `next_batch() -> (x, y)`, `state_dict()` and
`load_state_dict()`, so pre-training and fine-tuning share everything else: the AdamW set-up,
the warm-up + cosine schedule, gradient accumulation and clipping, evaluation, progress, metric
logs, atomic checkpoints with exact resume, and clean stops on SIGINT/SIGTERM.

The model is a `GPT`, or any module with the same `forward(idx, targets) -> (logits, loss)` that
also has `save_folder(folder, tokenizer, *, extra, write_extra)` and `load_folder_state(folder)`
for its checkpoints (`metatokens.hf.baseline.HFCausalLM`, the Hugging Face baseline adapter). A model
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
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from ..errors import (
    CheckpointError,
    MetatokensError,
    RunDirError,
    RunStopped,
    TrainingError,
)
from ..fileio import writing
from ..model.config import IGNORE_INDEX
from ..model.gpt import GPT
from ..progress import progress_bar
from ..runs.checkpoints import latest_checkpoint
from ..runs.folder import RunFolder, remove_stale_temps, truncate_metrics
from .checkpoints import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .setup import (
    Dist,
    Precision,
    autocast_for,
    build_optimizer,
    flops_per_token,
    lr_at,
    parallelize,
    peak_flops,
)


class BatchSource(Protocol):
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# ----------------------------------------------------------------------------- the loop


class _StopFlag:
    """SIGINT/SIGTERM set a flag (and `signum`, the signal); the loop saves a checkpoint after the
    current step and raises RunStopped (or at once, when the signal broke the step: `_stop_when_broken`)."""

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


def broken_by_signal(err: BaseException, flag: _StopFlag) -> bool:
    """Whether `err`, raised in a step, is the signal's doing rather than a failure: a signal has come, and
    the error is not one of ours. A Ctrl-C reaches the whole process group, so torch.compile's worker
    processes (and the C++ compilers they run) die of it, and the compile in this process then fails with
    an InductorError; DataLoader workers die alike. Without a signal the same error is a real failure."""
    return flag.stop and isinstance(err, Exception) and not isinstance(err, MetatokensError)


@contextlib.contextmanager
def _stop_when_broken(flag: _StopFlag, cfg: TrainConfig, run_dir: Path, step: Callable[[], int]):
    """Raise an error that a signal caused in the loop (`broken_by_signal`) as RunStopped, nothing of the
    step saved: one line and 128 + the signal, as any other stop, instead of the error's traceback."""
    try:
        yield
    except Exception as err:
        if not broken_by_signal(err, flag):
            raise
        compiling = cfg.compile and type(err).__module__.startswith(("torch._inductor", "torch._dynamo"))
        broke = f"while compiling the model for step {step() + 1} (train.compile)" if compiling else ""
        raise RunStopped(step(), flag.signum or signal.SIGINT, None, broke=broke,
                         last=latest_checkpoint(run_dir)) from None


class MetricLog:
    """metrics.jsonl in the run folder, plus TensorBoard / W&B when installed and wanted."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, run_info: dict, enabled: bool):
        self.enabled = enabled
        self.file = run_dir / "metrics.jsonl"
        self.tb = self.wandb = None
        if not enabled:
            return
        with contextlib.suppress(ImportError):
            from torch.utils.tensorboard import (
                SummaryWriter,  # optional dependency: tensorboard (pip install tensorboard)
            )

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        if cfg.wandb:
            try:
                import wandb  # optional dependency: wandb (pip install wandb)
            except ImportError:
                raise ValueError("train.wandb is on but wandb is not installed (pip install wandb)") from None
            self.wandb = wandb.init(project=cfg.wandb_project, name=run_dir.name, config=run_info, resume="allow")

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        # A line cut off by a full disk is dropped when the run resumes (runs.folder.truncate_metrics).
        with writing(self.file, instead=None, kept="the run stopped; its checkpoints are kept"):
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

    The run folder is locked for the run (`runs.folder.RunFolder`, joined when the caller holds one);
    a new run that fails before its first checkpoint removes what it wrote. Stale temporary folders of killed saves are removed first.
    SIGINT / SIGTERM save a checkpoint after the current step and raise RunStopped (a KeyboardInterrupt).
    A resume whose cfg.max_steps lies below the checkpoint's step is refused (RunDirError).
    """
    d = d or Dist()
    run_dir = Path(run_dir)
    train = lambda: _train(model, batches, cfg, run_dir, tokenizer=tokenizer, evaluate=evaluate,  # noqa: E731
                           resume=resume, d=d, progress=progress, run_info=run_info)
    if not d.main:  # the main process checks, locks and writes the run folder
        return train()
    with RunFolder(run_dir, resume=resume) as folder:
        folder.create()
        remove_stale_temps(run_dir / "checkpoints")
        return train()


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
    recorded = (run_info or {}).get("precision")  # the caller's choice, kept in run.json
    autocast = autocast_for(cfg, d.device, announce=d.main, precision=Precision(**recorded) if recorded else None)
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
    with _StopFlag() as flag, _stop_when_broken(flag, cfg, run_dir, lambda: step):
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
