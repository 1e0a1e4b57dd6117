"""Every error (and warning) metatokens raises on purpose, in one hierarchy.

`MetatokensError` is the root: a refusal whose message is one line naming the problem and what to
do. `metatokens.cli.main` prints such an error as ``metatokens COMMAND: error: MESSAGE`` and exits
with status 2, telling it apart from a bug by its class alone. Most are also `ValueError`s (bad
input) so that library callers can keep catching those; `TrainingError` is a `RuntimeError`.

`RunStopped` is not an error: a run stopped by SIGINT/SIGTERM after saving a checkpoint. It is a
`KeyboardInterrupt` (callers that do not catch it stop as on Ctrl-C) carrying the exit status.

One class lives elsewhere: `metatokens.model.config.ConfigError` (a ValueError). The network's
source files are shipped inside exported Hugging Face folders, where they may import nothing
outside `model/`; the CLI treats it like every other ValueError.

This module imports nothing from metatokens: every layer may import it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def one_line(text: object, limit: int | None = None) -> str:
    """`text` (an exception: its message, or its class name when empty) as one line, cut at `limit`."""
    line = " ".join(str(text).split())
    line = line[:limit] if limit else line
    return line or (type(text).__name__ if isinstance(text, BaseException) else line)


class MetatokensError(Exception):
    """Root of metatokens' own errors. The message is one line."""


class TokenizerError(MetatokensError, ValueError):
    """A tokenizer could not be built, loaded or validated.

    The message is always a single line, prefixed with the file when there is one,
    so it reads well in logs and CLI output.
    """

    def __init__(self, problem: str, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else os.fspath(path)
        message = one_line(problem)
        if self.path is not None:
            message = f"{self.path}: {message}"
        super().__init__(message)


class TaskError(MetatokensError, ValueError):
    """A task request cannot be met (unknown name, length too short ...). One-line message."""


class DeviceError(MetatokensError, ValueError):
    """A device string is malformed or names a device this machine does not have. One line."""


class MetaPolicyError(MetatokensError, ValueError):
    """A meta-token policy string is malformed or does not fit the model. One line."""


class CheckpointError(MetatokensError, ValueError):
    """A model folder is missing, truncated, corrupted or inconsistent. The message is one line."""


class DataError(MetatokensError, ValueError):
    """A corpus cannot be read. The message is one line naming the source and the fix."""


class PlotError(MetatokensError, ValueError):
    """matplotlib is missing; a ValueError, so the command line reports it in one line."""


class EvaluationError(MetatokensError, ValueError):
    """An evaluation cannot run as asked (length beyond a model's positions, bad options). One line."""


class FinetuneError(MetatokensError, ValueError):
    """A fine-tuning run cannot start or continue as asked. The message is one line."""


class AnalysisError(MetatokensError, ValueError):
    """An analysis cannot run on this input (no meta-tokens, prompts too long ...). One line."""


class HFInteropError(MetatokensError, ValueError):
    """An export or import cannot proceed (missing folder, wrong model type, ...). One line."""


class ImportRefused(HFInteropError):
    """A checkpoint that import-hf cannot turn into an equivalent model. One line."""


class StudyError(MetatokensError, ValueError):
    """The study cannot go on (a stage failed, an input stage is missing). One-line message."""


class RunDirError(MetatokensError, ValueError):
    """A run folder cannot be used as asked (in use, not a run, nothing to resume). The message is one line."""


class TrainingError(MetatokensError, RuntimeError):
    """The run cannot continue (non-finite loss, mismatched resume); the message is one line."""


class DiskFullError(MetatokensError):
    """A write ran out of room: no space left, the disk quota used up, or a file past this process's
    file-size limit (ulimit -f). `fileio.writing` raises it once whatever was half-written is gone, so the
    one-line message names what was being written and says what to do; `kind` is ENOSPC, EDQUOT or EFBIG."""

    REASONS = {  # kind -> (what happened, what to do about it)
        "ENOSPC": ("no space left on the device", "free some space"),
        "EDQUOT": ("the disk quota is used up", "free some space"),
        "EFBIG": ("a file grew past this process's file-size limit (ulimit -f)",
                  "raise the limit (ulimit -f unlimited)"),
    }

    def __init__(self, kind: str, path: str | os.PathLike[str], *, instead: str | None = "choose another --out",
                 kept: str = "nothing was changed"):
        self.kind, self.path = kind, Path(path)
        self.reason, self.remedy = self.REASONS[kind]
        # Another folder on the same machine does not lift a per-process limit.
        fix = self.remedy if kind == "EFBIG" or not instead else f"{self.remedy} or {instead}"
        super().__init__(f"{self.reason} while writing {self.path}: {fix}; {kept}")


class RunStopped(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run, which is not finished. Either after the current step, with a
    checkpoint saved (continue with resume), or, when the signal broke the step it arrived in (torch.compile's
    worker processes die of a Ctrl-C, so the compile fails), with nothing of that step saved: `checkpoint`
    is then None and `last` the run's last checkpoint, if it has one. A KeyboardInterrupt, so callers that
    do not catch it stop as on Ctrl-C. The message is one line."""

    def __init__(self, step: int, signum: int, checkpoint: Path | None, *, broke: str = "",
                 last: Path | None = None):
        self.step, self.signum, self.checkpoint = step, signum, checkpoint
        self.resumable = checkpoint is not None or last is not None  # a checkpoint to continue from
        name = signal.Signals(signum).name
        if checkpoint is not None:
            text = f"stopped by {name} at step {step}; checkpoint saved in {checkpoint}"
        else:
            text = (f"stopped by {name} {broke or f'during step {step + 1}'}; nothing of it was saved "
                    f"({f'last checkpoint: {last}' if last else 'the run has no checkpoint yet'})")
        super().__init__(text)

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process the signal ended (130 SIGINT, 143 SIGTERM)."""
        return 128 + self.signum


class GPT2ImportWarning(UserWarning):
    """Something an import did that the user should know about (e.g. learned positions dropped)."""
