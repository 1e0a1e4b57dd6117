"""`metatokens reproduce`: the whole study in one command, cached by stage, written to REPORT.md."""

from __future__ import annotations

import sys
from pathlib import Path

from ..devices import resolve_device
from ..errors import StudyError
from ..fileio import output_lock
from ..study.design import SCALES
from ..study.output import claim_study_folder
from ..study.runner import Pipeline, default_jobs


def add_command(sub) -> None:
    p = sub.add_parser(
        "reproduce",
        help="pre-train, fine-tune, evaluate and analyse; write REPORT.md beside the paper's numbers",
        description="Runs every stage of the study (cached: a re-run continues where it stopped and re-runs "
                    "only what a changed setting reaches), then writes REPORT.md from every seed whose stages "
                    "have all finished. Scales: " + "; ".join(f"{k}: {v.budget}" for k, v in SCALES.items()),
    )
    p.add_argument("--scale", default="demo", choices=list(SCALES), help="study size (default demo)")
    p.add_argument("--out", default="report", help="report folder (default report/)")
    p.add_argument("--seeds", type=int, default=1, help="the study's seeds are 0..N-1 (default 1); the report "
                   "gives mean and spread, and intervals over prompts and seeds")
    p.add_argument("--seed", type=int, action="append", dest="only_seeds", metavar="S",
                   help="run only seed S of the study now (repeatable); the report still merges every finished seed")
    p.add_argument("--jobs", default="auto", help="stages run at once in separate processes (default auto: 2 on a CPU "
                   "with 2+ cores, 1 on a GPU)")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (stage lines still print)")
    p.add_argument("--report-only", action="store_true", help="run nothing: write REPORT.md from the stages that have "
                   "finished (e.g. committed stage results without their checkpoints)")
    p.add_argument("--tune", action="store_true", help="instead of the study: the learning-rate grid of the scale on dev "
                   "prompts, one seed; its report gives the rate chosen for each model (frozen by hand in "
                   "metatokens/study/design.py)")
    p.add_argument("--memory", action="store_true", help="instead of the study: the measurement of what a meta-token "
                   "caches (windowed attention; tiny: 3 seeds of under an hour each; docs/memory.md), in its own --out")
    p.add_argument("--stage", help="run this one stage (seed0/finetune-meta-rope, ...) and stop; its input stages "
                   "must have finished (used by --jobs)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.seeds < 1:
        raise StudyError(f"--seeds must be a positive integer, got {args.seeds}")
    if args.jobs == "auto":
        jobs = default_jobs(args.device)
    else:
        try:
            jobs = int(args.jobs)
        except ValueError:
            raise StudyError(f"--jobs must be auto or a positive integer, got {args.jobs!r}") from None
        if jobs < 1:
            raise StudyError(f"--jobs must be auto or a positive integer, got {args.jobs!r}")
    if args.tune and (args.seeds != 1 or args.only_seeds):
        raise StudyError("--tune runs one seed of its own; leave out --seeds and --seed")
    if args.memory and args.tune:
        raise StudyError("--memory and --tune are two different runs; give one of them")
    if args.memory and SCALES[args.scale].memory is None:
        with_memory = ", ".join(k for k, v in SCALES.items() if v.memory is not None)
        raise StudyError(f"--scale {args.scale} has no memory measurement; --memory runs at {with_memory}")
    resolve_device(args.device)  # a device this machine lacks is refused before anything is written
    progress = not args.no_progress and sys.stderr.isatty()
    out = Path(args.out)
    pipe = Pipeline(out, args.scale, seeds=args.seeds, device=args.device, progress=progress, jobs=jobs, tune=args.tune,
                    memory=args.memory)
    if args.stage:  # a stage process of a study that holds the folder (--jobs): no lock of its own
        rec = pipe.run_stage(args.stage)
        print(f"{rec.name}: done in {rec.wall_s:.0f} s")
        return 0
    with output_lock(out, StudyError):  # one study writes a folder at a time; a file as --out is refused
        kind = f"{args.scale}-tune" if args.tune else f"{args.scale}-memory" if args.memory else args.scale
        claim_study_folder(out, kind, report_only=args.report_only)
        report = pipe.write_report() if args.report_only else pipe.run(args.only_seeds)
    print(f"wrote {report}")
    return 0
