"""metatokens: language models with learned meta-tokens and meta-attention (arXiv 2509.16278).

The package in layers; each imports only from the layers above it in this list (docs/architecture.md,
enforced by tests/unit/test_architecture.py):

    errors, __init__          the error hierarchy; the version
    fileio progress devices   foundations: atomic writes, progress lines, devices, figures, statistics
    plotting stats
    model                     the network: GPT + meta-attention, positions, YaRN, Llama/NeoX blocks
    tokenizer                 byte-level BPE with the meta-token; GPT-2's vocabulary
    data                      corpora, token caches, meta-token injection
    tasks                     the four synthetic long-context tasks and their prompt splits
    runs, generation          run folders and model folders; cached generation
    hf                        Hugging Face hub, export, imports, HF models as baselines
    evaluation                loading a model to score, task accuracy, perplexity, their reports
    training, analysis        the training loop, pre-training, fine-tuning; the paper's analyses
    study                     `metatokens reproduce`: design, stages, runner, findings, report
    cli                       one thin module per command
"""
__version__ = "0.1.0"
