"""Hugging Face transformers classes around our GPT: `MetaTokensConfig` and `MetaTokensForCausalLM`.

The network is `metatokens.model.GPT`, unchanged; these classes only translate between its API and
the one transformers expects (config files, `from_pretrained`, `generate`, `push_to_hub`).

Two ways to load an exported folder (see docs/huggingface.md):

- `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`: the folder carries a copy
  of this file and of the model source it imports, so metatokens need not be installed.
- `import metatokens.model.hf_model` first: importing this module as part of the metatokens package
  registers the classes with AutoConfig / AutoModelForCausalLM, and no remote code runs.

This file is shipped inside exported folders, so it may import only torch, transformers and the
package modules that define the network (relative imports of config, model and positions).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from .cache import KVCache
from .config import IGNORE_INDEX, FamilyConfig, ModelConfig
from .family import FamilyRotary, RMSNorm, build_model
from .gpt import GPT
from .positions import Rotary

try:  # transformers >= 5: init functions that skip tensors already loaded from a checkpoint
    from transformers import initialization as _init
except ImportError:  # older transformers never re-initialises loaded weights
    _init = nn.init

MODEL_TYPE = "metatokens"
# The output field that carries the cache was renamed from past_key_values to cache in transformers 5.
_CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


class MetaTokensConfig(PretrainedConfig):
    """Every `metatokens.model.config.ModelConfig` field under its own name, plus the tokenizer size.

    `tie_embeddings` is stored as transformers' `tie_word_embeddings`; `vocab_limit` is the number
    of tokenizer ids (embedding rows at or above it are padding and are never generated). A model
    imported by `metatokens import-hf` also has the `family.FamilyConfig` fields (`family`, ...).
    """

    model_type = MODEL_TYPE
    attribute_map = {
        "hidden_size": "n_embd",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
        "max_position_embeddings": "block_size",
    }

    def __init__(self, vocab_limit: int | None = None, **kwargs: Any):
        defaults = (FamilyConfig if kwargs.get("family") else ModelConfig)().to_dict()
        tie = kwargs.pop("tie_embeddings", defaults.pop("tie_embeddings"))
        kwargs.setdefault("tie_word_embeddings", tie)
        for name, default in defaults.items():
            setattr(self, name, kwargs.pop(name, default))
        self.vocab_limit = vocab_limit
        super().__init__(**kwargs)

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, *, vocab_limit: int | None = None, **kwargs: Any) -> "MetaTokensConfig":
        fields = cfg.to_dict()
        fields["tie_word_embeddings"] = fields.pop("tie_embeddings")
        return cls(vocab_limit=vocab_limit, **fields, **kwargs)

    def to_model_config(self) -> ModelConfig:
        kind = FamilyConfig if getattr(self, "family", None) else ModelConfig
        names = [f.name for f in dataclasses.fields(kind) if f.name != "tie_embeddings"]
        fields = {name: getattr(self, name) for name in names}
        fields["tie_embeddings"] = bool(self.tie_word_embeddings)
        return kind.from_dict(fields, source="MetaTokensConfig")


class MetaCache:
    """Our `KVCache` (self-attention keys/values plus meta-only keys/values) as transformers sees it.

    It is not a `transformers.Cache`: generate() only needs its length, and beam search its
    reordering. The model never asks transformers for a DynamicCache (see
    `_supports_default_dynamic_cache`), so this object is created by the first forward pass of
    generate() and handed back on every step.
    """

    is_compileable = False  # its meta part grows with the number of meta-tokens, not with the position
    is_croppable = False

    def __init__(self, n_layer: int):
        self.kv = KVCache.empty(n_layer)

    @property
    def is_linear(self) -> list[bool]:  # no layer is a recurrent (linear-attention) state
        return [False] * len(self.kv.layers)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.kv.length

    def __len__(self) -> int:
        return len(self.kv.layers)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Select (and repeat) batch rows, as beam search does after every step."""
        self.kv.select_rows(beam_idx)


