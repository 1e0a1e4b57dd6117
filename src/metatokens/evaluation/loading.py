"""Loading a model to evaluate, and which prompts it gets.

`load_model` takes a metatokens model folder or run folder (its latest checkpoint), a
`metatokens export` folder, or a Hugging Face causal LM folder, and returns a `LoadedModel`: the
network in eval mode, its tokenizer and what the reports say about it (name, kind, positions,
meta-token, the run's run.json). Our own exports are read with our classes and safetensors, their
SHA-256 checked against the export's marker; no Python file of a folder is ever run. Hugging Face
models go through `metatokens.hf.baseline.HFCausalLM`, which gives them our model interface.

`inference_settings` reads `metatokens evaluate --set model.KEY=VALUE`: the model settings that change
how a trained model attends and not the shapes of its weights (`attn_window`), which `load_model`
then applies.

`uses_meta` and `pretrain_rate` decide from a model's run.json whether it reads the tasks' meta-token
prompts and at which rate its pre-training injected meta-tokens.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..errors import CheckpointError, EvaluationError
from ..fileio import read_json_object
from ..hf.baseline import HFCausalLM, load_hf_model, load_hf_tokenizer
from ..hf.hub import EXPORT_MARKER
from ..model.config import (
    ConfigError,
    FamilyConfig,
    ModelConfig,
    coerce_fields,
    parse_value,
)
from ..model.family import build_model
from ..model.gpt import GPT
from ..runs.checkpoints import resolve_model_dir
from ..runs.model_folder import (
    check_finite,
    check_shapes_fit,
    check_tokenizer,
    load_pretrained,
    load_tokenizer,
    sha256_file,
)
from ..tokenizer.meta import MetaTokenizer

EXPORT_MODEL_TYPE = "metatokens"  # config.json "model_type" of `metatokens export` folders (hf_model.MODEL_TYPE)


@dataclass
class LoadedModel:
    """A model ready to evaluate, with what the reports need to say about it."""

    name: str
    path: str
    model: nn.Module  # GPT or HFCausalLM, in eval mode
    tokenizer: MetaTokenizer
    kind: str  # "metatokens" or "hf"
    run_info: dict[str, Any] = field(default_factory=dict)  # the run's run.json, when found

    @property
    def pos_encoding(self) -> str:
        return self.model.config.pos_encoding if isinstance(self.model, GPT) else "hf"

    @property
    def max_positions(self) -> int | None:
        return self.model.config.max_positions if isinstance(self.model, GPT) else self.model.max_positions

    @property
    def meta_token_id(self) -> int | None:
        return self.model.config.meta_token_id if isinstance(self.model, GPT) else None

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size if isinstance(self.model, GPT) else self.model.vocab_size

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.name, "path": self.path, "kind": self.kind, "pos_encoding": self.pos_encoding}
        if isinstance(self.model, GPT):
            cfg = self.model.config
            info.update(block_size=cfg.block_size, meta_attention=cfg.meta_attention,
                        yarn=None if cfg.yarn is None else {"factor": cfg.yarn.factor,
                                                            "original_max_position_embeddings": cfg.yarn.original_max_position_embeddings},
                        attn_window=cfg.attn_window, attn_sinks=cfg.attn_sinks)
        info["max_positions"] = self.max_positions
        return info


def _run_info(model_dir: Path) -> dict[str, Any]:
    """run.json of the run a model folder belongs to (run/checkpoints/step-N or the run itself)."""
    for candidate in (model_dir, model_dir.parent.parent if model_dir.parent.name == "checkpoints" else None):
        if candidate is not None and (candidate / "run.json").is_file():
            try:
                return json.loads((candidate / "run.json").read_text(encoding="utf-8"))
            except (OSError, ValueError, RecursionError):  # a damaged run.json only loses the report's details
                return {}
    return {}


def _model_name(path: Path, model_dir: Path) -> str:
    if model_dir.parent.name == "checkpoints" and model_dir.parent.parent.resolve() == path.resolve():
        return path.resolve().name  # a run folder: its name
    if model_dir.parent.name == "checkpoints":
        return f"{model_dir.parent.parent.name}/{model_dir.name}"
    return path.resolve().name


# Model settings a trained model may be evaluated or fine-tuned with (`--set model.KEY=VALUE`): each changes
# how it attends, never the shape of a weight. attn_window: how much of what it answers comes through meta-tokens;
# attn_sinks: the first positions kept in the window too (StreamingLLM's sinks, the control for meta-tokens as memory).
INFERENCE_SETTINGS = ("attn_window", "attn_sinks")


def inference_settings(items: Sequence[str]) -> dict[str, Any]:
    """`model.KEY=VALUE` items -> {KEY: value}; any other item is refused in one line."""
    settings: dict[str, Any] = {}
    allowed = ", ".join(f"model.{k}" for k in INFERENCE_SETTINGS)
    for item in items:
        key, sep, text = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or section != "model" or not dot:
            raise EvaluationError(f"--set {item!r}: a trained model takes model.KEY=VALUE for {allowed}")
        if name not in INFERENCE_SETTINGS:
            raise EvaluationError(f"--set model.{name} cannot change on a trained model (its weights were trained with "
                                  f"it); a trained model takes {allowed}")
        settings[name] = parse_value(text)
    # a bad value is refused before any model loads; sinks alone meet the loaded model's own window later
    _with_settings(ModelConfig() if "attn_window" in settings else ModelConfig(attn_window=1), settings)
    return settings


def _with_settings(cfg: ModelConfig, settings: dict[str, Any]) -> ModelConfig:
    try:
        return coerce_fields(dataclasses.replace(cfg, **settings), "model").validate()
    except ConfigError as err:
        raise EvaluationError(f"--set: {err}") from None


def apply_settings(loaded: LoadedModel, settings: dict[str, Any]) -> None:
    """Change a loaded metatokens model's inference settings (`inference_settings`) in place."""
    if not settings:
        return
    if not isinstance(loaded.model, GPT):
        raise EvaluationError(f"{loaded.name} is a Hugging Face model; --set model.* applies to metatokens models only")
    loaded.model.config = _with_settings(loaded.model.config, settings)


