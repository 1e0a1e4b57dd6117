"""The study's output folder: what `metatokens reproduce` may write into, and what it refuses.

A study folder holds only what the study writes (`STUDY_NAMES`) and says its scale in `study.json`.
`claim_study_folder` accepts a new or empty folder, or a study folder of the same scale (the study's
own work, which a re-run continues: stages are cached by key); it refuses a folder holding anything
else (the user's files) and a study of another scale, whose finished stages a re-run would replace.
A folder written before study.json existed tells its scale by REPORT.md's "Scale `NAME`" line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import StudyError
from ..fileio import atomic_write_text, check_out_folder, read_json_object

STUDY_MARKER = "study.json"
STUDY_FORMAT = "metatokens-study"
STUDY_NAMES = frozenset({"stages", "figures", "REPORT.md", STUDY_MARKER})
_REPORT_SCALE = re.compile(r"^Scale `([A-Za-z0-9_-]+)`", re.M)


def study_scale(out: Path) -> str | None:
    """The scale of the study in `out`: its study.json, else its REPORT.md; None when neither says."""
    marker = out / STUDY_MARKER
    if marker.is_file():
        data = read_json_object(marker, StudyError, missing="", damaged="the study folder's marker is damaged")
        if data.get("format") != STUDY_FORMAT or not isinstance(data.get("scale"), str):
            raise StudyError(f"{marker}: not a metatokens study marker; choose another --out")
        return data["scale"]
    report = out / "REPORT.md"
    if report.is_file():
        found = _REPORT_SCALE.search(report.read_text(encoding="utf-8", errors="replace"))
        return found[1] if found else None
    return None


def claim_study_folder(out: Path, scale: str, *, report_only: bool = False) -> None:
    """Refuse `out` unless it is new, empty, or this scale's study folder; then record the scale in
    study.json. With `report_only` (which writes REPORT.md and figures/ only, from finished stages) the
    folder may hold other files too, such as a README beside committed results, and gets no study.json;
    it must hold stages. Nothing is written when it refuses."""
    check_out_folder(out, StudyError)
    if report_only and not (out / "stages").is_dir():
        raise StudyError(f"--out {out} holds no stages/ of a study; --report-only writes a report from finished "
                         "stages (run the study first, or give the folder that holds them)")
    if not report_only and out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in STUDY_NAMES)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise StudyError(f"--out {out} holds files the study did not write ({shown}); choose a new or empty "
                             "folder (nothing in it was changed)")
    found = study_scale(out) if out.is_dir() else None
    if found is not None and found != scale:  # its stages would be replaced, or reported as another scale's
        raise StudyError(f"--out {out} holds a study at scale {found}, not {scale}: run --scale {found} to continue "
                         "it, or choose another --out")
    if report_only:
        return
    if not (out / STUDY_MARKER).is_file():
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / STUDY_MARKER, json.dumps({"format": STUDY_FORMAT, "scale": scale}) + "\n")
