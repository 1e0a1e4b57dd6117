"""Settings of a training run: model + data + optimisation, presets by name or YAML, overrides.

A preset is a YAML file with up to three sections (`model`, `data`, `train`); `base:` names a
shape from config.MODEL_SHAPES. Any field can be overridden on the command line with
`--set section.field=value` (values parsed as YAML, so `--set train.lr=3e-4`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..model.config import (
    MODEL_SHAPES,
    ConfigError,
    ModelConfig,
    coerce_fields,
    parse_value,
)

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"  # src/metatokens/configs


@dataclass
class DataConfig:
    source: str = "builtin"  # "builtin", a local .txt/.jsonl/.parquet file or folder, or "hf:NAME"
    text_field: str = "text"  # field holding the text in JSONL / Parquet / HF rows
    hf_config: str | None = None  # Hugging Face dataset configuration (e.g. "en" for allenai/c4)
    split: str = "train"  # Hugging Face split to stream
    max_documents: int | None = None  # read at most this many documents (None: all)
    tokenizer: str | None = None  # tokenizer.json path, "gpt2" (local GPT-2 BPE), or None: train one
    vocab_size: int = 2048  # size of the tokenizer trained when `tokenizer` is None
    val_fraction: float = 0.005  # share of documents held out for validation
    k: float = 0.1  # meta-tokens per block token (paper: 0.1; 0 = baseline)
    cache_dir: str = ".cache/metatokens"  # where tokenised corpora are kept between runs


@dataclass
class TrainConfig:
    batch_size: int = 16  # rows per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimiser step over all processes (global batch = batch * accum)
    max_steps: int = 1000  # optimiser steps
    lr: float = 6e-4  # peak learning rate (paper: 6e-4)
    min_lr: float = 6e-5  # final learning rate of the cosine schedule (paper: 6e-5)
    warmup_steps: int = 100  # linear warm-up steps (paper: 2000)
    weight_decay: float = 0.1  # AdamW weight decay on matrices only (paper: 0.1)
    beta1: float = 0.9  # AdamW beta1 (paper: 0.9)
    beta2: float = 0.95  # AdamW beta2 (paper: 0.95)
    grad_clip: float = 1.0  # clip the global gradient norm (paper: 1.0; 0 = off)
    eval_interval: int = 100  # steps between validation passes (0 = only at the end)
    eval_batches: int = 20  # validation micro-batches per pass
    log_interval: int = 10  # steps between log lines / metric rows
    ckpt_interval: int = 500  # steps between checkpoints (0 = only at the end)
    keep_last: int = 2  # checkpoints kept in the run folder
    seed: int = 1337  # seeds the model init, dropout and meta-token placement
    device: str = "auto"  # auto (cuda if present), cpu, cuda, cuda:1, mps
    dtype: str = "auto"  # auto: bf16 autocast where bf16 matmuls are fast (CUDA with native bf16, a CPU with AMX),
    # fp32 elsewhere; fp32; bf16 (fp32 on a CPU without bf16 units). The choice is printed and kept in run.json.
    compile: bool = False  # torch.compile the model (applied outside the model)
    fsdp: bool = False  # shard with torch.distributed.fsdp.fully_shard instead of DDP
    peak_tflops: float | None = None  # device peak for the MFU estimate (None: known GPUs only)
    wandb: bool = False  # log to Weights & Biases (when installed)
    wandb_project: str = "metatokens"  # W&B project name


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = "custom"  # preset the run started from

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model.to_dict(), "data": dataclasses.asdict(self.data),
                "train": dataclasses.asdict(self.train)}

    def validate(self) -> "RunConfig":
        self.model.validate()
        t, d = coerce_fields(self.train, "train"), coerce_fields(self.data, "data")
        positive = [(t, "batch_size"), (t, "grad_accum"), (t, "max_steps"), (t, "eval_batches"), (t, "log_interval"),
                    (t, "keep_last"), (d, "vocab_size")]
        for section, name in positive:
            value = getattr(section, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("warmup_steps", "eval_interval", "ckpt_interval"):
            if not isinstance(getattr(t, name), int) or getattr(t, name) < 0:
                raise ConfigError(f"train.{name} must be a non-negative integer, got {getattr(t, name)!r}")
        if not (t.lr > 0 and 0 <= t.min_lr <= t.lr):
            raise ConfigError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={t.lr}, min_lr={t.min_lr}")
        if not (0 <= t.beta1 < 1 and 0 <= t.beta2 < 1) or t.weight_decay < 0 or t.grad_clip < 0:
            raise ConfigError("AdamW needs betas in [0, 1) and non-negative weight decay and clip")
        if t.dtype not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"train.dtype must be auto, fp32 or bf16, got {t.dtype!r}")
        if not 0 <= d.k < 1:
            raise ConfigError(f"data.k must be in [0, 1), got {d.k}")
        if not 0 < d.val_fraction < 0.5:
            raise ConfigError(f"data.val_fraction must be in (0, 0.5), got {d.val_fraction}")
        return self


def _set_field(obj: Any, key: str, value: Any, where: str) -> None:
    names = {f.name for f in dataclasses.fields(obj)}
    if key not in names:
        raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(names))})")
    setattr(obj, key, value)


def _merge_model(model: dict[str, Any], section: dict[str, Any], where: str) -> dict[str, Any]:
    section = dict(section)
    base = section.pop("base", None)
    if base is not None:
        if base not in MODEL_SHAPES:
            raise ConfigError(f"{where}: unknown model base {base!r}; choose one of {', '.join(MODEL_SHAPES)}")
        model = {**model, **MODEL_SHAPES[base]}
    return {**model, **section}


def load_run_config(preset: str, overrides: list[str] | None = None) -> RunConfig:
    """A preset name (configs/NAME.yaml in the package) or a YAML path, then `section.key=value` overrides."""
    path = Path(preset)
    if not path.suffix:
        path = PRESET_DIR / f"{preset}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(list_presets())} or give a YAML path")
    elif not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with model/data/train sections")
    unknown = set(raw) - {"model", "data", "train"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(sorted(unknown))} (use model, data, train)")
    if not raw.get("model"):
        # ModelConfig's defaults are GPT-2 small (the paper's 124M + meta-attention): a file that names no
        # model would build that silently, hours per step on a CPU.
        raise ConfigError(f"{path}: no model settings; a YAML config must say which model to build in a model: "
                          "section (see src/metatokens/configs/tiny.yaml, or use --config tiny --set ...)")
    model = _merge_model(ModelConfig().to_dict(), raw.get("model") or {}, str(path))
    cfg = RunConfig(name=path.stem)
    for section in ("data", "train"):
        for key, value in (raw.get(section) or {}).items():
            _set_field(getattr(cfg, section), key, value, f"{path} [{section}]")
    for item in overrides or []:
        key, sep, text = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or section not in ("model", "data", "train"):
            raise ConfigError(f"override {item!r} must look like section.key=value (section: model, data or train)")
        value = parse_value(text)
        if section == "model":
            model = _merge_model(model, {name: value}, "override")
        else:
            _set_field(getattr(cfg, section), name, value, "override")
    cfg.model = ModelConfig.from_dict(model, source=f"{path.name} [model]")
    return cfg.validate()


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