class MetaTokensForCausalLM(PreTrainedModel, GenerationMixin):
    """Causal LM with meta-attention; the network is `metatokens.model.GPT` stored under `model.`.

    Weight names are ours with a `model.` prefix (`model.wte.weight`, `model.h.0.meta_attn.c_attn.weight`,
    ...). During generate() the logits of the meta-token and of padding rows are -inf, so no
    decoding strategy can pick them; a plain forward pass returns the raw logits of GPT.forward.
    Padded batches (an attention_mask with zeros) are not supported: positions and meta-attention
    assume every row starts at position 0.
    """

    config_class = MetaTokensConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block", "FamilyBlock"]
    _tied_weights_keys = {"model.lm_head.weight": "model.wte.weight"}

    def __init__(self, config: MetaTokensConfig):
        super().__init__(config)
        self.model = build_model(config.to_model_config())  # GPT, or family.FamilyModel
        self.post_init()

    @classmethod
    def from_gpt(cls, model: GPT, *, vocab_limit: int | None = None) -> "MetaTokensForCausalLM":
        """Wrap an existing GPT without copying: the wrapper and `model` share every parameter."""
        config = MetaTokensConfig.from_model_config(model.config, vocab_limit=vocab_limit)
        with torch.device("meta"):  # the placeholder network is replaced at once, so skip allocating it
            wrapper = cls(config)
        wrapper.model = model
        return wrapper

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # Our attention reads its own KVCache; a transformers DynamicCache would sit unused.
        return False

    # ------------------------------------------------------------------ weights

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.wte = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.model.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.model.lm_head = value

    def _init_weights(self, module: nn.Module) -> None:
        """GPT's own initialisation, for weights a checkpoint does not provide (and fresh models)."""
        if isinstance(module, Rotary):
            # A non-persistent buffer: never in a checkpoint, always recomputed from the settings.
            cfg = self.model.config
            if isinstance(module, FamilyRotary):
                fresh = module.fresh_inv_freq()
            else:
                fresh = Rotary(cfg.head_dim, cfg.rope_theta, cfg.yarn).inv_freq
            with torch.no_grad():
                module.inv_freq.copy_(fresh.to(module.inv_freq.device))
        elif isinstance(module, RMSNorm):
            _init.ones_(module.weight)
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            _init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                _init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            _init.ones_(module.weight)
            if module.bias is not None:
                _init.zeros_(module.bias)
        elif isinstance(module, GPT):  # children come first, so this overrides their plain init
            std = GPT.residual_proj_std(module.config)
            for name, p in module.named_parameters():
                if name.endswith("c_proj.weight"):
                    _init.normal_(p, mean=0.0, std=std)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: MetaCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        return_dict: bool | None = None,
        for_generation: bool = False,
        past_key_values: MetaCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ):
        """Logits (B, T, V) and, with `labels`, the next-token loss.

        labels follow the transformers convention (shifted inside: position t predicts labels[t+1]);
        -100 and meta-token labels carry no loss, as in GPT.forward. With use_cache a `MetaCache`
        is returned, and passing it back feeds only the new tokens. for_generation=True (set by
        generate) makes the meta-token and padding ids impossible to pick.
        """
        if inputs_embeds is not None:
            raise ValueError("MetaTokensForCausalLM takes input_ids only (meta positions are found by token id)")
        if input_ids is None:
            raise ValueError("input_ids are required")
        wanted = [k for k in ("output_attentions", "output_hidden_states") if kwargs.get(k)]
        if wanted:
            raise ValueError(f"{', '.join(wanted)} is not supported by MetaTokensForCausalLM")
        cache = cache if cache is not None else past_key_values
        # Only the first call can bring padding (generate appends ones), so later steps skip the sync.
        first = cache is None or cache.get_seq_length() == 0
        if first and attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError(
                "padded batches are not supported (attention_mask has zeros); generate rows of different "
                "lengths one at a time"
            )
        if use_cache is None:  # a cache that was passed in keeps being used and returned
            use_cache = cache is not None
        if cache is None and use_cache:
            cache = MetaCache(self.config.n_layer)
        hidden = self.model.hidden_states(input_ids, cache=cache.kv if cache is not None else None)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.model.lm_head(hidden)
        if for_generation:
            logits = logits.masked_fill(self._unsampled_ids(logits.device), float("-inf"))
        loss = None
        if labels is not None:
            if logits_to_keep:
                raise ValueError("labels need the logits of every position; leave logits_to_keep at 0")
            targets = torch.cat((labels[:, 1:], labels.new_full((labels.size(0), 1), IGNORE_INDEX)), 1)
            meta_id = self.config.meta_token_id
            if meta_id is not None:
                targets = targets.masked_fill(targets == meta_id, IGNORE_INDEX)
            loss = nn.functional.cross_entropy(
                logits.flatten(0, 1).float(), targets.flatten().to(logits.device), ignore_index=IGNORE_INDEX
            )
        out = CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: cache if use_cache else None})
        return out if return_dict is not False else out.to_tuple()

    def _unsampled_ids(self, device: torch.device) -> torch.Tensor:
        """(V,) bool: the meta-token and the padding rows beyond the tokenizer."""
        forbid = torch.zeros(self.config.vocab_size, dtype=torch.bool, device=device)
        if self.config.meta_token_id is not None:
            forbid[self.config.meta_token_id] = True
        if self.config.vocab_limit is not None:
            forbid[self.config.vocab_limit:] = True
        return forbid

    def prepare_inputs_for_generation(self, input_ids, *args, **kwargs):
        inputs = super().prepare_inputs_for_generation(input_ids, *args, **kwargs)
        inputs["for_generation"] = True
        return inputs

    @property
    def metatokens_model(self) -> GPT:
        """The wrapped network, usable with the rest of metatokens (evaluation, analysis, our generate)."""
        return self.model


MetaTokensConfig.register_for_auto_class()
MetaTokensForCausalLM.register_for_auto_class("AutoModelForCausalLM")

# Register with the Auto classes only as part of the installed package. The copy shipped in an
# exported folder runs as remote code and is found through config.json's auto_map instead.
if __name__ == "metatokens.model.hf_model":
    AutoConfig.register(MODEL_TYPE, MetaTokensConfig, exist_ok=True)
    AutoModelForCausalLM.register(MetaTokensConfig, MetaTokensForCausalLM, exist_ok=True)
