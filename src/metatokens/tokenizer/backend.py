"""The special tokens and the byte-level backend of the tokenizers library that every `MetaTokenizer` uses."""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

META_TOKEN = "<|meta|>"


EOS_TOKEN = "<|endoftext|>"


# Order matters for trained tokenizers: the trainer assigns ids in this order
# (EOS -> 0, META -> 1).
SPECIAL_TOKENS = (EOS_TOKEN, META_TOKEN)


_BYTE_ALPHABET_SIZE = 256


def _new_byte_level_backend(model: models.Model) -> Tokenizer:
    backend = Tokenizer(model)
    # add_prefix_space=False keeps decode(encode(text)) == text exactly.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return backend
