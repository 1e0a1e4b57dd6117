"""`metatokens reproduce`: the whole study in one command, cached by stage, written to REPORT.md."""

from __future__ import annotations


def add_command(sub) -> None:
    from ..reproduce import SCALES

    p = sub.add_parser(
        "reproduce",
        help="pre-train, fine-tune, evaluate and analyse; write REPORT.md beside the paper's numbers",
        description="Runs every stage of the study (cached: a re-run continues where it stopped and re-runs "
                    "only what a changed setting reaches). Scales: " + "; ".join(f"{k}: {v.budget}" for k, v in SCALES.items()),
    )
    p.add_argument("--scale", default="demo", choices=list(SCALES), help="study size (default demo)")
    p.add_argument("--out", default="report", help="report folder (default report/)")
    p.add_argument("--seeds", type=int, default=1, help="repeat the study with N seeds; report mean and spread")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (stage lines still print)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..reproduce import Pipeline

    if args.seeds < 1:
        raise ValueError(f"--seeds must be a positive integer, got {args.seeds}")
    pipe = Pipeline(Path(args.out), args.scale, seeds=args.seeds, device=args.device, progress=not args.no_progress)
    report = pipe.run()
    print(f"wrote {report}")
    return 0
