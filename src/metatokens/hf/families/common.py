"""What every family's import shares: refusals, activations, rotary settings, the tokenizer, the source."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer

from ...errors import ImportRefused, TokenizerError
from ...model.config import SUPPORTED
from ...tokenizer.backend import EOS_TOKEN, META_TOKEN
from ...tokenizer.meta import MetaTokenizer
from ..hub import read_hf_config as hf_read_config
from ..hub import resolve_hub_folder

__all__ = ["SUPPORTED", "ImportRefused", "activation", "rope_settings", "meta_tokenizer", "resolve_source", "read_hf_config"]


_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh",
                "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


def activation(name: str) -> str:
    if name not in _ACTIVATIONS:
        raise ImportRefused(f"activation {name!r} is not supported (expected one of {', '.join(_ACTIVATIONS)})")
    return _ACTIVATIONS[name]


def rope_settings(hf: Any) -> dict[str, Any]:
    """FamilyConfig's rope_* fields (and partial_rotary_factor) from a transformers 4 or 5 config."""
    params = dict(getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None) or {})
    theta = params.get("rope_theta", getattr(hf, "rope_theta", getattr(hf, "rotary_emb_base", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    partial = params.get("partial_rotary_factor", getattr(hf, "partial_rotary_factor", getattr(hf, "rotary_pct", 1.0)))
    out: dict[str, Any] = dict(rope_theta=float(theta), rope_type=kind, partial_rotary_factor=float(partial))
    if kind == "linear":
        out["rope_factor"] = float(params["factor"])
    elif kind == "llama3":
        out.update(rope_factor=float(params["factor"]), rope_low_freq_factor=float(params["low_freq_factor"]),
                   rope_high_freq_factor=float(params["high_freq_factor"]),
                   rope_original_max_positions=int(params["original_max_position_embeddings"]))
    elif kind != "default":
        raise ImportRefused(f"rope_type {kind!r} is not supported (default, linear and llama3 are)")
    return out


# ----------------------------------------------------------------------------- the tokenizer


def _eos_hint(folder: Path | None) -> str | None:
    """The eos_token a folder's tokenizer_config.json names (a string or an AddedToken dict)."""
    if folder is None or not (folder / "tokenizer_config.json").is_file():
        return None
    try:
        eos = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("eos_token")
    except (OSError, ValueError, AttributeError):
        return None
    return eos.get("content") if isinstance(eos, dict) else eos if isinstance(eos, str) else None


def meta_tokenizer(source: Any, hf_config: Any, folder: Path | None = None) -> MetaTokenizer:
    """The checkpoint's tokenizer with `<|meta|>` appended as one special token no text produces.

    `source`: a MetaTokenizer (used as is), a `tokenizers.Tokenizer`, a transformers fast tokenizer,
    or a folder with tokenizer.json (GPT-2: or vocab.json + merges.txt). The ids of the checkpoint
    stay as they are. MetaTokenizer spells the end-of-text token `<|endoftext|>`; a checkpoint whose
    eos token is spelled otherwise (`</s>`, `<|end_of_text|>`) keeps its id under that spelling.
    """
    if isinstance(source, MetaTokenizer):
        return source
    eos = None
    if hasattr(source, "backend_tokenizer"):  # transformers PreTrainedTokenizerFast
        backend, eos = source.backend_tokenizer, getattr(source, "eos_token", None)
    elif isinstance(source, Tokenizer):
        backend = source
    else:
        folder = Path(source)
        if not (folder / "tokenizer.json").is_file():
            if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
                try:
                    return MetaTokenizer.from_gpt2(folder)
                except TokenizerError as err:
                    raise ImportRefused(str(err)) from None
            raise ImportRefused(f"{folder}: no tokenizer.json (or vocab.json + merges.txt); the tokenizer is needed")
        try:
            backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as err:  # tokenizers raises bare Exceptions
            raise ImportRefused(f"{folder / 'tokenizer.json'}: cannot load ({' '.join(str(err).split())[:200]})") from None
        eos = _eos_hint(folder)
    data = json.loads(backend.to_str())  # a copy: the caller's tokenizer is never changed
    special = {t["content"]: t for t in data.get("added_tokens", []) if t.get("special")}
    if EOS_TOKEN not in special:
        if eos is None:
            eos_id = getattr(hf_config, "eos_token_id", None)
            eos_id = eos_id[0] if isinstance(eos_id, (list, tuple)) and eos_id else eos_id
            eos = backend.id_to_token(eos_id) if isinstance(eos_id, int) else None
        if eos not in special:
            raise ImportRefused(f"the tokenizer has no special {EOS_TOKEN} and no special eos token ({eos!r}); "
                                "cannot tell where documents end")
        if backend.token_to_id(EOS_TOKEN) is not None:
            raise ImportRefused(f"the tokenizer's eos is {eos!r} but {EOS_TOKEN} is an ordinary token; not supported")
        special[eos]["content"] = EOS_TOKEN
        vocab = data.get("model", {}).get("vocab")
        if isinstance(vocab, dict) and eos in vocab:
            vocab[EOS_TOKEN] = vocab.pop(eos)
    try:
        backend = Tokenizer.from_str(json.dumps(data))
        if backend.token_to_id(META_TOKEN) is None:
            backend.add_special_tokens([AddedToken(META_TOKEN, special=True, normalized=False)])
        return MetaTokenizer(backend)
    except TokenizerError as err:
        raise ImportRefused(f"the checkpoint's tokenizer cannot carry a meta-token ({err})") from None
    except Exception as err:
        raise ImportRefused(f"the checkpoint's tokenizer cannot be read ({' '.join(str(err).split())[:200]})") from None


# ----------------------------------------------------------------------------- the source

_PATTERNS = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
             "vocab.json", "merges.txt"]


def resolve_source(name_or_path: str | Path) -> Path:
    """A local folder as is; otherwise a Hub model name, fetched (only config, safetensors, tokenizer)."""
    return resolve_hub_folder(name_or_path, patterns=_PATTERNS, error=ImportRefused,
                              what="a Hugging Face model folder", example="EleutherAI/pythia-14m")


def read_hf_config(folder: Path, config_classes: dict[str, Any]):
    """The transformers config of a folder, for a supported model_type only (never remote code)."""
    return hf_read_config(folder, config_classes, error=ImportRefused, supported=f"import-hf supports {SUPPORTED}")
