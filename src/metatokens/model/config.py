"""Typed settings for the model, with validation and named shapes.

Every field has a one-line comment; the same names appear in `config.json` inside checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

# Label of a target that carries no loss (prompt, padding, meta-token targets): PyTorch's
# cross_entropy default, used by the model, the data pipeline, fine-tuning and evaluation alike.
IGNORE_INDEX = -100


class ConfigError(ValueError):
    """A setting is unknown or impossible. The message is one line."""


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_value(text: str) -> Any:
    """A `--set key=value` value: YAML (true, null, 12, [1, 2], words), and numbers in every usual
    spelling, `3e-4` and `1e6` included, which YAML 1.1 reads as strings."""
    import yaml  # shipped in exported folders: a loaded model must not need it

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    return value


def _kind(annotation: str) -> tuple[str, bool]:
    """('int' | 'float' | 'bool' | 'str' | '', optional) of a simple field annotation."""
    parts = [p.strip() for p in str(annotation).split("|")]
    optional = "None" in parts
    parts = [p for p in parts if p != "None"]
    if len(parts) == 1 and parts[0] in ("int", "float", "bool", "str"):
        return parts[0], optional
    if len(parts) == 1 and parts[0].startswith("Literal["):
        return "str", optional
    return "", optional


def coerce_fields(obj: Any, section: str) -> Any:
    """Check (and where it is lossless, convert) every simple field of a settings dataclass to its
    declared type: 1e6 -> 1000000 for an int, 3 -> 3.0 for a float; a wrong type raises one line
    naming the field (``train.lr must be a number, got 'abc'``)."""
    for f in dataclasses.fields(obj):
        kind, optional = _kind(f.type)
        value = getattr(obj, f.name)
        if not kind or (value is None and optional):
            continue
        name = f"{section}.{f.name}"
        if kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be true or false, got {value!r}")
        elif kind == "int":
            if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
                value = float(value)
            if isinstance(value, float) and math.isfinite(value) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
        elif kind == "float":
            if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
                value = float(value)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{name} must be a number, got {value!r}")
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
        elif not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        setattr(obj, f.name, value)
    return obj


@dataclass
class YarnConfig:
    """YaRN context extension of RoPE (Peng et al. 2023, arXiv 2309.00071)."""

    factor: float = 2.0  # scale s: the window grows from L to s * L
    original_max_position_embeddings: int = 1024  # L, the window the model was trained on
    beta_fast: float = 32.0  # rotations above which a dimension is extrapolated (YaRN default 32)
    beta_slow: float = 1.0  # rotations below which a dimension is interpolated (YaRN default 1)
    extrapolation_factor: float = 1.0  # weight of the extrapolated frequencies in the ramp (reference: 1)
    attn_factor: float = 1.0  # extra multiplier on the attention temperature (reference: 1)

    @property
    def mscale(self) -> float:
        """sqrt(1/t) of the YaRN paper: 0.1 ln(s) + 1, times attn_factor (1 when s <= 1)."""
        base = 1.0 if self.factor <= 1 else 0.1 * math.log(self.factor) + 1.0
        return base * self.attn_factor

    def validate(self) -> None:
        if not self.factor >= 1.0:
            raise ConfigError(f"yarn.factor must be >= 1, got {self.factor}")
        if self.original_max_position_embeddings <= 0:
            raise ConfigError("yarn.original_max_position_embeddings must be positive")
        if not self.beta_fast > self.beta_slow > 0:
            raise ConfigError(f"yarn needs beta_fast > beta_slow > 0, got {self.beta_fast}, {self.beta_slow}")


@dataclass
class ModelConfig:
    """GPT-2 style decoder with optional meta-attention (arXiv 2509.16278, section 3).

    `attn_window` (W, default None: full causal attention) makes meta-tokens the only long-range
    memory of self-attention: the query at position i sees the key at position j iff
    j <= i and (i - j < W or position j holds a meta-token). So each token sees its last W
    positions (itself included; meta or text alike) and every meta-token before them, however far
    back. Meta-attention is unchanged. Generation then keeps a bounded KV cache: the last W - 1
    positions (the next token makes W) and every meta-token before them (docs/memory.md).
    `attn_sinks` (n, default 0; only with a window) also keeps the first n positions of the sequence
    in every window, StreamingLLM's attention sinks: the control for meta-tokens as memory, long-range
    keys that sit where the stream starts instead of where the content is.
    """

    vocab_size: int = 50304  # embedding rows; >= tokenizer size (GPT-2's 50257 + meta, padded to 64)
    block_size: int = 1024  # training window L; the APE table has this many rows
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads (both attentions)
    n_embd: int = 768  # residual width d
    dropout: float = 0.0  # dropout on attention weights and residual branches (paper: 0)
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2
    tie_embeddings: bool = True  # share token embedding and LM head, as GPT-2
    mlp_act: Literal["gelu", "relu"] = "gelu"  # MLP activation; gelu is GPT-2's tanh approximation
    layer_norm_eps: float = 1e-5  # LayerNorm epsilon (GPT-2: 1e-5)
    meta_attention: bool = True  # add the meta-attention sublayer to every block; False = plain GPT-2
    meta_impl: Literal["sparse", "dense"] = "sparse"  # sparse: O(m^2) gather/scatter; dense: paper's T x T mask
    meta_token_id: int | None = None  # id of <meta> in the vocabulary (None: no meta-tokens)
    pos_encoding: Literal["ape", "rope", "none"] = "ape"  # learned absolute, rotary, or no positions
    rope_theta: float = 10000.0  # RoPE base (paper: 10000)
    yarn: YarnConfig | None = None  # YaRN scaling of RoPE; None = plain RoPE
    meta_pos: Literal["keep", "zero"] = "keep"  # zero: no position (APE vector / rotation) at meta positions
    meta_embed: Literal["keep", "zero"] = "keep"  # zero: no token embedding at meta positions (ablation)
    attn_window: int | None = None  # W: self-attention sees the last W positions and every earlier meta-token
    attn_sinks: int = 0  # with attn_window: the first n positions stay visible too (StreamingLLM's sinks)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def max_positions(self) -> int | None:
        """Longest sequence the model accepts: the APE table, or None (RoPE / NoPE are unbounded)."""
        return self.block_size if self.pos_encoding == "ape" else None

    def validate(self) -> "ModelConfig":
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.pos_encoding == "rope" and self.head_dim % 2:
            raise ConfigError(f"RoPE needs an even head dimension, got {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.layer_norm_eps > 0:
            raise ConfigError(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")
        if not self.rope_theta > 0:
            raise ConfigError(f"rope_theta must be positive, got {self.rope_theta}")
        choices = {
            "mlp_act": ("gelu", "relu"),
            "meta_impl": ("sparse", "dense"),
            "pos_encoding": ("ape", "rope", "none"),
            "meta_pos": ("keep", "zero"),
            "meta_embed": ("keep", "zero"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if self.attn_window is not None and (isinstance(self.attn_window, bool) or not isinstance(self.attn_window, int)
                                             or self.attn_window <= 0):
            raise ConfigError(f"attn_window must be a positive integer or null (full attention), got {self.attn_window!r}")
        if isinstance(self.attn_sinks, bool) or not isinstance(self.attn_sinks, int) or self.attn_sinks < 0:
            raise ConfigError(f"attn_sinks must be a non-negative integer, got {self.attn_sinks!r}")
        if self.attn_sinks and self.attn_window is None:
            raise ConfigError("attn_sinks keeps the first positions inside a window: set attn_window too "
                              "(with full attention every position is visible already)")
        if self.meta_token_id is not None and not 0 <= self.meta_token_id < self.vocab_size:
            raise ConfigError(f"meta_token_id {self.meta_token_id} is outside the vocabulary (size {self.vocab_size})")
        if self.yarn is not None:
            if self.pos_encoding != "rope":
                raise ConfigError("yarn scaling needs pos_encoding='rope'")
            self.yarn.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> "ModelConfig":
        """Build and validate; an unknown key or impossible value raises ConfigError naming `source`."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: model settings must be a mapping, got {type(data).__name__}")
        if cls is ModelConfig and "family" in data:  # an imported Llama / GPT-NeoX model (family.py)
            return FamilyConfig.from_dict(data, source=source)
        data = dict(data)
        try:
            yarn = data.pop("yarn", None)
            if isinstance(yarn, dict):
                unknown = set(yarn) - {f.name for f in dataclasses.fields(YarnConfig)}
                if unknown:
                    raise ConfigError(f"unknown yarn key(s): {', '.join(sorted(unknown))}")
                yarn = YarnConfig(**yarn)
            elif yarn is not None and not isinstance(yarn, YarnConfig):
                raise ConfigError(f"yarn must be a mapping of YaRN settings, got {yarn!r}")
            unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise ConfigError(f"unknown model key(s): {', '.join(sorted(unknown))}")
            return coerce_fields(cls(yarn=yarn, **data), "model").validate()
        except (ConfigError, TypeError) as err:
            raise ConfigError(f"{source}: {err}") from None

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes).validate()


