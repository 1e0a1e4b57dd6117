"""What several commands share: the checks a training command makes before any work, its ending (a
stop by signal, the summary line), and where a command that reads a model writes by default."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..devices import resolve_device
from ..errors import RunDirError, RunStopped
from ..runs.checkpoints import check_resume_steps
from ..runs.folder import read_run_json


def beside_model(path: str | Path, name: str) -> Path:
    """Default output folder of a command that reads a model: `name` inside the run the model
    belongs to (a checkpoint folder RUN/checkpoints/step-N counts as RUN), as litgpt writes an
    evaluation beside its checkpoint; `name` in the working directory for a Hugging Face hub name."""
    folder = Path(path)
    if not folder.is_dir():
        return Path(name)
    if folder.parent.name == "checkpoints":
        folder = folder.parent.parent
    return folder / name


def check_training_flags(args, steps: int | None, run_keys: tuple[str, ...] = ()) -> None:
    """What `pretrain` and `finetune` refuse in one line before any work: a bad --device, and with
    --resume a flag that picks a new run's model (--init, --from-scratch, --hf-model, --tokenizer), a
    damaged run.json (it must hold `run_keys`) or a step count the run is already past."""
    if args.device:
        resolve_device(args.device)
    sources = {"--init": "init", "--from-scratch": "from_scratch", "--hf-model": "hf_model", "--tokenizer": "tokenizer"}
    given = [flag for flag, name in sources.items() if getattr(args, name, None)]
    if args.resume and given:  # the library ignores them on resume: say so rather than drop them silently
        raise RunDirError(f"{' and '.join(given)} choose{'s' if len(given) == 1 else ''} the model of a new run, but "
                          f"--resume continues {args.out} from its own checkpoint and settings; drop one of them")
    if args.resume and (Path(args.out) / "run.json").exists():
        if run_keys:
            read_run_json(args.out, *run_keys)
        if steps is not None:
            check_resume_steps(args.out, steps)


def run_training(command: str, out: str, train: Callable[[], dict[str, Any]], keys: tuple[str, ...]) -> int:
    """Run `train` (a pre-training or fine-tuning) and end as both commands do: a stop by SIGINT/SIGTERM
    says how to continue (resume, or start again when the run has no checkpoint) and exits 128 + the signal; a finished run prints its step and `keys`.
    Under torchrun only the main process prints."""
    main = os.environ.get("RANK", "0") == "0"
    try:
        summary = train()
    except RunStopped as stop:
        if main:
            then = f"continue with: metatokens {command} --out {out} --resume" if stop.resumable else \
                "run the same command to start again"
            print(f"metatokens {command}: {stop}; {then}", file=sys.stderr)
        return stop.exit_code
    if main:
        shown = [k for k in keys if k in summary]
        print(f"{out}: step {summary['step']}, " + ", ".join(f"{k} {summary[k]:.4f}" for k in shown))
    return 0


def hide_transformers_progress() -> None:
    """--no-progress covers the loading bars of transformers too, where it is installed."""
    try:
        from transformers.utils import (
            logging as hf_logging,  # optional dependency: transformers (metatokens[hf])
        )
    except ImportError:
        return
    hf_logging.disable_progress_bar()
