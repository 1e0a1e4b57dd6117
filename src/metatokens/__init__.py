"""metatokens: language models with learned meta-tokens and meta-attention (arXiv 2509.16278)."""

__version__ = "0.1.0"
