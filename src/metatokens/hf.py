"""Hugging Face interoperability: GPT-2 weight conversion, export to transformers, GPT-2 import, and
`HFCausalLM`, the adapter through which a Hugging Face causal LM is fine-tuned and evaluated like ours.

transformers is optional: it is imported only by the functions that need it. The transformers
classes themselves live in model/hf_model.py, which exported folders carry as their model code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError
from .model.config import ModelConfig
from .fileio import atomic_folder, atomic_write_text
from .errors import EvaluationError
from .tokenizer import MetaTokenizer
from .errors import TokenizerError
from .model.config import IGNORE_INDEX
from .errors import GPT2ImportWarning
from .errors import HFInteropError

# GPT-2 stores these projections as Conv1D with (in, out) weights; ours are Linear (out, in).
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def config_from_hf_gpt2(hf_config: Any, **overrides: Any) -> ModelConfig:
    """The ModelConfig that reproduces a `transformers.GPT2Config` (APE, no meta unless overridden)."""
    act = hf_config.activation_function
    if act not in ("gelu_new", "gelu_pytorch_tanh", "relu"):
        raise ValueError(f"GPT-2 activation {act!r} is not supported (expected gelu_new or relu)")
    base = dict(
        vocab_size=hf_config.vocab_size,
        block_size=hf_config.n_positions,
        n_layer=hf_config.n_layer,
        n_head=hf_config.n_head,
        n_embd=hf_config.n_embd,
        layer_norm_eps=hf_config.layer_norm_epsilon,
        mlp_act="relu" if act == "relu" else "gelu",
        bias=True,
        tie_embeddings=True,
        pos_encoding="ape",
        meta_attention=False,
    )
    return ModelConfig.from_dict({**base, **overrides}, source="GPT-2 config")


def state_dict_from_hf_gpt2(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and transpose Conv1D weights of) a GPT2LMHeadModel state dict to our names."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in hf_state.items():
        if name.endswith(".attn.bias") or name.endswith(".attn.masked_bias"):
            continue  # causal-mask buffers of old transformers versions, not weights
        key = name.removeprefix("transformer.")
        if key.endswith(_CONV1D):
            tensor = tensor.t()
        out[key] = tensor.contiguous()
    out.setdefault("lm_head.weight", out["wte.weight"])
    return out


# ---------------------------------------------------------------------------------------------
# Export to a transformers folder, import of a Hugging Face GPT-2 checkpoint.
# transformers is imported inside the functions, so `import metatokens.hf` stays light.


def _require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise HFInteropError("this needs Hugging Face transformers: pip install 'metatokens[hf]'") from None


# Files an exported folder may hold; anything else (a pickle above all) is a bug.
EXPORT_SUFFIXES = (".json", ".safetensors", ".py", ".md")
# Written last into an exported folder: the files the export wrote (so that only such a folder is
# replaced) and the SHA-256 of its weights (checked when metatokens loads it).
EXPORT_MARKER = "metatokens_export.json"
EXPORT_FORMAT = "metatokens-export"
# What import-gpt2 writes: a model folder whose config.json records the import.
IMPORT_FILES = frozenset({"config.json", "model.safetensors", "tokenizer.json"})


def _is_export(folder: Path) -> bool:
    """An earlier `metatokens export` output: its marker lists every file in the folder."""
    try:
        marker = json.loads((folder / EXPORT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    files = marker.get("files") if isinstance(marker, dict) and marker.get("format") == EXPORT_FORMAT else None
    return isinstance(files, list) and {p.name for p in folder.iterdir()} <= {*map(str, files), EXPORT_MARKER}


def _is_import(folder: Path, key: str = "imported_from_gpt2") -> bool:
    """An earlier `metatokens import-gpt2` output (import-hf: key="imported_from_hf"): only its files,
    and a config.json that records the import under `key`."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(config, dict) and config.get("format") == "metatokens" and key in config
            and {p.name for p in folder.iterdir()} <= IMPORT_FILES)


