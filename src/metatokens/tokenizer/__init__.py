"""The byte-level BPE tokenizer with the meta-token: `MetaTokenizer` (meta.py) and GPT-2's vocabulary (gpt2.py).

May import: errors, fileio.
"""

from .backend import EOS_TOKEN, META_TOKEN, SPECIAL_TOKENS
from .meta import MetaTokenizer

__all__ = ["EOS_TOKEN", "META_TOKEN", "SPECIAL_TOKENS", "MetaTokenizer"]
