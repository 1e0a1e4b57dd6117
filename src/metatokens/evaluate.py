"""Evaluation: synthetic-task accuracy by length bin, and language-modelling loss by position.

Task accuracy (arXiv 2509.16278, sections 5-6; docs/method.md section 5)
-----------------------------------------------------------------
For every length bin, `n` test-split examples of the task are scored in one teacher-forced pass:
the model reads ``prompt + answer[:-1]`` and, at each answer position, its argmax over the
vocabulary (the meta-token and the embedding's padding rows excluded, exactly as generation
excludes them) is compared with the answer token.

* **token accuracy** = answer tokens whose teacher-forced argmax is right / answer tokens (EOS
  included; pooled over the bin).
* **exact match** = examples whose answer tokens are all right. This is *the same number* greedy
  decoding gives: greedy decoding reproduces the answer iff the argmax at every step, given the
  right prefix, is the next answer token, which is what teacher forcing checks (tested against
  `metatokens.generate` in tests/test_finetune_evaluate.py). Teacher forcing needs one forward pass
  per batch instead of one per generated token.

Both come with 95% Wilson score intervals. The token interval treats tokens as independent, which
they are not inside one answer, so it is narrower than the truth; the exact-match interval is the
one to compare models by.

Length limits: a model with learned absolute positions (APE) cannot read past its table, so a
bin whose examples need more positions is refused (one line, before anything runs) or, with
``skip_unfit``, reported as not applicable. RoPE and NoPE models read any length; ``yarn_scale``
puts YaRN on RoPE models first (`apply_yarn`).

Perplexity by position (`evaluate_perplexity`)
-----------------------------------------------
Documents are tokenised and joined with EOS, as in pre-training, and cut into ``context``-token
rows laid out exactly like pre-training rows (`metatokens.data.inject`: ``round(k * context)``
meta-tokens at uniformly random positions, text shifted right, no loss on meta targets). Loss and
perplexity per text token are reported overall and by position bucket within the row.

Models: metatokens model folders or run folders (their latest checkpoint), and Hugging Face
causal LMs through `HFCausalLM`, an adapter that gives them our model interface (the GPT-Neo
baseline of the paper). Hugging Face models never see meta-tokens.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointError, load_pretrained
from .fileio import atomic_folder, atomic_write_text
from .config import YarnConfig
from .data.packing import tokenizer_hash
from .model import GPT
from .plotting import pyplot, save_figure
from .positions import Rotary
from .tasks import Example, TaskError, get_task, make_examples
from .tokenizer import MetaTokenizer, TokenizerError

IGNORE = -100
Z95 = 1.959963984540054  # standard normal quantile of 0.975: two-sided 95% intervals
HF_MARKER = "metatokens_hf.json"  # written beside a fine-tuned Hugging Face model's own files
EXPORT_MODEL_TYPE = "metatokens"  # config.json "model_type" of `metatokens export` folders (hf_model.MODEL_TYPE)


class EvaluationError(ValueError):
    """An evaluation cannot run as asked (length beyond a model's positions, bad options). One line."""


# ----------------------------------------------------------------------------- statistics


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927); (0, 1) when trials == 0."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    # At 0 or n successes the bound is exactly 0 or 1; the subtraction above leaves rounding dust.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


# ----------------------------------------------------------------------------- Hugging Face adapter


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

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        if self.max_positions is not None and idx.size(1) > self.max_positions:
            raise EvaluationError(f"sequence of {idx.size(1)} tokens exceeds the model's {self.max_positions} learned positions")
        h = self.hidden_states(idx)
        if targets is None:
            return self.lm_head(h), None
        keep = targets != IGNORE
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


# ----------------------------------------------------------------------------- loading models


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
                                                            "original_max_position_embeddings": cfg.yarn.original_max_position_embeddings})
        info["max_positions"] = self.max_positions
        return info


