"""The network and its settings.

- `gpt.py`: `GPT`, the GPT-2 model with a meta-attention sublayer in every block, and its KV cache;
- `positions.py`: rotary position embeddings, YaRN included;
- `config.py`: `ModelConfig` / `YarnConfig`, and the typed parsing of settings every config shares;
- `hf_model.py`: the transformers classes around `GPT` (imported only when transformers is wanted;
  exported folders carry it, with the three files above, as their model code).

Nothing here trains, reads or writes files, or parses command lines.
"""

from .config import ConfigError, ModelConfig, YarnConfig
from .gpt import GPT, KVCache

__all__ = ["GPT", "KVCache", "ConfigError", "ModelConfig", "YarnConfig"]
