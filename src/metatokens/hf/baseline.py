"""`HFCausalLM`: a Hugging Face causal LM with our model interface (forward(idx, targets), saving,
loading), so that it is fine-tuned and evaluated like ours: the paper's GPT-Neo baseline. It never
sees meta-tokens.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, EvaluationError, TokenizerError
from ..fileio import atomic_folder, atomic_write_text
from ..model.config import IGNORE_INDEX
from ..runs.model_folder import check_finite
from ..tokenizer.meta import MetaTokenizer

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


# Weights files transformers would read with pickle (or another framework) instead of safetensors.
UNSAFE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")


def _refuse_unsafe_weights(folder: Path) -> None:
    """A local folder without safetensors weights is refused in one line, before transformers sees it."""
    if any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file():
        return
    found = [name for name in UNSAFE_WEIGHTS if (folder / name).is_file()]
    if found:
        raise CheckpointError(
            f"{folder}: holds {found[0]} but no model.safetensors; metatokens loads only safetensors weights and "
            f"never unpickles a file. If you trust it, convert it once with transformers: "
            f"AutoModelForCausalLM.from_pretrained('{folder}').save_pretrained('{folder}')")


def load_hf_model(name_or_path: str | Path) -> nn.Module:
    """A Hugging Face causal LM in fp32 (local folder, or hub name from the local cache or the Hub).
    A local folder must hold safetensors weights; its pickles are never read."""
    local = Path(name_or_path).is_dir()
    if local:
        _refuse_unsafe_weights(Path(name_or_path))
    try:
        from transformers import (
            AutoModelForCausalLM,  # optional dependency: transformers (pip install "metatokens[hf]")
        )

        # Never the code a folder or Hub repository brings: without this, transformers asks whether to run it.
        # A local folder: safetensors only. (Not for a Hub name: there transformers would ask the Hub to convert.)
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=torch.float32, trust_remote_code=False,
                                                     use_safetensors=True if local else None)
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{name_or_path}: cannot load a Hugging Face causal LM ({' '.join(str(err).split())[:300]})") from None
    check_finite(model, name_or_path)
    return model


def load_hf_tokenizer(name_or_path: str | Path) -> MetaTokenizer:
    """A GPT-2-style BPE tokenizer of a Hugging Face model (with our meta-token appended, unused)."""
    folder = Path(name_or_path)
    if not folder.is_dir():
        try:
            from huggingface_hub import (
                snapshot_download,  # optional dependency: huggingface_hub (comes with transformers, metatokens[hf])
            )

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
