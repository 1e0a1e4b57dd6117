"""`metatokens pretrain`: pre-train a model with meta-tokens (or a baseline) from a preset."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from ..errors import RunDirError
from ..runs.folder import read_run_json
from ..training.config import list_presets, load_run_config
from ..training.pretrain import run_pretrain
from .common import check_training_flags, run_training


def add_command(sub) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pre-train with meta-token injection (runs under torchrun for DDP/FSDP)",
        description="Pre-train from a preset; any setting can be changed with --set section.key=value.",
    )
    p.add_argument("--config", default=None, help=f"preset name ({', '.join(list_presets())}) or YAML path; "
                   "default: tiny, or the run's own settings with --resume")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics, tokenizer)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a setting, e.g. --set train.lr=3e-4 --set model.n_layer=6 (repeatable)")
    p.add_argument("--max-steps", type=int, help="shortcut for --set train.max_steps=N (with --resume: above the "
                   "run's step)")
    p.add_argument("--device", help="shortcut for --set train.device=DEVICE: cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint "
                   "(a run stopped by SIGINT/SIGTERM saves one, then exits with 130/143)")
    p.add_argument("--init", help="start from the weights of a model or run folder (continued pre-training)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    check_training_flags(args, args.max_steps)
    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    preset = args.config
    with tempfile.TemporaryDirectory(prefix="metatokens-") as tmp:
        if preset is None and args.resume and (Path(args.out) / "run.json").is_file():
            preset = _saved_preset(Path(args.out), Path(tmp))
        cfg = load_run_config(preset or "tiny", overrides)
    return run_training("pretrain", args.out,
                        lambda: run_pretrain(cfg, args.out, resume=args.resume, init=args.init, progress=not args.no_progress),
                        ("train_loss", "val_loss", "val_bpb"))


def _saved_preset(run_dir: Path, tmp: Path) -> str:
    """Write the run's saved settings as a YAML file in `tmp` (nothing is added to the run folder) and
    return its path."""
    saved = read_run_json(run_dir, "config")["config"]
    missing = [k for k in ("model", "data", "train") if not isinstance(saved.get(k), dict)]
    if missing:
        raise RunDirError(f"{run_dir / 'run.json'}: no {', '.join(missing)} settings under config; the run's "
                          "settings are damaged")
    path = tmp / "resolved-config.yaml"
    path.write_text(yaml.safe_dump({k: saved[k] for k in ("model", "data", "train")}, sort_keys=False), encoding="utf-8")
    return str(path)
