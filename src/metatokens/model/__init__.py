"""The network and its settings: nothing here trains, reads or writes files, or parses command lines.

- `gpt.py`: `GPT`, the GPT-2 model with a meta-attention sublayer in every block;
- `cache.py`: the key/value cache of both attentions, for generation;
- `window.py`: windowed self-attention (`attn_window`): its mask, the blocked path, the bounded cache;
- `positions.py`: rotary position embeddings, YaRN included;
- `config.py`: `ModelConfig` / `YarnConfig` / `FamilyConfig`, `IGNORE_INDEX`, and the typed parsing
  of settings every config shares;
- `family.py`: Llama and GPT-NeoX blocks with meta-attention (`import-hf` models), `build_model`;
- `yarn.py`: `apply_yarn`, YaRN switched on in a loaded RoPE model;
- `hf_model.py`: the transformers classes around `GPT` (imported only when transformers is wanted).

May import: errors (yarn.py only). config, positions, cache, window, gpt, family and hf_model are shipped
inside exported Hugging Face folders as their model code, so they import nothing outside model/.
"""
from .cache import KVCache
from .config import ConfigError, ModelConfig, YarnConfig
from .gpt import GPT

__all__ = ["GPT", "KVCache", "ConfigError", "ModelConfig", "YarnConfig"]
