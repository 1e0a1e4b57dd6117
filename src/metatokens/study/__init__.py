"""The study of `metatokens reproduce`.

- `design.py`: what it compares: models, scales, the paper's numbers;
- `stages.py`: what each stage does, and the plan of one seed's stages;
- `runner.py`: `Pipeline`, which schedules stages (in parallel where it can), caches them by key and
  writes the report;
- `results.py`: the finished stages as `StudyResults` and the contrasts read from them;
- `findings.py`: one verdict per claim of the paper, and the controls;
- `figures.py`, `report.py`: REPORT.md and its figures.

Intervals come from `metatokens.stats`. May import: every layer below it (not cli).
"""
from ..errors import StudyError
from .design import SCALES, TASKS, ModelSpec, Scale
from .runner import Pipeline

__all__ = ["SCALES", "TASKS", "ModelSpec", "Pipeline", "Scale", "StudyError"]
