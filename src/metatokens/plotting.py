"""matplotlib set-up and atomic PNG writes, shared by every command that draws (no torch import)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np

from .errors import PlotError


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend; a one-line error when it is missing."""
    try:
        import matplotlib  # deferred: matplotlib takes about 0.5 s to import and only commands that draw need it
    except ImportError:
        raise PlotError("plots need matplotlib, a dependency of metatokens: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: matplotlib takes about 0.5 s to import and only commands that draw need it

    # Lay figures out at the resolution they are saved at: text is hinted to whole pixels, so a
    # layout measured at another dpi can be off by tens of pixels and crop long tick labels.
    matplotlib.rcParams["figure.dpi"] = DPI
    return plt


DPI = 120  # of every PNG written


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def save_figure(fig, path: str | Path, dpi: int = DPI) -> Path:
    """Write a PNG under a temporary name and rename it, so no half-written plot is left behind.

    An existing `path` is replaced only when it is a PNG (a figure drawn before); a folder or any other
    file is refused in one line (PlotError) and left as it is."""
    plt = pyplot()
    path = Path(path)
    if path.is_dir():
        plt.close(fig)
        raise PlotError(f"{path}: is a folder; give the figure a file name ending in .png")
    if path.exists():
        with open(path, "rb") as fh:
            if fh.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
                plt.close(fig)
                raise PlotError(f"{path}: exists and is not a PNG figure; choose another file name (it was left as it is)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=dpi)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return path


# ----------------------------------------------------------------------------- what makes a figure readable


def model_label(folder: str | Path) -> str:
    """A model's name for a figure title: a run's checkpoint RUN/checkpoints/step-00001800 reads
    "PARENT/RUN, step 1800" (the run folder alone is often just "run"); any other folder its name."""
    folder = Path(folder)
    if folder.parent.name == "checkpoints":
        run = folder.parent.parent
        step = folder.name.removeprefix("step-").lstrip("0") or "0"
        name = f"{run.parent.name}/{run.name}" if run.parent.name else run.name
        return f"{name}, step {step}" if folder.name.startswith("step-") else f"{name} ({folder.name})"
    return folder.name or str(folder)


def analysis_title(result: dict, what: str, title: str = "") -> str:
    """An analysis figure's title: `title` when given (the caller names the model and the task),
    else one naming them from the result's "settings" (as `metatokens analyze` records them)."""
    if title:
        return title
    settings = result.get("settings") or {}
    model = model_label(settings["checkpoint"]) if settings.get("checkpoint") else "model"
    tasks = settings.get("tasks") or ([settings["task"]] if settings.get("task") else [])
    lengths = settings.get("lengths") or ([settings["length"]] if settings.get("length") else [])
    task = ", ".join(tasks) or "task examples"
    where = f" @ {', '.join(map(str, lengths))} tokens" if lengths else ""
    return f"{model}: {what}, {task}{where}"


def wrap_title(text: str, width: int = 90) -> str:
    """Each line of `text` wrapped at `width` characters, so a long title does not run off the figure."""
    return "\n".join(textwrap.fill(line, width) if line else line for line in text.split("\n"))


def text_colour(rgba) -> str:
    """"black" or "white", whichever reads better on a background of colour `rgba` (WCAG relative
    luminance; white where the background is darker than about mid-grey)."""

    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(float(c)) for c in rgba[:3])
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    # Contrast with black is (L + 0.05) / 0.05, with white 1.05 / (L + 0.05): equal at L = 0.179.
    return "black" if luminance > 0.179 else "white"


def label_cells(ax, image, grid, fmt: str = "{:.2f}", max_size: float = 10.0, min_size: float = 4.5) -> list:
    """Write each cell's value on a heatmap drawn by `ax.imshow` (call it after the figure's layout
    is final): black or white by the cell's colour, in the largest font (up to `max_size` points)
    that fits the cell; NaN cells read "n/a". None written, and [] returned, when the cells are too
    small for `min_size` points."""
    grid = np.asarray(grid, dtype=float)
    rows, cols = grid.shape
    texts = [("n/a" if np.isnan(v) else fmt.format(v)) for v in grid.ravel()]
    fig = ax.figure
    box = ax.get_position()  # figure fraction
    width_in, height_in = fig.get_size_inches()
    cell_w = box.width * width_in * 72 / cols  # points
    cell_h = box.height * height_in * 72 / rows
    chars = max((len(t) for t in texts), default=1)
    # A digit is about 0.6 em wide in DejaVu Sans; leave a margin on each side of the text.
    size = min(max_size, 0.8 * cell_w / (0.62 * chars), 0.5 * cell_h)
    if size < min_size:
        return []
    out = []
    for (i, j), text in zip(np.ndindex(rows, cols), texts):
        value = grid[i, j]
        colour = "black" if np.isnan(value) else text_colour(image.cmap(image.norm(value)))
        out.append(ax.text(j, i, text, ha="center", va="center", fontsize=size, color=colour))
    return out