def load_model(path: str | Path, device: str | torch.device = "cpu", name: str | None = None,
               settings: dict[str, Any] | None = None) -> LoadedModel:
    """A metatokens model folder or run folder, or a Hugging Face model folder (or run of one);
    `settings` (from `inference_settings`) change how a metatokens model attends."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such model or run folder")
    model_dir = resolve_model_dir(path)
    config = read_json_object(model_dir / "config.json", CheckpointError, missing=f"is {model_dir} a model folder?",
                              damaged="the file is truncated or corrupted")
    if config.get("format") == "metatokens" or "model_type" not in config:
        model, tokenizer, _ = load_pretrained(model_dir, device)
        if tokenizer is None:
            raise CheckpointError(f"{model_dir}: the model folder has no tokenizer.json")
        kind = "metatokens"
    elif config.get("model_type") == EXPORT_MODEL_TYPE:  # ours, exported: never through transformers' remote code
        model, tokenizer = load_export(model_dir, config, device)
        kind = "metatokens"
    else:
        model = HFCausalLM(load_hf_model(model_dir)).to(device)
        tokenizer = load_hf_tokenizer(model_dir)
        kind = "hf"
    model.eval()
    loaded = LoadedModel(name or _model_name(path, model_dir), str(path), model, tokenizer, kind, _run_info(model_dir))
    apply_settings(loaded, settings or {})
    return loaded


def load_export(folder: Path, config: dict[str, Any], device: str | torch.device = "cpu") -> tuple[GPT, MetaTokenizer]:
    """A `metatokens export` folder (or a transformers save of one) as our GPT and tokenizer: the settings
    from its config.json, the weights read with safetensors. The folder's Python files are never run."""
    file = folder / "config.json"
    kind = FamilyConfig if "family" in config else ModelConfig  # an export of an `import-hf` model
    names = {f.name for f in dataclasses.fields(kind)} - {"tie_embeddings"}
    settings = {k: v for k, v in config.items() if k in names}
    settings["tie_embeddings"] = bool(config.get("tie_word_embeddings", True))
    try:
        cfg = kind.from_dict(settings, source=str(file))
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    state = _export_weights(folder)
    if not all(k.startswith("model.") for k in state):
        raise CheckpointError(f"{folder}: weights are not those of a metatokens export (names without the model. prefix)")
    state = {k.removeprefix("model."): v for k, v in state.items()}
    if cfg.tie_embeddings and "wte.weight" in state:
        state.setdefault("lm_head.weight", state["wte.weight"])  # transformers saves a tied matrix once
    check_shapes_fit(cfg, {k: tuple(v.shape) for k, v in state.items()}, file, "the exported weights")
    model = build_model(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{folder}: the weights do not fit its config.json ({' '.join(str(err).split())[:300]})") from None
    check_finite(model, folder)
    if not (folder / "tokenizer.json").is_file():
        raise CheckpointError(f"{folder}: the exported folder has no tokenizer.json")
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    check_tokenizer(model.config, tokenizer, str(file))
    return model.to(device), tokenizer


def _export_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The safetensors weights of an exported folder, checked against the SHA-256 its marker records
    (a transformers save of a loaded export has no marker, and nothing to check against)."""
    marker = folder / EXPORT_MARKER
    try:
        if (folder / "model.safetensors").is_file():
            files = [folder / "model.safetensors"]
        else:
            index = json.loads((folder / "model.safetensors.index.json").read_text(encoding="utf-8"))
            files = [folder / name for name in sorted(set(index["weight_map"].values()))]
        digests = json.loads(marker.read_text(encoding="utf-8")).get("sha256") if marker.is_file() else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{folder}: cannot read the exported weights ({' '.join(str(err).split())[:300]})") from None
    if marker.is_file() and not (isinstance(digests, dict) and digests):
        raise CheckpointError(f"{marker}: no sha256 of the weights, so they cannot be verified; the file was edited or damaged")
    state: dict[str, torch.Tensor] = {}
    for weights in files:
        try:
            if digests is not None and digests.get(weights.name) != sha256_file(weights):
                raise CheckpointError(f"{weights}: checksum differs from {EXPORT_MARKER}; the file is truncated or corrupted")
            state.update(load_file(str(weights)))
        except (OSError, SafetensorError) as err:
            raise CheckpointError(f"{weights}: cannot load weights ({' '.join(str(err).split())[:300]})") from None
    return state


def unique_names(models: Sequence[LoadedModel]) -> None:
    """Make the display names distinct (same run name from different folders)."""
    seen: dict[str, int] = {}
    for m in models:
        if m.name in seen:
            seen[m.name] += 1
            m.name = f"{m.name} ({seen[m.name]})"
        else:
            seen[m.name] = 1


# ----------------------------------------------------------------------------- which prompts a model gets


def uses_meta(loaded: LoadedModel, choice: str = "auto") -> bool:
    """Whether a model gets the tasks' meta-token variant.

    auto: what its fine-tuning used (run.json), else whether its pre-training injected meta-tokens
    (data.k > 0), else whether it has meta-attention. Hugging Face models never do.
    """
    if choice not in ("auto", "on", "off"):
        raise EvaluationError(f"meta must be auto, on or off, got {choice!r}")
    if loaded.kind == "hf" or loaded.meta_token_id is None:
        if choice == "on":
            raise EvaluationError(f"{loaded.name} has no meta-token; use --meta auto or off")
        return False
    if choice != "auto":
        return choice == "on"
    info = loaded.run_info
    if isinstance(info.get("finetune"), dict) and "meta" in info["finetune"]:
        return bool(info["finetune"]["meta"])
    k = pretrain_rate(info)
    if k is not None:
        return k > 0
    return bool(loaded.model.config.meta_attention)


def auto_meta_rate(m: LoadedModel) -> float:
    """The pre-training rate of the run; 0.1 (the paper's) for a meta model without a run.json."""
    if m.kind == "hf" or m.meta_token_id is None:
        return 0.0
    k = pretrain_rate(m.run_info)
    if k is None:
        return 0.1 if m.model.config.meta_attention else 0.0
    return k


def pretrain_rate(run_info: dict[str, Any]) -> float | None:
    """Meta-tokens per token of the pre-training (data.k), from a pre-training or fine-tuning run.json."""
    if isinstance(run_info.get("finetune"), dict) and run_info["finetune"].get("pretrain_k") is not None:
        return float(run_info["finetune"]["pretrain_k"])
    data = (run_info.get("config") or {}).get("data") if isinstance(run_info.get("config"), dict) else None
    if isinstance(data, dict) and data.get("k") is not None:
        return float(data["k"])
    return None
