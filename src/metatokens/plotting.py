"""matplotlib set-up and atomic PNG writes, shared by every command that draws (no torch import)."""

from __future__ import annotations

import os
from pathlib import Path


class PlotError(ValueError):
    """matplotlib is missing; a ValueError, so the command line reports it in one line."""


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend; a one-line error when it is missing."""
    try:
        import matplotlib
    except ImportError:
        raise PlotError("plots need matplotlib, a dependency of metatokens: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Write a PNG under a temporary name and rename it, so no half-written plot is left behind."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    tmp.replace(path)
    return path