def _run_info(model_dir: Path) -> dict[str, Any]:
    """run.json of the run a model folder belongs to (run/checkpoints/step-N or the run itself)."""
    for candidate in (model_dir, model_dir.parent.parent if model_dir.parent.name == "checkpoints" else None):
        if candidate is not None and (candidate / "run.json").is_file():
            try:
                return json.loads((candidate / "run.json").read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                return {}
    return {}


def _model_name(path: Path, model_dir: Path) -> str:
    if model_dir.parent.name == "checkpoints" and model_dir.parent.parent.resolve() == path.resolve():
        return path.resolve().name  # a run folder: its name
    if model_dir.parent.name == "checkpoints":
        return f"{model_dir.parent.parent.name}/{model_dir.name}"
    return path.resolve().name


def load_model(path: str | Path, device: str | torch.device = "cpu", name: str | None = None) -> LoadedModel:
    """A metatokens model folder or run folder, or a Hugging Face model folder (or run of one)."""
    from .train import resolve_model_dir

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such model or run folder")
    model_dir = resolve_model_dir(path)
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{model_dir / 'config.json'}: unreadable ({' '.join(str(err).split())})") from None
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
    return LoadedModel(name or _model_name(path, model_dir), str(path), model, tokenizer, kind, _run_info(model_dir))


def load_export(folder: Path, config: dict[str, Any], device: str | torch.device = "cpu") -> tuple[GPT, MetaTokenizer]:
    """A `metatokens export` folder (or a transformers save of one) as our GPT and tokenizer: the settings
    from its config.json, the weights read with safetensors. The folder's Python files are never run."""
    import dataclasses

    from .checkpoint import check_tokenizer, load_tokenizer
    from .config import ConfigError, ModelConfig

    file = folder / "config.json"
    names = {f.name for f in dataclasses.fields(ModelConfig)} - {"tie_embeddings"}
    settings = {k: v for k, v in config.items() if k in names}
    settings["tie_embeddings"] = bool(config.get("tie_word_embeddings", True))
    try:
        model = GPT(ModelConfig.from_dict(settings, source=str(file)))
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    state = _export_weights(folder)
    if not all(k.startswith("model.") for k in state):
        raise CheckpointError(f"{folder}: weights are not those of a metatokens export (names without the model. prefix)")
    state = {k.removeprefix("model."): v for k, v in state.items()}
    if model.config.tie_embeddings and "wte.weight" in state:
        state.setdefault("lm_head.weight", state["wte.weight"])  # transformers saves a tied matrix once
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{folder}: the weights do not fit its config.json ({' '.join(str(err).split())[:300]})") from None
    if not (folder / "tokenizer.json").is_file():
        raise CheckpointError(f"{folder}: the exported folder has no tokenizer.json")
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    check_tokenizer(model.config, tokenizer, str(file))
    return model.to(device), tokenizer


def _export_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The safetensors weights of an exported folder, checked against the SHA-256 its marker records
    (a transformers save of a loaded export has no marker, and nothing to check against)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .checkpoint import sha256_file
    from .hf import EXPORT_MARKER

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


# ----------------------------------------------------------------------------- YaRN and meta rules


def apply_yarn(model: GPT, scale: float) -> GPT:
    """Extend a RoPE model's window from L to scale * L with YaRN (docs/method.md section 3), in place.

    L is the window the model was pre-trained on: ``yarn.original_max_position_embeddings`` when
    the model already has YaRN (e.g. fine-tuned with it), else ``block_size``. The weights stay;
    the rotary tables and the attention temperature are rebuilt; ``block_size`` records the new
    window. The other YaRN settings are the paper's (beta_fast 32, beta_slow 1, factors 1).
    """
    if not isinstance(model, GPT) or model.config.pos_encoding != "rope":
        kind = model.config.pos_encoding if isinstance(model, GPT) else "its own Hugging Face"
        raise EvaluationError(f"YaRN here extends metatokens RoPE models; this one uses {kind} positions")
    cfg = model.config
    if not (isinstance(scale, (int, float)) and scale >= 1):
        raise EvaluationError(f"the YaRN scale must be a number >= 1, got {scale!r}")
    original = cfg.yarn.original_max_position_embeddings if cfg.yarn is not None else cfg.block_size
    yarn = None if scale == 1 else YarnConfig(factor=float(scale), original_max_position_embeddings=original)
    model.config = cfg.replace(yarn=yarn, block_size=int(round(original * scale)))
    device = next(model.parameters()).device
    model.rotary = Rotary(model.config.head_dim, model.config.rope_theta, yarn).to(device)
    return model


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


def _auto_rate(m: LoadedModel) -> float:
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


# ----------------------------------------------------------------------------- scoring


@dataclass
class Score:
    """Counts of one model on one set of examples."""

    examples: int = 0
    exact: int = 0
    tokens: int = 0
    tokens_correct: int = 0
    nll: float = 0.0  # summed over answer tokens
    per_example: list[int] | None = None  # 1 where that example (in the order given) was exactly right

    def add(self, other: "Score") -> "Score":
        for name in ("examples", "exact", "tokens", "tokens_correct", "nll"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def summary(self) -> dict[str, Any]:
        em_lo, em_hi = wilson_interval(self.exact, self.examples)
        tok_lo, tok_hi = wilson_interval(self.tokens_correct, self.tokens)
        return {
            "n": self.examples,
            "exact": self.exact,
            "exact_match": self.exact / self.examples if self.examples else None,
            "exact_match_ci95": [em_lo, em_hi],
            "answer_tokens": self.tokens,
            "tokens_correct": self.tokens_correct,
            "token_accuracy": self.tokens_correct / self.tokens if self.tokens else None,
            "token_accuracy_ci95": [tok_lo, tok_hi],
            "answer_loss": self.nll / self.tokens if self.tokens else None,
            **({"exact_per_example": self.per_example} if self.per_example is not None else {}),
        }


def prompts_digest(examples: Sequence[Example]) -> str:
    """A digest of the examples' prompt texts (meta-tokens left out) and answers, in order: two
    evaluations with the same digest scored the same prompts, one for one, so their
    ``exact_per_example`` lists can be paired."""
    h = hashlib.sha256()
    for e in examples:
        h.update(e.prompt_text.encode("utf-8") + b"\x00" + e.answer_text.encode("utf-8") + b"\x01")
    return h.hexdigest()[:16]


def needed_positions(examples: Sequence[Example]) -> int:
    """Positions a teacher-forced row needs: prompt + answer, less the last answer token (never an input)."""
    return max(len(e.prompt_ids) + len(e.answer_ids) - 1 for e in examples)


def collate(examples: Sequence[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded teacher-forcing rows: x = prompt + answer[:-1], y = answer at the answer positions.

    Prompt and padding targets are -100, so a loss or score covers the answer tokens only (the
    meta-token never appears in an answer, so it is never a target).
    """
    width = needed_positions(examples)
    x = torch.full((len(examples), width), pad_id, dtype=torch.long)
    y = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        seq = list(e.prompt_ids) + list(e.answer_ids)
        x[i, : len(seq) - 1] = torch.tensor(seq[:-1])
        p = len(e.prompt_ids)
        y[i, p - 1 : len(seq) - 1] = torch.tensor(e.answer_ids)
    return x, y


def _answer_logits(model: nn.Module, x: torch.Tensor, where: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    if hasattr(model, "hidden_states") and hasattr(model, "lm_head"):
        return model.lm_head(model.hidden_states(x)[where]).float()
    logits, _ = model(x)
    return logits[where].float()


@torch.no_grad()
def score_examples(
    model: nn.Module,
    examples: Sequence[Example],
    *,
    pad_id: int,
    vocab_limit: int | None = None,
    meta_token_id: int | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress=None,
) -> Score:
    """Exact match, token accuracy and answer loss of `model` on `examples` (teacher-forced argmax).

    The argmax never picks `meta_token_id` or ids at or above `vocab_limit`, as generation never
    does, so exact match equals that of greedy decoding.
    """
    total = Score(per_example=[0] * len(examples))
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt_ids) + len(examples[i].answer_ids))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = [examples[i] for i in rows]
        x, y = collate(batch, pad_id)
        x, y = x.to(device), y.to(device)
        where = (y != IGNORE).nonzero(as_tuple=True)
        logits = _answer_logits(model, x, where)  # (answer tokens, V)
        targets = y[where]
        nll = F.cross_entropy(logits, targets, reduction="sum")
        if meta_token_id is not None and meta_token_id < logits.size(1):
            logits[:, meta_token_id] = float("-inf")
        if vocab_limit is not None:
            logits[:, vocab_limit:] = float("-inf")
        right = logits.argmax(-1) == targets
        per_row = torch.zeros(len(batch), dtype=torch.long, device=x.device).index_add_(0, where[0], right.long())
        lengths = torch.tensor([len(e.answer_ids) for e in batch], device=x.device)
        exact = (per_row == lengths).tolist()
        for i, ok in zip(rows, exact):
            total.per_example[i] = int(ok)
        total.add(Score(len(batch), sum(exact), int(targets.numel()), int(right.sum()), float(nll)))
        if progress is not None:
            progress.update(len(batch))
    return total


# ----------------------------------------------------------------------------- task evaluation


def evaluate_task(
    models: Sequence[LoadedModel],
    task: str,
    lengths: Sequence[int],
    *,
    n: int = 100,
    seed: int = 0,
    difficulty: str = "medium",
    yarn_scale: float | None = None,
    meta: str = "auto",
    skip_unfit: bool = False,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy of every model at every length bin; see the module docstring for the metrics."""
    if not models:
        raise EvaluationError("no models to evaluate")
    lengths = sorted({int(length) for length in lengths})
    if not lengths or lengths[0] < 8:
        raise EvaluationError(f"lengths must be integers >= 8, got {lengths}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise EvaluationError(f"n must be a positive integer, got {n!r}")
    get_task(task)
    if yarn_scale is not None:
        rope = [m for m in models if m.pos_encoding == "rope"]
        if not rope:
            raise EvaluationError("--yarn-scale applies to RoPE models, and none of these models uses RoPE")
        for m in rope:
            apply_yarn(m.model, yarn_scale)

    # Make every example set first and check every length against every model, so that a refusal
    # comes before any compute and nothing is half-written.
    cache: dict[tuple[str, bool, int], list[Example]] = {}
    plan: list[tuple[LoadedModel, bool, list[tuple[int, list[Example] | None, str | None]]]] = []
    for m in models:
        with_meta = uses_meta(m, meta)
        tok_hash = tokenizer_hash(m.tokenizer)
        cells = []
        for length in lengths:
            key = (tok_hash, with_meta, length)
            if key not in cache:
                try:
                    cache[key] = make_examples(task, m.tokenizer, length=length, difficulty=difficulty, n=n, seed=seed,
                                               split="test", meta=with_meta)
                except TaskError as err:
                    raise EvaluationError(f"{m.name}: {err}") from None
            examples = cache[key]
            need, limit = needed_positions(examples), m.max_positions
            if limit is not None and need > limit:
                why = (f"{m.name} ({m.pos_encoding}, {limit} learned positions) cannot read length {length}: its "
                       f"examples need up to {need} positions (prompt + answer)")
                if not skip_unfit:
                    raise EvaluationError(f"{why}; drop that length, use a RoPE/NoPE model (--yarn-scale), or pass --skip-unfit")
                cells.append((length, None, why))
            else:
                cells.append((length, examples, None))
        plan.append((m, with_meta, cells))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(ex) for _, _, cells in plan for _, ex, _ in cells if ex), desc=f"evaluate {task}",
                   unit="ex", dynamic_ncols=True)
    results = []
    for m, with_meta, cells in plan:
        rows = []
        for length, examples, why in cells:
            if examples is None:
                rows.append({"length": length, "n": 0, "skipped": why})
                continue
            score = score_examples(m.model, examples, pad_id=m.tokenizer.eos_token_id, vocab_limit=m.tokenizer.vocab_size,
                                   meta_token_id=m.tokenizer.meta_token_id, batch_size=batch_size, device=device, progress=bar)
            prompt_lengths = [len(e.prompt_ids) for e in examples]
            rows.append({"length": length, **score.summary(), "prompt_tokens": [min(prompt_lengths), max(prompt_lengths)],
                         "positions_needed": needed_positions(examples), "prompts_sha256": prompts_digest(examples)})
        results.append({**m.describe(), "meta": with_meta, "results": rows})
    if bar is not None:
        bar.close()
    return {
        "kind": "task",
        "task": get_task(task).name,
        "difficulty": difficulty,
        "split": "test",
        "n_per_length": n,
        "seed": seed,
        "lengths": lengths,
        "yarn_scale": yarn_scale,
        "scoring": "teacher-forced argmax over answer tokens (EOS included); exact match = all answer tokens right "
                   "= greedy decoding; 95% Wilson intervals",
        "models": results,
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def task_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"### {result['task']} ({result['difficulty']}), {result['n_per_length']} test examples per length, seed {result['seed']}",
        "",
        "Length = prompt-length bin: prompts of 0.75 L to L tokens. Exact match and token accuracy in %, "
        "with 95% Wilson intervals.",
        "",
        "| model | positions | meta | length | n | exact match % (95% CI) | token acc. % (95% CI) | answer loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in result["models"]:
        pos = m["pos_encoding"]
        if m.get("yarn"):
            pos += f" + YaRN x{m['yarn']['factor']:g}"
        for r in m["results"]:
            if r.get("skipped"):
                lines.append(f"| {m['name']} | {pos} | {'yes' if m['meta'] else 'no'} | {r['length']} | 0 | beyond window | beyond window | |")
                continue
            em, tok = r["exact_match_ci95"], r["token_accuracy_ci95"]
            lines.append(
                f"| {m['name']} | {pos} | {'yes' if m['meta'] else 'no'} | {r['length']} | {r['n']} | "
                f"{_pct(r['exact_match'])} ({_pct(em[0])}-{_pct(em[1])}) | "
                f"{_pct(r['token_accuracy'])} ({_pct(tok[0])}-{_pct(tok[1])}) | {r['answer_loss']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def task_plot(result: dict[str, Any], out: Path) -> Path:
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for ax, key, title in ((axes[0], "exact_match", "exact match"), (axes[1], "token_accuracy", "token accuracy")):
        count = len(result["models"])
        for i, m in enumerate(result["models"]):
            rows = [r for r in m["results"] if not r.get("skipped")]
            if not rows:
                continue
            dodge = 2 ** (0.04 * (i - (count - 1) / 2))  # side by side, so overlapping error bars stay readable
            xs = [r["length"] * dodge for r in rows]
            ys = [100 * r[key] for r in rows]
            err = [[100 * (r[key] - r[f"{key}_ci95"][0]) for r in rows], [100 * (r[f"{key}_ci95"][1] - r[key]) for r in rows]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=m["name"])
        ax.set_xscale("log", base=2)
        ax.set_xticks(result["lengths"], [str(x) for x in result["lengths"]])
        ax.set_ylim(-3, 103)
        ax.set_xlabel("prompt length (tokens, bin upper edge)")
        ax.set_ylabel(f"{title} (%)")
        ax.set_title(f"{result['task']} ({result['difficulty']}): {title}"
                     + (f"\nerror bars: {result['error_bars']}" if result.get("error_bars") else ""), fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)
    return out


# ----------------------------------------------------------------------------- perplexity


def _token_stream(tokenizer: MetaTokenizer, source: str, need: int, *, every: int, max_documents: int | None,
                  text_field: str, hf_config: str | None, split: str) -> tuple[torch.Tensor, int]:
    """EOS-joined tokens of every `every`-th document until `need` tokens (pre-training's layout)."""
    from .data.corpora import iter_documents

    ids: list[int] = []
    used = 0
    for i, doc in enumerate(iter_documents(source, text_field=text_field, hf_config=hf_config, split=split,
                                           max_documents=max_documents)):
        if i % every:
            continue
        ids.extend(tokenizer.encode(doc))
        ids.append(tokenizer.eos_token_id)
        used += 1
        if len(ids) >= need:
            break
    return torch.tensor(ids, dtype=torch.long), used


def parse_meta_rate(spec: str | float | None) -> float | str:
    """'auto', 'none' (0) or a rate k in [0, 1) as in pre-training's data.k."""
    if spec is None or spec == "auto":
        return "auto"
    if spec in ("none", "off"):
        return 0.0
    try:
        k = float(spec)
    except (TypeError, ValueError):
        raise EvaluationError(f"--meta-every must be auto, none or a rate k in [0, 1) (e.g. 0.1), got {spec!r}") from None
    if not 0 <= k < 1:
        raise EvaluationError(f"--meta-every rate must be in [0, 1), got {k}")
    return k


@torch.no_grad()
def evaluate_perplexity(
    models: Sequence[LoadedModel],
    source: str,
    *,
    context: int | None = None,
    buckets: int = 8,
    meta: str | float = "auto",
    rows: int = 64,
    batch_size: int = 8,
    seed: int = 0,
    every: int = 1,
    max_documents: int | None = None,
    text_field: str = "text",
    hf_config: str | None = None,
    split: str = "train",
    yarn_scale: float | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Loss and perplexity per text token, overall and by position bucket (module docstring)."""
    from .data.inject import num_meta, val_batches

    if not models:
        raise EvaluationError("no models to evaluate")
    for name, value in (("buckets", buckets), ("rows", rows), ("every", every), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EvaluationError(f"{name} must be a positive integer, got {value!r}")
    rate = parse_meta_rate(meta)
    if yarn_scale is not None:
        for m in models:
            if m.pos_encoding == "rope":
                apply_yarn(m.model, yarn_scale)

    settings = []
    for m in models:
        n = context or (m.model.config.block_size if isinstance(m.model, GPT) else m.max_positions)
        if not n:
            raise EvaluationError(f"{m.name}: give --context (the model has no window of its own)")
        if m.max_positions is not None and n > m.max_positions:
            raise EvaluationError(f"{m.name} ({m.pos_encoding}, {m.max_positions} learned positions) cannot read a context "
                                  f"of {n}; use --context {m.max_positions} or less, or a RoPE/NoPE model")
        k = rate if rate != "auto" else _auto_rate(m)
        if k > 0 and m.meta_token_id is None:
            raise EvaluationError(f"{m.name} has no meta-token; use --meta-every none")
        if buckets > n:
            raise EvaluationError(f"buckets ({buckets}) must not exceed the context ({n})")
        num_meta(n, k)  # checks the rate leaves room for text
        settings.append((m, n, k))

    streams: dict[tuple[str, int], tuple[torch.Tensor, int]] = {}
    results = []
    for m, n, k in settings:
        key = (tokenizer_hash(m.tokenizer), n)
        if key not in streams:
            streams[key] = _token_stream(m.tokenizer, source, rows * n + 1, every=every, max_documents=max_documents,
                                         text_field=text_field, hf_config=hf_config, split=split)
        tokens, documents = streams[key]
        if len(tokens) <= n + 1:
            raise EvaluationError(f"{source}: only {len(tokens)} tokens, fewer than one context of {n}; use more documents or a smaller --context")
        edges = [round(i * n / buckets) for i in range(buckets + 1)]
        loss_sum = torch.zeros(n, dtype=torch.float64)
        count = torch.zeros(n, dtype=torch.long)
        meta_id = m.meta_token_id if m.meta_token_id is not None else 0
        # One call picks exactly `rows` evenly spaced rows; they are then scored batch_size at a time.
        (x_all, y_all), = val_batches(tokens.numpy(), n, rows, k, meta_id, seed=seed, max_batches=1)
        batches = list(zip(x_all.split(batch_size), y_all.split(batch_size)))
        iterator = batches
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(batches, desc=f"perplexity {m.name}", unit="batch", dynamic_ncols=True)
        for x, y in iterator:
            x, y = x.to(device), y.to(device)
            keep = y != IGNORE
            where = keep.nonzero(as_tuple=True)
            logits = _answer_logits(m.model, x, where)
            nll = F.cross_entropy(logits, y[where], reduction="none").double().cpu()
            loss_sum.index_add_(0, where[1].cpu(), nll)
            count.index_add_(0, where[1].cpu(), torch.ones_like(where[1].cpu()))
        total_loss = float(loss_sum.sum() / max(int(count.sum()), 1))
        bucket_rows = []
        for lo, hi in zip(edges, edges[1:]):
            c = int(count[lo:hi].sum())
            loss = float(loss_sum[lo:hi].sum() / c) if c else None
            bucket_rows.append({"positions": [lo, hi - 1], "tokens": c, "loss": loss,
                                "perplexity": math.exp(loss) if loss is not None else None})
        results.append({**m.describe(), "context": n, "meta_rate": k, "meta_per_row": num_meta(n, k),
                        "rows": sum(len(x) for x, _ in batches), "documents": documents, "tokens": int(count.sum()),
                        "loss": total_loss, "perplexity": math.exp(total_loss), "buckets": bucket_rows})
    return {
        "kind": "perplexity",
        "source": source,
        "every": every,
        "seed": seed,
        "yarn_scale": yarn_scale,
        "note": "loss per text token (meta targets carry no loss), natural log; models with different tokenizers "
                "are not comparable token for token",
        "models": results,
    }


def _every(r: int) -> str:
    return "every document" if r == 1 else f"every {r}th document"


def perplexity_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"### Perplexity on {result['source']} ({_every(result['every'])}, seed {result['seed']})",
        "",
        "| model | positions | context | meta-tokens per row | text tokens | loss | perplexity |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in result["models"]:
        pos = m["pos_encoding"] + (f" + YaRN x{m['yarn']['factor']:g}" if m.get("yarn") else "")
        lines.append(f"| {m['name']} | {pos} | {m['context']} | {m['meta_per_row']} (k={m['meta_rate']:g}) | {m['tokens']} | "
                     f"{m['loss']:.4f} | {m['perplexity']:.2f} |")
    lines += ["", "Perplexity by position within the context:", ""]
    first = result["models"][0]["buckets"]
    header = " | ".join(f"{b['positions'][0]}-{b['positions'][1]}" for b in first)
    lines += [f"| model | {header} |", "|---|" + "---|" * len(first)]
    for m in result["models"]:
        cells = " | ".join("n/a" if b["perplexity"] is None else f"{b['perplexity']:.2f}" for b in m["buckets"])
        lines.append(f"| {m['name']} | {cells} |")
    return "\n".join(lines) + "\n"


def perplexity_plot(result: dict[str, Any], out: Path) -> Path:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in result["models"]:
        pts = [((b["positions"][0] + b["positions"][1]) / 2, b["perplexity"]) for b in m["buckets"] if b["perplexity"]]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"{m['name']} (k={m['meta_rate']:g})")
    ax.set_xlabel("position within the context (bucket centre)")
    ax.set_ylabel("perplexity per text token")
    ax.set_title(f"perplexity by position: {result['source']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)
    return out


# ----------------------------------------------------------------------------- reports


def write_report(result: dict[str, Any], out_dir: str | Path, stem: str | None = None) -> dict[str, Path]:
    """JSON, markdown and PNG of a `evaluate_task` or `evaluate_perplexity` result in out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = stem or (result["task"] if result["kind"] == "task" else "perplexity")
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "png": out / f"{stem}.png"}
    atomic_write_text(paths["json"], json.dumps(result, indent=1) + "\n")
    if result["kind"] == "task":
        atomic_write_text(paths["markdown"], task_markdown(result))
        task_plot(result, paths["png"])
    else:
        atomic_write_text(paths["markdown"], perplexity_markdown(result))
        perplexity_plot(result, paths["png"])
    return paths
