"""The study of `metatokens reproduce`: what it compares (`design`), how it runs (`pipeline`), how
it compares (`stats`) and what it writes (`report`)."""

from ..errors import StudyError
from .design import SCALES, TASKS, ModelSpec, Scale
from .runner import Pipeline

__all__ = ["SCALES", "TASKS", "ModelSpec", "Pipeline", "Scale", "StudyError"]