def _check_out_dir(out: Path, *, command: str, overwrite: bool, sources: list[Path], ours) -> None:
    """Refuse an --out that holds anything but an earlier output of `command` (which --overwrite replaces),
    that is not a folder, or that is or holds one of `sources`. Nothing is written here."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise HFInteropError(f"{out}: exists and is not a folder; choose another --out")
    target = out.resolve()
    for source in sources:
        source = source.resolve()
        if source == target or target in source.parents:
            raise HFInteropError(f"{out}: is or holds the source {source}; writing there would delete it, choose another --out")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not ours(out):
        raise HFInteropError(f"{out}: exists, is not empty and is not the output of an earlier `metatokens {command}`; "
                             "choose another --out (nothing was changed)")
    if not overwrite:
        raise HFInteropError(f"{out}: holds an earlier `metatokens {command}` output; pass --overwrite to replace it")


def export_hf(checkpoint: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write a transformers folder for a metatokens model folder (or run folder: its latest checkpoint).

    The folder loads with `AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)` (the
    model code travels in it), or without remote code once `metatokens.model.hf_model` is imported; and
    with `AutoTokenizer.from_pretrained(out)` when the checkpoint has a tokenizer. Weights are
    safetensors. The folder is written under a temporary name and renamed into place. An existing
    `out` must be empty, or an earlier export, replaced only with overwrite=True (never the checkpoint).
    """
    _require_transformers()
    from transformers import GenerationConfig

    from . import __version__
    from .checkpoint import load_pretrained, sha256_file
    from .model.hf_model import MetaTokensForCausalLM
    from .train import resolve_model_dir

    out = Path(out)
    source = resolve_model_dir(checkpoint)
    _check_out_dir(out, command="export", overwrite=overwrite, sources=[Path(checkpoint), source], ours=_is_export)
    model, tokenizer, _ = load_pretrained(source, "cpu")
    model.eval()
    vocab_limit = tokenizer.vocab_size if tokenizer is not None else None
    hf = MetaTokensForCausalLM.from_gpt(model, vocab_limit=vocab_limit)
    hf.config.metatokens_version = __version__
    if tokenizer is not None:
        eos = tokenizer.eos_token_id
        # pad = eos so that finished rows of a batch are filled, as for GPT-2.
        hf.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)

    with atomic_folder(out) as tmp:
        hf.save_pretrained(tmp)
        if tokenizer is not None:
            save_hf_tokenizer(tokenizer, tmp, model_max_length=model.config.max_positions)
        _write_model_card(tmp, model.config, has_tokenizer=tokenizer is not None)
        stray = sorted(p.name for p in tmp.iterdir() if not p.name.endswith(EXPORT_SUFFIXES))
        if stray:
            raise HFInteropError(f"export produced unexpected files {stray}; refusing to write non-safetensors weights")
        files = sorted(p.name for p in tmp.iterdir()) + [EXPORT_MARKER]
        digests = {p.name: sha256_file(p) for p in sorted(tmp.glob("*.safetensors"))}
        marker = {"format": EXPORT_FORMAT, "metatokens_version": __version__, "files": files, "sha256": digests}
        (tmp / EXPORT_MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    return out


def save_hf_tokenizer(tokenizer, folder: str | Path, *, model_max_length: int | None = None) -> None:
    """tokenizer.json + tokenizer_config.json that `AutoTokenizer.from_pretrained(folder)` loads.

    The tokenizer is our byte-level BPE unchanged, so ordinary text gets the ids MetaTokenizer
    gives. `<|meta|>` is an additional special token: unlike MetaTokenizer, which never maps text
    to the meta id, a transformers tokenizer turns the literal `<|meta|>` in a prompt into it
    (that is how users place meta-tokens), and `skip_special_tokens=True` drops it when decoding.
    """
    from .tokenizer import EOS_TOKEN, META_TOKEN

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(folder / "tokenizer.json")
    settings: dict[str, Any] = {
        # PreTrainedTokenizerFast reads tokenizer.json as it is (no GPT-2-specific rebuilding);
        # transformers 5 maps the name to its TokenizersBackend.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "additional_special_tokens": [META_TOKEN],
        "clean_up_tokenization_spaces": False,
    }
    if model_max_length is not None:
        settings["model_max_length"] = model_max_length
    text = json.dumps(settings, indent=2) + "\n"
    (folder / "tokenizer_config.json").write_text(text, encoding="utf-8")


def _card_style(cfg: ModelConfig) -> str:
    """GPT-2, or the family of a model `metatokens import-hf` built (model/family.py)."""
    return {"llama": "Llama-style", "neox": "GPT-NeoX-style"}.get(getattr(cfg, "family", None), "GPT-2 style")


def _write_model_card(folder: Path, cfg: ModelConfig, *, has_tokenizer: bool) -> None:
    meta = f"meta-token id {cfg.meta_token_id}" if cfg.meta_token_id is not None else "no meta-token"
    lines = [
        "---",
        "library_name: transformers",
        "tags: [metatokens, meta-attention]",
        "---",
        "",
        "# metatokens model",
        "",
        f"{_card_style(cfg)} language model with learned meta-tokens and meta-attention",
        "(Shah et al., \"Language Modeling with Learned Meta-Tokens\", arXiv 2509.16278), exported by `metatokens export`.",
        "",
        f"{cfg.n_layer} layers x {cfg.n_head} heads x {cfg.n_embd}, positions: {cfg.pos_encoding}, "
        f"meta-attention: {'yes' if cfg.meta_attention else 'no'}, {meta}.",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM" + (", PreTrainedTokenizerFast" if has_tokenizer else ""),
        "",
        'model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER", trust_remote_code=True)',
    ]
    if has_tokenizer:
        lines += [
            # the tokenizer class by name: AutoTokenizer would read config.json and ask about its remote code
            'tok = PreTrainedTokenizerFast.from_pretrained("THIS_FOLDER")',
            'ids = tok("Some text <|meta|> more text", return_tensors="pt").input_ids',
            "print(tok.decode(model.generate(ids, max_new_tokens=20)[0]))",
        ]
    lines += ["```", "",
              "Without remote code: install metatokens from its source (it is not on PyPI yet: `pip install -e .` in a "
              "checkout), `import metatokens.model.hf_model`, then the same calls without `trust_remote_code=True`.", ""]
    (folder / "README.md").write_text("\n".join(lines), encoding="utf-8")


# Hub files worth fetching for an import: settings, safetensors weights, tokenizer.
_GPT2_PATTERNS = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json", "vocab.json", "merges.txt"]


def resolve_hub_folder(name_or_path: str | Path, *, patterns: list[str], error: type[Exception], what: str,
                       example: str) -> Path:
    """A local folder as is; otherwise a Hub model name, fetched with only the files in `patterns`.

    Every failure is one line raised as `error`: a file where a folder was expected, a path that
    does not exist, or a Hub fetch that failed (network, offline mode, unknown repo)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise error(f"{path}: is a file; expected {what}")
    text = str(name_or_path)
    looks_like_path = path.is_absolute() or text.startswith((".", "~")) or text.count("/") > 1 or "\\" in text
    if looks_like_path or not text:
        raise error(f"{text}: folder not found; pass {what} or a Hub name such as {example}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=text, allow_patterns=patterns))
    except Exception as err:  # network, offline mode, unknown repo: all end the same way for the user
        reason = " ".join(str(err).split())[:200]
        raise error(f"{text}: not a local folder, and fetching it from the Hugging Face Hub failed ({reason})") from None


def resolve_gpt2_source(name_or_path: str | Path) -> Path:
    """A local GPT-2 folder as is; otherwise a Hub model name, fetched (only the files an import needs)."""
    return resolve_hub_folder(name_or_path, patterns=_GPT2_PATTERNS, error=HFInteropError,
                              what="a Hugging Face GPT-2 model folder", example="gpt2")


def read_hf_config(folder: Path, config_classes: dict[str, Any], *, error: type[Exception], supported: str):
    """The transformers config of a folder, for a model_type of `config_classes` only (never remote
    code); every refusal is one line raised as `error`, naming what is `supported`."""
    file = folder / "config.json"
    if not file.is_file():
        raise error(f"{folder}: no config.json; not a Hugging Face model folder")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{file}: not valid JSON ({err})") from None
    kind = data.get("model_type") if isinstance(data, dict) else None
    if kind not in config_classes:
        raise error(f"{file}: model_type {kind!r} is not supported; {supported}")
    try:
        return config_classes[kind].from_dict(data)
    except Exception as err:
        raise error(f"{file}: not a valid {kind} config ({' '.join(str(err).split())[:200]})") from None


def _read_gpt2_config(folder: Path):
    from transformers import GPT2Config

    return read_hf_config(folder, {"gpt2": GPT2Config}, error=HFInteropError,
                          supported="import-gpt2 takes GPT-2 checkpoints only (other families: metatokens import-hf)")


def _read_safetensors_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise HFInteropError(f"{index}: not a safetensors index ({err})") from None
        files = [folder / name for name in sorted(set(weight_map.values()))]
    else:
        raise HFInteropError(
            f"{folder}: no model.safetensors; only safetensors weights are read (never pickles). "
            "Convert with transformers: AutoModelForCausalLM.from_pretrained(folder).save_pretrained(folder)"
        )
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except Exception as err:
            raise HFInteropError(f"{file}: cannot read weights ({' '.join(str(err).split())[:200]})") from None
    return state


def _pad_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """Append rows equal to the mean of the existing ones.

    A new token starts as an "average" token. Zero rows would be worse: with a tied head a zero
    row scores logit 0, far above GPT-2's typical (large negative) logits, and would soak up
    probability before any training.
    """
    extra = rows - weight.size(0)
    if extra <= 0:
        return weight
    return torch.cat((weight, weight.mean(0, keepdim=True).expand(extra, -1)), 0)


def gpt2_to_meta_model(
    hf_config: Any,
    hf_state: dict[str, torch.Tensor],
    meta_token_id: int,
    vocab_rows: int,
    *,
    pos_encoding: str = "ape",
    meta_attention: bool = True,
    seed: int = 0,
):
    """Our GPT holding every GPT-2 weight, plus meta-attention sublayers and embedding rows.

    New embedding rows (the meta-token, padding) are the mean of GPT-2's rows. Meta-attention
    gets GPT's usual initialisation except its output projection (c_proj weight and bias), which
    is zero: the new sublayers add nothing until trained, so on text without meta-tokens the
    logits are GPT-2's. pos_encoding "rope"/"none" drops GPT-2's learned position table.
    """
    from .model.gpt import GPT

    tied = bool(getattr(hf_config, "tie_word_embeddings", True))
    cfg = config_from_hf_gpt2(
        hf_config, vocab_size=vocab_rows, meta_token_id=meta_token_id, meta_attention=meta_attention,
        pos_encoding=pos_encoding, tie_embeddings=tied,
    )
    state = state_dict_from_hf_gpt2(hf_state)
    if tied:
        state.pop("lm_head.weight", None)  # the same tensor as wte.weight in GPT
    for name in ("wte.weight", "lm_head.weight"):
        if name in state:
            state[name] = _pad_rows(state[name], vocab_rows)
    if pos_encoding != "ape":
        state.pop("wpe.weight", None)
    with torch.random.fork_rng(devices=[]):  # seeded meta-attention init without touching the caller's RNG
        torch.manual_seed(seed)
        model = GPT(cfg)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise HFInteropError(f"GPT-2 weights do not fit its config ({' '.join(str(err).split())[:300]})") from None
    new = (".ln_meta.", ".meta_attn.")
    missing = [k for k in missing if not any(s in k for s in new) and not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise HFInteropError(
            f"GPT-2 weights do not match: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    with torch.no_grad():
        for block in model.h if meta_attention else ():
            block.meta_attn.c_proj.weight.zero_()
            if block.meta_attn.c_proj.bias is not None:
                block.meta_attn.c_proj.bias.zero_()
    return model.eval()


def import_gpt2(
    source: str | Path,
    out: str | Path,
    *,
    pos_encoding: str = "ape",
    meta_attention: bool = True,
    vocab_multiple: int = 64,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Build a metatokens model folder from a Hugging Face GPT-2 checkpoint (folder or Hub name).

    Tokenizer: GPT-2's BPE plus `<|meta|>` appended (id 50257 for GPT-2 itself). The embedding is
    padded to a multiple of `vocab_multiple` rows (50304 for GPT-2); generation must not sample
    ids at or above the tokenizer size (metatokens.generate's vocab_limit). With pos_encoding
    other than "ape" a GPT2ImportWarning says that the learned positions are discarded. An existing
    `out` must be empty, or an earlier import, replaced only with overwrite=True (never the source).
    """
    import warnings

    from .checkpoint import save_pretrained
    _require_transformers()
    if pos_encoding not in ("ape", "rope", "none"):
        raise HFInteropError(f"pos_encoding must be ape, rope or none; got {pos_encoding!r}")
    if not isinstance(vocab_multiple, int) or vocab_multiple < 1:
        raise HFInteropError(f"vocab_multiple must be a positive integer, got {vocab_multiple!r}")
    out = Path(out)
    check = dict(command="import-gpt2", overwrite=overwrite, ours=_is_import)
    _check_out_dir(out, sources=[Path(source).expanduser()], **check)
    folder = resolve_gpt2_source(source)
    _check_out_dir(out, sources=[folder], **check)
    hf_config = _read_gpt2_config(folder)
    tokenizer = MetaTokenizer.from_gpt2(folder)
    # Every id but the meta-token's must have a GPT-2 embedding row.
    top = tokenizer.vocab_size - 1
    last_text_id = top - 1 if tokenizer.meta_token_id == top else top
    if last_text_id >= hf_config.vocab_size:
        raise HFInteropError(
            f"{folder}: the tokenizer has ids up to {last_text_id} but the model only {hf_config.vocab_size} embeddings; "
            "are the tokenizer files from this checkpoint?"
        )
    hf_state = _read_safetensors_weights(folder)
    if pos_encoding != "ape":
        warnings.warn(
            f"pos_encoding={pos_encoding} discards GPT-2's learned position embeddings; "
            "the model needs continued pre-training before it is useful",
            GPT2ImportWarning, stacklevel=2,
        )
    rows = max(hf_config.vocab_size, tokenizer.vocab_size)
    rows = -(-rows // vocab_multiple) * vocab_multiple
    model = gpt2_to_meta_model(
        hf_config, hf_state, tokenizer.meta_token_id, rows,
        pos_encoding=pos_encoding, meta_attention=meta_attention, seed=seed,
    )
    info = {"source": str(source), "pos_encoding": pos_encoding, "meta_attention": meta_attention, "seed": seed}
    return save_pretrained(out, model, tokenizer, extra={"imported_from_gpt2": info})


# ----------------------------------------------------------------------------- evaluating Hugging Face models

HF_MARKER = "metatokens_hf.json"  # written beside a fine-tuned Hugging Face model's own files


class HFCausalLM(nn.Module):
    """A Hugging Face causal LM behind the interface of `metatokens.model.GPT`.

    `forward(idx, targets)` returns ``(logits, loss)`` with ``targets`` already shifted (ours are;
    Hugging Face's ``labels`` are not, hence no ``labels=`` here). With targets, only the scored
    positions go through the LM head and the logits are None: a 50k-word head over every position
    would dominate the memory of a fine-tuning step. `hidden_states` and `lm_head` serve the
    evaluation, `save_folder` / `load_folder_state` the checkpoints of train.py.
    """

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf = hf_model
        self.vocab_size = hf_model.get_output_embeddings().weight.shape[0]
        self.meta_token_id = None
        self.max_positions = _learned_position_limit(hf_model)

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        return self.hf.base_model(input_ids=idx).last_hidden_state

    @property
    def lm_head(self) -> nn.Module:
        return self.hf.get_output_embeddings()

    loss_only_forward = True  # forward(idx, targets, logits=False): accepted; with targets the logits are always None

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, logits: bool = False):
        if self.max_positions is not None and idx.size(1) > self.max_positions:
            raise EvaluationError(f"sequence of {idx.size(1)} tokens exceeds the model's {self.max_positions} learned positions")
        h = self.hidden_states(idx)
        if targets is None:
            return self.lm_head(h), None
        keep = targets != IGNORE_INDEX
        logits = self.lm_head(h[keep])
        return None, F.cross_entropy(logits.float(), targets[keep])

    def num_params(self, exclude_positions: bool = False) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_folder(self, out_dir: str | Path, tokenizer=None, *, extra: dict | None = None, write_extra=None) -> Path:
        """The Hugging Face files plus our tokenizer.json and a marker, written atomically."""
        with atomic_folder(out_dir) as tmp:
            self.hf.save_pretrained(str(tmp))
            if tokenizer is not None:
                tokenizer.save(tmp / "tokenizer.json")
            atomic_write_text(tmp / HF_MARKER, json.dumps({"format": "metatokens-hf", **(extra or {})}, indent=1) + "\n")
            if write_extra is not None:
                write_extra(tmp)
        return Path(out_dir)

    def load_folder_state(self, folder: str | Path) -> dict[str, torch.Tensor]:
        """Weights of a folder written by `save_folder`, checked against this model's shapes."""
        saved = load_hf_model(folder)
        mine = self.hf.state_dict()
        theirs = saved.state_dict()
        if mine.keys() != theirs.keys() or any(mine[k].shape != theirs[k].shape for k in mine):
            raise CheckpointError(f"{folder}: the checkpoint's model differs from this run's; refusing to resume")
        return {f"hf.{k}": v for k, v in theirs.items()}


def _learned_position_limit(hf_model: nn.Module) -> int | None:
    """The size of a learned absolute position table (GPT-2's / GPT-Neo's wpe), else None."""
    size = getattr(hf_model.config, "max_position_embeddings", None)
    for name, module in hf_model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.Embedding) and module.num_embeddings == size and ("wpe" in last or "position" in last):
            return size
    return None


