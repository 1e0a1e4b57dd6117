"""The byte-level BPE tokenizer with the meta-token.

- `meta.py`: `MetaTokenizer` (train, load, save, encode with meta-tokens; the meta id is never emitted);
- `backend.py`: the special tokens and the byte-level backend of the tokenizers library;
- `gpt2.py`: GPT-2's vocabulary from a folder, the Hugging Face cache or (when allowed) a download.

May import: errors, fileio.
"""
from .backend import EOS_TOKEN, META_TOKEN, SPECIAL_TOKENS
from .meta import MetaTokenizer

__all__ = ["EOS_TOKEN", "META_TOKEN", "SPECIAL_TOKENS", "MetaTokenizer"]
