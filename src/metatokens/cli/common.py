"""What several commands share: where a command that reads a model writes its output by default."""

from __future__ import annotations

from pathlib import Path


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
