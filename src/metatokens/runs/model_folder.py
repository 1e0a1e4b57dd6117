"""Model folders: config.json + model.safetensors + tokenizer.json, written atomically.

Nothing here unpickles: weights are safetensors, settings are JSON. A folder is written under a
temporary name, synced, and renamed into place, so a crash never leaves a half-written model
where a good one was. The SHA-256 of the weights is kept in config.json so that a corrupted (not
only truncated) file is caught on load.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model

from .. import __version__
from ..errors import CheckpointError, TokenizerError, one_line
from ..fileio import atomic_folder, atomic_write_text, fsync_path, read_json_object
from ..model.config import ConfigError, ModelConfig
from ..model.family import build_model
from ..model.gpt import GPT
from ..tokenizer.meta import MetaTokenizer

FORMAT = "metatokens"
FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "config.json", "model.safetensors", "tokenizer.json"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_pretrained(
    out_dir: str | Path,
    model: GPT,
    tokenizer=None,
    *,
    extra: dict[str, Any] | None = None,
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write a model folder. `extra` adds JSON-serialisable fields to config.json; `write_extra(tmp)`
    may add files (optimizer state, ...) to the folder before it is moved into place."""
    with atomic_folder(out_dir) as tmp:
        weights = tmp / WEIGHTS_FILE
        save_model(model, str(weights), metadata={"format": "pt"})
        fsync_path(weights)
        config: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "metatokens_version": __version__,
            "model": model.config.to_dict(),
            "weights_sha256": sha256_file(weights),
        }
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER_FILE)
            config["tokenizer"] = {
                "file": TOKENIZER_FILE,
                "vocab_size": tokenizer.vocab_size,
                "meta_token_id": tokenizer.meta_token_id,
                "eos_token_id": tokenizer.eos_token_id,
            }
        config.update(extra or {})
        if write_extra is not None:
            write_extra(tmp)
        atomic_write_text(tmp / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return Path(out_dir)


def read_config(path: str | Path) -> dict[str, Any]:
    """Parse and check config.json of a model folder; returns the dict with `model` as ModelConfig."""
    folder = Path(path)
    file = folder / CONFIG_FILE
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a model folder (expected a directory with {CONFIG_FILE})")
    data = read_json_object(file, CheckpointError, missing=f"is {folder} a metatokens model folder?",
                            damaged="the file is truncated or corrupted")
    if data.get("format") != FORMAT:
        raise CheckpointError(f"{file}: not a metatokens config (missing \"format\": \"{FORMAT}\")")
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{file}: format_version {data.get('format_version')!r} is not supported (expected {FORMAT_VERSION})")
    if "model" not in data:
        raise CheckpointError(f"{file}: no \"model\" settings")
    try:
        data["model"] = ModelConfig.from_dict(data["model"], source=str(file))
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    entry = data.get("tokenizer", {})
    name = entry.get("file", TOKENIZER_FILE) if isinstance(entry, dict) else None
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise CheckpointError(f"{file}: \"tokenizer\" must be an object naming a file in the folder, like "
                              f"{{\"file\": \"{TOKENIZER_FILE}\"}} (got {one_line(repr(entry), 60)}); "
                              "the file was edited or damaged")
    return data


def check_shapes_fit(cfg: ModelConfig, found: dict[str, tuple[int, ...]], config_file: Path | str, weights_name: str) -> None:
    """Refuse a config.json whose model the weights do not hold, before the model is built: an edited
    n_embd=65536 would otherwise allocate tens of GB just to fail. The model is built on PyTorch's
    meta device (no memory) and its tensor shapes compared with `found` (name -> shape)."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
    found = dict(found)
    if cfg.tie_embeddings:  # a tied matrix is stored once, under either name
        for a, b in (("wte.weight", "lm_head.weight"), ("lm_head.weight", "wte.weight")):
            if a in found:
                found.setdefault(b, found[a])
    wrong = [k for k in expected if found.get(k) != expected[k]] + [k for k in found if k not in expected]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{config_file}: its model does not match the weights in {weights_name} "
                              f"({k}: config {expected.get(k, 'none')}, weights {found.get(k, 'none')}); "
                              "the file was edited or belongs to another model")


def _check_weights_fit(cfg: ModelConfig, weights: Path, config_file: Path) -> None:
    """`check_shapes_fit` against the safetensors file's header (no tensor is read)."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights}: cannot load weights ({' '.join(str(err).split())[:300]})") from None
    check_shapes_fit(cfg, found, config_file, weights.name)


def load_pretrained(path: str | Path, device: str | torch.device = "cpu", *, verify: bool = True):
    """Load (model, tokenizer or None, config dict) from a model folder; never unpickles.

    verify=True checks the weights' SHA-256 against config.json before reading them.
    """
    folder = Path(path)
    data = read_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    if verify:
        expected = data.get("weights_sha256")
        if not isinstance(expected, str) or not expected:  # every folder save_pretrained writes has one
            raise CheckpointError(f"{folder / CONFIG_FILE}: no weights_sha256, so the weights cannot be verified; "
                                  "the file was edited or damaged")
        if sha256_file(weights) != expected:
            raise CheckpointError(f"{weights}: checksum differs from {CONFIG_FILE}; the file is truncated or corrupted")
    _check_weights_fit(data["model"], weights, folder / CONFIG_FILE)
    model = build_model(data["model"])  # GPT, or an imported family's model (model/family.py)
    try:
        load_model(model, str(weights), strict=True, device=str(device))
    except (SafetensorError, RuntimeError, OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:300]
        raise CheckpointError(f"{weights}: cannot load weights ({reason})") from None
    check_finite(model, weights)
    model.to(device)
    tokenizer = None
    if "tokenizer" in data:
        tokenizer = load_tokenizer(folder / data["tokenizer"].get("file", TOKENIZER_FILE))  # checked in read_config
        check_tokenizer(model.config, tokenizer, str(folder / CONFIG_FILE))
    return model, tokenizer, data


def finite_flags(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One bool per tensor: whether all its values are finite. One fused max-|x| reduction over all of
    them (NaN and inf propagate through it); the check of loading here and of saving in training."""
    return torch.stack(torch._foreach_norm(tensors, math.inf)).isfinite()


def check_finite(model: torch.nn.Module, where: str | Path) -> None:
    """Refuse weights holding NaN or inf (the first such tensor is named): a model with them samples
    garbage or fails deep inside generation, evaluation or training."""
    named = [(name, p.detach()) for name, p in model.named_parameters() if p.is_floating_point() and p.numel()]
    if not named:
        return
    finite = finite_flags([p for _, p in named])
    if not bool(finite.all()):
        name = named[int((~finite).nonzero()[0])][0]
        raise CheckpointError(f"{where}: {name} holds NaN or inf values, so the model cannot be used "
                              "(a diverged run or a damaged file); use an earlier checkpoint")


def load_tokenizer(file: Path):
    try:
        return MetaTokenizer.from_file(file)
    except TokenizerError as err:
        raise CheckpointError(str(err)) from None


def check_tokenizer(cfg: ModelConfig, tokenizer, where: str) -> None:
    """A model and tokenizer belong together: same meta id, and every token id has an embedding row."""
    if tokenizer.vocab_size > cfg.vocab_size:
        raise CheckpointError(f"{where}: tokenizer has {tokenizer.vocab_size} tokens but the model only {cfg.vocab_size} embeddings")
    if cfg.meta_token_id is not None and cfg.meta_token_id != tokenizer.meta_token_id:
        raise CheckpointError(f"{where}: model meta_token_id {cfg.meta_token_id} != tokenizer's {tokenizer.meta_token_id}")