def load_hf_model(name_or_path: str | Path) -> nn.Module:
    """A Hugging Face causal LM in fp32 (local folder, or hub name from the local cache or the Hub)."""
    try:
        from transformers import AutoModelForCausalLM

        # Never the code a folder or Hub repository brings: without this, transformers asks whether to run it.
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=torch.float32, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{name_or_path}: cannot load a Hugging Face causal LM ({' '.join(str(err).split())[:300]})") from None
    return model


def load_hf_tokenizer(name_or_path: str | Path) -> MetaTokenizer:
    """A GPT-2-style BPE tokenizer of a Hugging Face model (with our meta-token appended, unused)."""
    folder = Path(name_or_path)
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(str(name_or_path), allow_patterns=["tokenizer.json", "vocab.json", "merges.txt"]))
        except Exception as err:  # the hub client raises many types; the message is what matters
            raise CheckpointError(f"{name_or_path}: cannot fetch its tokenizer files ({' '.join(str(err).split())[:200]})") from None
    mine = folder / "tokenizer.json"
    try:
        if mine.is_file():
            try:
                return MetaTokenizer.from_file(mine)  # ours, saved by a fine-tuning run
            except TokenizerError:
                pass
        return MetaTokenizer.from_gpt2(folder)
    except TokenizerError as err:
        raise CheckpointError(f"{name_or_path}: needs a GPT-2-style BPE tokenizer with <|endoftext|> ({err})") from None