# Named model shapes. `gpt2-small` is the paper's (12 x 12 x 768, window 1024, GPT-2 BPE + meta).
MODEL_SHAPES: dict[str, dict[str, Any]] = {
    "toy": dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=512),
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=128, vocab_size=2048),
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=512, vocab_size=8192),
    "gpt2-small": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304),
}


def model_shape(name: str, **overrides: Any) -> ModelConfig:
    if name not in MODEL_SHAPES:
        raise ConfigError(f"unknown model shape {name!r}; choose one of {', '.join(MODEL_SHAPES)}")
    return ModelConfig.from_dict({**MODEL_SHAPES[name], **overrides}, source=f"shape {name}")


FAMILIES = ("llama", "neox")


# What `metatokens import-hf` takes (GPT-2 becomes gpt.GPT); said in one line by its help and its refusals.
SUPPORTED = "Llama family (model_type llama, mistral, qwen2), GPT-NeoX (gpt_neox) and GPT-2 (gpt2)"


ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")


@dataclass
class FamilyConfig(ModelConfig):
    """ModelConfig plus what a Llama or GPT-NeoX decoder needs. pos_encoding is always rope."""

    family: Literal["llama", "neox"] = "llama"  # block style (see the module docstring)
    n_kv_head: int = 0  # key/value heads of both attentions (grouped-query attention); 0 = n_head
    intermediate_size: int = 0  # MLP width; 0 = 4 * n_embd
    hidden_act: Literal["silu", "gelu", "gelu_tanh", "relu"] = "silu"  # MLP activation (Llama: silu, gated)
    gated_mlp: bool = True  # SwiGLU MLP down(act(gate x) * up x) (Llama); False: down(act(up x)) (NeoX)
    norm: Literal["rms", "layer"] = "rms"  # RMSNorm (Llama) or LayerNorm with bias (NeoX)
    parallel_residual: bool = False  # NeoX: the MLP reads the block input, not the attention output
    attn_bias: bool = False  # biases of q/k/v (Qwen2, NeoX)
    attn_out_bias: bool = False  # bias of the attention output projection (NeoX)
    mlp_bias: bool = False  # biases of the MLP (NeoX)
    rotary_dim: int = 0  # leading channels of each head that rotate (NeoX: a quarter); 0 = all
    rope_type: Literal["default", "linear", "llama3"] = "default"  # Hugging Face rope_type of the checkpoint
    rope_factor: float = 1.0  # linear / llama3 scaling factor
    rope_low_freq_factor: float = 1.0  # llama3 only
    rope_high_freq_factor: float = 4.0  # llama3 only
    rope_original_max_positions: int = 8192  # llama3 only: the window before scaling
    attention_window: int | None = None  # Mistral's sliding window: longer inputs are refused
    init_std: float = 0.02  # std of new weights (the checkpoint's initializer_range)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def max_positions(self) -> int | None:
        """Inputs longer than a sliding window would attend differently from the original: refused."""
        return self.attention_window

    def validate(self) -> "FamilyConfig":
        super().validate()
        if self.family not in FAMILIES:
            raise ConfigError(f"family must be one of {', '.join(FAMILIES)}; got {self.family!r}")
        if self.pos_encoding != "rope":
            raise ConfigError(f"a {self.family} model uses pos_encoding='rope', got {self.pos_encoding!r}")
        if self.yarn is not None:
            raise ConfigError(f"YaRN is not supported for imported {self.family} models")
        if self.meta_impl != "sparse":  # its blocks have the sparse path only; the dense one would be ignored
            raise ConfigError(f"imported {self.family} models have the sparse meta-attention only; got meta_impl={self.meta_impl!r}")
        if self.n_kv_head < 0 or self.n_head % self.kv_heads:
            raise ConfigError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if self.intermediate_size < 0:
            raise ConfigError(f"intermediate_size must be >= 0, got {self.intermediate_size}")
        if not (0 <= self.rotary_dim <= self.head_dim and self.rotary_dim % 2 == 0):
            raise ConfigError(f"rotary_dim must be even and at most the head size {self.head_dim}, got {self.rotary_dim}")
        choices = {"hidden_act": ACTIVATIONS, "norm": ("rms", "layer"), "rope_type": ("default", "linear", "llama3")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if self.attention_window is not None and self.attention_window <= 0:
            raise ConfigError(f"attention_window must be positive, got {self.attention_window}")
        return self
